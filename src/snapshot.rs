//! Taking a restore point (DESIGN.md "Write ordering").
//!
//! Phase A, in batches: read what changed, write each old version's reverse frame to the pack
//! and each new version's content to `staging/`, syncfs, then commit the batch's changes and
//! entries rows. Phase B, once every row is durable: shape the replica to the new state
//! (removals deepest first, staged files renamed in), syncfs, mark the point complete.
//! A crash anywhere leaves a `running` point that the next run rolls back (`recover`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::delta::leaves::LeafMap;
use crate::delta::{encode_chunked, encode_delta, encode_full, Level, LARGE_FILE};
use crate::error::{Error, IoContext, Result};
use crate::exclude::ExcludeSet;
use crate::failpoint;
use crate::fsio::{self, Basic, DirCache, WalkOptions};
use crate::model::{basename, display_path, Entry, Hash, Kind, RelPath};
use crate::progress::Progress;
use crate::store::replica::{self, Fill, Shape};
use crate::store::{
    BatchWrite, Change, ContentKind, PackWriter, PointId, PointKind, PointTotals, Store,
};

mod large;

/// Rows per transaction and staged bytes per syncfs: batching keeps fsyncs rare.
const BATCH_ROWS: usize = 2000;
const BATCH_BYTES: u64 = 256 << 20;
/// A file that keeps changing while it is read is tried this many times.
const READ_TRIES: usize = 3;

#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    /// Source directories, relative to the system root ("" is the root itself).
    pub sources: Vec<RelPath>,
    pub excludes: Vec<String>,
    pub one_file_system: bool,
    pub kind: PointKind,
    pub label: Option<String>,
    pub level: Level,
    /// Refuse the snapshot when the store would stay over this policy's ceiling even after
    /// retention (None: only the filesystem reserve is checked, as for safety points).
    pub admission: Option<crate::retention::Policy>,
    /// Where the boot area is read from.
    pub boot: crate::boot::Source,
    /// Bytes the recovery kit's refresh after the point will write beside the store's data.
    pub kit_bytes: u64,
}

pub use crate::model::Warning;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SnapshotReport {
    pub point: PointId,
    pub files: u64,
    pub bytes: u64,
    pub unchanged: u64,
    pub added: u64,
    pub modified: u64,
    pub metadata_only: u64,
    pub deleted: u64,
    pub stored_bytes: u64,
    pub warnings: Vec<Warning>,
    /// One line per disk whose boot area the point holds.
    pub boot: Vec<String>,
    /// Why the point holds no boot area, when it holds none.
    pub boot_note: Option<String>,
}

/// One path the walk found or the index holds. A first snapshot holds one for every path of the
/// system at once, so every field is as small as it can be (issue 10: memory per path): the old
/// entry and the hardlink leader are boxed (most paths have neither).
struct Pending {
    /// Boxed: 8 bytes less than a `Vec` a path, and never grown.
    path: Box<[u8]>,
    old: Option<Box<Entry>>,
    /// The walk's stat and hardlink leader; None for a path that is gone.
    new: Option<(Seen, Option<Box<RelPath>>)>,
}

// A million of them are held at once.
const _: () = assert!(std::mem::size_of::<Pending>() <= 112);

/// What the walk found, before the index is compared.
impl From<(RelPath, Basic)> for Pending {
    fn from((path, b): (RelPath, Basic)) -> Pending {
        Pending {
            path: path.into_boxed_slice(),
            old: None,
            new: Some((Seen::from(&b), None)),
        }
    }
}

/// A `Basic` packed for the pending list: 80 bytes where `Basic` takes 96 (padding after each
/// timestamp's nanoseconds, a size and a device number never both set, a link count a `u32`
/// holds), 16 MB less for a million paths. `basic()` gives back exactly what the walk saw.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The size, or for a device node (whose size is 0) its device number.
    size_or_rdev: u64,
    ino: u64,
    dev: u64,
    blocks: u64,
    mtime_sec: i64,
    ctime_sec: i64,
    mtime_nsec: u32,
    ctime_nsec: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    kind: Kind,
}

impl Seen {
    fn from(b: &Basic) -> Seen {
        let device = matches!(b.kind, Kind::CharDev | Kind::BlockDev);
        Seen {
            size_or_rdev: if device { b.rdev } else { b.size },
            ino: b.ino,
            dev: b.dev,
            blocks: b.blocks,
            mtime_sec: b.mtime.sec,
            ctime_sec: b.ctime.sec,
            mtime_nsec: b.mtime.nsec,
            ctime_nsec: b.ctime.nsec,
            mode: b.mode,
            uid: b.uid,
            gid: b.gid,
            // The kernel counts links in 32 bits.
            nlink: u32::try_from(b.nlink).unwrap_or(u32::MAX),
            kind: b.kind,
        }
    }

    fn basic(&self) -> Basic {
        let device = matches!(self.kind, Kind::CharDev | Kind::BlockDev);
        Basic {
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: if device { 0 } else { self.size_or_rdev },
            mtime: crate::model::Timestamp {
                sec: self.mtime_sec,
                nsec: self.mtime_nsec,
            },
            ctime: crate::model::Timestamp {
                sec: self.ctime_sec,
                nsec: self.ctime_nsec,
            },
            ino: self.ino,
            dev: self.dev,
            rdev: if device { self.size_or_rdev } else { 0 },
            nlink: self.nlink as u64,
            blocks: self.blocks,
        }
    }
}

/// The new version of a path, as read from the source.
enum Captured {
    Gone,
    Skip(String),
    /// With the leaf map of a large file's content.
    Node(Box<Entry>, NewContent, Option<LeafMap>),
}

enum NewContent {
    None,
    /// Content equal to the old version: nothing staged.
    Same,
    /// Staged under this name; small ones also kept in memory as the delta reference.
    Staged {
        name: Vec<u8>,
        bytes: Option<Vec<u8>>,
    },
    /// Equal to the old version, but the replica's copy must be replaced: it is damaged, or it
    /// is a hardlink of a group the path has left. Staged under this name.
    Heal {
        name: Vec<u8>,
        damaged: bool,
    },
    /// A hardlink follower of a leader this run read, unchanged since: its content is the
    /// leader's, nothing staged.
    Linked,
    /// A large file's changed blocks: their new bytes in the staged patch `patch`, their old
    /// bytes in the undo container `undo` (DESIGN.md "Large files").
    Patch {
        patch: Vec<u8>,
        undo: Vec<u8>,
    },
    /// Written straight into its place in the replica (a first point), still open.
    Written(File),
}

