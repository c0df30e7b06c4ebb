//! Rolling the system itself back (`--root`, no `--target`), and forward again.

use std::time::Duration;

use crate::util::*;

fn points(lab: &Lab) -> Vec<serde_json::Value> {
    let out = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&lab.store())]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["points"]
        .as_array()
        .unwrap()
        .clone()
}

/// A tree, its point 1, and the tree changed in every way a bad upgrade changes it.
fn upgraded_lab() -> (Lab, Fingerprint, Fingerprint) {
    let lab = Lab::new();
    lab.run_sh(
        r#"
        mkdir -p etc/app boot usr/lib/modules/6.1 var/lib/app
        echo 'listen 80' > etc/app/app.conf && echo 'UUID=1 / ext4' > etc/fstab
        head -c 200000 /dev/urandom > boot/vmlinuz-6.1 && echo old > usr/lib/modules/6.1/mod.ko
        for i in $(seq 1 80); do seq 1 $i > var/lib/app/data$i; done
        ln -s vmlinuz-6.1 boot/vmlinuz
        "#,
    );
    let before = fingerprint(&lab.sys());
    lab.snapshot();
    lab.run_sh(
        r#"
        echo 'listen 8080' > etc/app/app.conf && echo 'UUID=2 / xfs' > etc/fstab
        head -c 250000 /dev/urandom > boot/vmlinuz-6.2 && rm boot/vmlinuz && ln -s vmlinuz-6.2 boot/vmlinuz
        rm -r usr/lib/modules/6.1 && mkdir -p usr/lib/modules/6.2 && echo new > usr/lib/modules/6.2/mod.ko
        for i in $(seq 1 80); do echo upgraded >> var/lib/app/data$i; done
        chmod 600 etc/app/app.conf
        "#,
    );
    let after = fingerprint(&lab.sys());
    (lab, before, after)
}

#[test]
fn restore_in_place_then_roll_forward_with_the_pre_restore_point() {
    let (lab, before, after) = upgraded_lab();
    let out = lab.restore_in_place(0, 1, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Boot-critical paths among them") && text.contains("/boot/vmlinuz"),
        "{text}"
    );
    assert_same(
        &before,
        &fingerprint(&lab.sys()),
        "after rolling back to point 1",
    );
    let pre: Vec<i64> = points(&lab)
        .iter()
        .filter(|p| p["kind"] == "pre-restore")
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(pre.len(), 1, "one pre-restore point: {:?}", points(&lab));
    lab.restore_in_place(0, pre[0], &["--no-safety-point"]);
    assert_same(
        &after,
        &fingerprint(&lab.sys()),
        "after rolling forward to the pre-restore point",
    );
    assert_eq!(points(&lab).len(), 2, "--no-safety-point takes none");
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&lab.store())]);
}

#[test]
fn restore_killed_during_the_apply_is_finished_by_running_it_again() {
    let (lab, before, after) = upgraded_lab();
    let args = lab.restore_args(1, &[]);
    let mut safety = None;
    for (round, nth) in [1, 2, 5, 17, 40, 77, 120].into_iter().enumerate() {
        let st = std::process::Command::new(RESTORE.path())
            .args(&args)
            .env(
                "RESTOREPOINT_FAILPOINT",
                format!("restore-after-item:{nth}"),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        if st.code().is_some() {
            // Fewer items than nth: the restore finished untouched by the failpoint.
            assert_eq!(st.code(), Some(0));
        }
        let out = RESTORE.expect(0, &args);
        assert_same(
            &before,
            &fingerprint(&lab.sys()),
            &format!("round {round}: rerun after a kill at item {nth}"),
        );
        let pre: Vec<i64> = points(&lab)
            .iter()
            .filter(|p| p["kind"] == "pre-restore")
            .map(|p| p["id"].as_i64().unwrap())
            .collect();
        assert_eq!(
            pre.len(),
            round + 1,
            "one pre-restore point per restore, none for the rerun: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let s = *pre.last().unwrap();
        assert_same(
            &after,
            &restored(&lab, s),
            &format!("round {round}: the pre-restore point holds the state before"),
        );
        safety = Some(s);
        // Back to the upgraded state for the next round.
        lab.restore_in_place(0, s, &["--no-safety-point"]);
        assert_same(
            &after,
            &fingerprint(&lab.sys()),
            &format!("round {round}: rolled forward"),
        );
    }
    // Random moments, with SIGKILL from outside.
    for round in 0..6u64 {
        let mut child = std::process::Command::new(RESTORE.path())
            .args(&args)
            .args(["--no-safety-point"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(round * 23 % 120));
        let _ = child.kill();
        let _ = child.wait();
        lab.restore_in_place(0, 1, &["--no-safety-point"]);
        assert_same(
            &before,
            &fingerprint(&lab.sys()),
            &format!("random round {round}"),
        );
        lab.restore_in_place(0, safety.unwrap(), &["--no-safety-point"]);
    }
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&lab.store())]);
}

fn restored(lab: &Lab, id: i64) -> Fingerprint {
    let t = lab.target(&format!("check{id}"));
    lab.restore(id, &t);
    fingerprint(&t)
}

