//! The store on disk (DESIGN.md "The model"): `index.db`, `replica/`, `packs/<id>.pack`,
//! `staging/` (new content waiting to be renamed into the replica), `boot/`, and `lock`.
//!
//! Owns the layout, the single-writer lock and the index; the snapshot and restore logic live
//! in their own modules.

pub mod blobs;
mod index;
mod log;
mod pack;
pub(crate) use index::{entry_at, entry_values, ENTRY_COLS};
pub mod place;
mod repair;
pub mod replica;
mod rowsum;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use index::change_op as change_record;
pub use index::point_op as point_record;
pub use index::{
    BatchWrite, Change, ContentKind, Index, Point, PointId, PointKind, PointTotals, RestoreJournal,
    UsageChange,
};
pub use log::{damaged_pack_record, Op as Record};
pub use pack::{FrameReader, PackWriter};
pub use repair::{log_damage, repair, RepairReport};

use crate::error::{Error, IoContext, Result};
use crate::fsio;

pub struct Store {
    pub dir: PathBuf,
    pub index: Index,
    replica: OwnedFd,
    staging: OwnedFd,
    _lock: Option<File>,
}

const SUBDIRS: [&str; 4] = ["replica", "packs", "staging", "boot"];

/// A store this user may not use is named as such before anything is read: as another user, a
/// root's store (mode 0700) would otherwise look missing, empty, or "not a store". A store
/// that is not there is left to the caller's own message. Judged by the effective user and
/// group (`AT_EACCESS`), the ones every later open is judged by: `access(2)` would ask about
/// the real user, wrong for a setuid or `setpriv --euid` run.
pub fn check_access(dir: &Path, write: bool) -> Result<()> {
    use rustix::fs::Access;
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let mut want = Access::READ_OK | Access::EXEC_OK;
    if write {
        want |= Access::WRITE_OK;
    }
    match rustix::fs::accessat(rustix::fs::CWD, dir, want, rustix::fs::AtFlags::EACCESS) {
        Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => Err(Error::NoAccess {
            store: dir.to_path_buf(),
            owner: match md.uid() {
                0 => "root".into(),
                u => format!("uid {u}"),
            },
            mode: md.mode() & 0o7777,
            uid: rustix::process::geteuid().as_raw(),
            verb: if write { "write" } else { "read" },
        }),
        _ => Ok(()),
    }
}

impl Store {
    /// Opens the store for writing: takes the lock. With `create`, a new store is made where
    /// there is none; a directory that holds a store's data but no index is refused, never
    /// started afresh (that would reuse point ids and delete every pack as an orphan). The
    /// caller runs the recovery steps (rollback, garbage collection) it needs: see
    /// `engine::open_writer`.
    pub fn open_for_writing(dir: &Path, create: bool) -> Result<Store> {
        check_access(dir, true)?;
        if !dir.join("index.db").exists() {
            if let Some(what) = store_data_without_index(dir) {
                return Err(Error::NoIndex {
                    store: dir.to_path_buf(),
                    what,
                });
            }
            if !create {
                return Err(Error::NoStore {
                    store: dir.to_path_buf(),
                });
            }
            place::check_new_store(dir)?;
            make_layout(dir)?;
            place::remember(dir);
        }
        let lock = take_lock(dir)?;
        Store::open_inner(dir, Some(lock))
    }

    /// Opens for reading only (list, show, diff, verify): no lock, nothing rolled back,
    /// deleted or written (a migration to this binary's schema aside).
    pub fn open_for_reading(dir: &Path) -> Result<Store> {
        check_access(dir, false)?;
        if !dir.join("index.db").exists() {
            if let Some(what) = store_data_without_index(dir) {
                return Err(Error::NoIndex {
                    store: dir.to_path_buf(),
                    what,
                });
            }
        }
        Store::open_inner(dir, None)
    }

