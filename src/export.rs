//! `system_snapshot export ID [PATH]`: a point, or one subtree of it, as a POSIX.1-2001 (pax)
//! tar stream that GNU tar extracts exactly with
//! `tar -xp --xattrs --xattrs-include='*' --acls --numeric-owner`.
//!
//! Written here rather than with a tar crate: what GNU tar reads back exactly (its own sparse
//! format 1.0, `SCHILY.acl.*` in text form, `SCHILY.xattr.*` with its escaping, nanosecond
//! times) is a few hundred lines, and each choice below was checked against GNU tar 1.34:
//!
//! - Names are `./` plus the point's path (`./etc/passwd`, the root `./`), as
//!   `tar -C / -c .` writes them: extracting into an empty directory gives the point's tree
//!   below it (for PATH, the subtree at its place: `./etc/...`). A name past 100 bytes or not
//!   ASCII goes into a `path` (`linkpath`) record, raw; one that is not UTF-8 also gets
//!   `hdrcharset=BINARY`, which GNU tar does not know (it warns "Ignoring unknown extended
//!   header keyword") but keeps the bytes anyway, and libarchive needs.
//! - Owners are numeric only: the point records ids, not names, and with no `uname`/`gname`
//!   GNU tar sets the ids, with or without `--numeric-owner`.
//! - Every xattr goes as `SCHILY.xattr.NAME` (`%` and `=` in NAME escaped as GNU tar does), ACLs
//!   included, and each POSIX ACL also as `SCHILY.acl.access`/`SCHILY.acl.default` text with
//!   numeric ids: with `--acls` GNU tar sets ACLs from the text only (it skips the raw
//!   `system.posix_acl_*` xattrs) and gives paths without one the minimal ACL, so nothing
//!   inherited from the directory extracted into stays; without `--acls` it sets the raw
//!   xattrs.
//! - mtime with nanoseconds (`mtime=S.N`); no atime or ctime: the point has neither, and
//!   GNU tar does not set atime when extracting anyway.
//! - Files the point recorded as sparse go in GNU's sparse format 1.0, their holes the
//!   all-zero 4 KiB blocks (as a restore makes them).
//! - Directories come right before their contents, each subtree contiguous: GNU tar sets a
//!   directory's times once it has left the directory, so a later entry inside would move them.
//!
//! What tar cannot carry is left out with a warning: sockets, and inode flags (`chattr`).
//! Memory: the point's entries (packed, as a restore holds them) and one file's content at a
//! time (in memory below `LARGE_FILE`, else in a temp file); the stream is written as it goes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};

use crate::content::Body;
use crate::delta::leaves::{all_zero, for_each_leaf, leaf_cv, LeafMap, LEAF};
use crate::delta::LARGE_FILE;
use crate::error::{Error, IoContext, Result};
use crate::model::{basename, display_path, is_within, Entry, Kind, Packed, RelPath, Timestamp};
use crate::model::{PointId, Warning};
use crate::restore::{DamagedPath, Packs};
use crate::store::Store;

/// What an export wrote, and what it could not.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Members written (hardlinks included).
    pub entries: u64,
    /// Bytes of the archive.
    pub bytes: u64,
    /// Paths left out or written without part of their metadata.
    pub warnings: Vec<Warning>,
    /// Files whose content could not be rebuilt: left out of the archive, with the hardlinks
    /// that would have pointed at them.
    pub damaged: Vec<DamagedPath>,
    /// The store changed while the export read it (a snapshot or a prune ran): damage found
    /// may be that change, not damage.
    pub store_changed: bool,
}

