//! Human-readable output and the progress bar.

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::Progress;

pub fn size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

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
