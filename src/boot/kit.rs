//! The recovery kit kept in `STORE/kit/`: the program under both command names (one file,
//! two hard links: each binary holds both commands and runs the one it is named as) and a
//! plain-text RECOVERY file with the steps and the recorded disk layout, so a rescue CD needs
//! nothing but the store's disk.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Capture;
use crate::error::{IoContext, Result};
use crate::store::blobs::get as get_blob;
use crate::store::Point;

pub const BINARIES: [&str; 2] = ["system_snapshot", "system_restore"];

/// Kit files being written are named `.kit-…` until renamed into place.
const TEMP_PREFIX: &str = ".kit-";
/// What RECOVERY may take, for the estimate (its text is a few KiB).
const RECOVERY_ALLOWANCE: u64 = 64 << 10;

/// Brings the kit up to date after point `latest`: binaries (hard-linked when on the same
/// filesystem, else copied; left alone when unchanged) and RECOVERY.
///
/// Every new file is written and synced under a temp name first, and only then renamed into
/// place, RECOVERY last: a failure while writing (a full filesystem) leaves the previous kit
/// as it was and no temp file. A kit that lacks a binary keeps no RECOVERY claiming it is whole.
pub fn refresh(
    store: &Path,
    root: &Path,
    latest: &Point,
    captures: &[Capture],
    note: Option<&str>,
) -> Result<()> {
    let kit = store.join("kit");
    fs::create_dir_all(&kit).ctx(|| format!("creating {}", kit.display()))?;
    remove_leftovers(store);
    let staged = stage_all(store, root, latest, captures, note, &kit);
    let staged = match staged {
        Ok(s) => s,
        Err(e) => {
            forget_recovery_if_incomplete(&kit);
            return Err(e);
        }
    };
    crate::failpoint::hit("kit-staged");
    for (tmp, to) in staged {
        tmp.persist(&to)
            .map_err(|e| e.error)
            .ctx(|| format!("renaming a new {} into place", to.display()))?;
    }
    fs::File::open(&kit)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing {}", kit.display()))
}

/// The program the kit holds: `system_snapshot` next to this one (installed together), else
/// this one. Either runs both commands.
pub fn source() -> Result<PathBuf> {
    let exe = std::env::current_exe().ctx(|| "finding this program's path".to_string())?;
    let beside = exe.with_file_name(BINARIES[0]);
    Ok(if beside.exists() { beside } else { exe })
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Every file the kit needs anew, written and synced under temp names, with where it goes.
fn stage_all(
    store: &Path,
    root: &Path,
    latest: &Point,
    captures: &[Capture],
    note: Option<&str>,
    kit: &Path,
) -> Result<Vec<(tempfile::TempPath, PathBuf)>> {
    let mut staged = Vec::new();
    let from = source()?;
    let [first, second] = BINARIES;
    let (to_first, to_second) = (kit.join(first), kit.join(second));
    if !up_to_date(&from, &to_first)? {
        let program = stage_binary(&from, kit, first)?;
        // The second name links the staged file: both names get the new program together.
        let twin = stage_binary(&program, kit, second)?;
        staged.push((program, to_first));
        staged.push((twin, to_second));
    } else if !same_inode(&to_first, &to_second) {
        staged.push((stage_binary(&to_first, kit, second)?, to_second));
    }
    let text = recovery_text(store, root, latest, captures, note);
    let mut tmp = temp_in(kit, "RECOVERY")?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .ctx(|| format!("writing RECOVERY into {}", kit.display()))?;
    staged.push((tmp.into_temp_path(), kit.join("RECOVERY")));
    Ok(staged)
}

fn temp_in(kit: &Path, name: &str) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{name}-"))
        .tempfile_in(kit)
        .ctx(|| format!("creating a temp file in {}", kit.display()))
}

fn up_to_date(from: &Path, to: &Path) -> Result<bool> {
    let src = fs::metadata(from).ctx(|| format!("reading {}", from.display()))?;
    Ok(fs::metadata(to).is_ok_and(|dst| {
        let same_file = dst.dev() == src.dev() && dst.ino() == src.ino();
        let same_copy = dst.len() == src.len() && dst.mtime() == src.mtime();
        same_file || same_copy
    }))
}

