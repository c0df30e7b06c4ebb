//! `system_snapshot mount ID|all DIR`: a point, or every point, as a read-only FUSE filesystem
//! (`fuser`, its pure-Rust mount: no libfuse).
//!
//! Metadata comes from the point's state (`restore::point_state_as`), read in one read
//! transaction and built into a tree on first access. A file's content is rebuilt when it is
//! first read, as `cat` does, copied into an unnamed temp file while it is hashed, and served
//! only when the copy has the point's hash: a snapshot or a prune running beside the mount, or
//! damage, gives EIO (or ESTALE once the point is gone) and a warning, never other bytes.
//!
//! Inode numbers: entry `i` (in path order) of point `p` is `p << 32 | (i + 1)`, a hardlink
//! follower its leader's. A point's state never changes, so the numbers are the same at every
//! mount, and a tree dropped from memory (`all` keeps a few) is built again with the same ones.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, MountOption, OpenAccMode, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request, SessionACL,
};

use crate::content::{self, Body};
use crate::error::{Error, IoContext, Result};
use crate::model::{display_path, Entry, Kind, Packed, PointId, RelPath, Timestamp};
use crate::store::Store;

/// What to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Points {
    One(PointId),
    /// One directory per complete point, named by its id.
    All,
}

#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Let other users than the one mounting in (the recorded modes still apply).
    pub allow_other: bool,
}

/// Trees kept in memory with `all`: each costs about 150 bytes and its name per path.
const KEEP_TREES: usize = 4;
/// Rebuilt content up to this size stays in memory while open; larger goes to a temp file.
const IN_MEMORY: usize = 64 * 1024;
/// A point's state never changes: the kernel may keep what it was told.
const TTL: Duration = Duration::from_secs(3600);
/// The list of points does (snapshots, retention).
const TOP_TTL: Duration = Duration::from_secs(1);

// FS_IOC_GETFLAGS (and its 32-bit twin): how lsattr reads inode flags. The kernel forwards it
// to FUSE as an ioctl on an open file or directory.
const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
const FS_IOC32_GETFLAGS: u32 = 0x8004_6601;

/// A point's tree: every path of its state in path order, its entry packed, with the links
/// between directories and their children by index.
struct Tree {
    point: PointId,
    names: Vec<Box<[u8]>>,
    entries: Vec<Packed>,
    /// `u32::MAX` for the root and for a path whose directory the point lacks (left out).
    parent: Vec<u32>,
    /// The children of `i` are `kids[first_kid[i]..first_kid[i + 1]]`, in name order.
    first_kid: Vec<u32>,
    kids: Vec<u32>,
    /// Hardlink followers → their leader's index (their inode).
    leader: HashMap<u32, u32>,
    nlink: Vec<u32>,
    /// Of the names and parents: what the inode numbers stand for.
    digest: [u8; 32],
}

const NO_PARENT: u32 = u32::MAX;

