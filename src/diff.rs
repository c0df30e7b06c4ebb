//! `diff`: what differs between two points, or between a point and the live system. Text files
//! get a unified diff (`similar`); other files their sizes and hashes; metadata changes are
//! named field by field.

use std::io::Read;
use std::os::fd::BorrowedFd;

use crate::content::Body;
use crate::error::{IoContext, Result};
use crate::fsio;
use crate::model::{display_path, is_within, Entry, Kind, RelPath};
use crate::restore::{self, Action, Packs, RestorePlan};
use crate::store::{PointId, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Added,
    Deleted,
    Modified,
    Metadata,
}

#[derive(Debug, Clone)]
pub struct DiffItem {
    pub path: RelPath,
    pub change: Change,
    pub old: Option<Entry>,
    pub new: Option<Entry>,
}

/// Paths that differ between points `a` and `b` (within `scopes`, all when empty).
pub fn between_points(
    store: &Store,
    a: PointId,
    b: PointId,
    scopes: &[RelPath],
) -> Result<Vec<DiffItem>> {
    let old = restore::point_state(store, a)?;
    let new = restore::point_state(store, b)?;
    let keep = |p: &[u8]| scopes.is_empty() || scopes.iter().any(|s| is_within(p, s));
    let mut out = Vec::new();
    let (mut oi, mut ni) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        let item = match (oi.peek(), ni.peek()) {
            (None, None) => break,
            (Some((op, _)), Some((np, _))) if op == np => {
                let ((path, o), (_, n)) = (oi.next().expect("peeked"), ni.next().expect("peeked"));
                if o.same_state(&n) {
                    continue;
                }
                let change = if o.content_same(&n)
                    && o.target == n.target
                    && o.rdev == n.rdev
                    && o.link == n.link
                {
                    Change::Metadata
                } else {
                    Change::Modified
                };
                DiffItem {
                    path,
                    change,
                    old: Some(o),
                    new: Some(n),
                }
            }
            (Some((op, _)), Some((np, _))) if op > np => added(ni.next().expect("peeked")),
            (Some(_), _) => {
                let (path, o) = oi.next().expect("peeked");
                DiffItem {
                    path,
                    change: Change::Deleted,
                    old: Some(o),
                    new: None,
                }
            }
            (None, Some(_)) => added(ni.next().expect("peeked")),
        };
        if keep(&item.path) {
            out.push(item);
        }
    }
    Ok(out)
}

fn added((path, n): (RelPath, Entry)) -> DiffItem {
    DiffItem {
        path,
        change: Change::Added,
        old: None,
        new: Some(n),
    }
}

/// The differences between point `a` and the live tree: a restore plan read the other way
/// round (what the restore would create was deleted since, and so on).
pub fn against_live(plan: &RestorePlan) -> Vec<DiffItem> {
    plan.items
        .iter()
        .map(|it| {
            let change = match it.action {
                Action::Create => Change::Deleted,
                Action::Delete => Change::Added,
                Action::Rewrite => Change::Modified,
                Action::Metadata => Change::Metadata,
            };
            DiffItem {
                path: it.path.clone(),
                change,
                old: it.want(),
                new: it.have.as_deref().cloned(),
            }
        })
        .collect()
}

/// Where the newer side of a diff comes from.
pub enum Side<'a> {
    Point(PointId),
    Live(BorrowedFd<'a>),
}

const TEXT_LIMIT: u64 = 1 << 20;

/// Renders one item: a unified diff for text files, sizes and hashes for other files, and the
/// metadata fields that changed.
pub fn render(
    store: &Store,
    packs: &mut Packs,
    a: PointId,
    newer: &Side,
    item: &DiffItem,
) -> Result<String> {
    let path = display_path(&item.path);
    let mut out = String::new();
    match (&item.old, &item.new) {
        (None, Some(n)) => out.push_str(&format!(
            "added    {path} ({}, {} bytes)\n",
            n.kind.name(),
            n.size
        )),
        (Some(o), None) => out.push_str(&format!(
            "deleted  {path} ({}, {} bytes)\n",
            o.kind.name(),
            o.size
        )),
        (Some(o), Some(n)) => {
            let fields = meta_changes(o, n);
            if !fields.is_empty() {
                out.push_str(&format!("metadata {path}: {}\n", fields.join("; ")));
            }
            if item.change == Change::Modified {
                out.push_str(&content_diff(store, packs, a, newer, &item.path, o, n)?);
            }
        }
        (None, None) => {}
    }
    Ok(out)
}

