//! Large files (over `LARGE_FILE`), read leaf by leaf (DESIGN.md "Large files").
//!
//! Only leaves that hold data are read: a leaf inside a hole (`SEEK_DATA`) is zeros without a
//! read. Each leaf's BLAKE3 chaining value goes into the file's leaf map, whose merge is the
//! content hash. With the map of the replica's copy, a leaf whose value did not change is
//! neither staged nor read from the replica: the point stores the old bytes of the 4 KiB blocks
//! that changed (an undo container, applied in place by a rollback) and stages their new bytes
//! (a patch, applied in place to the replica once the point's rows are durable).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use crate::delta::leaves::{
    all_zero, for_each_leaf, leaf_count, leaf_cv, leaf_len, zero_leaf_cv, zeros, LeafMap, LEAF,
};
use crate::delta::{Level, PatchWriter, UndoWriter};

const BLOCK: usize = 4096;

/// The replica's copy of the previous version and its leaf map.
pub struct Prior {
    pub map: LeafMap,
    pub replica: File,
}

/// How a leaf-by-leaf read ended.
pub enum Outcome {
    /// The map of the new content.
    Read(LeafMap),
    /// The file got shorter while it was read.
    Changed,
    /// A replica leaf the patch needs does not match its map: the caller reads the file whole,
    /// the ordinary path, which names the damage.
    ReplicaDamaged,
}

fn changed_while_read(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

/// Reads the whole file into `staged` and returns its map. Holes stay holes, and so does any
/// all-zero 4 KiB block (`rsync -S` does the same in a mirror): what the source allocates is
/// in the entry's `sparse`, which a restore follows.
pub fn stage_whole(file: &File, size: u64, sparse: bool, staged: &File) -> io::Result<Outcome> {
    let (mut cvs, mut zs) = (Vec::new(), Vec::new());
    let read = for_each_leaf(file, size, sparse, |i, data| {
        let off = i as u64 * LEAF;
        match data {
            None => {
                cvs.push(zero_leaf_cv(off, leaf_len(size, i)));
                zs.push(true);
            }
            Some(d) => {
                cvs.push(leaf_cv(off, d));
                let zero = all_zero(d);
                zs.push(zero);
                if !zero {
                    crate::fsio::write_data_runs(staged, d, off)?;
                }
            }
        }
        Ok(())
    });
    match read {
        Err(e) if changed_while_read(&e) => return Ok(Outcome::Changed),
        other => other?,
    }
    staged.set_len(size)?;
    Ok(Outcome::Read(LeafMap {
        size,
        cvs,
        zeros: zs,
    }))
}

/// Reads the leaves of the file that hold data, compares them with the previous version's map,
/// and writes the patch (new bytes of changed blocks) and the undo container (their old bytes).
pub fn patch(
    file: &File,
    size: u64,
    sparse: bool,
    prior: &Prior,
    patch_out: &File,
    undo_out: &File,
    level: Level,
) -> io::Result<Outcome> {
    let old = &prior.map;
    let mut undo = UndoWriter::new(BufWriter::new(undo_out), old.size, level)?;
    let mut patch = PatchWriter::new(BufWriter::new(patch_out), size)?;
    let (mut cvs, mut zs) = (Vec::new(), Vec::new());
    let mut old_buf = vec![0u8; LEAF as usize];
    let mut damaged = false;
    let old_leaf = |i: usize, buf: &mut Vec<u8>| -> io::Result<bool> {
        let len = leaf_len(old.size, i) as usize;
        buf.resize(len, 0);
        prior.replica.read_exact_at(buf, i as u64 * LEAF)?;
        Ok(leaf_cv(i as u64 * LEAF, buf) == old.cvs[i])
    };
    let read = for_each_leaf(file, size, sparse, |i, data| {
        let off = i as u64 * LEAF;
        let len = leaf_len(size, i);
        let old_len = if i < old.cvs.len() {
            leaf_len(old.size, i)
        } else {
            0
        };
        let same_shape = old_len == len;
        let (cv, zero) = match data {
            None if same_shape && old.zeros[i] => (old.cvs[i], true),
            None => (zero_leaf_cv(off, len), true),
            Some(d) => (leaf_cv(off, d), all_zero(d)),
        };
        cvs.push(cv);
        zs.push(zero);
        if (same_shape && cv == old.cvs[i]) || damaged {
            return Ok(());
        }
        if old_len > 0 && !old_leaf(i, &mut old_buf)? {
            damaged = true;
            return Ok(());
        }
        let old_bytes = &old_buf[..old_len as usize];
        let new_bytes = data.unwrap_or(zeros(len));
        diff_blocks(off, old_bytes, new_bytes, &mut undo, &mut patch)
    });
    match read {
        Err(e) if changed_while_read(&e) => return Ok(Outcome::Changed),
        other => other?,
    }
    // Leaves past the new end: their old bytes, all of them.
    for i in leaf_count(size)..old.cvs.len() {
        if damaged {
            break;
        }
        if !old_leaf(i, &mut old_buf)? {
            damaged = true;
            break;
        }
        undo.old_bytes(i as u64 * LEAF, &old_buf)?;
    }
    if damaged {
        return Ok(Outcome::ReplicaDamaged);
    }
    undo.finish()?.flush()?;
    patch.finish()?;
    Ok(Outcome::Read(LeafMap {
        size,
        cvs,
        zeros: zs,
    }))
}

/// The 4 KiB blocks of one leaf that differ (a block one version lacks differs): old bytes to
/// the undo container, new bytes to the patch.
fn diff_blocks(
    off: u64,
    old: &[u8],
    new: &[u8],
    undo: &mut UndoWriter<impl Write>,
    patch: &mut PatchWriter<impl Write>,
) -> io::Result<()> {
    let span = old.len().max(new.len());
    let mut at = 0;
    while at < span {
        if block(old, at) == block(new, at) {
            at += BLOCK;
            continue;
        }
        let start = at;
        while at < span && block(old, at) != block(new, at) {
            at += BLOCK;
        }
        let end = at.min(span);
        if start < old.len() {
            undo.old_bytes(off + start as u64, &old[start..end.min(old.len())])?;
        }
        let mut at_new = start;
        while at_new < end.min(new.len()) {
            // Zero blocks become holes, not written zeros: growth of a sparse image stays sparse.
            let zero = all_zero(block(new, at_new));
            let from = at_new;
            while at_new < end.min(new.len()) && all_zero(block(new, at_new)) == zero {
                at_new += BLOCK;
            }
            let bytes = &new[from..at_new.min(new.len())];
            if zero {
                patch.zeros(off + from as u64, bytes.len() as u64)?;
            } else {
                patch.bytes(off + from as u64, bytes)?;
            }
        }
    }
    Ok(())
}

fn block(v: &[u8], at: usize) -> &[u8] {
    v.get(at..(at + BLOCK).min(v.len())).unwrap_or(&[])
}
