//! The boot area (DESIGN.md "Boot capture"): the bytes outside any filesystem that a BIOS
//! boot needs — sector 0 and, on MBR disks, the gap before the first partition (GRUB's core
//! image); on GPT disks the protective MBR and the BIOS boot partition — plus the disk's
//! identity and layout, captured with every point and written back by `system_restore --boot`.
//!
//! Bytes live in `STORE/boot/<blake3>.zst`, one file per distinct content, written and synced
//! before the index names them; the index holds one JSON manifest per point and disk.

pub mod discover;
pub mod kit;
pub(crate) mod records;
pub mod restore;
pub mod table;

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{PointId, Store};
pub use table::{Layout, TableKind};

/// A gap or BIOS boot partition larger than this is captured only up to here: GRUB's core
/// image takes well under 1 MiB, and some disks start their first partition gigabytes in.
pub const PIECE_CAP: u64 = 64 << 20;

/// Where the boot area is read from when a point is taken.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Source {
    /// Not captured (`boot.capture = false`).
    Off,
    /// The disk under `/boot` (else `/`) of the system root.
    #[default]
    Discover,
    /// A device or a disk image file named by `boot.device` or `--device`.
    Device(PathBuf),
}

/// What a piece is for: written back by `--boot`, or only with `--with-partition-table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Sector 0: bytes 0–439 by default, the whole sector with the partition table.
    Sector0,
    /// The MBR gap or the BIOS boot partition: GRUB's core image.
    Code,
    /// GPT headers and entry arrays.
    Table,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub name: String,
    pub role: Role,
    pub offset: u64,
    pub len: u64,
    /// BLAKE3 of the bytes, hex: also the name of their file in `boot/`.
    pub hash: String,
    /// The region was larger than `PIECE_CAP`: only its start is kept.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    pub name: String,
    pub source: String,
    pub hash: String,
}

/// One disk's boot area as captured with a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    pub disk: String,
    pub found_by: String,
    pub layout: Layout,
    pub pieces: Vec<Piece>,
    pub records: Vec<RecordRef>,
    /// Booted by UEFI firmware when captured (the rescue system should boot the same way).
    pub uefi: bool,
}

impl Capture {
    /// One line for logs and `show`.
    pub fn summary(&self) -> String {
        let pieces: Vec<String> = self
            .pieces
            .iter()
            .filter(|p| p.role != Role::Table)
            .map(|p| {
                format!(
                    "{} {}{}",
                    p.name,
                    crate::model::human_size(p.len),
                    if p.truncated { " (truncated)" } else { "" }
                )
            })
            .collect();
        format!(
            "{} ({} {}, {}): {}",
            self.disk,
            self.layout.table.name(),
            self.layout.id,
            crate::model::human_size(self.layout.size),
            pieces.join(", ")
        )
    }
}

/// What the snapshot learned about the boot area.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub captures: Vec<Capture>,
    /// Why nothing (or not everything) was captured, when that is expected: no partition
    /// table, no disk under a tmpfs root, capture turned off.
    pub note: Option<String>,
    /// What should have been captured and was not (a configured device that cannot be read).
    pub warnings: Vec<(String, String)>,
}

