//! zstd "patch-from": the old content compressed with the new content as a prefix, long
//! distance matching on, the window sized to the data (research/delta.md, recommendations 1-6).

use std::io::{self, Read, Write};

use zstd::zstd_safe::{self, DParameter};

/// Files above this size are delta-encoded in content-defined chunks (`chunked`), so memory
/// stays bounded whatever the file size.
pub const LARGE_FILE: u64 = 8 << 20;

/// zstd level for new frames. The decoder is the same for every level.
#[derive(Debug, Clone, Copy)]
pub struct Level(pub i32);

impl Default for Level {
    fn default() -> Self {
        Level(9)
    }
}

fn zerr(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))
}

/// windowLog = floor(log2(max(|old|, |new|))) + 1, clamped to what zstd accepts.
fn window_log(old: usize, new: usize) -> u32 {
    let max = old.max(new).max(1) as u64;
    (64 - max.leading_zeros()).clamp(10, 30)
}

/// The frame that rebuilds `old` from `new`, or the plain compression of `old` when that is
/// not larger. Returns the frame and whether it needs `new` to decode (a delta).
pub fn encode_delta(old: &[u8], new: &[u8], level: Level) -> io::Result<(Vec<u8>, bool)> {
    if new.is_empty() {
        return Ok((zstd::bulk::compress(old, level.0)?, false));
    }
    let mut c = zstd::bulk::Compressor::new(level.0)?;
    c.set_compression_level(level.0)?; // before ref_prefix: it resets the dictionary
    c.long_distance_matching(true)?;
    c.window_log(window_log(old.len(), new.len()))?;
    c.include_checksum(false)?; // the rebuilt content is checked against its BLAKE3 hash
    c.include_dictid(false)?;
    c.context_mut().ref_prefix(new).map_err(zerr)?;
    let delta = c.compress(old)?;
    // A delta of at most 1/128 of the old size is kept without compressing the old content a
    // second time (that second pass was 40 % of a busy incremental's zstd time, issue 10): a
    // plain frame could save less than that. It can win by more: with a reference that helps
    // nothing, the match finder for a prefix does worse on very repetitive content than plain
    // zstd (`unrelated_content_falls_back_to_plain`: a 1/16 bound kept the larger frame).
    if delta.len() <= old.len() / 128 {
        return Ok((delta, true));
    }
    let plain = zstd::bulk::compress(old, level.0)?;
    Ok(if delta.len() < plain.len() {
        (delta, true)
    } else {
        (plain, false)
    })
}

/// Rebuilds the old content from a patch-from frame and the new content.
pub fn decode_delta(frame: &[u8], new: &[u8], old_len: u64) -> io::Result<Vec<u8>> {
    let mut d = zstd_safe::DCtx::create();
    d.set_parameter(DParameter::WindowLogMax(31))
        .map_err(zerr)?;
    d.ref_prefix(new).map_err(zerr)?;
    let mut old = Vec::with_capacity(old_len as usize);
    d.decompress(&mut old, frame).map_err(zerr)?;
    if old.len() as u64 != old_len {
        return Err(io::Error::other(format!(
            "delta rebuilt {} bytes, expected {old_len}",
            old.len()
        )));
    }
    Ok(old)
}

/// Streams `content` (`size` bytes) through plain zstd into `out`; memory is the window plus
/// tables.
pub fn encode_full(
    content: &mut dyn Read,
    size: u64,
    out: &mut dyn Write,
    level: Level,
) -> io::Result<()> {
    let mut enc = zstd::stream::write::Encoder::new(out, level.0)?;
    enc.include_checksum(false)?;
    // Tables sized to the content: without it every small deleted file paid for clearing the
    // level's full-size tables (most of the cost of storing it).
    enc.set_pledged_src_size(Some(size))?;
    io::copy(content, &mut enc)?;
    enc.finish()?;
    Ok(())
}

/// A reader of the content a plain frame holds.
pub fn decode_full_reader<'a, R: Read + 'a>(frame: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut dec = zstd::stream::read::Decoder::new(frame)?;
    dec.window_log_max(31)?;
    Ok(Box::new(dec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_round_trip_and_is_small_for_an_edit() {
        let new: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let mut old = new.clone();
        old.splice(5000..5000, b"an inserted line\n".iter().copied());
        let (frame, is_delta) = encode_delta(&old, &new, Level::default()).unwrap();
        assert!(is_delta);
        // ~14 bytes per 128 KiB zstd block plus the edit (research/delta.md, case a).
        let plain = zstd::bulk::compress(&old, 9).unwrap();
        assert!(
            frame.len() < 1000 && frame.len() * 100 < plain.len(),
            "delta is {} bytes",
            frame.len()
        );
        assert_eq!(decode_delta(&frame, &new, old.len() as u64).unwrap(), old);
    }

    #[test]
    fn unrelated_content_falls_back_to_plain() {
        let old: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let new = vec![7u8; 50_000];
        let (frame, is_delta) = encode_delta(&old, &new, Level::default()).unwrap();
        let plain = zstd::bulk::compress(&old, 9).unwrap();
        assert!(frame.len() <= plain.len());
        let back = if is_delta {
            decode_delta(&frame, &new, old.len() as u64).unwrap()
        } else {
            let mut v = Vec::new();
            decode_full_reader(&frame[..])
                .unwrap()
                .read_to_end(&mut v)
                .unwrap();
            v
        };
        assert_eq!(back, old);
    }
}
