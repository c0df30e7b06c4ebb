//! `show`: what one point changed against the point before it, by kind, with what its pack
//! spends on each path.

use crate::error::Result;
use crate::model::{display_path, RelPath};
use crate::restore;
use crate::store::{ContentKind, Point, PointId, Store};

/// What one point changed against the point before it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PointChanges {
    pub point: Option<Point>,
    /// True for the oldest point: everything in it is listed as added.
    pub initial: bool,
    pub added: Vec<PathChange>,
    pub modified: Vec<PathChange>,
    pub deleted: Vec<PathChange>,
    pub metadata_only: Vec<PathChange>,
    /// The boot area captured with the point, one per disk.
    pub boot: Vec<crate::boot::Capture>,
    /// Why the point holds no boot area, if it holds none.
    pub boot_note: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PathChange {
    pub path: String,
    pub kind: &'static str,
    pub size: u64,
    /// Bytes the point's pack spends on the path's previous version.
    pub stored: u64,
}

/// What point `id` changed against the point before it; the oldest point lists its whole
/// content as added.
pub fn changes(store: &Store, id: PointId) -> Result<PointChanges> {
    let point = store.index.point(id)?;
    let points = store.index.complete_points()?;
    let (boot, boot_note) = crate::boot::of_point(store, id)?;
    let mut out = PointChanges {
        point: Some(point),
        boot,
        boot_note,
        ..Default::default()
    };
    if points.first().map(|p| p.id) == Some(id) {
        out.initial = true;
        for (path, e) in restore::point_state(store, id)? {
            out.added.push(PathChange {
                path: display_path(&path),
                kind: e.kind.name(),
                size: e.size,
                stored: 0,
            });
        }
        return Ok(out);
    }
    let state: std::collections::HashMap<RelPath, crate::model::Entry> =
        restore::point_state(store, id)?.into_iter().collect();
    for c in store.index.changes_of(id)? {
        let new = state.get(&c.path);
        let stored = c.frame.map_or(0, |f| f.1);
        let pc = |e: &crate::model::Entry| PathChange {
            path: display_path(&c.path),
            kind: e.kind.name(),
            size: e.size,
            stored,
        };
        match (&c.old, new) {
            (None, Some(n)) => out.added.push(pc(n)),
            (Some(o), None) => out.deleted.push(pc(o)),
            (Some(o), Some(n)) => {
                let meta_only = c.content == ContentKind::Same
                    && o.kind == n.kind
                    && o.target == n.target
                    && o.rdev == n.rdev;
                if meta_only {
                    out.metadata_only.push(pc(n))
                } else {
                    out.modified.push(pc(n))
                }
            }
            (None, None) => {}
        }
    }
    Ok(out)
}
