//! `system_snapshot repair`: `index.db` lost or damaged is rebuilt by replaying `index.log`
//! into a new index (docs/DESIGN.md "Repair"). Nothing is deleted: the damaged index is kept
//! beside it, packs the rebuilt index does not name go to `lost+found/`. An intact index with
//! a damaged log gets its log rewritten from it.

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::index::{apply_op, db, Index, PointId};
use super::log::{self, Reader};
use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairReport {
    /// The index was readable and whole: nothing was rebuilt.
    pub index_intact: bool,
    /// The log was rewritten from the intact index (it had damaged records, or was missing).
    pub log_rewritten: bool,
    /// Where the damaged index was moved, when one was replaced.
    pub kept_damaged_index: Option<PathBuf>,
    /// Log records replayed.
    pub records: u64,
    /// Offsets in `index.log` of damaged stretches that were skipped.
    pub damaged_records: Vec<u64>,
    /// Complete and running points in the rebuilt index.
    pub points: Vec<PointId>,
    /// Packs no point of the rebuilt index names, moved to `lost+found/`.
    pub moved_packs: Vec<PathBuf>,
}

/// Damaged stretches in the log, by offset (empty when it is missing).
pub fn log_damage(dir: &Path) -> Result<Vec<u64>> {
    let lp = log::log_path(dir);
    let bytes = match fs::read(&lp) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", lp.display()), e)),
    };
    Ok(Reader {
        bytes: &bytes,
        pos: 0,
    }
    .filter_map(|r| r.err().map(|o| o as u64))
    .collect())
}

/// Whether every row of the index reads back whole.
fn index_whole(dir: &Path) -> bool {
    let Ok(idx) = Index::open(dir, false) else {
        return false;
    };
    let rows = || -> Result<()> {
        if !idx.integrity_problems()?.is_empty() {
            return Err(Error::Invalid("integrity".into()));
        }
        idx.points()?;
        idx.restores()?;
        idx.boot_manifests(None)?;
        idx.for_each_entry(|_, _| Ok(()))?;
        idx.changes_after(PointId(i64::MIN), |_| Ok(()))
    };
    rows().is_ok()
}

pub fn repair(dir: &Path, force: bool) -> Result<RepairReport> {
    let _lock = super::take_lock(dir)?;
    let mut report = RepairReport::default();
    let db_path = dir.join("index.db");
    if db_path.exists() && !force && index_whole(dir) {
        report.index_intact = true;
        let damaged = log_damage(dir)?;
        let idx = Index::open(dir, false)?;
        if !damaged.is_empty() || !log::log_path(dir).exists() {
            idx.dump_log(dir)?;
            report.log_rewritten = true;
        }
        report.points = idx.points()?.iter().map(|p| p.id).collect();
        report.moved_packs = move_unreferenced_packs(dir, &report.points)?;
        return Ok(report);
    }
    let lp = log::log_path(dir);
    let bytes = fs::read(&lp).map_err(|e| Error::Damaged {
        what: format!(
            "index.db cannot be rebuilt: {} cannot be read ({e}); the packs and the replica are left as they are",
            lp.display()
        ),
    })?;
    let rebuilt = dir.join("index.db.rebuilt");
    for stale in ["", "-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(format!("{}{stale}", rebuilt.display()));
    }
    replay(dir, &rebuilt, &bytes, &mut report)?;
    if db_path.exists() {
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        let kept = dir.join(format!("index.db.damaged-{stamp}"));
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", db_path.display()));
            if from.exists() {
                let to = PathBuf::from(format!("{}{suffix}", kept.display()));
                fs::rename(&from, &to).ctx(|| format!("moving {} aside", from.display()))?;
            }
        }
        report.kept_damaged_index = Some(kept);
    }
    fs::rename(&rebuilt, &db_path).ctx(|| format!("putting {} in place", db_path.display()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))?;
    let idx = Index::open(dir, false)?;
    report.points = idx.points()?.iter().map(|p| p.id).collect();
    report.moved_packs = move_unreferenced_packs(dir, &report.points)?;
    Ok(report)
}

fn replay(dir: &Path, to: &Path, bytes: &[u8], report: &mut RepairReport) -> Result<()> {
    let conn = Connection::open(to).map_err(|e| db(to, "creating", e))?;
    // No WAL for the new file: it is renamed into place whole once closed.
    conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;")
        .map_err(|e| db(to, "setting pragmas", e))?;
    let mut idx = Index::from_connection(conn, to.to_path_buf());
    idx.migrate(dir)?;
    let conn = idx.into_connection();
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| db(to, "replaying the log", e))?;
    for (at, rec) in (Reader { bytes, pos: 0 }).enumerate_offsets() {
        match rec {
            Ok(op) => {
                if apply_op(&tx, &op).is_ok() {
                    report.records += 1;
                } else {
                    report.damaged_records.push(at);
                }
            }
            Err(_) => report.damaged_records.push(at),
        }
    }
    super::index::set_log_len(&tx, bytes.len() as u64)
        .map_err(|e| db(to, "replaying the log", e))?;
    tx.commit().map_err(|e| db(to, "replaying the log", e))?;
    conn.close().map_err(|(_, e)| db(to, "closing", e))
}

/// Packs the rebuilt index does not name: a writer would delete them as orphans, and they may
/// hold what a damaged log record lost. Kept aside instead.
fn move_unreferenced_packs(dir: &Path, points: &[PointId]) -> Result<Vec<PathBuf>> {
    let packs = dir.join("packs");
    let mut moved = Vec::new();
    for ent in fs::read_dir(&packs).ctx(|| format!("listing {}", packs.display()))? {
        let ent = ent.ctx(|| format!("listing {}", packs.display()))?;
        let name = ent.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".pack"))
            .and_then(|n| n.parse::<PointId>().ok());
        if id.is_some_and(|id| points.contains(&id)) {
            continue;
        }
        let lf = dir.join("lost+found");
        fs::create_dir_all(&lf).ctx(|| format!("creating {}", lf.display()))?;
        let to = lf.join(&name);
        fs::rename(ent.path(), &to).ctx(|| format!("moving {} aside", ent.path().display()))?;
        moved.push(to);
    }
    Ok(moved)
}