/// Where `read_file` writes a file's new content.
enum Sink<'a> {
    /// `staging/`, renamed into the replica once every row of the point is durable.
    Staging(&'a mut StagingNames),
    /// The file's own place in the replica: a first point (`replica::Direct`).
    Replica(&'a mut replica::Direct),
}

pub fn run(
    store: &mut Store,
    root: &Path,
    opts: &SnapshotOptions,
    progress: &dyn Progress,
) -> Result<SnapshotReport> {
    let root_fd =
        fsio::open_root(root).ctx(|| format!("opening the system root {}", root.display()))?;
    let excludes = ExcludeSet::new(
        &opts.excludes,
        crate::paths::within(root, &store.dir).into_iter().collect(),
    )?;
    let mut report = SnapshotReport::default();
    read_ahead(store.dir.join("index.db"));
    progress.phase("scanning", None, None);
    let (walked, unread) = scan(root_fd.as_fd(), opts, &excludes, &mut report, progress)?;
    let pending = compare(store, walked, &unread, &mut report)?;
    admit(store, opts, &pending)?;
    let boot = crate::boot::capture(&store.dir, root, &opts.boot);
    failpoint::hit("snapshot-after-boot-capture");
    let created = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    let sources: Vec<String> = opts.sources.iter().map(|s| display_path(s)).collect();
    let id = store.index.insert_point(
        &created,
        opts.kind,
        opts.label.as_deref(),
        &sources,
        &opts.excludes,
    )?;
    report.point = id;
    crate::boot::record(store, id, &boot)?;
    report.boot = boot.captures.iter().map(|c| c.summary()).collect();
    report.boot_note = boot.note.clone();
    report
        .warnings
        .extend(boot.warnings.iter().map(|(disk, message)| Warning {
            path: disk.clone(),
            message: message.clone(),
        }));
    failpoint::hit("snapshot-after-point-row");
    let bytes = pending
        .iter()
        .filter_map(|p| p.new.as_ref())
        .filter(|(b, _)| b.kind == Kind::File)
        .map(|(b, _)| b.basic().size)
        .sum();
    progress.phase("recording changes", Some(pending.len() as u64), Some(bytes));
    let (shapes, direct) = record(
        store,
        root_fd.as_fd(),
        id,
        pending,
        opts.level,
        &mut report,
        progress,
    )?;
    failpoint::hit("snapshot-before-replica");
    progress.phase("updating the replica", None, None);
    let replica_growth = match direct {
        Some(d) => d.finish(store)?,
        None => replica::shape(store, &shapes, true)?,
    };
    failpoint::hit("snapshot-after-replica");
    store.sync()?;
    refuse_dangling_links(store, id)?;
    let totals = PointTotals {
        files: report.files,
        bytes: report.bytes,
        stored_bytes: report.stored_bytes,
        warnings: report.warnings.len() as u64,
    };
    store.append_to_pack(id, &store.index.pack_head(id, Some(totals))?)?;
    let growth = crate::store::UsageChange::Add {
        replica: replica_growth,
        packs: store.pack_allocated(id) as i64,
    };
    store.index.complete_point(id, totals, growth)?;
    failpoint::hit("snapshot-after-complete");
    store.clear_staging()?;
    progress.finish();
    Ok(report)
}

/// The index is read whole right after the walk (`compare`), and on a cold cache that read
/// waits for the disk as long again as the walk's own reads (a million paths: 170 MB). Its pages
/// are asked for now, on a thread of their own, while the walk waits for inodes. A hint: nothing
/// waits for it, and a failure costs nothing but the time.
fn read_ahead(path: std::path::PathBuf) {
    let _ = std::thread::Builder::new()
        .name("index-read-ahead".into())
        .spawn(move || {
            if let Ok(f) = File::open(path) {
                let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed);
            }
        });
}

/// The last check before a point is marked complete: a follower whose hardlink leader is not
/// in the point would never restore, so such a point stays `running` and is rolled back.
fn refuse_dangling_links(store: &Store, id: PointId) -> Result<()> {
    let dangling = store.index.dangling_links()?;
    if let Some((p, l)) = dangling.first() {
        return Err(Error::Damaged {
            what: format!(
                "point {id} was not completed: {} (and {} more) would be a hardlink of {}, which the point does not hold; the point is rolled back",
                display_path(p),
                dangling.len() - 1,
                display_path(l)
            ),
        });
    }
    Ok(())
}

/// What one pending path is expected to add to the store: (to the replica, in all). The
/// replica grows by the change in allocated size. The pack gets the old version: compressed
/// whole (about half) when the path is deleted, a delta (a tenth is generous for edits and
/// appends) when it is modified, next to nothing for the holes of a sparse file. A low
/// estimate only means retention trims more next time; a high one would refuse good points.
fn estimated_growth(p: &Pending) -> (u64, u64) {
    let new = p
        .new
        .as_ref()
        .filter(|(b, _)| b.kind == Kind::File)
        .map_or(0, |(b, _)| b.basic().size.min(b.blocks * 512));
    let Some(old) = p.old.as_ref().filter(|o| o.kind == Kind::File) else {
        return (new, new);
    };
    let old_size = if old.sparse { 0 } else { old.size };
    let replica = new.saturating_sub(old_size);
    let pack = match &p.new {
        None => old_size / 2,
        Some((b, _))
            if b.kind == Kind::File
                && b.basic().size == old.size
                && b.basic().mtime == old.mtime =>
        {
            0
        }
        Some((b, _)) if b.kind == Kind::File => old_size / 10,
        Some(_) => old_size / 2,
    };
    (replica, replica + pack)
}

/// Refuses, before anything is written, a point the store cannot take (`admission`).
fn admit(store: &Store, opts: &SnapshotOptions, pending: &[Pending]) -> Result<()> {
    let (replica_growth, growth) = pending
        .iter()
        .map(estimated_growth)
        .fold((0, 0), |(r, g), (pr, pg)| (r + pr, g + pg));
    let usage = store.usage()?;
    let vfs = rustix::fs::fstatvfs(store.replica())
        .ctx(|| format!("statvfs of the store {}", store.dir.display()))?;
    let space = crate::admission::Space {
        store_bytes: usage.data(),
        fs_free: vfs.f_bavail * vfs.f_frsize,
        fs_size: vfs.f_blocks * vfs.f_frsize,
    };
    let points = crate::retention::point_infos(
        &store.index.complete_points()?,
        &crate::prune::needed_by_restores(store)?,
    );
    // The replica on disk after the point: allocated like the store, so the ceiling compares like with like.
    let est = crate::admission::Estimate {
        growth,
        data_after: usage.replica + replica_growth,
        kit: opts.kit_bytes,
    };
    crate::admission::check(
        opts.admission.as_ref(),
        &points,
        est,
        space,
        chrono::Local::now().fixed_offset(),
    )
    .map_err(|why| Error::Refused { why })
}

