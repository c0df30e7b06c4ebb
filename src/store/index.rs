//! The SQLite index (WAL, synchronous=FULL): points, the replica's entries, per-point changes.
//! Authoritative for all metadata. Migrations are append-only, tracked by `PRAGMA user_version`,
//! applied in one exclusive transaction; a store newer than this binary is refused.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use crate::error::{Error, Result};
use crate::model::{Entry, Hash, Kind, RelPath, Timestamp, Xattrs};

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_restores.sql"),
    include_str!("../../migrations/0003_boot.sql"),
];

pub type PointId = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    fn parse(s: &str) -> PointKind {
        match s {
            "manual" => PointKind::Manual,
            "pre-restore" => PointKind::PreRestore,
            _ => PointKind::Scheduled,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    pub id: PointId,
    pub created_at: String,
    pub kind: &'static str,
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
}

/// An in-place restore that was started (and, while `running`, not finished).
#[derive(Debug, Clone)]
pub struct RestoreJournal {
    pub id: i64,
    pub point: PointId,
    pub safety_point: Option<PointId>,
    pub started_at: String,
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

pub struct Index {
    pub conn: Connection,
    pub path: PathBuf,
}

const ENTRY_COLS: &str = "kind, mode, uid, gid, size, mtime_s, mtime_ns, rdev, target, hash, xattrs, flags, link, sparse";

fn hash_from(v: Option<Vec<u8>>) -> Option<Hash> {
    v.and_then(|b| b.try_into().ok())
}

/// Reads the ENTRY_COLS starting at column `at`; ino/ctime are filled by the caller.
fn entry_at(row: &Row, at: usize) -> rusqlite::Result<Option<Entry>> {
    let kind: Option<i64> = row.get(at)?;
    let Some(kind) = kind.and_then(Kind::from_code) else {
        return Ok(None);
    };
    let xattrs: Option<Vec<u8>> = row.get(at + 10)?;
    Ok(Some(Entry {
        kind,
        mode: row.get(at + 1)?,
        uid: row.get(at + 2)?,
        gid: row.get(at + 3)?,
        size: row.get::<_, i64>(at + 4)? as u64,
        mtime: Timestamp {
            sec: row.get(at + 5)?,
            nsec: row.get(at + 6)?,
        },
        rdev: row.get::<_, i64>(at + 7)? as u64,
        target: row.get(at + 8)?,
        hash: hash_from(row.get(at + 9)?),
        xattrs: xattrs.and_then(|b| Xattrs::decode(&b)).unwrap_or_default(),
        flags: row.get(at + 11)?,
        link: row.get(at + 12)?,
        sparse: row.get(at + 13)?,
        ino: 0,
        ctime: Timestamp::default(),
    }))
}

type EntryParams = (
    i64,
    u32,
    u32,
    u32,
    i64,
    i64,
    u32,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    u32,
    Option<Vec<u8>>,
    bool,
);

fn entry_params(e: &Entry) -> EntryParams {
    (
        e.kind as i64,
        e.mode,
        e.uid,
        e.gid,
        e.size as i64,
        e.mtime.sec,
        e.mtime.nsec,
        e.rdev as i64,
        e.target.clone(),
        e.hash.map(|h| h.to_vec()),
        (!e.xattrs.is_empty()).then(|| e.xattrs.encode()),
        e.flags,
        e.link.clone(),
        e.sparse,
    )
}

impl Index {
    pub fn open(store: &Path, create: bool) -> Result<Index> {
        let path = store.join("index.db");
        if !create && !path.exists() {
            return Err(Error::NoStore {
                store: store.to_path_buf(),
            });
        }
        let conn = Connection::open(&path).map_err(|e| db(&path, "opening", e))?;
        let mut idx = Index { conn, path };
        idx.conn
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;")
            .map_err(|e| db(&idx.path, "setting pragmas", e))?;
        idx.migrate(store)?;
        Ok(idx)
    }

    fn migrate(&mut self, store: &Path) -> Result<()> {
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
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)
                .map_err(|e| db(&path, &format!("applying migration {}", i + 1), e))?;
        }
        tx.pragma_update(None, "user_version", supported)
            .map_err(|e| db(&path, "writing schema version", e))?;
        tx.commit()
            .map_err(|e| db(&path, "committing migration", e))
    }

    pub fn err(&self, op: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        let op = op.to_string();
        move |e| db(&self.path, &op, e)
    }

    pub fn points(&self) -> Result<Vec<Point>> {
        let mut st = self
            .conn
            .prepare("SELECT id, created_at, kind, label, state, sources, files, bytes, stored_bytes, warnings, excludes FROM points ORDER BY id")
            .map_err(self.err("listing points"))?;
        let rows = st
            .query_map([], |r| {
                let sources: String = r.get(5)?;
                Ok(Point {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    kind: PointKind::parse(&r.get::<_, String>(2)?).as_str(),
                    label: r.get(3)?,
                    complete: r.get::<_, String>(4)? == "complete",
                    sources: serde_json::from_str(&sources).unwrap_or_default(),
                    files: r.get::<_, i64>(6)? as u64,
                    bytes: r.get::<_, i64>(7)? as u64,
                    stored_bytes: r.get::<_, i64>(8)? as u64,
                    warnings: r.get::<_, i64>(9)? as u64,
                    excludes: r
                        .get::<_, Option<String>>(10)?
                        .and_then(|j| serde_json::from_str(&j).ok()),
                })
            })
            .map_err(self.err("listing points"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.err("listing points"))
    }

    pub fn complete_points(&self) -> Result<Vec<Point>> {
        Ok(self.points()?.into_iter().filter(|p| p.complete).collect())
    }

    pub fn point(&self, id: PointId) -> Result<Point> {
        self.complete_points()?
            .into_iter()
            .find(|p| p.id == id)
            .ok_or(Error::NoSuchPoint { id })
    }

    pub fn insert_point(
        &self,
        created_at: &str,
        kind: PointKind,
        label: Option<&str>,
        sources: &[String],
        excludes: &[String],
    ) -> Result<PointId> {
        let json = |v: &[String]| serde_json::to_string(v).expect("strings serialize");
        self.conn
            .execute(
                "INSERT INTO points (created_at, kind, label, state, sources, excludes) VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
                params![created_at, kind.as_str(), label, json(sources), json(excludes)],
            )
            .map_err(self.err("recording a new point"))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn complete_point(
        &self,
        id: PointId,
        files: u64,
        bytes: u64,
        stored: u64,
        warnings: u64,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE points SET state='complete', files=?2, bytes=?3, stored_bytes=?4, warnings=?5 WHERE id=?1",
                params![id, files as i64, bytes as i64, stored as i64, warnings as i64],
            )
            .map_err(self.err("marking the point complete"))?;
        Ok(())
    }

    /// Records the boot area captured with a running point: (disk, manifest JSON) pairs, or
    /// the reason none was captured.
    pub fn insert_boot(
        &mut self,
        point: PointId,
        captures: &[(String, String)],
        note: Option<&str>,
    ) -> Result<()> {
        let path = self.path.clone();
        let e = |op: &'static str| db_op(&path, op);
        let tx = self
            .conn
            .transaction()
            .map_err(e("recording the boot area"))?;
        for (disk, manifest) in captures {
            tx.execute(
                "INSERT INTO boot_captures (point_id, disk, manifest) VALUES (?1, ?2, ?3)",
                params![point, disk, manifest],
            )
            .map_err(e("recording the boot area"))?;
        }
        tx.execute(
            "UPDATE points SET boot_note=?2 WHERE id=?1",
            params![point, note],
        )
        .map_err(e("recording the boot area"))?;
        tx.commit().map_err(e("recording the boot area"))
    }

    /// The boot manifests of a point (JSON), and the note saying why there are none.
    pub fn boot_of(&self, point: PointId) -> Result<(Vec<String>, Option<String>)> {
        let manifests = self.boot_manifests(Some(point))?;
        let note = self
            .conn
            .query_row("SELECT boot_note FROM points WHERE id=?1", [point], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err("reading the boot area"))?
            .flatten();
        Ok((manifests, note))
    }

    /// The boot manifests (JSON) of one point, or of every point (to know which boot files
    /// are still referred to).
    pub fn boot_manifests(&self, point: Option<PointId>) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT manifest FROM boot_captures WHERE ?1 IS NULL OR point_id=?1 ORDER BY point_id, disk",
            )
            .map_err(self.err("reading the boot area"))?;
        let rows = st
            .query_map([point], |r| r.get(0))
            .map_err(self.err("reading the boot area"))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(self.err("reading the boot area"))
    }

    /// The newest unfinished in-place restore of `target`, if any.
    pub fn unfinished_restore(&self, target: &str) -> Result<Option<RestoreJournal>> {
        self.conn
            .query_row(
                "SELECT id, point_id, safety_point, started_at FROM restores WHERE target=?1 AND state='running' ORDER BY id DESC LIMIT 1",
                [target],
                |r| Ok(RestoreJournal { id: r.get(0)?, point: r.get(1)?, safety_point: r.get(2)?, started_at: r.get(3)? }),
            )
            .optional()
            .map_err(self.err("reading the restore journal"))
    }

    pub fn begin_restore(
        &self,
        point: PointId,
        target: &str,
        paths: &[String],
        safety: Option<PointId>,
    ) -> Result<i64> {
        let started = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        self.conn
            .execute(
                "INSERT INTO restores (point_id, target, paths, safety_point, started_at, state) VALUES (?1, ?2, ?3, ?4, ?5, 'running')",
                params![point, target, serde_json::to_string(paths).expect("strings serialize"), safety, started],
            )
            .map_err(self.err("writing the restore journal"))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Marks every restore of `target` finished: the tree now equals the last one's point.
    pub fn finish_restores(&self, target: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE restores SET state='complete' WHERE target=?1",
                [target],
            )
            .map_err(self.err("writing the restore journal"))?;
        Ok(())
    }

    /// Calls `f` for every replica entry in byte order of path.
    pub fn for_each_entry(&self, mut f: impl FnMut(RelPath, Entry) -> Result<()>) -> Result<()> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT path, {ENTRY_COLS}, ino, ctime_s, ctime_ns FROM entries ORDER BY path"
            ))
            .map_err(self.err("reading entries"))?;
        let mut rows = st.query([]).map_err(self.err("reading entries"))?;
        while let Some(r) = rows.next().map_err(self.err("reading entries"))? {
            let path: Vec<u8> = r.get(0).map_err(self.err("reading entries"))?;
            let mut e = entry_at(r, 1)
                .map_err(self.err("reading entries"))?
                .expect("entries rows have a kind");
            e.ino = r.get::<_, i64>(15).map_err(self.err("reading entries"))? as u64;
            e.ctime = Timestamp {
                sec: r.get(16).map_err(self.err("reading entries"))?,
                nsec: r.get(17).map_err(self.err("reading entries"))?,
            };
            f(path, e)?;
        }
        Ok(())
    }

    pub fn entry(&self, path: &[u8]) -> Result<Option<Entry>> {
        self.conn
            .query_row(
                &format!("SELECT {ENTRY_COLS} FROM entries WHERE path=?1"),
                [path],
                |r| entry_at(r, 0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(self.err("reading an entry"))
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

    /// Changes of `path` in points after `after`, newest first: the chain that rebuilds it.
    pub fn chain_of(&self, path: &[u8], after: PointId) -> Result<Vec<Change>> {
        let sql = format!("SELECT point_id, path, content, {ENTRY_COLS}, frame_offset, frame_len, new_hash FROM changes WHERE path=?1 AND point_id > ?2 ORDER BY point_id DESC");
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
        let sql = format!("SELECT point_id, path, content, {ENTRY_COLS}, frame_offset, frame_len, new_hash FROM changes WHERE {cond}");
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
}

fn change_from_row(r: &Row) -> rusqlite::Result<Change> {
    let content: String = r.get(2)?;
    let off: Option<i64> = r.get(17)?;
    let len: Option<i64> = r.get(18)?;
    Ok(Change {
        point: r.get(0)?,
        path: r.get(1)?,
        content: ContentKind::parse(&content).unwrap_or(ContentKind::Same),
        old: entry_at(r, 3)?,
        frame: off.zip(len).map(|(o, l)| (o as u64, l as u64)),
        new_hash: hash_from(r.get(19)?),
    })
}

/// Maps a rusqlite error of operation `op` on the index at `path`; usable while the
/// connection is mutably borrowed by a transaction.
pub fn db_op(path: &Path, op: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    let path = path.to_path_buf();
    move |e| db(&path, op, e)
}

pub fn db(path: &Path, op: &str, source: rusqlite::Error) -> Error {
    Error::Db {
        path: path.to_path_buf(),
        op: op.to_string(),
        source,
    }
}

/// Writes of one batch, all in one transaction.
pub fn upsert_entry(tx: &Transaction, path: &[u8], e: &Entry) -> rusqlite::Result<()> {
    let p = entry_params(e);
    tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO entries (path, {ENTRY_COLS}, ino, ctime_s, ctime_ns) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)"
    ))?
    .execute(params![path, p.0, p.1, p.2, p.3, p.4, p.5, p.6, p.7, p.8, p.9, p.10, p.11, p.12, p.13, e.ino as i64, e.ctime.sec, e.ctime.nsec])?;
    Ok(())
}

