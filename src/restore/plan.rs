//! The restore plan: what must change in the target tree for it to equal the point. A value
//! that is printed for `--dry-run` and then applied; building it changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::BorrowedFd;

use crate::error::{IoContext, Result};
use crate::exclude::ExcludeSet;
use crate::fsio::{self, Basic, DirCache, WalkOptions};
use crate::model::Warning;
use crate::model::{basename, display_path, is_within, Entry, Kind, Packed, RelPath};
use crate::progress::Progress;
use crate::store::PointId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Not in the target: create it.
    Create,
    /// In the target with another type, content or hardlink group: write it anew.
    Rewrite,
    /// Only owner, mode, times, xattrs or flags differ.
    Metadata,
    /// In the target but not in the point: delete it.
    Delete,
}

#[derive(Debug, Clone)]
pub struct PlanItem {
    pub path: RelPath,
    pub action: Action,
    /// The point's state (None for deletions), packed: a restore into an empty directory
    /// holds a million of them (`want()` unpacks it).
    pub want: Option<Packed>,
    /// What the target has now (None for creations). Boxed: a restore into an empty
    /// directory plans a million creations.
    pub have: Option<Box<Entry>>,
}

impl PlanItem {
    /// The point's state, unpacked.
    pub fn want(&self) -> Option<Entry> {
        self.want.as_ref().map(Packed::get)
    }

    /// The wanted kind, without unpacking the rest (filters over a million items).
    pub fn want_kind(&self) -> Option<Kind> {
        self.want.as_ref().map(Packed::kind)
    }
}

