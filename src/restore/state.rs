//! The state of every path at a point: the replica's entries, overridden by the first change
//! after the point for each path that changed since (DESIGN.md "The model").

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::BorrowedFd;

use crate::content::{self, Body};
use crate::error::{IoContext, Result};
use crate::model::{display_path, Entry, Kind, RelPath};
use crate::store::{Change, PointId, Store};

/// All entries of point `id`, in byte order of path.
pub fn point_state(store: &Store, id: PointId) -> Result<Vec<(RelPath, Entry)>> {
    point_state_as(store, id, |e| e)
}

/// All entries of point `id`, in byte order of path, each as `keep` makes it (a restore keeps
/// them packed: `model::Packed`).
pub fn point_state_as<T>(
    store: &Store,
    id: PointId,
    mut keep: impl FnMut(Entry) -> T,
) -> Result<Vec<(RelPath, T)>> {
    store.index.point(id)?;
    let mut first_change: BTreeMap<RelPath, Change> = BTreeMap::new();
    store.index.changes_after(id, |c| {
        first_change.entry(c.path.clone()).or_insert(c);
        Ok(())
    })?;
    // Merged in path order as the index yields its entries: a sort afterwards would need half
    // the list again as scratch space (issue 10: memory per path).
    let mut out = Vec::new();
    // A path that changed after the point has the state its first change recorded: none, when
    // the point did not have it.
    let mut changed = first_change.into_iter().map(|(p, c)| (p, c.old)).peekable();
    store.index.for_each_entry(|path, e| {
        while let Some((p, old)) = changed.next_if(|(p, _)| *p < path) {
            out.extend(old.map(|o| (p, keep(o))));
        }
        match changed.next_if(|(p, _)| *p == path) {
            Some((p, old)) => out.extend(old.map(|o| (p, keep(o)))),
            None => out.push((path, keep(e))),
        }
        Ok(())
    })?;
    out.extend(changed.filter_map(|(p, old)| old.map(|o| (p, keep(o)))));
    Ok(out)
}

/// Opens packs on demand and keeps them open for the rest of the operation.
#[derive(Default)]
pub struct Packs {
    open: std::collections::HashMap<PointId, File>,
    /// Per point: the chain of every path changed after it, newest first (one query instead
    /// of one per file: a query per file cost a restore more than copying small files).
    chains: std::collections::HashMap<PointId, std::collections::HashMap<RelPath, Vec<Change>>>,
}

impl Packs {
    pub fn get(&mut self, store: &Store, id: PointId) -> Result<&File> {
        match self.open.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let path = store.pack_path(id);
                let f = match File::open(&path) {
                    Ok(f) => f,
                    // The index names frames in it: a missing pack is lost history.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(crate::error::Error::Damaged {
                            what: format!(
                                "the pack {} of point {id} is missing: {e}",
                                path.display()
                            ),
                        })
                    }
                    Err(e) => return Err(e).ctx(|| format!("opening {}", path.display())),
                };
                Ok(v.insert(f))
            }
        }
    }
}

/// The content of `path` at point `id`, rebuilt from the replica through the chain of reverse
/// frames and checked against `want` (the entry of the point).
pub fn rebuild(
    store: &Store,
    packs: &mut Packs,
    id: PointId,
    path: &[u8],
    want: &Entry,
    tmp: BorrowedFd,
) -> Result<Body> {
    rebuild_inner(store, packs, id, path, want, tmp, true).map(|(b, _)| b)
}

/// `rebuild`, except that a file unchanged since the point comes back unchecked with the hash
/// its bytes must have: a restore checks it while it copies them, one read instead of two.
pub fn rebuild_unchecked(
    store: &Store,
    packs: &mut Packs,
    id: PointId,
    path: &[u8],
    want: &Entry,
    tmp: BorrowedFd,
) -> Result<(Body, Option<crate::model::Hash>)> {
    rebuild_inner(store, packs, id, path, want, tmp, false)
}

