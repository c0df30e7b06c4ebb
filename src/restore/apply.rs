//! Applying a restore plan (DESIGN.md "Restore"): each file is rebuilt into a temp file in its
//! own directory, given its metadata and renamed over the old one (a running executable is
//! replaced, never written in place); deletions go deepest first, never follow a symlink or
//! enter another filesystem; directory metadata comes last, deepest first; inode flags after
//! everything. Rerunning the same restore converges: a finished item is no longer in the plan.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, Mode, OFlags};

use super::check::DamagedPath;
use super::plan::{Action, PlanItem, RestorePlan};
use super::state::{rebuild_unchecked, Packs};
use crate::content::Body;
use crate::delta::leaves::{all_zero, for_each_leaf, leaf_cv, LeafMap, LEAF};
use crate::delta::LARGE_FILE;
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::fsio::{self, DirCache};
use crate::model::Warning;
use crate::model::{basename, display_path, parent, Entry, Kind, RelPath};
use crate::progress::Progress;
use crate::store::Store;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreReport {
    pub point: crate::model::PointId,
    pub created: u64,
    pub rewritten: u64,
    pub deleted: u64,
    pub metadata: u64,
    pub bytes_written: u64,
    pub warnings: Vec<Warning>,
    /// Paths not written because their stored content is damaged; everything else was.
    pub damaged: Vec<DamagedPath>,
}

/// Where a restore's file content comes from when not from a local store: a remote store.
pub trait ContentSource {
    /// Writes the content `w` records for `path` into `file` (new and empty), checked against
    /// `w.hash`; its length. Damage is `Error::Damaged`.
    fn write(&mut self, path: &[u8], w: &Entry, file: &File) -> Result<u64>;
}

/// The content of a restore: the local store's, or another source's.
pub enum Source<'a> {
    Store(&'a Store),
    Other(&'a mut dyn ContentSource),
}

struct Ctx<'a> {
    source: Source<'a>,
    target: BorrowedFd<'a>,
    packs: Packs,
    cache: DirCache,
    seq: u64,
    /// Our pid, for temp names (asked once: it is a system call each time).
    pid: u32,
    /// New paths are created under their own names (`ApplyMode::Target`).
    direct: bool,
    report: RestoreReport,
    /// Paths of this run left unwritten as damaged: their followers are too.
    damaged: BTreeSet<RelPath>,
}

/// Where a restore writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// The running system (or its root mounted elsewhere): every node is built under a temp
    /// name and renamed into place, so no process ever sees a half-written file.
    InPlace,
    /// A directory of the operator's (`--target`): nothing runs from it.
    Target,
}

pub fn apply(
    store: &Store,
    plan: &RestorePlan,
    target: BorrowedFd,
    mode: ApplyMode,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    apply_from(Source::Store(store), plan, target, mode, progress)
}