/// Walks every source (with its ancestors, so a restore recreates them with their modes) and
/// returns the entries sorted by path, hardlink leaders assigned.
fn scan(
    root: BorrowedFd,
    opts: &SnapshotOptions,
    excludes: &ExcludeSet,
    report: &mut SnapshotReport,
    progress: &dyn Progress,
) -> Result<(Vec<Pending>, HashSet<RelPath>)> {
    let mut out: Vec<Pending> = Vec::new();
    let mut warns = Vec::new();
    let exclude = |p: &[u8], _k: Kind| excludes.is_excluded(p);
    let walk_opts = WalkOptions {
        one_file_system: opts.one_file_system,
        exclude: &exclude,
        progress,
    };
    for src in &opts.sources {
        let mut anc: &[u8] = src;
        while let Some(p) = crate::model::parent(anc) {
            let fd = fsio::open_beneath(root, p, OFlags::PATH | OFlags::DIRECTORY)
                .ctx(|| format!("opening {}", display_path(p)))?;
            let st = rustix::fs::fstat(&fd).ctx(|| format!("stat of {}", display_path(p)))?;
            out.push((p.to_vec(), fsio::stat_to_basic(&st).expect("a directory")).into());
            anc = p;
        }
        fsio::walk(root, src, &walk_opts, &mut out, &mut warns).map_err(|e| {
            Error::Invalid(format!(
                "source {} cannot be read: {e}; check --source and --root",
                display_path(src)
            ))
        })?;
    }
    let mut unread = HashSet::new();
    // The walk stats a name before it asks whether it is excluded: a path the user left out
    // (a FUSE mount that refuses root, say) is neither a warning nor kept.
    for w in warns.into_iter().filter(|w| !excludes.is_excluded(&w.path)) {
        report.warnings.push(Warning {
            path: display_path(&w.path),
            message: format!(
                "{}; the point keeps what the point before it recorded there, if anything",
                w.message
            ),
        });
        unread.insert(w.path);
    }
    // Unstable: a stable sort would allocate half the list again; paths are unique but for
    // an ancestor also walked as a source, and either stat of it will do.
    out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    // Hardlinks: the first path of each (dev, ino) in byte order leads its group.
    let mut leaders: HashMap<(u64, u64), usize> = HashMap::new();
    for i in 0..out.len() {
        let Some((b, _)) = &out[i].new else { continue };
        if b.kind == Kind::File && b.nlink > 1 {
            match leaders.get(&(b.dev, b.ino)) {
                Some(&l) => {
                    let leader = Box::new(out[l].path.to_vec());
                    if let Some((_, link)) = &mut out[i].new {
                        *link = Some(leader);
                    }
                }
                None => {
                    leaders.insert((b.dev, b.ino), i);
                }
            }
        }
    }
    Ok((out, unread))
}

/// Merge-joins the walk with the index (both in byte order of path), in place: what the quick
/// check cannot prove unchanged stays pending, with its old entry; paths only the index holds
/// are pending as gone, but for those the walk could not read (`unread`, with everything below
/// them): a directory that fails to list (EIO, a FUSE mount refusing root) is not a directory
/// whose files were deleted, and a point saying so would delete them when restored.
fn compare(
    store: &Store,
    mut walked: Vec<Pending>,
    unread: &HashSet<RelPath>,
    report: &mut SnapshotReport,
) -> Result<Vec<Pending>> {
    let not_read = |path: &[u8]| {
        !unread.is_empty()
            && std::iter::successors(Some(path), |p| crate::model::parent(p))
                .any(|p| unread.contains(p))
    };
    let mut gone = Vec::new();
    let mut i = 0;
    store.index.for_each_entry(|path, old| {
        while i < walked.len() && *walked[i].path < *path {
            i += 1;
        }
        match walked.get_mut(i).filter(|w| *w.path == *path) {
            Some(w) => {
                i += 1;
                let (b, l) = w.new.as_ref().expect("walked paths have a stat");
                if old.unchanged_on_disk(&b.basic().to_entry(l.as_deref().cloned())) {
                    report.unchanged += 1;
                    count(report, &old);
                    w.new = None; // neither old nor new: dropped below
                } else {
                    w.old = Some(Box::new(old));
                }
            }
            // A hardlink follower is kept only with its leader: a leader outside, read and
            // changed by this run, would leave the kept follower naming content the point
            // does not hold, and the point would be refused on every run.
            None if not_read(&path) && old.link.as_deref().is_none_or(&not_read) => {
                report.unchanged += 1;
                count(report, &old);
            }
            None => gone.push(Pending {
                path: path.into_boxed_slice(),
                old: Some(Box::new(old)),
                new: None,
            }),
        }
        Ok(())
    })?;
    walked.retain(|p| p.new.is_some() || p.old.is_some());
    if !gone.is_empty() {
        walked.append(&mut gone);
        walked.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    }
    // A no-change run keeps a few paths of a million.
    if walked.len() < walked.capacity() / 2 {
        walked.shrink_to_fit();
    }
    Ok(walked)
}

fn count(report: &mut SnapshotReport, e: &Entry) {
    report.files += 1;
    if e.kind == Kind::File {
        report.bytes += e.size;
    }
}

/// One path's rows: the change (not written for the first point or a mere refresh), the entry
/// to record, or the path whose entry goes.
type Row = (Change, Option<(RelPath, Entry)>, RelPath);

struct Batch {
    rows: Vec<Row>,
    /// Leaf maps of the batch's large files (derived data, committed with the rows).
    maps: Vec<(RelPath, LeafMap)>,
    bytes: u64,
}

