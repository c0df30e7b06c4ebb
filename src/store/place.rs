//! Where a new store may be made. A store on another disk (`store = "/backup/…"`) must never
//! be made afresh on the root disk because that disk is not mounted this night: the next
//! snapshot would fill the root filesystem with a full replica, and the points on the backup
//! disk would look gone. Two checks before a store is created:
//!
//! - the mount points of `/etc/fstab`: a store below one that is not mounted now is refused;
//! - the stores this machine made (`/var/lib/restorepoint/stores`): a store that was made at
//!   this path and is not there now is refused (its disk may have been mounted by hand, or by
//!   a desktop, at a directory that stays behind when it is not).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where restorepoint keeps what it knows of this machine (stores made, the apt hook's last
/// run, the status file): /var/lib/restorepoint, or RESTOREPOINT_STATE_DIR (tests).
pub fn state_dir() -> PathBuf {
    std::env::var_os("RESTOREPOINT_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/restorepoint"))
}

/// The file of stores made on this machine, one JSON object a line.
pub fn known_stores_file() -> PathBuf {
    state_dir().join("stores")
}

fn fstab_file() -> PathBuf {
    std::env::var_os("RESTOREPOINT_FSTAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/fstab"))
}

/// `\040`-style escapes of fstab and mountinfo fields.
pub(crate) fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (source, mount point) of every filesystem `fstab` mounts, swap and pseudo entries left out.
pub fn fstab_mounts(fstab: &str) -> Vec<(String, PathBuf)> {
    fstab
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (spec, file, kind) = (f.first()?, f.get(1)?, f.get(2).copied().unwrap_or(""));
            let file = unescape(file);
            (file.starts_with('/') && kind != "swap").then(|| (unescape(spec), PathBuf::from(file)))
        })
        .collect()
}

/// The mount points of this process's mount namespace.
fn mounted() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(|m| PathBuf::from(unescape(m))))
        .collect()
}

/// The filesystem a path is on, as this machine mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOf {
    pub point: PathBuf,
    pub source: String,
    pub fstype: String,
    /// From `/dev/disk/by-uuid`, when the source is a device listed there.
    pub uuid: Option<String>,
}

/// The mount (of this process's namespace) that `path` lies on: the deepest mount point above it.
pub fn filesystem_of(path: &Path) -> Option<MountOf> {
    let path = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let m = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let point = PathBuf::from(unescape(f.get(4)?));
            let dash = f.iter().position(|x| *x == "-")?;
            let (fstype, source) = (f.get(dash + 1)?, unescape(f.get(dash + 2)?));
            path.starts_with(&point).then(|| MountOf {
                point,
                source,
                fstype: fstype.to_string(),
                uuid: None,
            })
        })
        // The last of the deepest: a later mount over the same point hides the earlier.
        .max_by_key(|m| m.point.components().count())?;
    let dev = Path::new(&m.source).canonicalize().ok();
    let uuid = dev.and_then(|dev| {
        std::fs::read_dir("/dev/disk/by-uuid")
            .ok()?
            .flatten()
            .find(|e| e.path().canonicalize().ok().as_ref() == Some(&dev))
            .map(|e| e.file_name().to_string_lossy().into_owned())
    });
    Some(MountOf { uuid, ..m })
}

/// The deepest of `mounts` that `store` lies below (`/` left out: it is always mounted).
fn mount_point_of<'a>(
    store: &Path,
    mounts: &'a [(String, PathBuf)],
) -> Option<&'a (String, PathBuf)> {
    mounts
        .iter()
        .filter(|(_, m)| m != Path::new("/") && store.starts_with(m))
        .max_by_key(|(_, m)| m.components().count())
}

/// `p` with symlinks resolved as far as it exists (mountinfo lists resolved paths; fstab and
/// the config may name them through a link, as `/mnt -> var/mnt` on image-based systems).
fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut rest = Vec::new();
    let mut at = abs.as_path();
    loop {
        if let Ok(real) = at.canonicalize() {
            return rest.iter().rev().fold(real, |acc, c| acc.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return abs,
        }
    }
}