/// `apply`, with the content from `source`.
pub fn apply_from<'a>(
    source: Source<'a>,
    plan: &RestorePlan,
    target: BorrowedFd<'a>,
    mode: ApplyMode,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let replica = match &source {
        Source::Store(store) => Some(store.replica()),
        Source::Other(_) => None,
    };
    let mut cx = Ctx {
        source,
        target,
        packs: Packs::default(),
        cache: DirCache::default(),
        seq: 0,
        pid: std::process::id(),
        direct: mode == ApplyMode::Target,
        report: RestoreReport::default(),
        damaged: BTreeSet::new(),
    };
    cx.report.point = plan.point;
    cx.report.warnings = plan.warnings.clone();
    cx.report.damaged = plan.damaged.clone();
    let bytes = plan
        .items
        .iter()
        .filter(|it| matches!(it.action, Action::Create | Action::Rewrite))
        .filter_map(|it| it.want())
        .filter(|w| w.kind == Kind::File && w.link.is_none())
        .map(|w| w.size)
        .sum();
    progress.phase("restoring", Some(plan.items.len() as u64), Some(bytes));
    let mut touched_dirs: BTreeSet<RelPath> = BTreeSet::new();
    for it in &plan.items {
        if let Some(p) = parent(&it.path) {
            touched_dirs.insert(p.to_vec());
        }
        if it.want_kind() == Some(Kind::Dir) {
            touched_dirs.insert(it.path.clone());
        }
        // Parents of everything about to change must accept the change.
        if let Some(p) = parent(&it.path) {
            clear_flags_of(&mut cx, p)?;
        }
    }
    // The replica's copies read ahead of the loop (`fsio::Prefetcher`): the latest version of
    // every file is there, and older ones start from it.
    let prefetch = replica.and_then(|r| fsio::Prefetcher::start(&r));
    let reads = |it: &PlanItem| {
        matches!(it.action, Action::Create | Action::Rewrite)
            && it
                .want()
                .is_some_and(|w| w.kind == Kind::File && w.link.is_none() && w.size > 0)
    };
    let writes = || plan.items.iter().filter(|it| it.action != Action::Delete);
    // The hints run `fsio::AHEAD` files ahead, on a second pass over the same items (a list of
    // them would be 8 MiB for a million).
    let mut ahead = writes().filter(|it| prefetch.is_some() && reads(it));
    let mut hint = |pf: &Option<fsio::Prefetcher>| {
        if let (Some(pf), Some(next)) = (pf, ahead.next()) {
            pf.hint(&next.path);
        }
    };
    (0..fsio::AHEAD).for_each(|_| hint(&prefetch));
    // The restore is durable only after the `syncfs` at its end (DESIGN.md "Restore", step
    // 7); writing back while it still reads leaves that call little to do.
    let mut writeback = fsio::Writeback::start(target);
    for it in writes() {
        if reads(it) {
            hint(&prefetch);
        }
        progress.advance(1);
        let written = cx.report.bytes_written;
        let r = place(&mut cx, it).map_err(|e| with_path(e, &it.path));
        progress.bytes(cx.report.bytes_written - written);
        if let Some(w) = &mut writeback {
            w.wrote(cx.report.bytes_written - written);
        }
        let r = skip_damaged(&mut cx, &it.path, r);
        tolerate(&mut cx, &it.path, r)?;
        failpoint::hit("restore-after-item");
    }
    for it in plan
        .items
        .iter()
        .rev()
        .filter(|it| it.action == Action::Delete)
    {
        progress.advance(1);
        let r = delete(&mut cx, &it.path);
        tolerate(&mut cx, &it.path, r)?;
    }
    for d in touched_dirs.iter().rev() {
        if let Some(w) = plan.dirs.get(d) {
            let r = dir_meta(&mut cx, d, w);
            tolerate(&mut cx, d, r)?;
        }
    }
    let file_items = plan
        .items
        .iter()
        .filter_map(|it| it.want().map(|w| (&it.path, w)));
    let dir_items = touched_dirs
        .iter()
        .filter_map(|d| plan.dirs.get(d).map(|w| (d, w.clone())));
    for (path, w) in file_items.chain(dir_items) {
        if matches!(w.kind, Kind::File | Kind::Dir)
            && w.link.is_none()
            && !cx.damaged.contains(path)
        {
            let r = flags(&mut cx, path, &w);
            tolerate(&mut cx, path, r)?;
        }
    }
    drop(writeback);
    rustix::fs::syncfs(target).ctx(|| "syncing the restored filesystem".into())?;
    progress.finish();
    Ok(cx.report)
}

/// A live system changes under the restore: a path (or a directory on its way) that vanished or
/// became something else since the plan is a warning, and the rest of the plan goes on.
/// Errors of the store side never get here as such (see `store_side`).
fn tolerate(cx: &mut Ctx, path: &[u8], r: Result<()>) -> Result<()> {
    match r {
        // A filesystem mounted where the point has something else: never emptied, never
        // covered; the rest of the restore goes on.
        Err(Error::Io { op, source }) if source.kind() == std::io::ErrorKind::ResourceBusy => {
            cx.report.warnings.push(Warning {
                path: display_path(path),
                message: format!("left alone: {op}: {source}"),
            });
            Ok(())
        }
        Err(Error::Io { op, source }) if super::vanished(&source) => {
            // A cached directory fd may be of a directory that was replaced: reopen next time.
            cx.cache.forget(parent(path).unwrap_or(path));
            cx.report.warnings.push(Warning {
                path: display_path(path),
                message: format!(
                    "changed while it was restored, left as it is now: {op}: {source}"
                ),
            });
            Ok(())
        }
        other => other,
    }
}

/// Damage in the store costs the one path whose content it is: it is reported, never written
/// (its temp file is already gone), and the rest of the plan goes on.
fn skip_damaged(cx: &mut Ctx, path: &[u8], r: Result<()>) -> Result<()> {
    match r {
        Err(Error::Damaged { what }) => {
            cx.damaged.insert(path.to_vec());
            cx.report.damaged.push(DamagedPath::new(path, what));
            Ok(())
        }
        other => other,
    }
}