    fn open_inner(dir: &Path, lock: Option<File>) -> Result<Store> {
        let index = Index::open(dir, lock.is_some())?;
        let open = |name: &str| {
            fsio::open_root(&dir.join(name)).ctx(|| format!("opening {}", dir.join(name).display()))
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            index,
            replica: open("replica")?,
            staging: open("staging")?,
            _lock: lock,
        })
    }

    pub fn replica(&self) -> BorrowedFd<'_> {
        self.replica.as_fd()
    }

    pub fn staging(&self) -> BorrowedFd<'_> {
        self.staging.as_fd()
    }

    /// A new file in `staging/` (O_EXCL: never one another run left, which clean-up removes).
    pub fn create_staged(&self, name: &[u8]) -> std::io::Result<std::fs::File> {
        let flags = rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::EXCL
            | rustix::fs::OFlags::RDWR
            | rustix::fs::OFlags::CLOEXEC;
        let mode = rustix::fs::Mode::from_raw_mode(0o600);
        Ok(rustix::fs::openat(self.staging(), name, flags, mode)?.into())
    }

    /// A file in `staging/`, for reading.
    pub fn open_staged(&self, name: &[u8]) -> std::io::Result<std::fs::File> {
        let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC;
        Ok(rustix::fs::openat(self.staging(), name, flags, rustix::fs::Mode::empty())?.into())
    }

    pub fn pack_path(&self, id: PointId) -> PathBuf {
        self.dir.join("packs").join(format!("{id}.pack"))
    }

    /// Where `successor`'s merged pack is written while point `removed` is merged into it
    /// (`prune::remove_point`). The name says which point's removal it belongs to, so the next
    /// writer can tell whether that removal committed (DESIGN.md "Retention and removal").
    pub fn merge_path(&self, successor: PointId, removed: PointId) -> PathBuf {
        self.dir
            .join("packs")
            .join(format!("{successor}.merge-{removed}"))
    }

    /// Finishes or undoes the merges an interrupted `prune ID` left. A merged pack whose
    /// removed point the index still holds was never committed: it goes. One whose point the
    /// index no longer holds was: the removed point's pack goes, then the merged pack takes the
    /// successor's name. Idempotent, and called under the lock before orphan packs are removed.
    pub fn finish_merges(&self) -> Result<()> {
        let known: std::collections::HashSet<PointId> =
            self.index.points()?.iter().map(|p| p.id).collect();
        finish_merges(&self.dir, |removed| known.contains(&removed))
    }

    /// Deletes a point's pack file; one that is already gone is fine (a crash after the
    /// index commit leaves it for the next removal).
    pub fn remove_pack(&self, id: PointId) -> Result<()> {
        let pack = self.pack_path(id);
        match fs::remove_file(&pack) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::io(format!("removing {}", pack.display()), err)),
        }
    }

    /// Packs no point refers to: left when a removal crashed between its commit and the file
    /// deletion. Called under the lock, after rollback, so no running point owns one.
    pub fn remove_orphan_packs(&self) -> Result<()> {
        let known: std::collections::HashSet<PointId> =
            self.index.points()?.iter().map(|p| p.id).collect();
        for (id, _) in pack_files(&self.dir)? {
            if let Some(id) = id.filter(|id| !known.contains(id)) {
                self.remove_pack(id)?;
            }
        }
        Ok(())
    }

    /// Appends `records` to point `id`'s pack and syncs it: the completion record, written
    /// before the index marks the point complete.
    pub fn append_to_pack(&self, id: PointId, records: &[Record]) -> Result<()> {
        let path = self.pack_path(id);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        let bytes: Vec<u8> = records.iter().flat_map(|r| r.record()).collect();
        f.write_all(&bytes)
            .and_then(|_| f.sync_data())
            .ctx(|| format!("writing {}", path.display()))
    }

    /// Makes everything written to the store's filesystem so far durable.
    pub fn sync(&self) -> Result<()> {
        rustix::fs::syncfs(&self.replica)
            .ctx(|| format!("syncing the store {}", self.dir.display()))
    }

    /// Empties `staging/` (left-overs of an interrupted run are never referenced).
    pub fn clear_staging(&self) -> Result<()> {
        let staging = self.dir.join("staging");
        for ent in fs::read_dir(&staging).ctx(|| format!("listing {}", staging.display()))? {
            let ent = ent.ctx(|| format!("listing {}", staging.display()))?;
            fsio::remove_tree(self.staging(), ent.file_name().as_encoded_bytes(), None)
                .ctx(|| format!("removing {}", ent.path().display()))?;
        }
        Ok(())
    }

    /// Bytes the store's data uses on disk, by part: as recorded in the index (kept up to date
    /// by every write), else measured by a walk.
    pub fn usage(&self) -> Result<Usage> {
        Ok(match self.index.usage()? {
            Some((replica, packs)) => Usage {
                total: replica + packs,
                replica,
                packs,
            },
            None => usage(&self.dir),
        })
    }

    /// Bytes the whole store takes on disk, as `du -s` counts them: the data as the index
    /// records it, plus a walk of everything else (the index, its log, the kit, boot pieces,
    /// staging), which is small. Walking the replica instead costs a statx per file after
    /// every run (0.4–0.7 s for 58 k files on a cold cache).
    pub fn disk_bytes(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let Some((replica, packs)) = self.index.usage()? else {
            return Ok(usage(&self.dir).total);
        };
        let mut total = replica + packs;
        let mut linked = std::collections::HashSet::new();
        for e in walkdir::WalkDir::new(&self.dir)
            .into_iter()
            .filter_entry(|e| {
                e.depth() != 1 || !matches!(e.file_name().to_str(), Some("replica" | "packs"))
            })
            .filter_map(|e| e.ok())
        {
            let Ok(m) = e.metadata() else { continue };
            if m.nlink() > 1 && !m.is_dir() && !linked.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
        }
        // The two directories themselves, which the recorded data leaves out.
        for d in ["replica", "packs"] {
            total += fs::symlink_metadata(self.dir.join(d)).map_or(0, |m| m.blocks() * 512);
        }
        Ok(total)
    }

    /// Measures the usage by a walk and records it, when the index has none (a new or
    /// repaired index, after a rollback). Called under the lock.
    pub fn measure_usage(&mut self) -> Result<()> {
        if self.index.usage()?.is_none() {
            let u = usage(&self.dir);
            self.index.set_usage(u.replica, u.packs)?;
        }
        Ok(())
    }

    /// Allocated bytes of point `id`'s pack (0 when there is none).
    pub fn pack_allocated(&self, id: PointId) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(self.pack_path(id)).map_or(0, |m| m.blocks() * 512)
    }
}

