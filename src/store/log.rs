//! `index.log`: every write the index commits, as self-describing records appended (and
//! fdatasync'ed) before the SQLite transaction commits (docs/DESIGN.md "The index log").
//! Replaying it into an empty index rebuilds `index.db` when it is lost or damaged
//! (`system_snapshot repair`); the packs and the replica need nothing of the index to be
//! read, once the rows that locate their content are back.
//!
//! A record: `RPLG`, u32 length, body, 16-byte BLAKE3 of the body. The body is one operation
//! on one table with its values, each framed by type and length. A record that fails its sum
//! is skipped (the reader looks for the next `RPLG` whose record checks), and reported.
//! The operations of one append (one index transaction), and of a dump in runs of about a
//! MiB, go in one `Batch` record, zstd-compressed: a first point's log is a quarter of the size.
//! The log is compacted (rewritten as a dump of the index, temp file, fsync, rename) when it
//! has grown past twice its last dump.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;

const MAGIC: &[u8; 4] = b"RPLG";
/// Format 2 added `Batch` records; a log of format 1 reads the same.
const FORMAT: i64 = 2;
/// What a batch may hold once decompressed: more is damage.
const MAX_BATCH: usize = 256 << 20;
/// A dump goes out in batches of about this many bytes of operations.
const DUMP_BATCH: usize = 1 << 20;
/// A record longer than this is damage (the largest real one is one path's row).
const MAX_RECORD: u32 = 64 << 20;