/// Reads the boot area of the disks `source` names and stores its bytes in `store/boot/`.
/// Nothing here fails the snapshot: a point without its boot area is still a good point.
pub fn capture(store: &Path, root: &Path, source: &Source) -> Captured {
    let mut out = Captured::default();
    let (disks, how, explicit) = match source {
        Source::Off => {
            out.note = Some("boot area not captured: boot.capture is off".into());
            return out;
        }
        Source::Device(d) => (vec![d.clone()], "boot.device".to_string(), true),
        Source::Discover => match discover::on_this_machine(root) {
            Ok(f) => (f.disks, f.how, false),
            Err(why) => {
                out.note = Some(format!(
                    "boot area not captured: {why}; set boot.device in the config to name the disk"
                ));
                return out;
            }
        },
    };
    let mut notes = Vec::new();
    for disk in disks {
        match capture_disk(store, root, &disk, &how) {
            Ok(Some(c)) => out.captures.push(c),
            Ok(None) if !explicit => notes.push(format!(
                "{} ({how}) has no partition table, so no boot code: the machine boots from another disk or by UEFI",
                disk.display()
            )),
            Ok(None) => out.warnings.push((
                disk.display().to_string(),
                "no partition table: no boot area to capture; check boot.device".into(),
            )),
            // A disk found by discovery that cannot be opened (a container's device policy,
            // a run as another user) is a fact of the machine, not a failure of this point.
            Err(CaptureError::Open(e)) if !explicit => notes.push(format!(
                "{} ({how}) cannot be opened: {e}",
                disk.display()
            )),
            Err(CaptureError::Open(e) | CaptureError::Read(e)) => out.warnings.push((
                disk.display().to_string(),
                format!("boot area not captured: {e}"),
            )),
        }
    }
    if !notes.is_empty() {
        out.note = Some(format!("boot area not captured: {}", notes.join("; ")));
    }
    out
}

/// `boot`, `boot/efi` and `efi` under `root` where each is a mount point (its filesystem is
/// not its parent's).
pub fn boot_mounts(root: &Path) -> Vec<crate::model::RelPath> {
    use std::os::unix::fs::MetadataExt;
    ["boot", "boot/efi", "efi"]
        .iter()
        .filter(|rel| {
            let p = root.join(rel);
            let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
            match (std::fs::symlink_metadata(&p), std::fs::metadata(&parent)) {
                (Ok(m), Ok(pm)) => m.is_dir() && m.dev() != pm.dev(),
                _ => false,
            }
        })
        .map(|rel| rel.as_bytes().to_vec())
        .collect()
}

/// Size and logical sector size of a device or image file.
pub fn open_disk(path: &Path, write: bool) -> std::io::Result<(File, u64, Option<u64>)> {
    use std::io::Seek;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)?;
    let size = f.seek(std::io::SeekFrom::End(0))?;
    let is_block = std::os::unix::fs::FileTypeExt::is_block_device(&f.metadata()?.file_type());
    let sector = if is_block {
        Some(rustix::fs::ioctl_blksszget(f.as_fd())? as u64)
    } else {
        None
    };
    Ok((f, size, sector))
}

enum CaptureError {
    Open(std::io::Error),
    Read(std::io::Error),
}

/// The layout of a device or image file; None when it cannot be opened or read.
pub fn layout_of(path: &Path) -> Option<Layout> {
    let (f, size, sector) = open_disk(path, false).ok()?;
    table::read(&f, size, sector).ok()
}

fn capture_disk(
    store: &Path,
    root: &Path,
    disk: &Path,
    how: &str,
) -> std::result::Result<Option<Capture>, CaptureError> {
    let (f, size, sector) = open_disk(disk, false).map_err(CaptureError::Open)?;
    read_disk(store, root, disk, how, &f, size, sector).map_err(CaptureError::Read)
}

