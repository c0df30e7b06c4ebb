//! The restore plan: what must change in the target tree for it to equal the point. A value
//! that is printed for `--dry-run` and then applied; building it changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::BorrowedFd;

use crate::error::{IoContext, Result};
use crate::exclude::ExcludeSet;
use crate::fsio::{self, Basic, DirCache, WalkOptions};
use crate::model::{basename, display_path, is_within, Entry, Kind, RelPath};
use crate::snapshot::Warning;
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
    /// The point's state (None for deletions).
    pub want: Option<Entry>,
    /// What the target has now (None for creations).
    pub have: Option<Entry>,
}

#[derive(Debug, Clone, Default)]
pub struct RestorePlan {
    pub point: PointId,
    pub items: Vec<PlanItem>,
    /// The point's directories: a directory whose contents change gets its mtime back.
    pub dirs: BTreeMap<RelPath, Entry>,
    pub warnings: Vec<Warning>,
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
                    .want
                    .as_ref()
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

/// Compares `want` (the point's entries, sorted) with the tree under `target`, looking only
/// within `scopes` (the point's sources) and never at excluded paths.
pub fn build(
    point: PointId,
    want: Vec<(RelPath, Entry)>,
    target: BorrowedFd,
    scopes: &[RelPath],
    excludes: &ExcludeSet,
) -> Result<RestorePlan> {
    let mut plan = RestorePlan {
        point,
        ..Default::default()
    };
    let mut want: Vec<(RelPath, Entry)> = want
        .into_iter()
        .filter(|(p, _)| !excludes.covers(p))
        .collect();
    let recorded_leaders = super::links::relead(&mut want);
    plan.dirs = want
        .iter()
        .filter(|(_, e)| e.kind == Kind::Dir)
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    let (have, holding) = scan_target(target, scopes, excludes, &mut plan.warnings)?;
    let intact = super::links::recorded_leader_inodes(target, &recorded_leaders);
    let inode_of: HashMap<&[u8], (u64, u64)> = have
        .iter()
        .map(|(p, b)| (p.as_slice(), (b.dev, b.ino)))
        .collect();
    let mut group_size: HashMap<&[u8], u64> = HashMap::new();
    for (p, e) in &want {
        if e.kind == Kind::File {
            *group_size
                .entry(e.link.as_deref().unwrap_or(p))
                .or_insert(0) += 1;
        }
    }
    let mut rewritten_leaders: HashSet<RelPath> = HashSet::new();
    let mut cache = DirCache::default();
    let mut hi = have.iter().peekable();
    for (path, w) in &want {
        while let Some((p, b)) = hi.next_if(|(p, _)| p < path) {
            push_delete(&mut plan, p, b, scopes);
        }
        let Some((_, b)) = hi.next_if(|(p, _)| p == path) else {
            rewritten_leaders.insert(path.clone());
            plan.items.push(PlanItem {
                path: path.clone(),
                action: Action::Create,
                want: Some(w.clone()),
                have: None,
            });
            continue;
        };
        let have_entry = read_full(target, &mut cache, path, b, w)?;
        let still_linked = intact.get(path) == Some(&(b.dev, b.ino)) && have_entry.hash == w.hash;
        let rewrite = !still_linked
            && needs_rewrite(
                path,
                w,
                b,
                &have_entry,
                &inode_of,
                &group_size,
                &rewritten_leaders,
            );
        let action = if rewrite {
            rewritten_leaders.insert(path.clone());
            Some(Action::Rewrite)
        } else if !same_meta(w, &have_entry) {
            Some(Action::Metadata)
        } else {
            None
        };
        if let Some(action) = action {
            plan.items.push(PlanItem {
                path: path.clone(),
                action,
                want: Some(w.clone()),
                have: Some(have_entry),
            });
        }
    }
    for (p, b) in hi {
        push_delete(&mut plan, p, b, scopes);
    }
    keep_what_holds_excluded(&mut plan, &holding);
    Ok(plan)
}

/// Deleting or replacing a directory removes everything in it, excluded paths too (a point
/// without `/tmp` must not empty the live `/tmp`): such directories stay, with a warning.
fn keep_what_holds_excluded(plan: &mut RestorePlan, holding: &HashSet<RelPath>) {
    let mut kept = Vec::new();
    plan.items.retain(|it| {
        let removes_dir = it.have.as_ref().is_some_and(|h| h.kind == Kind::Dir)
            && it.want.as_ref().is_none_or(|w| w.kind != Kind::Dir);
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

fn push_delete(plan: &mut RestorePlan, path: &[u8], b: &Basic, scopes: &[RelPath]) {
    // Ancestors of the sources are walked for their metadata only: never delete outside a source.
    if scopes.iter().any(|s| is_within(path, s)) {
        plan.items.push(PlanItem {
            path: path.to_vec(),
            action: Action::Delete,
            want: None,
            have: Some(b.to_entry(None)),
        });
    }
}

type Walked = Vec<(RelPath, Basic)>;

fn scan_target(
    target: BorrowedFd,
    scopes: &[RelPath],
    excludes: &ExcludeSet,
    warnings: &mut Vec<Warning>,
) -> Result<(Walked, HashSet<RelPath>)> {
    // Every directory above an excluded path the walk met.
    let holding = std::cell::RefCell::new(HashSet::new());
    let exclude = |p: &[u8], _k: Kind| {
        let out = excludes.is_excluded(p);
        let mut up = p;
        while let Some(dir) = crate::model::parent(up).filter(|_| out) {
            if !holding.borrow_mut().insert(dir.to_vec()) {
                break;
            }
            up = dir;
        }
        out
    };
    let opts = WalkOptions {
        one_file_system: true,
        exclude: &exclude,
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
                let st = rustix::fs::fstat(&fd).ctx(|| format!("stat of {}", display_path(p)))?;
                out.push((p.to_vec(), fsio::stat_to_basic(&st).expect("a directory")));
            }
            anc = p;
        }
        match fsio::walk(target, s, &opts, &mut out, &mut warns) {
            Ok(()) => {}
            // A source the target does not have yet: everything in it is created.
            Err(e) if matches!(e.raw_os_error(), Some(c) if c == rustix::io::Errno::NOENT.raw_os_error()) =>
                {}
            Err(e) => {
                // A non-directory where the source directory belongs: it is rewritten.
                let name = display_path(s);
                let st = fsio::open_beneath(target, s, rustix::fs::OFlags::PATH)
                    .and_then(|fd| Ok(rustix::fs::fstat(&fd)?));
                match st {
                    Ok(st) => out.push((s.clone(), fsio::stat_to_basic(&st).expect("known type"))),
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
    Ok((out, holding.into_inner()))
}

/// The target's entry with xattrs, flags, link target and (for files the same size as wanted)
/// content hash.
fn read_full(
    target: BorrowedFd,
    cache: &mut DirCache,
    path: &[u8],
    b: &Basic,
    want: &Entry,
) -> Result<Entry> {
    let mut e = b.to_entry(None);
    let (dir, name): (std::os::fd::OwnedFd, &[u8]) = if path.is_empty() {
        (
            fsio::open_dir(target, b"").ctx(|| "opening the target root".into())?,
            b".",
        )
    } else {
        let d = cache
            .parent_of(target, path)
            .ctx(|| format!("opening the target's parent of {}", display_path(path)))?;
        (
            d.try_clone_to_owned()
                .ctx(|| "duplicating a directory fd".into())?,
            basename(path),
        )
    };
    fsio::read_entry(std::os::fd::AsFd::as_fd(&dir), name, &mut e)
        .ctx(|| format!("reading the target's {}", display_path(path)))?;
    if e.kind == Kind::File && want.kind == Kind::File && e.size == want.size {
        let fd = rustix::fs::openat(
            &dir,
            name,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::NONBLOCK
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ctx(|| format!("opening the target's {}", display_path(path)))?;
        e.hash = Some(
            fsio::hash_reader(std::fs::File::from(fd))
                .ctx(|| format!("reading the target's {}", display_path(path)))?
                .0,
        );
    }
    Ok(e)
}

fn needs_rewrite(
    path: &[u8],
    w: &Entry,
    b: &Basic,
    have: &Entry,
    inode_of: &HashMap<&[u8], (u64, u64)>,
    group_size: &HashMap<&[u8], u64>,
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
