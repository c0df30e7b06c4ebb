//! The steps of a restore around the plan's application: where its target may be, creating
//! it, writing the boot area, how the journal names the root, and the error a restore that
//! ran out of space part way ends with.

use std::path::{Path, PathBuf};

use crate::boot::restore::BootPlan;
use crate::error::{Error, IoContext, Result};
use crate::store::PointId;

/// Refuses a `--target` inside the store: the restore would write into the store's own
/// directories.
pub fn check_target(store: &Path, target: &Path) -> Result<()> {
    if crate::paths::within(store, target).is_some() {
        return Err(Error::Usage(format!(
            "the target {} lies inside the store {}; choose a directory outside it",
            target.display(),
            store.display()
        )));
    }
    Ok(())
}

/// Creates the target directory and the missing ones above it; returns those it created,
/// deepest first.
pub fn make_target(t: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = t;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(up) if !up.as_os_str().is_empty() => p = up,
            _ => break,
        }
    }
    std::fs::create_dir_all(t).ctx(|| format!("creating the target {}", t.display()))?;
    Ok(missing)
}

/// Writes each disk's boot area; the bytes written to each.
pub fn write_boot(plans: &[BootPlan]) -> Result<Vec<(PathBuf, u64)>> {
    plans
        .iter()
        .map(|p| Ok((p.device.clone(), crate::boot::restore::apply(p)?)))
        .collect()
}

/// How the restore journal names a root restored in place.
pub fn journal_key(root: &Path) -> String {
    root.canonicalize()
        .unwrap_or_else(|_| root.to_path_buf())
        .display()
        .to_string()
}

/// A restore that ran out of space part way: says where it stands and how to finish it or go
/// back. `journal` is the store and the pre-restore point of an in-place restore.
pub fn out_of_space(
    e: Error,
    point: PointId,
    target: &Path,
    journal: Option<(&Path, Option<PointId>)>,
) -> Error {
    let full = |s: &std::io::Error| {
        s.kind() == std::io::ErrorKind::StorageFull
            || s.raw_os_error() == Some(rustix::io::Errno::DQUOT.raw_os_error())
    };
    let Error::Io { op, source } = e else {
        return e;
    };
    if !full(&source) {
        return Error::Io { op, source };
    }
    let next = match journal {
        Some((store, safety)) => format!(
            "The restore of point {point} into {} is journaled as unfinished in {} (table `restores`). Free space there and run the same system_restore again to finish it{}",
            target.display(),
            store.join("index.db").display(),
            match safety {
                Some(s) => format!(", or restore the pre-restore point {s} (`system_restore --point {s}`) to go back"),
                None => " (no pre-restore point was taken: --no-safety-point)".to_string(),
            }
        ),
        None => format!(
            "{} holds part of point {point}. Free space there and run the same system_restore again to finish it",
            target.display()
        ),
    };
    Error::Unfinished {
        what: format!("the restore stopped, out of space: {op}"),
        source,
        next,
    }
}
