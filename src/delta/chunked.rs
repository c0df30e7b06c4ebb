//! Large files (research/delta.md, recommendation 3): both versions are cut into
//! content-defined chunks, the two chunk-hash sequences are aligned with `similar`, unchanged
//! runs become COPY ops and changed runs are patch-from'd in pieces of at most 8 MiB against
//! the matching part of the new file (± 1 MiB). Memory is bounded by the piece size.
//!
//! Container: `RPC1`, old length (u64 LE), then ops until tag 0xFF:
//! `0` COPY new_offset u64, len u64 — `1` PATCH ref_offset u64, ref_len u64, out_len u64,
//! frame_len u64, frame (a plain zstd frame when ref_len is 0).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use similar::{Algorithm, DiffOp};

use super::codec::{decode_delta, encode_delta, Level};

const MAGIC: &[u8; 4] = b"RPC1";
const MIN_CHUNK: u64 = 16 << 10;
const MAX_CHUNK: u64 = 256 << 10;
const CUT_MASK: u64 = (1 << 16) - 1; // about one cut per 64 KiB past the minimum
const PIECE: u64 = 8 << 20;
const MARGIN: u64 = 1 << 20;

const TAG_COPY: u8 = 0;
const TAG_PATCH: u8 = 1;
const TAG_END: u8 = 0xFF;

struct Chunk {
    off: u64,
    len: u64,
    hash: u128,
}

fn gear_table() -> [u64; 256] {
    // splitmix64: a fixed table, so chunk boundaries are the same in every version of the tool.
    let mut t = [0u64; 256];
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for v in t.iter_mut() {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        *v = z ^ (z >> 31);
    }
    t
}

fn chunks(f: &File, len: u64) -> io::Result<Vec<Chunk>> {
    let gear = gear_table();
    let mut out = Vec::with_capacity((len / (64 << 10)) as usize + 1);
    let mut buf = vec![0u8; 1 << 20];
    let (mut pos, mut start, mut h) = (0u64, 0u64, 0u64);
    let mut hasher = blake3::Hasher::new();
    while pos < len {
        let want = buf.len().min((len - pos) as usize);
        f.read_exact_at(&mut buf[..want], pos)?;
        let mut seg = 0;
        for (i, &b) in buf[..want].iter().enumerate() {
            h = (h << 1).wrapping_add(gear[b as usize]);
            let size = pos + i as u64 + 1 - start;
            if (size >= MIN_CHUNK && h & CUT_MASK == 0) || size >= MAX_CHUNK {
                hasher.update(&buf[seg..=i]);
                out.push(chunk_done(&mut hasher, start, size));
                start += size;
                seg = i + 1;
            }
        }
        hasher.update(&buf[seg..want]);
        pos += want as u64;
    }
    if pos > start {
        out.push(chunk_done(&mut hasher, start, pos - start));
    }
    Ok(out)
}

fn chunk_done(hasher: &mut blake3::Hasher, off: u64, len: u64) -> Chunk {
    let h = hasher.finalize();
    hasher.reset();
    let hash = u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"));
    Chunk { off, len, hash }
}

fn span(c: &[Chunk], from: usize, n: usize, file_len: u64) -> (u64, u64) {
    if n == 0 {
        let at = c.get(from).map_or(file_len, |c| c.off);
        return (at, at);
    }
    (c[from].off, c[from + n - 1].off + c[from + n - 1].len)
}

