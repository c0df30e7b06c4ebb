//! The SQLite index (WAL, synchronous=FULL): points, the replica's entries, per-point changes,
//! the restore journal and the boot captures. Authoritative for all metadata, and the only
//! place where SQL is written: the rest of the program sees typed rows.
//!
//! Every row carries a checksum of its values (`rowsum`), checked whenever it is read; a row
//! that fails it, a value this program does not know, or a page SQLite finds malformed is
//! `Error::Damaged`, never a default. Migrations are append-only, tracked by
//! `PRAGMA user_version`, applied in one exclusive transaction; a store newer than this
//! binary is refused.

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, Transaction};

use super::log::{self, IndexLog, Op};
use super::rowsum::{self, damaged, sealed, RowDamaged};
use crate::delta::leaves::LeafMap;
use crate::error::{Error, Result};
use crate::model::{Entry, Hash, Kind, RelPath, Timestamp, Xattrs};

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_restores.sql"),
    include_str!("../../migrations/0003_boot.sql"),
    include_str!("../../migrations/0004_row_sums.sql"),
    include_str!("../../migrations/0005_log_state.sql"),
    include_str!("../../migrations/0006_usage.sql"),
    include_str!("../../migrations/0007_leaf_maps.sql"),
    include_str!("../../migrations/0008_pins.sql"),
];
/// The first schema whose rows carry checksums: older rows are sealed when migrating past it.
const SUMS_SINCE: usize = 4;

pub use crate::model::PointId;
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointKind {
    Scheduled,
    Manual,
    PreRestore,
}

impl PointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PointKind::Scheduled => "scheduled",
            PointKind::Manual => "manual",
            PointKind::PreRestore => "pre-restore",
        }
    }

    fn parse(s: &str) -> Option<PointKind> {
        Some(match s {
            "scheduled" => PointKind::Scheduled,
            "manual" => PointKind::Manual,
            "pre-restore" => PointKind::PreRestore,
            _ => return None,
        })
    }
}

impl std::fmt::Display for PointKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    pub id: PointId,
    pub created_at: String,
    pub kind: PointKind,
    pub label: Option<String>,
    #[serde(skip)]
    pub complete: bool,
    #[serde(skip)]
    pub sources: Vec<String>,
    /// The exclusion patterns the point was taken with (None: recorded before they were kept).
    #[serde(skip)]
    pub excludes: Option<Vec<String>>,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub warnings: u64,
    /// Why no boot area was captured with the point, if none was.
    #[serde(skip)]
    pub boot_note: Option<String>,
    /// `system_snapshot pin`: retention never removes it (the `pins` table, not a column).
    pub pinned: bool,
}

/// What a point's row ends with once its last batch is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PointTotals {
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub warnings: u64,
}

/// An in-place restore that was started (and, while not `complete`, not finished).
#[derive(Debug, Clone)]
pub struct RestoreJournal {
    pub id: i64,
    pub point: PointId,
    /// The root restored in place (canonical path).
    pub target: String,
    pub paths: Vec<String>,
    pub safety_point: Option<PointId>,
    pub started_at: String,
    pub complete: bool,
}

/// How the old content of a changed path is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Absent,
    Same,
    Delta,
    Chunked,
    Full,
}

impl ContentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::Absent => "absent",
            ContentKind::Same => "same",
            ContentKind::Delta => "delta",
            ContentKind::Chunked => "chunked",
            ContentKind::Full => "full",
        }
    }

    fn parse(s: &str) -> Option<ContentKind> {
        Some(match s {
            "absent" => ContentKind::Absent,
            "same" => ContentKind::Same,
            "delta" => ContentKind::Delta,
            "chunked" => ContentKind::Chunked,
            "full" => ContentKind::Full,
            _ => return None,
        })
    }
}

/// One row of `changes`: the state of `path` at the point before `point`.
#[derive(Debug, Clone)]
pub struct Change {
    pub point: PointId,
    pub path: RelPath,
    pub content: ContentKind,
    /// None when the path did not exist before (`Absent`).
    pub old: Option<Entry>,
    /// Location of the frame in the point's pack: (offset, length).
    pub frame: Option<(u64, u64)>,
    /// Content hash of the path at `point` (a regular file there), for rollback and checks.
    pub new_hash: Option<Hash>,
}

impl Change {
    /// The change of a file whose previous version was already damaged in the replica when
    /// point `point` was recorded: a `full` change with an empty frame, which never rebuilds
    /// (restores of older points report the file as damaged) and which a rollback leaves as
    /// it is. `at` is the pack's length, where the empty frame sits.
    pub fn lost(
        point: PointId,
        path: &[u8],
        old: Option<Entry>,
        at: u64,
        new_hash: Option<Hash>,
    ) -> Change {
        Change {
            point,
            path: path.to_vec(),
            content: ContentKind::Full,
            old,
            frame: Some((at, 0)),
            new_hash,
        }
    }

    /// Whether this is a `lost` change (a real frame is never empty: zstd has a header).
    pub fn is_lost(&self) -> bool {
        self.content == ContentKind::Full && self.frame.is_some_and(|(_, len)| len == 0)
    }
}

/// How a write changes the store's recorded data usage (`usage`, schema 6), in its own
/// transaction: the recorded numbers never run ahead of, or behind, the writes they count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageChange {
    /// Allocated bytes the replica's contents and the packs grew by (negative: shrank).
    Add { replica: i64, packs: i64 },
    /// Not known any more (a rollback rewrote replica files): measured again by the next
    /// writer.
    Forget,
}

/// One write of a snapshot's batch; a batch commits in one transaction.
pub enum BatchWrite {
    /// A reverse change of the running point.
    Change(Change),
    /// The replica's entry for a path (the new state).
    Entry(RelPath, Entry),
    /// The path is no longer in the replica.
    Forget(RelPath),
    /// The leaf map of the path's new content (derived: not in the log).
    LeafMap(RelPath, LeafMap),
}

pub struct Index {
    conn: Connection,
    pub path: PathBuf,
    /// Writers only: every committed write is in it first (`log`).
    log: Option<IndexLog>,
}

/// The restorable fields of an entry, in this order wherever a table holds one.
pub(crate) const ENTRY_COLS: &str = "kind, mode, uid, gid, size, mtime_s, mtime_ns, rdev, target, hash, xattrs, flags, link, sparse";
const ENTRY_N: usize = 14;
const POINT_COLS: &str = "id, created_at, kind, label, state, sources, files, bytes, stored_bytes, warnings, excludes, boot_note";
const POINT_N: usize = 12;
const RESTORE_COLS: &str = "id, point_id, target, paths, safety_point, started_at, state";
const RESTORE_N: usize = 7;
const BOOT_COLS: &str = "point_id, disk, manifest";
const BOOT_N: usize = 3;
const PIN_COLS: &str = "point_id, pinned_at";
const PIN_N: usize = 2;

