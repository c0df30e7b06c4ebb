//! Human-readable output and the progress bar.

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::Progress;

pub use crate::model::human_size as size;

/// A bar on stderr, drawn only when stderr is a terminal (the caller checks).
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new() -> Bar {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {pos}/{len} [{elapsed}]")
                .expect("valid template"),
        );
        Bar { bar }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        self.bar.set_message(name.to_string());
        self.bar.set_position(0);
        self.bar.set_length(total.unwrap_or(0));
        self.bar.tick();
    }
    fn advance(&self, units: u64) {
        self.bar.inc(units);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