fn record(
    store: &mut Store,
    root: BorrowedFd,
    id: PointId,
    pending: Vec<Pending>,
    level: Level,
    report: &mut SnapshotReport,
    progress: &dyn Progress,
) -> Result<(Vec<Shape>, Option<replica::Direct>)> {
    let pack_path = store.pack_path(id);
    let pack_err = || format!("writing {}", pack_path.display());
    let mut pack = PackWriter::create(&store.pack_path(id)).ctx(pack_err)?;
    pack.append_records(&store.index.pack_head(id, None)?)
        .ctx(pack_err)?;
    let first = !store.index.points()?.iter().any(|p| p.complete);
    // The first point writes the replica as it goes (`replica::Direct`); later ones shape it
    // once every row is durable.
    let mut direct = first.then(|| replica::Direct::new(store)).transpose()?;
    let mut cache = DirCache::default();
    let mut shapes = Vec::new();
    let mut batch = Batch {
        rows: Vec::new(),
        maps: Vec::new(),
        bytes: 0,
    };
    let mut full_frames: HashMap<Hash, (u64, u64)> = HashMap::new();
    // How this point recorded each hardlinked file's old version, for its followers.
    let mut group_changes: HashMap<RelPath, GroupChange> = HashMap::new();
    let mut names = StagingNames { point: id, seq: 0 };
    let mut leads = Releads::default();
    // Files read ahead of the loop (`fsio::Prefetcher`): a cold read waits for the disk.
    let prefetch = fsio::Prefetcher::start(&root);
    let reads = |q: &Pending| {
        q.new
            .as_ref()
            .is_some_and(|(b, _)| b.kind == Kind::File && b.basic().size > 0)
    };
    let mut queue = std::collections::VecDeque::from(pending);
    if let Some(pf) = &prefetch {
        queue
            .iter()
            .take(fsio::AHEAD)
            .filter(|q| reads(q))
            .for_each(|q| pf.hint(&q.path));
    }
    while let Some(mut p) = queue.pop_front() {
        // Give back what the paths already recorded held, as the shapes grow.
        if queue.capacity() > 4096 && queue.len() < queue.capacity() / 4 {
            queue.shrink_to_fit();
        }
        if let (Some(pf), Some(q)) = (&prefetch, queue.get(fsio::AHEAD - 1)) {
            if reads(q) {
                pf.hint(&q.path);
            }
        }
        progress.advance(1);
        if let Some((_, link)) = &mut p.new {
            *link = leads
                .leader_for(&p.path, link.take().map(|l| *l))
                .map(Box::new);
        }
        // A follower of a leader this run read: the same inode, unchanged since, is not read
        // again (a driver linked 13 times is read once, as `cp -a` does).
        let leader_read = p
            .new
            .as_ref()
            .and_then(|(_, l)| l.as_deref())
            .and_then(|l| leads.read_as(l));
        let mut captured = match &p.new {
            None => Captured::Gone,
            Some(_) => {
                let sink = match &mut direct {
                    Some(d) => Sink::Replica(d),
                    None => Sink::Staging(&mut names),
                };
                capture(store, root, &mut cache, &p, sink, level, leader_read)?
            }
        };
        if let Captured::Node(e, _, _) = &captured {
            if e.kind == Kind::File {
                progress.bytes(e.size);
            }
        }
        match &mut captured {
            Captured::Node(e, _, _) => {
                let (grouped, dev) = p
                    .new
                    .as_ref()
                    .map_or((false, 0), |(b, _)| (b.nlink > 1, b.dev));
                leads.check_inode(store, &p.path, e, grouped, dev)?
            }
            _ => leads.not_recorded(&p),
        }
        let (new, content, map) = match captured {
            Captured::Skip(why) => {
                report.warnings.push(Warning {
                    path: display_path(&p.path),
                    message: why,
                });
                if let Some(o) = &p.old {
                    count(report, o);
                }
                continue;
            }
            Captured::Gone => {
                if p.new.is_some() {
                    report.warnings.push(Warning {
                        path: display_path(&p.path),
                        message: "vanished during the snapshot".into(),
                    });
                }
                (None, NewContent::None, None)
            }
            Captured::Node(e, c, m) => (Some(*e), c, m),
        };
        if let Some(m) = map {
            batch.maps.push((p.path.to_vec(), m));
        }
        if let Some(n) = &new {
            count(report, n);
        }
        if let NewContent::Heal { damaged: true, .. } = content {
            report.warnings.push(Warning {
                path: display_path(&p.path),
                message: "the store's copy was damaged; it was rewritten from the live file, which still has the recorded content".into(),
            });
        }
        if let (Some(o), Some(n)) = (&p.old, &new) {
            if o.same_state(n) && !matches!(content, NewContent::Heal { .. }) {
                // Only the quick-check fields moved (a rename back, a no-op chmod): refresh them.
                batch.rows.push((
                    no_change(id, &p.path),
                    Some((p.path.to_vec(), n.clone())),
                    Vec::new(),
                ));
                report.unchanged += 1;
                if n.kind == Kind::File {
                    // Its inode changed (a link count, say): when the replica shares it in a
                    // hardlink group, this copy's share of the replica's usage moved.
                    shapes.push(Shape {
                        path: p.path.to_vec(),
                        want: new.clone(),
                        fill: Fill::Keep,
                    });
                }
                continue;
            }
        }
        let staged_name = match &content {
            NewContent::Staged { name, .. } | NewContent::Heal { name, .. } => Some(name.clone()),
            _ => None,
        };
        let staged_bytes = match &content {
            NewContent::Patch { patch, .. } => staged_size(store, patch),
            NewContent::Written(_) => new.as_ref().map_or(0, |n| n.size),
            _ if staged_name.is_some() => new.as_ref().map_or(0, |n| n.size),
            _ => 0,
        };
        let change = if first {
            no_change(id, &p.path)
        } else {
            let leader = new
                .as_ref()
                .and_then(|n| n.link.as_ref())
                .and_then(|l| group_changes.get(l));
            let made = reverse_change(
                store,
                &mut pack,
                id,
                &p,
                new.as_ref(),
                &content,
                level,
                &mut full_frames,
                leader,
            );
            match made {
                Ok(c) => c,
                // One damaged copy costs that file's older versions, not every later point.
                Err(Error::Damaged { what }) => {
                    report.warnings.push(Warning {
                        path: display_path(&p.path),
                        message: format!("{what}; the new version is recorded, but points before {id} cannot restore this file (`system_snapshot verify --full` lists them)"),
                    });
                    Change::lost(
                        id,
                        &p.path,
                        p.old.as_deref().cloned(),
                        pack.len(),
                        new.as_ref().and_then(|n| n.hash),
                    )
                }
                Err(e) => return Err(e),
            }
        };
        if !first {
            pack.append_records(&[crate::store::change_record(&change)])
                .ctx(pack_err)?;
            let grouped = p.new.as_ref().is_some_and(|(b, _)| b.nlink > 1);
            if grouped && !change.is_lost() && new.as_ref().is_some_and(|n| n.kind == Kind::File) {
                let g = GroupChange {
                    old_hash: p.old.as_ref().and_then(|o| o.hash),
                    content: change.content,
                    frame: change.frame,
                };
                group_changes.insert(p.path.to_vec(), g);
            }
        }
        tally(report, p.old.as_deref(), &new, &content);
        batch.bytes += staged_bytes + change.frame.map_or(0, |f| f.1);
        let fill = match (&content, new.as_ref().and_then(|n| n.link.as_ref())) {
            (NewContent::Patch { patch, .. }, _) => Fill::Patch(patch.clone()),
            (NewContent::Linked, Some(l)) => Fill::Link(l.clone(), None),
            (NewContent::Written(_), _) => match replica_fill(store, &leads, new.as_ref(), None)? {
                Fill::Keep => Fill::Written,
                linked => linked,
            },
            _ => replica_fill(store, &leads, new.as_ref(), staged_name)?,
        };
        let shape = Shape {
            path: p.path.to_vec(),
            want: new.clone(),
            fill,
        };
        let written = match content {
            NewContent::Written(f) => Some(f),
            _ => None,
        };
        match &mut direct {
            Some(d) => d.put(store, shape, written)?,
            None => shapes.push(shape),
        }
        let upsert = new.map(|n| (p.path.to_vec(), n));
        let delete = if upsert.is_none() {
            p.path.to_vec()
        } else {
            Vec::new()
        };
        batch.rows.push((change, upsert, delete));
        if batch.rows.len() >= BATCH_ROWS || batch.bytes >= BATCH_BYTES {
            commit_batch(store, &mut pack, &mut batch, first)?;
        }
    }
    commit_batch(store, &mut pack, &mut batch, first)?;
    report.stored_bytes = pack.len();
    Ok((shapes, direct))
}