impl Tree {
    fn load(store: &Store, id: PointId) -> Result<Tree> {
        let mut state = store
            .index
            .read_consistent(|_| crate::restore::point_state_as(store, id, |e| Packed::new(&e)))?;
        if state.first().is_none_or(|(p, _)| !p.is_empty()) {
            // Every snapshot records the root; a tree without it still needs one to hang from.
            state.insert(0, (Vec::new(), Packed::new(&synthetic_dir())));
        }
        let n = state.len();
        if n >= u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "point {id} has {n} paths: more than a mount can number"
            )));
        }
        let mut parent = vec![NO_PARENT; n];
        let mut nlink = vec![1u32; n];
        for (i, (path, e)) in state.iter().enumerate().skip(1) {
            let Some(dir) = crate::model::parent(path) else {
                continue;
            };
            // A directory sorts before everything below it.
            if let Ok(j) = state[..i].binary_search_by(|(q, _)| q.as_slice().cmp(dir)) {
                if state[j].1.kind() == Kind::Dir && (j == 0 || parent[j] != NO_PARENT) {
                    parent[i] = j as u32;
                    if e.kind() == Kind::Dir {
                        nlink[j] += 1;
                    }
                }
            }
        }
        for (i, (_, e)) in state.iter().enumerate() {
            if e.kind() == Kind::Dir {
                nlink[i] += 1;
            }
        }
        let mut first_kid = vec![0u32; n + 1];
        for &p in parent.iter().filter(|&&p| p != NO_PARENT) {
            first_kid[p as usize + 1] += 1;
        }
        for i in 0..n {
            first_kid[i + 1] += first_kid[i];
        }
        let mut fill = first_kid.clone();
        let mut kids = vec![0u32; first_kid[n] as usize];
        // Siblings share their directory's prefix, so path order is their name order.
        for (i, &p) in parent.iter().enumerate() {
            if p != NO_PARENT {
                kids[fill[p as usize] as usize] = i as u32;
                fill[p as usize] += 1;
            }
        }
        let mut leader = HashMap::new();
        for (i, (_, e)) in state.iter().enumerate() {
            if !e.has_link() {
                continue;
            }
            let Some(l) = e.get().link else { continue };
            if let Ok(j) = state.binary_search_by(|(q, _)| q.as_slice().cmp(&l[..])) {
                if state[j].1.kind() == Kind::File && !state[j].1.has_link() {
                    leader.insert(i as u32, j as u32);
                    nlink[j] += 1;
                }
            }
        }
        let mut names = Vec::with_capacity(n);
        let mut entries = Vec::with_capacity(n);
        let mut digest = blake3::Hasher::new();
        for (i, (path, e)) in state.into_iter().enumerate() {
            let name: Box<[u8]> = crate::model::basename(&path).into();
            digest.update(&parent[i].to_le_bytes());
            digest.update(&(name.len() as u32).to_le_bytes());
            digest.update(&name);
            names.push(name);
            entries.push(e);
        }
        Ok(Tree {
            point: id,
            names,
            entries,
            parent,
            first_kid,
            kids,
            leader,
            nlink,
            digest: *digest.finalize().as_bytes(),
        })
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn path(&self, mut i: u32) -> RelPath {
        let mut parts = Vec::new();
        while i != 0 && i != NO_PARENT {
            parts.push(&self.names[i as usize]);
            i = self.parent[i as usize];
        }
        let mut out = Vec::new();
        for (k, name) in parts.iter().rev().enumerate() {
            if k > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(name);
        }
        out
    }

    fn kids(&self, i: u32) -> &[u32] {
        let (a, b) = (self.first_kid[i as usize], self.first_kid[i as usize + 1]);
        &self.kids[a as usize..b as usize]
    }

    fn child(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let kids = self.kids(dir);
        kids.binary_search_by(|&k| self.names[k as usize][..].cmp(name))
            .ok()
            .map(|k| kids[k])
    }

    /// The index whose inode `i` is: its leader's for a hardlink follower.
    fn inode_of(&self, i: u32) -> u32 {
        self.leader.get(&i).copied().unwrap_or(i)
    }
}

fn synthetic_dir() -> Entry {
    Entry {
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: Timestamp::default(),
        rdev: 0,
        target: None,
        hash: None,
        xattrs: Default::default(),
        flags: 0,
        link: None,
        sparse: false,
        ino: 0,
        ctime: Timestamp::default(),
    }
}

/// A file's content, rebuilt and checked, while some handle has it open.
struct Content {
    data: Data,
    len: u64,
    /// The point recorded holes: the temp copy has them where the content has zero blocks.
    sparse: bool,
}

enum Data {
    Mem(Vec<u8>),
    File(File),
}

impl Content {
    fn read(&self, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let end = self.len.min(offset.saturating_add(size.into()));
        if offset >= end {
            return Ok(Vec::new());
        }
        match &self.data {
            Data::Mem(v) => Ok(v[offset as usize..end as usize].to_vec()),
            Data::File(f) => {
                let mut buf = vec![0u8; (end - offset) as usize];
                f.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            }
        }
    }

    /// SEEK_DATA / SEEK_HOLE, so that `cp -a` keeps a sparse file's holes.
    fn seek(&self, offset: u64, data: bool) -> io::Result<u64> {
        if offset >= self.len {
            return Err(io::Error::from_raw_os_error(
                rustix::io::Errno::NXIO.raw_os_error(),
            ));
        }
        match &self.data {
            Data::File(f) if self.sparse => {
                let to = if data {
                    rustix::fs::SeekFrom::Data(offset)
                } else {
                    rustix::fs::SeekFrom::Hole(offset)
                };
                Ok(rustix::fs::seek(f, to)?)
            }
            _ => Ok(if data { offset } else { self.len }),
        }
    }
}

struct Handle {
    point: PointId,
    /// The inode's index (a hardlink group's leader).
    index: u32,
    content: Mutex<Option<Arc<Content>>>,
}

enum Node {
    /// The directory of points (`all`).
    Top,
    Entry(PointId, u32),
}

struct Trees {
    loaded: HashMap<PointId, (Arc<Tree>, u64)>,
    clock: u64,
}

