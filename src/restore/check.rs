//! Damage that costs one file, not the point: finding the files of a plan whose stored content
//! cannot be rebuilt, before anything is written, and leaving them out when asked.

use std::collections::HashSet;

use super::plan::{Action, RestorePlan};
use super::state::{rebuild, Packs};
use crate::error::{Error, Result};
use crate::model::{display_path, Kind, Packed, RelPath};
use crate::progress::Progress;
use crate::store::Store;

/// A path of the point whose content could not be rebuilt, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DamagedPath {
    #[serde(skip)]
    pub rel: RelPath,
    pub path: String,
    pub problem: String,
}

impl DamagedPath {
    pub fn new(rel: &[u8], problem: String) -> DamagedPath {
        DamagedPath {
            rel: rel.to_vec(),
            path: display_path(rel),
            problem,
        }
    }

    /// A hardlink follower cannot share the inode of a leader that was not written.
    pub fn follower(rel: &[u8], leader: &[u8]) -> DamagedPath {
        DamagedPath::new(
            rel,
            format!(
                "its hardlink leader {} is damaged in the store",
                display_path(leader)
            ),
        )
    }
}

/// Rebuilds (and so checks against its hash) every file the plan writes, and drops it: the
/// paths whose content is damaged, with their hardlink followers. Any other error (an I/O
/// failure reading the store) stops the check.
pub fn check_content(
    store: &Store,
    plan: &RestorePlan,
    progress: &dyn Progress,
) -> Result<Vec<DamagedPath>> {
    let writes = |it: &&super::PlanItem| {
        matches!(it.action, Action::Create | Action::Rewrite) && it.want_kind() == Some(Kind::File)
    };
    // Unpacked once each: the leaders of their groups (or files of their own).
    let leaders: Vec<_> = plan
        .items
        .iter()
        .filter(writes)
        .filter_map(|it| Some((it, it.want()?)))
        .filter(|(_, w)| w.link.is_none())
        .collect();
    let bytes = leaders.iter().map(|(_, w)| w.size).sum();
    progress.phase(
        "checking the point's content",
        Some(leaders.len() as u64),
        Some(bytes),
    );
    let mut packs = Packs::default();
    let mut out = Vec::new();
    for (it, w) in &leaders {
        match rebuild(store, &mut packs, plan.point, &it.path, w, store.staging()) {
            Ok(_) => {}
            Err(Error::Damaged { what }) => out.push(DamagedPath::new(&it.path, what)),
            Err(e) => return Err(e),
        }
        progress.advance(1);
        progress.bytes(w.size);
    }
    progress.finish();
    let bad: HashSet<RelPath> = out.iter().map(|d| d.rel.clone()).collect();
    let follows = |it: &&super::PlanItem| it.want.as_ref().is_some_and(Packed::has_link);
    for it in plan.items.iter().filter(writes).filter(follows) {
        if let Some(leader) = it.want().and_then(|w| w.link) {
            if bad.contains(&leader) {
                out.push(DamagedPath::follower(&it.path, &leader));
            }
        }
    }
    Ok(out)
}

/// The plan without the damaged paths: what an in-place `--skip-damaged` restore writes.
pub fn without_damaged(plan: &RestorePlan, damaged: &[DamagedPath]) -> RestorePlan {
    let bad: HashSet<&[u8]> = damaged.iter().map(|d| &d.rel[..]).collect();
    let mut out = plan.clone();
    out.items.retain(|it| !bad.contains(&it.path[..]));
    out
}

/// The refusal of an in-place restore that found damage before writing anything.
pub fn refusal(point: crate::model::PointId, damaged: &[DamagedPath]) -> Error {
    const SHOWN: usize = 20;
    let mut names: Vec<String> = damaged
        .iter()
        .take(SHOWN)
        .map(|d| format!("{} ({})", d.path, d.problem))
        .collect();
    if damaged.len() > SHOWN {
        names.push(format!("and {} more", damaged.len() - SHOWN));
    }
    Error::Damaged {
        what: format!(
            "point {point} cannot be restored in place: the stored content of {} path(s) is damaged: {}. Nothing was written; `--skip-damaged` restores everything else and leaves these paths as they are",
            damaged.len(),
            names.join(", ")
        ),
    }
}