/// Writes point `id`'s subtree at `path` ("" for the whole point) to `out` as a tar stream.
/// An error means the archive is incomplete; damage to single files is not an error (see
/// `ExportReport::damaged`).
pub fn write_tar(
    store: &Store,
    id: PointId,
    path: &[u8],
    out: &mut dyn Write,
) -> Result<ExportReport> {
    if crate::browse::entry_at(store, id, path)?.is_none() {
        return Err(crate::browse::missing(id, path));
    }
    let points_then = point_states(store)?;
    let writer_then = crate::store::writer(&store.dir);
    let mut state = crate::restore::point_state_as(store, id, |e| Packed::new(&e))?;
    state.retain(|(p, _)| is_within(p, path));
    // Unstable: a stable sort would need half the list again as scratch, and paths are unique.
    state.sort_unstable_by(|a, b| crate::model::tree_order(&a.0, &b.0));
    // Leaders with followers in the export; single files are not remembered.
    let grouped: HashSet<RelPath> = state
        .iter()
        .filter(|(_, p)| p.has_link())
        .filter_map(|(_, p)| p.get().link)
        .collect();
    let mut w = Exporter {
        store,
        id,
        packs: Packs::default(),
        tar: Tar { out, written: 0 },
        report: ExportReport::default(),
        grouped,
        carriers: HashMap::new(),
    };
    for (p, packed) in &state {
        w.member(p, &packed.get())?;
    }
    w.tar.finish()?;
    let mut report = w.report;
    report.bytes = w.tar.written;
    report.store_changed = !report.damaged.is_empty()
        && (writer_then.is_some()
            || crate::store::writer(&store.dir).is_some()
            || point_states(store)? != points_then);
    Ok(report)
}

/// Every point's id and whether it is complete: a snapshot or prune changes it.
fn point_states(store: &Store) -> Result<Vec<(PointId, bool)>> {
    Ok(store
        .index
        .points()?
        .into_iter()
        .map(|p| (p.id, p.complete))
        .collect())
}

struct Exporter<'a> {
    store: &'a Store,
    id: PointId,
    packs: Packs,
    tar: Tar<'a>,
    report: ExportReport,
    grouped: HashSet<RelPath>,
    /// Per hardlink group (by the leader the point recorded): the member written with the
    /// content, whose name the others link to; or the member that could not be rebuilt.
    carriers: HashMap<RelPath, std::result::Result<Vec<u8>, RelPath>>,
}

