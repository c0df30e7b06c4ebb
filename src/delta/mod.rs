//! Reverse deltas: how the content of a path at the previous point is stored, given its
//! content at the newer point (the reference).
//!
//! Owns the frame formats (zstd patch-from, plain zstd, and the CDC-aligned container for large
//! files). Pure byte transforms over readers and files; knows nothing of the index.

mod chunked;
mod codec;
pub mod leaves;
mod patch;

pub use chunked::{apply_in_place, decode_chunked, encode_chunked, is_in_place, UndoWriter};
pub use codec::{decode_delta, decode_full_reader, encode_delta, encode_full, Level, LARGE_FILE};
pub use patch::{apply_patch, PatchWriter};
