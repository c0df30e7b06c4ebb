//! Reading an entry's metadata: `Basic` (one stat, enough for the quick check) and the full
//! `Entry` (xattrs of every namespace, inode flags, link target), read only when needed.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{FileType, Mode, OFlags, Stat};

use crate::model::{Entry, Hash, Kind, Timestamp, Xattrs};

/// What one `fstatat` says about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basic {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub ino: u64,
    pub dev: u64,
    pub rdev: u64,
    pub nlink: u64,
    pub blocks: u64,
}

pub fn stat_to_basic(st: &Stat) -> Option<Basic> {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::CharacterDevice => Kind::CharDev,
        FileType::BlockDevice => Kind::BlockDev,
        FileType::Socket => Kind::Socket,
        FileType::Unknown => return None,
    };
    Some(Basic {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == Kind::File || kind == Kind::Symlink {
            st.st_size as u64
        } else {
            0
        },
        mtime: Timestamp {
            sec: st.st_mtime,
            nsec: st.st_mtime_nsec as u32,
        },
        ctime: Timestamp {
            sec: st.st_ctime,
            nsec: st.st_ctime_nsec as u32,
        },
        ino: st.st_ino,
        dev: st.st_dev,
        rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            st.st_rdev
        } else {
            0
        },
        nlink: st.st_nlink,
        blocks: st.st_blocks as u64,
    })
}

impl Basic {
    /// An entry with this stat's fields; xattrs, flags, target and hash still to be read.
    pub fn to_entry(&self, link: Option<Vec<u8>>) -> Entry {
        Entry {
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            mtime: self.mtime,
            rdev: self.rdev,
            target: None,
            hash: None,
            xattrs: Xattrs::default(),
            flags: 0,
            link,
            // Fewer 512-byte blocks than the size needs: there are holes worth keeping.
            sparse: self.kind == Kind::File && self.blocks * 512 + 4096 <= self.size,
            ino: self.ino,
            ctime: self.ctime,
        }
    }
}

/// Completes `entry` for `name` in `dir`: symlink target, xattrs, inode flags. Content is
/// hashed separately, by whoever reads it.
pub fn read_entry(dir: BorrowedFd, name: &[u8], entry: &mut Entry) -> io::Result<()> {
    if entry.kind == Kind::Symlink {
        entry.target = Some(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes());
    }
    entry.xattrs = read_xattrs(dir, name)?;
    if matches!(entry.kind, Kind::File | Kind::Dir) {
        entry.flags = read_flags(dir, name)?;
    }
    Ok(())
}

/// Path of `name` through the pinned directory fd: works for symlinks (the l* calls do not
/// follow the last component) and for paths of any length.
pub(crate) fn proc_path(dir: BorrowedFd, name: &[u8]) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

/// Where xattrs are read from: a path through a pinned directory (any kind of entry, without
/// following a symlink) or an open file (one lookup fewer per file than the path, which goes
/// through `/proc`).
enum XattrSource<'a> {
    Path(Vec<u8>),
    Fd(BorrowedFd<'a>),
}

impl XattrSource<'_> {
    fn list_len(&self) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Path(p) => rustix::fs::llistxattr_query(&p[..]),
            XattrSource::Fd(fd) => rustix::fs::flistxattr_query(fd),
        }
    }

    fn get_len(&self, xname: &[u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Path(p) => rustix::fs::lgetxattr_query(&p[..], xname),
            XattrSource::Fd(fd) => rustix::fs::fgetxattr_query(fd, xname),
        }
    }

    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Path(p) => rustix::fs::llistxattr(&p[..], buf),
            XattrSource::Fd(fd) => rustix::fs::flistxattr(fd, buf),
        }
    }

    fn get(&self, xname: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            XattrSource::Path(p) => rustix::fs::lgetxattr(&p[..], xname, buf),
            XattrSource::Fd(fd) => rustix::fs::fgetxattr(fd, xname, buf),
        }
    }
}

fn read_xattrs(dir: BorrowedFd, name: &[u8]) -> io::Result<Xattrs> {
    read_xattrs_from(&XattrSource::Path(proc_path(dir, name)))
}

fn read_xattrs_from(src: &XattrSource) -> io::Result<Xattrs> {
    let names = loop {
        let n = match src.list_len() {
            Ok(n) => n,
            Err(e) if e == rustix::io::Errno::OPNOTSUPP => return Ok(Xattrs::default()),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(Xattrs::default());
        }
        let mut buf = vec![0u8; n];
        match src.list(&mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                break buf;
            }
            Err(rustix::io::Errno::RANGE) => continue, // grew meanwhile
            Err(e) => return Err(e.into()),
        }
    };
    let mut pairs = Vec::new();
    for xname in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        match read_xattr_value(src, xname) {
            Ok(v) => pairs.push((xname.to_vec(), v)),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
    }
    pairs.sort();
    Ok(Xattrs(pairs))
}

fn read_xattr_value(src: &XattrSource, xname: &[u8]) -> io::Result<Vec<u8>> {
    loop {
        let n = src.get_len(xname)?;
        let mut buf = vec![0u8; n];
        if n == 0 {
            return Ok(buf);
        }
        match src.get(xname, &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Completes the entry of a regular file from the file itself, opened for reading: xattrs and
/// inode flags through the descriptor the content is read from.
pub fn read_file_entry(fd: BorrowedFd, entry: &mut Entry) -> io::Result<()> {
    entry.xattrs = read_xattrs_from(&XattrSource::Fd(fd))?;
    entry.flags = flags_of(fd)?;
    Ok(())
}

fn read_flags(dir: BorrowedFd, name: &[u8]) -> io::Result<u32> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    flags_of(fd.as_fd())
}

fn flags_of(fd: BorrowedFd) -> io::Result<u32> {
    match rustix::fs::ioctl_getflags(fd) {
        Ok(f) => Ok(f.bits()),
        // Filesystems without inode flags (some FUSE, older tmpfs) have none to keep.
        Err(e)
            if e == rustix::io::Errno::NOTTY
                || e == rustix::io::Errno::OPNOTSUPP
                || e == rustix::io::Errno::INVAL =>
        {
            Ok(0)
        }
        Err(e) => Err(e.into()),
    }
}

/// BLAKE3 of everything `r` yields, and how many bytes that was.
pub fn hash_reader(mut r: impl Read) -> io::Result<(Hash, u64)> {
    let mut h = blake3::Hasher::new();
    let mut total = 0u64;
    super::with_io_buffer(|buf| -> io::Result<()> {
        loop {
            let n = match r.read(buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            total += n as u64;
        }
    })?;
    Ok((*h.finalize().as_bytes(), total))
}

/// A reader that hashes what passes through it.
pub struct HashingRead<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> HashingRead<R> {
    pub fn new(inner: R) -> Self {
        HashingRead {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }

    /// The hash of everything read so far.
    pub fn hash(&self) -> Hash {
        *self.hasher.finalize().as_bytes()
    }
}

impl<R: Read> Read for HashingRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
