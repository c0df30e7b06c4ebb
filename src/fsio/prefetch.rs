//! Read-ahead of the files a sequential pass will read next. A snapshot or a restore reads one
//! file at a time; on a cold cache each read waits for the disk, which a plain copy hides no
//! better. A helper thread opens the files some way ahead of the reader and asks the kernel to
//! start reading them (`POSIX_FADV_WILLNEED`), so their data is in the page cache when the
//! reader gets there. Hints only: a path that cannot be opened is skipped, and nothing read is
//! trusted (the reader opens and checks every file itself).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::thread::JoinHandle;

use rustix::fs::{Advice, Mode, OFlags};

use super::resolve::DirCache;
use crate::model::{basename, RelPath};

/// How far ahead the hints may run, in files.
pub const AHEAD: usize = 128;
/// Bytes hinted per file: the reader's own read-ahead takes over in a large file.
const PER_FILE: u64 = 8 << 20;

pub struct Prefetcher {
    tx: Option<SyncSender<RelPath>>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Hints for files below `root` (a directory fd it keeps its own copy of). None when no
    /// thread could be started: the pass is only slower.
    pub fn start(root: &impl AsFd) -> Option<Prefetcher> {
        let root: OwnedFd = root.as_fd().try_clone_to_owned().ok()?;
        let (tx, rx) = sync_channel::<RelPath>(AHEAD);
        let worker = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                let mut cache = DirCache::default();
                for path in rx {
                    let Ok(dir) = cache.parent_of(root.as_fd(), &path) else {
                        continue;
                    };
                    let flags = OFlags::RDONLY
                        | OFlags::NOFOLLOW
                        | OFlags::NONBLOCK
                        | OFlags::NOATIME
                        | OFlags::CLOEXEC;
                    let fd = rustix::fs::openat(dir, basename(&path), flags, Mode::empty())
                        .or_else(|_| {
                            rustix::fs::openat(
                                dir,
                                basename(&path),
                                flags - OFlags::NOATIME,
                                Mode::empty(),
                            )
                        });
                    if let Ok(fd) = fd {
                        let len = std::num::NonZeroU64::new(PER_FILE);
                        let _ = rustix::fs::fadvise(&fd, 0, len, Advice::WillNeed);
                    }
                }
            })
            .ok()?;
        Some(Prefetcher {
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// The reader will get to `path` soon. Never blocks: when the helper is behind, the hint is
    /// dropped.
    pub fn hint(&self, path: &[u8]) {
        if let Some(tx) = &self.tx {
            match tx.try_send(path.to_vec()) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
