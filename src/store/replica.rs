//! Bringing replica paths to a wanted state. Used by the snapshot (after every row of the point
//! is durable; a first point path by path, `Direct`) and by the rollback of an interrupted point. The replica holds directories,
//! regular files and symlinks with owner, mode and mtime; never inode flags, xattrs or device
//! nodes (the index has those), so nothing in it can block its own updates or act on the host.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::Store;
use crate::error::{IoContext, Result};
use crate::fsio::{self, DirCache};
use crate::model::{basename, display_path, parent, Entry, Hash, Kind, RelPath, Xattrs};

/// Where a wanted regular file's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fill {
    /// The replica file already has the right content.
    Keep,
    /// A file in `staging/` to be renamed into place.
    Staged(Vec<u8>),
    /// A hardlink of this replica path (the group's leader, shaped earlier in path order):
    /// a hardlink group takes the space of one file in the replica, as in the system. The
    /// staged copy, when there is one, serves if the leader's copy cannot be linked.
    Link(RelPath, Option<Vec<u8>>),
    /// A staged patch (`RPP1`: the new size, then offset/length/bytes records) written into
    /// the replica file in place: a large file whose changed blocks only are replaced. Its
    /// undo container is already durable in the pack (DESIGN.md "Large files").
    Patch(Vec<u8>),
    /// Written at its place in the replica by a first point (`Direct::create_file`), its
    /// metadata still to set: `Direct::put` is handed the open file.
    Written,
}

#[derive(Debug, Clone)]
pub struct Shape {
    pub path: RelPath,
    pub want: Option<Entry>,
    pub fill: Fill,
}

fn in_replica(e: &Option<Entry>) -> Option<Kind> {
    e.as_ref()
        .map(|e| e.kind)
        .filter(|k| matches!(k, Kind::File | Kind::Dir | Kind::Symlink))
}

/// `items` sorted by path. Afterwards each path in the replica matches its wanted state.
/// Returns by how many allocated bytes the replica's contents grew (or shrank): the paths
/// shaped and their directories, measured before and after (every path that changes is an
/// item: a removed directory's contents are items too).
/// `twins`: link files of the same content and fields (a snapshot; a rollback stages
/// placeholders whose content is not their entry's, so it never links).
pub fn shape(store: &Store, items: &[Shape], twins: bool) -> Result<i64> {
    let measured: BTreeSet<&[u8]> = items
        .iter()
        .flat_map(|it| {
            let leader = match &it.fill {
                Fill::Link(l, _) => Some(l.as_slice()),
                _ => None,
            };
            std::iter::once(it.path.as_slice())
                .chain(parent(&it.path))
                .chain(leader)
        })
        .filter(|p| !p.is_empty())
        .collect();
    let before = inodes(store, &measured)?;
    shape_paths(store, items, twins)?;
    let after = inodes(store, &measured)?;
    Ok(growth(&before, &after))
}

/// The inodes `paths` name in the replica: (dev, ino) -> (allocated bytes, links, how many
/// of `paths` are links of it).
type Inodes = HashMap<(u64, u64), (i64, u64, u64)>;

fn inodes(store: &Store, paths: &BTreeSet<&[u8]>) -> Result<Inodes> {
    let root = store.replica();
    let mut cache = DirCache::default();
    let mut found = Inodes::new();
    for p in paths {
        let dir = match cache.parent_of(root, p) {
            Ok(d) => d,
            Err(e) if fsio::is_missing(&e) => continue,
            Err(e) => {
                return Err(e)
                    .ctx(|| format!("opening the replica's parent of {}", display_path(p)))
            }
        };
        match rustix::fs::statat(dir, basename(p), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                // A directory's link count counts its subdirectories, not other names of it.
                let links = match FileType::from_raw_mode(st.st_mode) {
                    FileType::RegularFile => st.st_nlink,
                    _ => 1,
                };
                let i =
                    found
                        .entry((st.st_dev, st.st_ino))
                        .or_insert((st.st_blocks * 512, links, 0));
                i.2 += 1;
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e).ctx(|| format!("stat of replica {}", display_path(p))),
        }
    }
    Ok(found)
}

