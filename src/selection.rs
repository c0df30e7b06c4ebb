//! What a snapshot (and an audit of one) records: its sources and its exclusions, from the
//! paths and patterns given for one run over those configured over the defaults.

use std::path::Path;

use crate::error::Result;
use crate::exclude::DEFAULT_EXCLUDES;
use crate::model::RelPath;
use crate::paths::source_rel;

/// The sources to walk, relative to `root`: `given` (this run's), else `configured`. With
/// `boot_mounts` (boot capture on, one filesystem, no sources given), /boot and the EFI system
/// partition are added when a source lies above them, since they belong with the boot area
/// even when they are filesystems of their own, which a walk that stays on one filesystem
/// would skip.
pub fn sources(
    root: &Path,
    given: &[String],
    configured: &[String],
    boot_mounts: bool,
) -> Result<Vec<RelPath>> {
    let chosen = if given.is_empty() { configured } else { given };
    let mut sources: Vec<RelPath> = chosen
        .iter()
        .map(|s| source_rel(s))
        .collect::<Result<_>>()?;
    if boot_mounts && given.is_empty() {
        for m in crate::boot::boot_mounts(root) {
            let covered = sources.iter().any(|s| s == &m);
            let under = sources.iter().any(|s| crate::model::is_within(&m, s));
            if under && !covered {
                sources.push(m);
            }
        }
    }
    Ok(sources)
}

/// The patterns left out: the defaults, the configured ones, the database locations (dumped
/// by their own jobs, never recorded), and this run's.
pub fn excludes(configured: &[String], databases: &[String], given: &[String]) -> Vec<String> {
    let mut excludes: Vec<String> = DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect();
    excludes.extend(configured.iter().cloned());
    excludes.extend(databases.iter().cloned());
    excludes.extend(given.iter().cloned());
    excludes
}
