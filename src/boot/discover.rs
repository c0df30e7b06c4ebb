//! Which disk holds `/boot` (else `/`): the mount from `/proc/self/mountinfo`, its device from
//! `/sys/dev/block/MAJ:MIN`, a partition's parent disk, and for device-mapper and md devices
//! the disks under `slaves/`. `/proc` and `/sys` are parameters so fixture trees can stand in.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo (proc_pid_mountinfo(5)), the fields we use.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub id: u64,
    pub parent: u64,
    pub major: u32,
    pub minor: u32,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let f: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    let (major, minor) = f.get(2)?.split_once(':')?;
    Some(Mount {
        id: f.first()?.parse().ok()?,
        parent: f.get(1)?.parse().ok()?,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        mount_point: PathBuf::from(OsString::from_vec(unescape(f.get(4)?))),
        fstype: r.first()?.to_string(),
        source: String::from_utf8_lossy(&unescape(r.get(1)?)).into_owned(),
    })
}

/// The kernel writes space, tab, newline and backslash in paths as three octal digits.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if octal {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The mount that holds `path`: the longest mount point above it; of mounts stacked on the
/// same point, the one on top (no other of them has it as parent).
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let best = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .map(|m| m.mount_point.components().count())
        .max()?;
    let stacked: Vec<&Mount> = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .filter(|m| m.mount_point.components().count() == best)
        .collect();
    stacked
        .iter()
        .find(|m| !stacked.iter().any(|o| o.parent == m.id))
        .or(stacked.last())
        .copied()
}

/// Where the disks were found, for the log and the capture record.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Device paths of the whole disks (several for a RAID1 `/boot`).
    pub disks: Vec<PathBuf>,
    pub how: String,
}

/// `discover` with this machine's mountinfo, `/sys` and `/dev`.
pub fn on_this_machine(root: &Path) -> Result<Found, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    discover(root, &mountinfo, Path::new("/sys"), Path::new("/dev"))
}

/// Finds the disks behind `root/boot` (or `root`). `proc_mountinfo` is the text of
/// `/proc/self/mountinfo`; `sys` and `dev` are `/sys` and `/dev`.
pub fn discover(
    root: &Path,
    proc_mountinfo: &str,
    sys: &Path,
    dev: &Path,
) -> Result<Found, String> {
    let boot = root.join("boot");
    let place = if boot.is_dir() {
        boot
    } else {
        root.to_path_buf()
    };
    let place = place.canonicalize().unwrap_or(place);
    let mounts = parse_mountinfo(proc_mountinfo);
    let m = mount_of(&mounts, &place)
        .ok_or_else(|| format!("no mount holds {} in mountinfo", place.display()))?;
    let what = format!(
        "{} is on {} ({}, {}:{})",
        place.display(),
        m.mount_point.display(),
        m.fstype,
        m.major,
        m.minor
    );
    let (major, minor) = if m.major == 0 {
        // btrfs and other multi-device filesystems report an anonymous device: its source
        // names the block device.
        let rdev = std::fs::metadata(&m.source)
            .ok()
            .filter(|md| std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type()))
            .map(|md| md.rdev())
            .ok_or_else(|| format!("{what}: not a block device, so there is no disk to capture"))?;
        (rustix::fs::major(rdev), rustix::fs::minor(rdev))
    } else {
        (m.major, m.minor)
    };
    let node = sys.join("dev/block").join(format!("{major}:{minor}"));
    let node = node
        .canonicalize()
        .map_err(|e| format!("{what}: {}: {e}", node.display()))?;
    let mut disks = Vec::new();
    disks_of(&node, sys, &mut disks, 0);
    if disks.is_empty() {
        return Err(format!("{what}: no disk found under {}", node.display()));
    }
    let names: Vec<String> = disks.iter().map(|d| device_name(d)).collect();
    Ok(Found {
        disks: names.iter().map(|n| dev.join(n)).collect(),
        how: format!("{what}, on disk {}", names.join(" and ")),
    })
}

