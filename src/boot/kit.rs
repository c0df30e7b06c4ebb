//! The recovery kit kept in `STORE/kit/`: both binaries and a plain-text RECOVERY file with
//! the steps and the recorded disk layout, so a rescue CD needs nothing but the store's disk.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{get_blob, Capture};
use crate::error::{IoContext, Result};
use crate::store::Point;

pub const BINARIES: [&str; 2] = ["system_snapshot", "system_restore"];

/// Brings the kit up to date after point `latest`: binaries (hard-linked when on the same
/// filesystem, else copied; left alone when unchanged) and RECOVERY.
pub fn refresh(
    store: &Path,
    root: &Path,
    latest: &Point,
    captures: &[Capture],
    note: Option<&str>,
) -> Result<()> {
    let kit = store.join("kit");
    fs::create_dir_all(&kit).ctx(|| format!("creating {}", kit.display()))?;
    let exe = std::env::current_exe().ctx(|| "finding this program's path".to_string())?;
    let bin_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for name in BINARIES {
        let from = bin_dir.join(name);
        if from.exists() {
            update_binary(&from, &kit.join(name))?;
        }
    }
    let text = recovery_text(store, root, latest, captures, note);
    let recovery = kit.join("RECOVERY");
    super::write_atomic(&recovery, text.as_bytes())
        .ctx(|| format!("writing {}", recovery.display()))
}

fn update_binary(from: &Path, to: &Path) -> Result<()> {
    let src = fs::metadata(from).ctx(|| format!("reading {}", from.display()))?;
    if let Ok(dst) = fs::metadata(to) {
        let same_file = dst.dev() == src.dev() && dst.ino() == src.ino();
        let same_copy = dst.len() == src.len() && dst.mtime() == src.mtime();
        if same_file || same_copy {
            return Ok(());
        }
    }
    let tmp = to.with_extension("new");
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(from, &tmp).is_err() {
        fs::copy(from, &tmp).ctx(|| format!("copying {} into the kit", from.display()))?;
        let f = fs::File::options()
            .write(true)
            .open(&tmp)
            .ctx(|| format!("opening {}", tmp.display()))?;
        f.set_modified(
            src.modified()
                .ctx(|| format!("reading {}", from.display()))?,
        )
        .ctx(|| format!("setting the time of {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
    }
    fs::rename(&tmp, to).ctx(|| format!("renaming {} into place", tmp.display()))
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
        "This directory holds system_snapshot and system_restore (dynamically linked against\n\
         glibc: any live CD of the same architecture and a similar age runs them) and this file."
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
    if !inside {
        let _ = writeln!(
            t,
            "   The store is not inside the root: mount its filesystem at {} too.",
            rescue_store.display()
        );
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
