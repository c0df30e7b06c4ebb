//! Bare-metal restore (DESIGN.md "Bare-metal restore"): a blank disk, or a disk image file,
//! made into the disk a point was taken of. The point's records of that disk (its `sfdisk
//! --dump`, `blkid`, `lsblk` and `/etc/fstab`) give the partition table, each filesystem's
//! type, UUID and label, and where it was mounted; the point gives the files and the boot area.
//!
//! Everything that can be checked is checked before the first write: the disk is big enough,
//! none of it is mounted, every tool is there, every filesystem the fstab mounts can be made.
//! Then each step runs and says what it ran. The steps destroy the disk, so a failure half way
//! has nothing to undo: the same command starts over from the partition table.

mod files;
pub mod lvm;
pub mod records;
mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::boot::{Capture, Layout, TableKind};
use crate::error::{Error, IoContext, Result};
use crate::store::{PointId, Store};
pub use files::{restore_files, FileSource};
use records::FstabEntry;
pub use run::{run, Report};
pub use run::{Files, FilesStep};

/// Where a filesystem lies on the rebuilt disk.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    Partition(u32),
    /// A logical volume of a volume group the restore makes again.
    Lv {
        vg: String,
        lv: String,
    },
}

impl std::fmt::Display for On {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            On::Partition(n) => write!(f, "{n}"),
            On::Lv { vg, lv } => write!(f, "{vg}/{lv}"),
        }
    }
}

/// A filesystem of the captured disk, to be made again with its identity.
#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    /// The partition or logical volume it lies on.
    pub on: On,
    /// Its device name when the point was taken (`/dev/sda2`, `/dev/mapper/vg-root`).
    pub was: String,
    /// `ext4`, `xfs`, `vfat`, `swap` … as blkid names it.
    pub kind: String,
    pub uuid: Option<String>,
    pub label: Option<String>,
    /// ext2/3/4: the block size; vfat: FAT12/16/32.
    pub block_size: Option<String>,
    /// ext2/3/4: the features and inode size `dumpe2fs` recorded (None: points taken before
    /// that record, made with mke2fs's defaults).
    pub features: Option<Vec<String>>,
    pub inode_size: Option<String>,
    pub version: Option<String>,
    /// Where the recorded fstab mounts it (None: not mounted, or swap).
    pub mount: Option<String>,
    /// Whether the point holds files for it (its mount point is one of the point's sources,
    /// or lies under one and the point has files below it).
    pub has_files: bool,
}

impl Filesystem {
    /// The command that makes it, with its recorded UUID and label (None: not made here).
    pub fn mkfs(&self, dev: &Path) -> Option<(String, Vec<String>)> {
        let mut args: Vec<String> = Vec::new();
        let label = |flag: &str, args: &mut Vec<String>| {
            if let Some(l) = &self.label {
                args.extend([flag.to_string(), l.clone()]);
            }
        };
        let tool = match self.kind.as_str() {
            "ext2" | "ext3" | "ext4" => {
                args.extend(["-F".into(), "-q".into(), "-t".into(), self.kind.clone()]);
                if let Some(u) = &self.uuid {
                    args.extend(["-U".into(), u.clone()]);
                }
                if let Some(b) = &self.block_size {
                    args.extend(["-b".into(), b.clone()]);
                }
                if let Some(f) = self.features.as_ref().filter(|f| !f.is_empty()) {
                    args.extend(["-O".into(), format!("none,{}", f.join(","))]);
                }
                if let Some(i) = &self.inode_size {
                    args.extend(["-I".into(), i.clone()]);
                }
                label("-L", &mut args);
                "mke2fs"
            }
            "xfs" => {
                args.push("-f".into());
                if let Some(u) = &self.uuid {
                    args.extend(["-m".into(), format!("uuid={u}")]);
                }
                label("-L", &mut args);
                "mkfs.xfs"
            }
            "vfat" => {
                if let Some(v) = self.version.as_deref().and_then(|v| v.strip_prefix("FAT")) {
                    args.extend(["-F".into(), v.to_string()]);
                }
                if let Some(u) = &self.uuid {
                    args.extend(["-i".into(), u.replace('-', "")]);
                }
                label("-n", &mut args);
                "mkfs.vfat"
            }
            "swap" => {
                if let Some(u) = &self.uuid {
                    args.extend(["-U".into(), u.clone()]);
                }
                label("-L", &mut args);
                "mkswap"
            }
            _ => return None,
        };
        args.push(dev.display().to_string());
        Some((tool.to_string(), args))
    }

    fn mount_type(&self) -> &str {
        &self.kind
    }
}

/// Filesystems a bare-metal restore makes again.
pub const MADE: [&str; 6] = ["ext2", "ext3", "ext4", "xfs", "vfat", "swap"];