/// Allocated bytes of a store, by part. The ceiling compares `data()` (replica and packs) with
/// the replica: both measured the same way, so block rounding of small files cancels out, and
/// the index and the store's own directories (a fixed overhead) do not make a small tree look
/// over its ceiling forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub total: u64,
    pub replica: u64,
    pub packs: u64,
}

impl Usage {
    pub fn data(&self) -> u64 {
        self.replica + self.packs
    }
}

/// One walk over the store `dir` (all zero when it does not exist).
pub fn usage(dir: &Path) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let (replica, packs) = (dir.join("replica"), dir.join("packs"));
    let mut u = Usage::default();
    // A file linked more than once (a hardlink group, twins) counts once.
    let mut linked = std::collections::HashSet::new();
    for e in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let Ok(m) = e.metadata() else { continue };
        if m.nlink() > 1 && !m.is_dir() && !linked.insert((m.dev(), m.ino())) {
            continue;
        }
        let n = m.blocks() * 512;
        u.total += n;
        // What is in them, not the two directories themselves (part of the fixed skeleton).
        if e.path().starts_with(&replica) && e.path() != replica {
            u.replica += n;
        } else if e.path().starts_with(&packs) && e.path() != packs {
            u.packs += n;
        }
    }
    u
}

/// The files in `STORE/packs/`, sorted, each with the point id its name gives (None for a
/// name that is not `<id>.pack`).
pub fn pack_files(dir: &Path) -> Result<Vec<(Option<PointId>, PathBuf)>> {
    let packs = dir.join("packs");
    let mut out = Vec::new();
    for ent in fs::read_dir(&packs).ctx(|| format!("listing {}", packs.display()))? {
        let ent = ent.ctx(|| format!("listing {}", packs.display()))?;
        let id = ent
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".pack"))
            .and_then(|n| n.parse::<PointId>().ok());
        out.push((id, ent.path()));
    }
    out.sort();
    Ok(out)
}