impl Exporter<'_> {
    fn member(&mut self, path: &[u8], e: &Entry) -> Result<()> {
        let name = tar_name(path, e.kind == Kind::Dir);
        if e.flags & crate::fsio::SETTABLE_FLAGS != 0 {
            self.warn(
                path,
                format!(
                    "inode flags `{}` are not in the archive (tar has no field for them): set them again with chattr after extracting, or restore with system_restore",
                    flag_letters(e.flags)
                ),
            );
        }
        let typeflag = match e.kind {
            Kind::File => return self.file(path, &name, e),
            Kind::Socket => {
                self.warn(
                    path,
                    "a socket, left out: tar has no entry for sockets (the program that listens on it makes it again)".into(),
                );
                return Ok(());
            }
            Kind::Dir => b'5',
            Kind::Symlink => b'2',
            Kind::Fifo => b'6',
            Kind::CharDev => b'3',
            Kind::BlockDev => b'4',
        };
        let mut h = Header::new(&name, typeflag, e);
        h.link = e.target.as_deref();
        self.add_metadata(path, &mut h, e);
        self.tar.header(&h).ctx(|| writing(path))?;
        self.report.entries += 1;
        Ok(())
    }

    fn file(&mut self, path: &[u8], name: &[u8], e: &Entry) -> Result<()> {
        let group = match &e.link {
            Some(l) => Some(l.clone()),
            None if self.grouped.contains(path) => Some(path.to_vec()),
            None => None,
        };
        if let Some(carrier) = group.as_ref().and_then(|g| self.carriers.get(g)) {
            match carrier.clone() {
                Ok(target) => {
                    // A hardlink restores nothing of its own: the inode has it all.
                    let mut h = Header::new(name, b'1', e);
                    h.link = Some(&target);
                    self.tar.header(&h).ctx(|| writing(path))?;
                    self.report.entries += 1;
                }
                Err(bad) => self.report.damaged.push(DamagedPath::follower(path, &bad)),
            }
            return Ok(());
        }
        let written = self.file_with_content(path, name, e);
        let carrier = match written {
            Ok(()) => Ok(name.to_vec()),
            Err(Error::Damaged { what }) => {
                self.report.damaged.push(DamagedPath::new(path, what));
                Err(path.to_vec())
            }
            Err(other) => return Err(other),
        };
        if let Some(g) = group {
            self.carriers.insert(g, carrier);
        }
        Ok(())
    }

    /// A regular file with its content, rebuilt and checked before its header is written: a
    /// damaged file is left out whole (`Error::Damaged`), the archive stays well formed.
    fn file_with_content(&mut self, path: &[u8], name: &[u8], e: &Entry) -> Result<()> {
        let mut h = Header::new(name, b'0', e);
        self.add_metadata(path, &mut h, e);
        if e.size == 0 {
            self.tar.header(&h).ctx(|| writing(path))?;
            self.report.entries += 1;
            return Ok(());
        }
        // Each path has its own history, a follower's too (as when a restore makes it lead).
        let (from, want) = match (&e.link, e.hash) {
            (Some(leader), None) => {
                let l = crate::browse::entry_at(self.store, self.id, leader)?
                    .ok_or_else(|| crate::browse::missing(self.id, leader))?;
                (leader.clone(), l)
            }
            _ => (path.to_vec(), e.clone()),
        };
        let (body, unchecked) = crate::restore::rebuild_unchecked(
            self.store,
            &mut self.packs,
            self.id,
            &from,
            &want,
            self.store.staging(),
        )?;
        let replica = format!("replica file {}", display_path(&from));
        let reading = || format!("reading the rebuilt content of {}", display_path(path));
        // A large sparse file as the latest point has it is read as a restore reads it: by its
        // leaves, holes not at all, each leaf checked against the leaf map of its hash (a
        // 20 GiB image with little data takes a second instead of three reads of 20 GiB).
        let leaves = match (unchecked, &body) {
            (Some(hash), Body::File(_)) if e.sparse && e.size > LARGE_FILE => {
                self.store.index.leaf_map(&from, hash, e.size)?
            }
            _ => None,
        };
        let mut body = match (&leaves, unchecked) {
            (None, Some(hash)) => crate::content::check(body, Some(hash), &replica)?
                .expect("check returns the content it checked"),
            _ => body,
        };
        // Where the data is, for a member in the sparse format (None: all of it is data).
        let runs = match (&leaves, &body) {
            (Some(map), Body::File(f)) => Some(leaf_runs(f, map).ctx(reading)?.ok_or_else(
                || Error::Damaged {
                    what: format!("{replica}: content hash does not match the index"),
                },
            )?),
            _ if e.sparse => Some(data_runs(&mut body.reader().ctx(reading)?).ctx(reading)?),
            _ => None,
        };
        let data: u64 = runs.iter().flatten().map(|r| r.1).sum();
        let holes = runs.is_some() && data < e.size;
        if holes {
            let map = sparse_map(runs.as_deref().expect("runs with holes"), e.size);
            h.sparse = Some(e.size);
            h.size = map.len() as u64 + data;
            self.tar.header(&h).ctx(|| writing(path))?;
            self.tar.write(&map).ctx(|| writing(path))?;
        } else {
            self.tar.header(&h).ctx(|| writing(path))?;
        }
        let changed = || {
            // Bytes of other content are in the archive already: it cannot be finished.
            Error::Invalid(format!(
                "{} changed in the store while it was exported (a snapshot running?); the archive is incomplete: export point {} again",
                display_path(path),
                self.id
            ))
        };
        if let (Some(map), Body::File(f), Some(runs)) = (&leaves, &body, &runs) {
            if !self.tar.leaves(f, map, runs).ctx(|| writing(path))? {
                return Err(changed());
            }
        } else {
            // A replica file is read again here, after it was checked: a snapshot that
            // rewrote it since would put other bytes in the archive, so they are checked
            // again on the way.
            let recheck = matches!(body, Body::File(_));
            let mut r = crate::fsio::HashingRead::new(body.reader().ctx(reading)?);
            let runs = runs.as_deref().filter(|_| holes);
            let copied = self.tar.content(&mut r, e.size, runs, path)?;
            if copied != e.size || (recheck && Some(r.hash()) != want.hash) {
                return Err(changed());
            }
        }
        self.tar.pad().ctx(|| writing(path))?;
        self.report.entries += 1;
        Ok(())
    }

    /// The pax records of `e`'s metadata beyond the header: xattrs and ACLs.
    fn add_metadata(&mut self, path: &[u8], h: &mut Header, e: &Entry) {
        for (key, value) in &e.xattrs.0 {
            let acl = match &key[..] {
                b"system.posix_acl_access" => Some("SCHILY.acl.access"),
                b"system.posix_acl_default" => Some("SCHILY.acl.default"),
                _ => None,
            };
            if let Some(acl) = acl {
                match acl_text(value) {
                    Some(text) => h.records.push((acl.into(), text.into_bytes())),
                    None => self.warn(
                        path,
                        format!(
                            "its {} xattr is not an ACL this program can write as text: only the raw xattr is in the archive, which tar sets without --acls",
                            String::from_utf8_lossy(key)
                        ),
                    ),
                }
            }
            h.records.push((xattr_keyword(key), value.clone()));
        }
    }

    fn warn(&mut self, path: &[u8], message: String) {
        self.report.warnings.push(Warning {
            path: display_path(path),
            message,
        });
    }
}