fn staged_size(store: &Store, name: &[u8]) -> u64 {
    rustix::fs::statat(store.staging(), name, rustix::fs::AtFlags::empty())
        .map_or(0, |st| st.st_size as u64)
}

/// Names of files staged by point `point`: unique to the point (ids are never reused), so a
/// file left by another run can never be taken for one of this run's.
struct StagingNames {
    point: PointId,
    seq: u64,
}

impl StagingNames {
    fn next(&mut self) -> Vec<u8> {
        self.seq += 1;
        format!("n{}-{}", self.point, self.seq).into_bytes()
    }
}

/// Hardlink groups whose leader (the first path in byte order) could not be recorded as it is
/// now (vanished, unreadable): the next member that is recorded leads the group instead, so
/// no follower ever links to a path the point does not hold with the group's content.
#[derive(Default)]
struct Releads {
    /// Old leader -> the member that now leads, once one was recorded.
    moved: HashMap<RelPath, Option<RelPath>>,
    /// Inode each file recorded by this run was read from, and its content hash.
    inodes: HashMap<RelPath, (u64, Option<Hash>)>,
    /// What each hardlinked file read by this run was, as it was read.
    read_as: HashMap<RelPath, ReadAs>,
}

/// How a point recorded a hardlinked file's old version: a follower with the same old content
/// shares it.
struct GroupChange {
    old_hash: Option<Hash>,
    content: ContentKind,
    frame: Option<(u64, u64)>,
}

/// A file as one read of it saw it: another path of the same inode with the same size and
/// times holds the same content, by the quick check's own reasoning, without a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadAs {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: crate::model::Timestamp,
    ctime: crate::model::Timestamp,
    hash: Hash,
}

impl ReadAs {
    /// `st`: the stat a path was opened under.
    fn matches(&self, st: &rustix::fs::Stat) -> bool {
        fsio::stat_to_basic(st).is_some_and(|b| {
            b.kind == Kind::File
                && (b.dev, b.ino, b.size, b.mtime, b.ctime)
                    == (self.dev, self.ino, self.size, self.mtime, self.ctime)
        })
    }
}

impl Releads {
    /// A follower read from another inode than its leader's (one of them was replaced between
    /// the walk and the read) is no longer a hardlink of it: it keeps its own content.
    /// `grouped`: the walk found the file with more than one link. Only such files can lead a
    /// group, so only they are remembered (a million single files would cost 100 MB).
    /// `dev`: the device the walk found the path on. `e` holds the fields its content was
    /// read under.
    fn check_inode(
        &mut self,
        store: &Store,
        path: &[u8],
        e: &mut Entry,
        grouped: bool,
        dev: u64,
    ) -> Result<()> {
        if e.kind != Kind::File {
            return Ok(());
        }
        if let Some(l) = &e.link {
            let leader = match self.inodes.get(l) {
                Some(&(ino, _)) => Some(ino),
                None => store.index.entry(l)?.map(|x| x.ino),
            };
            if leader != Some(e.ino) {
                e.link = None;
            }
        }
        if grouped {
            self.inodes.insert(path.to_vec(), (e.ino, e.hash));
            if let Some(hash) = e.hash {
                let read_as = ReadAs {
                    dev,
                    ino: e.ino,
                    size: e.size,
                    mtime: e.mtime,
                    ctime: e.ctime,
                    hash,
                };
                self.read_as.insert(path.to_vec(), read_as);
            }
        }
        Ok(())
    }

    /// How this run read leader `l`, when it did.
    fn read_as(&self, l: &[u8]) -> Option<ReadAs> {
        self.read_as.get(l).copied()
    }

    /// The content hash of leader `l` as this point records it: read by this run, or unchanged
    /// since the last point.
    fn leader_hash(&self, store: &Store, l: &[u8]) -> Result<Option<Hash>> {
        Ok(match self.inodes.get(l) {
            Some(&(_, h)) => h,
            None => store.index.entry(l)?.and_then(|x| x.hash),
        })
    }

    fn leader_for(&mut self, path: &[u8], link: Option<RelPath>) -> Option<RelPath> {
        let l = link?;
        match self.moved.get_mut(&l) {
            None => Some(l),
            Some(Some(new)) => Some(new.clone()),
            Some(slot @ None) => {
                *slot = Some(path.to_vec());
                None
            }
        }
    }

    /// `p` is not recorded in its new state: if it led a group (from the start, or since an
    /// earlier leader failed), the group needs a new leader.
    fn not_recorded(&mut self, p: &Pending) {
        for slot in self.moved.values_mut() {
            if slot.as_deref() == Some(&p.path[..]) {
                *slot = None;
            }
        }
        if let Some((b, None)) = &p.new {
            if b.kind == Kind::File && b.nlink > 1 {
                self.moved.entry(p.path.to_vec()).or_insert(None);
            }
        }
    }
}

/// How the replica gets a path's new content: a follower whose leader holds the same content
/// is linked to the leader's copy (its staged copy, if any, is the fallback and is otherwise
/// cleared with `staging/`); else the staged copy, else what the replica has.
fn replica_fill(
    store: &Store,
    leads: &Releads,
    new: Option<&Entry>,
    staged: Option<Vec<u8>>,
) -> Result<Fill> {
    if let Some((n, l)) = new.and_then(|n| n.link.as_ref().map(|l| (n, l))) {
        if n.kind == Kind::File && n.hash.is_some() && leads.leader_hash(store, l)? == n.hash {
            return Ok(Fill::Link(l.clone(), staged));
        }
    }
    Ok(staged.map_or(Fill::Keep, Fill::Staged))
}

