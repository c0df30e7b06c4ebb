//! The configuration file under the system root, and what it protects.

use crate::util::*;

fn write_config(lab: &Lab, text: &str) {
    std::fs::create_dir_all(lab.sys().join("etc")).unwrap();
    std::fs::write(lab.sys().join("etc/system_snapshots.conf"), text).unwrap();
}

#[test]
fn config_under_the_root_sets_store_sources_and_protects_database_locations() {
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc/app var/lib/db home/u && echo v1 > etc/app/conf && echo rows1 > var/lib/db/table && echo doc > home/u/doc");
    // A point taken before the database location was configured still holds its files…
    SNAPSHOT.expect(0, &["--root", Lab::s(&lab.sys())]);
    write_config(&lab, "store = \"/root/snapshots\"\nsources = [\"/etc\", \"/var\"]\ndatabase_locations = [\"/var/lib/db\"]\n");
    lab.run_sh(
        "echo v2 > etc/app/conf && echo rows2 >> var/lib/db/table && echo new > var/lib/db/wal",
    );
    let out = SNAPSHOT.expect(0, &["--root", Lab::s(&lab.sys()), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["point"], 2);
    let t = lab.target("p2");
    RESTORE.expect(
        0,
        &[
            "--root",
            Lab::s(&lab.sys()),
            "--point",
            "2",
            "--target",
            Lab::s(&t),
            "--yes",
        ],
    );
    assert!(
        t.join("etc/app/conf").exists() && !t.join("var/lib/db").exists(),
        "point 2 recorded the database location"
    );
    assert!(!t.join("home").exists(), "point 2 went beyond its sources");
    let db = fingerprint(&lab.sys().join("var/lib/db"));
    // … and restoring either point leaves the database's files alone, byte for byte.
    for point in ["1", "2"] {
        RESTORE.expect(
            0,
            &[
                "--root",
                Lab::s(&lab.sys()),
                "--point",
                point,
                "--yes",
                "--no-safety-point",
            ],
        );
        assert_same(
            &db,
            &fingerprint(&lab.sys().join("var/lib/db")),
            &format!("database after restoring point {point}"),
        );
    }
    assert_eq!(
        std::fs::read_to_string(lab.sys().join("etc/app/conf")).unwrap(),
        "v2\n"
    );
    RESTORE.expect(
        0,
        &[
            "--root",
            Lab::s(&lab.sys()),
            "--point",
            "1",
            "--yes",
            "--no-safety-point",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(lab.sys().join("etc/app/conf")).unwrap(),
        "v1\n"
    );
    assert!(lab.sys().join("home/u/doc").exists());
}

#[test]
fn bad_config_files_give_precise_errors_and_change_nothing() {
    let cases = [
        ("retention_typo = 1\n", "line 1"),
        ("[retention]\nceiling_ratio = 0.2\n", "ceiling_ratio"),
        ("[retention]\nage_floor = \"a day\"\n", "\"24h\""),
        ("sources = [\"/etc\"\n", "line 1"),
    ];
    for (text, want) in cases {
        let lab = Lab::new();
        write_config(&lab, text);
        let out = SNAPSHOT.expect(2, &["--root", Lab::s(&lab.sys())]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("system_snapshots.conf") && err.contains(want),
            "{text:?}: {err}"
        );
        assert!(
            !lab.sys().join("root/snapshots").exists(),
            "{text:?}: a store was created"
        );
        let out = RESTORE.expect(2, &["--root", Lab::s(&lab.sys()), "--point", "1", "--yes"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains(want));
    }
    let lab = Lab::new();
    let out = SNAPSHOT.expect(
        1,
        &[
            "-c",
            "/nonexistent/restorepoint.conf",
            "--root",
            Lab::s(&lab.sys()),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/restorepoint.conf"));
}

#[test]
fn the_example_config_is_printed_and_accepted() {
    let lab = Lab::new();
    let out = SNAPSHOT.expect(0, &["config-example"]);
    std::fs::create_dir_all(lab.sys().join("etc")).unwrap();
    std::fs::write(lab.sys().join("etc/system_snapshots.conf"), &out.stdout).unwrap();
    lab.run_sh("echo x > etc/x");
    SNAPSHOT.expect(0, &["--root", Lab::s(&lab.sys())]);
    SNAPSHOT.expect(0, &["list", "--root", Lab::s(&lab.sys())]);
}

fn point_ids(lab: &Lab) -> Vec<i64> {
    listed_ids(&["--root", Lab::s(&lab.sys())])
}

#[test]
fn a_small_ceiling_removes_the_oldest_points_while_min_points_and_the_age_floor_hold() {
    let lab = Lab::new();
    write_config(
        &lab,
        "[retention]\nceiling_ratio = 1.0\nmin_points = 2\nage_floor = \"0s\"\n",
    );
    let mut fps = std::collections::BTreeMap::new();
    for i in 1..=5 {
        lab.run_sh(&format!(
            "head -c 1500000 /dev/urandom > etc/data && echo {i} > etc/n"
        ));
        let out = SNAPSHOT.expect(0, &["--root", Lab::s(&lab.sys())]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Taking snapshot at") && text.contains("Current size of the store"),
            "{text}"
        );
        fps.insert(i, fingerprint_except(&lab.sys(), &["root"]));
        let ids = point_ids(&lab);
        assert_eq!(
            ids.len(),
            (i as usize).min(2),
            "after snapshot {i}: {ids:?}\n{text}"
        );
        assert_eq!(*ids.last().unwrap(), i, "the latest point always stays");
    }
    for id in point_ids(&lab) {
        let t = lab.target(&format!("t{id}"));
        RESTORE.expect(
            0,
            &[
                "--root",
                Lab::s(&lab.sys()),
                "--point",
                &id.to_string(),
                "--target",
                Lab::s(&t),
                "--yes",
            ],
        );
        assert_same(
            &fps[&id],
            &fingerprint_except(&t, &["root"]),
            &format!("point {id} after retention"),
        );
    }
    // The age floor keeps everything younger, whatever the ceiling says.
    write_config(
        &lab,
        "[retention]\nceiling_ratio = 1.0\nmin_points = 1\nage_floor = \"24h\"\n",
    );
    for _ in 0..3 {
        lab.run_sh("echo more >> etc/n");
        SNAPSHOT.expect(0, &["--root", Lab::s(&lab.sys())]);
    }
    assert_eq!(point_ids(&lab).len(), 5);
    let out = SNAPSHOT.expect(0, &["prune", "--dry-run", "--root", Lab::s(&lab.sys())]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("kept: younger than 24h (age_floor)")
            && text.contains("the latest point is never removed"),
        "{text}"
    );
}

#[test]
fn hooks_dump_before_the_walk_abort_on_failure_and_report_it() {
    let lab = Lab::new();
    let sys = lab.sys();
    let marker = lab.target("failure-report");
    lab.run_sh("mkdir -p var/lib/db var/backups && echo live-rows > var/lib/db/table");
    // The dump lands in a recorded directory; the live database directory is not recorded.
    write_config(
        &lab,
        &format!(
            "database_locations = [\"/var/lib/db\"]\n[hooks]\npre_snapshot = [\"cp \\\"$RESTOREPOINT_ROOT/var/lib/db/table\\\" \\\"$RESTOREPOINT_ROOT/var/backups/db.dump\\\"\"]\non_failure = [\"echo \\\"$RESTOREPOINT_ERROR\\\" > {}\"]\n",
            Lab::s(&marker)
        ),
    );
    SNAPSHOT.expect(0, &["--root", Lab::s(&sys)]);
    let t = lab.target("t1");
    RESTORE.expect(
        0,
        &[
            "--root",
            Lab::s(&sys),
            "--point",
            "1",
            "--target",
            Lab::s(&t),
            "--yes",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(t.join("var/backups/db.dump")).unwrap(),
        "live-rows\n"
    );
    assert!(!t.join("var/lib/db").exists());

    // A failing hook stops the snapshot before anything is written, and on_failure is told why.
    let config = std::fs::read_to_string(sys.join("etc/system_snapshots.conf")).unwrap();
    write_config(
        &lab,
        &config.replace("pre_snapshot = [", "pre_snapshot = [\"exit 7\", "),
    );
    let out = SNAPSHOT.expect(1, &["--root", Lab::s(&sys)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`exit 7` failed with exit code 7") && err.contains("not taken"),
        "{err}"
    );
    assert_eq!(point_ids(&lab), vec![1]);
    assert!(std::fs::read_to_string(&marker)
        .unwrap()
        .contains("exit code 7"));

    // Optional: a warning, and the snapshot goes on.
    write_config(
        &lab,
        "[hooks]\npre_snapshot = [{ command = \"exit 7\", optional = true }]\n",
    );
    let out = SNAPSHOT.expect(3, &["--root", Lab::s(&sys)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("optional"));
    assert_eq!(point_ids(&lab), vec![1, 2]);

    // A hook that hangs is stopped at its timeout.
    write_config(
        &lab,
        "[hooks]\npre_snapshot = [{ command = \"sleep 60\", timeout = \"1s\" }]\n",
    );
    let out = SNAPSHOT.expect(1, &["--root", Lab::s(&sys)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not finish within 1 s"));
}

#[test]
fn the_point_and_audit_agree_on_what_is_left_out() {
    let lab = Lab::new();
    lab.run_sh(
        r#"
        mkdir -p tmp/session mnt/usb media/cd var/cache/app var/lib/dpkg etc home/u
        echo scratch > tmp/session/f && echo photo > mnt/usb/p && echo iso > media/cd/i
        echo blob > var/cache/app/b && echo status > var/lib/dpkg/status
        echo 123 > home/u/app.pid && echo swap > home/u/.notes.swp && echo keep > home/u/notes
        echo conf > etc/conf
        "#,
    );
    write_config(
        &lab,
        "store = \"/root/snapshots\"\nexclude = [\"/var/cache\", \"/var/lib/dpkg\"]\n",
    );
    let out = SNAPSHOT.expect(3, &["audit", "--json", "--root", Lab::s(&lab.sys())]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let audited: Vec<String> = v["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "/tmp/session",
        "/mnt/usb",
        "/media/cd",
        "/var/cache",
        "/var/lib/dpkg",
        "/home/u/app.pid",
        "/home/u/.notes.swp",
    ] {
        assert!(
            audited.iter().any(|a| a == want),
            "{want} not in the audit: {audited:?}"
        );
    }
    assert!(
        v["warnings"][0].as_str().unwrap().contains("/var/lib/dpkg"),
        "{v}"
    );
    let tmp_entry = v["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/tmp/session")
        .unwrap();
    assert_eq!(tmp_entry["bytes"], 8, "the size of what /tmp/session holds");
    let disk = tmp_entry["disk_bytes"].as_u64().unwrap();
    assert!(
        disk > 0 && disk % 512 == 0,
        "blocks, as du counts them: {tmp_entry}"
    );

    SNAPSHOT.expect(0, &["--root", Lab::s(&lab.sys())]);
    let t = lab.target("t");
    RESTORE.expect(
        0,
        &[
            "--root",
            Lab::s(&lab.sys()),
            "--point",
            "1",
            "--target",
            Lab::s(&t),
            "--yes",
        ],
    );
    let source = fingerprint_except(&lab.sys(), &["root"]);
    let point = fingerprint(&t);
    for path in source.keys() {
        let shown = format!("/{}", String::from_utf8_lossy(path));
        let left_out = audited
            .iter()
            .any(|a| shown == *a || shown.starts_with(&format!("{a}/")));
        assert_eq!(
            !point.contains_key(path),
            left_out,
            "{shown}: in the point {}, audited as left out {left_out}",
            point.contains_key(path)
        );
    }
    assert!(
        t.join("mnt").is_dir() && t.join("media").is_dir() && t.join("tmp").is_dir(),
        "/mnt/* keeps /mnt itself, /tmp/* keeps /tmp"
    );
}

/// Everything in the store, for checking that a refusal wrote nothing.
fn store_files(lab: &Lab) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = walkdir::WalkDir::new(lab.store_under_root())
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_type().is_file() && !e.file_name().to_string_lossy().starts_with("index.db")
        })
        .map(|e| (e.path().display().to_string(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

#[test]
fn admission_refuses_a_point_over_the_ceiling_and_writes_nothing() {
    let lab = Lab::new();
    write_config(
        &lab,
        "[retention]\nceiling_ratio = 1.1\nmin_points = 2\nage_floor = \"0s\"\n",
    );
    lab.run_sh("head -c 8000000 /dev/urandom > data.bin");
    SNAPSHOT.expect(0, &["--root", Lab::s(&lab.sys())]);
    // Replacing all the data: the deleted file goes to the pack whole, the new one to the replica.
    lab.run_sh("rm data.bin && head -c 8000000 /dev/urandom > other.bin");
    let before = store_files(&lab);
    let out = SNAPSHOT.expect(7, &["--root", Lab::s(&lab.sys())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was written") && err.contains("ceiling"),
        "{err}"
    );
    assert_eq!(point_ids(&lab), vec![1]);
    assert_eq!(
        store_files(&lab),
        before,
        "a refused snapshot changed the store"
    );
    // With room to spare the same change is recorded.
    write_config(&lab, "[retention]\nceiling_ratio = 3\n");
    SNAPSHOT.expect(0, &["--root", Lab::s(&lab.sys())]);
    assert_eq!(point_ids(&lab), vec![1, 2]);
}

#[test]
fn admission_keeps_a_reserve_free_on_the_stores_filesystem() {
    crate::require_root!();
    let lab = Lab::new();
    let fs = lab.target("small-fs");
    std::fs::create_dir_all(&fs).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&fs)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(fs.clone());
    let store = fs.join("store");
    // The recovery kit (two binaries) would not fit the 16 MB filesystem either.
    std::fs::create_dir_all(lab.sys().join("etc")).unwrap();
    std::fs::write(
        lab.sys().join("etc/system_snapshots.conf"),
        "[boot]\nkit = false\n",
    )
    .unwrap();
    let run = |code| {
        SNAPSHOT.expect(
            code,
            &["--root", Lab::s(&lab.sys()), "--store", Lab::s(&store)],
        )
    };
    lab.run_sh("head -c 9000000 /dev/urandom > a.bin");
    run(0);
    assert!(!store.join("kit").exists(), "kit = false keeps no kit");
    lab.run_sh("head -c 8000000 /dev/urandom > b.bin");
    let out = run(7);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must stay free") && err.contains("nothing was written"),
        "{err}"
    );
    SNAPSHOT.expect(0, &["list", "--store", Lab::s(&store)]);
}

/// `-q` prints nothing when all is well; every run, however it ends, leaves its figures in the
/// status file and the Prometheus textfile, the last success kept across a failure.
#[test]
fn quiet_runs_report_to_the_status_file_and_the_textfile() {
    let lab = Lab::new();
    let status = lab.target("status.json");
    let prom = lab.target("textfiles/restorepoint.prom");
    lab.run_sh("mkdir -p etc && echo a > etc/a");
    let conf = |hook: &str| {
        std::fs::write(
            lab.sys().join("etc/system_snapshots.conf"),
            format!(
                "[hooks]\n{hook}\n[boot]\ncapture = false\n[monitoring]\nsyslog = false\nstatus_file = \"{}\"\ntextfile = \"{}\"\n",
                status.display(),
                prom.display()
            ),
        )
        .unwrap();
    };
    conf("");
    let (sys, store_dir) = (lab.sys(), lab.store());
    let args = ["-q", "--root", Lab::s(&sys), "--store", Lab::s(&store_dir)];
    let out = SNAPSHOT.expect(0, &args);
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    assert_eq!(s["schema"], 1);
    assert_eq!(s["last_run"]["exit_code"], 0, "{s}");
    assert_eq!(s["last_run"]["point"], 1, "{s}");
    assert_eq!(s["points"], 1, "{s}");
    // What `du` says of the store, though only the small parts are walked (the data's size
    // comes from the index); the run measured it with SQLite's 32 KiB shared-memory file
    // still there.
    let du = std::process::Command::new("du")
        .args(["-s", "-B1", Lab::s(&store_dir)])
        .output()
        .unwrap();
    let du: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let told = s["store_bytes"].as_u64().unwrap();
    assert!(
        told.abs_diff(du) <= 64 << 10,
        "{told} against du's {du}: {s}"
    );
    let success = s["last_success"].as_i64().expect("a success time");
    assert!(s["last_failure"].is_null(), "{s}");
    let store = lab.store().display().to_string();
    let t = std::fs::read_to_string(&prom).unwrap();
    assert!(
        t.contains(&format!("restorepoint_points{{store=\"{store}\"}} 1\n")),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "restorepoint_last_success_timestamp_seconds{{store=\"{store}\"}} {success}\n"
        )),
        "{t}"
    );

    conf("pre_snapshot = [\"false\"]");
    let out = SNAPSHOT.run(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    assert_eq!(s["last_run"]["exit_code"], 1, "{s}");
    assert_eq!(s["last_success"], success, "the last success is kept: {s}");
    assert!(s["last_failure"].as_i64().is_some(), "{s}");
    assert!(
        s["last_run"]["message"]
            .as_str()
            .unwrap()
            .contains("pre_snapshot"),
        "{s}"
    );
    let t = std::fs::read_to_string(&prom).unwrap();
    assert!(
        t.contains(&format!(
            "restorepoint_last_run_exit_code{{store=\"{store}\"}} 1\n"
        )),
        "{t}"
    );
}

/// The apt hook: one point per apt run, labelled with its command line; none when the newest
/// point is recent; apt goes on when the point takes too long; and a real `apt-get install`
/// and `remove` of a local package with the hook configured.
#[test]
fn the_apt_hook_takes_one_point_per_apt_run_and_never_fails_apt() {
    crate::require_root!();
    for t in ["apt-get", "dpkg-deb", "dpkg"] {
        if !["/usr/bin", "/bin", "/usr/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(t).exists())
        {
            eprintln!("skipped: {t} is not installed");
            return;
        }
    }
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc && echo a > etc/a");
    let conf = |apt: &str, hooks: &str| {
        std::fs::write(
            lab.sys().join("etc/system_snapshots.conf"),
            format!("[boot]\ncapture = false\n[monitoring]\nsyslog = false\nstatus_file = \"{}\"\n[apt]\n{apt}\n[hooks]\n{hooks}\n",
                lab.target("status.json").display()),
        )
        .unwrap();
    };
    let hook = format!(
        "{} apt-hook --root {} --store {}",
        SNAPSHOT.path().display(),
        lab.sys().display(),
        lab.store().display()
    );
    // A stand-in for apt-get (a shell under that name) that invokes the hook twice, as apt does
    // when it calls dpkg twice in one run.
    let bin = lab.target("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/sh", bin.join("apt-get")).unwrap();
    // Output to a file, not a pipe: the pre_snapshot hook left running by a stopped point
    // would hold a pipe open (apt waits for the hook's process, not for its output).
    let log = lab.target("apt.log");
    let fake_apt = |script: &str| -> (bool, String) {
        let st = std::process::Command::new(bin.join("apt-get"))
            .arg("-c")
            .arg(script)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .status()
            .unwrap();
        (st.success(), std::fs::read_to_string(&log).unwrap())
    };
    conf("min_interval = \"0s\"", "");
    // No first point from apt: it would read the whole system while apt waits.
    let (ok, said) = fake_apt(&hook);
    assert!(ok, "{said}");
    assert!(said.contains("no restore point yet"), "{said}");
    assert!(!lab.store().join("index.db").exists(), "{said}");
    lab.snapshot();
    let (ok, said) = fake_apt(&format!("{hook} && {hook}"));
    assert!(ok, "{said}");
    assert_eq!(lab.point_ids(), vec![1, 2], "one point for one apt run");
    let listed = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&lab.store())]);
    let l: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        l["points"][1]["label"]
            .as_str()
            .unwrap()
            .starts_with("before "),
        "{l}"
    );
    assert!(
        l["points"][1]["label"]
            .as_str()
            .unwrap()
            .contains("apt-get"),
        "{l}"
    );

    // A point that takes too long: apt goes on (exit 0), the point is not kept, and the
    // snapshot's pre_snapshot hook (in a process group of its own) is stopped with it.
    let pid_file = lab.target("hook.pid");
    conf(
        "min_interval = \"0s\"\ntimeout = \"1s\"",
        &format!(
            "pre_snapshot = [{{ command = \"echo $$ > {} && exec sleep 300\", timeout = \"10m\" }}]",
            pid_file.display()
        ),
    );
    let (ok, said) = fake_apt(&hook);
    assert!(ok, "{said}");
    assert!(said.contains("apt goes on"), "{said}");
    assert_eq!(lab.point_ids(), vec![1, 2]);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
    assert!(
        stat.as_ref().map_or(true, |s| s.contains(") Z ")),
        "the hook (pid {}) outlived the stopped point: {stat:?}",
        pid.trim()
    );

    // Real apt-get, the hook in DPkg::Pre-Invoke, a local package.
    let pkg = lab.target("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/doc/rp-apt-hook-test")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: rp-apt-hook-test\nVersion: 1.0\nArchitecture: all\nMaintainer: restorepoint tests <root@localhost>\nDescription: a package for the apt hook test\n",
    )
    .unwrap();
    std::fs::write(pkg.join("usr/share/doc/rp-apt-hook-test/README"), "test\n").unwrap();
    let deb = lab.target("rp-apt-hook-test_1.0_all.deb");
    let st = std::process::Command::new("dpkg-deb")
        .args(["--build", Lab::s(&pkg), Lab::s(&deb)])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", text(&st));
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(["-y", "-q", "-o", &format!("DPkg::Pre-Invoke::={hook}")])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap()
    };
    // The dummy package never stays on the machine the tests run on, even when an assertion
    // fails half way.
    struct Removed;
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::process::Command::new("dpkg")
                .args(["--purge", "rp-apt-hook-test"])
                .output();
        }
    }
    let _removed = Removed;
    conf("min_interval = \"0s\"", "");
    let out = apt(&["install", Lab::s(&deb)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lab.point_ids(), vec![1, 2, 3], "{}", text(&out));
    let listed = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&lab.store())]);
    let l: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        l["points"][2]["label"]
            .as_str()
            .unwrap()
            .contains("install"),
        "{l}"
    );
    // The newest point is recent: the removal takes none, and apt is not held up.
    conf("min_interval = \"1h\"", "");
    let out = apt(&["remove", "rp-apt-hook-test"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("min_interval"), "{}", text(&out));
    assert_eq!(lab.point_ids(), vec![1, 2, 3]);
    let st = std::process::Command::new("dpkg")
        .args(["-s", "rp-apt-hook-test"])
        .output()
        .unwrap();
    assert!(!st.status.success(), "the package was removed");
}