/// An error from reading the store, stripped of its errno: an ENOENT there is damage or a
/// failure, never a target path that vanished. The kind stays (a full disk is still one).
fn store_side(e: Error) -> Error {
    match e {
        Error::Io { op, source } => Error::Io {
            op,
            source: std::io::Error::new(source.kind(), source),
        },
        other => other,
    }
}

fn with_path(e: Error, path: &[u8]) -> Error {
    match e {
        Error::Io { op, source } if !op.contains(&display_path(path)) => Error::Io {
            op: format!("restoring {}: {op}", display_path(path)),
            source,
        },
        other => other,
    }
}

fn parent_fd<'a>(cx: &'a mut Ctx, path: &[u8]) -> Result<BorrowedFd<'a>> {
    let target = cx.target;
    cx.cache
        .parent_of(target, path)
        .ctx(|| format!("opening the directory of {}", display_path(path)))
}

fn clear_flags_of(cx: &mut Ctx, dir: &[u8]) -> Result<()> {
    if dir.is_empty() {
        return Ok(());
    }
    let parent = parent_fd(cx, dir);
    let Ok(parent) = parent else { return Ok(()) }; // does not exist yet: nothing to clear
    match fsio::clear_immutable(parent, basename(dir)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("clearing the immutable flag of {}", display_path(dir))),
    }
}

fn place(cx: &mut Ctx, it: &PlanItem) -> Result<()> {
    let w = &it
        .want()
        .expect("creations and rewrites have a wanted state");
    if it.path.is_empty() {
        return Ok(()); // the root directory itself: its metadata is set with the directories
    }
    match (it.action, w.kind) {
        (Action::Metadata, Kind::Dir) => Ok(()), // with the directories, last
        (Action::Metadata, _) => {
            fix_meta(cx, &it.path, w)?;
            cx.report.metadata += 1;
            Ok(())
        }
        (_, Kind::Dir) => {
            make_dir(cx, &it.path, it.have.as_deref())?;
            cx.report.created += 1;
            Ok(())
        }
        (action, _) => {
            replace_node(cx, &it.path, w, it.have.as_deref())?;
            if action == Action::Create {
                cx.report.created += 1;
            } else {
                cx.report.rewritten += 1;
            }
            Ok(())
        }
    }
}

fn make_dir(cx: &mut Ctx, path: &[u8], have: Option<&Entry>) -> Result<()> {
    let dir = parent_fd(cx, path)?;
    let name = basename(path);
    if have.is_some_and(|h| h.kind != Kind::Dir) {
        fsio::remove_tree(dir, name, same_fs(dir))
            .ctx(|| format!("removing {} to make a directory", display_path(path)))?;
    }
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("creating directory {}", display_path(path))),
    }
}

/// Builds the node under a temp name beside its destination, then renames it into place. A
/// failure removes the temp node (ours: created with O_EXCL under our pid), never the old one.
/// Into a target that is not a live system, a path that does not exist yet is built under its
/// own name (still O_EXCL): a rename per file is half the work of a small file.
fn replace_node(cx: &mut Ctx, path: &[u8], w: &Entry, have: Option<&Entry>) -> Result<()> {
    cx.seq += 1;
    let direct = cx.direct && have.is_none();
    let tmp = if direct {
        basename(path).to_vec()
    } else {
        format!(".restorepoint-{}-{}", cx.pid, cx.seq).into_bytes()
    };
    let mut warn = Vec::new();
    let mut made = false;
    let r = build_temp(cx, path, w, &tmp, &mut made, &mut warn).and_then(|()| {
        if direct {
            Ok(())
        } else {
            put_in_place(cx, path, have, &tmp)
        }
    });
    if r.is_err() && made {
        if let Ok(dir) = parent_fd(cx, path) {
            let _ = rustix::fs::unlinkat(dir, &tmp[..], AtFlags::empty());
        }
    }
    r?;
    push_warnings(cx, path, warn);
    Ok(())
}

