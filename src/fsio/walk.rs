//! The tree walk: directory fds all the way down (so any path length works), one `fstatat` per
//! entry and nothing more, excluded entries never entered, mounts crossed only when asked.
//!
//! On a cold cache a walk waits for the disk: one inode, one directory block at a time. A bare
//! `find` waits the same way, so the walk runs on several threads (issue 10: a no-change
//! snapshot against a stat walk), which keeps several reads in flight. Work is cut into tasks
//! (list one directory; stat up to `CHUNK` of its names) taken last-in first-out, so the walk
//! stays close to depth-first and holds about one fd per level and thread. The caller's thread
//! collects what the workers find and reports progress, so `Progress` need not be shared.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use rustix::fs::{AtFlags, Dir, Mode, OFlags};

use super::meta::{stat_to_basic, Basic};
use super::resolve::open_dir;
use crate::model::{join, Kind, RelPath};

pub struct WalkOptions<'a> {
    /// Do not descend into directories on another filesystem than the start's.
    pub one_file_system: bool,
    /// True for paths to leave out (with everything below them). Called from several threads.
    pub exclude: &'a (dyn Fn(&[u8], Kind) -> bool + Sync),
    /// Told of every path found (and the size of every file).
    pub progress: &'a dyn crate::progress::Progress,
}

/// A path the walk could not read (a directory it could not open or list, or an entry it could
/// not stat): what is below it, or the path itself, is missing from what the walk found.
#[derive(Debug, Clone)]
pub struct WalkWarning {
    pub path: RelPath,
    pub message: String,
}

/// Threads of a walk: more than the cores, since they mostly wait for the disk.
const THREADS: usize = 4;
/// Names stat'ed per task: a directory of a million files is shared out too.
const CHUNK: usize = 256;