/// The package each tool comes from, for the refusal that names a missing one.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "mke2fs" => "e2fsprogs",
        "mkfs.xfs" => "xfsprogs",
        "mkfs.vfat" => "dosfstools",
        "sfdisk" => "fdisk",
        "mount" | "umount" | "losetup" => "mount",
        "lvm" => "lvm2",
        _ => "util-linux",
    }
}

/// Everything a bare-metal restore will do, decided before it writes anything.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub point: PointId,
    pub device: PathBuf,
    /// A disk image file: attached to a loop device for the restore.
    pub image_file: bool,
    pub device_size: u64,
    /// Bytes the recorded layout needs (its last partition's end, and GPT's backup table).
    pub needed: u64,
    pub captured_disk: String,
    pub layout: Layout,
    pub table: String,
    pub partitions: Vec<records::PartLine>,
    pub filesystems: Vec<Filesystem>,
    /// LVM volume groups on the disk, made again from their metadata before the filesystems.
    pub volume_groups: Vec<lvm::VolumeGroup>,
    /// What is left as it was recorded but not made again, and why.
    pub notes: Vec<String>,
    pub uefi: bool,
    #[serde(skip)]
    pub script: String,
    #[serde(skip)]
    pub capture: Capture,
    /// Files the point holds, and their bytes.
    pub files: u64,
    pub bytes: u64,
}

fn refuse(device: &Path, why: impl Into<String>) -> Error {
    Error::BareMetalRefused {
        device: device.to_path_buf(),
        why: why.into(),
    }
}

/// A boot piece's or record's bytes by hash, checked against it.
pub type BlobReader<'a> = Box<dyn Fn(&str) -> Result<Vec<u8>> + 'a>;

/// What a point says of its disk, from a local store or a remote one.
pub struct Records<'a> {
    pub point: PointId,
    pub captures: Vec<Capture>,
    /// Why the point has no captures, if it has none.
    pub note: Option<String>,
    pub blob: BlobReader<'a>,
    pub sources: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}

impl<'a> Records<'a> {
    pub fn local(store: &Store, point: PointId) -> Result<Records<'a>> {
        let (captures, note) = crate::boot::of_point(store, point)?;
        let p = store.index.point(point)?;
        Ok(Records {
            point,
            captures,
            note,
            blob: {
                let dir = store.dir.clone();
                Box::new(move |h| crate::store::blobs::get(&dir, h))
            },
            sources: p.sources,
            files: p.files,
            bytes: p.bytes,
        })
    }

    /// From a point pushed off site; `url` names the remote in errors.
    pub fn remote(point: PointId, disk: crate::offsite::PointDisk, url: &str) -> Records<'a> {
        let url = url.to_string();
        let blobs = disk.blobs;
        Records {
            point,
            note: disk
                .captures
                .is_empty()
                .then(|| format!("its copy in {url} has none: it was pushed without disk records (before they travelled with points), or taken without them")),
            captures: disk.captures,
            blob: Box::new(move |h| {
                blobs.get(h).cloned().ok_or_else(|| Error::Damaged {
                    what: format!("boot record {h} is missing from its point's manifest in {url}"),
                })
            }),
            sources: disk.sources,
            files: disk.files,
            bytes: disk.bytes,
        }
    }

    fn text(&self, c: &Capture, name: &str) -> Result<Option<String>> {
        match c.records.iter().find(|r| r.name == name) {
            None => Ok(None),
            Some(r) => Ok(Some(
                String::from_utf8_lossy(&(self.blob)(&r.hash)?).into_owned(),
            )),
        }
    }
}

/// What an fstab `spec` names, among the disk's filesystems (by recorded tags or node).
fn resolves(
    spec: &str,
    nodes: &[String],
    tags: &BTreeMap<String, String>,
    part: Option<&records::PartLine>,
) -> bool {
    let eq = |key: &str, v: &str| tags.get(key).is_some_and(|t| t.eq_ignore_ascii_case(v));
    let by = |prefix: &str, key: &str| {
        spec.strip_prefix(prefix)
            .is_some_and(|v| eq(key, v.trim_matches('"')))
    };
    by("UUID=", "UUID")
        || by("/dev/disk/by-uuid/", "UUID")
        || by("LABEL=", "LABEL")
        || by("/dev/disk/by-label/", "LABEL")
        || by("PARTLABEL=", "PARTLABEL")
        || by("/dev/disk/by-partlabel/", "PARTLABEL")
        || spec.strip_prefix("PARTUUID=").is_some_and(|v| {
            eq("PARTUUID", v)
                || part
                    .and_then(|p| p.uuid.as_deref())
                    .is_some_and(|u| u.eq_ignore_ascii_case(v))
        })
        || spec
            .strip_prefix("/dev/disk/by-partuuid/")
            .is_some_and(|v| eq("PARTUUID", v))
        || nodes.iter().any(|n| n == spec)
}

