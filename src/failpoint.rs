//! Crash injection for tests: when `RESTOREPOINT_FAILPOINT` names a point the program reaches
//! (`name`, or `name:N` for its N-th hit), the process kills itself with SIGKILL there, exactly
//! like a power cut or an OOM kill.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let v = std::env::var("RESTOREPOINT_FAILPOINT").ok()?;
        Some(match v.split_once(':') {
            Some((n, count)) => (n.to_string(), count.parse().unwrap_or(1)),
            None => (v, 1),
        })
    });
    if let Some((armed_name, nth)) = armed {
        if armed_name == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }
}
