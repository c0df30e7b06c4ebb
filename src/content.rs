//! Rebuilding the content a path had at an older point: start from the replica file and step
//! back through the chain of reverse frames, newest first. Every step's result is checked
//! against the hash the index recorded for it, so damage is found, never passed on.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::BorrowedFd;

use rustix::fs::{Mode, OFlags};

use crate::delta::{decode_chunked, decode_delta, decode_full_reader, LARGE_FILE};
use crate::error::{Error, IoContext, Result};
use crate::fsio;
use crate::model::{display_path, Hash, Kind};
use crate::store::{Change, ContentKind, FrameReader};

/// Content of one file version: small ones in memory, large ones in an unnamed temp file.
pub enum Body {
    Mem(Vec<u8>),
    File(File),
}

impl Body {
    pub fn reader(&mut self) -> io::Result<Box<dyn Read + '_>> {
        Ok(match self {
            Body::Mem(v) => Box::new(&v[..]),
            Body::File(f) => {
                f.seek(SeekFrom::Start(0))?;
                Box::new(&*f)
            }
        })
    }

    pub fn hash(&mut self) -> io::Result<Hash> {
        Ok(fsio::hash_reader(self.reader()?)?.0)
    }

    pub fn into_bytes(mut self) -> io::Result<Vec<u8>> {
        match self {
            Body::Mem(v) => Ok(v),
            Body::File(_) => {
                let mut v = Vec::new();
                self.reader()?.read_to_end(&mut v)?;
                Ok(v)
            }
        }
    }

    pub fn into_file(self, tmp_dir: BorrowedFd) -> io::Result<File> {
        match self {
            Body::File(f) => Ok(f),
            Body::Mem(v) => {
                let mut f = temp_file(tmp_dir)?;
                f.write_all(&v)?;
                Ok(f)
            }
        }
    }
}

/// An unnamed file in `dir` (O_TMPFILE): it disappears with its last fd, even after a crash.
pub fn temp_file(dir: BorrowedFd) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// The content of `change.path` at the point before `change.point`, given its content at
/// `change.point` (`newer`). None when the path was not a regular file then.
pub fn step_back(
    pack: &File,
    change: &Change,
    newer: Option<Body>,
    tmp_dir: BorrowedFd,
) -> Result<Option<Body>> {
    let Some(old) = change.old.as_ref().filter(|o| o.kind == Kind::File) else {
        return Ok(None);
    };
    let at = || {
        format!(
            "rebuilding {} before point {}",
            display_path(&change.path),
            change.point
        )
    };
    if change.is_lost() {
        return Err(Error::Damaged {
            what: format!(
                "{}: that version was already damaged in the store when point {} was taken",
                at(),
                change.point
            ),
        });
    }
    let frame = change.frame.unwrap_or((0, 0));
    let body = match change.content {
        ContentKind::Absent => return Ok(None),
        ContentKind::Same => newer.ok_or_else(|| Error::Damaged {
            what: format!("{}: no newer content to keep", at()),
        })?,
        ContentKind::Full => {
            let mut dec = decode_full_reader(FrameReader::new(pack, frame))
                .map_err(|e| undecodable(&at(), e))?;
            if old.size <= LARGE_FILE {
                let mut v = Vec::with_capacity(old.size as usize);
                dec.read_to_end(&mut v).map_err(|e| undecodable(&at(), e))?;
                Body::Mem(v)
            } else {
                let mut f = temp_file(tmp_dir).ctx(at)?;
                io::copy(&mut dec, &mut f).map_err(|e| undecodable(&at(), e))?;
                Body::File(f)
            }
        }
        ContentKind::Delta => {
            let newer = newer.ok_or_else(|| Error::Damaged {
                what: format!("{}: delta without newer content", at()),
            })?;
            let reference = newer.into_bytes().ctx(at)?;
            let f = FrameReader::new(pack, frame).to_vec().ctx(at)?;
            Body::Mem(decode_delta(&f, &reference, old.size).map_err(|e| damaged(&at(), e))?)
        }
        ContentKind::Chunked => {
            let newer = newer.ok_or_else(|| Error::Damaged {
                what: format!("{}: delta without newer content", at()),
            })?;
            let reference = newer.into_file(tmp_dir).ctx(at)?;
            let mut out = temp_file(tmp_dir).ctx(at)?;
            decode_chunked(&mut FrameReader::new(pack, frame), &reference, &mut out)
                .map_err(|e| damaged(&at(), e))?;
            Body::File(out)
        }
    };
    check(body, old.hash, &at())
}

/// zstd's complaints about a frame carry no errno: the frame is damaged, and only that file's
/// version is lost. An errno (EIO, ENOSPC in staging) is an I/O failure of the operation, and
/// an early end is left to the caller, who knows the pack was truncated.
fn undecodable(what: &str, e: io::Error) -> Error {
    if e.raw_os_error().is_none() && e.kind() != io::ErrorKind::UnexpectedEof {
        damaged(what, e)
    } else {
        Error::io(what, e)
    }
}

fn damaged(what: &str, e: io::Error) -> Error {
    Error::Damaged {
        what: format!("{what}: {e}"),
    }
}

/// Returns `body` if its hash is `want`, else a damage error naming `what`.
pub fn check(mut body: Body, want: Option<Hash>, what: &str) -> Result<Option<Body>> {
    let got = body.hash().map_err(|e| damaged(what, e))?;
    if Some(got) != want {
        return Err(Error::Damaged {
            what: format!("{what}: content hash does not match the index"),
        });
    }
    Ok(Some(body))
}

/// The replica's file for `path`, opened for reading, as a body (not yet checked).
pub fn replica_body(replica: BorrowedFd, path: &[u8]) -> Result<Body> {
    let fd = fsio::open_beneath(replica, path, OFlags::RDONLY).map_err(|e| Error::Damaged {
        what: format!("replica file {} cannot be opened: {e}", display_path(path)),
    })?;
    Ok(Body::File(File::from(fd)))
}