fn entries_cols() -> String {
    format!("path, {ENTRY_COLS}, ino, ctime_s, ctime_ns")
}
const ENTRIES_N: usize = ENTRY_N + 4;

fn changes_cols() -> String {
    format!("point_id, path, content, {ENTRY_COLS}, frame_offset, frame_len, new_hash")
}
const CHANGES_N: usize = ENTRY_N + 6;

/// (table, its columns, the columns that identify a row): what the migration seals.
fn tables() -> [(&'static str, String, &'static [&'static str]); 6] {
    [
        ("points", POINT_COLS.to_string(), &["id"]),
        ("entries", entries_cols(), &["path"]),
        ("changes", changes_cols(), &["point_id", "path"]),
        ("restores", RESTORE_COLS.to_string(), &["id"]),
        (
            "boot_captures",
            BOOT_COLS.to_string(),
            &["point_id", "disk"],
        ),
        ("pins", PIN_COLS.to_string(), &["point_id"]),
    ]
}

const POINTS: u8 = 0;
const ENTRIES: u8 = 1;
const CHANGES: u8 = 2;
const RESTORES: u8 = 3;
const BOOT: u8 = 4;
const PINS: u8 = 5;

/// The SQL of each table's logged writes, built once: `apply_op` runs for every row.
struct TableSql {
    name: &'static str,
    cols: Vec<String>,
    keys: usize,
    put: String,
    delete: String,
}

fn table_sql(t: u8) -> rusqlite::Result<&'static TableSql> {
    static SQL: std::sync::OnceLock<Vec<TableSql>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        tables()
            .into_iter()
            .map(|(name, cols, keys)| {
                let colv: Vec<String> = cols.split(", ").map(str::to_string).collect();
                let sets: Vec<String> = colv
                    .iter()
                    .map(String::as_str)
                    .filter(|c| !keys.contains(c))
                    .chain(std::iter::once("sum"))
                    .map(|c| format!("{c}=excluded.{c}"))
                    .collect();
                let cond: Vec<String> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| format!("{k}=?{}", i + 1))
                    .collect();
                TableSql {
                    name,
                    put: format!(
                        "INSERT INTO {name} ({cols}, sum) VALUES ({}) ON CONFLICT({}) DO UPDATE SET {}",
                        placeholders(colv.len() + 1),
                        keys.join(", "),
                        sets.join(", ")
                    ),
                    delete: format!("DELETE FROM {name} WHERE {}", cond.join(" AND ")),
                    keys: keys.len(),
                    cols: colv,
                }
            })
            .collect()
    });
    all.get(t as usize)
        .ok_or_else(|| damaged(format!("log record for unknown table {t}")))
}

/// Applies one logged write. The same function commits a write and replays the log, so the
/// index rebuilt by `repair` is the index the writes made.
pub(super) fn apply_op(conn: &Connection, op: &Op) -> rusqlite::Result<()> {
    match op {
        Op::Header { .. } => Ok(()),
        Op::Put { table, values } => {
            let t = table_sql(*table)?;
            if values.len() != t.cols.len() + 1 {
                return Err(damaged(format!(
                    "a {} record has {} values",
                    t.name,
                    values.len()
                )));
            }
            conn.prepare_cached(&t.put)?
                .execute(params_from_iter(values))?;
            Ok(())
        }
        Op::Delete { table, key } => {
            let t = table_sql(*table)?;
            if key.len() != t.keys {
                return Err(damaged(format!(
                    "a {} deletion has {} keys",
                    t.name,
                    key.len()
                )));
            }
            conn.prepare_cached(&t.delete)?
                .execute(params_from_iter(key))?;
            Ok(())
        }
        Op::DeleteWhere {
            table,
            column,
            value,
        } => {
            let t = table_sql(*table)?;
            let col = t
                .cols
                .get(*column as usize)
                .ok_or_else(|| damaged(format!("a {} deletion names column {column}", t.name)))?;
            conn.prepare_cached(&format!("DELETE FROM {} WHERE {col}=?1", t.name))?
                .execute([value])?;
            Ok(())
        }
        Op::Clear { table } => {
            let t = table_sql(*table)?;
            conn.execute(&format!("DELETE FROM {}", t.name), [])?;
            Ok(())
        }
        Op::Batch(ops) => ops.iter().try_for_each(|op| apply_op(conn, op)),
    }
}

/// The recorded usage (replica, packs); None when there is none or it fails its checksum.
fn read_usage(conn: &Connection) -> rusqlite::Result<Option<(i64, i64)>> {
    conn.query_row(
        "SELECT id, replica, packs, sum FROM usage WHERE id = 1",
        [],
        |r| {
            if rowsum::check(r, "usage", 3, || "usage".into()).is_err() {
                return Ok(None);
            }
            Ok(Some((r.get(1)?, r.get(2)?)))
        },
    )
    .optional()
    .map(Option::flatten)
}