/// Writes the container that rebuilds `old` (a file of `old_len` bytes) from `new`.
pub fn encode_chunked(
    old: &File,
    old_len: u64,
    new: &File,
    new_len: u64,
    out: &mut dyn Write,
    level: Level,
) -> io::Result<()> {
    let old_c = chunks(old, old_len)?;
    let new_c = chunks(new, new_len)?;
    let new_h: Vec<u128> = new_c.iter().map(|c| c.hash).collect();
    let old_h: Vec<u128> = old_c.iter().map(|c| c.hash).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    // `similar` calls its first argument "old": here it is NEW, since the delta rebuilds OLD.
    let ops =
        similar::capture_diff_slices_deadline(Algorithm::Myers, &new_h, &old_h, Some(deadline));
    out.write_all(MAGIC)?;
    out.write_all(&old_len.to_le_bytes())?;
    for op in ops {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => {
                let (n0, n1) = span(&new_c, old_index, len, new_len);
                debug_assert_eq!(n1 - n0, {
                    let (a, b) = span(&old_c, new_index, len, old_len);
                    b - a
                });
                write_ops(out, &[TAG_COPY], &[n0, n1 - n0])?;
            }
            DiffOp::Replace {
                old_index,
                old_len: ref_n,
                new_index,
                new_len: n,
            } => {
                let region = span(&old_c, new_index, n, old_len);
                let reference = span(&new_c, old_index, ref_n, new_len);
                patch_region(old, region, new, new_len, reference, out, level)?;
            }
            DiffOp::Insert {
                old_index,
                new_index,
                new_len: n,
            } => {
                let region = span(&old_c, new_index, n, old_len);
                let reference = span(&new_c, old_index, 0, new_len);
                patch_region(old, region, new, new_len, reference, out, level)?;
            }
            DiffOp::Delete { .. } => {}
        }
    }
    out.write_all(&[TAG_END])
}

fn write_ops(out: &mut dyn Write, tag: &[u8], nums: &[u64]) -> io::Result<()> {
    out.write_all(tag)?;
    for n in nums {
        out.write_all(&n.to_le_bytes())?;
    }
    Ok(())
}

/// PATCH ops for OLD bytes `region`, each piece against the proportional part of the NEW
/// region `reference`, widened by MARGIN.
fn patch_region(
    old: &File,
    region: (u64, u64),
    new: &File,
    new_len: u64,
    reference: (u64, u64),
    out: &mut dyn Write,
    level: Level,
) -> io::Result<()> {
    let (r0, r1) = region;
    let total = (r1 - r0).max(1);
    let mut at = r0;
    while at < r1 {
        let piece_len = PIECE.min(r1 - at);
        let scale = |x: u64| {
            reference.0
                + ((x - r0) as u128 * (reference.1 - reference.0) as u128 / total as u128) as u64
        };
        let ref0 = scale(at).saturating_sub(MARGIN);
        let ref1 = (scale(at + piece_len) + MARGIN)
            .min(new_len)
            .min(ref0 + piece_len + 2 * MARGIN);
        let mut piece = vec![0u8; piece_len as usize];
        old.read_exact_at(&mut piece, at)?;
        let mut reference_bytes = vec![0u8; (ref1 - ref0) as usize];
        new.read_exact_at(&mut reference_bytes, ref0)?;
        let (frame, is_delta) = encode_delta(&piece, &reference_bytes, level)?;
        let (ro, rl) = if is_delta {
            (ref0, ref1 - ref0)
        } else {
            (0, 0)
        };
        write_ops(out, &[TAG_PATCH], &[ro, rl, piece_len, frame.len() as u64])?;
        out.write_all(&frame)?;
        at += piece_len;
    }
    Ok(())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chunked delta: {what}"))
}

/// The container's magic, then the old version's length.
fn read_header(frame: &mut dyn Read) -> io::Result<u64> {
    let mut magic = [0u8; 4];
    frame.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("bad magic"));
    }
    read_u64(frame)
}

fn read_u64(r: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Rebuilds the old content from the container and `new`, writing it to `out`.
pub fn decode_chunked(frame: &mut dyn Read, new: &File, out: &mut dyn Write) -> io::Result<u64> {
    let old_len = read_header(frame)?;
    let mut written = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut tag = [0u8; 1];
        frame.read_exact(&mut tag)?;
        match tag[0] {
            TAG_COPY => {
                let (off, len) = (read_u64(frame)?, read_u64(frame)?);
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(1 << 20) as usize;
                    buf.resize(n, 0);
                    new.read_exact_at(&mut buf, off + done)?;
                    out.write_all(&buf)?;
                    done += n as u64;
                }
                written += len;
            }
            TAG_PATCH => {
                let (ro, rl, out_len, flen) = (
                    read_u64(frame)?,
                    read_u64(frame)?,
                    read_u64(frame)?,
                    read_u64(frame)?,
                );
                if out_len > PIECE || flen > 2 * PIECE || rl > PIECE + 2 * MARGIN {
                    return Err(invalid("piece out of bounds"));
                }
                let mut f = vec![0u8; flen as usize];
                frame.read_exact(&mut f)?;
                let mut reference = vec![0u8; rl as usize];
                new.read_exact_at(&mut reference, ro)?;
                let piece = if rl == 0 {
                    zstd::bulk::decompress(&f, out_len as usize)?
                } else {
                    decode_delta(&f, &reference, out_len)?
                };
                out.write_all(&piece)?;
                written += out_len;
            }
            TAG_END => break,
            _ => return Err(invalid("unknown op")),
        }
    }
    if written != old_len {
        return Err(invalid("length mismatch"));
    }
    Ok(written)
}

