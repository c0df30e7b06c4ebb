//! A restore from a remote store onto the system itself: the root made equal to a point of
//! the remote, reading only what differs. There is no pre-restore point (the store it would
//! go to is not the one read) and no journal: running the same restore again finishes an
//! interrupted one, since the plan compares with the tree as it is.

use std::os::fd::AsFd;
use std::path::Path;

use super::{plan_in_place, Remote, RemoteContent};
use crate::error::{Error, IoContext, Result};
use crate::model::RelPath;
use crate::progress::Progress;
use crate::restore::{self, ApplyMode, PlanOptions, RestorePlan, RestoreReport};
use crate::store::PointId;

/// What to restore in place from a remote store.
#[derive(Debug, Clone)]
pub struct InPlaceRequest {
    pub point: PointId,
    /// Patterns never written or deleted besides the point's own exclusions: the database
    /// directories, and what the operator keeps.
    pub protect: Vec<String>,
    /// Compare the content of every file the size of the point's.
    pub checksum: bool,
}

/// The plan that makes `root` equal to the point, within its sources, leaving out what it
/// excluded, `req.protect`, and the local store `store` (the system's own, a path under
/// `root`): the point left it out when it was taken, and a restore must not reach into it.
pub fn plan(
    root: &Path,
    store: &Path,
    remote: &Remote,
    req: &InPlaceRequest,
    progress: &dyn Progress,
    scratch: &Path,
) -> Result<RestorePlan> {
    let root_fd = open(root)?;
    plan_in_place(
        remote,
        req.point.0,
        root_fd.as_fd(),
        &req.protect,
        local_store(root, store),
        PlanOptions {
            checksum: req.checksum,
            progress,
        },
        scratch,
    )
}

/// Applies `plan` to `root` with content read from `remote`, once the filesystems under
/// `root` are seen to have the space it writes. Damage found on the way names the remote, so
/// that what it says to run next (`verify --store URL`) reads the copy that holds it.
pub fn run(
    root: &Path,
    remote: &Remote,
    plan: &RestorePlan,
    progress: &dyn Progress,
    scratch: &Path,
) -> Result<RestoreReport> {
    restore::check_space(root, plan)?;
    let root_fd = open(root)?;
    let mut content = RemoteContent::of(remote, scratch)?;
    restore::apply_from(
        restore::Source::Other(&mut content),
        plan,
        root_fd.as_fd(),
        ApplyMode::InPlace,
        progress,
    )
    .map_err(|e| name_remote(e, &remote.url))
}

fn open(root: &Path) -> Result<std::os::fd::OwnedFd> {
    crate::fsio::open_root(root).ctx(|| format!("opening the restore target {}", root.display()))
}

/// The local store as the restored system names it: its path below the root, taken as
/// written (a path of that system, not of this one).
fn local_store(root: &Path, store: &Path) -> Vec<RelPath> {
    store
        .strip_prefix(root)
        .map(|rel| vec![rel.as_os_str().as_encoded_bytes().to_vec()])
        .unwrap_or_default()
}

/// Damage read from a remote names the remote, so the message points at `verify --store URL`.
pub fn name_remote(e: Error, url: &str) -> Error {
    match e {
        Error::Damaged { what } => Error::RemoteDamaged {
            url: url.to_string(),
            what,
        },
        other => other,
    }
}
