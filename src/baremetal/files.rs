//! The files step of a bare-metal restore: the point's files into the new filesystems,
//! mounted under one directory, from the local store or from a remote one.

use std::path::Path;

use super::Files;
use crate::error::Result;
use crate::model::Warning;
use crate::offsite::Remote;
use crate::progress::Progress;
use crate::restore::RestoreRequest;
use crate::store::{PointId, Store};

/// Where the files come from.
pub enum FileSource<'a> {
    /// The system's store (`root` is the system whose points it holds).
    Local {
        root: &'a Path,
        store: &'a mut Store,
    },
    /// A remote store; its manifest and catalog are kept in `scratch` while they are read.
    Remote {
        remote: &'a Remote,
        scratch: &'a Path,
    },
}

/// Restores point `id`'s files into `into`. A new filesystem already holds directories
/// (`lost+found`, the mount points of those below it): they take the point's metadata.
pub fn restore_files(
    source: &mut FileSource,
    id: PointId,
    into: &Path,
    progress: &dyn Progress,
) -> Result<Files> {
    let (root, store) = match source {
        FileSource::Remote { remote, scratch } => {
            let done = crate::offsite::restore_into(remote, id.0, into, scratch, true)?;
            return Ok(Files {
                entries: done.entries,
                bytes: done.bytes,
                warnings: lines(&done.warnings),
                damaged: Vec::new(),
            });
        }
        FileSource::Local { root, store } => (*root, &mut **store),
    };
    // A target restore: no pre-restore point, no journal; damage is left out and named.
    let req = RestoreRequest {
        point: id,
        target: Some(into.to_path_buf()),
        paths: Vec::new(),
        safety_point: false,
        protect: Vec::new(),
        boot: crate::boot::Source::Off,
        checksum: false,
        skip_damaged: false,
    };
    let plan = crate::restore::plan_request(root, store, &req, progress)?;
    let r = crate::restore::run(root, store, &req, &plan, &[], progress)?.report;
    Ok(Files {
        entries: r.created,
        bytes: r.bytes_written,
        warnings: lines(&r.warnings),
        damaged: r
            .damaged
            .iter()
            .map(|d| format!("{}: {}", d.path, d.problem))
            .collect(),
    })
}

/// `path: message`, as the report lists them.
fn lines(warnings: &[Warning]) -> Vec<String> {
    warnings
        .iter()
        .map(|w| format!("{}: {}", w.path, w.message))
        .collect()
}
