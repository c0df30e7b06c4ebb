//! `system_snapshot repair`: `index.db` lost or damaged is rebuilt by replaying `index.log`
//! into a new index (docs/DESIGN.md "Repair"). Nothing is deleted: the damaged index is kept
//! beside it, packs the rebuilt index does not name go to `lost+found/`. An intact index with
//! a damaged log gets its log rewritten from it.

use std::collections::BTreeMap;
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
    /// The log was missing or unusable: the index was rebuilt from the packs' own records and
    /// the replica, and `not_rebuilt` says what that cannot give back.
    pub from_packs: bool,
    pub not_rebuilt: Vec<String>,
}

/// Damaged stretches in the log, by offset (empty when it is missing).
pub fn log_damage(dir: &Path) -> Result<Vec<u64>> {
    let lp = log::log_path(dir);
    match fs::File::open(&lp) {
        Ok(f) => log::scan_damage(f).ctx(|| format!("reading {}", lp.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(format!("reading {}", lp.display()), e)),
    }
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
        let missing = !log::log_path(dir).exists();
        // Opened as a writer when the log reads whole: that cuts records a kill left past the
        // committed length, which a later repair from the log would otherwise replay (a merge
        // whose merged pack `finish_merges` below deletes, since it never committed).
        let idx = Index::open(dir, damaged.is_empty() && !missing)?;
        if !damaged.is_empty() || missing {
            idx.dump_log(dir)?;
            report.log_rewritten = true;
        }
        report.points = idx.points()?.iter().map(|p| p.id).collect();
        super::finish_merges(dir, |m| report.points.contains(&m))?;
        report.moved_packs = move_unreferenced_packs(dir, &report.points)?;
        return Ok(report);
    }
    let lp = log::log_path(dir);
    let rebuilt = dir.join("index.db.rebuilt");
    for stale in ["", "-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(format!("{}{stale}", rebuilt.display()));
    }
    match fs::read(&lp) {
        Ok(bytes) if usable_log(&bytes) => replay(dir, &rebuilt, &bytes, &mut report)?,
        other => {
            if other.is_ok() {
                let kept = dir.join(format!(
                    "index.log.damaged-{}",
                    chrono::Local::now().format("%Y%m%d-%H%M%S")
                ));
                fs::rename(&lp, &kept).ctx(|| format!("moving {} aside", lp.display()))?;
            }
            // Without an index, a merge committed once the removed point's pack is gone.
            let packs = dir.join("packs");
            super::finish_merges(dir, |m| packs.join(format!("{m}.pack")).exists())?;
            from_packs(dir, &rebuilt, &mut report)?;
        }
    }
    // The WAL and shared memory go aside with (and before) the index, even when the index
    // itself is gone: SQLite would replay an old WAL onto the rebuilt file.
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let kept = dir.join(format!("index.db.damaged-{stamp}"));
    for suffix in ["-wal", "-shm", ""] {
        let from = PathBuf::from(format!("{}{suffix}", db_path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", kept.display()));
            fs::rename(&from, &to).ctx(|| format!("moving {} aside", from.display()))?;
            if suffix.is_empty() {
                report.kept_damaged_index = Some(kept.clone());
            }
        }
    }
    fs::rename(&rebuilt, &db_path).ctx(|| format!("putting {} in place", db_path.display()))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))?;
    let idx = Index::open(dir, false)?;
    if report.from_packs {
        idx.dump_log(dir)?;
        report.log_rewritten = true;
    }
    report.points = idx.points()?.iter().map(|p| p.id).collect();
    super::finish_merges(dir, |m| report.points.contains(&m))?;
    report.moved_packs = move_unreferenced_packs(dir, &report.points)?;
    Ok(report)
}

/// A log whose first record is its header: anything else is not worth replaying.
fn usable_log(bytes: &[u8]) -> bool {
    matches!(
        (Reader { bytes, pos: 0 }).next(),
        Some(Ok(log::Op::Header { .. }))
    )
}