fn build_temp(
    cx: &mut Ctx,
    path: &[u8],
    w: &Entry,
    tmp: &[u8],
    made: &mut bool,
    warn: &mut Vec<String>,
) -> Result<()> {
    match (&w.link, w.kind) {
        (Some(leader), Kind::File) => {
            if cx.damaged.contains(leader) {
                // Linking to what the target has there would give this path other content.
                return Err(Error::Damaged {
                    what: DamagedPath::follower(path, leader).problem,
                });
            }
            let target = cx.target;
            let lp = cx
                .cache
                .parent_of(target, leader)
                .ctx(|| format!("opening the directory of {}", display_path(leader)))?
                .try_clone_to_owned()
                .ctx(|| "dup".into())?;
            let dir = parent_fd(cx, path)?;
            rustix::fs::linkat(&lp, basename(leader), dir, tmp, AtFlags::empty())
                .ctx(|| format!("linking {} to {}", display_path(path), display_path(leader)))?;
            *made = true;
        }
        (None, Kind::File) => {
            let store = match &mut cx.source {
                Source::Store(store) => *store,
                Source::Other(_) => {
                    let file = create_temp(cx, path, tmp, made)?;
                    let Source::Other(src) = &mut cx.source else {
                        unreachable!("matched above")
                    };
                    cx.report.bytes_written += src.write(path, w, &file)?;
                    return fsio::apply_meta_fd(file.as_fd(), w, warn)
                        .ctx(|| format!("setting metadata of {}", display_path(path)));
                }
            };
            let staging = store.staging();
            let (mut body, unchecked) =
                rebuild_unchecked(store, &mut cx.packs, cx.report.point, path, w, staging)
                    .map_err(store_side)?;
            let file = create_temp(cx, path, tmp, made)?;
            let damaged = || Error::Damaged {
                what: format!(
                    "replica file {}: content hash does not match the index",
                    display_path(path)
                ),
            };
            let map = match (unchecked, &body) {
                (Some(h), Body::File(_)) if w.sparse && w.size > LARGE_FILE => {
                    store.index.leaf_map(path, h, w.size)?
                }
                _ => None,
            };
            let n = match (map, &body) {
                (Some(map), Body::File(src)) => {
                    let what = || format!("writing {}", display_path(path));
                    fsio::write_content(&file, &mut std::io::empty(), false, w.flags).ctx(what)?;
                    if !copy_leaves(src, &file, &map).ctx(what)? {
                        return Err(damaged());
                    }
                    w.size
                }
                _ => {
                    let mut reader = fsio::HashingRead::new(
                        body.reader()
                            .ctx(|| "reading rebuilt content".into())
                            .map_err(store_side)?,
                    );
                    let n = fsio::write_content(&file, &mut reader, w.sparse, w.flags)
                        .ctx(|| format!("writing {}", display_path(path)))?;
                    if unchecked.is_some_and(|h| h != reader.hash()) {
                        return Err(damaged());
                    }
                    n
                }
            };
            cx.report.bytes_written += n;
            fsio::apply_meta_fd(file.as_fd(), w, warn)
                .ctx(|| format!("setting metadata of {}", display_path(path)))?;
        }
        _ => {
            let dir = parent_fd(cx, path)?;
            fsio::create_node(dir, tmp, w).ctx(|| format!("creating {}", display_path(path)))?;
            *made = true;
            fsio::apply_meta_at(dir, tmp, w, warn)
                .ctx(|| format!("setting metadata of {}", display_path(path)))?;
        }
    }
    Ok(())
}

/// A new file `tmp` in the directory of `path`, for its content.
fn create_temp(cx: &mut Ctx, path: &[u8], tmp: &[u8], made: &mut bool) -> Result<File> {
    let dir = parent_fd(cx, path)?;
    let fd = rustix::fs::openat(
        dir,
        tmp,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ctx(|| format!("creating a temp file for {}", display_path(path)))?;
    *made = true;
    Ok(File::from(fd))
}

/// A large sparse file copied from the replica by its leaves (`delta::leaves`): leaves in a
/// hole are not read and stay holes; every leaf read is checked against the leaf map of the
/// recorded content, whose leaves merge to the file's hash, and a hole where the map has data
/// is damage too. False when anything does not match (the caller reports the file damaged).
fn copy_leaves(src: &File, dst: &File, map: &LeafMap) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut intact = true;
    let copied = for_each_leaf(src, map.size, true, |i, data| {
        let Some(d) = data else {
            intact &= map.zeros[i];
            return Ok(());
        };
        let at = i as u64 * LEAF;
        if leaf_cv(at, d) != map.cvs[i] {
            intact = false;
        } else if !map.zeros[i] {
            for (j, block) in d.chunks(4096).enumerate() {
                if !all_zero(block) {
                    dst.write_all_at(block, at + (j * 4096) as u64)?;
                }
            }
        }
        Ok(())
    });
    match copied {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        other => other?,
    }
    dst.set_len(map.size)?;
    Ok(intact)
}

