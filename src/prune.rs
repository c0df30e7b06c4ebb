//! Removing points (DESIGN.md "Retention and removal"). The oldest: its successor's rows and
//! pack only served to step back to it, so they go; nothing else is rewritten. The index
//! commits first, the pack files are deleted after: a crash leaves at worst an unreferenced
//! pack. A point in the middle: its changes are merged into its successor's (`remove_point`).

use crate::error::{Error, IoContext, Result};
use crate::model::{display_path, Hash, Kind};
use crate::store::{Change, ContentKind, Point, PointId, Store};

/// (point, the point being restored) for every point an unfinished in-place restore needs:
/// the point it converges to, and the safety point that undoes it.
pub fn needed_by_restores(store: &Store) -> Result<Vec<(PointId, PointId)>> {
    Ok(store
        .index
        .restores()?
        .into_iter()
        .filter(|j| !j.complete)
        .flat_map(|j| {
            std::iter::once((j.point, j.point)).chain(j.safety_point.map(|s| (s, j.point)))
        })
        .collect())
}

/// The retention inputs of the store's complete points (oldest first): sizes, pins, what
/// unfinished restores need, what merging each into its successor would free, and the points
/// whose removal failed in this run (`unremovable`, with why).
pub fn retention_inputs(
    store: &Store,
    unremovable: &std::collections::HashMap<PointId, String>,
) -> Result<Vec<crate::retention::PointInfo>> {
    let points = store.index.complete_points()?;
    let mut infos = crate::retention::point_infos(&points, &needed_by_restores(store)?);
    for i in 0..infos.len() {
        if let Some(next) = infos.get(i + 1).map(|n| n.id) {
            infos[i].merge_frees = store.index.merge_frees(infos[i].id, next)?;
        }
        infos[i].unremovable = unremovable.get(&infos[i].id).cloned();
    }
    Ok(infos)
}

/// Applies retention: decides with `retention::decide`, removes the first point it says to
/// remove (from the middle too, when an older point is pinned or needed), then decides again
/// from the measured size, until nothing more goes. `dry_run` decides once, from estimates.
/// A removal that fails (damage it would have to read through, no space for a merged pack)
/// keeps that point, with the failure as the decision's warning, and retention goes on: a
/// snapshot that was recorded never fails because an older point could not go.
pub fn apply_retention(
    store: &mut Store,
    policy: &crate::retention::Policy,
    now: chrono::DateTime<chrono::FixedOffset>,
    dry_run: bool,
) -> Result<Vec<crate::retention::Decision>> {
    let mut failed: std::collections::HashMap<PointId, String> = Default::default();
    let decide = |store: &Store, failed: &std::collections::HashMap<PointId, String>| {
        let infos = retention_inputs(store, failed)?;
        let u = store.usage()?;
        Ok::<_, Error>(crate::retention::decide(
            policy,
            &infos,
            u.data(),
            u.replica,
            now,
        ))
    };
    if dry_run {
        return decide(store, &failed);
    }
    let mut removed = Vec::new();
    loop {
        let decisions = decide(store, &failed)?;
        let Some(d) = decisions.iter().find(|d| d.remove) else {
            let mut all = removed;
            all.extend(decisions.into_iter().map(|mut d| {
                if let Some(why) = failed.get(&d.id) {
                    d.warnings.push(crate::model::Warning {
                        path: format!("point {}", d.id),
                        message: format!("retention could not remove it: {why}"),
                    });
                }
                d
            }));
            all.sort_by_key(|d: &crate::retention::Decision| d.id);
            return Ok(all);
        };
        match remove_point(store, d.id, crate::delta::Level::default()) {
            Ok(_) => removed.push(d.clone()),
            Err(e) => {
                failed.insert(d.id, e.to_string());
            }
        }
    }
}

/// Removes the oldest complete point, never the latest. Returns it, or None when only one is left.
pub fn remove_oldest(store: &mut Store) -> Result<Option<Point>> {
    let points = store.index.complete_points()?;
    if points.len() < 2 {
        return Ok(None);
    }
    let (oldest, successor) = (points[0].clone(), points[1].id);
    if let Some(e) = needed_by_a_restore(store, oldest.id)? {
        return Err(e);
    }
    let freed = store.pack_allocated(oldest.id) + store.pack_allocated(successor);
    store
        .index
        .remove_oldest_point(oldest.id, successor, freed)?;
    crate::failpoint::hit("prune-after-commit");
    for id in [oldest.id, successor] {
        store.remove_pack(id)?;
    }
    crate::boot::remove_unreferenced(store)?;
    Ok(Some(oldest))
}