/// The merged packs in `STORE/packs/`: (successor, removed point, path).
fn pending_merges(dir: &Path) -> Result<Vec<(PointId, PointId, PathBuf)>> {
    let packs = dir.join("packs");
    let mut out = Vec::new();
    for ent in fs::read_dir(&packs).ctx(|| format!("listing {}", packs.display()))? {
        let ent = ent.ctx(|| format!("listing {}", packs.display()))?;
        let name = ent.file_name();
        let Some((s, m)) = name.to_str().and_then(|n| n.split_once(".merge-")) else {
            continue;
        };
        if let (Ok(s), Ok(m)) = (s.parse::<PointId>(), m.parse::<PointId>()) {
            out.push((s, m, ent.path()));
        }
    }
    Ok(out)
}

/// `Store::finish_merges`, with `still_there` telling whether the removed point is still in
/// the index (repair from the packs alone asks whether its pack is still there instead: a
/// removal deletes it only after its commit, and before the merged pack takes its name).
pub(crate) fn finish_merges(dir: &Path, still_there: impl Fn(PointId) -> bool) -> Result<()> {
    let packs = dir.join("packs");
    for (successor, removed, path) in pending_merges(dir)? {
        if still_there(removed) {
            fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
            continue;
        }
        let old = packs.join(format!("{removed}.pack"));
        match fs::remove_file(&old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("removing {}", old.display()), e))
            }
            _ => {}
        }
        crate::failpoint::hit("merge-before-rename");
        let to = packs.join(format!("{successor}.pack"));
        fs::rename(&path, &to)
            .ctx(|| format!("renaming {} to {}", path.display(), to.display()))?;
        File::open(&packs)
            .and_then(|d| d.sync_all())
            .ctx(|| format!("syncing {}", packs.display()))?;
    }
    Ok(())
}

/// What in `dir` shows it held a store, when its index is gone: a replica with content,
/// packs, or boot pieces.
fn store_data_without_index(dir: &Path) -> Option<String> {
    let nonempty = |sub: &str| {
        fs::read_dir(dir.join(sub))
            .map(|mut rd| rd.next().is_some())
            .unwrap_or(false)
    };
    let found: Vec<&str> = ["replica", "packs", "boot"]
        .into_iter()
        .filter(|s| nonempty(s))
        .collect();
    (!found.is_empty()).then(|| found.join(", "))
}

fn make_layout(dir: &Path) -> Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true).mode(0o700);
    b.create(dir)
        .ctx(|| format!("creating the store {}", dir.display()))?;
    for sub in SUBDIRS {
        b.create(dir.join(sub))
            .ctx(|| format!("creating {}", dir.join(sub).display()))?;
    }
    Ok(())
}

/// A process holding the store's write lock (a snapshot, prune, restore or repair).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Writer {
    /// As the writer wrote it into `lock`: unknown for a moment after it took the lock.
    pub pid: Option<u32>,
}

impl std::fmt::Display for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "process {pid}"),
            None => f.write_str("another process"),
        }
    }
}

/// The writer holding the store, if one does: a shared lock tried and let go at once. A
/// writer that starts meanwhile finds the lock taken for those microseconds and tries again
/// (`take_lock`), so a reader's look never makes a snapshot fail. Unlike a look at
/// `/proc/locks`, this sees a lock on btrfs (whose `stat` device is not the one listed there),
/// on NFS, and held by a process in another pid namespace.
pub fn writer(dir: &Path) -> Option<Writer> {
    let mut f = File::open(dir.join("lock")).ok()?;
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            Some(Writer {
                pid: pid.trim().parse().ok(),
            })
        }
        // Not held (closing the file lets go of the shared lock), or cannot be told.
        _ => None,
    }
}

