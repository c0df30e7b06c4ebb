//! Running the configured hook commands (`/bin/sh -c`), each in its own process group with a
//! timeout: a hook that hangs is killed with everything it started, never left to block cron.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A command run by `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub command: String,
    pub timeout: Duration,
    /// A failing optional hook is a warning, not a reason to abort.
    pub optional: bool,
}

/// Why a hook failed, for the message and for `RESTOREPOINT_ERROR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFailure {
    pub command: String,
    pub why: String,
}

impl std::fmt::Display for HookFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hook `{}` {}", self.command, self.why)
    }
}

/// Runs `hook` with `env` added; its output goes to our stderr (stdout may carry JSON).
pub fn run(hook: &Hook, env: &[(&str, String)]) -> Result<(), HookFailure> {
    let fail = |why: String| HookFailure {
        command: hook.command.clone(),
        why,
    };
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    let stdout = stderr
        .try_clone()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&hook.command)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    match wait_until(&mut child, hook.timeout) {
        Ok(st) if st.success() => Ok(()),
        Ok(st) => Err(fail(match st.code() {
            Some(c) => format!("failed with exit code {c}"),
            None => "was killed by a signal".into(),
        })),
        Err(why) => Err(fail(why)),
    }
}

/// Waits for `child` (started as the leader of its own process group) at most `timeout`;
/// past it, kills the whole group and says so.
pub fn wait_until(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if Instant::now() >= deadline => {
                let pgid =
                    rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a pid");
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                let _ = child.wait();
                return Err(format!(
                    "did not finish within {} s and was stopped",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("could not be waited for: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(cmd: &str, secs: u64) -> Hook {
        Hook {
            command: cmd.into(),
            timeout: Duration::from_secs(secs),
            optional: false,
        }
    }

    #[test]
    fn success_failure_and_timeout() {
        assert_eq!(run(&hook("true", 5), &[]), Ok(()));
        let e = run(&hook("exit 3", 5), &[]).unwrap_err();
        assert!(e.to_string().contains("exit code 3"), "{e}");
        let e = run(&hook("sleep 30 & sleep 30", 1), &[]).unwrap_err();
        assert!(e.why.contains("within 1 s"), "{e}");
        assert_eq!(
            run(&hook("test \"$X\" = yes", 5), &[("X", "yes".into())]),
            Ok(())
        );
    }
}
