//! The state of one path at one point: what the index stores and what a restore reproduces.
//!
//! Owns the domain types (`Entry`, `Kind`, `Xattrs`) and their byte encodings; knows nothing of
//! files on disk or of SQLite.

use std::fmt;

/// Relative path from the system root, as raw bytes without a leading slash ("" is the root).
pub type RelPath = Vec<u8>;

/// A point's stable id: assigned once, never reused, even after the point is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct PointId(pub i64);

impl std::fmt::Display for PointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for PointId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        s.parse().map(PointId)
    }
}

impl rusqlite::ToSql for PointId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for PointId {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        i64::column_result(v).map(PointId)
    }
}

/// The 32-byte BLAKE3 hash of a regular file's content.
pub type Hash = [u8; 32];

/// The hash of empty content: a zero-length file needs no frame to be rebuilt.
pub fn empty_hash() -> Hash {
    *blake3::hash(b"").as_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    CharDev = 5,
    BlockDev = 6,
    Socket = 7,
}

impl Kind {
    pub fn from_code(code: i64) -> Option<Kind> {
        Some(match code {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::CharDev,
            6 => Kind::BlockDev,
            7 => Kind::Socket,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDev => "char-device",
            Kind::BlockDev => "block-device",
            Kind::Socket => "socket",
        }
    }
}

/// Extended attributes of every namespace, sorted by name. POSIX ACLs are the
/// `system.posix_acl_*` entries, kept as the kernel's raw bytes (numeric ids).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xattrs(pub Vec<(Vec<u8>, Vec<u8>)>);

impl Xattrs {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length-prefixed encoding: u32 count, then per pair u32 name length, name, u32 value
    /// length, value (all little endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (name, value) in &self.0 {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Xattrs> {
        let mut rest = bytes;
        let mut take = |n: usize| -> Option<&[u8]> {
            if rest.len() < n {
                return None;
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Some(head)
        };
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let mut pairs = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let n = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let name = take(n)?.to_vec();
            let v = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let value = take(v)?.to_vec();
            pairs.push((name, value));
        }
        Some(Xattrs(pairs))
    }
}

/// Everything a restore needs to recreate one path, plus the source's inode number and ctime
/// for the quick check (not part of the restored state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Timestamp,
    pub rdev: u64,
    /// Symlink target bytes.
    pub target: Option<Vec<u8>>,
    /// Content hash of regular files.
    pub hash: Option<Hash>,
    pub xattrs: Xattrs,
    /// Inode flags (FS_IOC_GETFLAGS), files and directories only.
    pub flags: u32,
    /// For the second and later paths of a hardlink group: the group's first path.
    pub link: Option<RelPath>,
    /// The file had holes (fewer blocks allocated than its size needs).
    pub sparse: bool,
    pub ino: u64,
    pub ctime: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nsec)
    }
}

impl Entry {
    /// True when the restorable state (not the quick-check fields) is the same.
    pub fn same_state(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.mtime == other.mtime
            && self.rdev == other.rdev
            && self.target == other.target
            && self.xattrs == other.xattrs
            && self.flags == other.flags
            && self.link == other.link
            && self.content_same(other)
    }

    /// True when the content (bytes of a file) is the same; other kinds have none.
    pub fn content_same(&self, other: &Entry) -> bool {
        match (self.kind, other.kind) {
            (Kind::File, Kind::File) => self.hash == other.hash && self.size == other.size,
            (a, b) => a == b,
        }
    }

    /// Quick check: the source path has not been touched since this entry was recorded.
    /// Any write, chmod, chown, xattr or flag change, or link count change moves ctime.
    pub fn unchanged_on_disk(&self, fresh: &Entry) -> bool {
        self.kind == fresh.kind
            && self.ino == fresh.ino
            && self.ctime == fresh.ctime
            && self.size == fresh.size
            && self.mtime == fresh.mtime
            && self.mode == fresh.mode
            && self.uid == fresh.uid
            && self.gid == fresh.gid
            && self.rdev == fresh.rdev
            && self.link == fresh.link
    }
}

/// Something an operation could not do for one path, that did not stop it: the path keeps its
/// previous state (a snapshot) or is left as it is (a restore).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    pub path: String,
    pub message: String,
}

/// Damage found in the store: a point's version of a path (or the store as a whole) that
/// cannot be read back as it was recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Damage {
    /// The point whose version is damaged (None: the store as a whole).
    pub point: Option<PointId>,
    pub path: String,
    pub problem: String,
}