/// A placeholder row that is never written: it carries an entry refresh only.
fn no_change(id: PointId, path: &[u8]) -> Change {
    Change {
        point: id,
        path: path.to_vec(),
        content: ContentKind::Same,
        old: None,
        frame: None,
        new_hash: None,
    }
}

fn tally(
    report: &mut SnapshotReport,
    old: Option<&Entry>,
    new: &Option<Entry>,
    content: &NewContent,
) {
    match (old, new) {
        (None, Some(_)) => report.added += 1,
        (Some(_), None) => report.deleted += 1,
        (Some(o), Some(n))
            if o.kind == Kind::File
                && n.kind == Kind::File
                && (matches!(content, NewContent::Same | NewContent::Heal { .. })
                    || matches!(content, NewContent::Linked) && o.hash == n.hash) =>
        {
            report.metadata_only += 1
        }
        (Some(o), Some(n))
            if o.kind == n.kind
                && n.kind != Kind::File
                && o.target == n.target
                && o.rdev == n.rdev =>
        {
            report.metadata_only += 1
        }
        _ => report.modified += 1,
    }
}

/// Pack first (made durable with the staged files by one syncfs), then the rows.
fn commit_batch(
    store: &mut Store,
    pack: &mut PackWriter,
    batch: &mut Batch,
    first: bool,
) -> Result<()> {
    if batch.rows.is_empty() {
        return Ok(());
    }
    pack.flush().ctx(|| "writing the pack".to_string())?;
    // A first point's rows need nothing durable before them: undoing it empties the replica.
    if !first {
        store.sync()?;
    }
    failpoint::hit("snapshot-before-commit");
    let writes = batch.rows.drain(..).flat_map(|(change, upsert, delete)| {
        let real_change = !first && (change.old.is_some() || change.content == ContentKind::Absent);
        let change = real_change.then_some(BatchWrite::Change(change));
        let entry = match upsert {
            Some((p, e)) => Some(BatchWrite::Entry(p, e)),
            None if !delete.is_empty() => Some(BatchWrite::Forget(delete)),
            None => None,
        };
        change.into_iter().chain(entry)
    });
    let maps = batch.maps.drain(..).map(|(p, m)| BatchWrite::LeafMap(p, m));
    store.index.write_batch(writes.chain(maps))?;
    batch.bytes = 0;
    failpoint::hit("snapshot-after-commit");
    Ok(())
}

/// Reads the path's new version: full metadata and, for files, content into `staging/`.
/// `p.new` is the walk's view of the path, with its hardlink leader as this run decided it.
fn capture(
    store: &Store,
    root: BorrowedFd,
    cache: &mut DirCache,
    p: &Pending,
    mut sink: Sink,
    level: Level,
    leader_read: Option<ReadAs>,
) -> Result<Captured> {
    let Some((basic, link)) = &p.new else {
        return Ok(Captured::Gone);
    };
    let mut e = basic.basic().to_entry(link.as_deref().cloned());
    let dir = if p.path.is_empty() {
        match fsio::open_dir(root, b"") {
            Ok(fd) => DirRef::Owned(fd),
            Err(err) => return Ok(Captured::Skip(format!("cannot open: {err}"))),
        }
    } else {
        match cache.parent_of(root, &p.path) {
            Ok(fd) => DirRef::Borrowed(fd),
            Err(err) if fsio::is_missing(&err) => return Ok(Captured::Gone),
            Err(err) => return Ok(Captured::Skip(format!("cannot open its directory: {err}"))),
        }
    };
    let (dirfd, name): (BorrowedFd, &[u8]) = match &dir {
        DirRef::Owned(fd) => (fd.as_fd(), b"."),
        DirRef::Borrowed(fd) => (*fd, basename(&p.path)),
    };
    if e.kind != Kind::File {
        // A regular file's xattrs and flags are read through the descriptor its content is
        // read from (`read_file`): one lookup fewer.
        if let Err(err) = fsio::read_entry(dirfd, name, &mut e) {
            return Ok(if fsio::is_missing(&err) {
                Captured::Gone
            } else {
                Captured::Skip(format!("cannot read metadata: {err}"))
            });
        }
        return Ok(Captured::Node(Box::new(e), NewContent::None, None));
    }
    if let Sink::Replica(d) = &mut sink {
        // The file is written where it belongs: no place for it is damage, not a skipped file.
        d.parent(store, &p.path)?;
    }
    for _ in 0..READ_TRIES {
        let read = read_file(
            store,
            dirfd,
            name,
            &mut e,
            p.old.as_deref(),
            &mut sink,
            &p.path,
            level,
            leader_read,
        );
        let failed = match read {
            Ok(Some((content, map))) => return Ok(Captured::Node(Box::new(e), content, map)),
            Ok(None) => continue, // changed while being read
            Err(err) => err,
        };
        if let Sink::Replica(d) = &mut sink {
            // The replica holds only what the point records.
            d.remove_file(store, &p.path)
                .ctx(|| format!("removing replica {}", display_path(&p.path)))?;
        }
        return Ok(if fsio::is_missing(&failed) {
            Captured::Gone
        } else {
            Captured::Skip(format!("cannot read: {failed}"))
        });
    }
    Ok(Captured::Skip(format!(
        "changed while being read ({READ_TRIES} tries); the previous version is kept"
    )))
}

enum DirRef<'a> {
    Owned(OwnedFd),
    Borrowed(BorrowedFd<'a>),
}