/// The tables a record can name, by code.
pub const TABLES: [&str; 6] = [
    "points",
    "entries",
    "changes",
    "restores",
    "boot_captures",
    "pins",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The log's first record: its format and the length of the dump that follows it.
    Header { dump_len: u64 },
    /// Insert or update a whole row (its values, the sum last).
    Put { table: u8, values: Vec<Value> },
    /// Delete the row with these key values.
    Delete { table: u8, key: Vec<Value> },
    /// Delete the rows whose column (by position in the table's columns) equals the value.
    DeleteWhere { table: u8, column: u8, value: Value },
    /// Delete every row.
    Clear { table: u8 },
    /// These operations, in order (never a header or a batch), compressed as one record.
    Batch(Vec<Op>),
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0),
        Value::Integer(i) => {
            out.push(1);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::Real(r) => {
            out.push(2);
            out.extend_from_slice(&r.to_le_bytes());
        }
        Value::Text(t) => {
            out.push(3);
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
            out.extend_from_slice(t.as_bytes());
        }
        Value::Blob(b) => {
            out.push(4);
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn value(&mut self) -> Option<Value> {
        Some(match self.u8()? {
            0 => Value::Null,
            1 => Value::Integer(i64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            2 => Value::Real(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            3 => {
                let n = self.u32()? as usize;
                Value::Text(String::from_utf8(self.take(n)?.to_vec()).ok()?)
            }
            4 => {
                let n = self.u32()? as usize;
                Value::Blob(self.take(n)?.to_vec())
            }
            _ => return None,
        })
    }
    fn values(&mut self) -> Option<Vec<Value>> {
        let n = self.u32()? as usize;
        (0..n).map(|_| self.value()).collect()
    }
}

impl Op {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let values = |b: &mut Vec<u8>, vs: &[Value]| {
            b.extend_from_slice(&(vs.len() as u32).to_le_bytes());
            vs.iter().for_each(|v| put_value(b, v));
        };
        match self {
            Op::Header { dump_len } => {
                b.extend_from_slice(&[0, 0]);
                values(
                    &mut b,
                    &[Value::Integer(FORMAT), Value::Integer(*dump_len as i64)],
                );
            }
            Op::Put { table, values: vs } => {
                b.extend_from_slice(&[1, *table]);
                values(&mut b, vs);
            }
            Op::Delete { table, key } => {
                b.extend_from_slice(&[2, *table]);
                values(&mut b, key);
            }
            Op::DeleteWhere {
                table,
                column,
                value,
            } => {
                b.extend_from_slice(&[3, *table, *column]);
                put_value(&mut b, value);
            }
            Op::Clear { table } => b.extend_from_slice(&[4, *table]),
            Op::Batch(ops) => {
                let mut raw = Vec::new();
                for op in ops {
                    let e = op.encode();
                    raw.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    raw.extend_from_slice(&e);
                }
                b.extend_from_slice(&[5, 0]);
                b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
                let z = zstd::bulk::compress(&raw, 3).expect("compressing into memory");
                b.extend_from_slice(&z);
            }
        }
        b
    }

    fn decode(body: &[u8]) -> Option<Op> {
        let mut c = Cursor(body);
        let (op, table) = (c.u8()?, c.u8()?);
        if op != 0 && table as usize >= TABLES.len() {
            return None;
        }
        let out = match op {
            0 => {
                let v = c.values()?;
                match v.as_slice() {
                    [Value::Integer(1..=FORMAT), Value::Integer(n)] => Op::Header {
                        dump_len: *n as u64,
                    },
                    _ => return None,
                }
            }
            5 => {
                let raw_len = c.u32()? as usize;
                if raw_len > MAX_BATCH {
                    return None;
                }
                let raw = zstd::bulk::decompress(c.take(c.0.len())?, raw_len).ok()?;
                if raw.len() != raw_len {
                    return None;
                }
                let mut r = Cursor(&raw);
                let mut ops = Vec::new();
                while !r.0.is_empty() {
                    let n = r.u32()? as usize;
                    match Op::decode(r.take(n)?)? {
                        Op::Header { .. } | Op::Batch(_) => return None,
                        op => ops.push(op),
                    }
                }
                Op::Batch(ops)
            }
            1 => Op::Put {
                table,
                values: c.values()?,
            },
            2 => Op::Delete {
                table,
                key: c.values()?,
            },
            3 => Op::DeleteWhere {
                table,
                column: c.u8()?,
                value: c.value()?,
            },
            4 => Op::Clear { table },
            _ => return None,
        };
        c.0.is_empty().then_some(out)
    }

    /// The whole record as written to the file.
    pub fn record(&self) -> Vec<u8> {
        let body = self.encode();
        let mut r = Vec::with_capacity(body.len() + 24);
        r.extend_from_slice(MAGIC);
        r.extend_from_slice(&(body.len() as u32).to_le_bytes());
        r.extend_from_slice(&body);
        r.extend_from_slice(&blake3::hash(&body).as_bytes()[..16]);
        r
    }
}

/// The log of a store opened for writing.
pub struct IndexLog {
    file: File,
    pub path: PathBuf,
}

pub fn log_path(store: &Path) -> PathBuf {
    store.join("index.log")
}

impl IndexLog {
    pub fn open(store: &Path) -> io::Result<Option<IndexLog>> {
        let path = log_path(store);
        match OpenOptions::new().append(true).open(&path) {
            Ok(file) => Ok(Some(IndexLog { file, path })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Appends the records and makes them durable: they reach the disk before the index
    /// transaction they describe commits.
    /// Returns the log's length after them.
    pub fn append(&mut self, ops: &[Op]) -> io::Result<u64> {
        // Batches of about a MiB, as a dump writes them: a transaction of a million rows (the
        // rollback of a huge point) must not make one record past what a reader accepts.
        let mut buf = Vec::new();
        let mut batch: Vec<Op> = Vec::new();
        let mut bytes = 0;
        let emit = |batch: &mut Vec<Op>, buf: &mut Vec<u8>| match batch.len() {
            0 => {}
            1 => buf.extend_from_slice(&batch.pop().expect("one").record()),
            _ => buf.extend_from_slice(&Op::Batch(std::mem::take(batch)).record()),
        };
        for op in ops {
            bytes += op.encode().len() + 4;
            batch.push(op.clone());
            if bytes >= DUMP_BATCH {
                emit(&mut batch, &mut buf);
                bytes = 0;
            }
        }
        emit(&mut batch, &mut buf);
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.len()
    }

    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Cuts the log back to `len` bytes (what the index committed), durably.
    pub fn cut_to(&self, len: u64) -> io::Result<()> {
        if self.len()? > len {
            self.file.set_len(len)?;
            self.file.sync_all()?;
        }
        Ok(())
    }

    /// Whether the log has grown past twice its dump (plus some slack): time to compact.
    pub fn wants_compaction(&self) -> io::Result<bool> {
        let len = self.file.metadata()?.len();
        let mut head = Vec::new();
        File::open(&self.path)?.take(64).read_to_end(&mut head)?;
        let dump = match first_record(&head) {
            Some(Op::Header { dump_len }) => dump_len,
            _ => return Ok(true),
        };
        Ok(len > 2 * dump + (64 << 20))
    }
}

fn first_record(bytes: &[u8]) -> Option<Op> {
    let mut r = Reader { bytes, pos: 0 };
    r.next()?.ok()
}

/// A new log being written in place of the old one: temp file, fsync, rename, directory
/// fsync. A crash leaves the old log or the new one, whole.
pub struct Rewrite {
    file: io::BufWriter<File>,
    tmp: PathBuf,
    store: PathBuf,
    len: u64,
    /// Operations of the next batch, and their encoded size.
    pending: Vec<Op>,
    pending_bytes: usize,
}

impl Rewrite {
    pub fn create(store: &Path) -> io::Result<Rewrite> {
        let tmp = store.join("index.log.new");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut w = Rewrite {
            file: io::BufWriter::with_capacity(1 << 20, file),
            tmp,
            store: store.to_path_buf(),
            len: 0,
            pending: Vec::new(),
            pending_bytes: 0,
        };
        // The dump's length is known only at the end: the fixed-size header is written again.
        w.write(&Op::Header { dump_len: 0 })?;
        Ok(w)
    }

    pub fn push(&mut self, op: Op) -> io::Result<()> {
        self.pending_bytes += op.encode().len() + 4;
        self.pending.push(op);
        if self.pending_bytes >= DUMP_BATCH {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let batch = Op::Batch(std::mem::take(&mut self.pending));
            self.pending_bytes = 0;
            self.write(&batch)?;
        }
        Ok(())
    }

    fn write(&mut self, op: &Op) -> io::Result<()> {
        let r = op.record();
        self.len += r.len() as u64;
        self.file.write_all(&r)
    }

    /// Puts the new log in place; returns its length.
    pub fn finish(mut self) -> io::Result<u64> {
        use std::io::Seek;
        self.flush_batch()?;
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.seek(io::SeekFrom::Start(0))?;
        file.write_all(&Op::Header { dump_len: self.len }.record())?;
        file.sync_all()?;
        std::fs::rename(&self.tmp, log_path(&self.store))?;
        File::open(&self.store)?.sync_all()?;
        Ok(self.len)
    }
}

/// The offset of the first stretch of a pack that is neither a frame (`frames`: offset,
/// length) nor a whole record; None when every byte is accounted for. Only the stretches
/// between frames are read (records are small; frames can be gigabytes). Packs written before
/// they carried records are all frames.
pub fn damaged_pack_record(pack: &File, mut frames: Vec<(u64, u64)>) -> io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let len = pack.metadata()?.len();
    frames.retain(|f| f.1 > 0);
    frames.sort_unstable();
    let mut gaps = Vec::new();
    let mut pos = 0u64;
    for (o, l) in frames {
        if o > pos {
            gaps.push((pos, o));
        }
        pos = pos.max(o + l);
    }
    if pos < len {
        gaps.push((pos, len));
    }
    for (start, end) in gaps {
        let mut bytes = vec![0u8; (end - start) as usize];
        pack.read_exact_at(&mut bytes, start)?;
        let reader = Reader {
            bytes: &bytes,
            pos: 0,
        };
        let mut at = 0usize;
        while at < bytes.len() {
            match reader.at(at) {
                Some((_, n)) => at += n,
                None => return Ok(Some(start + at as u64)),
            }
        }
    }
    Ok(None)
}

/// The offsets of the damaged stretches of a log, read as a stream (a log can be hundreds of
/// megabytes: it is never held whole). The same judgement as `Reader`.
pub fn scan_damage(file: File) -> io::Result<Vec<u64>> {
    let mut r = io::BufReader::with_capacity(1 << 20, file);
    let (mut pos, mut bad, mut in_bad) = (0u64, Vec::new(), false);
    loop {
        let mut head = [0u8; 8];
        let got = read_full(&mut r, &mut head)?;
        if got == 0 {
            return Ok(bad);
        }
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let mut whole = false;
        if got == 8 && &head[..4] == MAGIC && len <= MAX_RECORD {
            let mut rest = vec![0u8; len as usize + 16];
            let n = read_full(&mut r, &mut rest)?;
            let (body, sum) = rest.split_at(len as usize);
            whole = n == rest.len()
                && &blake3::hash(body).as_bytes()[..16] == sum
                && Op::decode(body).is_some();
            if whole {
                pos += 8 + n as u64;
                in_bad = false;
                continue;
            }
            r.seek_relative(-(n as i64))?;
        }
        if !whole && !in_bad {
            bad.push(pos);
            in_bad = true;
        }
        // One byte on: the next record may start anywhere in a damaged stretch.
        r.seek_relative(1 - got as i64)?;
        pos += 1;
    }
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads records in order. A damaged stretch yields one `Err(offset)` and reading resumes at
/// the next record that checks.
pub struct Reader<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
}

impl Reader<'_> {
    fn at(&self, pos: usize) -> Option<(Op, usize)> {
        let b = self.bytes.get(pos..)?;
        if b.len() < 8 || &b[..4] != MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(b[4..8].try_into().ok()?);
        if len > MAX_RECORD || b.len() < 8 + len as usize + 16 {
            return None;
        }
        let body = &b[8..8 + len as usize];
        let sum = &b[8 + len as usize..8 + len as usize + 16];
        if &blake3::hash(body).as_bytes()[..16] != sum {
            return None;
        }
        Some((Op::decode(body)?, 8 + len as usize + 16))
    }
}

impl<'a> Reader<'a> {
    /// Each record (or damaged stretch) with the offset it starts at.
    pub fn enumerate_offsets(mut self) -> impl Iterator<Item = (u64, Result<Op, usize>)> + 'a {
        std::iter::from_fn(move || {
            let at = self.pos as u64;
            self.next().map(|r| (at, r))
        })
    }
}

impl Iterator for Reader<'_> {
    type Item = Result<Op, usize>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        if let Some((op, n)) = self.at(self.pos) {
            self.pos += n;
            return Some(Ok(op));
        }
        let bad = self.pos;
        let mut p = self.pos + 1;
        while p < self.bytes.len() {
            if self.bytes[p..].starts_with(MAGIC) && self.at(p).is_some() {
                break;
            }
            p += 1;
        }
        self.pos = p;
        Some(Err(bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_damaged_one_is_skipped() {
        let ops = vec![
            Op::Header { dump_len: 7 },
            Op::Put {
                table: 1,
                values: vec![
                    Value::Blob(b"etc/\xffhosts".to_vec()),
                    Value::Integer(-3),
                    Value::Null,
                    Value::Text("x".into()),
                ],
            },
            Op::Delete {
                table: 2,
                key: vec![Value::Integer(4), Value::Blob(vec![])],
            },
            Op::DeleteWhere {
                table: 4,
                column: 0,
                value: Value::Integer(9),
            },
            Op::Clear { table: 1 },
        ];
        let mut bytes: Vec<u8> = ops.iter().flat_map(|o| o.record()).collect();
        let got: Vec<Op> = Reader {
            bytes: &bytes,
            pos: 0,
        }
        .map(|r| r.unwrap())
        .collect();
        assert_eq!(got, ops);
        // Flip a byte inside the second record: it alone is lost.
        let second = ops[0].record().len() + 12;
        bytes[second] ^= 0x40;
        let got = records(&bytes);
        assert_eq!(got.len(), 5);
        assert!(got[1].is_err());
        assert_eq!(got[2].as_ref().unwrap(), &ops[2]);
        // The streaming scan judges the same way.
        let streamed = |b: &[u8]| {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(b).unwrap();
            use std::io::Seek;
            f.rewind().unwrap();
            scan_damage(f).unwrap()
        };
        let damaged = |b: &[u8]| -> Vec<u64> {
            Reader { bytes: b, pos: 0 }
                .filter_map(|r| r.err().map(|o| o as u64))
                .collect()
        };
        assert_eq!(streamed(&bytes), damaged(&bytes));
        assert_eq!(streamed(&bytes).len(), 1);
        assert_eq!(
            streamed(&bytes[..bytes.len() - 3]),
            damaged(&bytes[..bytes.len() - 3])
        );
        // A torn tail is one damaged stretch at the end.
        let n = bytes.len();
        let got: Vec<_> = Reader {
            bytes: &bytes[..n - 3],
            pos: 0,
        }
        .collect();
        assert!(got.last().unwrap().is_err());
    }

    /// A transaction of many rows (the rollback of a huge point) goes out in batches of
    /// about a MiB: one record past `MAX_BATCH` would be unreadable.
    #[test]
    fn a_large_append_is_split_into_readable_batches() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(log_path(dir.path()), b"").unwrap();
        let mut log = IndexLog::open(dir.path()).unwrap().unwrap();
        let ops: Vec<Op> = (0..20_000)
            .map(|i| Op::Put {
                table: 1,
                values: vec![
                    Value::Blob(format!("usr/lib/x86_64-linux-gnu/lib{i}.so").into_bytes()),
                    Value::Blob(vec![(i % 251) as u8; 200]),
                ],
            })
            .collect();
        log.append(&ops).unwrap();
        let bytes = std::fs::read(log_path(dir.path())).unwrap();
        let got = records(&bytes);
        assert!(got.len() > 2, "{} records", got.len());
        let mut back = Vec::new();
        for r in got {
            match r.unwrap() {
                Op::Batch(v) => {
                    assert!(v.iter().map(|o| o.encode().len()).sum::<usize>() < 2 * DUMP_BATCH);
                    back.extend(v)
                }
                op => back.push(op),
            }
        }
        assert_eq!(back, ops);
    }

    fn records(bytes: &[u8]) -> Vec<Result<Op, usize>> {
        Reader { bytes, pos: 0 }.collect()
    }

    #[test]
    fn a_batch_round_trips_compressed_and_a_damaged_one_is_skipped_whole() {
        let row = |i: i64| Op::Put {
            table: 1,
            values: vec![
                Value::Blob(format!("usr/share/doc/package-{i}/copyright").into_bytes()),
                Value::Integer(i),
                Value::Blob(vec![7; 32]),
            ],
        };
        let batch = Op::Batch((0..500).map(row).chain([Op::Clear { table: 3 }]).collect());
        let plain: usize = (0..500).map(|i| row(i).record().len()).sum();
        let ops = [Op::Header { dump_len: 0 }, batch, row(9)];
        let mut bytes: Vec<u8> = ops.iter().flat_map(|o| o.record()).collect();
        assert!(
            ops[1].record().len() * 4 < plain,
            "{} bytes for {plain} uncompressed",
            ops[1].record().len()
        );
        let got: Vec<Op> = records(&bytes).into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(got, ops);
        // Nested batches and headers inside a batch are damage.
        for inner in [Op::Batch(vec![row(1)]), Op::Header { dump_len: 1 }] {
            assert_eq!(Op::decode(&Op::Batch(vec![row(2), inner]).encode()), None);
        }
        let at = ops[0].record().len() + 40;
        bytes[at] ^= 1;
        let got = records(&bytes);
        assert_eq!(got.len(), 3);
        assert!(got[1].is_err());
        assert_eq!(got[2].as_ref().unwrap(), &ops[2]);
    }
}
