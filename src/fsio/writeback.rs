//! Writeback started while a large tree is still being written (a first point's replica, a
//! restore). The data is durable only after the one `syncfs` at the end; left to that call,
//! the whole tree (2 GB in the benchmark) is written out after the last file is read, and the
//! disk idles while the files are read. A helper thread calls `syncfs` every `EVERY` bytes
//! instead, so writing overlaps reading and the last call has little left. A hint: its errors
//! are ignored, and the final `syncfs` still reports any (the helper's descriptor is opened
//! anew, not duplicated, so it does not consume the caller's error state).

use std::os::fd::BorrowedFd;

use rustix::fs::{Mode, OFlags};

pub struct Writeback {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    worker: Option<std::thread::JoinHandle<()>>,
    pending: u64,
}

const EVERY: u64 = 128 << 20;

impl Writeback {
    /// A helper syncing the filesystem of directory `dir`; None when it cannot be started
    /// (then the final `syncfs` does all the work, as before).
    pub fn start(dir: BorrowedFd) -> Option<Writeback> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, ".", flags, Mode::empty()).ok()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let worker = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for () in rx {
                    let _ = rustix::fs::syncfs(&fd);
                }
            })
            .ok()?;
        Some(Writeback {
            tx: Some(tx),
            worker: Some(worker),
            pending: 0,
        })
    }

    /// Counts `bytes` written; past `EVERY`, asks the helper for a `syncfs`.
    pub fn wrote(&mut self, bytes: u64) {
        self.pending += bytes;
        if self.pending >= EVERY {
            // Never waits: while the helper is still syncing, the next call catches these too.
            if let Some(tx) = &self.tx {
                if tx.try_send(()).is_ok() {
                    self.pending = 0;
                }
            }
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
