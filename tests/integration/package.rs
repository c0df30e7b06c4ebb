//! The Debian package (`dist/build-deb.sh`, `cargo deb`): built from the binaries these tests
//! run, unpacked, and checked for what an administrator expects of it.

use std::path::Path;
use std::process::Command;

use crate::util::*;

#[test]
fn the_debian_package_holds_the_commands_config_units_hook_and_docs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let has_deb = Command::new(&cargo)
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deb || !Path::new("/usr/bin/dpkg-deb").exists() {
        eprintln!("skipped: cargo-deb or dpkg-deb is not installed (.ci/run installs them)");
        return;
    }
    let lab = Lab::new();
    let root = env!("CARGO_MANIFEST_DIR");
    // The binaries the tests run (the dev profile's): the package's assets are generated from
    // them, as dist/build-deb.sh does from the release ones.
    let assets = Path::new(root).join("target/assets");
    SNAPSHOT.expect(0, &["generate-assets", Lab::s(&assets)]);
    let deb = lab.target("restorepoint.deb");
    let out = Command::new(&cargo)
        .args([
            "deb",
            "--no-build",
            "--profile",
            "dev",
            "--output",
            Lab::s(&deb),
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
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
