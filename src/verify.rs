//! `verify`: the store checked against itself, reading only. The index first (SQLite's own
//! structure check, then every row against its checksum), then the replica re-hashed against
//! the index, each complete point's structure (every path's directory is in the point, every
//! hardlink follower's leader is a file of the point with the same content), the packs on
//! disk against the points, and the boot pieces. With `full`, every older version of every
//! changed path is rebuilt through its chain and checked against its recorded hash.
//!
//! A check that cannot run because the index is damaged is itself reported, and the others
//! still run: verify reports everything it can, and never rolls back, deletes or writes.

use std::collections::{HashMap, HashSet};

use crate::content;
use crate::error::{Error, Result};
use crate::model::{display_path, parent, Entry, Kind, RelPath};
use crate::restore::Packs;
use crate::store::{Point, PointId, Store};

pub use crate::model::Damage;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub replica_files: u64,
    pub older_versions: u64,
    pub points_checked: u64,
    /// A snapshot that was interrupted: the next writing command rolls it back. Its paths
    /// are left out of the replica check (the replica is between two states there).
    pub interrupted: Vec<PointId>,
    pub damage: Vec<Damage>,
    /// The process holding the store's write lock when the check ended (a snapshot running
    /// now: an incomplete point may then be its point in progress).
    pub writer: Option<crate::store::Writer>,
    /// The store was written while it was read, on every check: the damage reported may be a
    /// writer's work in progress (see `engine::verify_with`).
    pub store_changed: bool,
}