fn read_disk(
    store: &Path,
    root: &Path,
    disk: &Path,
    how: &str,
    f: &File,
    size: u64,
    sector: Option<u64>,
) -> std::io::Result<Option<Capture>> {
    let layout = table::read(f, size, sector)?;
    let s = layout.sector;
    let mut regions: Vec<(&str, Role, u64, u64)> = vec![("sector 0", Role::Sector0, 0, s)];
    match layout.table {
        TableKind::None => return Ok(None),
        TableKind::Dos => {
            let end = layout.lowest_start().unwrap_or(1) * s;
            if end > s {
                regions.push(("gap", Role::Code, s, end - s));
            }
        }
        TableKind::Gpt => {
            if let Some(p) = layout.bios_boot() {
                regions.push((
                    "BIOS boot partition",
                    Role::Code,
                    p.start * s,
                    p.sectors * s,
                ));
            }
            if let Some((o, l)) = layout.gpt_primary {
                regions.push(("primary GPT", Role::Table, o, l));
            }
            if let Some((o, l)) = layout.gpt_backup {
                regions.push(("backup GPT", Role::Table, o, l));
            }
        }
    }
    let mut pieces = Vec::new();
    for (name, role, offset, len) in regions {
        let kept = len.min(PIECE_CAP);
        let bytes = table::read_at(f, offset, kept as usize)?;
        if (bytes.len() as u64) < kept {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{name} ends past the end of the disk"),
            ));
        }
        pieces.push(Piece {
            name: name.into(),
            role,
            offset,
            len: kept,
            hash: crate::store::blobs::put(store, &bytes)?,
            truncated: kept < len,
        });
    }
    let mut refs = Vec::new();
    for r in records::collect(disk, root) {
        refs.push(RecordRef {
            name: r.name,
            source: r.source,
            hash: crate::store::blobs::put(store, &r.text)?,
        });
    }
    Ok(Some(Capture {
        disk: disk.display().to_string(),
        found_by: how.to_string(),
        layout,
        pieces,
        records: refs,
        uefi: Path::new("/sys/firmware/efi").exists(),
    }))
}

/// Records the captures with the running point `id`.
pub fn record(store: &mut Store, id: PointId, captured: &Captured) -> Result<()> {
    let rows: Vec<(String, String)> = captured
        .captures
        .iter()
        .map(|c| {
            (
                c.disk.clone(),
                serde_json::to_string(c).expect("capture serializes"),
            )
        })
        .collect();
    store.index.insert_boot(id, &rows, captured.note.as_deref())
}

/// The boot area of point `id`, and the note saying why it has none.
pub fn of_point(store: &Store, id: PointId) -> Result<(Vec<Capture>, Option<String>)> {
    let (manifests, note) = store.index.boot_of(id)?;
    let captures = manifests
        .iter()
        .map(|m| {
            serde_json::from_str(m).map_err(|e| Error::Damaged {
                what: format!("boot manifest of point {id}: {e}"),
            })
        })
        .collect::<Result<Vec<Capture>>>()?;
    Ok((captures, note))
}

/// Hashes the index refers to; None when a manifest cannot be read (then nothing may be
/// deleted: `verify` reports the damage).
fn referenced(store: &Store) -> Result<Option<HashSet<String>>> {
    let mut keep = HashSet::new();
    for m in store.index.boot_manifests(None)? {
        let Ok(c) = serde_json::from_str::<Capture>(&m) else {
            return Ok(None);
        };
        keep.extend(c.pieces.into_iter().map(|p| p.hash));
        keep.extend(c.records.into_iter().map(|r| r.hash));
    }
    Ok(Some(keep))
}

/// Deletes boot files no point refers to any more (after retention, or left by a snapshot
/// that died before its rows were written). Called under the lock.
pub fn remove_unreferenced(store: &Store) -> Result<()> {
    match referenced(store)? {
        Some(keep) => crate::store::blobs::remove_except(&store.dir, &keep),
        None => Ok(()),
    }
}

/// Checks every boot file a point refers to is there and matches its hash.
pub fn verify(store: &Store, damage: &mut Vec<crate::model::Damage>) -> Result<()> {
    for p in store.index.complete_points()? {
        let mut push = |path: String, problem: String| {
            damage.push(crate::model::Damage {
                point: Some(p.id),
                path,
                problem,
            })
        };
        let (captures, _) = match of_point(store, p.id) {
            Ok(c) => c,
            Err(e) => {
                push("boot area".into(), e.to_string());
                continue;
            }
        };
        for c in captures {
            let hashes = c
                .pieces
                .iter()
                .map(|x| (&x.name, &x.hash))
                .chain(c.records.iter().map(|r| (&r.name, &r.hash)));
            for (name, hash) in hashes {
                if let Err(e) = crate::store::blobs::get(&store.dir, hash) {
                    push(format!("boot area of {}: {name}", c.disk), e.to_string());
                }
            }
        }
    }
    Ok(())
}
