//! Writing a captured boot area back (`system_restore --boot`). The boot code holds absolute
//! sector numbers (GRUB's boot.img points at core.img), so it is written only to a disk whose
//! identity and layout are the captured ones; anything else is refused before a byte moves.
//! By default sector 0 keeps its disk signature and partition table (bytes 440 on).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::table::{self, BOOT_CODE};
use super::{open_disk, Capture, Role};
use crate::error::{Error, IoContext, Result};
use crate::store::blobs::get as get_blob;
use crate::store::{PointId, Store};

#[derive(Debug, Clone, Serialize)]
pub struct Write {
    pub name: String,
    pub offset: u64,
    #[serde(skip)]
    pub bytes: Vec<u8>,
    pub len: u64,
    /// False when the disk already holds these bytes.
    pub differs: bool,
}

/// What `--boot` will write to one disk.
#[derive(Debug, Clone, Serialize)]
pub struct BootPlan {
    pub point: PointId,
    pub device: PathBuf,
    /// How the device was chosen (`--device`, `boot.device`, the mount of /boot …).
    pub chosen_by: String,
    pub captured_disk: String,
    pub with_partition_table: bool,
    pub writes: Vec<Write>,
    /// Differences a partition-table restore will undo.
    pub table_changes: Vec<String>,
}

impl BootPlan {
    pub fn is_noop(&self) -> bool {
        self.writes.iter().all(|w| !w.differs)
    }
}

fn refuse(device: &Path, why: String) -> Error {
    Error::BootRefused {
        device: device.to_path_buf(),
        why,
    }
}

/// Plans writing `capture` (of point `point`) to `device`; refuses when the disk is not the
/// captured one or its layout changed.
pub fn plan(
    store: &Path,
    point: PointId,
    capture: &Capture,
    device: &Path,
    chosen_by: &str,
    with_table: bool,
) -> Result<BootPlan> {
    let (f, size, sector) =
        open_disk(device, false).ctx(|| format!("opening {} to compare", device.display()))?;
    let now = table::read(&f, size, sector)
        .ctx(|| format!("reading the partition table of {}", device.display()))?;
    let was = &capture.layout;
    let diffs = if with_table {
        now.differences(was)
    } else {
        boot_code_differences(&now, was)
    };
    let mut table_changes = Vec::new();
    if with_table {
        if now.size != was.size || now.sector != was.sector {
            return Err(refuse(
                device,
                format!(
                    "it holds {} bytes in {}-byte sectors, the captured disk {} held {} in {}-byte sectors: a partition table is only written back to a disk of the same geometry",
                    now.size, now.sector, capture.disk, was.size, was.sector
                ),
            ));
        }
        if let Some(m) = mounted_partition(device) {
            return Err(refuse(
                device,
                format!("{m} is mounted: unmount every partition of the disk before writing its partition table"),
            ));
        }
        table_changes = diffs;
    } else if !diffs.is_empty() {
        return Err(refuse(
            device,
            format!(
                "it is not the disk captured with point {point} ({}), or its layout changed since: {}. The boot code refers to absolute sectors, so writing it here could leave the disk unbootable. Check --device; to also write the captured partition table back, add --with-partition-table; or reinstall the boot loader from a chroot (grub-install)",
                capture.disk,
                diffs.join("; ")
            ),
        ));
    }
    let writes = writes(
        &|h| get_blob(store, h),
        point,
        capture,
        &f,
        device,
        with_table,
    )?;
    Ok(BootPlan {
        point,
        device: device.to_path_buf(),
        chosen_by: chosen_by.to_string(),
        captured_disk: capture.disk.clone(),
        with_partition_table: with_table,
        writes,
        table_changes,
    })
}

