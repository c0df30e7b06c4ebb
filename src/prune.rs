//! Removing the oldest point (DESIGN.md "The model"): its successor's rows and pack only
//! served to step back to it, so they go; nothing else is rewritten. The index commits
//! first, the pack files are deleted after: a crash leaves at worst an unreferenced pack.

use crate::error::{Error, Result};
use crate::store::{Point, PointId, Store};

/// (point, the point being restored) for every point an unfinished in-place restore needs:
/// the point it converges to, and the safety point that undoes it.
pub fn needed_by_restores(store: &Store) -> Result<Vec<(PointId, PointId)>> {
    Ok(store
        .index
        .restores()?
        .into_iter()
        .filter(|j| !j.complete)
        .flat_map(|j| {
            std::iter::once((j.point, j.point)).chain(j.safety_point.map(|s| (s, j.point)))
        })
        .collect())
}

/// Removes the oldest complete point, never the latest. Returns it, or None when only one is left.
pub fn remove_oldest(store: &mut Store) -> Result<Option<Point>> {
    let points = store.index.complete_points()?;
    if points.len() < 2 {
        return Ok(None);
    }
    let (oldest, successor) = (points[0].clone(), points[1].id);
    if let Some(&(_, restoring)) = needed_by_restores(store)?
        .iter()
        .find(|(p, _)| *p == oldest.id)
    {
        let j = store
            .index
            .restores()?
            .into_iter()
            .rfind(|j| !j.complete && j.point == restoring)
            .expect("needed_by_restores names an unfinished restore");
        return Err(Error::RestoreUnfinished {
            op: format!("removing point {}", oldest.id),
            point: j.point,
            target: j.target,
            started: j.started_at,
        });
    }
    let freed = store.pack_allocated(oldest.id) + store.pack_allocated(successor);
    store
        .index
        .remove_oldest_point(oldest.id, successor, freed)?;
    crate::failpoint::hit("prune-after-commit");
    for id in [oldest.id, successor] {
        store.remove_pack(id)?;
    }
    crate::boot::remove_unreferenced(store)?;
    Ok(Some(oldest))
}