/// Opens the source file without following links or touching its atime, checks it is still a
/// regular file, and stages its content unless the hash equals the old version's. Ok(None) when
/// it changed while being read.
#[allow(clippy::too_many_arguments)]
fn read_file(
    store: &Store,
    dir: BorrowedFd,
    name: &[u8],
    e: &mut Entry,
    old: Option<&Entry>,
    sink: &mut Sink,
    path: &[u8],
    level: Level,
    leader_read: Option<ReadAs>,
) -> io::Result<Option<(NewContent, Option<LeafMap>)>> {
    let base = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, base | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, base, Mode::empty())?,
        other => other?,
    };
    let before = rustix::fs::fstat(&fd)?;
    let b = fsio::stat_to_basic(&before)
        .filter(|b| b.kind == Kind::File)
        .ok_or_else(|| io::Error::other("is no longer a regular file"))?;
    fsio::read_file_entry(fd.as_fd(), e)?;
    // A follower whose leader this run read needs nothing of its own: the replica links it to
    // the leader's copy, and its old version is the leader's (`reverse_change`).
    if let Some(l) = leader_read.filter(|l| e.link.is_some() && l.matches(&before)) {
        set_fresh(e, &b);
        e.hash = Some(l.hash);
        return Ok(Some((NewContent::Linked, None)));
    }
    let mut file = File::from(fd);
    let sparse = b.to_entry(None).sparse;
    let mut staged_names = Vec::new();
    let mut read = None;
    if let Some(prior) = prior_copy(store, path, old, &b, e)? {
        let Sink::Staging(names) = sink else {
            unreachable!("a first point has no prior copy")
        };
        let (patch_name, undo_name) = (names.next(), names.next());
        let patch_file = store.create_staged(&patch_name)?;
        let undo_file = store.create_staged(&undo_name)?;
        staged_names.extend([patch_name.clone(), undo_name.clone()]);
        match large::patch(
            &file,
            b.size,
            sparse,
            &prior,
            &patch_file,
            &undo_file,
            level,
        )? {
            large::Outcome::Read(map) => {
                let content = NewContent::Patch {
                    patch: patch_name,
                    undo: undo_name,
                };
                read = Some((map.root(), Some(map), content));
            }
            large::Outcome::Changed => return unstage(store, &staged_names).map(|_| None),
            // The ordinary read below stages the file whole and names the damage.
            large::Outcome::ReplicaDamaged => unstage(store, &staged_names)?,
        }
    }
    // Undoes the writes of a read that did not give the file's content.
    let discard = |sink: &mut Sink, staged_names: &[Vec<u8>]| match sink {
        Sink::Staging(_) => unstage(store, staged_names).map(|_| None),
        Sink::Replica(d) => d.remove_file(store, path).map(|_| None),
    };
    let (hash, map, content) = match read {
        Some(r) => r,
        None => {
            let (staged, staged_name) = match sink {
                Sink::Staging(names) => {
                    let n = names.next();
                    let f = store.create_staged(&n)?;
                    staged_names = vec![n.clone()];
                    (f, Some(n))
                }
                Sink::Replica(d) => (d.create_file(store, path)?, None),
            };
            let done = |staged: File, bytes: Option<Vec<u8>>| match staged_name {
                Some(name) => NewContent::Staged { name, bytes },
                None => NewContent::Written(staged),
            };
            if b.size > LARGE_FILE {
                match large::stage_whole(&file, b.size, sparse, &staged)? {
                    large::Outcome::Read(map) => (map.root(), Some(map), done(staged, None)),
                    _ => return discard(sink, &staged_names),
                }
            } else {
                let mut hashing = HashingReader {
                    inner: &mut file,
                    hasher: blake3::Hasher::new(),
                    // The delta reference against the old version; a new path has none.
                    keep: old.filter(|o| o.kind == Kind::File).map(|_| Vec::new()),
                    n: 0,
                };
                // All-zero blocks stay holes in the replica, whatever the source allocates.
                fsio::write_content(&staged, &mut hashing, true, 0)?;
                let hash = *hashing.hasher.finalize().as_bytes();
                let (bytes, n) = (hashing.keep.take(), hashing.n);
                if n != b.size {
                    return discard(sink, &staged_names);
                }
                (hash, None, done(staged, bytes))
            }
        }
    };
    let after = rustix::fs::fstat(file.as_fd())?;
    let moved = before.st_size != after.st_size
        || before.st_mtime != after.st_mtime
        || before.st_mtime_nsec != after.st_mtime_nsec
        || before.st_ctime != after.st_ctime
        || before.st_ctime_nsec != after.st_ctime_nsec;
    if moved {
        return discard(sink, &staged_names);
    }
    set_fresh(e, &b);
    e.hash = Some(hash);
    if old.is_some_and(|o| o.kind == Kind::File && o.hash == Some(hash)) {
        let staged_name = staged_names[0].clone();
        if matches!(content, NewContent::Patch { .. }) {
            // Read leaf by leaf against the replica's map: nothing to patch, and the replica
            // copy is not read whole to look for damage (`verify` does that).
            unstage(store, &staged_names)?;
            return Ok(Some((NewContent::Same, map)));
        }
        if !replica_holds(store, path, hash) {
            return Ok(Some((
                NewContent::Heal {
                    name: staged_name,
                    damaged: true,
                },
                map,
            )));
        }
        if o_was_follower(old) && e.link.is_none() {
            // The replica's copy is a hardlink of the group this path left: it gets its own.
            return Ok(Some((
                NewContent::Heal {
                    name: staged_name,
                    damaged: false,
                },
                map,
            )));
        }
        unstage(store, &staged_names)?;
        return Ok(Some((NewContent::Same, map)));
    }
    Ok(Some((content, map)))
}

/// The fields as they were while reading (the walk's stat may be older).
fn set_fresh(e: &mut Entry, b: &Basic) {
    let fresh = b.to_entry(e.link.clone());
    (e.size, e.mtime, e.ctime, e.ino, e.mode, e.uid, e.gid) = (
        fresh.size,
        fresh.mtime,
        fresh.ctime,
        fresh.ino,
        fresh.mode,
        fresh.uid,
        fresh.gid,
    );
}

/// The replica's copy of a large file's previous version with its leaf map, when the new
/// version can be patched into it in place: both are files of their own (no hardlink group in
/// the system or in the replica), and the map describes exactly the recorded content.
fn prior_copy(
    store: &Store,
    path: &[u8],
    old: Option<&Entry>,
    b: &Basic,
    e: &Entry,
) -> io::Result<Option<large::Prior>> {
    let Some(o) = old.filter(|o| o.kind == Kind::File && o.link.is_none() && o.size > LARGE_FILE)
    else {
        return Ok(None);
    };
    if b.size <= LARGE_FILE || b.nlink != 1 || e.link.is_some() {
        return Ok(None);
    }
    let map = match o.hash.map(|h| store.index.leaf_map(path, h, o.size)) {
        Some(Ok(Some(m))) => m,
        _ => return Ok(None),
    };
    // Opened for writing now, as the patch will be: a copy we may not write is read whole.
    let Ok(fd) = fsio::open_beneath(store.replica(), path, OFlags::RDWR) else {
        return Ok(None);
    };
    let st = rustix::fs::fstat(&fd)?;
    if st.st_nlink != 1 || st.st_size as u64 != o.size {
        return Ok(None);
    }
    Ok(Some(large::Prior {
        map,
        replica: File::from(fd),
    }))
}