/// Depth of a mount point: parents are mounted before their children whatever the fstab's
/// order.
fn depth(point: &str) -> usize {
    point.split('/').filter(|c| !c.is_empty()).count()
}

/// Decides the restore of point `point` onto `device`, and refuses (nothing written) when it
/// cannot be done there.
pub fn plan(rec: &Records, device: &Path) -> Result<Plan> {
    let point = rec.point;
    let (captures, note) = (&rec.captures, rec.note.clone());
    if captures.is_empty() {
        return Err(refuse(
            device,
            format!(
                "point {point} holds no record of its disk ({}): choose a point taken with boot capture on (`system_snapshot show ID` says)",
                note.unwrap_or_else(|| "taken before disk capture existed".into())
            ),
        ));
    }
    // The disk that held `/`: the one whose recorded fstab root is among its filesystems.
    let mut chosen = None;
    let mut why_not = Vec::new();
    for c in captures {
        match plan_capture(rec, c, device) {
            Ok(p) => {
                chosen = Some(p);
                break;
            }
            Err(e) => why_not.push(format!("{}: {e}", c.disk)),
        }
    }
    let Some(mut plan) = chosen else {
        return Err(refuse(device, why_not.join("; ")));
    };
    plan.files = rec.files;
    plan.bytes = rec.bytes;
    check_device(&mut plan)?;
    Ok(plan)
}