pub fn delete_entry(tx: &Transaction, path: &[u8]) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM entries WHERE path=?1")?
        .execute([path])?;
    Ok(())
}

pub fn insert_change(tx: &Transaction, c: &Change) -> rusqlite::Result<()> {
    let (off, len) = match c.frame {
        Some((o, l)) => (Some(o as i64), Some(l as i64)),
        None => (None, None),
    };
    let new_hash = c.new_hash.map(|h| h.to_vec());
    let mut st = tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO changes (point_id, path, content, {ENTRY_COLS}, frame_offset, frame_len, new_hash) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)"
    ))?;
    match &c.old {
        Some(e) => {
            let p = entry_params(e);
            st.execute(params![
                c.point,
                c.path,
                c.content.as_str(),
                p.0,
                p.1,
                p.2,
                p.3,
                p.4,
                p.5,
                p.6,
                p.7,
                p.8,
                p.9,
                p.10,
                p.11,
                p.12,
                p.13,
                off,
                len,
                new_hash
            ])?
        }
        None => st.execute(params![
            c.point,
            c.path,
            c.content.as_str(),
            None::<i64>,
            None::<i64>,
            None::<i64>,
            None::<i64>,
            None::<i64>,
            None::<i64>,
            None::<i64>,
            None::<i64>,
            None::<Vec<u8>>,
            None::<Vec<u8>>,
            None::<Vec<u8>>,
            None::<i64>,
            None::<Vec<u8>>,
            None::<i64>,
            off,
            len,
            new_hash
        ])?,
    };
    Ok(())
}