/// What writing `capture`'s pieces to the disk open as `f` means: the bytes, and whether the
/// disk already holds them.
fn writes(
    get: &dyn Fn(&str) -> Result<Vec<u8>>,
    point: PointId,
    capture: &Capture,
    f: &std::fs::File,
    device: &Path,
    with_table: bool,
) -> Result<Vec<Write>> {
    let mut writes = Vec::new();
    for p in &capture.pieces {
        let mut bytes = get(&p.hash)?;
        if bytes.len() as u64 != p.len {
            return Err(Error::Damaged {
                what: format!(
                    "boot area of point {point}: {} has the wrong length",
                    p.name
                ),
            });
        }
        match p.role {
            Role::Sector0 if !with_table => bytes.truncate(BOOT_CODE),
            Role::Table if !with_table => continue,
            _ => {}
        }
        let current = table::read_at(f, p.offset, bytes.len())
            .ctx(|| format!("reading {} of {}", p.name, device.display()))?;
        let name = match p.role {
            Role::Sector0 if !with_table => "boot code (sector 0, bytes 0-439)".to_string(),
            _ => p.name.clone(),
        };
        writes.push(Write {
            name,
            offset: p.offset,
            len: bytes.len() as u64,
            differs: current != bytes,
            bytes,
        });
    }
    Ok(writes)
}

/// What differs between the disk's layout and the captured one that matters to the boot code:
/// everything but a larger size (a disk grown since, or a standby disk larger than the one
/// captured, keeps every partition where the boot code's sector numbers point).
fn boot_code_differences(now: &table::Layout, was: &table::Layout) -> Vec<String> {
    let mut as_captured = now.clone();
    if now.size >= was.size {
        as_captured.size = was.size;
    }
    as_captured.differences(was)
}

/// Plans writing the boot code (sector 0's first 440 bytes and GRUB's core image) of `capture`
/// to `device`, whose partition table a bare-metal restore has just recreated from the point's
/// record: the same layout, on a disk that may be larger than the captured one.
pub fn plan_recreated(
    get: &dyn Fn(&str) -> Result<Vec<u8>>,
    point: PointId,
    capture: &Capture,
    device: &Path,
) -> Result<BootPlan> {
    let (f, size, sector) =
        open_disk(device, false).ctx(|| format!("opening {} to compare", device.display()))?;
    let now = table::read(&f, size, sector)
        .ctx(|| format!("reading the partition table of {}", device.display()))?;
    let diffs = boot_code_differences(&now, &capture.layout);
    if !diffs.is_empty() {
        return Err(refuse(
            device,
            format!(
                "its new partition table differs from the one captured with point {point}: {}",
                diffs.join("; ")
            ),
        ));
    }
    Ok(BootPlan {
        point,
        device: device.to_path_buf(),
        chosen_by: "--device".into(),
        captured_disk: capture.disk.clone(),
        with_partition_table: false,
        writes: writes(get, point, capture, &f, device, false)?,
        table_changes: Vec::new(),
    })
}

/// A mounted partition of the block device `disk`, from mountinfo and sysfs.
pub(crate) fn mounted_partition(disk: &Path) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::metadata(disk).ok()?;
    if !md.file_type().is_block_device() {
        return None;
    }
    let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
    let sysdir = Path::new("/sys/dev/block")
        .join(format!("{major}:{minor}"))
        .canonicalize()
        .ok()?;
    let mounts =
        super::discover::parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?);
    mounts.into_iter().find_map(|m| {
        let node = Path::new("/sys/dev/block")
            .join(format!("{}:{}", m.major, m.minor))
            .canonicalize()
            .ok()?;
        (node == sysdir || node.parent() == Some(sysdir.as_path()))
            .then(|| format!("{} (on {})", m.source, m.mount_point.display()))
    })
}