/// By how much the replica's allocation changed, from the inodes the shaped paths named before
/// and after. Exact when a shared inode is split: an inode the paths no longer name still
/// counts when it had links outside them (a twin that kept it, a group member left alone),
/// and a link made by the shaping always goes to a path among them.
fn growth(before: &Inodes, after: &Inodes) -> i64 {
    let was: i64 = before.values().map(|&(b, _, _)| b).sum();
    let kept_outside: i64 = before
        .iter()
        .filter(|(k, &(_, links, named))| !after.contains_key(*k) && links > named)
        .map(|(_, &(b, _, _))| b)
        .sum();
    let now: i64 = after.values().map(|&(b, _, _)| b).sum();
    now + kept_outside - was
}

fn shape_paths(store: &Store, items: &[Shape], twins: bool) -> Result<()> {
    let root = store.replica();
    let mut cache = DirCache::default();
    // Removals, deepest first: anything whose type is not the wanted one.
    for it in items.iter().rev().filter(|it| !it.path.is_empty()) {
        let dir = match cache.parent_of(root, &it.path) {
            Ok(d) => d,
            Err(e) if fsio::is_missing(&e) => continue,
            Err(e) => {
                return Err(e)
                    .ctx(|| format!("opening the replica's parent of {}", display_path(&it.path)))
            }
        };
        let name = basename(&it.path);
        let have = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => FileType::from_raw_mode(st.st_mode),
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e).ctx(|| format!("stat of replica {}", display_path(&it.path))),
        };
        let keep = match in_replica(&it.want) {
            Some(Kind::Dir) => have == FileType::Directory,
            Some(Kind::File) => have == FileType::RegularFile,
            Some(Kind::Symlink) => {
                have == FileType::Symlink && !symlink_differs(dir, name, &it.want)?
            }
            _ => false,
        };
        if !keep {
            fsio::remove_tree(dir, name, None)
                .ctx(|| format!("removing replica {}", display_path(&it.path)))?;
            cache.forget(&it.path);
        }
    }
    // Creations, parents first.
    let mut touched_dirs: BTreeSet<RelPath> = BTreeSet::new();
    let mut dedup = Dedup {
        off: !twins,
        ..Dedup::default()
    };
    for it in items {
        let Some(kind) = in_replica(&it.want) else {
            continue;
        };
        if let Some(p) = parent(&it.path) {
            touched_dirs.insert(p.to_vec());
        }
        if kind == Kind::Dir {
            touched_dirs.insert(it.path.clone());
        }
        create(store, &mut cache, &mut dedup, it)?;
    }
    // Directory metadata, deepest first, once their contents stopped changing.
    for d in touched_dirs.iter().rev() {
        // The wanted state when the directory is among the items, else the index's (unchanged).
        let e = match items.binary_search_by(|it| it.path.as_slice().cmp(d)) {
            Ok(i) => items[i].want.clone(),
            Err(_) => store.index.entry(d)?,
        };
        if let Some(e) = e {
            dir_meta(store, d, &e)?;
        }
    }
    Ok(())
}

/// Owner, mode and mtime of replica directory `d`, when it is one.
fn dir_meta(store: &Store, d: &[u8], e: &Entry) -> Result<()> {
    if e.kind != Kind::Dir {
        return Ok(());
    }
    let fd = match fsio::open_dir(store.replica(), d) {
        Ok(fd) => fd,
        Err(err) if fsio::is_missing(&err) => return Ok(()),
        Err(err) => return Err(err).ctx(|| format!("opening replica {}", display_path(d))),
    };
    replica_meta_fd(fd.as_fd(), e).ctx(|| format!("updating replica {}", display_path(d)))
}

/// The first point's replica, written path by path as the snapshot reads them. The replica is
/// empty before a first point, and a first point that does not complete is undone by emptying
/// it (DESIGN.md "Snapshot"), so nothing needs to wait for the rows. That saves the shaping
/// pass: a stat of every path before and after, a list of every path in memory, and `staging/`:
/// each file is written at its own place (`create_file`) and given its metadata through the
/// descriptor it was written through, with no rename and no second open.
pub struct Direct {
    cache: DirCache,
    dedup: Dedup,
    /// Directories get their metadata last, deepest first, once their contents stop changing.
    dirs: Vec<(RelPath, Entry)>,
    before: u64,
    writeback: Option<fsio::Writeback>,
}

impl Direct {
    pub fn new(store: &Store) -> Result<Direct> {
        let before = fsio::allocated(store.replica())
            .ctx(|| format!("measuring the replica of {}", store.dir.display()))?;
        Ok(Direct {
            cache: DirCache::default(),
            dedup: Dedup::default(),
            dirs: Vec::new(),
            before,
            writeback: fsio::Writeback::start(store.replica()),
        })
    }

