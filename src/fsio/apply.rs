//! Creating nodes and applying metadata, in the order the kernel forces: content, owner (chown
//! clears setuid/setgid and capabilities), mode, ACLs (after chmod, which rewrites the mask),
//! other xattrs with `security.capability` last, times; inode flags (`i`, `a`) apart and last.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use rustix::fs::{AtFlags, FileType, IFlags, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};

use super::meta::proc_path;
use crate::model::{Entry, Kind, Xattrs};

/// Things about one path that could not be applied (not root, filesystem without xattrs):
/// reported as warnings, never a reason to stop.
pub type MetaWarnings = Vec<String>;

/// A source of file content, read once from start to end.
pub type ContentReader<'a> = &'a mut dyn Read;

pub fn is_root_user() -> bool {
    rustix::process::geteuid().is_root()
}

/// Flags `chattr` can set; others (extents, encryption, inline data…) belong to the filesystem.
pub const SETTABLE_FLAGS: u32 = 0x0000_0001 // s secure deletion
    | 0x0000_0002 // u undelete
    | 0x0000_0004 // c compress
    | 0x0000_0008 // S sync
    | 0x0000_0010 // i immutable
    | 0x0000_0020 // a append only
    | 0x0000_0040 // d no dump
    | 0x0000_0080 // A no atime
    | 0x0000_4000 // j data journalling
    | 0x0001_0000 // D dirsync
    | 0x0002_0000 // T top of directory hierarchy
    | 0x0080_0000 // C no copy on write
    | 0x2000_0000; // P project inherit

const IMMUTABLE_OR_APPEND: u32 = 0x10 | 0x20;
const NOCOW: u32 = 0x0080_0000;

/// Creates a node that is not a regular file: directory, symlink, FIFO, device, socket.
pub fn create_node(dir: BorrowedFd, name: &[u8], e: &Entry) -> io::Result<()> {
    let private = Mode::from_raw_mode(0o700);
    match e.kind {
        Kind::Dir => rustix::fs::mkdirat(dir, name, private)?,
        Kind::Symlink => {
            let target = e.target.as_deref().unwrap_or_default();
            rustix::fs::symlinkat(target, dir, name)?
        }
        Kind::Fifo => rustix::fs::mknodat(dir, name, FileType::Fifo, private, 0)?,
        Kind::Socket => rustix::fs::mknodat(dir, name, FileType::Socket, private, 0)?,
        Kind::CharDev => {
            rustix::fs::mknodat(dir, name, FileType::CharacterDevice, private, e.rdev)?
        }
        Kind::BlockDev => rustix::fs::mknodat(dir, name, FileType::BlockDevice, private, e.rdev)?,
        Kind::File => unreachable!("regular files are written with write_content"),
    }
    Ok(())
}

/// Writes all of `content` into the new, empty `file`. With `sparse`, all-zero 4 KiB blocks
/// are left as holes, so a sparse file stays sparse. Returns the number of bytes.
pub fn write_content(
    file: &File,
    content: ContentReader,
    sparse: bool,
    flags: u32,
) -> io::Result<u64> {
    if flags & NOCOW != 0 {
        // NOCOW takes effect only on an empty file.
        let _ = rustix::fs::ioctl_setflags(file, IFlags::from_bits_retain(NOCOW));
    }
    let (off, short) = super::with_io_buffer(|buf| -> io::Result<(u64, bool)> {
        let mut off = 0u64;
        // Whether the file ends in a hole the writes did not reach: only then does its length
        // need setting (an `ftruncate` per file was 2 % of a first snapshot's CPU time).
        let mut short = false;
        loop {
            let n = read_full(content, buf)?;
            if n == 0 {
                return Ok((off, short));
            }
            // A short fill saw the end already: another read would only see it again.
            let end = n < buf.len();
            if sparse {
                write_data_runs(file, &buf[..n], off)?;
                let last = &buf[(n - 1) / 4096 * 4096..n];
                short = last.iter().all(|&b| b == 0);
                off += n as u64;
            } else {
                file.write_all_at(&buf[..n], off)?;
                off += n as u64;
            }
            if end {
                return Ok((off, short));
            }
        }
    })?;
    if short {
        file.set_len(off)?;
    }
    Ok(off)
}