/// What `remove_point` did: the point removed, and the point its changes went into (None when
/// it was the oldest, whose successor's changes simply went with it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removal {
    pub removed: Point,
    pub merged_into: Option<PointId>,
    /// Allocated bytes of packs freed (negative: the merge grew the store).
    pub freed_bytes: i64,
}

/// Why `id` cannot be removed, if it cannot: the latest point, a pinned point, one an
/// unfinished restore needs. `points`: the complete points, oldest first.
pub fn refusal(store: &Store, points: &[Point], id: PointId) -> Result<Option<Error>> {
    let Some(at) = points.iter().position(|p| p.id == id) else {
        return Err(Error::NoSuchPoint { id: id.0 });
    };
    if at + 1 == points.len() {
        return Ok(Some(Error::PruneRefused {
            why: format!("point {id} is the latest point, the one the replica holds; it is never removed (take a new point first, and it can go)"),
        }));
    }
    if points[at].pinned {
        return Ok(Some(Error::PruneRefused {
            why: format!(
                "point {id} is pinned; `system_snapshot unpin {id}` first if it should go"
            ),
        }));
    }
    needed_by_a_restore(store, id)
}

/// The refusal to remove `id` when an unfinished in-place restore needs it.
fn needed_by_a_restore(store: &Store, id: PointId) -> Result<Option<Error>> {
    let Some(&(_, restoring)) = needed_by_restores(store)?.iter().find(|(p, _)| *p == id) else {
        return Ok(None);
    };
    let j = store
        .index
        .restores()?
        .into_iter()
        .rfind(|j| !j.complete && j.point == restoring)
        .expect("needed_by_restores names an unfinished restore");
    Ok(Some(Error::RestoreUnfinished {
        op: format!("removing point {id}"),
        point: j.point,
        target: j.target,
        started: j.started_at,
    }))
}

/// Removes complete point `id`, wherever it is in the history (DESIGN.md "Retention and
/// removal"). The oldest goes as `remove_oldest` removes it. A point in the middle is merged
/// into its successor S: S's changes must then step back to the point before `id` (A), so the
/// merged pack holds, per path,
/// - what `id` recorded, for a path S did not change (its frame rebuilds A's content from
///   `id`'s, which is S's);
/// - what S recorded, for a path `id` did not change (`id`'s content is A's);
/// - for a path both changed, `id`'s old state, and a frame that rebuilds A's content from
///   S's: `id`'s own frame when it needs no reference, S's when `id` kept the content, else
///   A's content rebuilt (checked against its hash) and encoded again against S's.
///
/// Order: the merged pack is written beside S's under a name that names `id`, synced; one
/// index transaction replaces the rows; then `id`'s pack is deleted and the merged pack takes
/// S's name. A crash before the commit leaves the merged pack, which the next writer deletes
/// (the index still holds `id`); a crash after it leaves the rows naming the merged pack's
/// frames, and the next writer finishes the renames (`Store::finish_merges`).
pub fn remove_point(store: &mut Store, id: PointId, level: crate::delta::Level) -> Result<Removal> {
    let points = store.index.complete_points()?;
    if let Some(e) = refusal(store, &points, id)? {
        return Err(e);
    }
    let at = points
        .iter()
        .position(|p| p.id == id)
        .expect("refusal checked it");
    if at == 0 {
        let freed = store.pack_allocated(points[0].id) + store.pack_allocated(points[1].id);
        let removed = remove_oldest(store)?.expect("two points at least");
        debug_assert_eq!(removed.id, id);
        return Ok(Removal {
            removed,
            merged_into: None,
            freed_bytes: freed as i64,
        });
    }
    let (before, removed, mut successor) = (
        points[at - 1].clone(),
        points[at].clone(),
        points[at + 1].clone(),
    );
    let merged_path = store.merge_path(successor.id, id);
    let merged = match write_merged(
        store,
        (&before, &removed, &mut successor),
        &merged_path,
        level,
    ) {
        Ok(m) => m,
        Err(e) => {
            // Nothing refers to it; the next writer would delete it too.
            let _ = std::fs::remove_file(&merged_path);
            return Err(e);
        }
    };
    crate::failpoint::hit("merge-before-commit");
    let freed = store.pack_allocated(id) as i64 + store.pack_allocated(successor.id) as i64
        - allocated(&merged_path) as i64;
    store.index.merge_point(id, &successor, &merged, -freed)?;
    crate::failpoint::hit("merge-after-commit");
    store.finish_merges()?;
    crate::boot::remove_unreferenced(store)?;
    Ok(Removal {
        removed,
        merged_into: Some(successor.id),
        freed_bytes: freed,
    })
}

fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// A frame in the merged pack: its kind and (offset, length).
type Frame = (ContentKind, (u64, u64));

