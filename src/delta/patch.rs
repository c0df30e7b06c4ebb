//! Staged patches: the new bytes of a large file's changed blocks, written into the replica's
//! copy in place (DESIGN.md "Large files"). `RPP1`, the new size (u64 LE), then records
//! (offset u64, length u64, bytes) to the end of the file. A length with `ZERO_RUN` set carries
//! no bytes: the range becomes a hole, so growth of a sparse image stays sparse.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use super::leaves::LEAF;

const MAGIC: &[u8; 4] = b"RPP1";
const ZERO_RUN: u64 = 1 << 63;

pub struct PatchWriter<W: Write>(W);

impl<W: Write> PatchWriter<W> {
    pub fn new(mut out: W, new_size: u64) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&new_size.to_le_bytes())?;
        Ok(PatchWriter(out))
    }

    /// New bytes at `at` (at most one leaf).
    pub fn bytes(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(&at.to_le_bytes())?;
        self.0.write_all(&(bytes.len() as u64).to_le_bytes())?;
        self.0.write_all(bytes)
    }

    /// `len` zero bytes at `at` (at most one leaf).
    pub fn zeros(&mut self, at: u64, len: u64) -> io::Result<()> {
        self.0.write_all(&at.to_le_bytes())?;
        self.0.write_all(&(len | ZERO_RUN).to_le_bytes())
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Writes the patch read from `r` into `file` and sets its new size. `after_write` runs after
/// every record (a failpoint in tests).
pub fn apply_patch(r: &mut dyn Read, file: &File, after_write: &dyn Fn()) -> io::Result<()> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("staged patch: {what}"));
    let mut head = [0u8; 12];
    r.read_exact(&mut head)?;
    if &head[..4] != MAGIC {
        return Err(bad("bad magic"));
    }
    let size = u64::from_le_bytes(head[4..].try_into().expect("8 bytes"));
    let mut buf = Vec::new();
    loop {
        let mut rec = [0u8; 16];
        match r.read_exact(&mut rec) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let off = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let word = u64::from_le_bytes(rec[8..].try_into().expect("8 bytes"));
        let (len, zero) = (word & !ZERO_RUN, word & ZERO_RUN != 0);
        if len > LEAF {
            return Err(bad("record out of bounds"));
        }
        buf.resize(len as usize, 0);
        if zero {
            let flags =
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            if rustix::fs::fallocate(file, flags, off, len).is_err() {
                buf.fill(0);
                file.write_all_at(&buf, off)?;
            }
        } else {
            r.read_exact(&mut buf)?;
            file.write_all_at(&buf, off)?;
        }
        after_write();
    }
    file.set_len(size)
}