/// The disks in `sys/block` whose identity (disk signature or GPT GUID, and size) is one of
/// `wanted`: how a rescue system finds the captured disk whatever it calls it.
pub fn by_identity(sys: &Path, dev: &Path, wanted: &[super::Layout]) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(sys.join("block")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let path = dev.join(device_name(&e.path()));
        let found = super::layout_of(&path);
        if found.is_some_and(|l| wanted.iter().any(|w| l.same_disk(w))) {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A partition's disk is its parent directory; dm and md devices lead to their members.
fn disks_of(node: &Path, sys: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 16 {
        return;
    }
    if node.join("partition").exists() {
        if let Some(parent) = node.parent() {
            push_unique(out, parent.to_path_buf());
        }
        return;
    }
    let slaves: Vec<PathBuf> = std::fs::read_dir(node.join("slaves"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    if slaves.is_empty() {
        push_unique(out, node.to_path_buf());
        return;
    }
    for s in slaves {
        let target = s.canonicalize().unwrap_or_else(|_| {
            sys.join("class/block")
                .join(s.file_name().unwrap_or_default())
        });
        disks_of(&target, sys, out, depth + 1);
    }
}

fn push_unique(out: &mut Vec<PathBuf>, p: PathBuf) {
    if !out.contains(&p) {
        out.push(p);
    }
}

/// `/dev` name of a sysfs block directory: DEVNAME from its uevent, else its name with the
/// kernel's `!` for `/` (`cciss!c0d0`).
fn device_name(sysdir: &Path) -> String {
    if let Ok(ev) = std::fs::read_to_string(sysdir.join("uevent")) {
        if let Some(n) = ev.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
            return n.to_string();
        }
    }
    sysdir
        .file_name()
        .map(|n| n.to_string_lossy().replace('!', "/"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn mountinfo_escapes_and_stacking() {
        let text = "\
22 1 8:2 / / rw - ext4 /dev/sda2 rw
30 22 8:1 / /boot rw - ext4 /dev/sda1 rw
31 30 0:40 / /boot rw - tmpfs none rw
40 22 0:50 / /mnt/with\\040space\\012nl rw - tmpfs a\\134b rw
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/with space\nnl"));
        assert_eq!(m[3].source, "a\\b");
        // The tmpfs stacked on /boot hides the ext4 below it.
        assert_eq!(mount_of(&m, Path::new("/boot/grub")).unwrap().id, 31);
        assert_eq!(mount_of(&m, Path::new("/etc")).unwrap().id, 22);
        assert_eq!(mount_of(&m, Path::new("/bootx")).unwrap().id, 22);
    }

    /// A fixture /sys: sda with sda1 and sda3, nvme0n1p2, md0 over sdb1+sdc1, dm-0 over sda3.
    fn fixture(dir: &Path) -> PathBuf {
        let sys = dir.join("sys");
        let mk = |rel: &str, partition: bool| {
            let d = sys.join(rel);
            fs::create_dir_all(&d).unwrap();
            if partition {
                fs::write(d.join("partition"), "1\n").unwrap();
            }
            d
        };
        mk("devices/pci/block/sda", false);
        mk("devices/pci/block/sda/sda1", true);
        mk("devices/pci/block/sda/sda3", true);
        mk("devices/pci/block/sdb/sdb1", true);
        mk("devices/pci/block/sdc/sdc1", true);
        mk("devices/pci/nvme/nvme0n1/nvme0n1p2", true);
        let md = mk("devices/virtual/block/md0", false);
        let dm = mk("devices/virtual/block/dm-0", false);
        fs::write(dm.join("uevent"), "MAJOR=254\nDEVNAME=dm-0\n").unwrap();
        fs::create_dir_all(md.join("slaves")).unwrap();
        fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink("../../../../pci/block/sdb/sdb1", md.join("slaves/sdb1")).unwrap();
        symlink("../../../../pci/block/sdc/sdc1", md.join("slaves/sdc1")).unwrap();
        symlink("../../../../pci/block/sda/sda3", dm.join("slaves/sda3")).unwrap();
        fs::create_dir_all(sys.join("dev/block")).unwrap();
        for (mm, rel) in [
            ("8:1", "devices/pci/block/sda/sda1"),
            ("259:2", "devices/pci/nvme/nvme0n1/nvme0n1p2"),
            ("9:0", "devices/virtual/block/md0"),
            ("254:0", "devices/virtual/block/dm-0"),
            ("8:0", "devices/pci/block/sda"),
        ] {
            symlink(format!("../../{rel}"), sys.join("dev/block").join(mm)).unwrap();
        }
        sys
    }

    fn found(root: &Path, sys: &Path, boot_line: &str) -> Result<Found, String> {
        let text = format!("1 0 8:2 / / rw - ext4 /dev/sda2 rw\n{boot_line}\n");
        discover(root, &text, sys, Path::new("/dev"))
    }

    #[test]
    fn partitions_md_and_dm_lead_to_their_disks() {
        let dir = tempfile::tempdir().unwrap();
        let sys = fixture(dir.path());
        let root = Path::new("/");
        let disks = |line: &str| found(root, &sys, line).map(|f| f.disks);
        let dev = |n: &str| PathBuf::from("/dev").join(n);
        assert_eq!(
            disks("2 1 8:1 / /boot rw - ext4 /dev/sda1 rw").unwrap(),
            vec![dev("sda")]
        );
        assert_eq!(
            disks("2 1 259:2 / /boot rw - ext4 /dev/nvme0n1p2 rw").unwrap(),
            vec![dev("nvme0n1")]
        );
        assert_eq!(
            disks("2 1 9:0 / /boot rw - ext4 /dev/md0 rw").unwrap(),
            vec![dev("sdb"), dev("sdc")]
        );
        assert_eq!(
            disks("2 1 254:0 / /boot rw - ext4 /dev/mapper/vg-boot rw").unwrap(),
            vec![dev("sda")]
        );
        // A filesystem on the whole disk: the disk itself (the capture then finds no table).
        assert_eq!(
            disks("2 1 8:0 / /boot rw - ext4 /dev/sda rw").unwrap(),
            vec![dev("sda")]
        );
        // An unknown device number, and a filesystem with no device at all.
        let e = disks("2 1 7:7 / /boot rw - ext4 /dev/loop7 rw").unwrap_err();
        assert!(e.contains("7:7"), "{e}");
        let e = disks("2 1 0:33 / /boot rw - tmpfs none rw").unwrap_err();
        assert!(e.contains("not a block device"), "{e}");
    }

    #[test]
    fn a_root_without_boot_directory_uses_the_root_mount() {
        let dir = tempfile::tempdir().unwrap();
        let sys = fixture(dir.path());
        let root = dir.path().join("sysimage");
        fs::create_dir_all(&root).unwrap();
        let text = format!(
            "1 0 0:30 / / rw - tmpfs rootfs rw\n2 1 8:1 / {} rw - ext4 /dev/sda1 rw\n",
            root.display()
        );
        let f = discover(&root, &text, &sys, Path::new("/dev")).unwrap();
        assert_eq!(f.disks, vec![PathBuf::from("/dev/sda")]);
        assert!(f.how.contains("ext4"), "{}", f.how);
    }
}
