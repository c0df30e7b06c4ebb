//! Human-readable output and the progress bar.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::Progress;

pub use crate::model::human_size as size;

/// The one date format people read, in every command: local time to the second. JSON carries
/// RFC 3339 (`rfc3339`) instead.
pub fn when(sec: i64, nsec: u32) -> String {
    chrono::DateTime::from_timestamp(sec, nsec)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| format!("@{sec}"))
}

/// A point's creation time (RFC 3339 in the index), as `when` shows times.
pub fn when_created(created_at: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(created_at) {
        Ok(t) => when(t.timestamp(), t.timestamp_subsec_nanos()),
        Err(_) => created_at.to_string(),
    }
}

/// A time in JSON: RFC 3339 in UTC, nanoseconds kept.
pub fn rfc3339(sec: i64, nsec: u32) -> Option<String> {
    chrono::DateTime::from_timestamp(sec, nsec)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// A line on stderr, drawn only when stderr is a terminal (the caller checks): the phase, its
/// files and bytes done (of how many, when known), each with its rate.
pub struct Bar {
    bar: ProgressBar,
    state: Mutex<Phase>,
    files: AtomicU64,
    bytes: AtomicU64,
}

struct Phase {
    name: String,
    files_total: Option<u64>,
    bytes_total: Option<u64>,
    started: Instant,
    drawn: Instant,
}

impl Bar {
    pub fn new() -> Bar {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"),
        );
        let now = Instant::now();
        Bar {
            bar,
            state: Mutex::new(Phase {
                name: String::new(),
                files_total: None,
                bytes_total: None,
                started: now,
                drawn: now,
            }),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// The counts a phase ended with, before the next one replaces them.
    fn show_final(&self) {
        if self.state.lock().is_ok_and(|st| !st.name.is_empty()) {
            self.describe(true);
            self.bar.force_draw();
        }
    }

    /// Rewrites the line; at most twenty times a second unless `force`d.
    fn describe(&self, force: bool) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        if !force && now.duration_since(st.drawn) < Duration::from_millis(50) {
            return;
        }
        st.drawn = now;
        let (files, bytes) = (
            self.files.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        );
        let secs = now.duration_since(st.started).as_secs_f64().max(0.01);
        let mut line = st.name.clone();
        if files > 0 || st.files_total.is_some() {
            let of = st.files_total.map_or(String::new(), |t| format!("/{t}"));
            let rate = files as f64 / secs;
            line += &format!(": {files}{of} files ({rate:.0} files/s)");
        }
        if bytes > 0 || st.bytes_total.is_some() {
            let of = st
                .bytes_total
                .map_or(String::new(), |t| format!("/{}", size(t)));
            let rate = size((bytes as f64 / secs) as u64);
            line += &format!(", {}{of} ({rate}/s)", size(bytes));
        }
        self.bar.set_message(line);
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, files: Option<u64>, bytes: Option<u64>) {
        self.show_final();
        if let Ok(mut st) = self.state.lock() {
            st.name = name.to_string();
            st.files_total = files;
            st.bytes_total = bytes;
            st.started = Instant::now();
        }
        self.files.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.describe(true);
        // Every phase shows at least once, however short (draws are otherwise rate-limited).
        self.bar.force_draw();
    }
    fn advance(&self, files: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
        self.describe(false);
    }
    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.describe(false);
    }
    fn finish(&self) {
        self.show_final();
        self.bar.finish_and_clear();
    }
}