#[test]
fn restore_never_writes_through_a_planted_symlink() {
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc/ssh && echo 'PermitRootLogin no' > etc/ssh/sshd_config && echo host > etc/hostname");
    let before = fingerprint(&lab.sys());
    lab.snapshot();
    let outside = lab.target("outside");
    std::fs::create_dir_all(outside.join("ssh")).unwrap();
    std::fs::write(outside.join("ssh/sshd_config"), "someone else's file\n").unwrap();
    std::fs::write(outside.join("hostname"), "theirs\n").unwrap();
    let outside_before = fingerprint(&outside);
    lab.run_sh(&format!("rm -r etc && ln -s {} etc", Lab::s(&outside)));
    lab.restore_in_place(0, 1, &["--no-safety-point"]);
    assert_same(
        &outside_before,
        &fingerprint(&outside),
        "the directory the planted symlink pointed to",
    );
    assert_same(&before, &fingerprint(&lab.sys()), "the restored tree");
}

#[test]
fn restore_of_one_path_leaves_everything_else_alone() {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir -p etc/app && echo 'v1' > etc/app/app.conf && echo 'keep v1' > etc/other.conf",
    );
    let point1 = fingerprint(&lab.sys());
    lab.snapshot();
    lab.run_sh("echo 'v2' > etc/app/app.conf && echo 'keep v2' > etc/other.conf && echo extra > etc/app/extra");
    let mut expected = fingerprint(&lab.sys());
    lab.restore_in_place(0, 1, &["--path", "/etc/app/app.conf", "--no-safety-point"]);
    let now = fingerprint(&lab.sys());
    expected.insert(
        b"etc/app/app.conf".to_vec(),
        point1[&b"etc/app/app.conf"[..]].clone(),
    );
    // The directory holding the restored file got a new entry, so only its mtime may differ.
    expected.insert(b"etc/app".to_vec(), now[&b"etc/app"[..]].clone());
    assert_same(&expected, &now, "after restoring one file");
    lab.restore_in_place(0, 1, &["--path", "/etc/app", "--no-safety-point"]);
    assert!(
        !lab.sys().join("etc/app/extra").exists(),
        "a directory restore removes what the point did not have"
    );
    assert_eq!(
        std::fs::read_to_string(lab.sys().join("etc/other.conf")).unwrap(),
        "keep v2\n"
    );
    let out = lab.restore_in_place(2, 1, &["--path", "/nowhere"]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nowhere is neither in point 1 nor on the system"));
}

#[test]
fn restore_leaves_what_the_point_excluded_untouched() {
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc var/cache/app var/lib/db && echo conf > etc/a.conf && echo cached > var/cache/app/blob && echo rows > var/lib/db/table");
    SNAPSHOT.expect(
        0,
        &[
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            Lab::s(&lab.store()),
            "--exclude",
            "/var/cache",
            "--exclude",
            "/var/lib/db",
        ],
    );
    lab.run_sh("echo conf2 > etc/a.conf && echo cached2 > var/cache/app/blob && echo more >> var/lib/db/table && echo new > var/lib/db/journal");
    let cache = std::fs::read(lab.sys().join("var/cache/app/blob")).unwrap();
    let db = fingerprint(&lab.sys().join("var/lib/db"));
    lab.restore_in_place(0, 1, &["--no-safety-point"]);
    assert_eq!(
        std::fs::read_to_string(lab.sys().join("etc/a.conf")).unwrap(),
        "conf\n"
    );
    assert_eq!(
        std::fs::read(lab.sys().join("var/cache/app/blob")).unwrap(),
        cache
    );
    assert_same(
        &db,
        &fingerprint(&lab.sys().join("var/lib/db")),
        "an excluded database directory",
    );
}

#[test]
fn a_running_executable_is_replaced_not_written_in_place() {
    let lab = Lab::new();
    lab.run_sh("mkdir -p usr/bin && cp /bin/sleep usr/bin/daemon && chmod 755 usr/bin/daemon");
    let before = fingerprint(&lab.sys());
    lab.snapshot();
    // The upgrade installs another binary, which is then running while we roll back.
    lab.run_sh("cp /bin/sleep usr/bin/daemon.new && printf 'upgraded' >> usr/bin/daemon.new && mv usr/bin/daemon.new usr/bin/daemon");
    let mut running = std::process::Command::new(lab.sys().join("usr/bin/daemon"))
        .arg("30")
        .spawn()
        .unwrap();
    // Writing into it now would fail with "Text file busy"; a rename over it works.
    assert!(std::fs::OpenOptions::new()
        .write(true)
        .open(lab.sys().join("usr/bin/daemon"))
        .is_err());
    lab.restore_in_place(0, 1, &["--no-safety-point"]);
    assert_same(
        &before,
        &fingerprint(&lab.sys()),
        "after replacing the running binary",
    );
    assert!(
        running.try_wait().unwrap().is_none(),
        "the running program was disturbed"
    );
    let _ = running.kill();
    let _ = running.wait();
}