fn meta_changes(o: &Entry, n: &Entry) -> Vec<String> {
    let mut v = Vec::new();
    if o.kind != n.kind {
        v.push(format!("type {} -> {}", o.kind.name(), n.kind.name()));
    }
    if o.mode != n.mode && n.kind != Kind::Symlink {
        v.push(format!("mode {:04o} -> {:04o}", o.mode, n.mode));
    }
    if (o.uid, o.gid) != (n.uid, n.gid) {
        v.push(format!("owner {}:{} -> {}:{}", o.uid, o.gid, n.uid, n.gid));
    }
    if o.mtime != n.mtime {
        v.push(format!("mtime {} -> {}", when(o), when(n)));
    }
    if o.xattrs != n.xattrs {
        v.push("xattrs changed".into());
    }
    if o.flags & fsio::SETTABLE_FLAGS != n.flags & fsio::SETTABLE_FLAGS {
        v.push(format!(
            "flags {:#x} -> {:#x}",
            o.flags & fsio::SETTABLE_FLAGS,
            n.flags & fsio::SETTABLE_FLAGS
        ));
    }
    if o.target != n.target {
        let t = |e: &Entry| {
            String::from_utf8_lossy(e.target.as_deref().unwrap_or_default()).into_owned()
        };
        v.push(format!("target {} -> {}", t(o), t(n)));
    }
    if o.link != n.link {
        v.push("hardlink group changed".into());
    }
    v
}

fn when(e: &Entry) -> String {
    chrono::DateTime::from_timestamp(e.mtime.sec, e.mtime.nsec)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S%.9f")
                .to_string()
        })
        .unwrap_or_else(|| e.mtime.to_string())
}

fn content_diff(
    store: &Store,
    packs: &mut Packs,
    a: PointId,
    newer: &Side,
    path: &[u8],
    o: &Entry,
    n: &Entry,
) -> Result<String> {
    if o.kind != Kind::File || n.kind != Kind::File {
        return Ok(String::new());
    }
    let name = display_path(path);
    let hash = |e: &Entry| {
        e.hash
            .map(|h| blake3::Hash::from(h).to_hex()[..16].to_string())
            .unwrap_or_else(|| "?".into())
    };
    let summary = format!(
        "binary   {name}: {} bytes ({}) -> {} bytes ({})\n",
        o.size,
        hash(o),
        n.size,
        hash(n)
    );
    if o.size > TEXT_LIMIT || n.size > TEXT_LIMIT {
        return Ok(summary);
    }
    let old_bytes = read_all(restore::rebuild(store, packs, a, path, o, store.staging())?)
        .ctx(|| format!("reading {name}"))?;
    let new_bytes = match newer {
        Side::Point(b) => read_all(restore::rebuild(
            store,
            packs,
            *b,
            path,
            n,
            store.staging(),
        )?)
        .ctx(|| format!("reading {name}"))?,
        Side::Live(root) => {
            let fd = fsio::open_beneath(*root, path, rustix::fs::OFlags::RDONLY)
                .ctx(|| format!("opening {name}"))?;
            let mut v = Vec::new();
            std::fs::File::from(fd)
                .read_to_end(&mut v)
                .ctx(|| format!("reading {name}"))?;
            v
        }
    };
    match (text(&old_bytes), text(&new_bytes)) {
        (Some(ot), Some(nt)) => Ok(similar::TextDiff::from_lines(ot, nt)
            .unified_diff()
            .context_radius(3)
            .header(
                &format!("{name} (point {a})"),
                &format!("{name} ({})", side_name(newer)),
            )
            .to_string()),
        _ => Ok(summary),
    }
}

fn side_name(s: &Side) -> String {
    match s {
        Side::Point(b) => format!("point {b}"),
        Side::Live(_) => "now".into(),
    }
}

fn text(b: &[u8]) -> Option<&str> {
    if b.contains(&0) {
        return None;
    }
    std::str::from_utf8(b).ok()
}

fn read_all(mut body: Body) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    body.reader()?.read_to_end(&mut v)?;
    Ok(v)
}

/// What differs between point `a` and point `b`, or the live system under `root` when `b`
/// is None; within `paths` when given. Each path that differs, with its rendering for people
/// (a unified diff for text).
pub fn run(
    store: &Store,
    root: &std::path::Path,
    a: PointId,
    b: Option<PointId>,
    paths: &[RelPath],
) -> Result<Vec<(DiffItem, String)>> {
    let mut packs = restore::Packs::default();
    let root_fd =
        fsio::open_root(root).ctx(|| format!("opening the system root {}", root.display()))?;
    let (items, side) = match b {
        Some(b) => {
            store.index.point(a)?;
            store.index.point(b)?;
            (between_points(store, a, b, paths)?, Side::Point(b))
        }
        None => {
            let req = restore::RestoreRequest {
                point: a,
                target: None,
                paths: paths.to_vec(),
                safety_point: false,
                protect: Vec::new(),
                boot: crate::boot::Source::Off,
                checksum: false,
                skip_damaged: false,
            };
            let plan = restore::plan_request(root, store, &req, &crate::progress::Silent)?;
            (
                against_live(&plan),
                Side::Live(std::os::fd::AsFd::as_fd(&root_fd)),
            )
        }
    };
    items
        .into_iter()
        .map(|it| {
            let text = render(store, &mut packs, a, &side, &it)?;
            Ok((it, text))
        })
        .collect()
}
