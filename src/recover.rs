//! Rolling back a point that was still `running` when its process died (DESIGN.md "Write
//! ordering"). For each of its rows the replica file's hash tells whether the new version
//! already replaced the old one; the old version is rebuilt where needed, the replica shaped
//! back, synced, and only then are the point's rows, entries and pack dropped. Idempotent: a
//! crash during the rollback is rolled back again by the next run.

use std::fs::File;

use crate::content::{self, Body};
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::fsio;
use crate::model::{display_path, Kind};
use crate::store::replica::{self, Fill, Shape};
use crate::store::{Change, ContentKind, PointId, Store};

/// Rolls back every running point; returns their ids.
pub fn roll_back_running(store: &mut Store) -> Result<Vec<PointId>> {
    let points = store.index.points()?;
    let mut rolled = Vec::new();
    for p in points.iter().filter(|p| !p.complete) {
        let has_earlier = points.iter().any(|q| q.complete && q.id < p.id);
        if has_earlier {
            undo_rows(store, p.id)?;
        } else {
            wipe_first(store, p.id)?;
        }
        rolled.push(p.id);
    }
    if !rolled.is_empty() {
        store.clear_staging()?;
    }
    Ok(rolled)
}

/// The first point built the replica from nothing: undoing it empties the store's data.
fn wipe_first(store: &mut Store, id: PointId) -> Result<()> {
    let names: Vec<Vec<u8>> = std::fs::read_dir(store.dir.join("replica"))
        .ctx(|| "listing the replica".into())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().as_encoded_bytes().to_vec())
        .collect();
    for n in names {
        fsio::remove_tree(store.replica(), &n, None)
            .ctx(|| format!("removing replica {}", display_path(&n)))?;
    }
    store.sync()?;
    drop_point(store, id, &[], true)
}

fn undo_rows(store: &mut Store, id: PointId) -> Result<()> {
    let changes = store.index.changes_of(id)?;
    let pack = File::open(store.pack_path(id)).ok();
    let mut shapes = Vec::with_capacity(changes.len());
    for c in &changes {
        let fill = match &c.old {
            Some(old) if old.kind == Kind::File => old_version(store, pack.as_ref(), c)?,
            _ => Fill::Keep,
        };
        shapes.push(Shape {
            path: c.path.clone(),
            want: c.old.clone(),
            fill,
        });
    }
    failpoint::hit("rollback-before-replica");
    replica::shape(store, &shapes, false)?;
    store.sync()?;
    drop_point(store, id, &changes, false)
}

/// Where the old version of a file comes from: the replica still has it, or it is rebuilt into
/// `staging/` from the frame (and the new version, for a delta).
fn old_version(store: &Store, pack: Option<&File>, c: &Change) -> Result<Fill> {
    let old = c.old.as_ref().expect("only called for old files");
    let current = content::replica_body(store.replica(), &c.path)
        .ok()
        .and_then(|mut b| b.hash().ok().map(|h| (b, h)));
    if current.as_ref().is_some_and(|(_, h)| Some(*h) == old.hash) {
        return Ok(Fill::Keep);
    }
    // The old version was already damaged before this point began (a lost change), or the
    // point only healed its copy (same content): there is nothing better to go back to. The
    // path keeps what the replica has, as it was before the point, damaged.
    if c.is_lost() || c.content == ContentKind::Same {
        return keep_as_is(store, c);
    }
    let newer = match current {
        Some((b, h)) if Some(h) == c.new_hash => Some(b),
        _ => None,
    };
    let Some(pack) = pack else {
        return Err(Error::Damaged {
            what: format!(
                "pack of running point {} is missing; {} cannot be rolled back",
                c.point,
                display_path(&c.path)
            ),
        });
    };
    if c.content == ContentKind::Chunked && undo_in_place(store, pack, c)? {
        return Ok(Fill::Keep);
    }
    if c.content != ContentKind::Full && newer.is_none() {
        return Err(Error::Damaged {
            what: format!(
                "replica {} matches neither version of interrupted point {}",
                display_path(&c.path),
                c.point
            ),
        });
    }
    let rebuilt =
        content::step_back(pack, c, newer, store.staging())?.expect("old version is a file");
    let name = format!("r{}", blake3::hash(&c.path).to_hex()).into_bytes();
    stage(store, &name, rebuilt, true)
        .ctx(|| format!("staging the old version of {}", display_path(&c.path)))?;
    Ok(Fill::Staged(name))
}

