//! `audit`: what a snapshot with these settings does NOT record — each excluded path with the
//! rule that matched and its size, each mount it does not cross — and a loud warning when an
//! exclusion hides what is needed to rebuild the system (a package database).

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{Error, IoContext, Result};
use crate::exclude::ExcludeSet;
use crate::fsio::{self, WalkOptions};
use crate::model::{display_path, Kind, RelPath};
use crate::snapshot::SnapshotOptions;

/// State a restored system cannot be repaired or upgraded without.
const PACKAGE_DATABASES: &[&str] = &[
    "var/lib/dpkg",
    "var/lib/rpm",
    "var/db/pkg",
    "var/lib/pacman",
    "usr/lib/sysimage/rpm",
];

#[derive(Debug, Clone, serde::Serialize)]
pub struct Excluded {
    pub path: String,
    pub rule: String,
    /// Apparent size of everything below it (None: another filesystem, not measured).
    pub bytes: Option<u64>,
    /// What it takes on disk, as `du` counts it (blocks, a hardlinked file once): what leaving
    /// it out saves the store, and what `df` would show.
    pub disk_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditReport {
    pub excluded: Vec<Excluded>,
    /// Directories where another filesystem is mounted: not crossed unless listed as sources.
    pub mounts_not_crossed: Vec<String>,
    pub warnings: Vec<String>,
}

pub fn audit(root: &Path, store: Option<RelPath>, opts: &SnapshotOptions) -> Result<AuditReport> {
    let root_fd =
        fsio::open_root(root).ctx(|| format!("opening the system root {}", root.display()))?;
    let excludes = ExcludeSet::new(&opts.excludes, store.into_iter().collect())?;
    let hit: Mutex<Vec<RelPath>> = Mutex::new(Vec::new());
    let exclude = |p: &[u8], _k: Kind| {
        let out = excludes.is_excluded(p);
        if out {
            hit.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(p.to_vec());
        }
        out
    };
    let mut report = AuditReport::default();
    for src in &opts.sources {
        let mut walked: Vec<(RelPath, fsio::Basic)> = Vec::new();
        let mut warns = Vec::new();
        let walk_opts = WalkOptions {
            one_file_system: opts.one_file_system,
            exclude: &exclude,
            progress: &crate::progress::Silent,
        };
        fsio::walk(root_fd.as_fd(), src, &walk_opts, &mut walked, &mut warns).map_err(|e| {
            Error::Invalid(format!("source {} cannot be read: {e}", display_path(src)))
        })?;
        let dev = walked.first().map(|(_, b)| b.dev);
        // The walk's threads find paths in no set order; the report lists them by path.
        walked.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, b) in &walked {
            if b.kind == Kind::Dir
                && Some(b.dev) != dev
                && opts.one_file_system
                && !opts.sources.iter().any(|s| s == p)
            {
                // /proc, /sys, /dev: the directory is recorded, its contents are left out by
                // rule, so listing it as a source would record nothing more.
                match excludes.contents_rule(p) {
                    Some(rule) => report.excluded.push(Excluded {
                        path: format!("{}/*", display_path(p).trim_end_matches('/')),
                        rule,
                        bytes: None,
                        disk_bytes: None,
                    }),
                    None => report.mounts_not_crossed.push(display_path(p)),
                }
            }
        }
        let mut hits = std::mem::take(&mut *hit.lock().unwrap_or_else(|e| e.into_inner()));
        hits.sort();
        for p in hits {
            let rule = excludes.matching_rule(&p).unwrap_or_default();
            let sizes = size_below(root_fd.as_fd(), &p, dev);
            report.excluded.push(Excluded {
                path: display_path(&p),
                rule,
                bytes: sizes.map(|s| s.0),
                disk_bytes: sizes.map(|s| s.1),
            });
        }
    }
    for db in PACKAGE_DATABASES {
        if let Some(rule) = covering_rule(&excludes, db.as_bytes()) {
            if fsio::open_beneath(root_fd.as_fd(), db.as_bytes(), rustix::fs::OFlags::PATH).is_ok()
            {
                report.warnings.push(format!(
                    "/{db} is excluded (rule {rule}): it is the package database, and a restored system cannot be repaired or upgraded without it"
                ));
            }
        }
    }
    Ok(report)
}

fn covering_rule(excludes: &ExcludeSet, path: &[u8]) -> Option<String> {
    let mut p = path;
    loop {
        if let Some(r) = excludes.matching_rule(p) {
            return Some(r);
        }
        p = crate::model::parent(p).filter(|u| !u.is_empty())?;
    }
}

/// Apparent size and size on disk of `path` and everything below it on the same filesystem
/// as `dev`; None for another filesystem (a pseudo-filesystem like /proc has no meaningful
/// size).
fn size_below(root: std::os::fd::BorrowedFd, path: &[u8], dev: Option<u64>) -> Option<(u64, u64)> {
    let fd = fsio::open_beneath(root, path, rustix::fs::OFlags::PATH).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    if Some(st.st_dev) != dev {
        return None;
    }
    let basic = fsio::stat_to_basic(&st)?;
    if basic.kind != Kind::Dir {
        return Some((basic.size, basic.blocks * 512));
    }
    let none = |_: &[u8], _: Kind| false;
    let (mut out, mut warns) = (Vec::new(), Vec::new());
    fsio::walk(
        root,
        path,
        &WalkOptions {
            one_file_system: true,
            exclude: &none,
            progress: &crate::progress::Silent,
        },
        &mut out,
        &mut warns,
    )
    .ok()?;
    let apparent = out
        .iter()
        .filter(|(_, b)| b.kind == Kind::File)
        .map(|(_, b)| b.size)
        .sum();
    let mut seen = std::collections::HashSet::new();
    let disk = out
        .iter()
        .filter(|(_, b)| b.nlink < 2 || b.kind == Kind::Dir || seen.insert(b.ino))
        .map(|(_, b)| b.blocks * 512)
        .sum();
    Some((apparent, disk))
}