/// Writes the plan's differing pieces, flushes, reads them back and compares; with the
/// default plan also checks that the disk signature and partition table did not move.
pub fn apply(plan: &BootPlan) -> Result<u64> {
    let dev = &plan.device;
    let (f, _, sector) =
        open_disk(dev, true).ctx(|| format!("opening {} for writing", dev.display()))?;
    let guard = |f: &std::fs::File| {
        table::read_at(f, BOOT_CODE as u64, 512 - BOOT_CODE)
            .ctx(|| format!("reading sector 0 of {}", dev.display()))
    };
    let before = guard(&f)?;
    let mut written = 0;
    for w in plan.writes.iter().filter(|w| w.differs) {
        f.write_all_at(&w.bytes, w.offset)
            .ctx(|| format!("writing {} to {}", w.name, dev.display()))?;
        written += w.len;
    }
    f.sync_all().ctx(|| format!("flushing {}", dev.display()))?;
    if sector.is_some() {
        // Read back from the disk, not from the page cache we just filled.
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    }
    drop(f);
    let (f, _, _) = open_disk(dev, false).ctx(|| format!("reopening {}", dev.display()))?;
    for w in &plan.writes {
        let back = table::read_at(&f, w.offset, w.bytes.len())
            .ctx(|| format!("reading back {} of {}", w.name, dev.display()))?;
        if back != w.bytes {
            return Err(Error::Damaged {
                what: format!(
                    "{} of {} reads back different from what was written: the disk may be failing",
                    w.name,
                    dev.display()
                ),
            });
        }
    }
    if !plan.with_partition_table && guard(&f)? != before {
        return Err(Error::Damaged {
            what: format!(
                "the partition table of {} changed while the boot code was written",
                dev.display()
            ),
        });
    }
    Ok(written)
}

/// Plans writing point `point`'s boot area back. The disk is `device` when given, else
/// `configured` (boot.device), else the disk under the root's /boot, else the one disk
/// whose identity is the captured one. Refuses (before anything is written) a disk
/// that is not the captured one or whose layout changed.
pub fn plan_point(
    root: &Path,
    store: &Store,
    point: PointId,
    device: Option<&Path>,
    configured: Option<&Path>,
    with_table: bool,
) -> Result<Vec<BootPlan>> {
    let (captures, note) = super::of_point(store, point)?;
    if captures.is_empty() {
        return Err(Error::Invalid(format!(
            "point {point} holds no boot area ({}); restore without --boot, or choose a point that has one (`system_snapshot show ID`)",
            note.unwrap_or_else(|| "taken before boot capture existed".into())
        )));
    }
    let candidates: Vec<(PathBuf, String)> = if let Some(d) = device {
        vec![(d.to_path_buf(), "--device".into())]
    } else if let Some(d) = configured {
        vec![(d.to_path_buf(), "boot.device in the config".into())]
    } else {
        match super::discover::on_this_machine(root) {
            Ok(f) => f.disks.into_iter().map(|d| (d, f.how.clone())).collect(),
            Err(why) => {
                let found = super::discover::by_identity(
                    Path::new("/sys"),
                    Path::new("/dev"),
                    &captures
                        .iter()
                        .map(|c| c.layout.clone())
                        .collect::<Vec<_>>(),
                );
                if found.is_empty() {
                    return Err(Error::Invalid(format!(
                        "cannot find the disk to write point {point}'s boot area to: {why}; and no disk has the captured identity ({}). Name it with --device",
                        captures.iter().map(|c| format!("{} {}", c.disk, c.layout.id)).collect::<Vec<_>>().join(", ")
                    )));
                }
                found
                    .into_iter()
                    .map(|d| (d, "its identity (signature and size)".to_string()))
                    .collect()
            }
        }
    };
    let mut plans = Vec::new();
    for c in &captures {
        let same_id = |d: &Path| super::layout_of(d).is_some_and(|l| l.same_disk(&c.layout));
        let chosen = candidates.iter().find(|(d, _)| same_id(d)).or(
            if captures.len() == 1 && candidates.len() == 1 {
                // Compared in detail by the plan, which says what differs.
                candidates.first()
            } else {
                None
            },
        );
        let Some((dev, how)) = chosen else {
            return Err(Error::Invalid(format!(
                "none of {} is the disk {} captured with point {point} (identity {}); name it with --device",
                candidates.iter().map(|(d, _)| d.display().to_string()).collect::<Vec<_>>().join(", "),
                c.disk,
                c.layout.id
            )));
        };
        plans.push(plan(&store.dir, point, c, dev, how, with_table)?);
    }
    Ok(plans)
}

/// Where the pre-restore point reads the boot area from: the one disk a boot area restore
/// writes (it holds the boot area about to be overwritten), else what the config says.
pub fn safety_source(plans: &[BootPlan], configured: super::Source) -> super::Source {
    match plans {
        [one] => super::Source::Device(one.device.clone()),
        _ => configured,
    }
}