/// Writes `data` at `off`, leaving each all-zero 4 KiB block a hole; runs of data blocks go
/// in one write each.
pub fn write_data_runs(file: &File, data: &[u8], off: u64) -> io::Result<()> {
    let mut run: Option<usize> = None;
    for (i, block) in data.chunks(4096).enumerate() {
        let zero = block.iter().all(|&b| b == 0);
        match (zero, run) {
            (false, None) => run = Some(i * 4096),
            (true, Some(start)) => {
                file.write_all_at(&data[start..i * 4096], off + start as u64)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        file.write_all_at(&data[start..], off + start as u64)?;
    }
    Ok(())
}

/// Reads until `buf` is full or the reader ends; how much it read.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Owner, mode, xattrs and times of a regular file or directory, through its fd.
pub fn apply_meta_fd(fd: BorrowedFd, e: &Entry, warn: &mut MetaWarnings) -> io::Result<()> {
    set_owner(warn, e, |uid, gid| rustix::fs::fchown(fd, uid, gid))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(e.mode))?;
    converge_xattrs(XattrTarget::Fd(fd), &e.xattrs, warn)?;
    rustix::fs::futimens(fd, &times(e))?;
    Ok(())
}

/// The same for nodes that cannot be opened safely (symlinks, FIFOs, devices, sockets).
pub fn apply_meta_at(
    dir: BorrowedFd,
    name: &[u8],
    e: &Entry,
    warn: &mut MetaWarnings,
) -> io::Result<()> {
    set_owner(warn, e, |uid, gid| {
        rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
    })?;
    if e.kind != Kind::Symlink {
        rustix::fs::chmodat(dir, name, Mode::from_raw_mode(e.mode), AtFlags::empty())?;
    }
    converge_xattrs(XattrTarget::Path(proc_path(dir, name)), &e.xattrs, warn)?;
    rustix::fs::utimensat(dir, name, &times(e), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn set_owner(
    warn: &mut MetaWarnings,
    e: &Entry,
    chown: impl FnOnce(Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) -> rustix::io::Result<()>,
) -> io::Result<()> {
    let uid = rustix::fs::Uid::from_raw(e.uid);
    let gid = rustix::fs::Gid::from_raw(e.gid);
    match chown(Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) if !is_root_user() => {
            warn.push(format!(
                "owner {}:{} not set (not running as root)",
                e.uid, e.gid
            ));
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

fn times(e: &Entry) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: e.mtime.sec,
            tv_nsec: e.mtime.nsec as _,
        },
    }
}

/// Where xattrs are set: an open file or directory, or (for nodes that must not be opened) a
/// path through the parent's fd, whose last component the l* calls do not follow.
enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    Path(Vec<u8>),
}

impl XattrTarget<'_> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrTarget::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            XattrTarget::Path(p) => rustix::fs::llistxattr(&p[..], buf),
        }
    }
    fn remove(&self, name: &[u8]) -> rustix::io::Result<()> {
        match self {
            XattrTarget::Fd(fd) => rustix::fs::fremovexattr(fd, name),
            XattrTarget::Path(p) => rustix::fs::lremovexattr(&p[..], name),
        }
    }
    fn set(&self, name: &[u8], value: &[u8]) -> rustix::io::Result<()> {
        let flags = rustix::fs::XattrFlags::empty();
        match self {
            XattrTarget::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, flags),
            XattrTarget::Path(p) => rustix::fs::lsetxattr(&p[..], name, value, flags),
        }
    }
}

fn list_xattrs(t: &XattrTarget) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match t.list(&mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Makes the xattrs at `path` exactly `want`: extra ones removed (an inherited default ACL, a
/// stale capability), then ACLs, the rest, and the capability last.
fn converge_xattrs(t: XattrTarget, want: &Xattrs, warn: &mut MetaWarnings) -> io::Result<()> {
    for name in &list_xattrs(&t)? {
        // The security module labels new files itself; removing its label is not ours to do.
        if name == b"security.selinux" || want.0.iter().any(|(n, _)| n == name) {
            continue;
        }
        if let Err(e) = t.remove(name) {
            warn.push(format!(
                "xattr {} not removed: {e}",
                String::from_utf8_lossy(name)
            ));
        }
    }
    let rank = |n: &[u8]| match n {
        b"system.posix_acl_access" | b"system.posix_acl_default" => 0,
        b"security.capability" => 2,
        _ => 1,
    };
    let mut ordered: Vec<&(Vec<u8>, Vec<u8>)> = want.0.iter().collect();
    ordered.sort_by_key(|(n, _)| rank(n));
    for (name, value) in ordered {
        if let Err(e) = t.set(name, value) {
            if e == rustix::io::Errno::PERM || e == rustix::io::Errno::OPNOTSUPP || !is_root_user()
            {
                warn.push(format!(
                    "xattr {} not set: {e}",
                    String::from_utf8_lossy(name)
                ));
            } else {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Sets the settable inode flags of `name` (a file or directory) to exactly `flags`.
pub fn apply_flags(
    dir: BorrowedFd,
    name: &[u8],
    flags: u32,
    warn: &mut MetaWarnings,
) -> io::Result<()> {
    let oflags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, oflags, Mode::empty())?;
    let current = match rustix::fs::ioctl_getflags(&fd) {
        Ok(f) => f.bits(),
        Err(_) if flags & SETTABLE_FLAGS == 0 => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let wanted = (current & !SETTABLE_FLAGS) | (flags & SETTABLE_FLAGS);
    if wanted != current {
        if let Err(e) = rustix::fs::ioctl_setflags(&fd, IFlags::from_bits_retain(wanted)) {
            warn.push(format!("inode flags {wanted:#x} not set: {e}"));
        }
    }
    Ok(())
}

/// Clears `i` and `a` on `name` if set, so it can be replaced, changed or removed.
pub fn clear_immutable(dir: BorrowedFd, name: &[u8]) -> io::Result<()> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile && ft != FileType::Directory {
        return Ok(());
    }
    let oflags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd: OwnedFd = rustix::fs::openat(dir, name, oflags, Mode::empty())?;
    if let Ok(f) = rustix::fs::ioctl_getflags(&fd) {
        if f.bits() & IMMUTABLE_OR_APPEND != 0 {
            rustix::fs::ioctl_setflags(
                &fd,
                IFlags::from_bits_retain(f.bits() & !IMMUTABLE_OR_APPEND),
            )?;
        }
    }
    Ok(())
}

/// Removes `name` and, for a directory, everything in it — without following symlinks and
/// without entering another filesystem than `dev` (a mount point is an error, not a target).
pub fn remove_tree(dir: BorrowedFd, name: &[u8], dev: Option<u64>) -> io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    clear_immutable(dir, name)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    if dev.is_some_and(|d| d != st.st_dev) {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "{} is a mount point; it is left alone",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let sub = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(&sub)? {
        let n = ent?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(n);
        }
    }
    for n in names {
        remove_tree(sub.as_fd(), &n, Some(st.st_dev))?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}
