//! A restore of a local point as one operation: the plan for a request, then its run (the
//! pre-restore point, the journal, the boot area, the files), with what it did.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::boot::restore::BootPlan;
use crate::error::{Error, IoContext, Result};
use crate::exclude::{ExcludeSet, DEFAULT_EXCLUDES};
use crate::fsio;
use crate::model::{display_path, is_within, Packed, RelPath};
use crate::paths::{source_rel, within};
use crate::progress::Progress;
use crate::snapshot::{self, SnapshotOptions};
use crate::store::{PointId, Store};

use super::{
    check_space, journal_key, make_target, out_of_space, write_boot, Action, ApplyMode,
    RestorePlan, RestoreReport,
};

/// What to restore, and where.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub point: PointId,
    /// None: the system itself, in place; else a directory that becomes the point's root.
    pub target: Option<PathBuf>,
    /// Only these paths and what lies below them (empty: the point's sources).
    pub paths: Vec<RelPath>,
    /// Take a pre-restore point of the current state before an in-place restore.
    pub safety_point: bool,
    /// Patterns a restore never writes or deletes, besides the point's own exclusions.
    pub protect: Vec<String>,
    /// Where the pre-restore point reads the boot area from.
    pub boot: crate::boot::Source,
    /// Compare the content of every file the size of the point's, not only of those whose
    /// mtime differs.
    pub checksum: bool,
    /// In place: leave out the files whose stored content is damaged (they stay as they are)
    /// instead of refusing the whole restore.
    pub skip_damaged: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreOutcome {
    /// The pre-restore point: restoring it rolls forward again.
    pub safety_point: Option<PointId>,
    /// The interrupted restore this run finished, if any.
    #[serde(skip)]
    pub resumed: Option<crate::store::RestoreJournal>,
    /// Bytes written to each disk's boot area.
    pub boot_written: Vec<(PathBuf, u64)>,
    pub report: RestoreReport,
}

/// The plan that makes the target (the system `root`, or `req.target`) equal to the point,
/// within its sources or the requested paths, leaving out what the point left out and the
/// store; `progress` says how far the comparison is.
pub fn plan(
    root: &Path,
    store: &Store,
    req: &RestoreRequest,
    progress: &dyn Progress,
) -> Result<RestorePlan> {
    // A damaged b-tree can hide rows from a query without any error: the restore would
    // then take a newer version for an older one. SQLite's full check finds that first.
    if let Some(p) = store.index.integrity_problems()?.first() {
        return Err(Error::Damaged {
            what: format!("index {}: {p}", store.index.path.display()),
        });
    }
    let point = store.index.point(req.point)?;
    let target = req.target.clone().unwrap_or_else(|| root.to_path_buf());
    // A --target that does not exist yet is planned as empty: planning creates nothing.
    let target_fd = match fsio::open_root(&target) {
        Err(e) if req.target.is_some() && e.kind() == std::io::ErrorKind::NotFound => None,
        r => Some(r.ctx(|| format!("opening the restore target {}", target.display()))?),
    };
    let mut always = Vec::new();
    if let Some(rel) = within(&target, &store.dir) {
        always.push(rel);
    }
    let mut patterns = point
        .excludes
        .clone()
        .unwrap_or_else(|| DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect());
    patterns.extend(req.protect.iter().cloned());
    let excludes = ExcludeSet::new(&patterns, always)?;
    let sources: Vec<RelPath> = point
        .sources
        .iter()
        .map(|s| s.trim_start_matches('/').as_bytes().to_vec())
        .collect();
    for p in &req.paths {
        if !sources.iter().any(|s| is_within(p, s)) {
            return Err(Error::Usage(format!(
                "{} is not in point {}: its sources are {}",
                display_path(p),
                req.point,
                point.sources.join(", ")
            )));
        }
    }
    let scopes = if req.paths.is_empty() {
        sources
    } else {
        req.paths.clone()
    };
    let mut want = super::point_state_as(store, req.point, |e| Packed::new(&e))?;
    if !req.paths.is_empty() {
        want.retain(|(p, _)| scopes.iter().any(|s| is_within(p, s) || is_within(s, p)));
    }
    for p in &req.paths {
        let in_point = want.iter().any(|(w, _)| w == p);
        let on_system = target_fd.as_ref().is_some_and(|fd| {
            fsio::open_beneath(std::os::fd::AsFd::as_fd(fd), p, rustix::fs::OFlags::PATH).is_ok()
        });
        if !in_point && !on_system {
            return Err(Error::Usage(format!(
                "{} is neither in point {} nor on the system; check the path",
                display_path(p),
                req.point
            )));
        }
    }
    let mut plan = super::build_plan(
        req.point,
        want,
        target_fd.as_ref().map(std::os::fd::AsFd::as_fd),
        &scopes,
        &excludes,
        super::PlanOptions {
            checksum: req.checksum,
            progress,
        },
    )?;
    if !req.paths.is_empty() {
        // Directories above the requested paths are only created when missing; otherwise
        // they keep their own metadata.
        let above = |p: &[u8]| !scopes.iter().any(|s| is_within(p, s));
        plan.items
            .retain(|it| !above(&it.path) || it.action == Action::Create);
        let created: Vec<RelPath> = plan
            .items
            .iter()
            .filter(|it| it.action == Action::Create)
            .map(|it| it.path.clone())
            .collect();
        plan.dirs.retain(|p, _| !above(p) || created.contains(p));
    }
    Ok(plan)
}