/// A hard link of `from` when the kit is on its filesystem, else a synced copy with its mode
/// and mtime; removed again when dropped before being renamed into place.
fn stage_binary(from: &Path, kit: &Path, name: &str) -> Result<tempfile::TempPath> {
    let link = kit.join(format!("{TEMP_PREFIX}{name}-link{}", std::process::id()));
    let _ = fs::remove_file(&link);
    if fs::hard_link(from, &link).is_ok() {
        return tempfile::TempPath::try_from_path(&link).or_else(|e| {
            let _ = fs::remove_file(&link);
            Err(e).ctx(|| format!("staging {}", link.display()))
        });
    }
    let src = fs::metadata(from).ctx(|| format!("reading {}", from.display()))?;
    let mut tmp = temp_in(kit, name)?;
    let what = || format!("copying {} into {}", from.display(), kit.display());
    let mut input = fs::File::open(from).ctx(what)?;
    std::io::copy(&mut input, tmp.as_file_mut()).ctx(what)?;
    let f = tmp.as_file();
    f.set_permissions(src.permissions()).ctx(what)?;
    f.set_modified(src.modified().ctx(what)?).ctx(what)?;
    f.sync_all().ctx(what)?;
    Ok(tmp.into_temp_path())
}

/// Removes the temp files of a refresh that was killed, and `NAME.new` left by versions
/// before this one. Only under the store's lock: a running refresh owns its temp files.
pub fn remove_leftovers(store: &Path) {
    let Ok(dir) = fs::read_dir(store.join("kit")) else {
        return;
    };
    for ent in dir.flatten() {
        let name = ent.file_name();
        let name = name.to_string_lossy();
        let legacy = BINARIES.iter().any(|b| name == format!("{b}.new"));
        if name.starts_with(TEMP_PREFIX) || legacy {
            let _ = fs::remove_file(ent.path());
        }
    }
}

fn forget_recovery_if_incomplete(kit: &Path) {
    let missing = BINARIES.iter().any(|name| !kit.join(name).exists());
    if missing {
        let _ = fs::remove_file(kit.join("RECOVERY"));
    }
}

/// Bytes a refresh would write to the store's filesystem now: each binary that differs from
/// the kit's copy and lives on another filesystem (a copy, not a link), and RECOVERY. For
/// admission control, so a snapshot whose kit would not fit is refused before it writes.
pub fn expected_growth(store: &Path) -> u64 {
    let kit = store.join("kit");
    let Ok(here) = fs::metadata(&kit).or_else(|_| fs::metadata(store)) else {
        return 0;
    };
    let binaries: u64 = source()
        .ok()
        .filter(|from| !up_to_date(from, &kit.join(BINARIES[0])).unwrap_or(false))
        .and_then(|from| fs::metadata(from).ok())
        .filter(|m| m.dev() != here.dev())
        .map_or(0, |m| m.len());
    binaries + RECOVERY_ALLOWANCE
}

/// The store's path as seen from a rescue system that mounts the root at /mnt/sysimage.
fn store_in_rescue(store: &Path, root: &Path) -> (PathBuf, bool) {
    let root = root.canonicalize().unwrap_or(root.to_path_buf());
    let store = store.canonicalize().unwrap_or(store.to_path_buf());
    match store.strip_prefix(&root) {
        Ok(rel) => (Path::new("/mnt/sysimage").join(rel), true),
        Err(_) => (store, false),
    }
}