/// Renders a relative path for people: `/etc/hosts`, bytes that are not UTF-8 escaped.
pub fn display_path(path: &[u8]) -> String {
    let mut out = String::from("/");
    out.push_str(&String::from_utf8_lossy(path).replace('\n', "\\n"));
    if path.iter().any(|b| !b.is_ascii()) && std::str::from_utf8(path).is_err() {
        out = String::from("/");
        for &b in path {
            if b.is_ascii_graphic() || b == b' ' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// A byte count for people: `512 B`, `1.5 MiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parent directory of a relative path ("" for a top-level name); None for the root itself.
pub fn parent(path: &[u8]) -> Option<&[u8]> {
    if path.is_empty() {
        return None;
    }
    Some(match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    })
}

/// Last component of a relative path.
pub fn basename(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// `a` joined with `b` ("" is the root).
pub fn join(a: &[u8], b: &[u8]) -> RelPath {
    if a.is_empty() {
        return b.to_vec();
    }
    let mut out = Vec::with_capacity(a.len() + 1 + b.len());
    out.extend_from_slice(a);
    out.push(b'/');
    out.extend_from_slice(b);
    out
}

/// Whether `path` is `ancestor` or lies below it.
pub fn is_within(path: &[u8], ancestor: &[u8]) -> bool {
    ancestor.is_empty()
        || path == ancestor
        || (path.len() > ancestor.len()
            && path.starts_with(ancestor)
            && path[ancestor.len()] == b'/')
}

/// Orders paths so that every directory comes right before its contents ("a", "a/b", "a.b"),
/// unlike plain byte order where "a.b" < "a/b". Sorting by this key keeps subtrees contiguous.
pub fn tree_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |c: u8| if c == b'/' { 0u8 } else { c };
    a.iter().map(|&c| key(c)).cmp(b.iter().map(|&c| key(c)))
}

/// An entry in a third of the memory: varints, and the fields most paths do not have (target,
/// hash, xattrs, leader) only when set. A restore holds every entry of the point until it is
/// written: 184 bytes each unpacked, about 60 packed for a plain file (issue 10: memory per
/// path). Unpacked where it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct Packed(Box<[u8]>);

impl fmt::Debug for Packed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

const HAS_TARGET: u8 = 1;
const HAS_HASH: u8 = 2;
const HAS_XATTRS: u8 = 4;
const HAS_LINK: u8 = 8;
const SPARSE: u8 = 16;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

struct Unpack<'a>(&'a [u8]);

impl<'a> Unpack<'a> {
    fn varint(&mut self) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = self.0[0];
            self.0 = &self.0[1..];
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    fn signed(&mut self) -> i64 {
        let v = self.varint();
        (v >> 1) as i64 ^ -((v & 1) as i64)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        h
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = self.varint() as usize;
        self.take(n).to_vec()
    }
}

impl Packed {
    pub fn new(e: &Entry) -> Packed {
        // Sized for a plain file's entry, so that boxing it shrinks the buffer, never moves it.
        let mut out = Vec::with_capacity(96);
        let bits = [
            (e.target.is_some(), HAS_TARGET),
            (e.hash.is_some(), HAS_HASH),
            (!e.xattrs.is_empty(), HAS_XATTRS),
            (e.link.is_some(), HAS_LINK),
            (e.sparse, SPARSE),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |acc, (_, bit)| acc | bit);
        out.extend_from_slice(&[e.kind as u8, bits]);
        for v in [e.mode.into(), e.uid.into(), e.gid.into(), e.size] {
            put_varint(&mut out, v);
        }
        put_varint(&mut out, zigzag(e.mtime.sec));
        put_varint(&mut out, e.mtime.nsec.into());
        put_varint(&mut out, zigzag(e.ctime.sec));
        put_varint(&mut out, e.ctime.nsec.into());
        for v in [e.ino, e.rdev, e.flags.into()] {
            put_varint(&mut out, v);
        }
        if let Some(h) = &e.hash {
            out.extend_from_slice(h);
        }
        if let Some(t) = &e.target {
            put_bytes(&mut out, t);
        }
        if let Some(l) = &e.link {
            put_bytes(&mut out, l);
        }
        if !e.xattrs.is_empty() {
            put_varint(&mut out, e.xattrs.0.len() as u64);
            for (k, v) in &e.xattrs.0 {
                put_bytes(&mut out, k);
                put_bytes(&mut out, v);
            }
        }
        Packed(out.into_boxed_slice())
    }

    pub fn get(&self) -> Entry {
        let mut u = Unpack(&self.0);
        let [kind, bits] = [u.take(1)[0], u.take(1)[0]];
        let kind = Kind::from_code(kind.into()).expect("packed by Packed::new");
        let (mode, uid, gid) = (u.varint() as u32, u.varint() as u32, u.varint() as u32);
        let size = u.varint();
        let mtime = Timestamp {
            sec: u.signed(),
            nsec: u.varint() as u32,
        };
        let ctime = Timestamp {
            sec: u.signed(),
            nsec: u.varint() as u32,
        };
        let (ino, rdev, flags) = (u.varint(), u.varint(), u.varint() as u32);
        let hash = (bits & HAS_HASH != 0).then(|| u.take(32).try_into().expect("32 bytes"));
        let target = (bits & HAS_TARGET != 0).then(|| u.bytes());
        let link = (bits & HAS_LINK != 0).then(|| u.bytes());
        let mut xattrs = Xattrs::default();
        if bits & HAS_XATTRS != 0 {
            let n = u.varint();
            xattrs.0 = (0..n).map(|_| (u.bytes(), u.bytes())).collect();
        }
        Entry {
            kind,
            mode,
            uid,
            gid,
            size,
            mtime,
            rdev,
            target,
            hash,
            xattrs,
            flags,
            link,
            sparse: bits & SPARSE != 0,
            ino,
            ctime,
        }
    }

    /// The kind without unpacking the rest.
    pub fn kind(&self) -> Kind {
        Kind::from_code(self.0[0].into()).expect("packed by Packed::new")
    }

    /// Whether it follows a hardlink leader, without unpacking the rest.
    pub fn has_link(&self) -> bool {
        self.0[1] & HAS_LINK != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_entry_unpacks_to_the_same_entry() {
        let plain = Entry {
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 17,
            mtime: Timestamp {
                sec: 1_700_000_000,
                nsec: 123_456_789,
            },
            rdev: 0,
            target: None,
            hash: Some([7; 32]),
            xattrs: Xattrs::default(),
            flags: 0,
            link: None,
            sparse: false,
            ino: 42,
            ctime: Timestamp {
                sec: 1_700_000_001,
                nsec: 999_999_999,
            },
        };
        let odd = Entry {
            kind: Kind::File,
            mode: 0o7777,
            uid: u32::MAX,
            gid: 65534,
            size: u64::MAX,
            mtime: Timestamp {
                sec: -86_400 * 365,
                nsec: 1,
            },
            xattrs: Xattrs(vec![
                (b"security.capability".to_vec(), vec![0, 1, 2, 255]),
                (b"user.empty".to_vec(), Vec::new()),
            ]),
            flags: 0x10,
            link: Some(b"usr/bin/leader with \xff".to_vec()),
            sparse: true,
            ino: u64::MAX,
            ctime: Timestamp {
                sec: i64::MIN / 2,
                nsec: 0,
            },
            ..plain.clone()
        };
        let link = Entry {
            kind: Kind::Symlink,
            target: Some(vec![b'x'; 5000]),
            hash: None,
            ..plain.clone()
        };
        let dev = Entry {
            kind: Kind::BlockDev,
            rdev: (8 << 8) | 1,
            hash: None,
            size: 0,
            ..plain.clone()
        };
        for e in [plain, odd, link, dev] {
            let p = Packed::new(&e);
            assert_eq!(p.get(), e);
            assert_eq!(p.kind(), e.kind);
            assert_eq!(p.has_link(), e.link.is_some());
        }
    }

    #[test]
    fn xattrs_round_trip_with_binary_values() {
        let x = Xattrs(vec![
            (
                b"security.capability".to_vec(),
                vec![0, 0, 0, 2, 0, 32, 0, 0],
            ),
            (b"user.\xffname".to_vec(), Vec::new()),
        ]);
        assert_eq!(Xattrs::decode(&x.encode()), Some(x));
        assert_eq!(Xattrs::decode(&[1, 0, 0, 0, 9]), None);
    }

    #[test]
    fn tree_order_keeps_subtrees_together() {
        let mut v: Vec<&[u8]> = vec![b"a.b", b"a/b", b"a", b"a/b/c", b"", b"a0"];
        v.sort_by(|a, b| tree_order(a, b));
        assert_eq!(v, vec![&b""[..], b"a", b"a/b", b"a/b/c", b"a.b", b"a0"]);
    }

    #[test]
    fn path_helpers() {
        assert_eq!(parent(b"etc/hosts"), Some(&b"etc"[..]));
        assert_eq!(parent(b"etc"), Some(&b""[..]));
        assert_eq!(parent(b""), None);
        assert_eq!(basename(b"etc/hosts"), b"hosts");
        assert!(is_within(b"etc/hosts", b"etc"));
        assert!(!is_within(b"etcx", b"etc"));
        assert!(is_within(b"anything", b""));
        assert_eq!(display_path(b"a\xffb"), "/a\\xffb");
    }
}