/// The store `dir` has no index yet and is about to be made: refused when its filesystem is
/// not there.
pub fn check_new_store(dir: &Path) -> Result<()> {
    let abs = resolved(dir);
    let fstab = std::fs::read_to_string(fstab_file()).unwrap_or_default();
    let mounts: Vec<(String, PathBuf)> = fstab_mounts(&fstab)
        .into_iter()
        .map(|(source, point)| (source, resolved(&point)))
        .collect();
    if let Some((source, point)) = mount_point_of(&abs, &mounts) {
        if !mounted().iter().any(|m| m == point) {
            return Err(Error::StoreNotMounted {
                store: dir.to_path_buf(),
                why: format!(
                    "it is below {}, which {} mounts from {source}, and nothing is mounted there now",
                    point.display(),
                    fstab_file().display()
                ),
                then: format!("mount it (`mount {}`) and run again", point.display()),
            });
        }
    }
    // What a store on an unmounted disk leaves: no directory, or an empty one (the disk was
    // mounted at the store's own path). A store whose making was cut short has its layout.
    let bare = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    if let Some(made) = known(&abs).filter(|_| bare) {
        return Err(Error::StoreNotMounted {
            store: dir.to_path_buf(),
            why: format!("this machine made a store there on {made}, and it is not there now"),
            then: format!(
                "if it is on a disk that is not mounted, mount it and run again; if it is gone for good, delete its line from {} to make a new one",
                known_stores_file().display()
            ),
        });
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Known {
    path: PathBuf,
    made: String,
}

/// When this machine made a store at `dir`, if it did.
fn known(dir: &Path) -> Option<String> {
    std::fs::read_to_string(known_stores_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Known>(l).ok())
        .find(|k| k.path == dir)
        .map(|k| k.made)
}

/// Notes the new store at `dir` when it is on a disk of its own (a block device or a network
/// share other than the root's filesystem): the case the check guards. A store on the root
/// filesystem or on a tmpfs is not noted, so one removed on purpose can be made again there.
/// Best effort: a user who may not write the state directory (not root) only goes without the
/// second check.
pub fn remember(dir: &Path) {
    use std::io::Write;
    let abs = resolved(dir);
    let root = filesystem_of(Path::new("/")).map(|m| m.point);
    let own_disk = filesystem_of(&abs).is_some_and(|m| {
        Some(&m.point) != root.as_ref()
            && (m.source.starts_with("/dev/") || m.source.contains(":/"))
    });
    if !own_disk {
        return;
    }
    if known(&abs).is_some() {
        return;
    }
    let file = known_stores_file();
    let line = Known {
        path: abs,
        made: chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
    };
    let Ok(mut text) = serde_json::to_string(&line) else {
        return;
    };
    text.push('\n');
    let _ = file
        .parent()
        .map(|p| std::fs::DirBuilder::new().recursive(true).create(p));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
    {
        let _ = f.write_all(text.as_bytes()).and_then(|()| f.sync_data());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_mount_points_and_the_deepest_one_a_store_is_below() {
        let fstab = "# comment\n\
            UUID=1 / ext4 defaults 0 1\n\
            UUID=2 /backup ext4 defaults,nofail 0 2\n\
            /dev/sdc1 /backup/usb\\040disk vfat noauto 0 0\n\
            /swapfile none swap sw 0 0\n\
            tmpfs /tmp tmpfs defaults 0 0\n";
        let m = fstab_mounts(fstab);
        assert_eq!(m.len(), 4);
        let of = |p: &str| mount_point_of(Path::new(p), &m).map(|(s, m)| (s.clone(), m.clone()));
        assert_eq!(of("/root/snapshots"), None);
        assert_eq!(of("/backup/rp"), Some(("UUID=2".into(), "/backup".into())));
        assert_eq!(
            of("/backup/usb disk/rp"),
            Some(("/dev/sdc1".into(), "/backup/usb disk".into()))
        );
        assert_eq!(of("/backupx/rp"), None, "whole components only");
    }
}
