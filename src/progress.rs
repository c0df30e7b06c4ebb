//! Progress reporting. The core never prints: it tells a `Progress`, and the CLI decides
//! whether that draws a bar (only on a terminal) or nothing.

pub trait Progress {
    /// A new phase begins, with its number of files and of bytes when known.
    fn phase(&self, _name: &str, _files: Option<u64>, _bytes: Option<u64>) {}
    /// Files done (found, while scanning).
    fn advance(&self, _files: u64) {}
    /// Bytes done: read, written, or found while scanning.
    fn bytes(&self, _n: u64) {}
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