fn recovery_text(
    store: &Path,
    root: &Path,
    latest: &Point,
    captures: &[Capture],
    note: Option<&str>,
) -> String {
    let (rescue_store, inside) = store_in_rescue(store, root);
    let kit = rescue_store.join("kit");
    let mut t = String::new();
    let _ = writeln!(t, "RESTOREPOINT RECOVERY KIT");
    let _ = writeln!(
        t,
        "Written with restore point {} ({}) by restorepoint {}, for {}.",
        latest.id,
        latest.created_at,
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "This directory holds system_snapshot and system_restore (one program under two names:\n\
         keep the names, it runs the command it is named as; dynamically linked against glibc:\n\
         any live CD of the same architecture and a similar age runs it) and this file."
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "ROLLING THE MACHINE BACK FROM A RESCUE CD");
    let boot_dev = captures
        .first()
        .map(|c| c.disk.as_str())
        .unwrap_or("/dev/DISK");
    let _ = writeln!(
        t,
        "1. Boot the rescue CD the way the machine boots ({}). Find the disks: lsblk -f",
        if captures.iter().any(|c| c.uefi) {
            "UEFI"
        } else {
            "BIOS or UEFI, as before"
        }
    );
    let _ = writeln!(
        t,
        "2. Mount the system's root filesystem, then its /boot (and /boot/efi) if separate:\n\
         \x20  mkdir -p /mnt/sysimage && mount /dev/ROOTPART /mnt/sysimage\n\
         \x20  mount /dev/BOOTPART /mnt/sysimage/boot      # only if /boot is its own filesystem"
    );
    let (what, boot_flag) = if captures.is_empty() {
        ("the files (this point holds no boot area)", "")
    } else {
        ("files and boot area", " --boot")
    };
    // A store on a filesystem of its own (a second disk, a USB disk, NFS) is not there in
    // the rescue system until it is mounted too.
    let root_fs = crate::store::place::filesystem_of(root).map(|m| m.point);
    match crate::store::place::filesystem_of(store) {
        Some(m) if Some(&m.point) != root_fs.as_ref() => {
            let at = if inside {
                let root = root.canonicalize().unwrap_or(root.to_path_buf());
                let rel = m.point.strip_prefix(&root).unwrap_or(&m.point);
                Path::new("/mnt/sysimage").join(rel)
            } else {
                m.point.clone()
            };
            let what = m
                .uuid
                .as_ref()
                .map_or(m.source.clone(), |u| format!("UUID={u}"));
            let _ = writeln!(
                t,
                "   The store is on a filesystem of its own: {} ({}{}), mounted at {} now.\n\
                 \x20  Mount it in the rescue system too, after the root:\n\
                 \x20  mkdir -p {at} && mount {what} {at}",
                m.source,
                m.fstype,
                m.uuid
                    .as_ref()
                    .map_or(String::new(), |u| format!(", UUID={u}")),
                m.point.display(),
                at = at.display(),
            );
        }
        _ if !inside => {
            let _ = writeln!(
                t,
                "   The store is not inside the root: mount its filesystem at {} too.",
                rescue_store.display()
            );
        }
        _ => {}
    }
    let _ = writeln!(
        t,
        "3. Roll back {what} in one run (it lists the points, asks which one,\n\
         \x20  shows the plan and asks you to type yes):\n\
         \x20  {}/system_restore --root /mnt/sysimage --store {}{boot_flag}",
        kit.display(),
        rescue_store.display()
    );
    if !captures.is_empty() {
        let _ = writeln!(
            t,
            "   The disk is found from the mount of /mnt/sysimage/boot, else by its identity; if the\n\
             \x20  rescue system cannot find it, add --device /dev/DISK (it was {boot_dev} here).\n\
             \x20  A disk whose partition layout differs from the one recorded below is refused."
        );
    }
    let _ = writeln!(t, "4. umount -R /mnt/sysimage; reboot.");
    let _ = writeln!(
        t,
        "If the boot area is refused because the layout changed, reinstall the boot loader:\n\
         \x20  for d in dev proc sys; do mount --bind /$d /mnt/sysimage/$d; done\n\
         \x20  chroot /mnt/sysimage grub-install {boot_dev} && chroot /mnt/sysimage update-grub"
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "RECORDED LAYOUT (point {})", latest.id);
    if captures.is_empty() {
        let why = note.unwrap_or("no reason recorded");
        let why = why.strip_prefix("boot area not captured: ").unwrap_or(why);
        let _ = writeln!(t, "No boot area captured: {why}");
    }
    for c in captures {
        let _ = writeln!(t, "Disk {} — found by: {}", c.summary(), c.found_by);
        for p in &c.layout.partitions {
            let _ = writeln!(
                t,
                "  partition {:>2}: start {:>12} sectors {:>12} type {}{}",
                p.number,
                p.start,
                p.sectors,
                p.kind,
                p.uuid
                    .as_ref()
                    .map(|u| format!(" uuid {u}"))
                    .unwrap_or_default()
            );
        }
        for r in &c.records {
            let Ok(text) = get_blob(store, &r.hash) else {
                continue;
            };
            let _ = writeln!(t, "\n--- {} ({})", r.name, r.source);
            t.push_str(&String::from_utf8_lossy(&text));
        }
    }
    t
}