fn put_in_place(cx: &mut Ctx, path: &[u8], have: Option<&Entry>, tmp: &[u8]) -> Result<()> {
    let dir = parent_fd(cx, path)?;
    let name = basename(path);
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) => Ok(()),
        other => other,
    };
    if let Some(h) = have {
        if h.kind == Kind::Dir {
            // Never into a filesystem mounted there: that is an error, not a deletion.
            gone(fsio::remove_tree(dir, name, same_fs(dir)))
                .ctx(|| format!("removing directory {} to replace it", display_path(path)))?;
        } else if h.flags & 0x30 != 0 {
            gone(fsio::clear_immutable(dir, name))
                .ctx(|| format!("clearing the immutable flag of {}", display_path(path)))?;
        }
    }
    rustix::fs::renameat(dir, tmp, dir, name)
        .ctx(|| format!("renaming {} into place", display_path(path)))
}

fn push_warnings(cx: &mut Ctx, path: &[u8], warn: Vec<String>) {
    for m in warn {
        cx.report.warnings.push(Warning {
            path: display_path(path),
            message: m,
        });
    }
}

fn fix_meta(cx: &mut Ctx, path: &[u8], w: &Entry) -> Result<()> {
    let mut warn = Vec::new();
    let dir = parent_fd(cx, path)?;
    let name = basename(path);
    let what = || format!("setting metadata of {}", display_path(path));
    if w.link.is_some() {
        return Ok(()); // shares its leader's inode, whose metadata is the same
    }
    if w.kind == Kind::File {
        fsio::clear_immutable(dir, name).ctx(what)?;
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx(what)?;
        fsio::apply_meta_fd(fd.as_fd(), w, &mut warn).ctx(what)?;
    } else {
        fsio::apply_meta_at(dir, name, w, &mut warn).ctx(what)?;
    }
    push_warnings(cx, path, warn);
    Ok(())
}

/// The filesystem of `dir`: removals below it stay on it.
fn same_fs(dir: BorrowedFd) -> Option<u64> {
    rustix::fs::fstat(dir).ok().map(|st| st.st_dev)
}

fn delete(cx: &mut Ctx, path: &[u8]) -> Result<()> {
    let dir = match parent_fd(cx, path) {
        Ok(d) => d,
        Err(_) => return Ok(()), // its directory went with an earlier deletion
    };
    let dev = same_fs(dir);
    // A path already gone is what the point wants (remove_tree says Ok). A directory whose
    // entries a live system adds or removes while it is emptied gets one more try.
    let mut res = fsio::remove_tree(dir, basename(path), dev);
    if res.as_ref().is_err_and(super::vanished) {
        res = fsio::remove_tree(dir, basename(path), dev);
    }
    cx.cache.forget(path);
    match res {
        Ok(()) => {
            cx.report.deleted += 1;
            Ok(())
        }
        Err(e) => Err(e).ctx(|| format!("deleting {}", display_path(path))),
    }
}

fn dir_meta(cx: &mut Ctx, path: &[u8], w: &Entry) -> Result<()> {
    if w.kind != Kind::Dir {
        return Ok(());
    }
    let target = cx.target;
    let fd = match fsio::open_dir(target, path) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) => {
            return Ok(())
        }
        Err(e) => return Err(e).ctx(|| format!("opening directory {}", display_path(path))),
    };
    let mut warn = Vec::new();
    fsio::apply_meta_fd(fd.as_fd(), w, &mut warn)
        .ctx(|| format!("setting metadata of directory {}", display_path(path)))?;
    push_warnings(cx, path, warn);
    Ok(())
}

fn flags(cx: &mut Ctx, path: &[u8], w: &Entry) -> Result<()> {
    let mut warn = Vec::new();
    let (dir, name) = if path.is_empty() {
        (
            fsio::open_dir(cx.target, b"").ctx(|| "opening the target root".into())?,
            &b"."[..],
        )
    } else {
        let d = parent_fd(cx, path)?
            .try_clone_to_owned()
            .ctx(|| "dup".into())?;
        (d, basename(path))
    };
    fsio::apply_flags(dir.as_fd(), name, w.flags, &mut warn)
        .ctx(|| format!("setting inode flags of {}", display_path(path)))?;
    push_warnings(cx, path, warn);
    Ok(())
}