fn write_usage(conn: &Connection, replica: i64, packs: i64) -> rusqlite::Result<()> {
    let v = vec![
        Value::Integer(1),
        Value::Integer(replica.max(0)),
        Value::Integer(packs.max(0)),
    ];
    conn.prepare_cached(
        "INSERT OR REPLACE INTO usage (id, replica, packs, sum) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params_from_iter(sealed("usage", v)))?;
    Ok(())
}

fn change_usage(conn: &Connection, change: UsageChange) -> rusqlite::Result<()> {
    match change {
        UsageChange::Forget => {
            conn.execute("DELETE FROM usage", [])?;
        }
        UsageChange::Add { replica, packs } => {
            if let Some((r, p)) = read_usage(conn)? {
                write_usage(conn, r + replica, p + packs)?;
            }
        }
    }
    Ok(())
}

fn write_leaf_map(conn: &Connection, path: &[u8], map: &LeafMap) -> rusqlite::Result<()> {
    let v = vec![
        Value::Blob(path.to_vec()),
        Value::Blob(map.root().to_vec()),
        Value::Integer(map.size as i64),
        Value::Blob(map.to_blob()),
    ];
    conn.prepare_cached(
        "INSERT OR REPLACE INTO leaf_maps (path, hash, size, leaves, sum) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params_from_iter(sealed("leaf_maps", v)))?;
    Ok(())
}

/// Records how far the log is committed, in the transaction that commits its records.
pub(super) fn set_log_len(conn: &Connection, len: u64) -> rusqlite::Result<()> {
    let v = vec![Value::Integer(1), Value::Integer(len as i64)];
    conn.prepare_cached("INSERT OR REPLACE INTO log_state (id, len, sum) VALUES (?1, ?2, ?3)")?
        .execute(params_from_iter(sealed("log_state", v)))?;
    Ok(())
}

/// The committed length of the log; None when not recorded yet, or when the row fails its
/// checksum (then nothing may be cut from the log on its word).
fn log_len(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    conn.query_row("SELECT id, len, sum FROM log_state WHERE id = 1", [], |r| {
        Ok(rowsum::check(r, "log_state", 2, || "log_state".into())
            .ok()
            .map(|_| r.get::<_, i64>(1))
            .transpose()?
            .map(|l| l as u64))
    })
    .optional()
    .map(Option::flatten)
}

fn put(table: u8, values: Vec<Value>) -> Op {
    Op::Put {
        table,
        values: sealed(log::TABLES[table as usize], values),
    }
}

fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn hash_at(row: &Row, i: usize) -> rusqlite::Result<Option<Hash>> {
    match row.get::<_, Option<Vec<u8>>>(i)? {
        None => Ok(None),
        Some(b) => b
            .try_into()
            .map(Some)
            .map_err(|_| damaged("a content hash is not 32 bytes")),
    }
}

fn u64_at(row: &Row, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(i)?;
    u64::try_from(v).map_err(|_| damaged(format!("negative count {v}")))
}

/// Reads the ENTRY_COLS starting at column `at`; None when the row holds no state (an
/// `absent` change). ino/ctime are filled by the caller.
pub(crate) fn entry_at(row: &Row, at: usize) -> rusqlite::Result<Option<Entry>> {
    let Some(code) = row.get::<_, Option<i64>>(at)? else {
        return Ok(None);
    };
    let kind =
        Kind::from_code(code).ok_or_else(|| damaged(format!("unknown entry kind {code}")))?;
    let xattrs = match row.get::<_, Option<Vec<u8>>>(at + 10)? {
        None => Xattrs::default(),
        Some(b) => {
            Xattrs::decode(&b).ok_or_else(|| damaged("extended attributes do not decode"))?
        }
    };
    let e = Entry {
        kind,
        mode: row.get(at + 1)?,
        uid: row.get(at + 2)?,
        gid: row.get(at + 3)?,
        size: u64_at(row, at + 4)?,
        mtime: Timestamp {
            sec: row.get(at + 5)?,
            nsec: row.get(at + 6)?,
        },
        rdev: row.get::<_, i64>(at + 7)? as u64,
        target: row.get(at + 8)?,
        hash: hash_at(row, at + 9)?,
        xattrs,
        flags: row.get(at + 11)?,
        link: row.get(at + 12)?,
        sparse: row.get(at + 13)?,
        ino: 0,
        ctime: Timestamp::default(),
    };
    if e.kind == Kind::File && e.hash.is_none() {
        return Err(damaged("a regular file without a content hash"));
    }
    Ok(Some(e))
}

pub(crate) fn entry_values(e: Option<&Entry>) -> Vec<Value> {
    let Some(e) = e else {
        return vec![Value::Null; ENTRY_N];
    };
    let blob = |b: Option<Vec<u8>>| b.map_or(Value::Null, Value::Blob);
    vec![
        Value::Integer(e.kind as i64),
        Value::Integer(e.mode.into()),
        Value::Integer(e.uid.into()),
        Value::Integer(e.gid.into()),
        Value::Integer(e.size as i64),
        Value::Integer(e.mtime.sec),
        Value::Integer(e.mtime.nsec.into()),
        Value::Integer(e.rdev as i64),
        blob(e.target.clone()),
        blob(e.hash.map(|h| h.to_vec())),
        blob((!e.xattrs.is_empty()).then(|| e.xattrs.encode())),
        Value::Integer(e.flags.into()),
        blob(e.link.clone()),
        Value::Integer(e.sparse.into()),
    ]
}

fn text(s: Option<String>) -> Value {
    s.map_or(Value::Null, Value::Text)
}

fn json(v: &[String]) -> String {
    serde_json::to_string(v).expect("strings serialize")
}

fn json_at(row: &Row, i: usize, what: &str) -> rusqlite::Result<Option<Vec<String>>> {
    match row.get::<_, Option<String>>(i)? {
        None => Ok(None),
        Some(j) => serde_json::from_str(&j)
            .map(Some)
            .map_err(|e| damaged(format!("{what} is not a JSON list of strings: {e}"))),
    }
}

fn point_from_row(r: &Row) -> rusqlite::Result<Point> {
    let id: PointId = r.get(0)?;
    rowsum::check(r, "points", POINT_N, || format!("point {id}"))?;
    let kind: String = r.get(2)?;
    let state: String = r.get(4)?;
    Ok(Point {
        id,
        created_at: r.get(1)?,
        kind: PointKind::parse(&kind)
            .ok_or_else(|| damaged(format!("point {id}: unknown kind {kind:?}")))?,
        label: r.get(3)?,
        complete: match state.as_str() {
            "complete" => true,
            "running" => false,
            other => return Err(damaged(format!("point {id}: unknown state {other:?}"))),
        },
        sources: json_at(r, 5, "sources")?
            .ok_or_else(|| damaged(format!("point {id}: no sources")))?,
        files: u64_at(r, 6)?,
        bytes: u64_at(r, 7)?,
        stored_bytes: u64_at(r, 8)?,
        warnings: u64_at(r, 9)?,
        excludes: json_at(r, 10, "excludes")?,
        boot_note: r.get(11)?,
        pinned: false,
    })
}

fn point_values(p: &Point) -> Vec<Value> {
    vec![
        Value::Integer(p.id.0),
        Value::Text(p.created_at.clone()),
        Value::Text(p.kind.as_str().into()),
        text(p.label.clone()),
        Value::Text(if p.complete { "complete" } else { "running" }.into()),
        Value::Text(json(&p.sources)),
        Value::Integer(p.files as i64),
        Value::Integer(p.bytes as i64),
        Value::Integer(p.stored_bytes as i64),
        Value::Integer(p.warnings as i64),
        text(p.excludes.as_deref().map(json)),
        text(p.boot_note.clone()),
    ]
}

fn restore_from_row(r: &Row) -> rusqlite::Result<RestoreJournal> {
    let id: i64 = r.get(0)?;
    rowsum::check(r, "restores", RESTORE_N, || format!("restore journal {id}"))?;
    let state: String = r.get(6)?;
    Ok(RestoreJournal {
        id,
        point: r.get(1)?,
        target: r.get(2)?,
        paths: json_at(r, 3, "paths")?.unwrap_or_default(),
        safety_point: r.get(4)?,
        started_at: r.get(5)?,
        complete: match state.as_str() {
            "complete" => true,
            "running" => false,
            other => return Err(damaged(format!("restore {id}: unknown state {other:?}"))),
        },
    })
}

fn restore_values(j: &RestoreJournal) -> Vec<Value> {
    vec![
        Value::Integer(j.id),
        Value::Integer(j.point.0),
        Value::Text(j.target.clone()),
        Value::Text(json(&j.paths)),
        j.safety_point.map_or(Value::Null, |p| Value::Integer(p.0)),
        Value::Text(j.started_at.clone()),
        Value::Text(if j.complete { "complete" } else { "running" }.into()),
    ]
}

fn change_from_row(r: &Row) -> rusqlite::Result<Change> {
    let point: PointId = r.get(0)?;
    rowsum::check(r, "changes", CHANGES_N, || {
        format!("a change of point {point}")
    })?;
    let content: String = r.get(2)?;
    let off: Option<i64> = r.get(ENTRY_N + 3)?;
    let len: Option<i64> = r.get(ENTRY_N + 4)?;
    let content = ContentKind::parse(&content)
        .ok_or_else(|| damaged(format!("point {point}: unknown content kind {content:?}")))?;
    let old = entry_at(r, 3)?;
    let frame = match (off, len) {
        (Some(o), Some(l)) if o >= 0 && l >= 0 => Some((o as u64, l as u64)),
        (None, None) => None,
        _ => {
            return Err(damaged(format!(
                "point {point}: a frame location is invalid"
            )))
        }
    };
    let needs_frame = matches!(
        content,
        ContentKind::Delta | ContentKind::Chunked | ContentKind::Full
    );
    if needs_frame && frame.is_none() || (content == ContentKind::Absent) != old.is_none() {
        return Err(damaged(format!(
            "point {point}: a {} change does not hold what it needs",
            content.as_str()
        )));
    }
    Ok(Change {
        point,
        path: r.get(1)?,
        content,
        old,
        frame,
        new_hash: hash_at(r, ENTRY_N + 5)?,
    })
}

fn entry_from_row(r: &Row) -> rusqlite::Result<(RelPath, Entry)> {
    let path: Vec<u8> = r.get(0)?;
    rowsum::check(r, "entries", ENTRIES_N, || {
        format!("the entry of {}", crate::model::display_path(&path))
    })?;
    let mut e = entry_at(r, 1)?.ok_or_else(|| damaged("a replica entry without a kind"))?;
    e.ino = r.get::<_, i64>(ENTRY_N + 1)? as u64;
    e.ctime = Timestamp {
        sec: r.get(ENTRY_N + 2)?,
        nsec: r.get(ENTRY_N + 3)?,
    };
    Ok((path, e))
}

pub(super) fn entry_op(path: &[u8], e: &Entry) -> Op {
    let mut v = vec![Value::Blob(path.to_vec())];
    v.extend(entry_values(Some(e)));
    v.extend([
        Value::Integer(e.ino as i64),
        Value::Integer(e.ctime.sec),
        Value::Integer(e.ctime.nsec.into()),
    ]);
    put(ENTRIES, v)
}

fn forget_op(path: &[u8]) -> Op {
    Op::Delete {
        table: ENTRIES,
        key: vec![Value::Blob(path.to_vec())],
    }
}

/// The record of a point's row, as the index and the packs hold it.
pub fn point_op(p: &Point) -> Op {
    put(POINTS, point_values(p))
}

/// The record of a change row, as the index and its pack hold it.
pub fn change_op(c: &Change) -> Op {
    let mut v = vec![
        Value::Integer(c.point.0),
        Value::Blob(c.path.clone()),
        Value::Text(c.content.as_str().into()),
    ];
    v.extend(entry_values(c.old.as_ref()));
    let (off, len) = match c.frame {
        Some((o, l)) => (Value::Integer(o as i64), Value::Integer(l as i64)),
        None => (Value::Null, Value::Null),
    };
    v.extend([
        off,
        len,
        c.new_hash.map_or(Value::Null, |h| Value::Blob(h.to_vec())),
    ]);
    put(CHANGES, v)
}

/// The rows of `point` in every table that names points by id.
fn of_point(table: u8, point: PointId) -> Op {
    Op::DeleteWhere {
        table,
        column: 0,
        value: Value::Integer(point.0),
    }
}

/// Seals every row of a store migrated from a schema without checksums, from the values the
/// rows hold now (they were trusted as they are until this point).
fn seal_all(tx: &Transaction) -> rusqlite::Result<()> {
    for (table, cols, keys) in tables() {
        let n = cols.split(", ").count();
        let key_at: Vec<usize> = keys
            .iter()
            .map(|k| {
                cols.split(", ")
                    .position(|c| c == *k)
                    .expect("key is a column")
            })
            .collect();
        let rows: Vec<Vec<Value>> = {
            let mut st = tx.prepare(&format!("SELECT {cols} FROM {table}"))?;
            let it = st.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())?;
            it.collect::<rusqlite::Result<_>>()?
        };
        let cond = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k}=?{}", i + 2))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut up = tx.prepare(&format!("UPDATE {table} SET sum=?1 WHERE {cond}"))?;
        for row in rows {
            let sum = Value::Blob(rowsum::sum(table, row.iter().map(Into::into)));
            let mut p = vec![sum];
            p.extend(key_at.iter().map(|&i| row[i].clone()));
            up.execute(params_from_iter(p))?;
        }
    }
    Ok(())
}

