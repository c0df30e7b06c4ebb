//! What a snapshot run tells the machine's monitoring: one line to syslog (journald reads
//! `/dev/log` too), a status file in JSON and a Prometheus node-exporter textfile, both written
//! whole under a temp name and renamed, so a reader never sees half of one. None of it can
//! fail a run: a monitoring channel that is not there is skipped.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::human_size;
use crate::snapshot::SnapshotReport;

/// `[monitoring]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitoring {
    /// One line per run to syslog.
    pub syslog: bool,
    /// The JSON status file (default: status.json in /var/lib/restorepoint).
    pub status_file: Option<PathBuf>,
    /// The Prometheus textfile (default: restorepoint.prom in node-exporter's textfile
    /// directory, when that directory exists).
    pub textfile: Option<PathBuf>,
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            syslog: true,
            status_file: None,
            textfile: None,
        }
    }
}

/// Debian's prometheus-node-exporter reads `*.prom` here.
const NODE_EXPORTER_DIR: &str = "/var/lib/prometheus/node-exporter";

/// One snapshot run, as monitoring sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    /// Unix seconds when it ended.
    pub time: i64,
    pub exit_code: i32,
    /// The point it recorded.
    pub point: Option<i64>,
    pub seconds: f64,
    pub warnings: u64,
    /// A line for people: what was recorded, or what went wrong.
    pub message: String,
}

/// The status file's content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub schema: u32,
    pub store: PathBuf,
    pub last_run: Run,
    /// Unix seconds of the last run that recorded a point (exit 0 or 3).
    pub last_success: Option<i64>,
    pub last_failure: Option<i64>,
    pub points: u64,
    /// Bytes the store takes on disk.
    pub store_bytes: u64,
}

impl Monitoring {
    fn status_path(&self) -> PathBuf {
        self.status_file
            .clone()
            .unwrap_or_else(|| crate::store::place::state_dir().join("status.json"))
    }

    fn textfile_path(&self) -> Option<PathBuf> {
        match &self.textfile {
            Some(p) => Some(p.clone()),
            None => Path::new(NODE_EXPORTER_DIR)
                .is_dir()
                .then(|| Path::new(NODE_EXPORTER_DIR).join("restorepoint.prom")),
        }
    }

    /// Tells every channel how a snapshot into `store` ended: its report or its error, the
    /// exit code the command ends with, how long it took; with the points the store holds
    /// and the space it takes now. Returns what could not be written, for a warning.
    pub fn report_snapshot(
        &self,
        store: &Path,
        outcome: std::result::Result<&SnapshotReport, &Error>,
        exit_code: i32,
        seconds: f64,
    ) -> Vec<String> {
        let run = snapshot_run(store, outcome, exit_code, seconds);
        let opened = crate::store::Store::open_for_reading(store);
        let points = opened
            .as_ref()
            .ok()
            .and_then(|s| s.index.complete_points().ok())
            .map_or(0, |p| p.len() as u64);
        let bytes = match &opened {
            Ok(s) => s
                .disk_bytes()
                .unwrap_or_else(|_| crate::store::usage(store).total),
            Err(_) => crate::store::usage(store).total,
        };
        self.report(store, run, points, bytes)
    }

    /// Tells every channel about `run` of `store`, which now holds `points` in `store_bytes`.
    /// Returns what could not be written, for a warning.
    pub fn report(&self, store: &Path, run: Run, points: u64, store_bytes: u64) -> Vec<String> {
        let mut problems = Vec::new();
        if self.syslog {
            syslog(&run);
        }
        let path = self.status_path();
        let before: Option<Status> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|s: &Status| s.store == store);
        let ok = run.exit_code == 0 || run.exit_code == 3;
        let status = Status {
            schema: 1,
            store: store.to_path_buf(),
            last_success: if ok {
                Some(run.time)
            } else {
                before.as_ref().and_then(|b| b.last_success)
            },
            last_failure: if ok {
                before.as_ref().and_then(|b| b.last_failure)
            } else {
                Some(run.time)
            },
            last_run: run,
            points,
            store_bytes,
        };
        let json = serde_json::to_vec_pretty(&status).expect("status serializes");
        if let Err(e) = write_whole(&path, &json) {
            problems.push(format!("status file {}: {e}", path.display()));
        }
        if let Some(t) = self.textfile_path() {
            if let Err(e) = write_whole(&t, prometheus(&status).as_bytes()) {
                problems.push(format!("Prometheus textfile {}: {e}", t.display()));
            }
        }
        problems
    }
}