#[derive(Debug, Clone, Default)]
pub struct RestorePlan {
    pub point: PointId,
    pub items: Vec<PlanItem>,
    /// The point's directories: a directory whose contents change gets its mtime back.
    pub dirs: BTreeMap<RelPath, Entry>,
    pub warnings: Vec<Warning>,
    /// Set once `check_content` ran over this plan (an in-place restore runs it before its
    /// first write unless the caller did, e.g. before asking for confirmation).
    pub content_checked: bool,
    /// The paths `check_content` found damaged in the store.
    pub damaged: Vec<super::DamagedPath>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlanSummary {
    pub create: u64,
    pub rewrite: u64,
    pub delete: u64,
    pub metadata: u64,
    pub bytes_to_write: u64,
}

impl RestorePlan {
    pub fn summary(&self) -> PlanSummary {
        let mut s = PlanSummary::default();
        for it in &self.items {
            match it.action {
                Action::Create => s.create += 1,
                Action::Rewrite => s.rewrite += 1,
                Action::Delete => s.delete += 1,
                Action::Metadata => s.metadata += 1,
            }
            if matches!(it.action, Action::Create | Action::Rewrite) {
                if let Some(w) = it
                    .want()
                    .filter(|w| w.kind == Kind::File && w.link.is_none())
                {
                    s.bytes_to_write += w.size;
                }
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// How the target is read while planning.
#[derive(Clone, Copy)]
pub struct PlanOptions<'a> {
    /// Hash every target file whose size is the wanted one, instead of trusting a file whose
    /// type, size and mtime (ns) are the point's (rsync's quick check).
    pub checksum: bool,
    pub progress: &'a dyn Progress,
}

/// Compares `want` (the point's entries, sorted) with the tree under `target`, looking only
/// within `scopes` (the point's sources) and never at excluded paths. `target` None is a
/// target directory that does not exist yet: everything is created.
///
/// The target may be a live system: a path that vanishes or changes type between the walk
/// and its reading is a warning, planned from what is there now, never an abort.
pub fn build(
    point: PointId,
    want: Vec<(RelPath, Packed)>,
    target: Option<BorrowedFd>,
    scopes: &[RelPath],
    excludes: &ExcludeSet,
    opts: PlanOptions,
) -> Result<RestorePlan> {
    let mut plan = RestorePlan {
        point,
        ..Default::default()
    };
    let mut want: Vec<(RelPath, Packed)> = want
        .into_iter()
        .filter(|(p, _)| !excludes.covers(p))
        .collect();
    let recorded_leaders = super::links::relead(&mut want);
    plan.dirs = want
        .iter()
        .filter(|(_, e)| e.kind() == Kind::Dir)
        .map(|(p, e)| (p.clone(), e.get()))
        .collect();
    let (have, holding) = match target {
        Some(t) => {
            opts.progress.phase("scanning the target", None, None);
            scan_target(t, scopes, excludes, &mut plan.warnings, opts.progress)?
        }
        None => (Vec::new(), HashSet::new()),
    };
    let intact = match target {
        Some(t) => super::links::recorded_leader_inodes(t, &recorded_leaders),
        None => HashMap::new(),
    };
    opts.progress
        .phase("planning", Some(want.len() as u64), None);
    let inode_of: HashMap<&[u8], (u64, u64)> = have
        .iter()
        .map(|(p, b)| (p.as_slice(), (b.dev, b.ino)))
        .collect();
    // Members of each hardlink group, by leader; a file in none counts one.
    let mut group_size: HashMap<RelPath, u64> = HashMap::new();
    for (_, e) in want.iter().filter(|(_, e)| e.has_link()) {
        if let (Kind::File, Some(l)) = (e.kind(), e.get().link) {
            *group_size.entry(l).or_insert(1) += 1;
        }
    }
    let mut rewritten_leaders: HashSet<RelPath> = HashSet::new();
    let mut cache = DirCache::default();
    let mut hi = have.iter().peekable();
    // By value: the plan's items take the point's entries over, never a second copy of them,
    // and the list of entries gives its memory back as they go (taken from the end of the
    // reversed list), so the two are never both held whole (issue 10: memory per path).
    want.reverse();
    while let Some((path, packed)) = want.pop() {
        if want.capacity() > 4096 && want.len() < want.capacity() / 16 * 15 {
            want.shrink_to_fit();
        }
        let w = packed.get();
        opts.progress.advance(1);
        while let Some((p, b)) = hi.next_if(|(p, _)| *p < path) {
            push_delete(&mut plan, p, b, scopes);
        }
        // Only a path that leads a group is ever looked up here.
        let leads = |p: &RelPath| group_size.contains_key(p);
        let (Some(target), Some((_, b))) = (target, hi.next_if(|(p, _)| *p == path)) else {
            if leads(&path) {
                rewritten_leaders.insert(path.clone());
            }
            plan.items.push(PlanItem {
                path,
                action: Action::Create,
                want: Some(packed),
                have: None,
            });
            continue;
        };
        let mut read = read_full(target, &mut cache, &path, b, &w, opts.checksum);
        if read.is_err() {
            // The cached directory may be one that was replaced since: look again, afresh.
            if let Some(p) = crate::model::parent(&path) {
                cache.forget(p);
            }
            read = read_full(target, &mut cache, &path, b, &w, opts.checksum);
        }
        let have_entry = match read {
            Ok(e) => e,
            Err(err) => {
                let (action, have, warning) = changed_while_planning(target, &path, b, err)?;
                plan.warnings.push(warning);
                if leads(&path) {
                    rewritten_leaders.insert(path.clone());
                }
                plan.items.push(PlanItem {
                    path,
                    action,
                    want: Some(packed),
                    have: have.map(Box::new),
                });
                continue;
            }
        };
        let still_linked = intact.get(&path) == Some(&(b.dev, b.ino)) && have_entry.hash == w.hash;
        let rewrite = !still_linked
            && needs_rewrite(
                &path,
                &w,
                b,
                &have_entry,
                &inode_of,
                &group_size,
                &rewritten_leaders,
            );
        let action = if rewrite {
            if leads(&path) {
                rewritten_leaders.insert(path.clone());
            }
            Some(Action::Rewrite)
        } else if !same_meta(&w, &have_entry) {
            Some(Action::Metadata)
        } else {
            None
        };
        if let Some(action) = action {
            plan.items.push(PlanItem {
                path,
                action,
                want: Some(packed),
                have: Some(Box::new(have_entry)),
            });
        }
    }
    for (p, b) in hi {
        push_delete(&mut plan, p, b, scopes);
    }
    keep_what_holds_excluded(&mut plan, &holding);
    opts.progress.finish();
    Ok(plan)
}

/// Deleting or replacing a directory removes everything in it, excluded paths too (a point
/// without `/tmp` must not empty the live `/tmp`): such directories stay, with a warning.
fn keep_what_holds_excluded(plan: &mut RestorePlan, holding: &HashSet<RelPath>) {
    let mut kept = Vec::new();
    plan.items.retain(|it| {
        let removes_dir = it.have.as_ref().is_some_and(|h| h.kind == Kind::Dir)
            && it.want_kind() != Some(Kind::Dir);
        let keep = removes_dir && holding.contains(&it.path);
        if keep {
            kept.push(Warning {
                path: display_path(&it.path),
                message: format!(
                    "not in point {} but holds paths the point excluded: left in place",
                    plan.point
                ),
            });
        }
        !keep
    });
    plan.warnings.extend(kept);
}

/// A path the walk saw (`b`) that could not be read afterwards (`err`). When it vanished or
/// changed type meanwhile (a live system), it is planned from what is there now — created, or
/// rewritten — with a warning; any other failure stops the plan.
fn changed_while_planning(
    target: BorrowedFd,
    path: &[u8],
    b: &Basic,
    err: std::io::Error,
) -> Result<(Action, Option<Entry>, Warning)> {
    let (action, have, what) = match restat(target, path) {
        None => (Action::Create, None, "vanished"),
        Some(now) if now.kind != b.kind => {
            (Action::Rewrite, Some(now.to_entry(None)), "changed type")
        }
        Some(now) if super::vanished(&err) => {
            (Action::Rewrite, Some(now.to_entry(None)), "changed")
        }
        Some(_) => return Err(err).ctx(|| format!("reading the target's {}", display_path(path))),
    };
    let warning = Warning {
        path: display_path(path),
        message: format!(
            "{what} while the restore was planned ({err}); it is {} from the point",
            if action == Action::Create {
                "created"
            } else {
                "rewritten"
            }
        ),
    };
    Ok((action, have, warning))
}

/// What is at `path` now, if anything.
fn restat(target: BorrowedFd, path: &[u8]) -> Option<Basic> {
    let fd = fsio::open_beneath(target, path, rustix::fs::OFlags::PATH).ok()?;
    fsio::stat_to_basic(&rustix::fs::fstat(&fd).ok()?)
}

fn push_delete(plan: &mut RestorePlan, path: &[u8], b: &Basic, scopes: &[RelPath]) {
    // Ancestors of the sources are walked for their metadata only: never delete outside a source.
    if scopes.iter().any(|s| is_within(path, s)) {
        plan.items.push(PlanItem {
            path: path.to_vec(),
            action: Action::Delete,
            want: None,
            have: Some(Box::new(b.to_entry(None))),
        });
    }
}

type Walked = Vec<(RelPath, Basic)>;

fn scan_target(
    target: BorrowedFd,
    scopes: &[RelPath],
    excludes: &ExcludeSet,
    warnings: &mut Vec<Warning>,
    progress: &dyn Progress,
) -> Result<(Walked, HashSet<RelPath>)> {
    // Every directory above an excluded path the walk met.
    let holding = std::sync::Mutex::new(HashSet::new());
    let exclude = |p: &[u8], _k: Kind| {
        let out = excludes.is_excluded(p);
        let mut up = p;
        while let Some(dir) = crate::model::parent(up).filter(|_| out) {
            let mut held = holding.lock().unwrap_or_else(|e| e.into_inner());
            if !held.insert(dir.to_vec()) {
                break;
            }
            up = dir;
        }
        out
    };
    let opts = WalkOptions {
        one_file_system: true,
        exclude: &exclude,
        progress,
    };
    let mut out = Vec::new();
    let mut warns = Vec::new();
    for s in scopes {
        let mut anc: &[u8] = s;
        while let Some(p) = crate::model::parent(anc) {
            if let Ok(fd) = fsio::open_beneath(
                target,
                p,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            ) {
                // Gone between the open and the stat: the walk below finds nothing either.
                if let Some(b) = rustix::fs::fstat(&fd)
                    .ok()
                    .and_then(|st| fsio::stat_to_basic(&st))
                {
                    out.push((p.to_vec(), b));
                }
            }
            anc = p;
        }
        match fsio::walk(target, s, &opts, &mut out, &mut warns) {
            Ok(()) => {}
            Err(e) => {
                // A non-directory where the source directory belongs (or a --path naming a
                // file): it is compared as it is. Nothing there, or gone meanwhile: all of it
                // is created.
                let name = display_path(s);
                let st = fsio::open_beneath(target, s, rustix::fs::OFlags::PATH)
                    .and_then(|fd| Ok(rustix::fs::fstat(&fd)?));
                match st {
                    Ok(st) => out.extend(fsio::stat_to_basic(&st).map(|b| (s.clone(), b))),
                    Err(e2) if super::vanished(&e2) => {}
                    Err(_) => return Err(e).ctx(|| format!("reading the target's {name}")),
                }
            }
        }
    }
    for w in warns {
        warnings.push(Warning {
            path: display_path(&w.path),
            message: w.message,
        });
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    Ok((out, holding.into_inner().unwrap_or_else(|e| e.into_inner())))
}

/// The target's entry with xattrs, flags, link target and content hash. A file whose type,
/// size and mtime are the wanted ones is trusted to hold the wanted content unless `checksum`
/// (hashing every file of a whole system takes minutes); other files the size of the wanted
/// one are hashed. Errors are bare: the caller tells a path that changed from a real failure.
fn read_full(
    target: BorrowedFd,
    cache: &mut DirCache,
    path: &[u8],
    b: &Basic,
    want: &Entry,
    checksum: bool,
) -> std::io::Result<Entry> {
    let mut e = b.to_entry(None);
    let (dir, name): (std::os::fd::OwnedFd, &[u8]) = if path.is_empty() {
        (fsio::open_dir(target, b"")?, b".")
    } else {
        let d = cache.parent_of(target, path)?;
        (d.try_clone_to_owned()?, basename(path))
    };
    fsio::read_entry(std::os::fd::AsFd::as_fd(&dir), name, &mut e)?;
    if e.kind == Kind::File && want.kind == Kind::File && e.size == want.size {
        if !checksum && e.mtime == want.mtime {
            e.hash = want.hash;
            return Ok(e);
        }
        let fd = rustix::fs::openat(
            &dir,
            name,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::NONBLOCK
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        e.hash = Some(fsio::hash_reader(std::fs::File::from(fd))?.0);
    }
    Ok(e)
}

fn needs_rewrite(
    path: &[u8],
    w: &Entry,
    b: &Basic,
    have: &Entry,
    inode_of: &HashMap<&[u8], (u64, u64)>,
    group_size: &HashMap<RelPath, u64>,
    rewritten_leaders: &HashSet<RelPath>,
) -> bool {
    if w.kind != have.kind {
        return true;
    }
    match w.kind {
        Kind::File => {
            if have.hash != w.hash {
                return true;
            }
            match &w.link {
                // A follower must share its leader's inode, and follow a rewritten leader.
                Some(l) => {
                    rewritten_leaders.contains(l)
                        || inode_of.get(l.as_slice()) != Some(&(b.dev, b.ino))
                }
                // A leader or lone file must not share its inode with paths outside its group.
                None => b.nlink != group_size.get(path).copied().unwrap_or(1),
            }
        }
        Kind::Symlink => have.target != w.target,
        Kind::CharDev | Kind::BlockDev => have.rdev != w.rdev,
        _ => false,
    }
}

fn same_meta(w: &Entry, have: &Entry) -> bool {
    let mode_matters = w.kind != Kind::Symlink;
    w.uid == have.uid
        && w.gid == have.gid
        && (!mode_matters || w.mode == have.mode)
        && w.mtime == have.mtime
        && w.xattrs == have.xattrs
        && (w.flags & fsio::SETTABLE_FLAGS) == (have.flags & fsio::SETTABLE_FLAGS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::os::fd::{AsFd, OwnedFd};

    fn open(dir: &std::path::Path) -> OwnedFd {
        fsio::open_root(dir).unwrap()
    }

    /// The tree's own state, read in full (content hashed), as a point would hold it.
    fn state_of(root: BorrowedFd) -> Vec<(RelPath, Packed)> {
        let none = ExcludeSet::new(&[], Vec::new()).unwrap();
        let mut warnings = Vec::new();
        let mut cache = DirCache::default();
        scan_target(
            root,
            &[Vec::new()],
            &none,
            &mut warnings,
            &crate::progress::Silent,
        )
        .unwrap()
        .0
        .into_iter()
        .map(|(p, b)| {
            let e = read_full(root, &mut cache, &p, &b, &b.to_entry(None), true).unwrap();
            (p, Packed::new(&e))
        })
        .collect()
    }

    #[derive(Default)]
    struct Recorder(RefCell<Vec<(String, u64)>>);

    impl Progress for Recorder {
        fn phase(&self, name: &str, total: Option<u64>, _bytes: Option<u64>) {
            self.0
                .borrow_mut()
                .push((name.to_string(), total.unwrap_or(0)));
        }
        fn advance(&self, units: u64) {
            let mut phases = self.0.borrow_mut();
            let last = phases.last_mut().expect("a phase");
            last.1 = last.1.wrapping_sub(units);
        }
    }

    #[test]
    fn a_file_gone_between_the_walk_and_its_reading_is_created_with_a_warning() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let root = open(d.path());
        let b = restat(root.as_fd(), b"f").unwrap();
        let mut want = b.to_entry(None);
        want.mtime.sec -= 1; // not trusted by the quick check: it must be read
        std::fs::remove_file(d.path().join("f")).unwrap();
        let mut cache = DirCache::default();
        let err = read_full(root.as_fd(), &mut cache, b"f", &b, &want, false).unwrap_err();
        let (action, have, w) = changed_while_planning(root.as_fd(), b"f", &b, err).unwrap();
        assert_eq!(action, Action::Create);
        assert!(have.is_none());
        assert!(
            w.path.ends_with('f') && w.message.contains("vanished"),
            "{w:?}"
        );
    }

    #[test]
    fn a_file_that_became_a_directory_while_planned_is_rewritten_with_a_warning() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let root = open(d.path());
        let b = restat(root.as_fd(), b"f").unwrap();
        std::fs::remove_file(d.path().join("f")).unwrap();
        std::fs::create_dir(d.path().join("f")).unwrap();
        let mut cache = DirCache::default();
        let want = b.to_entry(None);
        let err = read_full(root.as_fd(), &mut cache, b"f", &b, &want, true).unwrap_err();
        let (action, have, w) = changed_while_planning(root.as_fd(), b"f", &b, err).unwrap();
        assert_eq!(action, Action::Rewrite);
        assert_eq!(have.map(|h| h.kind), Some(Kind::Dir));
        assert!(w.message.contains("changed type"), "{w:?}");
    }

    #[test]
    fn the_quick_check_trusts_size_and_mtime_and_checksum_reads_everything() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a");
        std::fs::write(&f, b"hello").unwrap();
        let root = open(d.path());
        let want = state_of(root.as_fd());
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        // Same size, same mtime, other content: what rsync's quick check does not see.
        let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        std::os::unix::fs::FileExt::write_at(&file, b"j", 0).unwrap();
        file.set_times(std::fs::FileTimes::new().set_modified(mtime))
            .unwrap();
        let none = ExcludeSet::new(&[], Vec::new()).unwrap();
        let progress = Recorder::default();
        let plan = |checksum| {
            let opts = PlanOptions {
                checksum,
                progress: &progress,
            };
            build(
                PointId(1),
                want.clone(),
                Some(root.as_fd()),
                &[Vec::new()],
                &none,
                opts,
            )
            .unwrap()
        };
        let quick = plan(false);
        assert!(quick.is_empty(), "{:?}", quick.items);
        assert_eq!(
            progress.0.borrow().iter().find(|p| p.0 == "planning"),
            Some(&("planning".to_string(), 0)),
            "one unit of progress per path compared"
        );
        let full = plan(true);
        let actions: Vec<(RelPath, Action)> = full
            .items
            .iter()
            .map(|i| (i.path.clone(), i.action))
            .collect();
        assert_eq!(actions, vec![(b"a".to_vec(), Action::Rewrite)]);
    }

    #[test]
    fn a_target_that_does_not_exist_yet_is_planned_as_empty() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"hello").unwrap();
        let want = state_of(open(d.path()).as_fd());
        let none = ExcludeSet::new(&[], Vec::new()).unwrap();
        let opts = PlanOptions {
            checksum: false,
            progress: &crate::progress::Silent,
        };
        let plan = build(PointId(1), want, None, &[Vec::new()], &none, opts).unwrap();
        assert!(plan.items.iter().all(|i| i.action == Action::Create));
        assert_eq!(plan.items.len(), 2, "the root and a");
    }
}
