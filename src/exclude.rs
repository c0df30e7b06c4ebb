//! What a snapshot leaves out and a restore never touches. Patterns that start with `/` are
//! anchored at the system root (`/var/cache`, `/tmp/*` — which keeps `/tmp` itself); others
//! match a path's last component anywhere (`*.pid`). The store is always out.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::model::{basename, is_within, RelPath};

/// DESIGN.md's defaults: the contents of pseudo-filesystems, scratch space and mounts of
/// removable media, lock and pid files. The directories themselves stay in, with their mode
/// (`/tmp`'s 1777), owner and times: a point restored into an empty filesystem needs them as
/// mount points and scratch space to boot.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "/dev/*",
    "/proc/*",
    "/sys/*",
    "/tmp/*",
    "/run/*",
    "/mnt/*",
    "/media/*",
    "/var/lib/heartbeat/*",
    "/var/lock/subsys/*",
    "*.pid",
    "*.swp",
];

pub struct ExcludeSet {
    anchored: GlobSet,
    basename: GlobSet,
    patterns: Vec<(String, bool)>,
    /// Paths always left out, with everything below them (the store).
    always: Vec<RelPath>,
}

impl ExcludeSet {
    pub fn new(patterns: &[String], always: Vec<RelPath>) -> Result<ExcludeSet> {
        let mut anchored = GlobSetBuilder::new();
        let mut base = GlobSetBuilder::new();
        let mut kept = Vec::new();
        for p in patterns {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            let is_anchored = p.starts_with('/');
            let glob = GlobBuilder::new(p.trim_end_matches('/'))
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::Invalid(format!("exclude pattern {p:?}: {e}")))?;
            if is_anchored {
                anchored.add(glob)
            } else {
                base.add(glob)
            };
            kept.push((p.to_string(), is_anchored));
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| Error::Invalid(format!("exclude patterns: {e}")))
        };
        Ok(ExcludeSet {
            anchored: build(anchored)?,
            basename: build(base)?,
            patterns: kept,
            always,
        })
    }

    /// The rule that leaves `path` out, if any (the path itself, not its ancestors: the walk
    /// never enters an excluded directory).
    pub fn matching_rule(&self, path: &[u8]) -> Option<String> {
        if let Some(a) = self.always.iter().find(|a| is_within(path, a)) {
            return Some(format!("the store ({})", crate::model::display_path(a)));
        }
        if path.is_empty() {
            return None;
        }
        let mut abs = Vec::with_capacity(path.len() + 1);
        abs.push(b'/');
        abs.extend_from_slice(path);
        let abs_c = Candidate::new(OsStr::from_bytes(&abs));
        if let Some(&i) = self.anchored.matches_candidate(&abs_c).first() {
            return Some(self.nth(true, i));
        }
        let base_c = Candidate::new(OsStr::from_bytes(basename(path)));
        self.basename
            .matches_candidate(&base_c)
            .first()
            .map(|&i| self.nth(false, i))
    }

    pub fn is_excluded(&self, path: &[u8]) -> bool {
        self.matching_rule(path).is_some()
    }

    /// Whether `path` or any directory above it is excluded: for lists of paths that were not
    /// produced by a walk that stops at excluded directories (a point recorded with other rules).
    pub fn covers(&self, path: &[u8]) -> bool {
        let mut p = path;
        loop {
            if self.is_excluded(p) {
                return true;
            }
            match crate::model::parent(p) {
                Some(up) if !up.is_empty() => p = up,
                _ => return false,
            }
        }
    }

    /// The rule that leaves out everything directly inside `dir` (`/proc/*` for `proc`), if any:
    /// probed with a name no literal rule names, so only a wildcard for any name matches it.
    pub fn contents_rule(&self, dir: &[u8]) -> Option<String> {
        self.matching_rule(&crate::model::join(dir, b"\x01"))
    }

    fn nth(&self, anchored: bool, i: usize) -> String {
        self.patterns
            .iter()
            .filter(|(_, a)| *a == anchored)
            .nth(i)
            .map(|(p, _)| p.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchored_basename_and_always_rules() {
        let pats: Vec<String> = DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect();
        let x = ExcludeSet::new(&pats, vec![b"root/snapshots".to_vec()]).unwrap();
        for pseudo in ["dev", "proc", "sys", "tmp", "run"] {
            assert!(!x.is_excluded(pseudo.as_bytes()), "{pseudo} itself is kept");
            assert!(x.is_excluded(format!("{pseudo}/x").as_bytes()));
            assert!(x.is_excluded(format!("{pseudo}/.hidden").as_bytes()));
            assert!(x.covers(format!("{pseudo}/a/b").as_bytes()));
            assert_eq!(
                x.contents_rule(pseudo.as_bytes()),
                Some(format!("/{pseudo}/*"))
            );
        }
        assert!(x.contents_rule(b"etc").is_none());
        assert!(x.is_excluded(b"tmp/x"));
        assert!(!x.is_excluded(b"var/tmp"));
        assert!(!x.is_excluded(b"mnt"));
        assert!(x.is_excluded(b"mnt/usb"));
        assert!(x.is_excluded(b"var/run/sshd.pid"));
        assert!(!x.is_excluded(b"etc/pidfile"));
        assert!(x.is_excluded(b"root/snapshots/replica"));
        assert!(!x.is_excluded(b"root/snapshots2"));
        assert!(!x.is_excluded(b"etc/hosts"));
        assert_eq!(x.matching_rule(b"home/a/.x.swp").as_deref(), Some("*.swp"));
    }

    #[test]
    fn covers_looks_at_every_directory_above() {
        let x = ExcludeSet::new(&["/var/lib/db".to_string()], vec![]).unwrap();
        assert!(
            x.covers(b"var/lib/db/table") && x.covers(b"var/lib/db") && x.covers(b"var/lib/db/a/b")
        );
        assert!(!x.covers(b"var/lib/dbx/table") && !x.covers(b"var/lib"));
    }

    #[test]
    fn bad_pattern_is_an_error_naming_it() {
        let err = ExcludeSet::new(&["/a/[".to_string()], vec![])
            .err()
            .unwrap();
        assert!(err.to_string().contains("/a/["), "{err}");
    }
}