/// Writes the merged pack of `successor` (with `removed` gone) to `to`, synced, and returns
/// its changes; `successor.stored_bytes` becomes the merged pack's length.
fn write_merged(
    store: &Store,
    (before, removed, successor): (&Point, &Point, &mut Point),
    to: &std::path::Path,
    level: crate::delta::Level,
) -> Result<Vec<Change>> {
    use std::collections::HashMap;
    let werr = || format!("writing {}", to.display());
    let open = |p: &Point| {
        let path = store.pack_path(p.id);
        std::fs::File::open(&path).map_err(|e| Error::Damaged {
            what: format!(
                "the pack {} of point {} cannot be read: {e}",
                path.display(),
                p.id
            ),
        })
    };
    let (m_pack, s_pack) = (open(removed)?, open(successor)?);
    let mut pack = crate::store::PackWriter::create(to).ctx(werr)?;
    pack.append_records(&[
        crate::store::point_record(before),
        crate::store::point_record(successor),
    ])
    .ctx(werr)?;
    let cm = store.index.changes_of(removed.id)?;
    let cs = store.index.changes_of(successor.id)?;
    // A frame several rows share (hardlinks, identical old content) is copied once.
    let mut copied: HashMap<(bool, u64, u64), (u64, u64)> = HashMap::new();
    // Old and new content hashes → the frame made for them (hardlinks and copies share it).
    let mut reencoded: HashMap<(Hash, Option<Hash>), Frame> = HashMap::new();
    let mut packs = crate::restore::Packs::default();
    let mut out = Vec::with_capacity(cm.len() + cs.len());
    let (mut i, mut j) = (0, 0);
    while i < cm.len() || j < cs.len() {
        let order = match (cm.get(i), cs.get(j)) {
            (Some(m), Some(s)) => m.path.cmp(&s.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let mut c = match order {
            std::cmp::Ordering::Less => {
                i += 1;
                let mut c = cm[i - 1].clone();
                c.frame = copy_frame(&mut pack, &m_pack, (true, c.frame), &mut copied).ctx(werr)?;
                c
            }
            std::cmp::Ordering::Greater => {
                j += 1;
                let mut c = cs[j - 1].clone();
                c.frame =
                    copy_frame(&mut pack, &s_pack, (false, c.frame), &mut copied).ctx(werr)?;
                c
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
                let (m, s) = (&cm[i - 1], &cs[j - 1]);
                let mut c = Change {
                    point: successor.id,
                    path: m.path.clone(),
                    content: m.content,
                    old: m.old.clone(),
                    frame: None,
                    new_hash: s.new_hash,
                };
                let old_file = m.old.as_ref().filter(|o| o.kind == Kind::File);
                match old_file {
                    // Not a file before `removed`: nothing to rebuild (absent, or metadata).
                    None => {}
                    Some(_) if m.is_lost() => c.frame = Some((pack.len(), 0)),
                    Some(o) if o.hash == s.new_hash => c.content = ContentKind::Same,
                    Some(_) if m.content == ContentKind::Same => {
                        // A's content is `removed`'s, which S's frame rebuilds.
                        if s.old.as_ref().is_none_or(|so| so.kind != Kind::File) {
                            return Err(Error::Damaged {
                                what: format!("{}: point {} kept its content, yet point {} records no file before it", display_path(&m.path), removed.id, successor.id),
                            });
                        }
                        c.content = s.content;
                        c.frame = if s.is_lost() {
                            Some((pack.len(), 0))
                        } else {
                            copy_frame(&mut pack, &s_pack, (false, s.frame), &mut copied)
                                .ctx(werr)?
                        };
                    }
                    // S recorded M's content lost (its old copy was already damaged when S was
                    // taken): a delta against it can never be decoded, now or later, so A's
                    // version is lost for good too, and stays recorded so.
                    Some(_) if s.is_lost() && m.content != ContentKind::Full => {
                        (c.content, c.frame) = (ContentKind::Full, Some((pack.len(), 0)));
                    }
                    // S changed only metadata: its content is M's, which M's frame is against.
                    Some(_) if m.content == ContentKind::Full || s.content == ContentKind::Same => {
                        c.frame = copy_frame(&mut pack, &m_pack, (true, m.frame), &mut copied)
                            .ctx(werr)?;
                    }
                    Some(o) => {
                        let key = (o.hash.expect("file entries have a hash"), s.new_hash);
                        let made = match reencoded.get(&key) {
                            Some(&k) => Ok(k),
                            None => reencode(
                                store,
                                &mut packs,
                                &mut pack,
                                (before.id, successor.id),
                                &m.path,
                                level,
                            ),
                        };
                        // A version that cannot be rebuilt now (a damaged replica copy that the
                        // next snapshot reading the file mends, a pack that cannot be read) is
                        // never recorded lost by a removal: the removal is refused instead.
                        let k = made.map_err(|e| match e {
                            Error::Damaged { what } => Error::Damaged {
                                what: format!("removing point {} needs the version of {} at point {} rebuilt, and it cannot be: {what}. Nothing was removed", removed.id, display_path(&m.path), before.id),
                            },
                            other => other,
                        })?;
                        reencoded.insert(key, k);
                        (c.content, c.frame) = (k.0, Some(k.1));
                    }
                }
                c
            }
        };
        c.point = successor.id;
        pack.append_records(&[crate::store::change_record(&c)])
            .ctx(werr)?;
        out.push(c);
    }
    successor.stored_bytes = pack.len();
    let totals = crate::store::PointTotals {
        files: successor.files,
        bytes: successor.bytes,
        stored_bytes: successor.stored_bytes,
        warnings: successor.warnings,
    };
    pack.append_records(&store.index.pack_head(successor.id, Some(totals))?)
        .ctx(werr)?;
    pack.flush().ctx(werr)?;
    let f = std::fs::File::open(to).ctx(werr)?;
    f.sync_all().ctx(werr)?;
    let dir = to.parent().expect("a pack is in packs/");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", dir.display()))?;
    Ok(out)
}

/// Copies a frame of one of the two packs (`from_removed` tells which) into the merged one.
fn copy_frame(
    pack: &mut crate::store::PackWriter,
    from: &std::fs::File,
    (from_removed, frame): (bool, Option<(u64, u64)>),
    copied: &mut std::collections::HashMap<(bool, u64, u64), (u64, u64)>,
) -> std::io::Result<Option<(u64, u64)>> {
    let Some((off, len)) = frame else {
        return Ok(None);
    };
    if len == 0 {
        // A lost change: no bytes, only its place.
        return Ok(Some((pack.len(), 0)));
    }
    if let Some(&f) = copied.get(&(from_removed, off, len)) {
        return Ok(Some(f));
    }
    let mut r = crate::store::FrameReader::new(from, (off, len));
    let f = pack.append(|w| std::io::copy(&mut r, w).map(|_| ()))?;
    copied.insert((from_removed, off, len), f);
    Ok(Some(f))
}

/// The frame that rebuilds `path`'s content at point `before` from its content at
/// `successor`: both rebuilt (each step checked against its hash) and encoded again.
fn reencode(
    store: &Store,
    packs: &mut crate::restore::Packs,
    pack: &mut crate::store::PackWriter,
    (before, successor): (PointId, PointId),
    path: &[u8],
    level: crate::delta::Level,
) -> Result<Frame> {
    use crate::delta::{encode_chunked, encode_delta, encode_full, LARGE_FILE};
    let what = || format!("storing the old version of {} again", display_path(path));
    let tmp = store.staging();
    let old = crate::restore::content_at(store, packs, before, path, tmp)?.ok_or_else(|| {
        Error::Damaged {
            what: format!("{} has no content at point {before}", display_path(path)),
        }
    })?;
    let newer = crate::restore::content_at(store, packs, successor, path, tmp)?;
    let size = |b: &mut crate::content::Body| -> std::io::Result<u64> {
        Ok(match b {
            crate::content::Body::Mem(v) => v.len() as u64,
            crate::content::Body::File(f) => f.metadata()?.len(),
        })
    };
    let mut old = old;
    let old_size = size(&mut old).ctx(what)?;
    let Some(mut new) = newer else {
        let mut r = old.reader().ctx(what)?;
        let f = pack
            .append(|w| encode_full(&mut r, old_size, w, level))
            .ctx(what)?;
        return Ok((ContentKind::Full, f));
    };
    let new_size = size(&mut new).ctx(what)?;
    if old_size <= LARGE_FILE && new_size <= LARGE_FILE {
        let (o, n) = (old.into_bytes().ctx(what)?, new.into_bytes().ctx(what)?);
        let (frame, is_delta) = encode_delta(&o, &n, level).ctx(what)?;
        let f = pack
            .append(|w| std::io::Write::write_all(w, &frame))
            .ctx(what)?;
        let kind = if is_delta {
            ContentKind::Delta
        } else {
            ContentKind::Full
        };
        return Ok((kind, f));
    }
    let (o, n) = (old.into_file(tmp).ctx(what)?, new.into_file(tmp).ctx(what)?);
    let f = pack
        .append(|w| encode_chunked(&o, old_size, &n, new_size, w, level))
        .ctx(what)?;
    Ok((ContentKind::Chunked, f))
}