/// Applies the plan. In place, a pre-restore point of the current state is taken first (when
/// asked), and the restore is journaled: running it again after an interruption finishes it
/// without taking another pre-restore point of the half-restored tree.
///
/// `boot` plans are written first, once the safety point holds the current boot area:
/// the raw write is the part most likely to fail, and a failure there leaves the files
/// untouched (GRUB's lesson: update the boot disk before its modules in /boot).
///
/// Refused before anything is written (or created) when a filesystem of the target lacks
/// the space the plan writes; a `--target` directory that did not exist is created only
/// then, and removed again if the restore fails before putting anything in it.
pub fn run(
    root: &Path,
    store: &mut Store,
    req: &RestoreRequest,
    plan: &RestorePlan,
    boot: &[BootPlan],
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let target = req.target.clone().unwrap_or_else(|| root.to_path_buf());
    check_space(&target, plan)?;
    let created = match &req.target {
        Some(t) => make_target(t)?,
        None => Vec::new(),
    };
    let result = restore_into(root, store, req, plan, boot, progress);
    if result.is_err() {
        // remove_dir removes only empty directories: whatever was restored stays.
        for d in &created {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
    }
    result
}

fn restore_into(
    root: &Path,
    store: &mut Store,
    req: &RestoreRequest,
    plan: &RestorePlan,
    boot: &[BootPlan],
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let target = req.target.clone().unwrap_or_else(|| root.to_path_buf());
    let target_fd = fsio::open_root(&target)
        .ctx(|| format!("opening the restore target {}", target.display()))?;
    // In place, damage found half way would leave the system part old, part new: it is
    // found before the pre-restore point and the journal, and refused or left out whole.
    // The check reads the plan; only damage makes a second plan (without the damaged
    // paths): a copy of a million items would double the restore's memory.
    let kept;
    let mut plan = plan;
    if req.target.is_none() && !plan.is_empty() {
        let damaged = if plan.content_checked {
            plan.damaged.clone()
        } else {
            super::check_content(store, plan, progress)?
        };
        if !damaged.is_empty() {
            if !req.skip_damaged {
                return Err(super::damaged_refusal(req.point, &damaged));
            }
            let mut without = super::without_damaged(plan, &damaged);
            without.damaged = damaged;
            without.content_checked = true;
            kept = without;
            plan = &kept;
        }
    }
    let boot_work = boot.iter().any(|b| !b.is_noop());
    if req.target.is_some() || (plan.is_empty() && !boot_work) {
        // Nothing of the system changes: no safety point, nothing to journal.
        let boot_written = write_boot(boot)?;
        let report = super::apply(store, plan, target_fd.as_fd(), ApplyMode::Target, progress)
            .map_err(|e| out_of_space(e, req.point, &target, None))?;
        return Ok(RestoreOutcome {
            safety_point: None,
            resumed: None,
            boot_written,
            report,
        });
    }
    let key = journal_key(&target);
    let resumed = store
        .index
        .unfinished_restore(&key)?
        .filter(|j| j.point == req.point);
    let safety_point = match &resumed {
        Some(j) => j.safety_point,
        None if req.safety_point => Some(safety_point(root, store, req, progress)?),
        None => None,
    };
    if resumed.is_none() && safety_point.is_some() {
        // The safety point may have taken space on the target's filesystem (a store on
        // the root): measured again before the first write.
        check_space(&target, plan)?;
    }
    if resumed.is_none() {
        let paths: Vec<String> = req.paths.iter().map(|p| display_path(p)).collect();
        store
            .index
            .begin_restore(req.point, &key, &paths, safety_point)?;
    }
    crate::failpoint::hit("restore-before-apply");
    let boot_written = write_boot(boot)?;
    crate::failpoint::hit("restore-after-boot");
    let report = super::apply(store, plan, target_fd.as_fd(), ApplyMode::InPlace, progress)
        .map_err(|e| out_of_space(e, req.point, &target, Some((&store.dir, safety_point))))?;
    store.index.finish_restores(&key)?;
    Ok(RestoreOutcome {
        safety_point,
        resumed,
        boot_written,
        report,
    })
}

/// A point of everything the restore may change: the point's sources, with its exclusions.
fn safety_point(
    root: &Path,
    store: &mut Store,
    req: &RestoreRequest,
    progress: &dyn Progress,
) -> Result<PointId> {
    let point = store.index.point(req.point)?;
    let opts = SnapshotOptions {
        sources: point
            .sources
            .iter()
            .map(|s| source_rel(s))
            .collect::<Result<_>>()?,
        excludes: point
            .excludes
            .clone()
            .unwrap_or_else(|| DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect()),
        one_file_system: true,
        kind: crate::store::PointKind::PreRestore,
        label: Some(format!("before restoring point {}", req.point)),
        level: Default::default(),
        admission: None,
        boot: req.boot.clone(),
        kit_bytes: 0,
    };
    match snapshot::run(store, root, &opts, progress) {
        Ok(r) => Ok(r.point),
        Err(e) => {
            let _ = crate::recover::roll_back_running(store);
            Err(e)
        }
    }
}