/// Appends `start` (a directory beneath `root`) and everything below it to `out`, as whatever
/// the caller keeps of a path and its stat (the snapshot's pending list, without a copy).
/// `start` comes first; the order of the rest is not defined (callers sort by path).
pub fn walk<T: From<(RelPath, Basic)> + Send>(
    root: BorrowedFd,
    start: &[u8],
    opts: &WalkOptions,
    out: &mut Vec<T>,
    warnings: &mut Vec<WalkWarning>,
) -> io::Result<()> {
    let fd = open_dir(root, start)?;
    let st = rustix::fs::fstat(&fd)?;
    let basic = stat_to_basic(&st).expect("a directory has a known type");
    seen(opts.progress, &basic);
    out.push((start.to_vec(), basic).into());
    let queue = Queue {
        state: Mutex::new(State {
            tasks: vec![Task::List {
                dir: Opened::Fd(fd),
                path: start.to_vec(),
            }],
            busy: 0,
            abort: false,
        }),
        ready: Condvar::new(),
    };
    // Bounded: workers on a warm cache outrun the collector, and what waits here is memory.
    let (tx, rx) = sync_channel::<Batch<T>>(2 * THREADS);
    let filter = Filter {
        dev: basic.dev,
        one_file_system: opts.one_file_system,
        exclude: opts.exclude,
    };
    std::thread::scope(|s| {
        let mut started = Vec::new();
        let mut refused = None;
        for _ in 0..THREADS {
            let tx = tx.clone();
            let (queue, filter) = (&queue, &filter);
            // A thread the system refuses (a process at its limit) leaves the walk to the
            // threads that did start; `spawn` would panic instead.
            match std::thread::Builder::new()
                .name("walk".into())
                .spawn_scoped(s, move || work(queue, filter, tx))
            {
                Ok(h) => started.push(h),
                Err(e) => refused = Some(e),
            }
        }
        drop(tx);
        if started.is_empty() {
            return Err(refused.expect("no thread started, so one was refused"));
        }
        for found in rx {
            for (item, b) in found.items {
                seen(opts.progress, &b);
                out.push(item);
            }
            warnings.extend(found.warnings);
        }
        // Joined here, a worker's panic reaches the caller as it was raised (the scope would
        // replace it with "a scoped thread panicked").
        for h in started {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Ok(())
    })
}

/// What a task found: the caller's items (with the stat, for progress) and its warnings.
struct Batch<T> {
    items: Vec<(T, Basic)>,
    warnings: Vec<WalkWarning>,
}

enum Opened {
    Fd(OwnedFd),
    /// A directory not opened yet, and not yet reported: `name` in the parent, and what its
    /// stat in the parent's listing said.
    In(Arc<OwnedFd>, Vec<u8>, Basic),
}

enum Task {
    /// List a directory and queue the stats of its names.
    List { dir: Opened, path: RelPath },
    /// Stat these names of an open directory, queueing the directories among them.
    Stat {
        dir: Arc<OwnedFd>,
        path: RelPath,
        names: Vec<Vec<u8>>,
    },
}

struct State {
    tasks: Vec<Task>,
    /// Workers running a task, which may queue more.
    busy: usize,
    /// A thread of the walk panicked or the caller stopped listening: the rest stop too,
    /// rather than wait for tasks the lost one would have queued.
    abort: bool,
}

struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

struct Filter<'a> {
    dev: u64,
    one_file_system: bool,
    exclude: &'a (dyn Fn(&[u8], Kind) -> bool + Sync),
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A task taken from the queue and not yet finished. Dropped unfinished (the task panicked,
/// or the caller's thread is gone), it stops the walk: the tasks it would have queued are
/// lost, and the others must not wait for them.
struct Running<'a>(&'a Queue);

impl Running<'_> {
    fn finish(self, more: Vec<Task>) {
        let queue = self.0;
        std::mem::forget(self);
        let mut st = queue.lock();
        st.busy -= 1;
        let wake = !more.is_empty() || st.busy == 0;
        st.tasks.extend(more);
        if wake {
            queue.ready.notify_all();
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.busy -= 1;
        st.abort = true;
        st.tasks.clear();
        self.0.ready.notify_all();
    }
}

fn work<T: From<(RelPath, Basic)>>(queue: &Queue, filter: &Filter, tx: SyncSender<Batch<T>>) {
    loop {
        let (task, running) = {
            let mut st = queue.lock();
            loop {
                if st.abort {
                    return;
                }
                if let Some(t) = st.tasks.pop() {
                    st.busy += 1;
                    break (t, Running(queue));
                }
                if st.busy == 0 {
                    queue.ready.notify_all();
                    return;
                }
                st = queue.ready.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let mut found = Batch {
            items: Vec::new(),
            warnings: Vec::new(),
        };
        let more = run(task, filter, &mut found);
        if !found.items.is_empty() || !found.warnings.is_empty() {
            // The caller's thread is gone only when it panicked: nothing left to walk for.
            if tx.send(found).is_err() {
                return;
            }
        }
        running.finish(more);
    }
}

/// Runs one task; returns the tasks it makes.
fn run<T: From<(RelPath, Basic)>>(task: Task, filter: &Filter, found: &mut Batch<T>) -> Vec<Task> {
    match task {
        Task::List { dir, path } => {
            let fd = match dir {
                Opened::Fd(fd) => fd,
                Opened::In(parent, name, listed) => {
                    let flags =
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let fd = match rustix::fs::openat(&*parent, &name[..], flags, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(rustix::io::Errno::NOENT) => return Vec::new(), // gone since
                        Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
                            // Replaced by a file or a symlink since: recorded as it is now.
                            let now =
                                rustix::fs::statat(&*parent, &name[..], AtFlags::SYMLINK_NOFOLLOW);
                            match now {
                                Ok(st) => {
                                    if let Some(b) = stat_to_basic(&st) {
                                        found.items.push(((path, b).into(), b));
                                    }
                                }
                                Err(rustix::io::Errno::NOENT) => {} // gone since
                                Err(e) => found.warnings.push(WalkWarning {
                                    path,
                                    message: format!("cannot stat: {e}"),
                                }),
                            }
                            return Vec::new();
                        }
                        Err(e) => {
                            found.items.push(((path.clone(), listed).into(), listed));
                            found.warnings.push(WalkWarning {
                                path,
                                message: format!("cannot open: {e}"),
                            });
                            return Vec::new();
                        }
                    };
                    // Time passes between the listing's stat and this open: a directory
                    // renamed over this name, or a filesystem mounted on it meanwhile, is
                    // recorded as what is listed below, and a mount stays uncrossed.
                    let b = rustix::fs::fstat(&fd)
                        .ok()
                        .and_then(|st| stat_to_basic(&st))
                        .unwrap_or(listed);
                    found.items.push(((path.clone(), b).into(), b));
                    if filter.one_file_system && b.dev != filter.dev {
                        return Vec::new();
                    }
                    fd
                }
            };
            let names = match read_names(fd.as_fd()) {
                Ok(n) => n,
                Err(e) => {
                    found.warnings.push(WalkWarning {
                        path,
                        message: format!("cannot list: {e}"),
                    });
                    return Vec::new();
                }
            };
            let dir = Arc::new(fd);
            // Last in, first out: the first chunk is queued last, so it is taken first.
            let mut chunks: Vec<Task> = names
                .chunks(CHUNK)
                .map(|c| Task::Stat {
                    dir: dir.clone(),
                    path: path.clone(),
                    names: c.to_vec(),
                })
                .collect();
            chunks.reverse();
            chunks
        }
        Task::Stat { dir, path, names } => {
            let mut subdirs = Vec::new();
            for name in names {
                let child = join(&path, &name);
                let st = match rustix::fs::statat(&*dir, &name[..], AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(rustix::io::Errno::NOENT) => continue, // deleted since the listing
                    Err(e) => {
                        found.warnings.push(WalkWarning {
                            path: child,
                            message: format!("cannot stat: {e}"),
                        });
                        continue;
                    }
                };
                let Some(basic) = stat_to_basic(&st) else {
                    continue;
                };
                if (filter.exclude)(&child, basic.kind) {
                    continue;
                }
                let enter =
                    basic.kind == Kind::Dir && !(filter.one_file_system && basic.dev != filter.dev);
                if enter {
                    // Reported by its own task, with the stat of what it opens.
                    subdirs.push(Task::List {
                        dir: Opened::In(dir.clone(), name, basic),
                        path: child,
                    });
                } else {
                    found.items.push(((child, basic).into(), basic));
                }
            }
            subdirs.reverse();
            subdirs
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

fn seen(progress: &dyn crate::progress::Progress, b: &Basic) {
    progress.advance(1);
    if b.kind == Kind::File {
        progress.bytes(b.size);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// Walks `t` below `dir`, crossing no mount.
    fn walk_t(
        dir: &std::path::Path,
        exclude: &(dyn Fn(&[u8], Kind) -> bool + Sync),
        progress: &dyn crate::progress::Progress,
    ) -> (Vec<(RelPath, Basic)>, Vec<WalkWarning>) {
        let root = super::super::open_root(dir).unwrap();
        let opts = WalkOptions {
            one_file_system: true,
            exclude,
            progress,
        };
        let (mut out, mut warns) = (Vec::new(), Vec::new());
        walk(root.as_fd(), b"t", &opts, &mut out, &mut warns).unwrap();
        (out, warns)
    }

    /// The threaded walk finds what a plain recursive walk finds: every path once, with its
    /// own stat, nothing below an excluded directory, in directories wider than one task.
    #[test]
    fn finds_every_path_once_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("t");
        for d in 0..12 {
            let sub = top.join(format!("d{d}")).join("x").join("y");
            std::fs::create_dir_all(&sub).unwrap();
            let n = if d == 3 { 3 * CHUNK + 7 } else { 20 };
            for f in 0..n {
                std::fs::write(top.join(format!("d{d}/f{f}")), vec![b'a'; f % 7]).unwrap();
            }
            std::fs::write(sub.join("deep"), b"z").unwrap();
        }
        std::fs::create_dir_all(top.join("skip/inner")).unwrap();
        std::fs::write(top.join("skip/inner/file"), b"no").unwrap();
        std::os::unix::fs::symlink("d1", top.join("link")).unwrap();

        let exclude = |p: &[u8], _: Kind| p == b"t/skip";
        let (out, warns) = walk_t(dir.path(), &exclude, &crate::progress::Silent);
        assert!(warns.is_empty(), "{warns:?}");
        assert_eq!(out[0].0, b"t".to_vec(), "the start comes first");

        let mut want: Vec<(RelPath, u64)> = walkdir::WalkDir::new(&top)
            .into_iter()
            .filter_entry(|e| e.path() != top.join("skip"))
            .map(|e| {
                let e = e.unwrap();
                let rel = e.path().strip_prefix(dir.path()).unwrap();
                let ino = std::os::unix::fs::MetadataExt::ino(&e.metadata().unwrap());
                (rel.as_os_str().as_bytes().to_vec(), ino)
            })
            .collect();
        want.sort();
        let mut got: Vec<(RelPath, u64)> = out.iter().map(|(p, b)| (p.clone(), b.ino)).collect();
        got.sort();
        assert_eq!(got.len(), 12 * 24 + 3 * CHUNK + 7 - 20 + 2);
        assert_eq!(got, want);
    }

    /// A tree of `dirs` directories of `files` files each under `t`, in a fresh temp dir.
    fn wide_tree(dirs: usize, files: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..dirs {
            let sub = dir.path().join(format!("t/d{d}"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..files {
                std::fs::write(sub.join(format!("f{f}")), b"x").unwrap();
            }
        }
        dir
    }

    /// Runs `f` on its own thread; fails the test if it has not ended within a minute (a walk
    /// that hangs), and returns the message it panicked with, if it did.
    fn panics_without_hanging(f: impl FnOnce() + Send + 'static) -> Option<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let message = r.err().map(|p| match p.downcast::<String>() {
                Ok(s) => *s,
                Err(p) => p.downcast_ref::<&str>().unwrap_or(&"?").to_string(),
            });
            let _ = tx.send(message);
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("the walk hung instead of ending")
    }

    /// A panic on a worker (here in the exclusion callback, halfway through) reaches the
    /// caller as it was raised; the other workers do not wait forever for the tasks it would have queued.
    #[test]
    fn a_panicking_worker_stops_the_walk() {
        let dir = wide_tree(40, 30);
        let panicked = panics_without_hanging(move || {
            let exclude = |p: &[u8], _: Kind| {
                assert!(p != b"t/d20", "a bug in an exclusion");
                false
            };
            walk_t(dir.path(), &exclude, &crate::progress::Silent);
        });
        let message = panicked.expect("the walk returned as if it had seen everything");
        assert!(message.contains("a bug in an exclusion"), "{message}");
    }

    /// A panic on the collecting thread (in the caller's progress report) ends the walk too:
    /// workers blocked on the full channel see it closed and stop the rest.
    #[test]
    fn a_panicking_collector_stops_the_walk() {
        struct Breaks(std::sync::atomic::AtomicU64);
        impl crate::progress::Progress for Breaks {
            fn advance(&self, n: u64) {
                let seen = self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                assert!(seen < 100, "a bug in a progress report");
            }
        }
        let dir = wide_tree(40, 30);
        let panicked = panics_without_hanging(move || {
            let exclude = |_: &[u8], _: Kind| false;
            let progress = Breaks(0.into());
            walk_t(dir.path(), &exclude, &progress);
        });
        let message = panicked.expect("the walk returned as if it had seen everything");
        assert!(message.contains("a bug in a progress report"), "{message}");
    }

    /// A directory swapped between its stat and its listing (a deploy tool renaming a new tree
    /// into place) is recorded as what was listed, with its own stat: never the old
    /// directory's stat with the new one's contents, never empty. A directory replaced by a
    /// file is recorded as the file. The exclusion callback, which runs right after the
    /// stat, does the replacing.
    #[test]
    fn a_directory_replaced_after_its_stat_is_recorded_as_it_is_now() {
        use std::os::unix::fs::MetadataExt;
        let dir = wide_tree(3, 3);
        let at = |p: &str| dir.path().join(p);
        std::fs::create_dir_all(at("new")).unwrap();
        std::fs::write(at("new/deployed"), b"the new release").unwrap();
        let new_ino = std::fs::metadata(at("new")).unwrap().ino();
        let exclude = |p: &[u8], _: Kind| {
            if p == b"t/d0" {
                std::fs::rename(at("t/d0"), at("old-d0")).unwrap();
                std::fs::rename(at("new"), at("t/d0")).unwrap();
            }
            if p == b"t/d2" {
                std::fs::rename(at("t/d2"), at("old-d2")).unwrap();
                std::fs::write(at("t/d2"), b"a file now").unwrap();
            }
            false
        };
        let (out, warns) = walk_t(dir.path(), &exclude, &crate::progress::Silent);
        assert!(warns.is_empty(), "{warns:?}");
        let mut got: Vec<(String, Kind, u64)> = out
            .iter()
            .map(|(p, b)| (String::from_utf8_lossy(p).into_owned(), b.kind, b.ino))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = got.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "t",
                "t/d0",
                "t/d0/deployed",
                "t/d1",
                "t/d1/f0",
                "t/d1/f1",
                "t/d1/f2",
                "t/d2"
            ]
        );
        assert_eq!(
            (got[1].1, got[1].2),
            (Kind::Dir, new_ino),
            "t/d0 is the new directory"
        );
        assert_eq!(got[7].1, Kind::File, "t/d2 is a file now");
    }
}
