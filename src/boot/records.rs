//! Text records of the disk layout, for a person rebuilding the machine: what the partitioning
//! and volume tools say, each when the tool exists. Never used to write anything by default.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// cron runs with PATH=/usr/bin:/bin; the disk tools live in sbin.
const EXTRA_PATH: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_PATH.iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A record: its name, the command (or file) it came from, its text.
pub struct Record {
    pub name: String,
    pub source: String,
    pub text: Vec<u8>,
}

/// A tool stuck on a dead device must not hold the snapshot (and the store's lock) forever.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `tool args…`; its standard output when it succeeds with some within the timeout.
fn run(name: &str, tool: &str, args: &[&str]) -> Option<Record> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let exe = which(tool)?;
    let mut child = Command::new(&exe)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    // Read while it runs: a full pipe would otherwise stall it until the timeout.
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let status = crate::hooks::wait_until(&mut child, TOOL_TIMEOUT).ok()?;
    let text = reader.join().ok()?;
    if !status.success() || text.is_empty() {
        return None;
    }
    Some(Record {
        name: name.into(),
        source: format!("{} {}", tool, args.join(" ")),
        text,
    })
}

/// Records for one disk (`sfdisk --dump`, `lsblk`), and for the system (`blkid`, fstab,
/// LVM metadata, firmware boot entries).
pub fn collect(disk: &Path, root: &Path) -> Vec<Record> {
    let d = disk.to_string_lossy();
    let mut out: Vec<Record> = [
        run("sfdisk", "sfdisk", &["--dump", &d]),
        run("lsblk", "lsblk", &["--json", "--bytes", "--output-all", &d]),
        run("blkid", "blkid", &[]),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Each ext filesystem's features and inode size, so that a bare-metal restore makes it as
    // it was, not with the rescue system's mke2fs defaults (which an older GRUB or e2fsck of
    // the restored system may not read).
    let parts = partitions(disk);
    let volumes = mapped_on(&parts);
    for part in parts.iter().chain(&volumes) {
        let node = part.display().to_string();
        if let Some(mut r) = run("dumpe2fs", "dumpe2fs", &["-h", &node]) {
            r.name = format!("dumpe2fs {node}");
            out.push(r);
        }
    }
    let fstab = root.join("etc/fstab");
    if let Ok(text) = std::fs::read(&fstab) {
        out.push(Record {
            name: "fstab".into(),
            source: fstab.display().to_string(),
            text,
        });
    }
    if let Some(r) = lvm() {
        out.push(r);
    }
    if Path::new("/sys/firmware/efi").exists() {
        out.extend(run("efibootmgr", "efibootmgr", &["-v"]));
    }
    out
}

/// The partitions of `disk` as device paths named as its own (`/dev/sda` → `/dev/sda1`),
/// from sysfs.
fn partitions(disk: &Path) -> Vec<PathBuf> {
    let Some(name) = disk
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_os_string()))
    else {
        return Vec::new();
    };
    let Some(dir) = disk.parent() else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(Path::new("/sys/class/block").join(&name))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("partition").exists())
                .map(|e| dir.join(e.file_name()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The device-mapper volumes (LVM's logical volumes) that lie on `parts`, as
/// `/dev/mapper/NAME`: the names blkid gives them.
fn mapped_on(parts: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in parts {
        let Some(name) = p.file_name() else { continue };
        let holders = Path::new("/sys/class/block").join(name).join("holders");
        for h in std::fs::read_dir(holders).into_iter().flatten().flatten() {
            if let Ok(dm) = std::fs::read_to_string(h.path().join("dm/name")) {
                let node = Path::new("/dev/mapper").join(dm.trim());
                if !out.contains(&node) {
                    out.push(node);
                }
            }
        }
    }
    out.sort();
    out
}

/// `vgcfgbackup` writes each volume group's metadata, the text `vgcfgrestore` reads back.
fn lvm() -> Option<Record> {
    let vgs = run("vgs", "vgs", &["--noheadings", "-o", "vg_name"])?;
    if String::from_utf8_lossy(&vgs.text).trim().is_empty() {
        return None;
    }
    let dir = tempfile::tempdir().ok()?;
    let pattern = dir.path().join("%s");
    run("lvm", "vgcfgbackup", &["-f", &pattern.to_string_lossy()])?;
    let mut text = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.path()).ok()?.flatten().collect();
    files.sort_by_key(|e| e.file_name());
    for f in files {
        text.extend_from_slice(
            format!("# volume group {}\n", f.file_name().to_string_lossy()).as_bytes(),
        );
        text.extend(std::fs::read(f.path()).unwrap_or_default());
    }
    Some(Record {
        name: "lvm".into(),
        source: "vgcfgbackup".into(),
        text,
    })
}
