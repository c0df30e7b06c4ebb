//! A point's pack: its reverse frames appended one after the other. The index holds each
//! frame's (offset, length); a pack is fsynced before any row that points into it commits.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

pub struct PackWriter {
    file: io::BufWriter<File>,
    len: u64,
}

impl PackWriter {
    /// Creates the pack, discarding what an interrupted run may have left under that name.
    pub fn create(path: &Path) -> io::Result<PackWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(PackWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            len: 0,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends what `write` produces as one frame; returns its (offset, length).
    pub fn append(
        &mut self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<(u64, u64)> {
        let start = self.len;
        let mut counting = Counting {
            inner: &mut self.file,
            n: 0,
        };
        write(&mut counting)?;
        let n = counting.n;
        self.len += n;
        Ok((start, n))
    }

    /// Appends self-describing records (a point's row, a change row): the pack can be read
    /// without the index (`repair`). They are not frames: no row points at them.
    pub fn append_records(&mut self, ops: &[super::log::Op]) -> io::Result<()> {
        for op in ops {
            let r = op.record();
            self.file.write_all(&r)?;
            self.len += r.len() as u64;
        }
        Ok(())
    }

    /// Flushes buffered frames to the file (durability comes from the store's syncfs).
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads one frame out of an open pack, by position: many readers can share the file.
pub struct FrameReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> FrameReader<'a> {
    pub fn new(file: &'a File, (offset, len): (u64, u64)) -> FrameReader<'a> {
        FrameReader {
            file,
            pos: offset,
            end: offset + len,
        }
    }

    pub fn to_vec(mut self) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity((self.end - self.pos) as usize);
        self.read_to_end(&mut v)?;
        Ok(v)
    }
}

impl Read for FrameReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "pack is shorter than its index says",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}