fn plan_capture(rec: &Records, c: &Capture, device: &Path) -> Result<Plan> {
    let point = rec.point;
    let missing = |what: &str, tool: &str| {
        Error::Invalid(format!(
            "point {point} has no record of its {what} ({tool} was not installed on the machine, or failed, when the point was taken)"
        ))
    };
    let dump = records::parse_sfdisk(
        &rec.text(c, "sfdisk")?
            .ok_or_else(|| missing("partition table", "sfdisk"))?,
    )
    .map_err(|e| Error::Damaged {
        what: format!("the partition table record of point {point}: {e}"),
    })?;
    let blkid = records::parse_blkid(
        &rec.text(c, "blkid")?
            .ok_or_else(|| missing("filesystems", "blkid"))?,
    );
    let fstab = records::parse_fstab(
        &rec.text(c, "fstab")?
            .ok_or_else(|| missing("mounts", "/etc/fstab (there was none)"))?,
    );
    let versions = rec
        .text(c, "lsblk")?
        .map(|t| records::lsblk_versions(&t))
        .unwrap_or_default();
    if dump.sector_size != c.layout.sector {
        return Err(Error::Damaged {
            what: format!(
                "point {point}: the partition table record says {}-byte sectors, the captured disk had {}",
                dump.sector_size, c.layout.sector
            ),
        });
    }
    let sources = &rec.sources;
    let mut filesystems = Vec::new();
    let mut notes = Vec::new();
    let mut mounted_by_fstab: Vec<FstabEntry> = Vec::new();
    let (mut groups, unreadable) = match rec.text(c, "lvm")? {
        Some(t) => lvm::parse_each(&t).map_err(|e| Error::Damaged {
            what: format!("the LVM record of point {point}: {e}"),
        })?,
        None => (Vec::new(), Vec::new()),
    };
    let volume = |on: On,
                  node: &str,
                  aliases: &[String],
                  part: Option<&records::PartLine>,
                  filesystems: &mut Vec<Filesystem>,
                  notes: &mut Vec<String>,
                  mounted_by_fstab: &mut Vec<FstabEntry>|
     -> Result<()> {
        let empty = BTreeMap::new();
        let tags = blkid.get(node).unwrap_or(&empty);
        let mounts: Vec<&FstabEntry> = fstab
            .iter()
            .filter(|e| resolves(&e.spec, aliases, tags, part))
            .collect();
        let Some(kind) = tags.get("TYPE") else {
            if let Some(m) = mounts.first() {
                return Err(Error::Invalid(format!(
                    "the fstab mounts {} on {}, but blkid recorded no filesystem there",
                    m.spec, m.point
                )));
            }
            return Ok(());
        };
        let what = match &on {
            On::Partition(n) => format!("partition {n} ({node})"),
            On::Lv { vg, lv } => format!("logical volume {vg}/{lv} ({node})"),
        };
        if !MADE.contains(&kind.as_str()) {
            let container = matches!(
                kind.as_str(),
                "LVM2_member" | "crypto_LUKS" | "linux_raid_member" | "zfs_member"
            );
            if container || !mounts.is_empty() {
                return Err(Error::Invalid(format!(
                    "{what} holds {kind}{}: a bare-metal restore makes {} and LVM only; rebuild this disk by hand from the records `system_snapshot show {point}` lists, then restore the files with --root",
                    mounts.first().map(|m| format!(", mounted on {}", m.point)).unwrap_or_default(),
                    MADE.join(", ")
                )));
            }
            notes.push(format!(
                "{what} holds {kind}, which is not made again: it is left empty"
            ));
            return Ok(());
        }
        let mount = mounts
            .iter()
            .find(|m| m.fstype != "swap" && m.point.starts_with('/'))
            .map(|m| m.point.clone());
        if let Some(m) = mount.as_deref().filter(|m| m.split('/').any(|c| c == "..")) {
            return Err(Error::Invalid(format!(
                "the recorded fstab mounts a filesystem on {m:?}, a path with `..`: refused"
            )));
        }
        mounted_by_fstab.extend(mounts.iter().map(|m| (*m).clone()));
        let (features, inode_size) = match rec.text(c, &format!("dumpe2fs {node}"))? {
            Some(t) if kind.starts_with("ext") => records::parse_dumpe2fs(&t),
            _ => (None, None),
        };
        filesystems.push(Filesystem {
            features,
            inode_size,
            on,
            was: node.to_string(),
            kind: kind.clone(),
            uuid: tags.get("UUID").cloned(),
            label: tags.get("LABEL").cloned(),
            block_size: tags
                .get("BLOCK_SIZE")
                .filter(|_| kind.starts_with("ext"))
                .cloned(),
            version: versions.get(node).cloned(),
            has_files: mount.as_deref().is_some_and(|m| {
                sources
                    .iter()
                    .any(|s| s.trim_matches('/') == m.trim_matches('/'))
            }),
            mount,
        });
        Ok(())
    };
    for part in &dump.parts {
        let tags = blkid.get(&part.node);
        if tags.and_then(|t| t.get("TYPE")).map(String::as_str) == Some("LVM2_member") {
            let id = tags.and_then(|t| t.get("UUID"));
            // The UUID is the identity; the device name the record remembers is only a hint,
            // used when blkid gave no UUID, and never over another group's UUID match.
            let by_id = groups
                .iter()
                .flat_map(|g| &g.pvs)
                .position(|pv| id.is_some_and(|id| id.eq_ignore_ascii_case(&pv.id)));
            let at = by_id.or_else(|| {
                id.is_none()
                    .then(|| {
                        groups
                            .iter()
                            .flat_map(|g| &g.pvs)
                            .position(|pv| pv.device == part.node)
                    })
                    .flatten()
            });
            match at.and_then(|i| groups.iter_mut().flat_map(|g| g.pvs.iter_mut()).nth(i)) {
                Some(pv) => pv.partition = Some(part.number),
                None => {
                    let why = if !unreadable.is_empty() {
                        format!(
                            "the point's LVM record holds groups this program cannot read: {}",
                            unreadable.join("; ")
                        )
                    } else if groups.is_empty() {
                        "the point has no LVM record (vgcfgbackup was missing or failed when the point was taken)".to_string()
                    } else {
                        format!(
                            "it belongs to none of the volume groups the point recorded ({}): a physical volume in no group, or one added after the record",
                            groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    };
                    return Err(Error::Invalid(format!(
                        "partition {} ({}) is an LVM physical volume, and {why}: rebuild this disk by hand, then restore the files with --root",
                        part.number, part.node
                    )));
                }
            }
            continue;
        }
        volume(
            On::Partition(part.number),
            &part.node,
            std::slice::from_ref(&part.node),
            Some(part),
            &mut filesystems,
            &mut notes,
            &mut mounted_by_fstab,
        )?;
    }
    // The volume groups on this disk are made again whole, or the plan is refused: one that
    // also spans another disk cannot be restored from this disk's records alone.
    groups.retain(|g| g.pvs.iter().any(|pv| pv.partition.is_some()));
    for g in &groups {
        if let Some(pv) = g.pvs.iter().find(|pv| pv.partition.is_none()) {
            return Err(Error::Invalid(format!(
                "volume group {} also lies on {} (physical volume {}), which is not this disk: a bare-metal restore rebuilds one disk; rebuild the group by hand (vgcfgrestore) from the records `system_snapshot show {point}` lists",
                g.name, pv.device, pv.id
            )));
        }
        if let Some(why) = g.unsupported() {
            return Err(Error::Invalid(why));
        }
        for lv in g.lvs.iter().filter(|lv| lv.visible) {
            let name = lvm::mapper_name(&g.name, &lv.name);
            let node = format!("/dev/mapper/{name}");
            let aliases = [
                node.clone(),
                format!("/dev/{}/{}", g.name, lv.name),
                format!("/dev/disk/by-id/dm-name-{name}"),
            ];
            volume(
                On::Lv {
                    vg: g.name.clone(),
                    lv: lv.name.clone(),
                },
                &node,
                &aliases,
                None,
                &mut filesystems,
                &mut notes,
                &mut mounted_by_fstab,
            )?;
        }
    }
    if !filesystems.iter().any(|f| f.mount.as_deref() == Some("/")) {
        let root = fstab.iter().find(|e| e.point == "/");
        return Err(Error::Invalid(match root {
            Some(r) => format!(
                "its fstab names the root filesystem as {}, which is none of this disk's recorded filesystems (by UUID=, LABEL=, PARTUUID=, PARTLABEL=, /dev/disk/by-uuid|label|partuuid|partlabel, the partition's name, or a logical volume's /dev/mapper/VG-LV or /dev/VG/LV; /dev/disk/by-id and by-path names are not matched): a bare-metal restore rebuilds the disk that holds /",
                r.spec
            ),
            None => "the recorded fstab mounts nothing on /".into(),
        }));
    }
    for e in fstab
        .iter()
        .filter(|e| e.point.starts_with('/') && !mounted_by_fstab.contains(e))
    {
        if matches!(
            e.fstype.as_str(),
            "tmpfs" | "proc" | "sysfs" | "devpts" | "none"
        ) || e.fstype.starts_with("nfs")
            || e.fstype == "cifs"
        {
            continue;
        }
        notes.push(format!(
            "the fstab mounts {} on {}, which is not on this disk: that disk is not rebuilt",
            e.spec, e.point
        ));
    }
    let s = c.layout.sector;
    let end = dump
        .parts
        .iter()
        .map(|p| (p.start + p.sectors) * s)
        .max()
        .unwrap_or(0);
    let backup = match c.layout.table {
        TableKind::Gpt => c.layout.gpt_backup.map(|(_, l)| l).unwrap_or(33 * s),
        _ => 0,
    };
    Ok(Plan {
        point,
        device: device.to_path_buf(),
        image_file: false,
        device_size: 0,
        needed: end + backup,
        captured_disk: c.disk.clone(),
        layout: c.layout.clone(),
        table: dump.label.clone(),
        partitions: dump.parts.clone(),
        filesystems,
        volume_groups: groups,
        notes,
        uefi: c.uefi,
        script: dump.script,
        capture: c.clone(),
        files: 0,
        bytes: 0,
    })
}

/// Why the block device `dev` is in use (a mounted partition, swap, LVM, md or dm on it),
/// or None. An exclusive open of the whole disk fails while the kernel has any part of it
/// claimed; the mount table names the mounted partition when that is the reason.
pub(crate) fn in_use(dev: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::metadata(dev).is_ok_and(|m| m.file_type().is_block_device()) {
        return None;
    }
    if let Some(m) = crate::boot::restore::mounted_partition(dev) {
        return Some(format!(
            "{m} is mounted: this is a disk in use. Name a blank disk"
        ));
    }
    match rustix::fs::open(
        dev,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::EXCL | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Err(rustix::io::Errno::BUSY) => Some(format!(
            "the kernel has it (or a partition of it) in use: swap, LVM, RAID, encryption or a mount (see `lsblk {}` and /proc/swaps). Name a blank disk",
            dev.display()
        )),
        _ => None,
    }
}

/// The device: there, not mounted, big enough, with the recorded sector size; and every tool
/// the steps run is installed.
fn check_device(plan: &mut Plan) -> Result<()> {
    let dev = plan.device.clone();
    let md = std::fs::metadata(&dev).ctx(|| format!("reading {}", dev.display()))?;
    use std::os::unix::fs::FileTypeExt;
    if md.file_type().is_file() {
        plan.image_file = true;
    } else if !md.file_type().is_block_device() {
        return Err(refuse(
            &dev,
            "it is neither a disk (a block device) nor a disk image file",
        ));
    }
    let (_, size, sector) =
        crate::boot::open_disk(&dev, false).ctx(|| format!("opening {}", dev.display()))?;
    plan.device_size = size;
    let sector = sector.unwrap_or(512);
    if sector != plan.layout.sector {
        return Err(refuse(
            &dev,
            format!(
                "its sectors are {sector} bytes, the recorded disk's were {}: the recorded partition table counts in those",
                plan.layout.sector
            ),
        ));
    }
    if size < plan.needed {
        return Err(refuse(
            &dev,
            format!(
                "it holds {} ({size} bytes); the recorded layout of {} needs {} ({} bytes). Use a disk at least that large",
                crate::model::human_size(size),
                plan.captured_disk,
                crate::model::human_size(plan.needed),
                plan.needed
            ),
        ));
    }
    if let Some(why) = in_use(&dev) {
        return Err(refuse(&dev, why));
    }
    if plan.image_file {
        if let Some(l) = run::loop_of(&dev) {
            return Err(refuse(
                &dev,
                format!("it is attached to {l}: detach it first (losetup -d {l})"),
            ));
        }
    }
    let mut tools = vec!["sfdisk", "partx", "mount", "umount"];
    if plan.image_file {
        tools.push("losetup");
    }
    if !plan.volume_groups.is_empty() {
        tools.push("lvm");
    }
    let nowhere = Path::new("/dev/null");
    for f in &plan.filesystems {
        if let Some((tool, _)) = f.mkfs(nowhere) {
            if !tools.contains(&tool.as_str()) {
                tools.push(match tool.as_str() {
                    "mke2fs" => "mke2fs",
                    "mkfs.xfs" => "mkfs.xfs",
                    "mkfs.vfat" => "mkfs.vfat",
                    _ => "mkswap",
                });
            }
        }
    }
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| crate::boot::records::which(t).is_none())
        .map(|t| format!("{t} (package {})", package_of(t)))
        .collect();
    if !missing.is_empty() {
        return Err(refuse(
            &dev,
            format!("missing tools: {}; install them first", missing.join(", ")),
        ));
    }
    if let Some(why) = lvm_clash(&plan.volume_groups, &dev) {
        return Err(refuse(&dev, why));
    }
    Ok(())
}

