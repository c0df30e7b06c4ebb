//! `STORE/boot/<blake3>.zst`: content-addressed pieces (boot areas, layout records), each
//! distinct content stored once, zstd-compressed, checked against its name when read. The
//! store keeps the files; which hashes are still referred to is the caller's knowledge
//! (the boot manifests in the index).

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

fn blob_path(store: &Path, hash: &str) -> PathBuf {
    store.join("boot").join(format!("{hash}.zst"))
}

/// Stores `bytes` once: compressed, synced, renamed into place. Returns their hash.
pub fn put(store: &Path, bytes: &[u8]) -> std::io::Result<String> {
    let hash = blake3::hash(bytes).to_hex().to_string();
    let path = blob_path(store, &hash);
    if path.exists() {
        return Ok(hash);
    }
    write_atomic(&path, &zstd::bulk::compress(bytes, 19)?)?;
    Ok(hash)
}

/// Writes `path` whole or not at all: a synced temp file beside it, renamed over it, and
/// the directory synced so the rename survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// The bytes stored under `hash`, checked against it.
pub fn get(store: &Path, hash: &str) -> Result<Vec<u8>> {
    let path = blob_path(store, hash);
    let packed = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
    let bytes = zstd::stream::decode_all(&packed[..]).map_err(|e| Error::Damaged {
        what: format!("{}: {e}", path.display()),
    })?;
    if blake3::hash(&bytes).to_hex().as_str() != hash {
        return Err(Error::Damaged {
            what: format!("{} does not match its hash", path.display()),
        });
    }
    Ok(bytes)
}

/// Deletes every piece whose hash is not in `keep`, and temp files a crash left. Called under
/// the lock.
pub fn remove_except(store: &Path, keep: &HashSet<String>) -> Result<()> {
    let dir = store.join("boot");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for ent in rd.flatten() {
        let name = ent.file_name();
        let name = name.to_string_lossy();
        let stem = name.strip_suffix(".zst").unwrap_or(&name);
        let temp = name.starts_with(".tmp");
        if temp || (name.ends_with(".zst") && !keep.contains(stem)) {
            std::fs::remove_file(ent.path())
                .ctx(|| format!("removing {}", ent.path().display()))?;
        }
    }
    Ok(())
}
