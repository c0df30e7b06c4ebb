//! The apt hook (`system_snapshot apt-hook`, run by `DPkg::Pre-Invoke`): a restore point
//! before dpkg changes packages, labelled with the apt command line. apt may invoke dpkg
//! several times in one run; the hook takes one point per run, none when a point is younger
//! than `[apt] min_interval`, never keeps apt waiting longer than `[apt] timeout`, and never
//! fails apt: whatever happens, it exits 0 and says so on stderr.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{Point, PointId};

/// `[apt]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AptHook {
    /// No point before an apt run when the newest point is younger than this.
    pub min_interval: crate::config::Span,
    /// apt goes on without the point after this long (the interrupted point is rolled back by
    /// the next run).
    pub timeout: crate::config::Span,
}

impl Default for AptHook {
    fn default() -> Self {
        AptHook {
            min_interval: crate::config::Span(Duration::from_secs(10 * 60)),
            timeout: crate::config::Span(Duration::from_secs(10 * 60)),
        }
    }
}

/// The apt (or aptitude, unattended-upgrades …) process this hook runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRun {
    pub pid: u32,
    /// Its start time in clock ticks since boot: with the pid, names this one run.
    pub start: u64,
    pub command_line: String,
}

const FRONTENDS: [&str; 6] = [
    "apt",
    "apt-get",
    "aptitude",
    "unattended-upgr",
    "synaptic",
    "packagekitd",
];

fn stat_fields(pid: u32) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

/// Walks up from this process's parent to the package manager's process.
pub fn find_run() -> Option<AptRun> {
    let mut pid = rustix::process::getppid()?.as_raw_nonzero().get() as u32;
    for _ in 0..16 {
        let (comm, ppid, start) = stat_fields(pid)?;
        if FRONTENDS.contains(&comm.as_str()) {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command_line = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            return Some(AptRun {
                pid,
                start,
                command_line,
            });
        }
        if ppid <= 1 {
            return None;
        }
        pid = ppid;
    }
    None
}

/// The file naming the apt run the last point was taken for.
pub fn last_run_file() -> PathBuf {
    crate::store::place::state_dir().join("apt-hook")
}

/// Whether the hook already ran for `run`; records it otherwise (before the point is taken:
/// a second dpkg call of the same run, even while the first point is being taken, adds none).
///
/// A long-lived front end (packagekitd, synaptic, an interactive aptitude) keeps its pid for
/// many package operations: the same process counts as the same run for six hours only.
pub fn first_for(run: &AptRun) -> bool {
    let file = last_run_file();
    let key = format!("{} {}", run.pid, run.start);
    let now = chrono::Utc::now().timestamp();
    let seen = std::fs::read_to_string(&file).ok().and_then(|t| {
        let (k, when) = t.trim().rsplit_once(' ')?;
        Some((k.to_string(), when.parse::<i64>().ok()?))
    });
    if seen.is_some_and(|(k, when)| k == key && now - when < SAME_RUN_SECS) {
        return false;
    }
    if let Some(d) = file.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(&file, format!("{key} {now}\n"));
    true
}

/// How long one front-end process counts as one apt run.
const SAME_RUN_SECS: i64 = 6 * 3600;

/// Why the hook takes no point before this dpkg call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Skip {
    /// This apt run has its point already (or is taking it).
    SameRun,
    /// The store holds no point: a first one reads and copies the whole system, longer than
    /// apt should wait.
    NoPointYet,
    /// The newest point is younger than `[apt] min_interval`.
    Recent { point: PointId, minutes: u64 },
}

/// What the hook does before this dpkg call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Take { label: String },
    Skip(Skip),
}

/// What the hook did, as `apt-hook --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A point was taken: its id (None when the store could not be read after it), its
    /// label, and whether the snapshot had warnings.
    Taken {
        point: Option<PointId>,
        label: String,
        warnings: bool,
    },
    Skipped(Skip),
    /// No point: the snapshot failed, timed out, or could not start. apt went on.
    Warning {
        message: String,
    },
}

/// Finds the apt run this hook runs under and records it (`first_for`), then checks the
/// newest of `points` against `min_interval`. `points` is read only for a run not seen yet:
/// a second dpkg call of a run neither waits for the store nor reads it.
pub fn decide(min_interval: Duration, points: impl FnOnce() -> Vec<Point>) -> Decision {
    let run = find_run();
    if let Some(r) = &run {
        if !first_for(r) {
            return Decision::Skip(Skip::SameRun);
        }
    }
    let points = points();
    let newest = points.last().map(|p| (p.id, p.created_at.as_str()));
    match too_soon(newest, min_interval, chrono::Utc::now()) {
        Some(skip) => Decision::Skip(skip),
        None => Decision::Take {
            label: label(run.as_ref()),
        },
    }
}

/// Why no point is due at `now`, given the store's newest point (its id and creation time):
/// none yet, or the newest younger than `min_interval`. A time that cannot be read is no
/// reason.
pub fn too_soon(
    newest: Option<(PointId, &str)>,
    min_interval: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Skip> {
    let Some((point, created_at)) = newest else {
        return Some(Skip::NoPointYet);
    };
    let age = chrono::DateTime::parse_from_rfc3339(created_at)
        .map(|t| now.signed_duration_since(t))
        .ok()
        .and_then(|d| d.to_std().ok())?;
    (age < min_interval).then_some(Skip::Recent {
        point,
        minutes: age.as_secs() / 60,
    })
}

/// The label of the point taken before `run`.
pub fn label(run: Option<&AptRun>) -> String {
    match run {
        Some(r) if !r.command_line.is_empty() => {
            let mut l = format!("before {}", r.command_line);
            if l.len() > 200 {
                let mut cut = 197;
                while !l.is_char_boundary(cut) {
                    cut -= 1;
                }
                l.truncate(cut);
                l.push_str("...");
            }
            l
        }
        _ => "before a package operation".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_under_apt_and_labels_are_bounded() {
        // The test runner's ancestors are no package manager.
        assert_eq!(find_run().map(|r| r.pid), None);
        let long = AptRun {
            pid: 1,
            start: 1,
            command_line: format!("apt-get install {}", "é".repeat(300)),
        };
        let l = label(Some(&long));
        assert!(l.len() <= 200 && l.ends_with("...") && l.starts_with("before apt-get install"));
        assert_eq!(label(None), "before a package operation");
    }

    #[test]
    fn a_point_is_due_once_the_newest_is_older_than_the_interval() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T12:00:00+00:00")
            .unwrap()
            .to_utc();
        let ten = Duration::from_secs(600);
        assert_eq!(too_soon(None, ten, now), Some(Skip::NoPointYet));
        let recent = (PointId(2), "2026-01-01T13:55:00+02:00");
        assert_eq!(
            too_soon(Some(recent), ten, now),
            Some(Skip::Recent {
                point: PointId(2),
                minutes: 5
            })
        );
        let old = (PointId(1), "2026-01-01T10:00:00+00:00");
        assert_eq!(too_soon(Some(old), ten, now), None);
        assert_eq!(too_soon(Some((PointId(3), "garbled")), ten, now), None);
    }
}