/// Why the recorded volume groups cannot be made on this machine now: LVM refuses two groups
/// of one name, and two of one UUID (the old disk still attached) make it pick either. A group
/// that lies wholly on `device` does not count: the partition table step wipes it (a rerun
/// after a failed restore finds its own half-made group there).
fn lvm_clash(groups: &[lvm::VolumeGroup], device: &Path) -> Option<String> {
    if groups.is_empty() {
        return None;
    }
    let lvm = crate::boot::records::which("lvm")?;
    let out = match std::process::Command::new(lvm)
        .args([
            "pvs",
            "--noheadings",
            "--separator",
            "|",
            "-o",
            "vg_name,vg_uuid,pv_name",
        ])
        .env("LC_ALL", "C")
        .output()
    {
        Ok(o) if o.status.success() => o,
        // The only check that keeps vgcfgrestore from finding the old disk's physical
        // volumes: without its answer nothing is made.
        Ok(o) => {
            return Some(format!(
                "`lvm pvs` failed ({}): {}; the volume groups present could not be checked",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return Some(format!("`lvm pvs` could not run: {e}")),
    };
    let on_device = |pv: &str| {
        let d = device.to_string_lossy();
        pv.strip_prefix(d.as_ref()).is_some_and(|rest| {
            let rest = rest.strip_prefix('p').unwrap_or(rest);
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
        })
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut present: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.trim().split('|').collect();
        if let [name, uuid, pv] = f[..] {
            if !name.is_empty() {
                present
                    .entry((name.to_string(), uuid.to_string()))
                    .or_default()
                    .push(pv.to_string());
            }
        }
    }
    for ((name, uuid), pvs) in &present {
        if pvs.iter().all(|pv| on_device(pv)) {
            continue;
        }
        if let Some(g) = groups.iter().find(|g| &g.name == name || g.id == *uuid) {
            return Some(format!(
                "this machine already has a volume group {name} ({uuid}, on {}), the name or UUID of the recorded group {}: the disk the point was taken of is probably still attached. Run the restore from a rescue system without it, or give the present group another name and UUID with vgimportclone",
                pvs.join(", "),
                g.name
            ));
        }
    }
    None
}

/// A filesystem in the plan: its type, identity and where it is mounted.
fn describe_fs(f: &Filesystem) -> String {
    format!(
        "{} UUID {}{}{}",
        f.kind,
        f.uuid.as_deref().unwrap_or("-"),
        f.label
            .as_ref()
            .map(|l| format!(" label {l:?}"))
            .unwrap_or_default(),
        match f.mount.as_deref() {
            Some(m) => format!(
                "  mounted on {m}{}",
                if f.has_files {
                    ""
                } else {
                    " (not one of the point's sources: made empty unless the point crossed into it)"
                }
            ),
            None if f.kind == "swap" => "  swap".into(),
            None => String::new(),
        }
    )
}

impl Plan {
    /// The filesystems the fstab mounts, parents first.
    pub fn mounts(&self) -> Vec<&Filesystem> {
        let mut m: Vec<&Filesystem> = self
            .filesystems
            .iter()
            .filter(|f| f.mount.is_some())
            .collect();
        m.sort_by_key(|f| depth(f.mount.as_deref().unwrap_or("/")));
        m
    }

    /// The plan, for people.
    pub fn describe(&self) -> Vec<String> {
        use crate::model::human_size;
        let mut out = vec![
            format!(
                "Bare-metal restore of point {} onto {} ({}{}):",
                self.point,
                self.device.display(),
                human_size(self.device_size),
                if self.image_file {
                    ", a disk image file"
                } else {
                    ""
                }
            ),
            format!(
                "  Partition table: {} {} as recorded from {} ({} needed{})",
                self.table,
                self.layout.id,
                self.captured_disk,
                human_size(self.needed),
                if self.device_size > self.layout.size {
                    "; the rest of the disk stays unpartitioned"
                } else {
                    ""
                }
            ),
        ];
        let s = self.layout.sector;
        for p in &self.partitions {
            let fs = self
                .filesystems
                .iter()
                .find(|f| f.on == On::Partition(p.number));
            let pv_of = self
                .volume_groups
                .iter()
                .find(|g| g.pvs.iter().any(|pv| pv.partition == Some(p.number)));
            let what = match (fs, pv_of) {
                (Some(f), _) => describe_fs(f),
                (None, Some(g)) => format!("LVM physical volume of volume group {}", g.name),
                (None, None) if p.kind.eq_ignore_ascii_case(crate::boot::table::BIOS_BOOT) => {
                    "BIOS boot partition (GRUB's core image, written with the boot area)".into()
                }
                (None, None) => "no filesystem".into(),
            };
            out.push(format!(
                "    {:>3}  start {:>10}  {:>9}  {what}",
                p.number,
                p.start,
                human_size(p.sectors * s),
            ));
        }
        for g in &self.volume_groups {
            out.push(format!(
                "  Volume group {} (UUID {}), made again from its recorded metadata:",
                g.name, g.id
            ));
            for lv in g.lvs.iter().filter(|lv| lv.visible) {
                let on = On::Lv {
                    vg: g.name.clone(),
                    lv: lv.name.clone(),
                };
                let fs = self.filesystems.iter().find(|f| f.on == on);
                out.push(format!(
                    "    {:<14} {}",
                    lv.name,
                    fs.map(describe_fs)
                        .unwrap_or_else(|| "no filesystem".into())
                ));
            }
        }
        out.push(format!(
            "  Files: point {}'s {} entries, {}, mounted in fstab order under a temporary root",
            self.point,
            self.files,
            human_size(self.bytes)
        ));
        out.push(format!(
            "  Boot area: the boot code and GRUB's core image captured from {}",
            self.captured_disk
        ));
        for n in &self.notes {
            out.push(format!("  Note: {n}"));
        }
        if self.uefi {
            out.push("  Note: the machine booted by UEFI: the EFI system partition's files come back, but the firmware's boot entries belong to the machine; if it does not boot, run grub-install (or efibootmgr) from the restored system".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{Capture, Layout, RecordRef, TableKind};

    const SFDISK: &str = "label: dos\nlabel-id: 0x1234abcd\ndevice: /dev/vdb\nunit: sectors\nsector-size: 512\n\n/dev/vdb1 : start=2048, size=204800, type=83, bootable\n/dev/vdb2 : start=206848, size=1843200, type=8e\n";
    const BLKID: &str = "/dev/vdb1: LABEL=\"boot\" UUID=\"b007\" BLOCK_SIZE=\"1024\" TYPE=\"ext2\" PARTUUID=\"1234abcd-01\"\n/dev/vdb2: UUID=\"mLxk1E-yQ6m-Tu1d-Mm2L-Kx4v-a8V9-dNMtwQ\" TYPE=\"LVM2_member\" PARTUUID=\"1234abcd-02\"\n/dev/mapper/rp--vg-root: UUID=\"7007\" BLOCK_SIZE=\"4096\" TYPE=\"ext4\"\n/dev/mapper/rp--vg-my--swap: UUID=\"5a9\" TYPE=\"swap\"\n";
    const FSTAB: &str = "/dev/mapper/rp--vg-root / ext4 errors=remount-ro 0 1\nUUID=b007 /boot ext2 defaults 0 2\n/dev/rp-vg/my-swap none swap sw 0 0\n";

    /// A plan of a point whose records say what `texts` say, on a 2 GiB disk.
    fn plan_of(texts: &[(&str, String)]) -> Result<Plan> {
        let blobs: BTreeMap<String, Vec<u8>> = texts
            .iter()
            .map(|(n, t)| (format!("hash-{n}"), t.as_bytes().to_vec()))
            .collect();
        let capture = Capture {
            disk: "/dev/vdb".into(),
            found_by: "boot.device".into(),
            layout: Layout {
                table: TableKind::Dos,
                id: "0x1234abcd".into(),
                size: 2 << 30,
                sector: 512,
                partitions: Vec::new(),
                gpt_primary: None,
                gpt_backup: None,
            },
            pieces: Vec::new(),
            records: texts
                .iter()
                .map(|(n, _)| RecordRef {
                    name: n.to_string(),
                    source: n.to_string(),
                    hash: format!("hash-{n}"),
                })
                .collect(),
            uefi: false,
        };
        let rec = Records {
            point: crate::store::PointId(3),
            captures: vec![capture.clone()],
            note: None,
            blob: Box::new(move |h| Ok(blobs[h].clone())),
            sources: vec!["/".into(), "/boot".into()],
            files: 1,
            bytes: 1,
        };
        plan_capture(&rec, &capture, Path::new("/dev/null"))
    }

    fn records(lvm: &str) -> Vec<(&'static str, String)> {
        vec![
            ("sfdisk", SFDISK.into()),
            ("blkid", BLKID.into()),
            ("fstab", FSTAB.into()),
            ("lvm", lvm.into()),
        ]
    }

    #[test]
    fn a_root_on_lvm_is_planned_with_its_group_volumes_and_mounts() {
        let plan = plan_of(&records(lvm::tests::BACKUP)).unwrap();
        assert_eq!(plan.volume_groups.len(), 1);
        let g = &plan.volume_groups[0];
        assert_eq!(g.name, "rp-vg");
        assert_eq!(g.pvs[0].partition, Some(2));
        let by = |on: On| plan.filesystems.iter().find(|f| f.on == on).unwrap();
        let root = by(On::Lv {
            vg: "rp-vg".into(),
            lv: "root".into(),
        });
        assert_eq!(
            (
                root.kind.as_str(),
                root.uuid.as_deref(),
                root.mount.as_deref()
            ),
            ("ext4", Some("7007"), Some("/"))
        );
        assert!(root.has_files);
        let swap = by(On::Lv {
            vg: "rp-vg".into(),
            lv: "my-swap".into(),
        });
        assert_eq!(swap.kind, "swap");
        assert_eq!(by(On::Partition(1)).mount.as_deref(), Some("/boot"));
        let mounts: Vec<&str> = plan
            .mounts()
            .iter()
            .map(|f| f.mount.as_deref().unwrap())
            .collect();
        assert_eq!(mounts, ["/", "/boot"]);
        let text = plan.describe().join("\n");
        assert!(
            text.contains("LVM physical volume of volume group rp-vg"),
            "{text}"
        );
        assert!(text.contains("Volume group rp-vg (UUID Hs3L0c"), "{text}");
        assert!(
            text.contains("root           ext4 UUID 7007  mounted on /"),
            "{text}"
        );
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    }

    #[test]
    fn a_group_the_parser_cannot_read_matters_only_when_it_is_on_the_disk() {
        let broken = "# volume group other-vg\nother-vg {\n\tid = \"x\"\n";
        let plan = plan_of(&records(&format!("{}{broken}", lvm::tests::BACKUP))).unwrap();
        assert_eq!(plan.volume_groups.len(), 1);
        let e = plan_of(&records(broken)).unwrap_err().to_string();
        assert!(
            e.contains("groups this program cannot read: other-vg"),
            "{e}"
        );
    }

    #[test]
    fn lvm_that_cannot_be_made_from_this_disk_alone_is_refused() {
        let err = |lvm: &str| plan_of(&records(lvm)).unwrap_err().to_string();
        let e = err("");
        assert!(
            e.contains("partition 2 (/dev/vdb2) is an LVM physical volume")
                && e.contains("no LVM record"),
            "{e}"
        );
        // The UUID decides, not the device name the record remembers: a PV whose UUID is in
        // no recorded group is refused even where the record's device name matches.
        let mut other = records(lvm::tests::BACKUP);
        other[1].1 = BLKID.replace("mLxk1E-yQ6m", "zzzzzz-yQ6m");
        let e = plan_of(&other).unwrap_err().to_string();
        assert!(
            e.contains("belongs to none of the volume groups the point recorded (rp-vg)"),
            "{e}"
        );
        let spans = lvm::tests::BACKUP.replace(
            "\t\t}\n\t}\n\n\tlogical_volumes",
            "\t\t}\n\t\tpv1 {\n\t\t\tid = \"other-pv\"\n\t\t\tdevice = \"/dev/sdz1\"\n\t\t}\n\t}\n\n\tlogical_volumes",
        );
        assert_ne!(spans, lvm::tests::BACKUP);
        let e = err(&spans);
        assert!(
            e.contains("volume group rp-vg also lies on /dev/sdz1"),
            "{e}"
        );
        let e = err(&lvm::tests::BACKUP.replacen("\"striped\"", "\"thin-pool\"", 1));
        assert!(e.contains("root (thin-pool)"), "{e}");
    }
}
