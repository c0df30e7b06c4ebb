//! The tree walk: directory fds all the way down (so any path length works), one `fstatat` per
//! entry and nothing more, excluded entries never entered, mounts crossed only when asked.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, Mode, OFlags};

use super::meta::{stat_to_basic, Basic};
use super::resolve::open_dir;
use crate::model::{join, Kind, RelPath};

pub struct WalkOptions<'a> {
    /// Do not descend into directories on another filesystem than the start's.
    pub one_file_system: bool,
    /// True for paths to leave out (with everything below them).
    pub exclude: &'a dyn Fn(&[u8], Kind) -> bool,
    /// Told of every path found (and the size of every file).
    pub progress: &'a dyn crate::progress::Progress,
}

/// A path the walk could not read; the walk goes on without it.
#[derive(Debug, Clone)]
pub struct WalkWarning {
    pub path: RelPath,
    pub message: String,
}

/// Appends `start` (a directory beneath `root`) and everything below it to `out`, as whatever
/// the caller keeps of a path and its stat (the snapshot's pending list, without a copy).
pub fn walk<T: From<(RelPath, Basic)>>(
    root: BorrowedFd,
    start: &[u8],
    opts: &WalkOptions,
    out: &mut Vec<T>,
    warnings: &mut Vec<WalkWarning>,
) -> io::Result<()> {
    let fd = open_dir(root, start)?;
    let st = rustix::fs::fstat(&fd)?;
    let basic = stat_to_basic(&st).expect("a directory has a known type");
    seen(opts, &basic);
    out.push((start.to_vec(), basic).into());
    visit(fd, start, basic.dev, opts, out, warnings);
    Ok(())
}

fn visit<T: From<(RelPath, Basic)>>(
    dir: OwnedFd,
    path: &[u8],
    dev: u64,
    opts: &WalkOptions,
    out: &mut Vec<T>,
    warnings: &mut Vec<WalkWarning>,
) {
    let names = match read_names(dir.as_fd()) {
        Ok(n) => n,
        Err(e) => {
            warnings.push(WalkWarning {
                path: path.to_vec(),
                message: format!("cannot list: {e}"),
            });
            return;
        }
    };
    for name in names {
        let child = join(path, &name);
        let st = match rustix::fs::statat(&dir, &name[..], AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue, // deleted since the listing
            Err(e) => {
                warnings.push(WalkWarning {
                    path: child,
                    message: format!("cannot stat: {e}"),
                });
                continue;
            }
        };
        let Some(basic) = stat_to_basic(&st) else {
            continue;
        };
        if (opts.exclude)(&child, basic.kind) {
            continue;
        }
        seen(opts, &basic);
        if basic.kind != Kind::Dir || (opts.one_file_system && basic.dev != dev) {
            out.push((child, basic).into());
            continue;
        }
        out.push((child.clone(), basic).into());
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(&dir, &name[..], flags, Mode::empty()) {
            Ok(sub) => visit(sub, &child, dev, opts, out, warnings),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => warnings.push(WalkWarning {
                path: child,
                message: format!("cannot open: {e}"),
            }),
        }
    }
}

/// All names in a directory, sorted; the listing's own fd is closed before the caller descends,
/// so a deep tree holds one fd per level.
fn read_names(dir: BorrowedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for ent in Dir::read_from(dir)? {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

fn seen(opts: &WalkOptions, b: &Basic) {
    opts.progress.advance(1);
    if b.kind == Kind::File {
        opts.progress.bytes(b.size);
    }
}

/// Paths found by a walk, with what their stat said.
pub type Found = Vec<(RelPath, Basic)>;

/// Everything below `root` on its filesystem, nothing left out, nothing reported: the store's
/// own walks of the replica (verify, repair).
pub fn walk_all(root: BorrowedFd) -> io::Result<(Found, Vec<WalkWarning>)> {
    let no_exclude = |_: &[u8], _: Kind| false;
    let opts = WalkOptions {
        one_file_system: true,
        exclude: &no_exclude,
        progress: &crate::progress::Silent,
    };
    let (mut walked, mut warns) = (Vec::new(), Vec::new());
    walk(root, b"", &opts, &mut walked, &mut warns)?;
    Ok((walked, warns))
}

/// Bytes allocated to everything below `dir` (not `dir` itself), a file of several links
/// counted once: what `store::usage` counts for the replica, measured through directory fds
/// (one lookup per entry; a walk by absolute path resolves every component again, which cost a
/// first snapshot as much CPU as its `ftruncate`s).
pub fn allocated(dir: BorrowedFd) -> io::Result<u64> {
    let mut linked = std::collections::HashSet::new();
    allocated_below(dir, &mut linked)
}

fn allocated_below(
    dir: BorrowedFd,
    linked: &mut std::collections::HashSet<(u64, u64)>,
) -> io::Result<u64> {
    let mut total = 0;
    for name in read_names(dir)? {
        let st = match rustix::fs::statat(dir, &name[..], AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let is_dir =
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
        if st.st_nlink > 1 && !is_dir && !linked.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        total += st.st_blocks as u64 * 512;
        if is_dir {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let sub = rustix::fs::openat(dir, &name[..], flags, Mode::empty())?;
            total += allocated_below(sub.as_fd(), linked)?;
        }
    }
    Ok(total)
}