impl Index {
    /// Opens the index of `store`. A writer (`write`) also opens `index.log`, which it
    /// creates (from a dump of the index) when there is none — a new store, or one made
    /// before the log existed — and compacts when it has grown past twice its last dump.
    /// Changes when another connection commits to the index (SQLite's `data_version`): how a
    /// reader tells that a writer came and went while it read.
    pub fn data_version(&self) -> Option<i64> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .ok()
    }

    pub fn open(store: &Path, write: bool) -> Result<Index> {
        let path = store.join("index.db");
        if !write && !path.exists() {
            return Err(Error::NoStore {
                store: store.to_path_buf(),
            });
        }
        let conn = Connection::open(&path).map_err(|e| db(&path, "opening", e))?;
        let mut idx = Index {
            conn,
            path,
            log: None,
        };
        idx.conn
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;")
            .map_err(|e| db(&idx.path, "setting pragmas", e))?;
        idx.migrate(store)?;
        if write {
            let lp = log::log_path(store);
            let ctx = |e| Error::io(format!("opening {}", lp.display()), e);
            let committed = log_len(&idx.conn).map_err(idx.err("reading the log's length"))?;
            let stale = match IndexLog::open(store).map_err(ctx)? {
                None => true,
                // Records past the committed length belong to a transaction that never
                // committed (a kill between the append and the commit): they go.
                Some(l) => match committed {
                    Some(c) if c > l.len().map_err(ctx)? => true, // committed records lost
                    Some(c) => {
                        l.cut_to(c).map_err(ctx)?;
                        l.wants_compaction().map_err(ctx)?
                    }
                    None => l.wants_compaction().map_err(ctx)?,
                },
            };
            if stale {
                idx.dump_log(store)?;
            }
            idx.log = IndexLog::open(store).map_err(ctx)?;
        }
        Ok(idx)
    }

    /// Rewrites `index.log` as a dump of the index. Every row is checked against its sum
    /// first: a damaged index is never written over the log that could repair it.
    pub fn dump_log(&self, store: &Path) -> Result<()> {
        let lp = log::log_path(store);
        let io = |e| Error::io(format!("writing {}", lp.display()), e);
        let mut w = log::Rewrite::create(store).map_err(io)?;
        for (code, (table, cols, _)) in tables().into_iter().enumerate() {
            let n = cols.split(", ").count();
            let mut st = self
                .conn
                .prepare(&format!("SELECT {cols}, sum FROM {table}"))
                .map_err(self.err("dumping the index"))?;
            let mut rows = st.query([]).map_err(self.err("dumping the index"))?;
            while let Some(r) = rows.next().map_err(self.err("dumping the index"))? {
                rowsum::check(r, table, n, || format!("a row of {table}"))
                    .map_err(self.err("dumping the index"))?;
                let values = (0..=n)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(self.err("dumping the index"))?;
                w.push(Op::Put {
                    table: code as u8,
                    values,
                })
                .map_err(io)?;
            }
        }
        let len = w.finish().map_err(io)?;
        set_log_len(&self.conn, len).map_err(self.err("recording the log's length"))
    }

    /// An index on a connection of the caller's (repair's new file): no log.
    pub(super) fn from_connection(conn: Connection, path: PathBuf) -> Index {
        Index {
            conn,
            path,
            log: None,
        }
    }

    pub(super) fn into_connection(self) -> Connection {
        self.conn
    }

    pub(super) fn migrate(&mut self, store: &Path) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .map_err(|e| db(&path, "starting migration", e))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db(&path, "reading schema version", e))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(Error::SchemaTooNew {
                store: store.to_path_buf(),
                found: version,
                supported,
            });
        }
        if version == supported {
            return Ok(());
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)
                .map_err(|e| db(&path, &format!("applying migration {}", i + 1), e))?;
        }
        if (version as usize) < SUMS_SINCE {
            seal_all(&tx).map_err(|e| db(&path, "sealing rows with checksums", e))?;
        }
        tx.pragma_update(None, "user_version", supported)
            .map_err(|e| db(&path, "writing schema version", e))?;
        tx.commit()
            .map_err(|e| db(&path, "committing migration", e))
    }

    fn err(&self, op: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        let op = op.to_string();
        move |e| db(&self.path, &op, e)
    }

    /// Commits `ops` in one transaction, after they are durable in the log.
    fn commit(&mut self, op: &'static str, ops: Vec<Op>) -> Result<()> {
        self.commit_with(op, ops, None, &[])
    }

    /// `commit`, with the change of the recorded usage the same writes make.
    fn commit_with(
        &mut self,
        op: &'static str,
        ops: Vec<Op>,
        usage: Option<UsageChange>,
        maps: &[(RelPath, Option<LeafMap>)],
    ) -> Result<()> {
        let log = self
            .log
            .as_mut()
            .expect("only a store opened for writing is written");
        let log_path = log.path.clone();
        let io = |e| Error::io(format!("writing {} ({op})", log_path.display()), e);
        let before = log.len().map_err(io)?;
        let appended = log.append(&ops);
        crate::failpoint::hit("index-after-log-append");
        let result = appended.map_err(io).and_then(|len| {
            let path = self.path.clone();
            let tx = self.conn.transaction().map_err(|e| db(&path, op, e))?;
            for o in &ops {
                apply_op(&tx, o).map_err(|e| db(&path, op, e))?;
            }
            set_log_len(&tx, len).map_err(|e| db(&path, op, e))?;
            if let Some(u) = usage {
                change_usage(&tx, u).map_err(|e| db(&path, op, e))?;
            }
            for (p, map) in maps {
                let done = match map {
                    Some(m) => write_leaf_map(&tx, p, m),
                    None => tx
                        .prepare_cached("DELETE FROM leaf_maps WHERE path=?1")
                        .and_then(|mut st| st.execute([p]))
                        .map(|_| ()),
                };
                done.map_err(|e| db(&path, op, e))?;
            }
            tx.commit().map_err(|e| db(&path, op, e))
        });
        if result.is_err() {
            // The records of a write that did not commit must not stay in the log, where a
            // later commit's length would cover them. If they cannot be cut, nothing more is
            // written in this run; the next writer cuts them at open.
            let log = self.log.as_mut().expect("checked above");
            if log.cut_to(before).is_err() {
                self.log = None;
            }
        }
        result
    }

    /// The next id of an AUTOINCREMENT table: never one used before, even by a row since
    /// deleted. Chosen here (not by SQLite) so that the log records it.
    fn next_id(&self, table: &str) -> Result<i64> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name=?1",
                [table],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err("choosing an id"))?;
        let max: Option<i64> = self
            .conn
            .query_row(&format!("SELECT max(id) FROM {table}"), [], |r| r.get(0))
            .map_err(self.err("choosing an id"))?;
        Ok(seq.unwrap_or(0).max(max.unwrap_or(0)) + 1)
    }

    /// Every point, running ones included, oldest first.
    pub fn points(&self) -> Result<Vec<Point>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {POINT_COLS}, sum FROM points ORDER BY id"))
            .map_err(self.err("listing points"))?;
        let rows = st
            .query_map([], point_from_row)
            .map_err(self.err("listing points"))?;
        let mut points = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("listing points"))?;
        let pins = self.pins()?;
        for p in &mut points {
            p.pinned = pins.contains(&p.id);
        }
        Ok(points)
    }

    /// The pinned points.
    fn pins(&self) -> Result<Vec<PointId>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {PIN_COLS}, sum FROM pins ORDER BY point_id"
            ))
            .map_err(self.err("listing pins"))?;
        let rows = st
            .query_map([], |r| {
                let id: PointId = r.get(0)?;
                rowsum::check(r, "pins", PIN_N, || format!("the pin of point {id}"))?;
                Ok(id)
            })
            .map_err(self.err("listing pins"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("listing pins"))
    }

    /// Pins complete point `id` (`pinned`) or unpins it, logged like every write. Returns the
    /// point as it is now.
    pub fn set_pin(&mut self, id: PointId, pinned: bool, now: &str) -> Result<Point> {
        let mut p = self.point(id)?;
        if p.pinned != pinned {
            let op = if pinned {
                put(
                    PINS,
                    vec![Value::Integer(id.0), Value::Text(now.to_string())],
                )
            } else {
                of_point(PINS, id)
            };
            self.commit(
                if pinned {
                    "pinning the point"
                } else {
                    "unpinning the point"
                },
                vec![op],
            )?;
            p.pinned = pinned;
        }
        Ok(p)
    }

    pub fn complete_points(&self) -> Result<Vec<Point>> {
        Ok(self.points()?.into_iter().filter(|p| p.complete).collect())
    }

    pub fn point(&self, id: PointId) -> Result<Point> {
        self.complete_points()?
            .into_iter()
            .find(|p| p.id == id)
            .ok_or(Error::NoSuchPoint { id: id.0 })
    }

    /// A point in any state (a running one included).
    fn point_row(conn: &Connection, id: PointId) -> rusqlite::Result<Point> {
        conn.query_row(
            &format!("SELECT {POINT_COLS}, sum FROM points WHERE id=?1"),
            [id],
            point_from_row,
        )
    }

    /// The records that make point `id`'s pack describe itself (docs/DESIGN.md "Packs"): its
    /// row, with `totals` when it completes, else as it is now; and at creation the row of the
    /// point before it, whose own pack goes when retention removes the point before that.
    pub fn pack_head(&self, id: PointId, totals: Option<PointTotals>) -> Result<Vec<Op>> {
        let points = self.points()?;
        let mut p = points
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .ok_or(Error::NoSuchPoint { id: id.0 })?;
        let mut out = Vec::new();
        match totals {
            Some(t) => {
                p.complete = true;
                (p.files, p.bytes, p.stored_bytes, p.warnings) =
                    (t.files, t.bytes, t.stored_bytes, t.warnings);
            }
            None => {
                if let Some(before) = points.iter().rfind(|q| q.complete && q.id < id) {
                    out.push(put(POINTS, point_values(before)));
                }
            }
        }
        out.push(put(POINTS, point_values(&p)));
        Ok(out)
    }

    /// Records a new `running` point and returns its id (never one used before).
    pub fn insert_point(
        &mut self,
        created_at: &str,
        kind: PointKind,
        label: Option<&str>,
        sources: &[String],
        excludes: &[String],
    ) -> Result<PointId> {
        let p = Point {
            id: PointId(self.next_id("points")?),
            created_at: created_at.to_string(),
            kind,
            label: label.map(str::to_string),
            complete: false,
            sources: sources.to_vec(),
            excludes: Some(excludes.to_vec()),
            files: 0,
            bytes: 0,
            stored_bytes: 0,
            warnings: 0,
            boot_note: None,
            pinned: false,
        };
        self.commit("recording a new point", vec![put(POINTS, point_values(&p))])?;
        Ok(p.id)
    }

    pub fn complete_point(
        &mut self,
        id: PointId,
        totals: PointTotals,
        usage: UsageChange,
    ) -> Result<()> {
        let mut p = Index::point_row(&self.conn, id).map_err(self.err("reading the point"))?;
        p.complete = true;
        p.files = totals.files;
        p.bytes = totals.bytes;
        p.stored_bytes = totals.stored_bytes;
        p.warnings = totals.warnings;
        self.commit_with(
            "marking the point complete",
            vec![put(POINTS, point_values(&p))],
            Some(usage),
            &[],
        )
    }

    /// Gives complete point `id` the label `label` (None: none), logged like every write so
    /// that a repair from the log keeps it.
    pub fn set_label(&mut self, id: PointId, label: Option<&str>) -> Result<Point> {
        let mut p = self.point(id)?;
        p.label = label.map(str::to_string);
        self.commit("labelling the point", vec![put(POINTS, point_values(&p))])?;
        Ok(p)
    }

    /// One snapshot batch, in one transaction.
    pub fn write_batch(&mut self, writes: impl IntoIterator<Item = BatchWrite>) -> Result<()> {
        let mut maps = Vec::new();
        let ops = writes
            .into_iter()
            .filter_map(|w| match w {
                BatchWrite::Change(c) => Some(change_op(&c)),
                BatchWrite::Entry(p, e) => Some(entry_op(&p, &e)),
                BatchWrite::Forget(p) => {
                    let op = forget_op(&p);
                    maps.push((p, None));
                    Some(op)
                }
                BatchWrite::LeafMap(p, m) => {
                    maps.push((p, Some(m)));
                    None
                }
            })
            .collect();
        self.commit_with("recording a batch of changes", ops, None, &maps)
    }

    /// The leaf map of the replica's copy of `path`, when one is recorded for exactly this
    /// content (`hash`, `size`) and holds together (its row sum, its shape, and its leaves
    /// merging to `hash`). Derived data: anything less is None, and the file is read whole.
    pub fn leaf_map(&self, path: &[u8], hash: Hash, size: u64) -> Result<Option<LeafMap>> {
        let row = self
            .conn
            .prepare_cached("SELECT path, hash, size, leaves, sum FROM leaf_maps WHERE path=?1")
            .and_then(|mut st| {
                st.query_row([path], |r| {
                    if rowsum::check(r, "leaf_maps", 4, String::new).is_err() {
                        return Ok(None);
                    }
                    Ok(Some((
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    )))
                })
                .optional()
            })
            .map_err(self.err("reading a leaf map"))?
            .flatten();
        Ok(row.and_then(|(h, sz, blob)| {
            (h == hash && sz == size as i64)
                .then(|| LeafMap::from_blob(size, &blob))
                .flatten()
                .filter(|m| m.root() == hash)
        }))
    }

    /// Drops a running point in one transaction: entries back to the states its `changes`
    /// recorded (or all entries, for the first point, which built them from nothing), its
    /// changes, its boot captures and its row.
    pub fn drop_running_point(
        &mut self,
        id: PointId,
        changes: &[Change],
        wipe_entries: bool,
    ) -> Result<()> {
        let p = Index::point_row(&self.conn, id).map_err(self.err("reading the point"))?;
        if p.complete {
            return Err(Error::Damaged {
                what: format!("point {id} is complete, yet a rollback was asked for it"),
            });
        }
        let mut ops = Vec::with_capacity(changes.len() + 4);
        if wipe_entries {
            ops.push(Op::Clear { table: ENTRIES });
        }
        for c in changes {
            ops.push(match &c.old {
                Some(old) => entry_op(&c.path, old),
                None => forget_op(&c.path),
            });
        }
        ops.extend([
            of_point(CHANGES, id),
            of_point(BOOT, id),
            of_point(POINTS, id),
        ]);
        self.commit_with(
            "rolling back an interrupted point",
            ops,
            Some(UsageChange::Forget),
            &[],
        )
    }

    /// Removes the oldest point `oldest` in one transaction: its row, its boot captures and
    /// the changes of `successor`, which only served to step back to it.
    /// `freed_packs`: the allocated bytes of the two packs the caller deletes after the commit.
    pub fn remove_oldest_point(
        &mut self,
        oldest: PointId,
        successor: PointId,
        freed_packs: u64,
    ) -> Result<()> {
        let ops = vec![
            of_point(CHANGES, oldest),
            of_point(CHANGES, successor),
            of_point(BOOT, oldest),
            of_point(PINS, oldest),
            of_point(POINTS, oldest),
        ];
        let freed = UsageChange::Add {
            replica: 0,
            packs: -(freed_packs as i64),
        };
        self.commit_with("removing the oldest point", ops, Some(freed), &[])
    }

    /// Removes point `removed` from the middle in one transaction: its row, boot captures and
    /// changes go, and its successor's changes are replaced by `merged` (which step back from
    /// the successor to the point before `removed`, with frames in the merged pack), its row by
    /// `successor` (the merged pack's size). `packs`: allocated bytes of the merged pack less
    /// those of the two packs it replaces.
    pub fn merge_point(
        &mut self,
        removed: PointId,
        successor: &Point,
        merged: &[Change],
        packs: i64,
    ) -> Result<()> {
        let mut ops = Vec::with_capacity(merged.len() + 6);
        ops.extend([
            of_point(CHANGES, removed),
            of_point(CHANGES, successor.id),
            of_point(BOOT, removed),
            of_point(PINS, removed),
            of_point(POINTS, removed),
            put(POINTS, point_values(successor)),
        ]);
        ops.extend(merged.iter().map(change_op));
        self.commit_with(
            "removing a point and merging its changes into the next",
            ops,
            Some(UsageChange::Add { replica: 0, packs }),
            &[],
        )
    }

    /// Records the boot area captured with a running point: (disk, manifest JSON) pairs, or
    /// the reason none was captured.
    pub fn insert_boot(
        &mut self,
        point: PointId,
        captures: &[(String, String)],
        note: Option<&str>,
    ) -> Result<()> {
        let mut ops: Vec<Op> = captures
            .iter()
            .map(|(disk, manifest)| {
                put(
                    BOOT,
                    vec![
                        Value::Integer(point.0),
                        Value::Text(disk.clone()),
                        Value::Text(manifest.clone()),
                    ],
                )
            })
            .collect();
        let mut p = Index::point_row(&self.conn, point).map_err(self.err("reading the point"))?;
        p.boot_note = note.map(str::to_string);
        ops.push(put(POINTS, point_values(&p)));
        self.commit("recording the boot area", ops)
    }

    /// The boot manifests of a point (JSON), and the note saying why there are none.
    pub fn boot_of(&self, point: PointId) -> Result<(Vec<String>, Option<String>)> {
        let manifests = self.boot_manifests(Some(point))?;
        let note = Index::point_row(&self.conn, point)
            .optional()
            .map_err(self.err("reading the boot area"))?
            .and_then(|p| p.boot_note);
        Ok((manifests, note))
    }

    /// The boot manifests (JSON) of one point, or of every point (to know which boot files
    /// are still referred to).
    pub fn boot_manifests(&self, point: Option<PointId>) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {BOOT_COLS}, sum FROM boot_captures ORDER BY point_id, disk"
            ))
            .map_err(self.err("reading the boot area"))?;
        let rows = st
            .query_map([], |r| {
                let id: PointId = r.get(0)?;
                rowsum::check(r, "boot_captures", BOOT_N, || {
                    format!("the boot area of point {id}")
                })?;
                Ok((id, r.get::<_, String>(2)?))
            })
            .map_err(self.err("reading the boot area"))?;
        let all = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("reading the boot area"))?;
        Ok(all
            .into_iter()
            .filter(|(id, _)| point.is_none_or(|p| p == *id))
            .map(|(_, m)| m)
            .collect())
    }

    /// Every restore journal row, oldest first (all are read, so damage to any is found).
    pub fn restores(&self) -> Result<Vec<RestoreJournal>> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {RESTORE_COLS}, sum FROM restores ORDER BY id"
            ))
            .map_err(self.err("reading the restore journal"))?;
        let rows = st
            .query_map([], restore_from_row)
            .map_err(self.err("reading the restore journal"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("reading the restore journal"))
    }

    /// The newest unfinished in-place restore of `target`, if any.
    pub fn unfinished_restore(&self, target: &str) -> Result<Option<RestoreJournal>> {
        Ok(self
            .restores()?
            .into_iter()
            .rev()
            .find(|j| !j.complete && j.target == target))
    }

    pub fn begin_restore(
        &mut self,
        point: PointId,
        target: &str,
        paths: &[String],
        safety: Option<PointId>,
    ) -> Result<i64> {
        let j = RestoreJournal {
            id: self.next_id("restores")?,
            point,
            target: target.to_string(),
            paths: paths.to_vec(),
            safety_point: safety,
            started_at: chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            complete: false,
        };
        self.commit(
            "writing the restore journal",
            vec![put(RESTORES, restore_values(&j))],
        )?;
        Ok(j.id)
    }

    /// Marks every restore of `target` finished: the tree now equals the last one's point.
    pub fn finish_restores(&mut self, target: &str) -> Result<()> {
        let ops = self
            .restores()?
            .into_iter()
            .filter(|j| !j.complete && j.target == target)
            .map(|mut j| {
                j.complete = true;
                put(RESTORES, restore_values(&j))
            })
            .collect();
        self.commit("writing the restore journal", ops)
    }

    /// Runs `f` in one read transaction, so that every query it makes sees the same committed
    /// index. A point's state joins two queries (the changes after it, then the entries): a
    /// snapshot committing a batch between them would mix the states before and after it, and
    /// a long-lived reader (`mount`) runs beside snapshots.
    pub fn read_consistent<T>(&self, f: impl FnOnce(&Index) -> Result<T>) -> Result<T> {
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .map_err(self.err("starting a read transaction"))?;
        let r = f(self);
        // A read transaction has nothing to keep: ending it only lets the WAL move on.
        let end = self
            .conn
            .execute_batch("ROLLBACK")
            .map_err(self.err("ending a read transaction"));
        let v = r?;
        end?;
        Ok(v)
    }

    /// Calls `f` for every replica entry in byte order of path.
    pub fn for_each_entry(&self, mut f: impl FnMut(RelPath, Entry) -> Result<()>) -> Result<()> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {}, sum FROM entries ORDER BY path",
                entries_cols()
            ))
            .map_err(self.err("reading entries"))?;
        let mut rows = st.query([]).map_err(self.err("reading entries"))?;
        while let Some(r) = rows.next().map_err(self.err("reading entries"))? {
            let (path, e) = entry_from_row(r).map_err(self.err("reading entries"))?;
            f(path, e)?;
        }
        Ok(())
    }

    pub fn entry(&self, path: &[u8]) -> Result<Option<Entry>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {}, sum FROM entries WHERE path=?1",
                entries_cols()
            ))
            .and_then(|mut st| st.query_row([path], entry_from_row).optional())
            .map(|o| o.map(|(_, e)| e))
            .map_err(self.err("reading an entry"))
    }

    /// Replica entries whose hardlink leader is not a leading regular file with the same
    /// content: a point with one would restore a follower wrong, or not at all. One join on the
    /// path key, not a pass over every entry.
    pub fn dangling_links(&self) -> Result<Vec<(RelPath, RelPath)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT f.path, f.link FROM entries f LEFT JOIN entries l ON l.path = f.link \
                 WHERE f.link IS NOT NULL AND (l.path IS NULL OR l.kind != 1 OR l.link IS NOT NULL OR l.hash IS NOT f.hash)",
            )
            .map_err(self.err("checking hardlinks"))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err("checking hardlinks"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("checking hardlinks"))
    }

    /// All changes of points after `after`, ordered by path, then point (ascending).
    pub fn changes_after(
        &self,
        after: PointId,
        mut f: impl FnMut(Change) -> Result<()>,
    ) -> Result<()> {
        self.query_changes("point_id > ?1 ORDER BY path, point_id", after, &mut f)
    }

    pub fn changes_of(&self, point: PointId) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        self.query_changes("point_id = ?1 ORDER BY path", point, &mut |c| {
            out.push(c);
            Ok(())
        })?;
        Ok(out)
    }

    /// About what merging point `m` into its successor `s` frees: for each path both changed,
    /// the smaller of their two frames (the merged row keeps one). An estimate for retention
    /// only, so the rows' sums are not checked here: no data is read by it.
    pub fn merge_frees(&self, m: PointId, s: PointId) -> Result<u64> {
        self.conn
            .prepare_cached(
                "SELECT COALESCE(SUM(MIN(COALESCE(a.frame_len, 0), COALESCE(b.frame_len, 0))), 0)
                 FROM changes a JOIN changes b ON a.path = b.path
                 WHERE a.point_id = ?1 AND b.point_id = ?2",
            )
            .and_then(|mut st| st.query_row([m, s], |r| r.get::<_, i64>(0)))
            .map(|n| n.max(0) as u64)
            .map_err(self.err("estimating a merge"))
    }

    /// Changes of `path` in points after `after`, newest first: the chain that rebuilds it.
    pub fn chain_of(&self, path: &[u8], after: PointId) -> Result<Vec<Change>> {
        let sql = format!(
            "SELECT {}, sum FROM changes WHERE path=?1 AND point_id > ?2 ORDER BY point_id DESC",
            changes_cols()
        );
        let mut st = self
            .conn
            .prepare_cached(&sql)
            .map_err(self.err("reading changes"))?;
        let rows = st
            .query_map(params![path, after], change_from_row)
            .map_err(self.err("reading changes"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("reading changes"))
    }

    fn query_changes(
        &self,
        cond: &str,
        arg: PointId,
        f: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<()> {
        let sql = format!("SELECT {}, sum FROM changes WHERE {cond}", changes_cols());
        let mut st = self
            .conn
            .prepare(&sql)
            .map_err(self.err("reading changes"))?;
        let mut rows = st.query([arg]).map_err(self.err("reading changes"))?;
        while let Some(r) = rows.next().map_err(self.err("reading changes"))? {
            f(change_from_row(r).map_err(self.err("reading changes"))?)?;
        }
        Ok(())
    }

    /// The recorded data usage (replica, packs), when there is one.
    pub fn usage(&self) -> Result<Option<(u64, u64)>> {
        Ok(read_usage(&self.conn)
            .map_err(self.err("reading the store's usage"))?
            .map(|(r, p)| (r as u64, p as u64)))
    }

    /// Records a measured usage (not a logged write: derived from the files).
    pub fn set_usage(&mut self, replica: u64, packs: u64) -> Result<()> {
        write_usage(&self.conn, replica as i64, packs as i64)
            .map_err(self.err("recording the store's usage"))
    }

    /// Runs SQLite's own structure check (b-trees, indexes, free list): damage in pages no
    /// row read touches.
    pub fn integrity_problems(&self) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(self.err("checking the index"))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.err("checking the index"))?;
        let out = rows
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("checking the index"))?;
        Ok(out.into_iter().filter(|l| l != "ok").collect())
    }
}

/// What in a rusqlite error says the index itself is damaged, rather than unreachable.
fn damage_in(e: &rusqlite::Error) -> Option<String> {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e {
        rusqlite::Error::FromSqlConversionFailure(_, _, b) if b.is::<RowDamaged>() => {
            Some(b.to_string())
        }
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, DatabaseCorrupt | NotADatabase) =>
        {
            Some(e.to_string())
        }
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => Some(format!("a value has the wrong type: {e}")),
        _ => None,
    }
}

pub fn db(path: &Path, op: &str, source: rusqlite::Error) -> Error {
    match damage_in(&source) {
        Some(what) => Error::Damaged {
            what: format!("index {} ({op}): {what}", path.display()),
        },
        None => Error::Db {
            path: path.to_path_buf(),
            op: op.to_string(),
            source,
        },
    }
}
