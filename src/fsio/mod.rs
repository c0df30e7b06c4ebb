//! Filesystem access that never follows a symlink it was not asked to, never leaves the root it
//! was given, and works on paths of any length: everything goes through directory fds.
//!
//! Owns path resolution, the tree walk, reading an entry's full metadata, and creating nodes and
//! applying metadata in the order the kernel forces. Knows nothing of the store or of points.

mod apply;
mod meta;
mod prefetch;
mod resolve;
mod walk;
mod writeback;

pub use apply::{
    apply_flags, apply_meta_at, apply_meta_fd, clear_immutable, create_node, is_root_user,
    read_full, remove_tree, write_content, write_data_runs, ContentReader, MetaWarnings,
    SETTABLE_FLAGS,
};
pub use meta::{hash_reader, read_entry, read_file_entry, stat_to_basic, Basic, HashingRead};
pub use prefetch::{Prefetcher, AHEAD};
pub use resolve::{is_missing, open_beneath, open_dir, open_root, DirCache};
pub use walk::{allocated, walk, walk_all, WalkOptions, WalkWarning};
pub use writeback::Writeback;

/// Runs `f` with this thread's 1 MiB I/O buffer. Allocating (and zeroing) a fresh buffer per
/// file cost a first snapshot more CPU than hashing its content (a `memset` of 1 MiB for every
/// small file); a nested call gets a buffer of its own.
pub fn with_io_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.is_empty() {
                buf.resize(1 << 20, 0);
            }
            f(&mut buf)
        }
        Err(_) => f(&mut vec![0u8; 1 << 20]),
    })
}