/// Waits while a writer holds the store.
pub fn wait_for_writer(dir: &Path) {
    while writer(dir).is_some() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// flock on `lock`: the kernel releases it when the holder dies, so a crashed run never blocks
/// the next one. The holder's pid is written into the file to name it in the message.
pub(crate) fn take_lock(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    // A reader looking whether a writer is at work (`writer`) holds the lock shared for a
    // moment: a lock still held after a second is another writer's, unless a shared lock can
    // still be had (readers only, one of them slow: stopped, or starved of CPU), which is
    // waited out for up to half a minute.
    use rustix::fs::FlockOperation::{NonBlockingLockExclusive, NonBlockingLockShared, Unlock};
    // Let go at once: held between tries, two writers starting together would each keep the
    // other from converting it, and both fail.
    let only_readers = |f: &File| {
        let readers = rustix::fs::flock(f, NonBlockingLockShared).is_ok();
        if readers {
            let _ = rustix::fs::flock(f, Unlock);
        }
        readers
    };
    let mut tries = 0;
    let locked = loop {
        match rustix::fs::flock(&f, NonBlockingLockExclusive) {
            Err(rustix::io::Errno::WOULDBLOCK)
                if tries < 50 || (tries < 1500 && only_readers(&f)) =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other,
        }
    };
    match locked {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim().to_string();
            return Err(Error::Locked {
                store: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "unknown".into()
                } else {
                    holder
                },
            });
        }
        Err(e) => return Err(Error::io(format!("locking {}", path.display()), e.into())),
    }
    f.set_len(0).ctx(|| format!("writing {}", path.display()))?;
    f.rewind().ctx(|| format!("writing {}", path.display()))?;
    writeln!(f, "{}", std::process::id()).ctx(|| format!("writing {}", path.display()))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The holder of a store's lock is named, and is gone from view once it lets go.
    #[test]
    fn writer_names_the_process_holding_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(writer(dir.path()), None, "no lock file: no writer");
        let held = take_lock(dir.path()).unwrap();
        let pid = Some(std::process::id());
        assert_eq!(writer(dir.path()), Some(Writer { pid }));
        drop(held);
        assert_eq!(writer(dir.path()), None);
    }

    /// A store's lock file (made by a writer that has gone), held shared as a reader's look
    /// holds it: let go when the file is dropped.
    fn store_with_a_readers_look() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        drop(take_lock(dir.path()).unwrap());
        let look = File::open(dir.path().join("lock")).unwrap();
        rustix::fs::flock(&look, rustix::fs::FlockOperation::LockShared).unwrap();
        (dir, look)
    }

    /// A reader's look at the lock (held shared for a moment, here for 300 ms) does not make
    /// a writer starting then fail as locked; another writer's lock does.
    #[test]
    fn a_readers_look_at_the_lock_never_fails_a_writer() {
        let (dir, look) = store_with_a_readers_look();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(look);
        });
        let held = take_lock(dir.path()).expect("the writer waits out the reader's look");
        reader.join().unwrap();
        let pid = std::process::id().to_string();
        match take_lock(dir.path()) {
            Err(Error::Locked { holder, .. }) => assert_eq!(holder, pid),
            other => panic!("a second writer: {other:?}"),
        }
        drop(held);
    }

    /// Two writers starting together while a slow reader (1.5 s) holds its look: one gets
    /// the store, the other is refused as locked.
    #[test]
    fn two_writers_behind_a_slow_reader_one_wins() {
        let (dir, look) = store_with_a_readers_look();
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || take_lock(&d))
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        drop(look);
        let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        let refused = results
            .iter()
            .filter(|r| matches!(r, Err(Error::Locked { .. })))
            .count();
        assert_eq!((won, refused), (1, 1), "{results:?}");
    }
}