pub fn verify(store: &Store, full: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let whole = |report: &mut VerifyReport, what: &str, r: Result<()>| {
        if let Err(e) = r {
            report.damage.push(Damage {
                point: None,
                path: what.to_string(),
                problem: problem(e),
            });
        }
    };
    let r = index_structure(store, &mut report);
    whole(&mut report, "index.db", r);
    let points = match store.index.points() {
        Ok(p) => p,
        Err(e) => {
            whole(&mut report, "index.db", Err(e));
            return Ok(report); // without the points nothing else can be judged
        }
    };
    let bad = crate::store::log_damage(&store.dir);
    if let Err(e) = &bad {
        report.damage.push(Damage {
            point: None,
            path: "index.log".into(),
            problem: format!("cannot be read: {e}"),
        });
    }
    if let Ok(bad) = bad {
        if !bad.is_empty() {
            report.damage.push(Damage {
                point: None,
                path: "index.log".into(),
                problem: format!(
                    "{} damaged stretches (at offsets {}); `system_snapshot repair` rewrites the log from the index",
                    bad.len(),
                    bad.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let r = store.index.restores().map(drop);
    whole(&mut report, "index.db (restore journal)", r);
    report.interrupted = points
        .iter()
        .filter(|p| !p.complete)
        .map(|p| p.id)
        .collect();
    let complete: Vec<Point> = points.into_iter().filter(|p| p.complete).collect();
    let r = replica(store, &complete, &mut report);
    whole(&mut report, "index.db (replica entries)", r);
    let r = structure(store, &complete, &mut report);
    whole(&mut report, "index.db (points)", r);
    let r = packs(store, &complete, &report.interrupted.clone(), &mut report);
    whole(&mut report, "packs", r);
    let r = crate::boot::verify(store, &mut report.damage);
    whole(&mut report, "boot", r);
    if full {
        let r = check_chains(store, &complete, &mut report);
        whole(&mut report, "index.db (changes)", r);
    }
    Ok(report)
}

fn problem(e: Error) -> String {
    match e {
        Error::Damaged { what } => what,
        other => other.to_string(),
    }
}

fn index_structure(store: &Store, report: &mut VerifyReport) -> Result<()> {
    for p in store.index.integrity_problems()? {
        report.damage.push(Damage {
            point: None,
            path: "index.db".into(),
            problem: p,
        });
    }
    Ok(())
}

fn replica(store: &Store, complete: &[Point], report: &mut VerifyReport) -> Result<()> {
    let latest = complete.last().map(|p| p.id);
    let mut in_flight: HashSet<RelPath> = HashSet::new();
    for id in &report.interrupted {
        in_flight.extend(store.index.changes_of(*id)?.into_iter().map(|c| c.path));
    }
    let mut damage = Vec::new();
    let mut files = 0;
    // What the replica holds, to find rows that are missing (a row gone from index.db fails
    // no checksum) and replica paths that are gone.
    let mut on_disk: HashMap<RelPath, Kind> = HashMap::new();
    let (walked, _) =
        crate::fsio::walk_all(store.replica()).map_err(|e| Error::io("walking the replica", e))?;
    on_disk.extend(walked.into_iter().map(|(p, b)| (p, b.kind)));
    let push = |damage: &mut Vec<Damage>, path: &[u8], problem: String| {
        damage.push(Damage {
            point: latest,
            path: display_path(path),
            problem,
        })
    };
    store.index.for_each_entry(|path, e| {
        let in_replica = matches!(e.kind, Kind::File | Kind::Dir | Kind::Symlink);
        let have = on_disk.remove(&path);
        if in_flight.contains(&path) {
            return Ok(());
        }
        if in_replica && have.is_some_and(|k| k != e.kind) {
            push(
                &mut damage,
                &path,
                format!(
                    "the replica holds a {} where the index has a {}",
                    have.map_or("", Kind::name),
                    e.kind.name()
                ),
            );
            return Ok(());
        }
        if in_replica && have.is_none() && e.kind != Kind::File {
            push(
                &mut damage,
                &path,
                format!("the {} is missing from the replica", e.kind.name()),
            );
        }
        if e.kind != Kind::File {
            return Ok(());
        }
        files += 1;
        let what = format!("replica file {}", display_path(&path));
        if let Err(err) = content::replica_body(store.replica(), &path)
            .and_then(|b| content::check(b, e.hash, &what))
        {
            damage.push(Damage {
                point: latest,
                path: display_path(&path),
                problem: problem(err),
            });
        }
        Ok(())
    })?;
    for (path, _) in on_disk {
        if !in_flight.contains(&path) {
            push(
                &mut damage,
                &path,
                "in the replica but not in the index: its row is missing".into(),
            );
        }
    }
    report.replica_files = files;
    damage.sort_by(|a, b| a.path.cmp(&b.path));
    report.damage.extend(damage);
    Ok(())
}

/// Each complete point's state must be a tree a restore can write: every path's directory
/// is a directory of the point, and every follower's leader a leading file with its content.
fn structure(store: &Store, complete: &[Point], report: &mut VerifyReport) -> Result<()> {
    for p in complete {
        let state = crate::restore::point_state(store, p.id)?;
        let by_path: HashMap<&[u8], &Entry> =
            state.iter().map(|(k, e)| (k.as_slice(), e)).collect();
        for (path, e) in &state {
            let mut push = |problem: String| {
                report.damage.push(Damage {
                    point: Some(p.id),
                    path: display_path(path),
                    problem,
                })
            };
            if let Some(dir) = parent(path) {
                if by_path.get(dir).is_none_or(|d| d.kind != Kind::Dir) {
                    push(format!(
                        "its directory {} is not in the point",
                        display_path(dir)
                    ));
                }
            }
            if let Some(l) = &e.link {
                match by_path.get(l.as_slice()) {
                    Some(le) if le.kind == Kind::File && le.link.is_none() && le.hash == e.hash => {
                    }
                    Some(_) => push(format!(
                        "a hardlink of {}, which is not a leading file with the same content",
                        display_path(l)
                    )),
                    None => push(format!(
                        "a hardlink of {}, which the point does not hold",
                        display_path(l)
                    )),
                }
            }
        }
        report.points_checked += 1;
    }
    Ok(())
}

/// Every point after the oldest has a pack when any of its changes has a frame, and every
/// pack belongs to a point.
fn packs(
    store: &Store,
    complete: &[Point],
    interrupted: &[PointId],
    report: &mut VerifyReport,
) -> Result<()> {
    let mut framed: HashMap<PointId, Vec<(u64, u64)>> = HashMap::new();
    store.index.changes_after(PointId(0), |c| {
        if let Some(f) = c.frame {
            framed.entry(c.point).or_default().push(f);
        }
        Ok(())
    })?;
    for p in complete {
        let frames = framed.remove(&p.id).unwrap_or_default();
        let end = frames.iter().map(|(o, l)| o + l).max().unwrap_or(0);
        let path = store.pack_path(p.id);
        if let Ok(file) = std::fs::File::open(&path) {
            // A pack shorter than its frames is reported below; here, damaged records.
            if let Ok(Some(at)) = crate::store::damaged_pack_record(&file, frames) {
                report.damage.push(Damage {
                    point: Some(p.id),
                    path: "pack".into(),
                    problem: format!(
                        "{}: the record at offset {at} is damaged (the pack no longer describes itself; restores use the index)",
                        path.display()
                    ),
                });
            }
        }
        if end == 0 {
            continue;
        }
        let problem = match std::fs::metadata(&path) {
            Ok(m) if m.len() >= end => continue,
            Ok(m) => format!(
                "{} is {} bytes, its frames reach {end}",
                path.display(),
                m.len()
            ),
            Err(e) => format!("{}: {e}", path.display()),
        };
        report.damage.push(Damage {
            point: Some(p.id),
            path: "pack".into(),
            problem,
        });
    }
    let known: HashSet<PointId> = complete
        .iter()
        .map(|p| p.id)
        .chain(interrupted.iter().copied())
        .collect();
    for (id, path) in crate::store::pack_files(&store.dir)? {
        if id.is_none_or(|id| !known.contains(&id)) {
            report.damage.push(Damage {
                point: None,
                path: path.display().to_string(),
                problem: "a file no point refers to (the next snapshot removes a stray pack)"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Each path's versions, newest first: the replica, then one step back per change row. The
/// version a row rebuilds belongs to the point before the row's point.
fn check_chains(store: &Store, points: &[Point], report: &mut VerifyReport) -> Result<()> {
    let before: HashMap<PointId, PointId> = points.windows(2).map(|w| (w[1].id, w[0].id)).collect();
    let complete: HashSet<PointId> = points.iter().map(|p| p.id).collect();
    let mut packs = Packs::default();
    let mut paths: Vec<Vec<u8>> = Vec::new();
    store.index.changes_after(PointId(0), |c| {
        if complete.contains(&c.point) && paths.last() != Some(&c.path) {
            paths.push(c.path);
        }
        Ok(())
    })?;
    for path in paths {
        let chain = store.index.chain_of(&path, PointId(0))?;
        if chain.iter().any(|c| !complete.contains(&c.point)) {
            continue; // touched by an interrupted point: rolled back before it is read
        }
        let mut cur = match store.index.entry(&path)? {
            Some(e) if e.kind == Kind::File => content::replica_body(store.replica(), &path)
                .and_then(|b| content::check(b, e.hash, "replica"))
                .ok()
                .flatten(),
            _ => None,
        };
        for c in &chain {
            let older = before.get(&c.point).copied();
            let step = packs
                .get(store, c.point)
                .and_then(|pack| content::step_back(pack, c, cur.take(), store.staging()));
            match step {
                Ok(b) => {
                    if b.is_some() {
                        report.older_versions += 1;
                    }
                    cur = b;
                }
                Err(err) => {
                    report.damage.push(Damage {
                        point: older,
                        path: display_path(&path),
                        problem: problem(err),
                    });
                    break; // older versions of this path depend on this one
                }
            }
        }
    }
    Ok(())
}