fn unstage(store: &Store, names: &[Vec<u8>]) -> io::Result<()> {
    for n in names {
        match rustix::fs::unlinkat(store.staging(), &n[..], rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn o_was_follower(old: Option<&Entry>) -> bool {
    old.is_some_and(|o| o.link.is_some())
}

/// Whether the replica's copy of `path` has content `hash`. Read only for files whose content
/// did not change but whose inode did (a chmod, a rewrite with the same bytes): the one moment
/// a damaged copy can be mended from the live file.
fn replica_holds(store: &Store, path: &[u8], hash: Hash) -> bool {
    crate::content::replica_body(store.replica(), path)
        .ok()
        .and_then(|mut b| b.hash().ok())
        == Some(hash)
}

struct HashingReader<'a> {
    inner: &'a mut File,
    hasher: blake3::Hasher,
    keep: Option<Vec<u8>>,
    n: u64,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(k) = &mut self.keep {
            if k.len() as u64 + n as u64 <= LARGE_FILE {
                k.extend_from_slice(&buf[..n]);
            } else {
                self.keep = None; // grew past the in-memory limit while being read
            }
        }
        self.n += n as u64;
        Ok(n)
    }
}

/// The row that steps this path back to its old version, with its frame appended to the pack.
#[allow(clippy::too_many_arguments)]
fn reverse_change(
    store: &Store,
    pack: &mut PackWriter,
    id: PointId,
    p: &Pending,
    new: Option<&Entry>,
    content: &NewContent,
    level: Level,
    full_frames: &mut HashMap<Hash, (u64, u64)>,
    leader: Option<&GroupChange>,
) -> Result<Change> {
    let new_hash = new.filter(|n| n.kind == Kind::File).and_then(|n| n.hash);
    let mut change = Change {
        point: id,
        path: p.path.to_vec(),
        content: ContentKind::Absent,
        old: p.old.as_deref().cloned(),
        frame: None,
        new_hash,
    };
    let Some(old) = &p.old else { return Ok(change) };
    if old.kind != Kind::File || matches!(content, NewContent::Same | NewContent::Heal { .. }) {
        change.content = ContentKind::Same;
        return Ok(change);
    }
    let old_hash = old.hash.expect("file entries have a hash");
    if let NewContent::Linked = content {
        if new_hash == Some(old_hash) {
            change.content = ContentKind::Same;
            return Ok(change);
        }
        // The same old and new content as its leader: the leader's frame restores it too
        // (a delta applies to the same new bytes). Else its old version is stored whole below.
        if let Some(g) = leader.filter(|g| g.old_hash == Some(old_hash)) {
            (change.content, change.frame) = (g.content, g.frame);
            return Ok(change);
        }
    }
    let what = || format!("storing the old version of {}", display_path(&p.path));
    if let NewContent::Patch { undo, .. } = content {
        // Built while the file was read, from the replica leaves it checked against their map.
        let mut f = store.open_staged(undo).ctx(what)?;
        change.frame = Some(pack.append(|w| io::copy(&mut f, w).map(|_| ())).ctx(what)?);
        change.content = ContentKind::Chunked;
        return Ok(change);
    }
    let mut old_file = crate::content::replica_body(store.replica(), &p.path)?;
    let new_file = match (new, content) {
        (Some(n), NewContent::Staged { name, bytes }) if n.kind == Kind::File => {
            Some((name, bytes, n.size))
        }
        _ => None,
    };
    let large = old.size > LARGE_FILE || new_file.as_ref().is_some_and(|(_, _, s)| *s > LARGE_FILE);
    match new_file {
        Some((name, bytes, new_size)) if !large => {
            let old_bytes = read_checked(&mut old_file, old_hash, &p.path)?;
            let staged_bytes;
            let reference: &[u8] = match bytes {
                Some(b) => b,
                None => {
                    staged_bytes = read_staged(store, name).ctx(what)?;
                    debug_assert_eq!(staged_bytes.len() as u64, new_size);
                    &staged_bytes
                }
            };
            let (frame, is_delta) = encode_delta(&old_bytes, reference, level).ctx(what)?;
            change.frame = Some(pack.append(|w| w.write_all(&frame)).ctx(what)?);
            change.content = if is_delta {
                ContentKind::Delta
            } else {
                ContentKind::Full
            };
        }
        Some((name, _, new_size)) => {
            check_hash(&mut old_file, old_hash, &p.path)?;
            let crate::content::Body::File(old_f) = old_file else {
                unreachable!("replica bodies are files")
            };
            let new_f = store.open_staged(name).ctx(what)?;
            change.frame = Some(
                pack.append(|w| encode_chunked(&old_f, old.size, &new_f, new_size, w, level))
                    .ctx(what)?,
            );
            change.content = ContentKind::Chunked;
        }
        None => {
            change.content = ContentKind::Full;
            if let Some(&f) = full_frames.get(&old_hash) {
                change.frame = Some(f); // same old content already in this pack (a hardlink, a copy)
                return Ok(change);
            }
            check_hash(&mut old_file, old_hash, &p.path)?;
            let mut r = old_file.reader().ctx(what)?;
            let f = pack
                .append(|w| encode_full(&mut r, old.size, w, level))
                .ctx(what)?;
            full_frames.insert(old_hash, f);
            change.frame = Some(f);
        }
    }
    Ok(change)
}

fn read_staged(store: &Store, name: &[u8]) -> io::Result<Vec<u8>> {
    let mut f = store.open_staged(name)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

fn replica_damaged(path: &[u8]) -> Error {
    Error::Damaged {
        what: format!("the replica's copy of {} does not match the index, so its older versions cannot be stored", display_path(path)),
    }
}

fn check_hash(body: &mut crate::content::Body, want: Hash, path: &[u8]) -> Result<()> {
    match body.hash() {
        Ok(h) if h == want => Ok(()),
        _ => Err(replica_damaged(path)),
    }
}

fn read_checked(body: &mut crate::content::Body, want: Hash, path: &[u8]) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    body.reader()
        .and_then(|mut r| r.read_to_end(&mut v))
        .map_err(|_| replica_damaged(path))?;
    if *blake3::hash(&v).as_bytes() != want {
        return Err(replica_damaged(path));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed stat gives back every field the walk saw, for each kind of node: the quick
    /// check compares them all, so a lost bit would read a file again or, worse, miss a change.
    #[test]
    fn seen_keeps_every_field_of_the_walk() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, vec![7u8; 5000]).unwrap();
        std::os::unix::fs::symlink("a/longer/target", dir.path().join("l")).unwrap();
        std::fs::hard_link(&file, dir.path().join("f2")).unwrap();
        let mut stats: Vec<Basic> = ["", "f", "l"]
            .iter()
            .map(|n| {
                let st = rustix::fs::lstat(dir.path().join(n)).unwrap();
                fsio::stat_to_basic(&st).unwrap()
            })
            .collect();
        // A device node as the walk would see one (making one needs root).
        stats.push(Basic {
            kind: Kind::BlockDev,
            rdev: 0x0800_0001,
            size: 0,
            nlink: 1,
            ..stats[1]
        });
        for b in stats {
            assert_eq!(Seen::from(&b).basic(), b, "{:?}", b.kind);
        }
    }
}