/// Writes a container whose every COPY is the identity (the same offset of the new version) and
/// every PATCH a plain zstd frame of old bytes: what a leaf-by-leaf snapshot stores for a large
/// file it patches in place. Such a container rebuilds the old version from the new one like
/// any other (`decode_chunked`), and also from any mix of the two (`apply_in_place`): it holds
/// every old byte that differs, so a rollback can undo a patch that was cut short.
pub struct UndoWriter<W: Write> {
    out: W,
    covered: u64,
    old_len: u64,
    level: Level,
}

impl<W: Write> UndoWriter<W> {
    pub fn new(mut out: W, old_len: u64, level: Level) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&old_len.to_le_bytes())?;
        Ok(UndoWriter {
            out,
            covered: 0,
            old_len,
            level,
        })
    }

    /// The old version's `bytes` at `at`; calls come in increasing order of `at`, and every
    /// old byte not given is the same in the new version.
    pub fn old_bytes(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        debug_assert!(at >= self.covered && at + bytes.len() as u64 <= self.old_len);
        if at > self.covered {
            write_ops(
                &mut self.out,
                &[TAG_COPY],
                &[self.covered, at - self.covered],
            )?;
        }
        for piece in bytes.chunks(PIECE as usize) {
            let frame = zstd::bulk::compress(piece, self.level.0)?;
            let n = [0, 0, piece.len() as u64, frame.len() as u64];
            write_ops(&mut self.out, &[TAG_PATCH], &n)?;
            self.out.write_all(&frame)?;
        }
        self.covered = at + bytes.len() as u64;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        if self.old_len > self.covered {
            let n = [self.covered, self.old_len - self.covered];
            write_ops(&mut self.out, &[TAG_COPY], &n)?;
        }
        self.out.write_all(&[TAG_END])?;
        Ok(self.out)
    }
}

/// Whether a container can be applied in place (`UndoWriter`'s kind).
pub fn is_in_place(frame: &mut dyn Read) -> io::Result<bool> {
    Ok(walk_in_place(frame, None)?.is_some())
}

/// Turns `file` (the new version, the old one, or a mix left by an interrupted patch) back
/// into the old version: writes every old byte the container holds and cuts the file to the
/// old length. Refuses (InvalidData) a container that is not of `UndoWriter`'s kind.
pub fn apply_in_place(frame: &mut dyn Read, file: &File) -> io::Result<u64> {
    walk_in_place(frame, Some(file))?
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "chunked delta: not in place"))
}

