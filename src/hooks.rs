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

/// The `[hooks]` of the config: commands run around every snapshot.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    pub pre_snapshot: Vec<Hook>,
    pub post_snapshot: Vec<Hook>,
    pub on_failure: Vec<Hook>,
}

/// A run with hooks around it: its result, and what the hooks said that did not stop it (an
/// optional `pre_snapshot` hook, a `post_snapshot` or `on_failure` hook that failed), each a
/// line for a warning.
pub struct Hooked<T> {
    pub result: crate::error::Result<T>,
    pub warnings: Vec<String>,
}

/// Runs the `pre_snapshot` hooks, then `run`, then the `post_snapshot` hooks, each with
/// `RESTOREPOINT_ROOT` and `RESTOREPOINT_STORE` set. A failing `pre_snapshot` hook that is not
/// optional stops there (`Error::PreSnapshotHook`): `run` is never called. When anything
/// fails, the `on_failure` hooks run with the error in `RESTOREPOINT_ERROR`.
pub fn around_snapshot<T>(
    hooks: &Hooks,
    root: &std::path::Path,
    store: &std::path::Path,
    run: impl FnOnce() -> crate::error::Result<T>,
) -> Hooked<T> {
    let env = vec![
        ("RESTOREPOINT_ROOT", root.display().to_string()),
        ("RESTOREPOINT_STORE", store.display().to_string()),
    ];
    let mut warnings = Vec::new();
    let failed = |e: crate::error::Error, warnings: &mut Vec<String>| {
        on_failure(&hooks.on_failure, &env, &e.to_string(), warnings);
        Err(e)
    };
    for h in &hooks.pre_snapshot {
        if let Err(f) = self::run(h, &env) {
            if h.optional {
                warnings.push(format!("{f} (optional: the snapshot goes on)"));
            } else {
                let result = failed(
                    crate::error::Error::PreSnapshotHook {
                        failure: f.to_string(),
                    },
                    &mut warnings,
                );
                return Hooked { result, warnings };
            }
        }
    }
    let result = match run() {
        Ok(v) => Ok(v),
        Err(e) => failed(e, &mut warnings),
    };
    if result.is_ok() {
        for h in &hooks.post_snapshot {
            if let Err(f) = self::run(h, &env) {
                warnings.push(format!("post_snapshot {f}"));
            }
        }
    }
    Hooked { result, warnings }
}

/// Runs the `on_failure` hooks with the error in `RESTOREPOINT_ERROR`; their own failures are
/// reported, never hidden behind the first error.
fn on_failure(hooks: &[Hook], env: &[(&str, String)], error: &str, warnings: &mut Vec<String>) {
    let mut env = env.to_vec();
    env.push(("RESTOREPOINT_ERROR", error.to_string()));
    for h in hooks {
        if let Err(f) = run(h, &env) {
            warnings.push(format!("on_failure {f}"));
        }
    }
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

/// Kills the process group `leader` leads and every process descended from it, whatever
/// group it moved to: a snapshot runs each hook in a group of its own, and a hook left running
/// by a stopped snapshot would keep holding what it inherited (apt's stderr, a lock) until its
/// own timeout. The group is stopped first so that nothing forks while the tree is read.
pub fn kill_tree(leader: u32) {
    use rustix::process::{kill_process_group, Pid, Signal};
    let Some(pgid) = Pid::from_raw(leader as i32) else {
        return;
    };
    let _ = kill_process_group(pgid, Signal::STOP);
    // Only groups the tree made (led by one of its processes), never the caller's own or
    // another one a descendant joined: those hold processes outside the tree.
    let own = rustix::process::getpgrp().as_raw_nonzero().get() as u32;
    // Twice: a descendant in a group of its own may have forked while the first pass ran.
    for _ in 0..2 {
        let tree = descendants(leader);
        for &(pid, group) in &tree {
            let led_here = group == leader || tree.iter().any(|&(p, _)| p == group);
            if let Some(g) = Pid::from_raw(group as i32).filter(|_| group != own && led_here) {
                let _ = kill_process_group(g, Signal::KILL);
            }
            if let Some(p) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
    }
    let _ = kill_process_group(pgid, Signal::KILL);
}

/// Every process below `root` (children, theirs, …), with its process group, from /proc.
fn descendants(root: u32) -> Vec<(u32, u32)> {
    let mut procs: Vec<(u32, u32, u32)> = Vec::new(); // pid, ppid, pgrp
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(Ok(ppid)), Some(Ok(pgrp))) =
            (f.get(1).map(|v| v.parse()), f.get(2).map(|v| v.parse()))
        {
            procs.push((pid, ppid, pgrp));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, pgrp) in &procs {
            if ppid == parent && !out.iter().any(|&(p, _)| p == pid) {
                out.push((pid, pgrp));
                frontier.push(pid);
            }
        }
    }
    out
}

/// Waits for `child` (started as the leader of its own process group) at most `timeout`;
/// past it, kills the whole group and all it started (`kill_tree`) and says so.
pub fn wait_until(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) if Instant::now() >= deadline => {
                kill_tree(child.id());
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
