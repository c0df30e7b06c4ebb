//! Free space before a restore writes: what the plan puts on each filesystem under the target
//! against what that filesystem has available, so a restore that cannot fit is refused before
//! it half-replaces a system.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

use super::plan::{Action, RestorePlan};
use crate::error::{Error, IoContext, Result};
use crate::fsio;
use crate::model::{parent, Kind, RelPath};

/// One filesystem the plan writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsNeed {
    /// A directory on it, relative to the target (the first one the plan writes into).
    pub dir: RelPath,
    /// Bytes the plan writes there, in whole blocks.
    pub needed: u64,
    /// Blocks free for unprivileged users, in bytes: root's reserve is left to the system,
    /// which needs it to keep running.
    pub available: u64,
}

/// Every filesystem the plan writes to, with what it needs and has. `target` is the target's
/// root, or, for a target that does not exist yet (`exists` false), its nearest existing
/// ancestor: everything then lands on that one filesystem.
///
/// A file about to be replaced frees its blocks only at the rename, after its new content is
/// written: the new content counts in full. Sparse files are left out: the point does not
/// say how much of them is allocated, and counting their size would refuse the restore of any
/// system with a large sparse file (`/var/log/lastlog`); running out of space is still caught
/// while writing. Hardlinks to a leader take no blocks.
pub fn needs(plan: &RestorePlan, target: BorrowedFd, exists: bool) -> Result<Vec<FsNeed>> {
    let mut seen = Seen {
        target,
        exists,
        dev_of: HashMap::new(),
        fs: Vec::new(),
    };
    for it in &plan.items {
        if !matches!(it.action, Action::Create | Action::Rewrite) || it.path.is_empty() {
            continue;
        }
        let Some(w) = it.want() else { continue };
        let bytes = match w.kind {
            Kind::File if w.link.is_none() && !w.sparse => w.size,
            Kind::Dir => 1,
            _ => 0,
        };
        if bytes == 0 {
            continue;
        }
        let i = seen.fs_of(parent(&it.path).unwrap_or(b""))?;
        let fs = &mut seen.fs[i];
        fs.need.needed += bytes.div_ceil(fs.frsize) * fs.frsize;
    }
    Ok(seen.fs.into_iter().map(|f| f.need).collect())
}

struct Seen<'a> {
    target: BorrowedFd<'a>,
    exists: bool,
    /// Directory → index into `fs`.
    dev_of: HashMap<RelPath, usize>,
    fs: Vec<Fs>,
}

struct Fs {
    dev: u64,
    frsize: u64,
    need: FsNeed,
}

impl Seen<'_> {
    /// The filesystem a new entry of `dir` lands on: that of `dir`, or of its nearest existing
    /// ancestor when `dir` is to be created too.
    fn fs_of(&mut self, dir: &[u8]) -> Result<usize> {
        if let Some(&i) = self.dev_of.get(dir) {
            return Ok(i);
        }
        let opened = if self.exists || dir.is_empty() {
            let rel = if self.exists { dir } else { b"" };
            fsio::open_beneath(self.target, rel, OFlags::PATH | OFlags::DIRECTORY)
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        };
        let i = match opened {
            Ok(fd) => {
                let what = || "measuring the free space of the restore target".to_string();
                let dev = rustix::fs::fstat(&fd).ctx(what)?.st_dev;
                match self.fs.iter().position(|f| f.dev == dev) {
                    Some(i) => i,
                    None => {
                        let vfs = rustix::fs::fstatvfs(&fd).ctx(what)?;
                        self.fs.push(Fs {
                            dev,
                            frsize: vfs.f_frsize.max(1),
                            need: FsNeed {
                                dir: dir.to_vec(),
                                needed: 0,
                                available: vfs.f_bavail.saturating_mul(vfs.f_frsize),
                            },
                        });
                        self.fs.len() - 1
                    }
                }
            }
            Err(_) if !dir.is_empty() => self.fs_of(parent(dir).unwrap_or(b""))?,
            Err(e) => return Err(e).ctx(|| "opening the restore target".into()),
        };
        self.dev_of.insert(dir.to_vec(), i);
        Ok(i)
    }
}

/// Refuses the restore when a filesystem of the target has less space available than the plan
/// writes there. A target that does not exist yet is measured at its nearest existing ancestor.
pub fn check_space(target: &Path, plan: &RestorePlan) -> Result<()> {
    let (fd, exists) = match fsio::open_root(target) {
        Ok(fd) => (fd, true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let above = existing_ancestor(target);
            let fd = fsio::open_root(&above)
                .ctx(|| format!("opening {} (above the restore target)", above.display()))?;
            (fd, false)
        }
        Err(e) => return Err(e).ctx(|| format!("opening the restore target {}", target.display())),
    };
    let short: Vec<String> = needs(plan, std::os::fd::AsFd::as_fd(&fd), exists)?
        .iter()
        .filter(|n| n.needed > n.available)
        .map(|n| {
            let dir = if exists {
                target.join(std::ffi::OsStr::from_bytes(&n.dir))
            } else {
                existing_ancestor(target)
            };
            format!(
                "the filesystem of {} needs {} ({} bytes) for the files to write and has {} ({} bytes) available",
                dir.display(),
                crate::model::human_size(n.needed),
                n.needed,
                crate::model::human_size(n.available),
                n.available
            )
        })
        .collect();
    if short.is_empty() {
        return Ok(());
    }
    Err(Error::RestoreRefused {
        why: format!(
            "{}; free space there (files that are replaced free theirs only after their new version is written), or restore less with --path",
            short.join("; ")
        ),
    })
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path;
    while std::fs::symlink_metadata(p).is_err() {
        match p.parent() {
            Some(up) if !up.as_os_str().is_empty() => p = up,
            _ => return PathBuf::from("."),
        }
    }
    p.to_path_buf()
}
