//! The facade: one `System` (a root and its store) and the operations on it. Each opens the
//! store the way the operation needs (locked for anything that writes or reads the replica)
//! and delegates to the module that owns the work.

use std::path::{Path, PathBuf};

use crate::boot::restore::BootPlan;
use crate::error::{Error, Result};
use crate::model::RelPath;
use crate::offsite::{InPlaceRequest, Remote};
use crate::progress::Progress;
use crate::restore::journal_key;
use crate::restore::{self, RestorePlan};
pub use crate::restore::{RestoreOutcome, RestoreRequest};
use crate::retention::{Decision, Policy};
pub use crate::show::{PathChange, PointChanges};
use crate::snapshot::{self, SnapshotOptions, SnapshotReport};
use crate::store::{Point, PointId, Store};
use crate::verify::VerifyReport;

/// The system whose points are recorded: its root directory and its store.
#[derive(Debug, Clone)]
pub struct System {
    pub root: PathBuf,
    pub store: PathBuf,
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
        let mut store = open_writer(&self.store, true)?;
        refuse_while_restoring(&store, &self.root, "snapshot")?;
        match snapshot::run(&mut store, &self.root, opts, progress) {
            Ok(r) => Ok(r),
            Err(e) => {
                // Keep the first error: it says why; a failed rollback is retried next run.
                let _ = crate::recover::roll_back_running(&mut store);
                Err(e)
            }
        }
    }

    /// Records a new point, then applies retention under the same lock, then (with `kit`)
    /// brings the recovery kit up to date.
    pub fn snapshot_and_retain(
        &self,
        opts: &SnapshotOptions,
        policy: &Policy,
        kit: bool,
        progress: &dyn Progress,
    ) -> Result<(SnapshotReport, Vec<Decision>)> {
        let mut store = open_writer(&self.store, true)?;
        refuse_while_restoring(&store, &self.root, "snapshot")?;
        if kit {
            // A killed refresh's temp files would otherwise count as used space.
            crate::boot::kit::remove_leftovers(&self.store);
        }
        let opts = &SnapshotOptions {
            kit_bytes: if kit {
                crate::boot::kit::expected_growth(&self.store)
            } else {
                0
            },
            ..opts.clone()
        };
        let report = match snapshot::run(&mut store, &self.root, opts, progress) {
            Ok(r) => r,
            Err(e) => {
                let _ = crate::recover::roll_back_running(&mut store);
                return Err(e);
            }
        };
        let decisions = crate::prune::apply_retention(
            &mut store,
            policy,
            chrono::Local::now().fixed_offset(),
            false,
        )?;
        let mut report = report;
        if !kit {
            return Ok((report, decisions));
        }
        if let Err(e) = self.refresh_kit(&store, report.point) {
            report.warnings.push(crate::model::Warning {
                path: self.store.join("kit").display().to_string(),
                message: format!("recovery kit not updated: {e}"),
            });
        }
        Ok((report, decisions))
    }

    /// A snapshot as the commands take it: `snapshot_and_retain` with the configured hooks
    /// around it (`hooks::around_snapshot`).
    pub fn take(
        &self,
        opts: &SnapshotOptions,
        policy: &Policy,
        kit: bool,
        hooks: &crate::hooks::Hooks,
        progress: &dyn Progress,
    ) -> crate::hooks::Hooked<(SnapshotReport, Vec<Decision>)> {
        crate::hooks::around_snapshot(hooks, &self.root, &self.store, || {
            self.snapshot_and_retain(opts, policy, kit, progress)
        })
    }

    fn refresh_kit(&self, store: &Store, latest: PointId) -> Result<()> {
        let point = store.index.point(latest)?;
        let (captures, note) = crate::boot::of_point(store, latest)?;
        crate::boot::kit::refresh(&self.store, &self.root, &point, &captures, note.as_deref())
    }

    /// Applies retention (or, with `dry_run`, only says what it would do).
    pub fn prune(&self, policy: &Policy, dry_run: bool) -> Result<Vec<Decision>> {
        let mut store = open_writer(&self.store, false)?;
        crate::prune::apply_retention(
            &mut store,
            policy,
            chrono::Local::now().fixed_offset(),
            dry_run,
        )
    }

    /// The store against the ceiling `policy` sets (`admission::budget`); a store the index
    /// cannot tell the usage of is measured by a walk.
    pub fn budget(&self, policy: &Policy) -> crate::admission::Budget {
        let u = self
            .usage()
            .unwrap_or_else(|_| crate::store::usage(&self.store));
        let replica = Some(u.replica).filter(|_| self.list().is_ok_and(|p| !p.is_empty()));
        crate::admission::budget(policy, u.data(), replica)
    }

    /// The store's data usage, as the index records it (a walk when it records none).
    pub fn usage(&self) -> Result<crate::store::Usage> {
        Store::open_for_reading(&self.store)?.usage()
    }

    pub fn list(&self) -> Result<Vec<Point>> {
        Store::open_for_reading(&self.store)?
            .index
            .complete_points()
    }

    /// What point `id` changed against the point before it.
    pub fn show(&self, id: PointId) -> Result<PointChanges> {
        crate::show::changes(&Store::open_for_reading(&self.store)?, id)
    }

    /// Opens the store for a restore: locked, since the replica must not move underneath.
    pub fn open_store(&self) -> Result<Store> {
        open_writer(&self.store, false)
    }

    /// The plan that makes the target (the system root, or `req.target`) equal to the point,
    /// within its sources or the requested paths, leaving out what the point left out.
    pub fn plan_restore(&self, store: &Store, req: &RestoreRequest) -> Result<RestorePlan> {
        self.plan_restore_with(store, req, &crate::progress::Silent)
    }

    /// `plan_restore`, telling `progress` how far the comparison is.
    pub fn plan_restore_with(
        &self,
        store: &Store,
        req: &RestoreRequest,
        progress: &dyn Progress,
    ) -> Result<RestorePlan> {
        restore::plan_request(&self.root, store, req, progress)
    }

    /// Applies the plan (`restore::run`): in place, after a pre-restore point and under the
    /// journal; into a `--target` directory, made if missing.
    pub fn restore(
        &self,
        store: &mut Store,
        req: &RestoreRequest,
        plan: &RestorePlan,
        boot: &[BootPlan],
        progress: &dyn Progress,
    ) -> Result<RestoreOutcome> {
        restore::run(&self.root, store, req, plan, boot, progress)
    }

    /// The plan that makes the system root equal to point `req.point` of `remote`
    /// (`offsite::in_place::plan`), leaving this system's own store alone.
    pub fn plan_restore_from(
        &self,
        remote: &Remote,
        req: &InPlaceRequest,
        progress: &dyn Progress,
    ) -> Result<RestorePlan> {
        crate::offsite::in_place::plan(
            &self.root,
            &self.store,
            remote,
            req,
            progress,
            &std::env::temp_dir(),
        )
    }

    /// Applies a plan from `plan_restore_from` in place (`offsite::in_place::run`): no
    /// pre-restore point, since the store it would go to is not the one read.
    pub fn restore_from(
        &self,
        remote: &Remote,
        plan: &RestorePlan,
        progress: &dyn Progress,
    ) -> Result<crate::restore::RestoreReport> {
        crate::offsite::in_place::run(&self.root, remote, plan, progress, &std::env::temp_dir())
    }

    /// Checks that every file `plan` writes can be rebuilt from the store (`plan.damaged`):
    /// what an in-place restore does before its first write. Run it before asking for
    /// confirmation, so the administrator sees the damage first; `restore` then skips it.
    pub fn check_plan(
        &self,
        store: &Store,
        plan: &mut RestorePlan,
        progress: &dyn Progress,
    ) -> Result<()> {
        plan.damaged = restore::check_content(store, plan, progress)?;
        plan.content_checked = true;
        Ok(())
    }

    /// Plans writing point `point`'s boot area back (`boot::restore::plan_point`): to `device`,
    /// else `configured`, else the disk found under the root's /boot or by its identity.
    pub fn plan_boot(
        &self,
        store: &Store,
        point: PointId,
        device: Option<&Path>,
        configured: Option<&Path>,
        with_table: bool,
    ) -> Result<Vec<BootPlan>> {
        crate::boot::restore::plan_point(&self.root, store, point, device, configured, with_table)
    }

    /// What differs between point `a` and point `b`, or the live system when `b` is None
    /// (`diff::run`); within `paths` when given.
    pub fn diff(
        &self,
        a: PointId,
        b: Option<PointId>,
        paths: &[RelPath],
    ) -> Result<Vec<(crate::diff::DiffItem, String)>> {
        crate::diff::run(
            &Store::open_for_reading(&self.store)?,
            &self.root,
            a,
            b,
            paths,
        )
    }

    /// Rebuilds a lost or damaged index from the log (or the log from an intact index), then
    /// verifies the whole store.
    pub fn repair(&self, force: bool) -> Result<(crate::store::RepairReport, VerifyReport)> {
        let r = crate::store::repair(&self.store, force)?;
        let v = self.verify(true)?;
        Ok((r, v))
    }

    pub fn verify(&self, full: bool) -> Result<VerifyReport> {
        self.verify_with(full, &|_| {})
    }

    /// Verify reads without the lock, so that it never makes a snapshot fail; a snapshot,
    /// prune or restore writing meanwhile can look like damage (a replica file half
    /// rewritten, a pack merged away). Damage found while the store was being written (a
    /// writer held it at the start or the end, or committed to the index in between) is
    /// checked again once the writer is gone (`waiting` is told who it is): three checks at
    /// most. Damage found on a store at rest is reported at once.
    pub fn verify_with(
        &self,
        full: bool,
        waiting: &dyn Fn(&crate::store::Writer),
    ) -> Result<VerifyReport> {
        const CHECKS: usize = 3;
        let mut check = 1;
        loop {
            let writer_then = crate::store::writer(&self.store);
            let store = Store::open_for_reading(&self.store)?;
            let version = store.index.data_version();
            let mut report = crate::verify::verify(&store, full)?;
            report.writer = crate::store::writer(&self.store);
            if report.damage.is_empty() {
                return Ok(report);
            }
            report.store_changed = writer_then.is_some()
                || report.writer.is_some()
                || store.index.data_version() != version;
            if !report.store_changed || check == CHECKS {
                return Ok(report);
            }
            if let Some(w) = &report.writer {
                // This process's own lock is never let go while it waits.
                if w.pid == Some(std::process::id()) {
                    return Ok(report);
                }
                waiting(w);
                crate::store::wait_for_writer(&self.store);
            }
            check += 1;
        }
    }

    /// Labels a point after the fact (an empty label removes it).
    pub fn set_label(&self, id: PointId, label: &str) -> Result<Point> {
        let mut store = open_writer(&self.store, false)?;
        let label = label.trim();
        store
            .index
            .set_label(id, (!label.is_empty()).then_some(label))
    }

    /// Pins a point (retention never removes it) or unpins it.
    pub fn set_pin(&self, id: PointId, pinned: bool) -> Result<Point> {
        let mut store = open_writer(&self.store, false)?;
        let now = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        store.index.set_pin(id, pinned, &now)
    }

    /// Removes the `n` oldest points that may go (never the latest, never a pinned one): the
    /// oldest of all simply, the others merged into their successors. With `dry_run`, only
    /// says which.
    /// The points removed, and the error that stopped the removals part way, if one did (the
    /// points before it are gone: the caller says so).
    pub fn remove_oldest(&self, n: usize, dry_run: bool) -> Result<(Vec<Point>, Option<Error>)> {
        let mut store = open_writer(&self.store, false)?;
        let candidates = |store: &Store| -> Result<Vec<Point>> {
            let mut points = store.index.complete_points()?;
            points.pop(); // the latest
            Ok(points.into_iter().filter(|p| !p.pinned).collect())
        };
        if dry_run {
            return Ok((candidates(&store)?.into_iter().take(n).collect(), None));
        }
        let mut removed = Vec::new();
        for _ in 0..n {
            let next = candidates(&store).and_then(|c| match c.into_iter().next() {
                Some(p) => crate::prune::remove_point(&mut store, p.id, Default::default())
                    .map(|r| Some(r.removed)),
                None => Ok(None),
            });
            match next {
                Ok(Some(p)) => removed.push(p),
                Ok(None) => break,
                Err(e) if removed.is_empty() => return Err(e),
                Err(e) => return Ok((removed, Some(e))),
            }
        }
        Ok((removed, None))
    }

    /// Removes the points `ids`, wherever they are in the history (`prune::remove_point`).
    /// Each is checked before any goes: a refusal removes nothing. With `dry_run`, only checks.
    /// The points removed, and the error that stopped the removals part way, if one did (the
    /// points before it are gone: the caller says so).
    pub fn remove_points(
        &self,
        ids: &[PointId],
        dry_run: bool,
    ) -> Result<(Vec<crate::prune::Removal>, Option<Error>)> {
        let mut store = open_writer(&self.store, false)?;
        let points = store.index.complete_points()?;
        let mut out = Vec::new();
        for &id in ids {
            // Removing the latest is refused whatever else goes: it is the replica.
            if let Some(e) = crate::prune::refusal(&store, &points, id)? {
                return Err(e);
            }
        }
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        if dry_run {
            let stays = |p: &&Point| !ids.contains(&p.id);
            for &id in &ids {
                let at = points.iter().position(|p| p.id == id).expect("checked");
                let merged_into = points[..at]
                    .iter()
                    .any(|p| stays(&p))
                    .then(|| points[at + 1..].iter().find(stays).map(|p| p.id))
                    .flatten();
                out.push(crate::prune::Removal {
                    removed: points[at].clone(),
                    merged_into,
                    freed_bytes: 0,
                });
            }
            return Ok((out, None));
        }
        for &id in &ids {
            match crate::prune::remove_point(&mut store, id, Default::default()) {
                Ok(r) => out.push(r),
                Err(e) => return Ok((out, Some(e))),
            }
        }
        Ok((out, None))
    }
}

/// A point taken of a half-restored tree would record a state that never existed: refused
/// until the restore is finished.
fn refuse_while_restoring(store: &Store, root: &Path, op: &str) -> Result<()> {
    match store.index.unfinished_restore(&journal_key(root))? {
        Some(j) => Err(Error::RestoreUnfinished {
            op: op.to_string(),
            point: j.point,
            target: j.target,
            started: j.started_at,
        }),
        None => Ok(()),
    }
}

/// Opens the store for an operation that writes it, and first runs the recovery steps.
fn open_writer(dir: &Path, create: bool) -> Result<Store> {
    let mut store = Store::open_for_writing(dir, create)?;
    crate::recover::clean_up(&mut store)?;
    Ok(store)
}
