//! Progress reporting. The core never prints: it tells a `Progress`, and the CLI decides
//! whether that draws a bar (only on a terminal) or nothing.

pub trait Progress {
    /// A new phase begins; `total` units of work when known.
    fn phase(&self, _name: &str, _total: Option<u64>) {}
    fn advance(&self, _units: u64) {}
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
