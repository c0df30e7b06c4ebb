//! The recovery kit on a small filesystem of its own (a tmpfs: the binaries are copied, not
//! linked): counted by admission control, and never left half-written.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Lab, RESTORE, SNAPSHOT};

struct Unmount(PathBuf);

impl Unmount {
    fn mount(args: &[&str], dir: &Path) -> Unmount {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(args).arg(dir).status().unwrap();
        assert!(st.success(), "mount {args:?} {}", dir.display());
        Unmount(dir.to_path_buf())
    }
}

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// What the kit's program takes (one file under both names).
fn binaries_size() -> u64 {
    std::fs::metadata(SNAPSHOT.path()).unwrap().len()
}

/// name → (size, mtime) of every file in the kit, and RECOVERY's text.
fn kit_state(kit: &Path) -> (BTreeMap<String, (u64, i64)>, String) {
    let files = std::fs::read_dir(kit)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.len(), m.mtime()),
            )
        })
        .collect();
    let recovery = std::fs::read_to_string(kit.join("RECOVERY")).unwrap_or_default();
    (files, recovery)
}

/// A whole kit: the program that ran under both names (one file), RECOVERY, nothing else.
#[track_caller]
fn assert_whole(kit: &Path) {
    let (files, recovery) = kit_state(kit);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["RECOVERY", "system_restore", "system_snapshot"],
        "the kit holds its three files and nothing half-written"
    );
    let m = std::fs::metadata(SNAPSHOT.path()).unwrap();
    assert_eq!(
        files[SNAPSHOT.0],
        (m.len(), m.mtime()),
        "the program is current"
    );
    assert!(
        std::fs::read(kit.join(SNAPSHOT.0)).unwrap() == std::fs::read(SNAPSHOT.path()).unwrap(),
        "the program is a whole copy"
    );
    let ino = |n: &str| std::fs::metadata(kit.join(n)).unwrap().ino();
    assert_eq!(ino(SNAPSHOT.0), ino(RESTORE.0), "one file under both names");
    assert!(recovery.contains("system_restore --root /mnt/sysimage"));
}

/// The kit's program runs the command it is named as.
#[test]
fn the_kit_runs_each_command_under_its_name() {
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc && echo conf > etc/conf");
    let store = lab.store();
    let out = snapshot(&lab, &store);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let kit = store.join("kit");
    assert_whole(&kit);
    let help = |name: &str| {
        let out = Command::new(kit.join(name)).arg("--help").output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        help("system_restore").contains("Roll this machine"),
        "{}",
        help("system_restore")
    );
    assert!(
        !help("system_snapshot").contains("Roll this machine"),
        "{}",
        help("system_snapshot")
    );
    // Restoring with the kit's system_restore works like the installed one.
    let t = lab.target("t");
    let out = Command::new(kit.join("system_restore"))
        .args([
            "--store",
            Lab::s(&store),
            "--point",
            "1",
            "--target",
            Lab::s(&t),
            "--yes",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read(t.join("etc/conf")).unwrap(), b"conf\n");
}

/// A store on a tmpfs that holds the kit with `spare` bytes to spare, and its first point,
/// which writes a whole kit; returns the mount's guard, the store and its kit.
#[track_caller]
fn small_store_with_a_kit(lab: &Lab, spare: u64) -> (Unmount, PathBuf, PathBuf) {
    let fs = lab.target("small-fs");
    let size = binaries_size() + spare;
    let guard = Unmount::mount(
        &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
        &fs,
    );
    lab.run_sh("mkdir -p etc && echo conf > etc/conf");
    let store = fs.join("store");
    let out = snapshot(lab, &store);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let kit = store.join("kit");
    assert_whole(&kit);
    (guard, store, kit)
}

fn snapshot(lab: &Lab, store: &Path) -> std::process::Output {
    SNAPSHOT.run(&["--root", Lab::s(&lab.sys()), "--store", Lab::s(store)])
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Ages the kit's copy of system_restore, so the next refresh copies it again.
fn make_stale(kit: &Path) {
    let st = Command::new("touch")
        .args(["-d", "2001-01-01"])
        .arg(kit.join("system_restore"))
        .status()
        .unwrap();
    assert!(st.success());
}

/// A snapshot whose kit refresh would not fit is refused before it writes anything; the kit
/// stays as it was. (Before, the copy filled the filesystem and left `system_restore.new`
/// and no RECOVERY.)
#[test]
fn a_kit_that_would_not_fit_is_refused_before_anything_is_written() {
    crate::require_root!();
    let lab = Lab::new();
    // Room for the kit once and a 5 % reserve, not for a second copy of a binary: half a
    // binary spare, since a fixed 48 MiB would hold a second copy of the release build's.
    let (_fs, store, kit) = small_store_with_a_kit(&lab, binaries_size() / 2);

    make_stale(&kit);
    let before = kit_state(&kit);
    lab.run_sh("echo changed > etc/conf");
    let out = snapshot(&lab, &store);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(text(&out).contains("recovery kit"), "{}", text(&out));
    assert_eq!(kit_state(&kit), before, "the kit is left as it was");
    let list = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&store)]);
    let points: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        points["points"].as_array().unwrap().len(),
        1,
        "no point was added"
    );
}

/// A refresh that fails while writing keeps the previous kit whole and leaves no temp file
/// (exit 3, saying why); one killed before renaming leaves the previous kit whole too, and
/// the next run clears its temp files and writes the new kit.
#[test]
fn a_failed_or_killed_kit_refresh_leaves_a_whole_kit() {
    crate::require_root!();
    let lab = Lab::new();
    // Room for a second copy of the program while the kit is refreshed, and the reserve.
    let (_fs, store, kit) = small_store_with_a_kit(&lab, binaries_size() + (48 << 20));

    // The kit's directory cannot be written to.
    make_stale(&kit);
    let before = kit_state(&kit);
    {
        let _ro = Unmount::mount(&["--bind", Lab::s(&kit)], &kit);
        let st = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&kit)
            .status()
            .unwrap();
        assert!(st.success(), "remounting the kit read-only");
        let out = snapshot(&lab, &store);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        assert!(
            text(&out).contains("recovery kit not updated"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(kit_state(&kit), before, "the previous kit, untouched");

    // Killed once every new file is written, before any is renamed into place.
    let killed = Command::new(SNAPSHOT.path())
        .args(["--root", Lab::s(&lab.sys()), "--store", Lab::s(&store)])
        .env("RESTOREPOINT_FAILPOINT", "kit-staged")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None, "killed by its failpoint");
    let (files, recovery) = kit_state(&kit);
    assert_eq!(recovery, before.1, "RECOVERY as it was");
    for (name, state) in &before.0 {
        assert_eq!(files.get(name), Some(state), "{name} as it was");
    }
    let out = snapshot(&lab, &store);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_whole(&kit);
    let recovery = std::fs::read_to_string(kit.join("RECOVERY")).unwrap();
    assert!(
        recovery.contains("Written with restore point 4"),
        "{recovery}"
    );
}