struct PointFs {
    store_dir: PathBuf,
    points: Points,
    /// Open stores for the worker threads (SQLite connections are one thread's at a time).
    stores: Mutex<Vec<Store>>,
    trees: Mutex<Trees>,
    /// Every tree's digest since the mount: a tree built again (after `all` dropped it) must
    /// give the inode numbers the kernel holds the same paths.
    digests: Mutex<HashMap<PointId, [u8; 32]>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_handle: AtomicU64,
    /// Contents some handle holds, by inode: a second open of a file shares the first's.
    contents: Mutex<HashMap<u64, Weak<Content>>>,
    /// Where rebuilt content goes: unnamed files (O_TMPFILE), gone with their last fd.
    scratch: OwnedFd,
    /// Paths already warned about, so that a reader retrying gives one line, not hundreds.
    warned: Mutex<HashSet<(PointId, u32)>>,
    mounted_at: SystemTime,
    owner: (u32, u32),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked left nothing half-done that the others could trip on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Socket => FileType::Socket,
    }
}

/// The kernel's 32-bit device number (`new_encode_dev`), which FUSE carries.
fn fuse_rdev(rdev: u64) -> u32 {
    let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn entry_attr(e: &Entry, ino: INodeNo, nlink: u32) -> FileAttr {
    let mtime = system_time(e.mtime);
    // Older rows carry no ctime; the mtime is the nearest truth then.
    let ctime = if e.ctime == Timestamp::default() {
        mtime
    } else {
        system_time(e.ctime)
    };
    let size = match e.kind {
        Kind::Symlink => e.target.as_ref().map_or(0, |t| t.len() as u64),
        Kind::File | Kind::Dir => e.size,
        _ => 0,
    };
    // The store knows that a file had holes, not how many blocks it used: a sparse file
    // shows none, so that `cp -a` and `du` look for its holes.
    let blocks = if e.kind == Kind::File && e.sparse {
        0
    } else {
        size.div_ceil(512)
    };
    FileAttr {
        ino,
        size,
        blocks,
        // No atime is recorded.
        atime: mtime,
        mtime,
        ctime,
        crtime: mtime,
        kind: file_type(e.kind),
        perm: if e.kind == Kind::Symlink {
            0o777
        } else {
            (e.mode & 0o7777) as u16
        },
        nlink,
        uid: e.uid,
        gid: e.gid,
        rdev: if matches!(e.kind, Kind::CharDev | Kind::BlockDev) {
            fuse_rdev(e.rdev)
        } else {
            0
        },
        blksize: 4096,
        flags: 0,
    }
}

impl PointFs {
    fn ino(&self, point: PointId, index: u32) -> INodeNo {
        if index == 0 && self.points == Points::One(point) {
            return INodeNo::ROOT;
        }
        INodeNo(((point.0 as u64) << 32) | (u64::from(index) + 1))
    }

    fn node(&self, ino: INodeNo) -> Option<Node> {
        if ino == INodeNo::ROOT {
            return Some(match self.points {
                Points::One(p) => Node::Entry(p, 0),
                Points::All => Node::Top,
            });
        }
        let (point, low) = (ino.0 >> 32, ino.0 & 0xffff_ffff);
        (point > 0 && low > 0).then(|| Node::Entry(PointId(point as i64), (low - 1) as u32))
    }

    fn with_store<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let store = lock(&self.stores).pop();
        let store = match store {
            Some(s) => s,
            None => Store::open_for_reading(&self.store_dir)?,
        };
        let r = f(&store);
        lock(&self.stores).push(store);
        r
    }

    fn point_exists(&self, id: PointId) -> bool {
        !matches!(
            self.with_store(|s| s.index.point(id)),
            Err(Error::NoSuchPoint { .. })
        )
    }

    /// The tree of point `id`, built on first use.
    fn tree(&self, id: PointId) -> std::result::Result<Arc<Tree>, Errno> {
        {
            let mut t = lock(&self.trees);
            t.clock += 1;
            let now = t.clock;
            if let Some((tree, used)) = t.loaded.get_mut(&id) {
                *used = now;
                return Ok(tree.clone());
            }
        }
        let tree = match self.with_store(|s| Tree::load(s, id)) {
            Ok(t) => Arc::new(t),
            Err(Error::NoSuchPoint { .. }) => return Err(Errno::ENOENT),
            Err(e) => {
                eprintln!("warning: point {id}: its tree cannot be read: {e}");
                return Err(Errno::EIO);
            }
        };
        match lock(&self.digests).entry(id) {
            std::collections::hash_map::Entry::Occupied(d) if *d.get() != tree.digest => {
                // A point never changes, but a repaired index may tell it otherwise: the
                // kernel's inode numbers would now name other paths.
                if lock(&self.warned).insert((id, NO_PARENT)) {
                    eprintln!("warning: point {id} reads differently than when it was mounted (was the index repaired?): unmount and mount again to see it");
                }
                return Err(Errno::ESTALE);
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(tree.digest);
            }
        }
        let mut t = lock(&self.trees);
        let now = t.clock;
        t.loaded.insert(id, (tree.clone(), now));
        while t.loaded.len() > KEEP_TREES {
            let oldest = t
                .loaded
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id);
            match oldest {
                Some(o) => t.loaded.remove(&o),
                None => break,
            };
        }
        Ok(tree)
    }

    /// The tree and index an inode names; ESTALE for one the point no longer has.
    fn entry_node(&self, point: PointId, index: u32) -> std::result::Result<Arc<Tree>, Errno> {
        let tree = match self.tree(point) {
            Ok(t) => t,
            // The kernel still holds an inode of a point that retention removed since.
            Err(e) if e == Errno::ENOENT => return Err(Errno::ESTALE),
            Err(e) => return Err(e),
        };
        if index as usize >= tree.len() {
            return Err(Errno::ESTALE);
        }
        Ok(tree)
    }

    fn attr(&self, tree: &Tree, index: u32) -> FileAttr {
        let index = tree.inode_of(index);
        let e = tree.entries[index as usize].get();
        let nlink = if index == 0 && self.points == Points::All {
            // What a point's root shows before its tree is built (see `root_attr`).
            1
        } else {
            tree.nlink[index as usize]
        };
        entry_attr(&e, self.ino(tree.point, index), nlink)
    }

    /// A point's root under `all`, without building its tree when it is not built yet: `ls -l`
    /// of the points would otherwise read the whole state of every point. Its link count is
    /// then 1 (as btrfs shows for every directory: "not counted", which `find` respects), and
    /// stays 1 once the tree is built, so that the two never disagree.
    fn root_attr(&self, id: PointId) -> std::result::Result<FileAttr, Errno> {
        if let Some((tree, _)) = lock(&self.trees).loaded.get(&id) {
            return Ok(self.attr(tree, 0));
        }
        let root = self.with_store(|s| {
            s.index
                .read_consistent(|_| crate::browse::entry_at(s, id, b""))
        });
        match root {
            Ok(Some(e)) => Ok(entry_attr(&e, self.ino(id, 0), 1)),
            Ok(None) => Ok(entry_attr(&synthetic_dir(), self.ino(id, 0), 1)),
            Err(Error::NoSuchPoint { .. }) => Err(Errno::ENOENT),
            Err(e) => {
                eprintln!("warning: point {id}: its root cannot be read: {e}");
                Err(Errno::EIO)
            }
        }
    }
    fn top_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn complete_points(&self) -> std::result::Result<Vec<PointId>, Errno> {
        self.with_store(|s| Ok(s.index.complete_points()?.iter().map(|p| p.id).collect()))
            .map_err(|e| {
                eprintln!("warning: the list of points cannot be read: {e}");
                Errno::EIO
            })
    }

    fn entry_of(&self, ino: INodeNo) -> std::result::Result<(Arc<Tree>, u32, Entry), Errno> {
        match self.node(ino) {
            Some(Node::Entry(p, i)) => {
                let tree = self.entry_node(p, i)?;
                let e = tree.entries[i as usize].get();
                Ok((tree, i, e))
            }
            Some(Node::Top) => Err(Errno::EISDIR),
            None => Err(Errno::ESTALE),
        }
    }

    /// The content of a handle's file: rebuilt on its first read, shared with other open
    /// handles of the same inode.
    fn content(&self, h: &Handle) -> std::result::Result<Arc<Content>, Errno> {
        let mut slot = lock(&h.content);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let ino = self.ino(h.point, h.index).0;
        if let Some(c) = lock(&self.contents).get(&ino).and_then(Weak::upgrade) {
            *slot = Some(c.clone());
            return Ok(c);
        }
        let tree = self.entry_node(h.point, h.index)?;
        let path = tree.path(h.index);
        let want = tree.entries[h.index as usize].get();
        let mut result = self.rebuild(&tree, &path, &want);
        if result.is_err() && self.point_exists(h.point) {
            // A snapshot shaping the replica, or a prune, between our reads of the index and
            // of the files: once more, now that it may have finished.
            std::thread::sleep(Duration::from_millis(500));
            result = self.rebuild(&tree, &path, &want);
        }
        match result {
            Ok(c) => {
                let c = Arc::new(c);
                lock(&self.contents).insert(ino, Arc::downgrade(&c));
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                let gone = !self.point_exists(h.point);
                if lock(&self.warned).insert((h.point, h.index)) {
                    let why = if gone {
                        "the point was removed from the store while mounted (reads give ESTALE)"
                            .to_string()
                    } else {
                        format!("{e} (reads give EIO)")
                    };
                    eprintln!("warning: point {} {}: {why}", h.point, display_path(&path));
                }
                Err(if gone { Errno::ESTALE } else { Errno::EIO })
            }
        }
    }

    fn rebuild(&self, tree: &Tree, path: &[u8], want: &Entry) -> Result<Content> {
        let body = self.with_store(|s| {
            crate::restore::rebuild_one_unchecked(s, tree.point, path, want, self.scratch.as_fd())
        })?;
        settle(body, want, self.scratch.as_fd()).map_err(|e| match e {
            Error::Io { op, source } => Error::Io {
                op: format!("{op} {} of point {}", display_path(path), tree.point),
                source,
            },
            other => other,
        })
    }
}