fn rebuild_inner(
    store: &Store,
    packs: &mut Packs,
    id: PointId,
    path: &[u8],
    want: &Entry,
    tmp: BorrowedFd,
    check_latest: bool,
) -> Result<(Body, Option<crate::model::Hash>)> {
    debug_assert_eq!(want.kind, Kind::File);
    let chains = match packs.chains.entry(id) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let mut chains: std::collections::HashMap<RelPath, Vec<Change>> = Default::default();
            store.index.changes_after(id, |c| {
                chains.entry(c.path.clone()).or_default().insert(0, c);
                Ok(())
            })?;
            v.insert(chains)
        }
    };
    let chain = chains.get(path).cloned().unwrap_or_default();
    rebuild_from_chain(store, packs, id, path, &chain, want, tmp, check_latest)
}

/// One file's content at point `id`, for a reader of a few files (`mount`): only its own
/// chain of changes is read (one query), not those of every path changed since the point,
/// which a restore reads once for all its files. Unchecked like `rebuild_unchecked`, and the
/// chain and the replica are read without one transaction: the caller checks the bytes
/// against `want`'s hash, which also catches a snapshot or a prune that ran in between.
pub fn rebuild_one_unchecked(
    store: &Store,
    id: PointId,
    path: &[u8],
    want: &Entry,
    tmp: BorrowedFd,
) -> Result<Body> {
    let chain = store.index.chain_of(path, id)?;
    let mut packs = Packs::default();
    rebuild_from_chain(store, &mut packs, id, path, &chain, want, tmp, false).map(|(b, _)| b)
}

/// `chain`: the changes of `path` after point `id`, newest first.
#[allow(clippy::too_many_arguments)]
fn rebuild_from_chain(
    store: &Store,
    packs: &mut Packs,
    id: PointId,
    path: &[u8],
    chain: &[Change],
    want: &Entry,
    tmp: BorrowedFd,
    check_latest: bool,
) -> Result<(Body, Option<crate::model::Hash>)> {
    let latest = if chain.is_empty() {
        // Unchanged since the point: the replica's entry is the wanted one.
        if !check_latest {
            let body = content::replica_body(store.replica(), path)?;
            return Ok((body, want.hash));
        }
        Some(want.clone())
    } else {
        store.index.entry(path)?
    };
    let body = step_through(store, packs, path, latest, chain, tmp)?.ok_or_else(|| {
        crate::error::Error::Damaged {
            what: format!("{} has no content at point {id}", display_path(path)),
        }
    })?;
    Ok((body, None))
}

/// The content of `path` at point `id` (None when it was not a regular file then): the
/// replica's copy, checked, stepped back through every later point's change of it.
pub fn content_at(
    store: &Store,
    packs: &mut Packs,
    id: PointId,
    path: &[u8],
    tmp: BorrowedFd,
) -> Result<Option<Body>> {
    let chain = store.index.chain_of(path, id)?;
    step_through(store, packs, path, store.index.entry(path)?, &chain, tmp)
}

/// `latest` (the replica's entry of `path`) stepped back through `chain`, newest first.
fn step_through(
    store: &Store,
    packs: &mut Packs,
    path: &[u8],
    latest: Option<Entry>,
    chain: &[Change],
    tmp: BorrowedFd,
) -> Result<Option<Body>> {
    let mut cur = match latest {
        Some(e) if e.kind == Kind::File => {
            let body = content::replica_body(store.replica(), path)?;
            content::check(
                body,
                e.hash,
                &format!("replica file {}", display_path(path)),
            )?
        }
        _ => None,
    };
    for c in chain {
        let pack = packs.get(store, c.point)?;
        cur = content::step_back(pack, c, cur, tmp).map_err(|e| match e {
            // A frame that ends past the end of its pack: the pack was truncated.
            crate::error::Error::Io { op, source }
                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                crate::error::Error::Damaged {
                    what: format!(
                        "{op}: the pack {} of point {} is truncated: {source}",
                        store.pack_path(c.point).display(),
                        c.point
                    ),
                }
            }
            other => other,
        })?;
    }
    Ok(cur)
}
