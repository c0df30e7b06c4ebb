//! Filesystem access that never follows a symlink it was not asked to, never leaves the root it
//! was given, and works on paths of any length: everything goes through directory fds.
//!
//! Owns path resolution, the tree walk, reading an entry's full metadata, and creating nodes and
//! applying metadata in the order the kernel forces. Knows nothing of the store or of points.

mod apply;
mod meta;
mod resolve;
mod walk;

pub use apply::{
    apply_flags, apply_meta_at, apply_meta_fd, clear_immutable, create_node, is_root_user,
    remove_tree, write_content, ContentReader, MetaWarnings, SETTABLE_FLAGS,
};
pub use meta::{hash_reader, read_entry, stat_to_basic, Basic};
pub use resolve::{is_missing, open_beneath, open_dir, open_root, DirCache};
pub use walk::{walk, WalkOptions, WalkWarning};