    /// Opens the replica directory that `path` goes into; the snapshot cannot go on without
    /// it.
    pub fn parent(&mut self, store: &Store, path: &[u8]) -> Result<()> {
        self.cache
            .parent_of(store.replica(), path)
            .ctx(|| format!("opening replica parent of {}", display_path(path)))?;
        Ok(())
    }

    /// A new, empty replica file at `path` (its parent opened by `parent`) for the file's
    /// content to be written into as it is read.
    pub fn create_file(&mut self, store: &Store, path: &[u8]) -> std::io::Result<File> {
        let dir = self.cache.parent_of(store.replica(), path)?;
        let flags =
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, basename(path), flags, Mode::from_raw_mode(0o600))?;
        Ok(File::from(fd))
    }

    /// Removes what `create_file` made at `path`, when the file could not be read after all.
    pub fn remove_file(&mut self, store: &Store, path: &[u8]) -> std::io::Result<()> {
        let dir = self.cache.parent_of(store.replica(), path)?;
        match rustix::fs::unlinkat(dir, basename(path), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `it` comes after every path before it in byte order (so after its parent and its
    /// hardlink leader). `written`: the file `create_file` made for it, holding its content.
    pub fn put(&mut self, store: &Store, it: Shape, written: Option<File>) -> Result<()> {
        match written {
            Some(f) => self.put_written(store, &it, &f)?,
            None => create(store, &mut self.cache, &mut self.dedup, &it)?,
        }
        if let Fill::Link(_, Some(staged)) = &it.fill {
            // The fallback copy, when the link was made: not needed, and `staging/` stays small.
            match rustix::fs::unlinkat(store.staging(), &staged[..], AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    return Err(e).ctx(|| format!("removing staged {}", display_path(staged)))
                }
            }
        }
        if let Some(w) = &mut self.writeback {
            w.wrote(
                it.want
                    .as_ref()
                    .filter(|e| e.kind == Kind::File)
                    .map_or(0, |e| e.size),
            );
        }
        if let Some(e) = it.want.filter(|e| e.kind == Kind::Dir) {
            self.dirs.push((it.path, e));
        }
        Ok(())
    }

    /// A file already at its place: linked to its hardlink leader or a twin instead when it
    /// can be (the link is renamed over it), else given its metadata.
    fn put_written(&mut self, store: &Store, it: &Shape, f: &File) -> Result<()> {
        let e = it.want.as_ref().expect("a written file has a state");
        let what = || format!("updating replica {}", display_path(&it.path));
        let dir = self.cache.parent_of(store.replica(), &it.path).ctx(what)?;
        let name = basename(&it.path);
        let linked = match &it.fill {
            // The leader's copy is missing (damage): the follower keeps its own.
            Fill::Link(leader, _) => link_to(store, leader, dir, name).is_ok(),
            _ => self
                .dedup
                .twin(e)
                .is_some_and(|t| link_to(store, &t, dir, name).is_ok()),
        };
        if !linked {
            replica_meta_fd(f.as_fd(), e).ctx(what)?;
            if !matches!(it.fill, Fill::Link(..)) {
                self.dedup.remember(&it.path, e);
            }
        }
        Ok(())
    }

    /// Directory metadata; returns by how many allocated bytes the replica grew (measured by
    /// a walk: the tree was just written, so its inodes are in the cache).
    pub fn finish(mut self, store: &Store) -> Result<i64> {
        drop(self.writeback.take());
        for (d, e) in self.dirs.iter().rev() {
            dir_meta(store, d, e)?;
        }
        let after = fsio::allocated(store.replica())
            .ctx(|| format!("measuring the replica of {}", store.dir.display()))?;
        Ok(after as i64 - self.before as i64)
    }
}

/// Creates one wanted path whose parent exists: a directory (metadata comes later, once its
/// contents stop changing), a file from its fill, a symlink.
fn create(store: &Store, cache: &mut DirCache, dedup: &mut Dedup, it: &Shape) -> Result<()> {
    let root = store.replica();
    let Some(kind) = in_replica(&it.want) else {
        return Ok(());
    };
    let e = it.want.as_ref().expect("in_replica implies a state");
    if kind == Kind::Dir {
        if !it.path.is_empty() {
            let dir = cache
                .parent_of(root, &it.path)
                .ctx(|| format!("opening replica parent of {}", display_path(&it.path)))?;
            match rustix::fs::mkdirat(dir, basename(&it.path), Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => {
                    return Err(e).ctx(|| format!("creating replica {}", display_path(&it.path)))
                }
            }
        }
        return Ok(());
    }
    let dir = cache
        .parent_of(root, &it.path)
        .ctx(|| format!("opening replica parent of {}", display_path(&it.path)))?;
    let name = basename(&it.path);
    let what = || format!("updating replica {}", display_path(&it.path));
    match (kind, &it.fill) {
        (Kind::File, Fill::Staged(staged)) => {
            let twin = dedup
                .twin(e)
                .filter(|t| link_to(store, t, dir, name).is_ok());
            if twin.is_some() {
                match rustix::fs::unlinkat(store.staging(), &staged[..], AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(err) => return Err(err).ctx(what),
                }
            } else {
                put_staged(store, staged, dir, name, e).ctx(what)?;
                dedup.remember(&it.path, e);
            }
        }
        (Kind::File, Fill::Link(leader, staged)) => {
            match (link_to(store, leader, dir, name), staged) {
                (Ok(()), _) => {}
                // The leader's copy is missing (damage): the follower keeps its own.
                (Err(_), Some(staged)) => {
                    put_staged(store, staged, dir, name, e).ctx(what)?;
                }
                (Err(err), None) => return Err(err).ctx(what),
            }
        }
        (Kind::File, Fill::Patch(staged)) => {
            apply_patch(store, staged, dir, name).ctx(what)?;
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).ctx(what)?;
            replica_meta_fd(fd.as_fd(), e).ctx(what)?;
        }
        (Kind::File, Fill::Keep | Fill::Written) => {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).ctx(what)?;
            let st = rustix::fs::fstat(&fd).ctx(what)?;
            if st.st_nlink > 1 && !meta_is(&st, e) {
                // A shared inode (a hardlink group, or twins) would carry the new owner, mode
                // or mtime to the other paths: this one gets a copy of its own first.
                own_copy(store, fd.as_fd(), dir, name, e).ctx(what)?;
            } else {
                replica_meta_fd(fd.as_fd(), e).ctx(what)?;
            }
        }
        (Kind::Symlink, _) => {
            if rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_err() {
                fsio::create_node(dir, name, e).ctx(what)?;
            }
            let plain = plain_meta(e);
            fsio::apply_meta_at(dir, name, &plain, &mut Vec::new()).ctx(what)?;
        }
        _ => unreachable!("only files, directories and symlinks live in the replica"),
    }
    Ok(())
}