/// A large file patched in place (DESIGN.md "Large files"): its undo container holds every old
/// byte that differs, so writing them back turns the new copy, the old one, or any mix an
/// interrupted patch left into the old version. False when the frame is not of that kind or
/// the copy cannot be written in place (then the ordinary rebuild from the new version serves).
fn undo_in_place(store: &Store, pack: &File, c: &Change) -> Result<bool> {
    use crate::store::FrameReader;
    let frame = c.frame.unwrap_or((0, 0));
    let what = || format!("rolling back {}", display_path(&c.path));
    let in_place = crate::delta::is_in_place(&mut FrameReader::new(pack, frame));
    if !in_place.unwrap_or(false) {
        return Ok(false);
    }
    let Ok(fd) = fsio::open_beneath(store.replica(), &c.path, rustix::fs::OFlags::RDWR) else {
        return Ok(false);
    };
    let file = File::from(fd);
    let st = rustix::fs::fstat(&file).ctx(what)?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() || st.st_nlink != 1 {
        return Ok(false);
    }
    crate::delta::apply_in_place(&mut FrameReader::new(pack, frame), &file).map_err(|e| {
        Error::Damaged {
            what: format!("{}: {e}", what()),
        }
    })?;
    let old = c.old.as_ref().expect("only called for old files");
    content::check(Body::File(file), old.hash, &what())?;
    Ok(true)
}

/// Keeps the replica's copy of a path that has no better old version; a copy the point had
/// already removed is put back empty (still damaged, as it was), so shaping the replica back
/// never fails on it and every later writer can proceed.
fn keep_as_is(store: &Store, c: &Change) -> Result<Fill> {
    let is_file = fsio::open_beneath(store.replica(), &c.path, rustix::fs::OFlags::PATH)
        .ok()
        .and_then(|fd| rustix::fs::fstat(&fd).ok())
        .is_some_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file());
    if is_file {
        return Ok(Fill::Keep);
    }
    let name = format!("r{}", blake3::hash(&c.path).to_hex()).into_bytes();
    stage(store, &name, Body::Mem(Vec::new()), false)
        .ctx(|| format!("staging a placeholder for {}", display_path(&c.path)))?;
    Ok(Fill::Staged(name))
}

fn stage(store: &Store, name: &[u8], mut body: Body, sparse: bool) -> std::io::Result<()> {
    let _ = rustix::fs::unlinkat(store.staging(), name, rustix::fs::AtFlags::empty());
    let f = store.create_staged(name)?;
    fsio::write_content(&f, &mut body.reader()?, sparse, 0)?;
    Ok(())
}

/// One transaction: entries back to the old states, the point's rows and row gone; then the
/// pack file (data dropped last).
fn drop_point(
    store: &mut Store,
    id: PointId,
    changes: &[Change],
    wipe_entries: bool,
) -> Result<()> {
    store.index.drop_running_point(id, changes, wipe_entries)?;
    store.remove_pack(id)
}

/// The steps every writing command runs once it holds the lock, before its own work: an
/// interrupted point is rolled back; packs, boot pieces and staged files that no point refers
/// to (left by a crash between a commit and a deletion) are removed. Each step is idempotent,
/// so a crash inside one is finished by the next run.
pub fn clean_up(store: &mut Store) -> Result<()> {
    store.finish_merges()?;
    roll_back_running(store)?;
    store.remove_orphan_packs()?;
    crate::boot::remove_unreferenced(store)?;
    store.clear_staging()?;
    store.measure_usage()
}