/// The index rebuilt without its log: the points and their changes from the records each pack
/// carries (docs/DESIGN.md "Packs"), the latest point's entries from the replica itself.
fn from_packs(dir: &Path, to: &Path, report: &mut RepairReport) -> Result<()> {
    use rusqlite::types::Value;
    report.from_packs = true;
    let int = |v: &Value| match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    };
    // id -> (rank, row values). A complete row wins over a running one, and a point's row in
    // its own pack over the copy a later pack keeps of its predecessor: that copy is the row
    // as it was then (a removal from the middle rewrites the row in the merged pack only).
    let mut points: BTreeMap<i64, (u8, Vec<Value>)> = BTreeMap::new();
    let mut changes: Vec<(i64, Vec<Value>)> = Vec::new();
    let names = super::pack_files(dir)?;
    for (id, path) in names.into_iter().filter_map(|(id, p)| Some((id?.0, p))) {
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        let mut described = false;
        for rec in (Reader {
            bytes: &bytes,
            pos: 0,
        })
        .flatten()
        {
            match rec {
                log::Op::Put { table: 0, values } => {
                    let (Some(pid), Value::Text(state)) = (int(&values[0]), &values[4]) else {
                        continue;
                    };
                    let rank = u8::from(state == "complete") * 2 + u8::from(pid == id);
                    described |= pid == id;
                    if points.get(&pid).is_none_or(|(r, _)| rank >= *r) {
                        points.insert(pid, (rank, values));
                    }
                }
                log::Op::Put { table: 2, values } if int(&values[0]) == Some(id) => {
                    changes.push((id, values))
                }
                _ => {}
            }
        }
        if !described {
            report.not_rebuilt.push(format!(
                "{}: holds no records (written before packs described themselves, or damaged)",
                path.display()
            ));
        }
    }
    for (id, (rank, _)) in &points {
        if rank / 2 == 0 {
            report.not_rebuilt.push(format!(
                "point {id}: interrupted, never completed (its changes are left out)"
            ));
        }
    }
    points.retain(|_, (rank, _)| *rank / 2 == 1);
    let conn = new_index(dir, to)?;
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| db(to, "rebuilding from the packs", e))?;
    let mut apply = |op: log::Op| apply_op(&tx, &op).map(|_| report.records += 1);
    for (_, (_, values)) in points.iter() {
        apply(log::Op::Put {
            table: 0,
            values: values.clone(),
        })
        .map_err(|e| db(to, "rebuilding a point", e))?;
    }
    for (id, values) in changes {
        if points.contains_key(&id) {
            apply(log::Op::Put { table: 2, values })
                .map_err(|e| db(to, "rebuilding a change", e))?;
        }
    }
    let replica = crate::fsio::open_root(&dir.join("replica"))
        .ctx(|| format!("opening {}", dir.join("replica").display()))?;
    for (path, e) in replica_entries(std::os::fd::AsFd::as_fd(&replica))? {
        apply(super::index::entry_op(&path, &e)).map_err(|e| db(to, "rebuilding an entry", e))?;
    }
    tx.commit()
        .map_err(|e| db(to, "rebuilding from the packs", e))?;
    conn.close().map_err(|(_, e)| db(to, "closing", e))?;
    report.not_rebuilt.push(
        "the latest point's extended attributes (ACLs, capabilities), inode flags, device nodes, FIFOs and sockets live only in the index: the replica gives back its files, directories, symlinks and shared hardlinks with owner, mode, times and content (files that share a replica inode come back as one hardlink group, and every file as allocated, not sparse); older points keep what their changes recorded".into(),
    );
    Ok(())
}

/// Every path of the replica as an entry: what the replica keeps (type, owner, mode, times,
/// symlink target, content hash). No inode numbers or ctimes: the next snapshot reads
/// every file again, and records what the live system has.
fn replica_entries(
    replica: std::os::fd::BorrowedFd,
) -> Result<Vec<(crate::model::RelPath, crate::model::Entry)>> {
    use crate::model::Kind;
    let (mut walked, _) =
        crate::fsio::walk_all(replica).map_err(|e| Error::io("walking the replica", e))?;
    walked.sort_by(|a, b| a.0.cmp(&b.0));
    // Hardlink groups the replica shares: the first path in byte order leads, as in a snapshot.
    let mut leaders: std::collections::HashMap<u64, crate::model::RelPath> = Default::default();
    let mut out = Vec::with_capacity(walked.len());
    for (path, b) in walked {
        let link = (b.kind == Kind::File && b.nlink > 1)
            .then(|| leaders.entry(b.ino).or_insert_with(|| path.clone()).clone())
            .filter(|l| *l != path);
        let mut e = b.to_entry(link);
        (e.ino, e.ctime) = (0, Default::default());
        // Zero blocks are holes in the replica whatever the source allocated, so the replica
        // cannot tell a sparse file: every file comes back allocated (a swapfile, mostly
        // zeros, must come back whole; a restore's space check refuses what does not fit).
        e.sparse = false;
        match e.kind {
            Kind::Symlink => {
                let fd = crate::fsio::open_beneath(
                    replica,
                    &path,
                    rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW,
                )
                .ctx(|| format!("opening replica {}", crate::model::display_path(&path)))?;
                e.target = Some(
                    rustix::fs::readlinkat(&fd, c"", Vec::new())
                        .ctx(|| format!("reading replica {}", crate::model::display_path(&path)))?
                        .into_bytes(),
                );
            }
            Kind::File => {
                e.hash = Some(
                    crate::content::replica_body(replica, &path)?
                        .hash()
                        .ctx(|| format!("reading replica {}", crate::model::display_path(&path)))?,
                );
            }
            _ => {}
        }
        out.push((path, e));
    }
    Ok(out)
}

/// A new, empty index at `to` of this binary's schema. No WAL: the file is renamed into place
/// whole once closed.
fn new_index(dir: &Path, to: &Path) -> Result<Connection> {
    let conn = Connection::open(to).map_err(|e| db(to, "creating", e))?;
    conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;")
        .map_err(|e| db(to, "setting pragmas", e))?;
    let mut idx = Index::from_connection(conn, to.to_path_buf());
    idx.migrate(dir)?;
    Ok(idx.into_connection())
}

fn replay(dir: &Path, to: &Path, bytes: &[u8], report: &mut RepairReport) -> Result<()> {
    let conn = new_index(dir, to)?;
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| db(to, "replaying the log", e))?;
    for (at, rec) in (Reader { bytes, pos: 0 }).enumerate_offsets() {
        match rec {
            Ok(op) => {
                let n = match &op {
                    log::Op::Batch(ops) => ops.len() as u64,
                    _ => 1,
                };
                if apply_op(&tx, &op).is_ok() {
                    report.records += n;
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
    let mut moved = Vec::new();
    for (id, path) in super::pack_files(dir)? {
        if id.is_some_and(|id| points.contains(&id)) {
            continue;
        }
        let lf = dir.join("lost+found");
        fs::create_dir_all(&lf).ctx(|| format!("creating {}", lf.display()))?;
        let to = lf.join(path.file_name().expect("a file in packs/"));
        fs::rename(&path, &to).ctx(|| format!("moving {} aside", path.display()))?;
        moved.push(to);
    }
    Ok(moved)
}