/// Makes `body` this mount's own copy, checked: the bytes served are exactly those hashed. A
/// replica file is copied (a later snapshot may patch a large one in place); a temp file of
/// our own is only hashed, unless holes must be made in it.
fn settle(body: Body, want: &Entry, scratch: BorrowedFd) -> Result<Content> {
    let mismatch = || Error::Damaged {
        what: "its content does not match the hash the point recorded".into(),
    };
    let check = |hash: crate::model::Hash, len: u64| {
        if Some(hash) == want.hash && len == want.size {
            Ok(())
        } else {
            Err(mismatch())
        }
    };
    match body {
        Body::Mem(v) => {
            check(*blake3::hash(&v).as_bytes(), v.len() as u64)?;
            if v.len() <= IN_MEMORY {
                return Ok(Content {
                    len: v.len() as u64,
                    data: Data::Mem(v),
                    sparse: false,
                });
            }
            let (f, hash, len) = copy_out(&mut &v[..], want.sparse, scratch)?;
            check(hash, len)?;
            Ok(Content {
                data: Data::File(f),
                len,
                sparse: want.sparse,
            })
        }
        Body::File(mut f) => {
            // A file the rebuild wrote into is left at its end.
            f.seek(io::SeekFrom::Start(0))
                .ctx(|| "reading the rebuilt file".into())?;
            let own = rustix::fs::fstat(&f).ctx(|| "reading the rebuilt file".into())?;
            if own.st_nlink == 0 && !want.sparse {
                let (hash, len) = crate::fsio::hash_reader(&mut f).ctx(|| "hashing".into())?;
                check(hash, len)?;
                return Ok(Content {
                    data: Data::File(f),
                    len,
                    sparse: false,
                });
            }
            let (copy, hash, len) = copy_out(&mut f, want.sparse, scratch)?;
            check(hash, len)?;
            Ok(Content {
                data: Data::File(copy),
                len,
                sparse: want.sparse,
            })
        }
    }
}