/// Makes `dir/name` a hardlink of replica file `target`. The new link is made in `staging/`,
/// which every writer empties: a kill before the rename leaves nothing in the replica.
fn link_to(
    store: &Store,
    target: &[u8],
    dir: std::os::fd::BorrowedFd,
    name: &[u8],
) -> std::io::Result<()> {
    let (tdir, tname) = (parent(target).unwrap_or(b""), basename(target));
    let tdir = fsio::open_dir(store.replica(), tdir)?;
    let staging = store.staging();
    let tmp = format!("link-{}", std::process::id()).into_bytes();
    let _ = rustix::fs::unlinkat(staging, &tmp[..], AtFlags::empty());
    rustix::fs::linkat(&tdir, tname, staging, &tmp[..], AtFlags::empty())?;
    rustix::fs::renameat(staging, &tmp[..], dir, name)?;
    // Renaming a link over another link of the same file does nothing (POSIX): a member
    // already linked to its leader would keep the temp name too.
    match rustix::fs::unlinkat(staging, &tmp[..], AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Regular files this pass put into the replica, by content and the metadata the replica
/// keeps: a later one that matches one of them (the same licence text in a hundred
/// `/usr/share/doc` directories) becomes a hardlink of it instead of another copy, as a
/// deduplicating backup stores it once. Only files written by this pass: a file patched in
/// place must have one link (`apply_patch`), and those are older. Bounded, so a million files
/// cost no more than 65 536 remembered ones (it starts over when full: twins tend to be
/// neighbours in path order).
#[derive(Default)]
struct Dedup {
    /// BLAKE3 of the content hash and the three fields -> the path.
    seen: HashMap<Hash, Box<[u8]>>,
    /// Linking nothing: the staged files may not hold their entry's content.
    off: bool,
}

/// About 48 bytes a file and the path: a few MiB at most.
const DEDUP_MAX: usize = 1 << 16;

impl Dedup {
    fn key(&self, e: &Entry) -> Option<Hash> {
        // An empty file takes no blocks; a link would save nothing.
        if self.off || e.kind != Kind::File || e.size == 0 {
            return None;
        }
        let mut h = blake3::Hasher::new();
        h.update(&e.hash?);
        for v in [e.uid, e.gid, e.mode, e.mtime.nsec] {
            h.update(&v.to_le_bytes());
        }
        h.update(&e.mtime.sec.to_le_bytes());
        Some(*h.finalize().as_bytes())
    }

    fn twin(&self, e: &Entry) -> Option<RelPath> {
        self.seen.get(&self.key(e)?).map(|p| p.to_vec())
    }

    fn remember(&mut self, path: &[u8], e: &Entry) {
        if let Some(k) = self.key(e) {
            if self.seen.len() >= DEDUP_MAX {
                self.seen = HashMap::new();
            }
            self.seen.insert(k, path.into());
        }
    }
}

/// Whether a replica inode already has the owner, mode and mtime it would be given.
fn meta_is(st: &rustix::fs::Stat, e: &Entry) -> bool {
    let owner = !fsio::is_root_user() || (st.st_uid, st.st_gid) == (e.uid, e.gid);
    owner
        && st.st_mode & 0o7777 == e.mode
        && (st.st_mtime, st.st_mtime_nsec as u32) == (e.mtime.sec, e.mtime.nsec)
}

/// Replaces the shared replica file `dir/name` (open as `fd`) with a copy of its own that has
/// `e`'s metadata: staged, then renamed over.
fn own_copy(
    store: &Store,
    fd: std::os::fd::BorrowedFd,
    dir: std::os::fd::BorrowedFd,
    name: &[u8],
    e: &Entry,
) -> std::io::Result<()> {
    let tmp = format!("own-{}", std::process::id()).into_bytes();
    let _ = rustix::fs::unlinkat(store.staging(), &tmp[..], AtFlags::empty());
    let copy = store.create_staged(&tmp)?;
    let mut src = std::fs::File::from(fd.try_clone_to_owned()?);
    fsio::write_content(&copy, &mut src, true, 0)?;
    // Renamed over the only copy of the latest version: durable first, as staged files are.
    copy.sync_data()?;
    drop(copy);
    put_staged(store, &tmp, dir, name, e)
}

/// Writes a staged patch into the replica file `dir/name`, which must be a file of its own (a
/// hardlink would carry the change to another path).
fn apply_patch(
    store: &Store,
    staged: &[u8],
    dir: std::os::fd::BorrowedFd,
    name: &[u8],
) -> std::io::Result<()> {
    let patch = store.open_staged(staged)?;
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let file = std::fs::File::from(rustix::fs::openat(dir, name, flags, Mode::empty())?);
    if rustix::fs::fstat(&file)?.st_nlink != 1 {
        return Err(std::io::Error::other(
            "the replica file is a hardlink and cannot be patched in place",
        ));
    }
    let mut r = std::io::BufReader::new(patch);
    crate::delta::apply_patch(&mut r, &file, &|| {
        crate::failpoint::hit("replica-patch-write")
    })
}

/// A staged file, given the replica's metadata, renamed into place as `dir/name`.
fn put_staged(
    store: &Store,
    staged: &[u8],
    dir: std::os::fd::BorrowedFd,
    name: &[u8],
    e: &Entry,
) -> std::io::Result<()> {
    let fd = store.open_staged(staged)?;
    replica_meta_fd(fd.as_fd(), e)?;
    Ok(rustix::fs::renameat(store.staging(), staged, dir, name)?)
}

fn symlink_differs(
    dir: std::os::fd::BorrowedFd,
    name: &[u8],
    want: &Option<Entry>,
) -> Result<bool> {
    let have = rustix::fs::readlinkat(dir, name, Vec::new())
        .ctx(|| "reading a replica symlink".to_string())?;
    Ok(want.as_ref().and_then(|e| e.target.as_deref()) != Some(have.as_bytes()))
}

/// Owner, mode and mtime only. Without root, directories stay writable for us.
fn plain_meta(e: &Entry) -> Entry {
    let mut p = e.clone();
    p.xattrs = Xattrs::default();
    p.flags = 0;
    if e.kind == Kind::Dir && !fsio::is_root_user() {
        p.mode |= 0o700;
    }
    p
}

fn replica_meta_fd(fd: std::os::fd::BorrowedFd, e: &Entry) -> std::io::Result<()> {
    fsio::apply_meta_fd(fd, &plain_meta(e), &mut Vec::new())
}
