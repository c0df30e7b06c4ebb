//! Crash injection for tests: when `RESTOREPOINT_FAILPOINT` names a point the program reaches,
//! the process kills itself with SIGKILL there, exactly like a power cut or an OOM kill.

use std::sync::OnceLock;

pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("RESTOREPOINT_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
