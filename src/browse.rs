//! Looking into a point without restoring it: `system_snapshot ls ID [PATH]` and
//! `system_snapshot cat ID PATH`. Nothing is written; content is rebuilt as a restore would
//! and checked against its hash before a byte goes out.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, IoContext, Result};
use crate::model::{display_path, Entry, Kind, RelPath};
use crate::store::{PointId, Store};

/// The entry `path` had at point `id` (None: the point did not have it).
pub fn entry_at(store: &Store, id: PointId, path: &[u8]) -> Result<Option<Entry>> {
    store.index.point(id)?;
    // The oldest change after the point holds the state the point had; without one, the
    // path is as the latest point has it.
    match store.index.chain_of(path, id)?.pop() {
        Some(c) => Ok(c.old),
        None => store.index.entry(path),
    }
}

/// `path` of point `id`: the entries of its directory in name order, or itself.
pub fn list(store: &Store, id: PointId, path: &[u8]) -> Result<Vec<(RelPath, Entry)>> {
    let e = entry_at(store, id, path)?.ok_or_else(|| missing(id, path))?;
    if e.kind != Kind::Dir {
        return Ok(vec![(path.to_vec(), e)]);
    }
    let mut out: Vec<(RelPath, Entry)> = crate::restore::point_state(store, id)?
        .into_iter()
        .filter(|(p, _)| crate::model::parent(p) == Some(path) && !p.is_empty())
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

pub(crate) fn missing(id: PointId, path: &[u8]) -> Error {
    Error::Usage(format!(
        "{} is not in point {id}; `system_snapshot ls {id}` lists what it holds",
        display_path(path)
    ))
}

/// Writes the content file `path` had at point `id` to `out`; its length.
pub fn cat(store: &Store, id: PointId, path: &[u8], out: &mut dyn Write) -> Result<u64> {
    let e = entry_at(store, id, path)?.ok_or_else(|| missing(id, path))?;
    if e.kind != Kind::File {
        return Err(Error::Usage(format!(
            "{} is a {} in point {id}, not a file: `system_snapshot ls {id} {}` shows it",
            display_path(path),
            e.kind.name(),
            display_path(path)
        )));
    }
    // A hardlink follower's content is its leader's.
    let (from, want) = match &e.link {
        Some(leader) => (
            leader.clone(),
            entry_at(store, id, leader)?.ok_or_else(|| missing(id, leader))?,
        ),
        None => (path.to_vec(), e),
    };
    let mut packs = crate::restore::Packs::default();
    let mut body = crate::restore::rebuild(store, &mut packs, id, &from, &want, store.staging())?;
    let mut r = body
        .reader()
        .ctx(|| format!("reading {}", display_path(path)))?;
    std::io::copy(&mut r, out).ctx(|| format!("writing {} out", display_path(path)))
}

/// `ls -l`'s letters for a mode.
pub fn mode_string(e: &Entry) -> String {
    let kind = match e.kind {
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::CharDev => 'c',
        Kind::BlockDev => 'b',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
        Kind::File => '-',
    };
    let m = e.mode;
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let special = |x: u32, s: u32, lower: char, upper: char| match (m & x != 0, m & s != 0) {
        (true, true) => lower,
        (false, true) => upper,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// A path some point holds that matches a `find` pattern.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Found {
    pub point: i64,
    pub path: String,
    pub kind: &'static str,
    pub size: u64,
    /// Unix seconds.
    pub mtime: i64,
}

/// Every complete point's paths matching `pattern`: a glob as `exclude` takes it (`/etc/*.conf`
/// anchored at the root, `*.conf` a name anywhere), oldest point first, in path order.
pub fn find(store: &Store, pattern: &str) -> Result<Vec<Found>> {
    let anchored = pattern.starts_with('/');
    // `/etc/` names the directory, as an exclusion does.
    let pattern = match pattern.trim_end_matches('/') {
        "" => pattern,
        p => p,
    };
    let glob = globset::GlobBuilder::new(pattern.trim_start_matches('/'))
        .literal_separator(anchored)
        .build()
        .map_err(|e| Error::Usage(format!("{pattern:?} is not a pattern: {e}")))?
        .compile_matcher();
    let mut out = Vec::new();
    for p in store.index.complete_points()? {
        for (path, e) in crate::restore::point_state(store, p.id)? {
            let name = if anchored {
                &path[..]
            } else {
                crate::model::basename(&path)
            };
            if !path.is_empty() && glob.is_match(<std::ffi::OsStr as OsStrExt>::from_bytes(name)) {
                out.push(Found {
                    point: p.id.0,
                    path: display_path(&path),
                    kind: e.kind.name(),
                    size: e.size,
                    mtime: e.mtime.sec,
                });
            }
        }
    }
    Ok(out)
}