fn writing(path: &[u8]) -> String {
    format!("writing {} to the archive", display_path(path))
}

/// The name of `path` in the archive: `./` and the path, `/` after a directory's.
fn tar_name(path: &[u8], dir: bool) -> Vec<u8> {
    let mut n = b"./".to_vec();
    n.extend_from_slice(path);
    if dir && !path.is_empty() {
        n.push(b'/');
    }
    n
}

/// `lsattr`'s letters for the settable inode flags.
fn flag_letters(flags: u32) -> String {
    const LETTERS: [(u32, char); 13] = [
        (0x1, 's'),
        (0x2, 'u'),
        (0x4, 'c'),
        (0x8, 'S'),
        (0x10, 'i'),
        (0x20, 'a'),
        (0x40, 'd'),
        (0x80, 'A'),
        (0x4000, 'j'),
        (0x1_0000, 'D'),
        (0x2_0000, 'T'),
        (0x80_0000, 'C'),
        (0x2000_0000, 'P'),
    ];
    LETTERS
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// One member's header: the ustar block and the pax records it needs.
struct Header<'a> {
    name: &'a [u8],
    typeflag: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timestamp,
    rdev: u64,
    /// Bytes of data that follow the header.
    size: u64,
    link: Option<&'a [u8]>,
    /// The real size of a file written in GNU's sparse format 1.0.
    sparse: Option<u64>,
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'a> Header<'a> {
    fn new(name: &'a [u8], typeflag: u8, e: &Entry) -> Header<'a> {
        Header {
            name,
            typeflag,
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            rdev: e.rdev,
            size: if typeflag == b'0' { e.size } else { 0 },
            link: None,
            sparse: None,
            records: Vec::new(),
        }
    }

    /// The pax records and the ustar block.
    fn encode(&self) -> (Vec<u8>, [u8; 512]) {
        let mut pax = Vec::new();
        let long = |n: &[u8]| n.len() > 100 || !n.is_ascii();
        let binary = |n: &[u8]| long(n) && std::str::from_utf8(n).is_err();
        if (binary(self.name) && self.sparse.is_none()) || self.link.is_some_and(binary) {
            record(&mut pax, b"hdrcharset", b"BINARY");
        }
        let mut block = [0u8; 512];
        match self.sparse {
            Some(real) => {
                // The header's own name is where a reader without sparse support puts the
                // encoded data, away from the real file (as GNU tar does).
                record(&mut pax, b"GNU.sparse.major", b"1");
                record(&mut pax, b"GNU.sparse.minor", b"0");
                record(&mut pax, b"GNU.sparse.name", self.name);
                record(
                    &mut pax,
                    b"GNU.sparse.realsize",
                    real.to_string().as_bytes(),
                );
                let mut fake = b"./GNUSparseFile.0/".to_vec();
                fake.extend_from_slice(basename(self.name));
                put_name(&mut block[0..100], &fake);
            }
            None => {
                if long(self.name) {
                    record(&mut pax, b"path", self.name);
                }
                put_name(&mut block[0..100], self.name);
            }
        }
        if let Some(l) = self.link {
            if long(l) {
                record(&mut pax, b"linkpath", l);
            }
            put_name(&mut block[157..257], l);
        }
        let mtime_fits = (0..=OCTAL_11 as i64).contains(&self.mtime.sec);
        if self.mtime.nsec != 0 || !mtime_fits {
            record(&mut pax, b"mtime", pax_time(self.mtime).as_bytes());
        }
        if !octal(&mut block[108..116], self.uid.into()) {
            record(&mut pax, b"uid", self.uid.to_string().as_bytes());
        }
        if !octal(&mut block[116..124], self.gid.into()) {
            record(&mut pax, b"gid", self.gid.to_string().as_bytes());
        }
        if !octal(&mut block[124..136], self.size) {
            record(&mut pax, b"size", self.size.to_string().as_bytes());
        }
        for (k, v) in &self.records {
            record(&mut pax, k, v);
        }
        octal(&mut block[100..108], self.mode.into());
        octal(
            &mut block[136..148],
            if mtime_fits { self.mtime.sec as u64 } else { 0 },
        );
        block[156] = self.typeflag;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        if matches!(self.typeflag, b'3' | b'4') {
            // Linux majors (12 bits) and minors (20 bits) fit the 7 octal digits.
            octal(&mut block[329..337], rustix::fs::major(self.rdev).into());
            octal(&mut block[337..345], rustix::fs::minor(self.rdev).into());
        }
        checksum(&mut block);
        (pax, block)
    }
}

/// The largest value of an 11-digit octal field (size, mtime): 8 GiB - 1.
const OCTAL_11: u64 = 0o777_7777_7777;

/// Writes `v` as octal digits filling `field` but for its closing NUL; false (and zeros) when
/// it does not fit.
fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        field[..digits].fill(b'0');
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

/// The ustar name fields hold what fits; a pax record carries the whole name. Bytes that are
/// not ASCII are replaced for readers that know no pax.
fn put_name(field: &mut [u8], name: &[u8]) {
    for (f, &b) in field.iter_mut().zip(name) {
        *f = if b.is_ascii() && b != 0 { b } else { b'_' };
    }
}

fn checksum(block: &mut [u8; 512]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    block[154] = 0;
    block[155] = b' ';
}

/// Appends the pax record `LEN key=value\n`, LEN counting its own digits.
fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// `SCHILY.xattr.NAME`, with `%` and `=` in NAME escaped as GNU tar escapes (and unescapes)
/// them: the first `=` ends the keyword.
fn xattr_keyword(name: &[u8]) -> Vec<u8> {
    let mut k = b"SCHILY.xattr.".to_vec();
    for &b in name {
        match b {
            b'%' => k.extend_from_slice(b"%25"),
            b'=' => k.extend_from_slice(b"%3D"),
            _ => k.push(b),
        }
    }
    k
}

/// `S.N` seconds, the fraction without trailing zeros; before 1970 the value is still
/// `sec + nsec/1e9` (-1.5 is sec -2, nsec 500000000).
fn pax_time(t: Timestamp) -> String {
    let total = i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec);
    let sign = if total < 0 { "-" } else { "" };
    let (whole, frac) = (total.abs() / 1_000_000_000, total.abs() % 1_000_000_000);
    if frac == 0 {
        return format!("{sign}{whole}");
    }
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// A POSIX ACL xattr (the kernel's form: version 2, then tag, permissions, id per entry) as
/// the text `acl_from_text` reads, numeric ids: None when it is not one.
fn acl_text(raw: &[u8]) -> Option<String> {
    let (head, entries) = raw.split_at_checked(4)?;
    if head != 2u32.to_le_bytes() || entries.len() % 8 != 0 {
        return None;
    }
    let mut out = String::new();
    for e in entries.chunks(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let who = match tag {
            0x01 => "user:".to_string(),
            0x02 => format!("user:{id}"),
            0x04 => "group:".to_string(),
            0x08 => format!("group:{id}"),
            0x10 => "mask:".to_string(),
            0x20 => "other:".to_string(),
            _ => return None,
        };
        if perm & !7 != 0 {
            return None;
        }
        let bit = |b: u16, c: char| if perm & b != 0 { c } else { '-' };
        out.push_str(&format!(
            "{who}:{}{}{}\n",
            bit(4, 'r'),
            bit(2, 'w'),
            bit(1, 'x')
        ));
    }
    Some(out)
}

/// The data of content as (offset, length) runs: every 4 KiB block (by file offset) that is
/// not all zeros, adjacent ones merged. The rest are the holes a restore leaves.
fn data_runs(r: &mut dyn Read) -> io::Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut off = 0u64;
    crate::fsio::with_io_buffer(|buf| -> io::Result<()> {
        loop {
            let n = crate::fsio::read_full(r, buf)?;
            add_data_blocks(&mut runs, &buf[..n], off);
            off += n as u64;
            if n < buf.len() {
                return Ok(());
            }
        }
    })?;
    Ok(runs)
}

/// Adds the blocks of `chunk` (the content at `off`, a multiple of 4 KiB) that are not all
/// zeros to `runs`.
fn add_data_blocks(runs: &mut Vec<(u64, u64)>, chunk: &[u8], off: u64) {
    for (i, block) in chunk.chunks(4096).enumerate() {
        if all_zero(block) {
            continue;
        }
        let (at, len) = (off + i as u64 * 4096, block.len() as u64);
        match runs.last_mut() {
            Some(last) if last.0 + last.1 == at => last.1 += len,
            _ => runs.push((at, len)),
        }
    }
}

/// The data runs of a large sparse file by its leaves (`delta::leaves`), each leaf read
/// checked against `map`, holes not read: None when the file does not match the map.
fn leaf_runs(src: &File, map: &LeafMap) -> io::Result<Option<Vec<(u64, u64)>>> {
    let mut runs = Vec::new();
    let mut intact = true;
    let read = for_each_leaf(src, map.size, true, |i, data| {
        let off = i as u64 * LEAF;
        match data {
            None => intact &= map.zeros[i],
            Some(d) if leaf_cv(off, d) == map.cvs[i] => add_data_blocks(&mut runs, d, off),
            Some(_) => intact = false,
        }
        Ok(())
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
        Ok(()) => Ok(intact.then_some(runs)),
    }
}

/// GNU sparse 1.0's map, the start of the member's data: the number of runs, then each run's
/// offset and length, one decimal number a line, padded to a block. A file that ends in a hole
/// gets a last empty run at its end, so that the extracted file has its full size.
fn sparse_map(runs: &[(u64, u64)], size: u64) -> Vec<u8> {
    let ends_in_hole = runs.last().is_none_or(|r| r.0 + r.1 < size);
    let count = runs.len() + usize::from(ends_in_hole);
    let mut map = format!("{count}\n");
    for (off, len) in runs {
        map.push_str(&format!("{off}\n{len}\n"));
    }
    if ends_in_hole {
        map.push_str(&format!("{size}\n0\n"));
    }
    let mut map = map.into_bytes();
    map.resize(map.len().next_multiple_of(512), 0);
    map
}

/// The stream: headers and data in 512-byte blocks.
struct Tar<'a> {
    out: &'a mut dyn Write,
    written: u64,
}

const ZEROS: [u8; 512] = [0; 512];

impl Tar<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let short = (512 - self.written % 512) % 512;
        self.write(&ZEROS[..short as usize])
    }

    /// The member's pax header (when it needs one) and its ustar header.
    fn header(&mut self, h: &Header) -> io::Result<()> {
        let (pax, block) = h.encode();
        if !pax.is_empty() {
            let mut name = b"./PaxHeaders/".to_vec();
            name.extend_from_slice(
                match basename(h.name.strip_suffix(b"/").unwrap_or(h.name)) {
                    b"" => b".",
                    b => b,
                },
            );
            let x = Header {
                name: &name,
                typeflag: b'x',
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: Timestamp {
                    sec: h.mtime.sec.clamp(0, OCTAL_11 as i64),
                    nsec: 0,
                },
                rdev: 0,
                size: pax.len() as u64,
                link: None,
                sparse: None,
                records: Vec::new(),
            };
            // Its own name is only a label (long or odd names are cut and replaced).
            let (_, xblock) = x.encode();
            self.write(&xblock)?;
            self.write(&pax)?;
            self.pad()?;
        }
        self.write(&block)
    }

    /// Copies `size` bytes of content from `r` (all of them, or only the `runs` of a sparse
    /// member); the number of bytes `r` gave, up to `size` and one more. Fewer or more than
    /// `size` leave the member malformed: the caller stops the archive.
    fn content(
        &mut self,
        r: &mut dyn Read,
        size: u64,
        runs: Option<&[(u64, u64)]>,
        path: &[u8],
    ) -> Result<u64> {
        let mut off = 0u64;
        let mut next = 0usize;
        crate::fsio::with_io_buffer(|buf| -> Result<u64> {
            loop {
                let n = crate::fsio::read_full(r, buf)
                    .ctx(|| format!("reading the rebuilt content of {}", display_path(path)))?;
                // Never more than the header announced.
                let chunk = &buf[..(n as u64).min(size.saturating_sub(off)) as usize];
                match runs {
                    None => self.write(chunk),
                    Some(runs) => self.runs_in(chunk, off, runs, &mut next),
                }
                .ctx(|| writing(path))?;
                off += n as u64;
                if n < buf.len() || off > size {
                    return Ok(off);
                }
            }
        })
    }

    /// Writes what of `chunk`, the content at `off`, lies in `runs`, from run `next` on
    /// (advanced past the runs done).
    fn runs_in(
        &mut self,
        chunk: &[u8],
        off: u64,
        runs: &[(u64, u64)],
        next: &mut usize,
    ) -> io::Result<()> {
        let end = off + chunk.len() as u64;
        while let Some(&(start, len)) = runs.get(*next) {
            let (from, to) = (start.max(off), (start + len).min(end));
            if from < to {
                self.write(&chunk[(from - off) as usize..(to - off) as usize])?;
            }
            if start + len > end {
                break;
            }
            *next += 1;
        }
        Ok(())
    }

    /// The `runs` of a large sparse file, read by its leaves (holes not read), each checked
    /// against `map` again: false when one no longer matches (the file changed since
    /// `leaf_runs` read it, and the member is short).
    fn leaves(&mut self, src: &File, map: &LeafMap, runs: &[(u64, u64)]) -> io::Result<bool> {
        let mut intact = true;
        let mut next = 0usize;
        let read = for_each_leaf(src, map.size, true, |i, data| {
            let off = i as u64 * LEAF;
            match data {
                None => intact &= map.zeros[i],
                Some(d) if leaf_cv(off, d) == map.cvs[i] => {
                    self.runs_in(d, off, runs, &mut next)?
                }
                Some(_) => intact = false,
            }
            Ok(())
        });
        match read {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
            Ok(()) => Ok(intact && next == runs.len()),
        }
    }

    /// The end of the archive: two zero blocks, then zeros up to a whole record of 20 blocks,
    /// as GNU tar writes it.
    fn finish(&mut self) -> Result<()> {
        let what = || "writing the end of the archive".to_string();
        self.write(&ZEROS).ctx(what)?;
        self.write(&ZEROS).ctx(what)?;
        while self.written % (20 * 512) != 0 {
            self.write(&ZEROS).ctx(what)?;
        }
        self.out.flush().ctx(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind) -> Entry {
        Entry {
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: Timestamp {
                sec: 1_700_000_000,
                nsec: 0,
            },
            rdev: 0,
            target: None,
            hash: None,
            xattrs: Default::default(),
            flags: 0,
            link: None,
            sparse: false,
            ino: 0,
            ctime: Default::default(),
        }
    }

    fn records(pax: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = pax;
        while !rest.is_empty() {
            let sp = rest.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            let rec = &rest[sp + 1..len];
            assert_eq!(rest[len - 1], b'\n', "a record ends with its newline");
            let eq = rec.iter().position(|&b| b == b'=').unwrap();
            out.push((
                String::from_utf8_lossy(&rec[..eq]).into_owned(),
                rec[eq + 1..rec.len() - 1].to_vec(),
            ));
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn a_record_counts_its_own_length_across_a_digit_boundary() {
        for n in 0..300 {
            let mut out = Vec::new();
            let value = vec![b'v'; n];
            record(&mut out, b"key", &value);
            let sp = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn times_keep_nanoseconds_and_dates_before_1970() {
        let t = |sec, nsec| pax_time(Timestamp { sec, nsec });
        assert_eq!(t(1_500_000_000, 500_000_000), "1500000000.5");
        assert_eq!(t(1_500_000_000, 123_456_789), "1500000000.123456789");
        assert_eq!(t(1_500_000_000, 0), "1500000000");
        assert_eq!(t(-2, 500_000_000), "-1.5");
        assert_eq!(t(-1, 999_999_999), "-0.000000001");
        assert_eq!(t(-100, 0), "-100");
    }

    #[test]
    fn acls_are_written_as_text_with_numeric_ids() {
        let mut raw = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 7, 1234),
            (4, 4, u32::MAX),
            (8, 4, 55),
            (0x10, 7, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            raw.extend_from_slice(&tag.to_le_bytes());
            raw.extend_from_slice(&perm.to_le_bytes());
            raw.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(
            acl_text(&raw).as_deref(),
            Some("user::rw-\nuser:1234:rwx\ngroup::r--\ngroup:55:r--\nmask::rwx\nother::r--\n")
        );
        assert_eq!(acl_text(&raw[..7]), None);
        raw[0] = 1;
        assert_eq!(acl_text(&raw), None, "another version");
    }

    #[test]
    fn xattr_names_escape_what_would_end_the_keyword() {
        assert_eq!(xattr_keyword(b"user.a=b%c"), b"SCHILY.xattr.user.a%3Db%25c");
    }

    #[test]
    fn holes_are_the_zero_blocks_and_the_map_ends_at_the_size() {
        let mut data = vec![0u8; 5 * 4096 + 100];
        data[4096] = 1;
        data[2 * 4096 + 5] = 1;
        data[5 * 4096 + 99] = 1;
        let runs = data_runs(&mut &data[..]).unwrap();
        assert_eq!(runs, vec![(4096, 2 * 4096), (5 * 4096, 100)]);
        let map = sparse_map(&runs, data.len() as u64);
        assert_eq!(map.len(), 512);
        assert!(map.starts_with(b"2\n4096\n8192\n20480\n100\n\0"));
        data[5 * 4096 + 99] = 0;
        let runs = data_runs(&mut &data[..]).unwrap();
        assert_eq!(runs, vec![(4096, 2 * 4096)]);
        assert!(sparse_map(&runs, data.len() as u64).starts_with(b"2\n4096\n8192\n20580\n0\n\0"));
        assert!(sparse_map(&[], 1 << 20).starts_with(b"1\n1048576\n0\n\0"));
    }

    #[test]
    fn what_the_ustar_fields_cannot_hold_goes_into_pax_records() {
        let mut e = entry(Kind::File);
        e.uid = 4_000_000_000;
        e.gid = 7;
        e.size = 9 << 30;
        e.mtime = Timestamp {
            sec: -2,
            nsec: 500_000_000,
        };
        let long = [b"./".to_vec(), vec![b'd'; 5000], b"/caf\xe9".to_vec()].concat();
        let h = Header::new(&long, b'0', &e);
        let (pax, block) = h.encode();
        let r = records(&pax);
        let get = |k: &str| r.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("path"), Some(long.clone()));
        assert_eq!(get("hdrcharset").as_deref(), Some(&b"BINARY"[..]));
        assert_eq!(get("uid").as_deref(), Some(&b"4000000000"[..]));
        assert_eq!(get("gid"), None, "it fits the header");
        assert_eq!(get("size").as_deref(), Some(&b"9663676416"[..]));
        assert_eq!(get("mtime").as_deref(), Some(&b"-1.5"[..]));
        assert_eq!(&block[116..124], b"0000007\0");
        assert_eq!(&block[124..136], b"00000000000\0");
        assert_eq!(&block[257..265], b"ustar\x0000");
        // The checksum counts its own field as spaces.
        let mut copy = block;
        copy[148..156].fill(b' ');
        let sum: u32 = copy.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(&block[148..154], format!("{sum:06o}").as_bytes());
    }

    #[test]
    fn a_short_ascii_name_needs_no_pax_header() {
        let e = entry(Kind::Dir);
        let (pax, block) = Header::new(b"./etc/", b'5', &e).encode();
        assert!(pax.is_empty());
        assert_eq!(&block[..7], b"./etc/\0");
        assert_eq!(&block[136..148], b"14524770400\0");
    }

    /// GNU tar reads the size of a member past 8 GiB from the pax record (listed from an
    /// archive file whose data is a hole, so nothing is written).
    #[test]
    fn gnu_tar_lists_a_member_past_8_gib_with_its_size() {
        let Ok(v) = std::process::Command::new("tar").arg("--version").output() else {
            eprintln!("skipped: tar is not installed");
            return;
        };
        if !String::from_utf8_lossy(&v.stdout).contains("GNU tar") {
            eprintln!("skipped: tar is not GNU tar");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.tar");
        let mut e = entry(Kind::File);
        e.size = (8 << 30) + 5;
        let mut file = std::fs::File::create(&path).unwrap();
        let mut tar = Tar {
            out: &mut file,
            written: 0,
        };
        tar.header(&Header::new(b"./big", b'0', &e)).unwrap();
        let data_end = tar.written + e.size.next_multiple_of(512);
        file.set_len(data_end).unwrap();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).unwrap();
        Tar {
            out: &mut file,
            written: data_end,
        }
        .finish()
        .unwrap();
        let out = std::process::Command::new("tar")
            .args(["-tvf"])
            .arg(&path)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{listing} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            listing.contains(" 8589934597 ") && listing.contains("./big"),
            "{listing}"
        );
    }
}