fn walk_in_place(frame: &mut dyn Read, file: Option<&File>) -> io::Result<Option<u64>> {
    let old_len = read_header(frame)?;
    let mut at = 0u64;
    loop {
        let mut tag = [0u8; 1];
        frame.read_exact(&mut tag)?;
        match tag[0] {
            TAG_COPY => {
                let (off, len) = (read_u64(frame)?, read_u64(frame)?);
                if off != at {
                    return Ok(None);
                }
                at += len;
            }
            TAG_PATCH => {
                let _reference_offset = read_u64(frame)?;
                let (rl, out_len, flen) = (read_u64(frame)?, read_u64(frame)?, read_u64(frame)?);
                if rl != 0 {
                    return Ok(None);
                }
                if out_len > PIECE || flen > 2 * PIECE {
                    return Err(invalid("piece out of bounds"));
                }
                let mut f = vec![0u8; flen as usize];
                frame.read_exact(&mut f)?;
                if let Some(file) = file {
                    let piece = zstd::bulk::decompress(&f, out_len as usize)?;
                    if piece.len() as u64 != out_len {
                        return Err(invalid("piece length mismatch"));
                    }
                    file.write_all_at(&piece, at)?;
                }
                at += out_len;
            }
            TAG_END => break,
            _ => return Err(invalid("unknown op")),
        }
    }
    if at != old_len {
        return Err(invalid("length mismatch"));
    }
    if let Some(file) = file {
        file.set_len(old_len)?;
    }
    Ok(Some(old_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn large_file_insertion_costs_little_and_round_trips() {
        let new_bytes = pseudo_random(20 << 20, 42);
        let mut old_bytes = new_bytes.clone();
        old_bytes.splice(9_000_000..9_000_000, pseudo_random(1000, 7));
        old_bytes[15_000_000..15_004_096].copy_from_slice(&pseudo_random(4096, 9));
        let (old, new) = (file_with(&old_bytes), file_with(&new_bytes));
        let mut frame = Vec::new();
        encode_chunked(
            &old,
            old_bytes.len() as u64,
            &new,
            new_bytes.len() as u64,
            &mut frame,
            Level(3),
        )
        .unwrap();
        assert!(frame.len() < 64 << 10, "delta is {} bytes", frame.len());
        let mut back = Vec::new();
        let n = decode_chunked(&mut &frame[..], &new, &mut back).unwrap();
        assert_eq!(n as usize, old_bytes.len());
        assert!(back == old_bytes);
    }

    #[test]
    fn unrelated_large_file_round_trips() {
        let new_bytes = pseudo_random(9 << 20, 1);
        let old_bytes = pseudo_random(10 << 20, 2);
        let (old, new) = (file_with(&old_bytes), file_with(&new_bytes));
        let mut frame = Vec::new();
        encode_chunked(
            &old,
            old_bytes.len() as u64,
            &new,
            new_bytes.len() as u64,
            &mut frame,
            Level(1),
        )
        .unwrap();
        let mut back = Vec::new();
        decode_chunked(&mut &frame[..], &new, &mut back).unwrap();
        assert!(back == old_bytes);
    }

    #[test]
    fn undo_container_rebuilds_the_old_version_from_the_new_and_from_a_half_patched_file() {
        let old_bytes = pseudo_random(10 << 20, 3);
        let mut new_bytes = old_bytes.clone();
        new_bytes[4_000_000..4_000_700].copy_from_slice(&pseudo_random(700, 4));
        new_bytes.truncate(9 << 20);
        let mut undo = UndoWriter::new(Vec::new(), old_bytes.len() as u64, Level(3)).unwrap();
        undo.old_bytes(3_997_696, &old_bytes[3_997_696..4_001_792])
            .unwrap();
        undo.old_bytes(9 << 20, &old_bytes[9 << 20..]).unwrap();
        let frame = undo.finish().unwrap();
        assert!(is_in_place(&mut &frame[..]).unwrap());
        let new = file_with(&new_bytes);
        let mut back = Vec::new();
        decode_chunked(&mut &frame[..], &new, &mut back).unwrap();
        assert!(back == old_bytes);
        // Half patched: the edit reached the file, the truncation did not.
        let mut half = old_bytes.clone();
        half[4_000_000..4_000_700].copy_from_slice(&new_bytes[4_000_000..4_000_700]);
        for start in [half, new_bytes, old_bytes.clone()] {
            let f = file_with(&start);
            apply_in_place(&mut &frame[..], &f).unwrap();
            let mut got = vec![0u8; old_bytes.len()];
            f.read_exact_at(&mut got, 0).unwrap();
            assert_eq!(f.metadata().unwrap().len(), old_bytes.len() as u64);
            assert!(got == old_bytes);
        }
        let mut ordinary = Vec::new();
        let old = file_with(&old_bytes);
        let new = file_with(&pseudo_random(10 << 20, 5));
        encode_chunked(&old, 10 << 20, &new, 10 << 20, &mut ordinary, Level(1)).unwrap();
        assert!(!is_in_place(&mut &ordinary[..]).unwrap());
    }
}
