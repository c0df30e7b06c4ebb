//! `verify`: the replica re-hashed against the index; with `full`, every older version of
//! every changed path rebuilt through its chain and checked against its recorded hash.

use std::collections::HashMap;

use crate::content;
use crate::error::{Error, Result};
use crate::model::{display_path, Kind};
use crate::restore::Packs;
use crate::store::{PointId, Store};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    /// The point whose version is damaged (None: the replica, i.e. the latest point).
    pub point: Option<PointId>,
    pub path: String,
    pub problem: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub replica_files: u64,
    pub older_versions: u64,
    pub damage: Vec<Damage>,
}

pub fn verify(store: &Store, full: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let latest = store.index.complete_points()?.last().map(|p| p.id);
    store.index.for_each_entry(|path, e| {
        if e.kind != Kind::File {
            return Ok(());
        }
        report.replica_files += 1;
        let what = format!("replica file {}", display_path(&path));
        if let Err(err) = content::replica_body(store.replica(), &path)
            .and_then(|b| content::check(b, e.hash, &what))
        {
            report.damage.push(Damage {
                point: latest,
                path: display_path(&path),
                problem: problem(err),
            });
        }
        Ok(())
    })?;
    crate::boot::verify(store, &mut report.damage)?;
    if full {
        check_chains(store, &mut report)?;
    }
    Ok(report)
}

fn problem(e: Error) -> String {
    match e {
        Error::Damaged { what } => what,
        other => other.to_string(),
    }
}

/// Each path's versions, newest first: the replica, then one step back per change row. The
/// version a row rebuilds belongs to the point before the row's point.
fn check_chains(store: &Store, report: &mut VerifyReport) -> Result<()> {
    let points = store.index.complete_points()?;
    let before: HashMap<PointId, PointId> = points.windows(2).map(|w| (w[1].id, w[0].id)).collect();
    let mut packs = Packs::default();
    let mut paths: Vec<Vec<u8>> = Vec::new();
    store.index.changes_after(0, |c| {
        if paths.last() != Some(&c.path) {
            paths.push(c.path);
        }
        Ok(())
    })?;
    for path in paths {
        let chain = store.index.chain_of(&path, 0)?;
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