/// Copies `from` into a new unnamed temp file, hashing what it copies; all-zero 4 KiB blocks
/// become holes when `holes`.
fn copy_out(
    from: &mut dyn Read,
    holes: bool,
    scratch: BorrowedFd,
) -> Result<(File, crate::model::Hash, u64)> {
    let ctx = || "copying the rebuilt content to a temp file".to_string();
    let mut to = content::temp_file(scratch).ctx(ctx)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(ctx(), e)),
        };
        hasher.update(&buf[..n]);
        if holes {
            for (k, block) in buf[..n].chunks(4096).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    to.write_all_at(block, at + (k * 4096) as u64).ctx(ctx)?;
                }
            }
        } else {
            to.write_all_at(&buf[..n], at).ctx(ctx)?;
        }
        at += n as u64;
    }
    to.set_len(at).ctx(ctx)?;
    to.flush().ctx(ctx)?;
    Ok((to, *hasher.finalize().as_bytes(), at))
}

impl Filesystem for PointFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // With it the kernel applies the recorded ACLs too, not only the modes (it needs
        // default_permissions, which the mount has). A kernel without it still shows them.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = match self.node(parent) {
            Some(Node::Top) => {
                let id = std::str::from_utf8(name.as_bytes())
                    .ok()
                    .and_then(|n| n.parse::<i64>().ok())
                    .filter(|&n| {
                        n > 0 && n < 1 << 31 && n.to_string().as_bytes() == name.as_bytes()
                    });
                match id {
                    None => Err(Errno::ENOENT),
                    Some(id) => self.root_attr(PointId(id)).map(|a| (a, TOP_TTL)),
                }
            }
            Some(Node::Entry(p, i)) => self.entry_node(p, i).and_then(|t| {
                if t.entries[i as usize].kind() != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                t.child(i, name.as_bytes())
                    .map(|c| (self.attr(&t, c), TTL))
                    .ok_or(Errno::ENOENT)
            }),
            None => Err(Errno::ESTALE),
        };
        match r {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(Node::Top) => reply.attr(&TOP_TTL, &self.top_attr()),
            Some(Node::Entry(p, 0)) if self.points == Points::All => match self.root_attr(p) {
                Ok(a) => reply.attr(&TOP_TTL, &a),
                Err(e) if e == Errno::ENOENT => reply.error(Errno::ESTALE),
                Err(e) => reply.error(e),
            },
            Some(Node::Entry(p, i)) => match self.entry_node(p, i) {
                Ok(t) => reply.attr(&TTL, &self.attr(&t, i)),
                Err(e) => reply.error(e),
            },
            None => reply.error(Errno::ESTALE),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.entry_of(ino) {
            Ok((_, _, e)) => match e.target {
                Some(t) => reply.data(&t),
                None => reply.error(Errno::EINVAL),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc_trunc() != 0 {
            return reply.error(Errno::EROFS);
        }
        let (tree, i, e) = match self.entry_of(ino) {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        if e.kind == Kind::Dir {
            return reply.error(Errno::EISDIR);
        }
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let h = Handle {
            point: tree.point,
            index: tree.inode_of(i),
            content: Mutex::new(None),
        };
        lock(&self.handles).insert(fh, Arc::new(h));
        // The content never changes: pages cached by an earlier open are still right.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let Some(h) = lock(&self.handles).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        match self.content(&h).and_then(|c| {
            c.read(offset, size).map_err(|e| {
                eprintln!("warning: reading a rebuilt file of point {}: {e}", h.point);
                Errno::EIO
            })
        }) {
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let data = match whence {
            3 => true,  // SEEK_DATA
            4 => false, // SEEK_HOLE
            _ => return reply.error(Errno::EINVAL),
        };
        let Some(h) = lock(&self.handles).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.content(&h).and_then(|c| {
            c.seek(offset, data)
                .map_err(|e| Errno::from_i32(e.raw_os_error().unwrap_or(5)))
        }) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        // Contents no handle holds any more are gone (their temp file closed): drop their
        // entries too, so that the map stays as small as what is open.
        lock(&self.contents).retain(|_, w| w.strong_count() > 0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _d: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Some(Node::Top) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(Node::Entry(..)) => match self.entry_of(ino) {
                Ok((_, _, e)) if e.kind == Kind::Dir => {
                    reply.opened(FileHandle(0), FopenFlags::empty())
                }
                Ok(_) => reply.error(Errno::ENOTDIR),
                Err(e) => reply.error(e),
            },
            None => reply.error(Errno::ESTALE),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.node(ino) {
            Some(Node::Top) => {
                let points = match self.complete_points() {
                    Ok(p) => p,
                    Err(e) => return reply.error(e),
                };
                let mut list: Vec<(INodeNo, FileType, String)> = vec![
                    (INodeNo::ROOT, FileType::Directory, ".".into()),
                    (INodeNo::ROOT, FileType::Directory, "..".into()),
                ];
                list.extend(
                    points
                        .iter()
                        .map(|p| (self.ino(*p, 0), FileType::Directory, p.to_string())),
                );
                for (k, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
                    if reply.add(*ino, k as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Some(Node::Entry(p, i)) => {
                let tree = match self.entry_node(p, i) {
                    Ok(t) => t,
                    Err(e) => return reply.error(e),
                };
                let up = match tree.parent[i as usize] {
                    NO_PARENT => match self.points {
                        Points::All => INodeNo::ROOT,
                        Points::One(_) => self.ino(p, i),
                    },
                    d => self.ino(p, d),
                };
                let kids = tree.kids(i);
                for k in offset as usize..kids.len() + 2 {
                    let full = match k {
                        0 => reply.add(self.ino(p, i), 1, FileType::Directory, "."),
                        1 => reply.add(up, 2, FileType::Directory, ".."),
                        _ => {
                            let c = kids[k - 2];
                            let kind = file_type(tree.entries[c as usize].kind());
                            let name = OsStr::from_bytes(&tree.names[c as usize]);
                            reply.add(self.ino(p, tree.inode_of(c)), k as u64 + 1, kind, name)
                        }
                    };
                    if full {
                        break;
                    }
                }
                reply.ok()
            }
            None => reply.error(Errno::ESTALE),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let e = match self.entry_of(ino) {
            Ok((_, _, e)) => e,
            Err(e) if e == Errno::EISDIR => return reply.error(Errno::ENODATA),
            Err(e) => return reply.error(e),
        };
        match e.xattrs.0.iter().find(|(n, _)| n[..] == *name.as_bytes()) {
            None => reply.error(Errno::ENODATA),
            Some((_, v)) if size == 0 => reply.size(v.len() as u32),
            Some((_, v)) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some((_, v)) => reply.data(v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let e = match self.entry_of(ino) {
            Ok((_, _, e)) => e,
            Err(e) if e == Errno::EISDIR => return reply.size(0),
            Err(e) => return reply.error(e),
        };
        let mut list = Vec::new();
        for (n, _) in &e.xattrs.0 {
            list.extend_from_slice(n);
            list.push(0);
        }
        if size == 0 {
            reply.size(list.len() as u32)
        } else if list.len() > size as usize {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&list)
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        if cmd != FS_IOC_GETFLAGS && cmd != FS_IOC32_GETFLAGS {
            return reply.error(Errno::ENOTTY);
        }
        match self.entry_of(ino) {
            Ok((_, _, e)) => reply.ioctl(0, &e.flags.to_ne_bytes()),
            Err(e) if e == Errno::EISDIR => reply.ioctl(0, &0u32.to_ne_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }

    // Everything that would change the tree. The mount is read-only (`ro`), so the kernel
    // refuses these itself; the answers here are for a kernel that asks anyway.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS)
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS)
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS)
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS)
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS)
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS)
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS)
    }
}

fn libc_trunc() -> i32 {
    rustix::fs::OFlags::TRUNC.bits() as i32
}

/// A mounted filesystem, not yet served: `serve` answers the kernel until it is unmounted.
pub struct Mounted {
    session: fuser::Session<PointFs>,
    dir: PathBuf,
    signals: nix::sys::signal::SigSet,
}

impl Mounted {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The command that unmounts it (root may call umount; others go through fusermount3).
    pub fn unmount_command(&self) -> String {
        let tool = if rustix::process::geteuid().is_root() {
            "umount"
        } else {
            "fusermount3 -u"
        };
        format!("{tool} {}", self.dir.display())
    }

    /// Answers the kernel until DIR is unmounted: by `umount`, or here on SIGINT, SIGTERM or
    /// SIGHUP. A busy mount is left mounted with a warning; a second signal detaches it
    /// (`umount -l`), a third exits at once.
    pub fn serve(self) -> Result<()> {
        let Mounted {
            session,
            dir,
            signals,
        } = self;
        let d = dir.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || on_signals(signals, &d))
            .ctx(|| "starting the signal thread".into())?;
        session
            .run()
            .ctx(|| format!("serving the mount on {}", dir.display()))
    }
}

fn on_signals(set: nix::sys::signal::SigSet, dir: &Path) {
    let mut count = 0;
    while let Ok(_sig) = set.wait() {
        count += 1;
        match count {
            1 => match unmount(dir, false) {
                Ok(()) => {}
                Err(e) => eprintln!(
                    "warning: {} is still mounted: {e}; close what uses it (`fuser -vm {}` names it), or send the signal again to detach it",
                    dir.display(),
                    dir.display()
                ),
            },
            2 => match unmount(dir, true) {
                Ok(()) => eprintln!(
                    "{} detached: this process ends when the last program using it lets go (once more to end it now)",
                    dir.display()
                ),
                Err(e) => eprintln!("warning: {} could not be detached: {e}", dir.display()),
            },
            // As a shell reports a process ended by SIGINT.
            _ => std::process::exit(130),
        }
    }
}

fn unmount(dir: &Path, lazy: bool) -> std::result::Result<(), String> {
    let flags = if lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    match rustix::mount::unmount(dir, flags) {
        Ok(()) => Ok(()),
        // Not root: the setuid helper may unmount what this user mounted.
        Err(rustix::io::Errno::PERM) => {
            let mut last = String::new();
            for tool in ["fusermount3", "fusermount"] {
                let mut c = std::process::Command::new(tool);
                c.arg("-u");
                if lazy {
                    c.arg("-z");
                }
                match c.arg(dir).output() {
                    Ok(o) if o.status.success() => return Ok(()),
                    Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => last = format!("{tool}: {e}"),
                }
            }
            Err(last)
        }
        Err(e) => Err(io::Error::from(e).to_string()),
    }
}

/// An empty directory to mount on: anything in it would be hidden while mounted.
fn check_dir(dir: &Path) -> Result<()> {
    let mut rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::Usage(format!(
                "{} does not exist: create an empty directory to mount on (mkdir {})",
                dir.display(),
                dir.display()
            )))
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {
            return Err(Error::Usage(format!(
                "{} is not a directory: mount on an empty directory",
                dir.display()
            )))
        }
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    if rd.next().is_some() {
        return Err(Error::Usage(format!(
            "{} is not empty: mount on an empty directory (what is in it would be hidden)",
            dir.display()
        )));
    }
    Ok(())
}

/// Where rebuilt content goes: the store's `staging/` (unnamed files there are invisible to a
/// writer's clean-up, and on the store's filesystem), else the temp directory when the store
/// cannot be written (a read-only disk from a rescue system).
fn scratch_dir(store: &Store) -> Result<OwnedFd> {
    let staging = store.dir.join("staging");
    if let Ok(fd) = crate::fsio::open_root(&staging) {
        if content::temp_file(fd.as_fd()).is_ok() {
            return Ok(fd);
        }
    }
    let tmp = std::env::temp_dir();
    let fd = crate::fsio::open_root(&tmp).ctx(|| format!("opening {}", tmp.display()))?;
    content::temp_file(fd.as_fd()).ctx(|| {
        format!(
            "making a temp file in {} (nor in {}) for rebuilt content",
            tmp.display(),
            staging.display()
        )
    })?;
    Ok(fd)
}

/// Mounts `points` of the store at `store_dir` on `dir`, read-only; nothing is served until
/// `Mounted::serve`. SIGINT, SIGTERM and SIGHUP are blocked from here on (in this thread and
/// every thread started after), so that they unmount instead of killing a process the kernel
/// still waits on.
pub fn mount(store_dir: &Path, points: Points, dir: &Path, opts: &MountOptions) -> Result<Mounted> {
    check_dir(dir)?;
    // Named whole in the message that says how to unmount, whatever the caller's directory.
    let dir = &dir
        .canonicalize()
        .ctx(|| format!("resolving {}", dir.display()))?;
    let store = Store::open_for_reading(store_dir)?;
    let scratch = scratch_dir(&store)?;
    let fs = PointFs {
        store_dir: store_dir.to_path_buf(),
        points,
        stores: Mutex::new(Vec::new()),
        trees: Mutex::new(Trees {
            loaded: HashMap::new(),
            clock: 0,
        }),
        digests: Mutex::new(HashMap::new()),
        handles: Mutex::new(HashMap::new()),
        next_handle: AtomicU64::new(1),
        contents: Mutex::new(HashMap::new()),
        scratch,
        warned: Mutex::new(HashSet::new()),
        mounted_at: SystemTime::now(),
        owner: (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ),
    };
    if let Points::One(id) = points {
        if id.0 <= 0 || id.0 >= 1 << 31 {
            return Err(Error::NoSuchPoint { id: id.0 });
        }
        // Built now, so that a point that is not there or cannot be read is said before
        // anything is mounted.
        let tree = Arc::new(Tree::load(&store, id)?);
        lock(&fs.digests).insert(id, tree.digest);
        lock(&fs.trees).loaded.insert(id, (tree, 0));
    }
    lock(&fs.stores).push(store);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::FSName("restorepoint".into()),
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    // A file rebuilt from a long chain of deltas must not hold up `ls` in another directory.
    config.n_threads = Some(4);
    let mut signals = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        signals.add(s);
    }
    let old = signals
        .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
        .map_err(|e| Error::io("blocking signals", e.into()))?;
    match fuser::Session::new(fs, dir, &config) {
        Ok(session) => Ok(Mounted {
            session,
            dir: dir.to_path_buf(),
            signals,
        }),
        Err(e) => {
            let _ = old.thread_set_mask();
            Err(Error::io(
                format!(
                    "mounting on {} (FUSE: /dev/fuse, and fusermount3 from the fuse3 package when not root)",
                    dir.display()
                ),
                e,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_are_encoded_as_the_kernel_decodes_them() {
        // new_encode_dev: minor's low byte, major, then the rest of minor above bit 20.
        assert_eq!(fuse_rdev(rustix::fs::makedev(1, 3)), 0x103);
        assert_eq!(fuse_rdev(rustix::fs::makedev(259, 0x12345)), 0x12310345);
    }

    #[test]
    fn times_before_the_epoch_keep_their_nanoseconds() {
        let t = system_time(Timestamp { sec: -2, nsec: 250 });
        assert_eq!(
            UNIX_EPOCH.duration_since(t).unwrap(),
            Duration::new(1, 999_999_750)
        );
        let t = system_time(Timestamp { sec: 5, nsec: 7 });
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap(), Duration::new(5, 7));
    }

    #[test]
    fn a_sparse_copy_has_holes_and_answers_seek_data_and_hole() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = crate::fsio::open_root(dir.path()).unwrap();
        let mut bytes = vec![0u8; 3 * 4096 + 100];
        bytes[5000] = 1;
        let (f, hash, len) = copy_out(&mut &bytes[..], true, scratch.as_fd()).unwrap();
        assert_eq!(
            (hash, len),
            (*blake3::hash(&bytes).as_bytes(), bytes.len() as u64)
        );
        let c = Content {
            data: Data::File(f),
            len,
            sparse: true,
        };
        assert_eq!(c.read(0, u32::MAX).unwrap(), bytes);
        assert_eq!(c.read(4999, 2).unwrap(), vec![0, 1]);
        assert!(c.read(len, 10).unwrap().is_empty());
        // Filesystems may report holes at a coarser grain; the data block is found either way.
        let data = c.seek(0, true).unwrap();
        assert!(data <= 4096, "{data}");
        assert!(c.seek(5000, false).unwrap() >= 8192);
        assert!(c.seek(len, true).is_err());
        let m = Content {
            data: Data::Mem(bytes.clone()),
            len,
            sparse: false,
        };
        assert_eq!(
            (m.seek(10, true).unwrap(), m.seek(10, false).unwrap()),
            (10, len)
        );
    }
}
