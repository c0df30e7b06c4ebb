//! Leaf maps of large files: the BLAKE3 chaining value of every aligned 1 MiB leaf of a file,
//! and which leaves are all zeros. BLAKE3 is a tree, so the content hash of the whole file is
//! the merge of its leaves' chaining values (`LeafMap::root`) — the same hash `blake3::hash`
//! gives. With the map of the previous version, a snapshot reads and hashes only the leaves
//! that hold data, re-uses the values of holes that stayed holes, and finds the leaves that
//! changed without reading the old copy (issue 10: a 20 GiB disk image with a 700-byte edit).

use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, Mode};
use blake3::hazmat::{ChainingValue, HasherExt};

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use crate::model::Hash;

/// Leaf size: a power of two of BLAKE3 chunks, so that every leaf is a subtree of the file's
/// tree (the last one along its right edge).
pub const LEAF: u64 = 1 << 20;

static ZEROS: [u8; LEAF as usize] = [0; LEAF as usize];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafMap {
    pub size: u64,
    pub cvs: Vec<ChainingValue>,
    pub zeros: Vec<bool>,
}

/// How many leaves a file of `size` bytes has.
pub fn leaf_count(size: u64) -> usize {
    size.div_ceil(LEAF) as usize
}

/// Length of leaf `i` of a file of `size` bytes.
pub fn leaf_len(size: u64, i: usize) -> u64 {
    LEAF.min(size.saturating_sub(i as u64 * LEAF))
}

/// Chaining value of the leaf at `offset` (a multiple of LEAF) holding `bytes`.
pub fn leaf_cv(offset: u64, bytes: &[u8]) -> ChainingValue {
    debug_assert!(offset % LEAF == 0 && bytes.len() as u64 <= LEAF);
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(bytes);
    h.finalize_non_root()
}

/// `len` (at most LEAF) zero bytes.
pub fn zeros(len: u64) -> &'static [u8] {
    &ZEROS[..len as usize]
}

/// Chaining value of a leaf of `len` zero bytes at `offset`.
pub fn zero_leaf_cv(offset: u64, len: u64) -> ChainingValue {
    leaf_cv(offset, &ZEROS[..len as usize])
}

pub fn all_zero(bytes: &[u8]) -> bool {
    let words = bytes.chunks_exact(16);
    words.remainder().iter().all(|&b| b == 0)
        && words.fold(0u128, |acc, w| {
            acc | u128::from_ne_bytes(w.try_into().expect("16 bytes"))
        }) == 0
}

impl LeafMap {
    /// The content hash of the whole file. Only for files of more than one leaf (a single leaf
    /// is its own root and is hashed as a whole by `blake3::hash`).
    pub fn root(&self) -> Hash {
        debug_assert!(self.size > LEAF && self.cvs.len() == leaf_count(self.size));
        fn merge(cvs: &[ChainingValue], len: u64) -> ChainingValue {
            if cvs.len() == 1 {
                return cvs[0];
            }
            let split = left_subtree_len(len);
            let k = (split / LEAF) as usize;
            merge_subtrees_non_root(
                &merge(&cvs[..k], split),
                &merge(&cvs[k..], len - split),
                Mode::Hash,
            )
        }
        let split = left_subtree_len(self.size);
        let k = (split / LEAF) as usize;
        let left = merge(&self.cvs[..k], split);
        let right = merge(&self.cvs[k..], self.size - split);
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    }

