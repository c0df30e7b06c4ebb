//! Restoring a point: the point's state (`state`), the plan against a target tree (`plan`,
//! pure and printable), and its application (`apply`, ordered and convergent).

mod apply;
mod check;
mod links;
mod plan;
mod run;
mod space;
mod state;
mod steps;

pub use apply::{apply, apply_from, ApplyMode, ContentSource, RestoreReport, Source};
pub use check::{check_content, refusal as damaged_refusal, without_damaged, DamagedPath};
pub use plan::{build as build_plan, Action, PlanItem, PlanOptions, PlanSummary, RestorePlan};
pub use run::{plan as plan_request, run, RestoreOutcome, RestoreRequest};
pub use space::{check_space, needs as space_needs, FsNeed};
pub use state::{
    content_at, point_state, point_state_as, rebuild, rebuild_one_unchecked, rebuild_unchecked,
    Packs,
};
pub use steps::{check_target, journal_key, make_target, out_of_space, write_boot};

/// The path, or a directory on its way, is gone or is now something else: a live system
/// changed under the restore. ENOENT and ENOTDIR (gone), ESTALE (gone, over NFS), ELOOP (a
/// symlink now stands where a file or directory was), EISDIR and ENOTEMPTY (a directory now
/// stands where a file was, or gained entries while it was being removed).
pub(crate) fn vanished(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [
        Errno::NOENT,
        Errno::NOTDIR,
        Errno::STALE,
        Errno::LOOP,
        Errno::ISDIR,
        Errno::NOTEMPTY,
    ]
    .iter()
    .any(|x| x.raw_os_error() == code)
}
