//! The facade: one `System` (a root and its store) and the operations on it. Each opens the
//! store the way the operation needs (locked for anything that writes or reads the replica)
//! and delegates to the module that owns the work.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::exclude::ExcludeSet;
use crate::fsio;
use crate::model::{display_path, RelPath};
use crate::progress::Progress;
use crate::restore::{self, RestorePlan, RestoreReport};
use crate::snapshot::{self, SnapshotOptions, SnapshotReport};
use crate::store::{ContentKind, Point, PointId, Store};
use crate::verify::VerifyReport;

/// The system whose points are recorded: its root directory and its store.
#[derive(Debug, Clone)]
pub struct System {
    pub root: PathBuf,
    pub store: PathBuf,
}

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
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PathChange {
    pub path: String,
    pub kind: &'static str,
    pub size: u64,
    /// Bytes the point's pack spends on the path's previous version.
    pub stored: u64,
}

impl System {
    pub fn new(root: impl Into<PathBuf>, store: impl Into<PathBuf>) -> System {
        System {
            root: root.into(),
            store: store.into(),
        }
    }

    /// Records a new point. On failure the half-written point is rolled back before returning.
    pub fn snapshot(
        &self,
        opts: &SnapshotOptions,
        progress: &dyn Progress,
    ) -> Result<SnapshotReport> {
        let mut store = Store::open_for_writing(&self.store, true)?;
        match snapshot::run(&mut store, &self.root, opts, progress) {
            Ok(r) => Ok(r),
            Err(e) => {
                // Keep the first error: it says why; a failed rollback is retried next run.
                let _ = crate::recover::roll_back_running(&mut store);
                Err(e)
            }
        }
    }

    pub fn list(&self) -> Result<Vec<Point>> {
        Store::open_for_reading(&self.store)?
            .index
            .complete_points()
    }

    pub fn show(&self, id: PointId) -> Result<PointChanges> {
        let store = Store::open_for_reading(&self.store)?;
        let point = store.index.point(id)?;
        let points = store.index.complete_points()?;
        let mut out = PointChanges {
            point: Some(point),
            ..Default::default()
        };
        if points.first().map(|p| p.id) == Some(id) {
            out.initial = true;
            for (path, e) in restore::point_state(&store, id)? {
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
            restore::point_state(&store, id)?.into_iter().collect();
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

    /// Opens the store for a restore: locked, since the replica must not move underneath.
    pub fn open_store(&self) -> Result<Store> {
        Store::open_for_writing(&self.store, false)
    }

    /// The plan that makes the tree at `target` (a system root) equal to point `id`.
    pub fn plan_restore(
        &self,
        store: &Store,
        id: PointId,
        target: &Path,
        excludes: &[String],
    ) -> Result<RestorePlan> {
        let point = store.index.point(id)?;
        let target_fd = fsio::open_root(target)
            .ctx(|| format!("opening the restore target {}", target.display()))?;
        let mut always = Vec::new();
        if let Some(rel) = within(target, &self.store) {
            always.push(rel);
        }
        let excludes = ExcludeSet::new(excludes, always)?;
        let scopes: Vec<RelPath> = point
            .sources
            .iter()
            .map(|s| s.trim_start_matches('/').as_bytes().to_vec())
            .collect();
        let want = restore::point_state(store, id)?;
        restore::build_plan(
            id,
            want,
            std::os::fd::AsFd::as_fd(&target_fd),
            &scopes,
            &excludes,
        )
    }

    pub fn apply_restore(
        &self,
        store: &Store,
        plan: &RestorePlan,
        target: &Path,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let target_fd = fsio::open_root(target)
            .ctx(|| format!("opening the restore target {}", target.display()))?;
        restore::apply(store, plan, std::os::fd::AsFd::as_fd(&target_fd), progress)
    }

    pub fn verify(&self, full: bool) -> Result<VerifyReport> {
        let store = Store::open_for_writing(&self.store, false)?;
        crate::verify::verify(&store, full)
    }

    /// Removes the `n` oldest points (never the latest). With `dry_run`, only says which.
    pub fn remove_oldest(&self, n: usize, dry_run: bool) -> Result<Vec<Point>> {
        let mut store = Store::open_for_writing(&self.store, false)?;
        if dry_run {
            let points = store.index.complete_points()?;
            let removable = points.len().saturating_sub(1).min(n);
            return Ok(points.into_iter().take(removable).collect());
        }
        let mut removed = Vec::new();
        for _ in 0..n {
            match crate::prune::remove_oldest(&mut store)? {
                Some(p) => removed.push(p),
                None => break,
            }
        }
        Ok(removed)
    }
}

/// `path` relative to `root`, when it lies inside it.
pub fn within(root: &Path, path: &Path) -> Option<RelPath> {
    let root = root.canonicalize().ok()?;
    let path = path.canonicalize().ok()?;
    Some(
        path.strip_prefix(&root)
            .ok()?
            .as_os_str()
            .as_encoded_bytes()
            .to_vec(),
    )
}

/// A source given on the command line (`/etc`, `etc`, `/`) as a path relative to the root.
pub fn source_rel(s: &str) -> Result<RelPath> {
    let trimmed = s.trim_matches('/');
    if trimmed.split('/').any(|c| c == ".." || c == ".") {
        return Err(Error::Invalid(format!(
            "source {s:?}: use a plain path under the root, without . or .."
        )));
    }
    let mut out = Vec::new();
    for c in trimmed.split('/').filter(|c| !c.is_empty()) {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c.as_bytes());
    }
    Ok(out)
}