    /// Stored form: the chaining values, then one bit per leaf (set: all zeros).
    pub fn to_blob(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.cvs.len() * 32 + self.cvs.len().div_ceil(8));
        for cv in &self.cvs {
            v.extend_from_slice(cv);
        }
        let mut bits = vec![0u8; self.zeros.len().div_ceil(8)];
        for (i, &z) in self.zeros.iter().enumerate() {
            if z {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        v.extend_from_slice(&bits);
        v
    }

    /// None when the blob does not have the shape a file of `size` bytes needs.
    pub fn from_blob(size: u64, blob: &[u8]) -> Option<LeafMap> {
        let n = leaf_count(size);
        if size <= LEAF || blob.len() != n * 32 + n.div_ceil(8) {
            return None;
        }
        let (cv_bytes, bits) = blob.split_at(n * 32);
        let cvs = cv_bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let zeros = (0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect();
        Some(LeafMap { size, cvs, zeros })
    }
}

/// Calls `leaf(i, data)` for every leaf of the first `size` bytes: `None` for a leaf that lies
/// wholly in a hole, which is not read.
pub fn for_each_leaf(
    file: &File,
    size: u64,
    sparse: bool,
    mut leaf: impl FnMut(usize, Option<&[u8]>) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; LEAF as usize];
    // Where the next data starts, as far as the last SEEK_DATA knows (u64::MAX: none).
    let mut next_data = 0u64;
    // The data before this offset has been asked for (`read_ahead`).
    let mut hinted = 0u64;
    for i in 0..leaf_count(size) {
        let off = i as u64 * LEAF;
        let len = leaf_len(size, i);
        if sparse && next_data < off + len && next_data <= off {
            next_data = match rustix::fs::seek(file.as_fd(), rustix::fs::SeekFrom::Data(off)) {
                Ok(at) => at,
                Err(rustix::io::Errno::NXIO) => u64::MAX,
                // A filesystem without SEEK_DATA: everything is data.
                Err(_) => off,
            };
        }
        if sparse && next_data >= off + len {
            leaf(i, None)?;
            continue;
        }
        if off + READ_AHEAD / 2 >= hinted {
            let to = (off + READ_AHEAD).min(size);
            read_ahead(file, hinted.max(off), to, sparse);
            hinted = to;
        }
        let data = &mut buf[..len as usize];
        file.read_exact_at(data, off)?;
        leaf(i, Some(data))?;
    }
    Ok(())
}

/// How far ahead of the leaf being read the kernel is asked for the file's data.
const READ_AHEAD: u64 = 32 << 20;

/// Asks the kernel to read the data of `from..to` (`POSIX_FADV_WILLNEED`), holes left out (a
/// hint for a hole would fill the page cache with zeros). One leaf read at a time waited for
/// the disk at every leaf whose data lies apart from the last: the data of a sparse image,
/// 1 MiB every 6 MiB, took 0.5 s of a 2 s incremental snapshot of the churn data set. A hint
/// only: nothing fails with it.
fn read_ahead(file: &File, from: u64, to: u64, sparse: bool) {
    let mut at = from;
    while at < to {
        let (start, end) = if sparse {
            let Ok(start) = rustix::fs::seek(file.as_fd(), rustix::fs::SeekFrom::Data(at)) else {
                return;
            };
            let end =
                rustix::fs::seek(file.as_fd(), rustix::fs::SeekFrom::Hole(start)).unwrap_or(to);
            (start, end.min(to))
        } else {
            (at, to)
        };
        if start >= end {
            return;
        }
        let len = std::num::NonZeroU64::new(end - start);
        let _ = rustix::fs::fadvise(file, start, len, rustix::fs::Advice::WillNeed);
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(bytes: &[u8]) -> LeafMap {
        let size = bytes.len() as u64;
        let (mut cvs, mut zeros) = (Vec::new(), Vec::new());
        for (i, leaf) in bytes.chunks(LEAF as usize).enumerate() {
            cvs.push(leaf_cv(i as u64 * LEAF, leaf));
            zeros.push(all_zero(leaf));
        }
        LeafMap { size, cvs, zeros }
    }

    #[test]
    fn root_of_leaves_is_the_blake3_hash_of_the_file() {
        let mut s = 7u64;
        let data: Vec<u8> = (0..(19 << 20) + 4097)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 32) as u8
            })
            .collect();
        for size in [
            (1 << 20) + 1,
            2 << 20,
            (9 << 20) + (1 << 19),
            16 << 20,
            (19 << 20) + 4097,
        ] {
            let bytes = &data[..size];
            let m = map_of(bytes);
            assert_eq!(m.root(), *blake3::hash(bytes).as_bytes(), "size {size}");
            assert_eq!(LeafMap::from_blob(m.size, &m.to_blob()), Some(m));
        }
        let mut sparse = vec![0u8; 12 << 20];
        sparse[5 << 20] = 1;
        let m = map_of(&sparse);
        assert_eq!(m.zeros.iter().filter(|z| !**z).count(), 1);
        assert_eq!(m.cvs[3], zero_leaf_cv(3 << 20, LEAF));
        assert_eq!(m.root(), *blake3::hash(&sparse).as_bytes());
    }

    #[test]
    fn a_blob_of_the_wrong_shape_is_refused() {
        let m = map_of(&vec![1u8; 3 << 20]);
        let blob = m.to_blob();
        assert!(LeafMap::from_blob(4 << 20, &blob).is_none());
        assert!(LeafMap::from_blob(3 << 20, &blob[1..]).is_none());
    }
}
