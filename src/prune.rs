//! Removing the oldest point (DESIGN.md "The model"): its successor's rows and pack only
//! served to step back to it, so they go; nothing else is rewritten. The index commits
//! first, the pack files are deleted after: a crash leaves at worst an unreferenced pack.

use crate::error::Result;
use crate::store::{Point, Store};

/// Removes the oldest complete point, never the latest. Returns it, or None when only one is left.
pub fn remove_oldest(store: &mut Store) -> Result<Option<Point>> {
    let points = store.index.complete_points()?;
    if points.len() < 2 {
        return Ok(None);
    }
    let (oldest, successor) = (points[0].clone(), points[1].id);
    store.index.remove_oldest_point(oldest.id, successor)?;
    crate::failpoint::hit("prune-after-commit");
    for id in [oldest.id, successor] {
        store.remove_pack(id)?;
    }
    crate::boot::remove_unreferenced(store)?;
    Ok(Some(oldest))
}
