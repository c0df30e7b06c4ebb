//! Resolution of relative paths beneath a pinned root directory fd.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{openat, openat2, Mode, OFlags, ResolveFlags};

use crate::model::parent;

/// The kernel refuses paths of PATH_MAX (4096) bytes or more in one call: longer paths are
/// resolved in pieces cut at a slash, each below this length.
const CHUNK: usize = 3072;

/// The path, or a directory on the way to it, does not exist (any more): ENOENT or ENOTDIR.
pub fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == rustix::io::Errno::NOENT.raw_os_error() || c == rustix::io::Errno::NOTDIR.raw_os_error())
}

pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(openat(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens `rel` below `root` with `flags`, refusing any symlink on the way (the last component
/// too, unless `flags` has O_PATH|O_NOFOLLOW) and any `..` that would climb out.
pub fn open_beneath(root: BorrowedFd, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if rel.is_empty() {
        return Ok(openat(root, ".", flags, Mode::empty())?);
    }
    let mut dir: Option<OwnedFd> = None;
    let mut rest = rel;
    while rest.len() > CHUNK {
        let cut = rest[..CHUNK]
            .iter()
            .rposition(|&b| b == b'/')
            .filter(|&i| i > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc_enametoolong()))?;
        let base = dir.as_ref().map(|d| d.as_fd()).unwrap_or(root);
        dir = Some(open_one(
            base,
            &rest[..cut],
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        )?);
        rest = &rest[cut + 1..];
    }
    let base = dir.as_ref().map(|d| d.as_fd()).unwrap_or(root);
    open_one(base, rest, flags)
}

fn libc_enametoolong() -> i32 {
    rustix::io::Errno::NAMETOOLONG.raw_os_error()
}

fn open_one(base: BorrowedFd, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match openat2(base, rel, flags, Mode::empty(), resolve) {
        Err(rustix::io::Errno::NOSYS) => open_by_components(base, rel, flags),
        other => Ok(other?),
    }
}

/// For kernels without openat2: one component at a time, each opened with O_NOFOLLOW.
fn open_by_components(base: BorrowedFd, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == b".." || *p == b".")
    {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::XDEV.raw_os_error(),
        ));
    }
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur: Option<OwnedFd> = None;
    for (i, part) in parts.iter().enumerate() {
        let at = cur.as_ref().map(|d| d.as_fd()).unwrap_or(base);
        let f = if i + 1 == parts.len() {
            flags
        } else {
            dir_flags
        };
        cur = Some(openat(at, *part, f, Mode::empty())?);
    }
    Ok(cur.expect("a relative path has at least one component"))
}

/// Opens the directory `rel` beneath `root` for reading entries and for `*at` calls.
pub fn open_dir(root: BorrowedFd, rel: &[u8]) -> io::Result<OwnedFd> {
    open_beneath(root, rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Keeps the most recently used parent directories open: paths are handled in sorted order,
/// so neighbours share a parent and each directory is resolved about once.
pub struct DirCache {
    slots: Vec<(Vec<u8>, OwnedFd)>,
}

impl Default for DirCache {
    fn default() -> Self {
        DirCache {
            slots: Vec::with_capacity(8),
        }
    }
}

impl DirCache {
    /// The parent directory of `rel` (which must not be the root).
    pub fn parent_of(&mut self, root: BorrowedFd, rel: &[u8]) -> io::Result<BorrowedFd<'_>> {
        let dir = parent(rel).expect("the root has no parent");
        self.dir(root, dir)
    }

    pub fn dir(&mut self, root: BorrowedFd, dir: &[u8]) -> io::Result<BorrowedFd<'_>> {
        if let Some(i) = self.slots.iter().position(|(p, _)| p == dir) {
            let slot = self.slots.remove(i);
            self.slots.push(slot);
        } else {
            let fd = open_dir(root, dir)?;
            if self.slots.len() == 8 {
                self.slots.remove(0);
            }
            self.slots.push((dir.to_vec(), fd));
        }
        Ok(self.slots.last().expect("just pushed").1.as_fd())
    }

    /// Forget everything at or below `dir` (it was removed or replaced).
    pub fn forget(&mut self, dir: &[u8]) {
        self.slots.retain(|(p, _)| !crate::model::is_within(p, dir));
    }
}
