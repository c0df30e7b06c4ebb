//! The Debian package (`dist/build-deb.sh`, `cargo deb`): built from the binaries these tests
//! run, unpacked, and checked for what an administrator expects of it.

use std::path::Path;
use std::process::Command;

use crate::require_root;
use crate::util::*;

/// The package, built into `lab` from the binaries these tests run; None (the test skips)
/// without cargo-deb or dpkg-deb.
fn build_deb(lab: &Lab) -> Option<std::path::PathBuf> {
    // Both tests write target/assets and cargo-deb's files under target/: one build at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deb || !Path::new("/usr/bin/dpkg-deb").exists() {
        eprintln!("skipped: cargo-deb or dpkg-deb is not installed (.ci/run installs them)");
        return None;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    // The binaries the tests run (target/debug or target/release, as cargo test built them):
    // the package's assets are generated from them, as dist/build-deb.sh does from the
    // release ones.
    let built = SNAPSHOT.path();
    let profile = match built.parent().and_then(|d| d.file_name()) {
        Some(d) if d == "debug" => "dev".to_string(),
        Some(d) => d.to_string_lossy().into_owned(),
        None => panic!("{} is not in a profile's directory", built.display()),
    };
    let assets = Path::new(root).join("target/assets");
    SNAPSHOT.expect(0, &["generate-assets", Lab::s(&assets)]);
    let deb = lab.target("restorepoint.deb");
    let out = Command::new(&cargo)
        .args([
            "deb",
            "--no-build",
            "--profile",
            &profile,
            "--output",
            Lab::s(&deb),
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    Some(deb)
}

#[test]
fn the_debian_package_holds_the_commands_config_units_hook_and_docs() {
    let lab = Lab::new();
    let Some(deb) = build_deb(&lab) else {
        return;
    };
    let field = |f: &str| {
        let o = Command::new("dpkg-deb")
            .args(["-f", Lab::s(&deb), f])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "restorepoint");
    assert_eq!(field("Section"), "admin");
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    let unpacked = lab.target("root");
    let ctrl = lab.target("control");
    for (what, dir) in [("-x", &unpacked), ("-e", &ctrl)] {
        let st = Command::new("dpkg-deb")
            .args([what, Lab::s(&deb), Lab::s(dir)])
            .status()
            .unwrap();
        assert!(st.success());
    }
    for f in [
        "usr/sbin/system_snapshot",
        "usr/sbin/system_restore",
        "etc/system_snapshots.conf",
        "etc/apt/apt.conf.d/80restorepoint",
        "etc/cron.d/restorepoint",
        "usr/lib/systemd/system/restorepoint.service",
        "usr/lib/systemd/system/restorepoint.timer",
        "usr/share/man/man8/system_snapshot.8.gz",
        "usr/share/man/man8/system_restore.8.gz",
        "usr/share/bash-completion/completions/system_restore",
        "usr/share/zsh/vendor-completions/_system_snapshot",
        "usr/share/fish/vendor_completions.d/system_restore.fish",
        "usr/share/doc/restorepoint/README.md",
    ] {
        assert!(unpacked.join(f).exists(), "{f} is in the package");
    }
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).unwrap();
    for f in [
        "/etc/system_snapshots.conf",
        "/etc/apt/apt.conf.d/80restorepoint",
        "/etc/cron.d/restorepoint",
    ] {
        assert!(
            conffiles.lines().any(|l| l == f),
            "{f} is a conffile: {conffiles}"
        );
    }
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(postinst.contains("restorepoint.timer"), "{postinst}");
    // The packaged program runs, under both names, and its config is the commented example.
    for b in ["system_snapshot", "system_restore"] {
        let o = Command::new(unpacked.join("usr/sbin").join(b))
            .arg("--version")
            .output()
            .unwrap();
        assert!(o.status.success() && text(&o).contains(b), "{}", text(&o));
    }
    let conf = std::fs::read_to_string(unpacked.join("etc/system_snapshots.conf")).unwrap();
    assert!(
        conf.contains("[apt]") && conf.contains("[monitoring]"),
        "{conf}"
    );
    let timer = std::fs::read_to_string(unpacked.join("usr/lib/systemd/system/restorepoint.timer"))
        .unwrap();
    assert!(timer.contains("RandomizedDelaySec"), "{timer}");
}

/// A minimal Debian 12 system (debootstrap minbase) that `.ci/run` makes once.
const CHROOT: &str = "/var/cache/restorepoint-e2e/chroot-bookworm";

/// Installed with dpkg into a fresh Debian 12 root, the package sets itself up (the timer
/// enabled, the config a conffile), its commands take and restore a point there, and a purge
/// removes it all but the store.
#[test]
fn the_package_installs_works_and_purges_in_a_debian_chroot() {
    require_root!();
    if !Path::new(CHROOT).join("usr/bin/dpkg").exists() {
        eprintln!("skipped: no Debian chroot at {CHROOT} (.ci/run makes it with debootstrap)");
        return;
    }
    let lab = Lab::new();
    let Some(deb) = build_deb(&lab) else {
        return;
    };
    let root = lab.target("debian");
    let st = Command::new("cp")
        .args(["-a", CHROOT, Lab::s(&root)])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::copy(&deb, root.join("tmp/restorepoint.deb")).unwrap();
    std::fs::copy(SNAPSHOT.path(), root.join("tmp/system_snapshot")).unwrap();
    struct Proc(std::path::PathBuf);
    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    // Without /proc (a chroot that never mounted it) every entry would look vanished: the
    // commands say what is missing instead.
    let bare = Command::new("chroot")
        .arg(&root)
        .args([
            "/tmp/system_snapshot",
            "--source",
            "/etc",
            "--store",
            "/tmp/st",
        ])
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(2), "{}", text(&bare));
    assert!(
        text(&bare).contains("/proc is not mounted"),
        "{}",
        text(&bare)
    );
    assert!(!root.join("tmp/st").exists(), "nothing was made");
    let st = Command::new("mount")
        .args(["--bind", "/proc", Lab::s(&root.join("proc"))])
        .status()
        .unwrap();
    assert!(st.success());
    let _proc = Proc(root.join("proc"));
    let inside = |cmd: &str| {
        Command::new("chroot")
            .arg(&root)
            .args(["sh", "-c", cmd])
            // The machine's environment, not the test runner's (cargo's variables, the tests'
            // state directory).
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .output()
            .unwrap()
    };
    let out = inside("dpkg -i /tmp/restorepoint.deb");
    assert!(out.status.success(), "{}", text(&out));
    // A symlink to /lib/systemd/system/…, which is the chroot's, not this machine's.
    let enabled = root.join("etc/systemd/system/timers.target.wants/restorepoint.timer");
    assert_eq!(
        std::fs::read_link(&enabled).ok(),
        Some("/lib/systemd/system/restorepoint.timer".into()),
        "the timer is enabled: {}",
        text(&out)
    );
    let out = inside("dpkg-query -W -f '${Conffiles}' restorepoint");
    assert!(
        text(&out).contains("/etc/system_snapshots.conf"),
        "{}",
        text(&out)
    );
    assert!(root
        .join("usr/share/man/man8/system_snapshot.8.gz")
        .exists());
    // The installed commands at work: a point of /etc, restored elsewhere.
    let out = inside("system_snapshot --source /etc -q; echo exit=$?");
    assert!(text(&out).contains("exit=0"), "{}", text(&out));
    let out = inside("system_restore --point latest --target /tmp/etc-back --yes");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(root.join("tmp/etc-back/etc/passwd")).unwrap(),
        std::fs::read(root.join("etc/passwd")).unwrap()
    );
    let out = inside("dpkg --purge restorepoint");
    assert!(out.status.success(), "{}", text(&out));
    for gone in [
        "usr/sbin/system_snapshot",
        "etc/system_snapshots.conf",
        "etc/systemd/system/timers.target.wants/restorepoint.timer",
    ] {
        assert!(
            root.join(gone).symlink_metadata().is_err(),
            "{gone} is gone after a purge"
        );
    }
    assert!(
        root.join("root/snapshots/index.db").exists(),
        "a purge never removes the store"
    );
}