/// A snapshot run as monitoring records it, its message a line for people.
fn snapshot_run(
    store: &Path,
    outcome: std::result::Result<&SnapshotReport, &Error>,
    exit_code: i32,
    seconds: f64,
) -> Run {
    let (point, warnings, message) = match outcome {
        Ok(r) => (
            Some(r.point.0),
            r.warnings.len() as u64,
            format!(
                "restore point {} recorded in {}: {} entries, {} changed, {} stored{}",
                r.point,
                store.display(),
                r.files,
                r.added + r.modified + r.deleted + r.metadata_only,
                human_size(r.stored_bytes),
                if exit_code == 0 {
                    ""
                } else {
                    ", with warnings"
                }
            ),
        ),
        Err(e) => (
            None,
            0,
            format!("snapshot into {} failed: {e}", store.display()),
        ),
    };
    Run {
        time: chrono::Utc::now().timestamp(),
        exit_code,
        point,
        seconds,
        warnings,
        message,
    }
}

/// The status in the Prometheus text format, one series per figure, labelled with the store.
pub fn prometheus(s: &Status) -> String {
    let store = s
        .store
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP restorepoint_{name} {help}\n# TYPE restorepoint_{name} gauge\nrestorepoint_{name}{{store=\"{store}\"}} {value}\n"
        ));
    };
    let ts = |t: Option<i64>| t.map_or("0".to_string(), |t| t.to_string());
    metric(
        "last_success_timestamp_seconds",
        "When the last snapshot that recorded a point ended (0: never).",
        ts(s.last_success),
    );
    metric(
        "last_failure_timestamp_seconds",
        "When the last failed snapshot ended (0: never).",
        ts(s.last_failure),
    );
    metric(
        "last_run_timestamp_seconds",
        "When the last snapshot run ended.",
        s.last_run.time.to_string(),
    );
    metric(
        "last_run_exit_code",
        "Exit code of the last snapshot run (0 done, 3 done with warnings).",
        s.last_run.exit_code.to_string(),
    );
    metric(
        "last_run_duration_seconds",
        "How long the last snapshot run took.",
        format!("{:.3}", s.last_run.seconds),
    );
    metric(
        "last_run_warnings",
        "Warnings of the last snapshot run.",
        s.last_run.warnings.to_string(),
    );
    metric(
        "points",
        "Complete restore points in the store.",
        s.points.to_string(),
    );
    metric(
        "store_bytes",
        "Bytes the store takes on disk.",
        s.store_bytes.to_string(),
    );
    out
}

/// Written under a temp name in the same directory, synced, renamed over.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".restorepoint-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // Readable by the monitoring agent (node-exporter runs as its own user).
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// One line to the local syslog socket: daemon facility, info for a point recorded, warning
/// for one with warnings, err for a failure.
fn syslog(run: &Run) {
    let severity = match run.exit_code {
        0 => 6,
        3 => 4,
        _ => 3,
    };
    let line = format!(
        "<{}>restorepoint[{}]: {}",
        3 * 8 + severity,
        std::process::id(),
        run.message
    );
    if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = s.send_to(line.as_bytes(), "/dev/log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_textfile_has_one_labelled_gauge_per_figure() {
        let s = Status {
            schema: 1,
            store: PathBuf::from("/root/snap\"shots"),
            last_run: Run {
                time: 1700000000,
                exit_code: 3,
                point: Some(4),
                seconds: 1.5,
                warnings: 2,
                message: "m".into(),
            },
            last_success: Some(1700000000),
            last_failure: None,
            points: 4,
            store_bytes: 1234,
        };
        let t = prometheus(&s);
        assert!(t.contains(
            "restorepoint_last_success_timestamp_seconds{store=\"/root/snap\\\"shots\"} 1700000000\n"
        ));
        assert!(t.contains(
            "restorepoint_last_failure_timestamp_seconds{store=\"/root/snap\\\"shots\"} 0\n"
        ));
        assert!(t.contains("restorepoint_points{store=\"/root/snap\\\"shots\"} 4\n"));
        assert_eq!(t.matches("# TYPE").count(), 8);
    }
}
