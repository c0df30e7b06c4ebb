//! A store on a disk of its own: points, kit and restores work from it, and a store whose disk
//! is not mounted is refused, never made afresh on the root disk below the empty mount point.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::*;

fn sh(script: &str) {
    let st = Command::new("sh").args(["-ec", script]).status().unwrap();
    assert!(st.success(), "{script}");
}

/// Unmounts when dropped (a failed assertion must not leave a mount behind).
struct Mounted(PathBuf);

impl Mounted {
    fn new(args: &str, dir: &Path) -> Mounted {
        sh(&format!("mount {args} '{}'", dir.display()));
        Mounted(dir.to_path_buf())
    }

    fn unmount(self) {
        sh(&format!("umount '{}'", self.0.display()));
        std::mem::forget(self);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn snapshot(lab: &Lab, store: &Path, fstab: Option<&Path>) -> Output {
    let mut cmd = Command::new(SNAPSHOT.path());
    cmd.args(["--root", Lab::s(&lab.sys()), "--store", Lab::s(store)]);
    if let Some(f) = fstab {
        cmd.env("RESTOREPOINT_FSTAB", f);
    }
    cmd.output().unwrap()
}

/// `/etc/fstab` mounts a filesystem at the store's parent, and nothing is mounted there: the
/// store is refused (exit 7, saying what to mount) and nothing is made below the mount point.
#[test]
fn a_store_below_an_fstab_mount_point_that_is_not_mounted_is_refused() {
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc && echo conf > etc/conf");
    let backup = lab.target("backup");
    std::fs::create_dir_all(&backup).unwrap();
    let fstab = lab.target("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# the system's\nUUID=0123-4567 {} ext4 defaults,nofail 0 2\n",
            backup.display()
        ),
    )
    .unwrap();
    let store = backup.join("rp");
    let out = snapshot(&lab, &store, Some(&fstab));
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("mount {}", backup.display())) && err.contains("UUID=0123-4567"),
        "{err}"
    );
    assert!(!store.exists(), "nothing was made below the mount point");
    if !is_root() {
        eprintln!("skipped the mounted half: needs root (mount)");
        return;
    }
    let m = Mounted::new("-t tmpfs tmpfs", &backup);
    let out = snapshot(&lab, &store, Some(&fstab));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(store.join("index.db").exists());
    m.unmount();
}

/// A store on an ext4 disk of its own: the point, the kit and a restore from it work, RECOVERY
/// says how to mount it from a rescue system; unmounted, the store is not made again on the
/// root disk (this machine remembers it made one there), and mounted again it takes the next
/// point.
#[test]
fn a_store_on_its_own_disk_is_never_made_again_on_the_root_disk() {
    crate::require_root!();
    if !Path::new("/sbin/mkfs.ext4").exists() && !Path::new("/usr/sbin/mkfs.ext4").exists() {
        eprintln!("skipped: mkfs.ext4 is not installed (.ci/run installs it)");
        return;
    }
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc usr/bin && echo conf > etc/conf && head -c 300000 /dev/urandom > usr/bin/tool");
    let img = lab.target("backup.img");
    sh(&format!(
        "truncate -s 1G '{0}' && mkfs.ext4 -q -F '{0}'",
        img.display()
    ));
    let backup = lab.target("backup");
    std::fs::create_dir_all(&backup).unwrap();
    let disk = Mounted::new(&format!("-o loop '{}'", img.display()), &backup);
    let store = backup.join("rp");
    let before = fingerprint(&lab.sys());
    let out = snapshot(&lab, &store, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let recovery = std::fs::read_to_string(store.join("kit/RECOVERY")).unwrap();
    assert!(
        recovery.contains("filesystem of its own")
            && recovery.contains(&format!("mounted at {} now", backup.display())),
        "{recovery}"
    );
    let t = lab.target("restored");
    RESTORE.expect(
        0,
        &[
            "--store",
            Lab::s(&store),
            "--point",
            "1",
            "--target",
            Lab::s(&t),
            "--yes",
        ],
    );
    assert_same(
        &before,
        &fingerprint(&t),
        "restored from the store's own disk",
    );

    disk.unmount();
    lab.run_sh("echo changed > etc/conf");
    let out = snapshot(&lab, &store, None);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("made a store there"),
        "{}",
        text(&out)
    );
    assert!(!store.exists(), "nothing was made on the root disk");
    // An empty directory where the store was (a disk mounted at the store's own path) too.
    std::fs::create_dir(&store).unwrap();
    let out = snapshot(&lab, &store, None);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0);
    std::fs::remove_dir(&store).unwrap();

    let disk = Mounted::new(&format!("-o loop '{}'", img.display()), &backup);
    let out = snapshot(&lab, &store, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(listed_ids(&["--store", Lab::s(&store)]), vec![1, 2]);
    disk.unmount();
}

/// An fstab mount point named through a symlink (`/mnt -> var/mnt`): mountinfo lists the
/// resolved path, and the store below it is made.
#[test]
fn a_mounted_fstab_point_named_through_a_symlink_takes_the_store() {
    crate::require_root!();
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc && echo conf > etc/conf");
    let real = lab.target("real");
    std::fs::create_dir_all(&real).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", Lab::s(&real)])
        .status()
        .unwrap();
    assert!(st.success());
    let link = lab.target("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let fstab = lab.target("fstab");
    std::fs::write(
        &fstab,
        format!("tmpfs {} tmpfs defaults 0 0\n", link.display()),
    )
    .unwrap();
    let store = link.join("rp");
    let out = Command::new(SNAPSHOT.path())
        .args(["--root", Lab::s(&lab.sys()), "--store", Lab::s(&store)])
        .env("RESTOREPOINT_FSTAB", &fstab)
        .output()
        .unwrap();
    let _ = Command::new("umount").arg("-l").arg(&real).status();
    eprintln!("{}", text(&out));
    assert_eq!(out.status.code(), Some(0), "mounted, yet refused");
}
