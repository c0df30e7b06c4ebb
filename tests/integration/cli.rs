//! The command-line contract: exit codes, refusals that change nothing, messages that name the
//! point or path and say what to do.

use std::io::Write;
use std::os::fd::AsFd;

use crate::require_root;
use crate::util::*;

fn lab_with_points(n: usize) -> Lab {
    let lab = Lab::new();
    for i in 0..n {
        lab.run_sh(&format!(
            "mkdir -p etc && echo 'version {i}' > etc/app.conf && echo {i} > etc/n{i}"
        ));
        lab.snapshot();
    }
    lab
}

#[test]
fn a_second_writer_is_refused_with_the_holders_pid() {
    let lab = lab_with_points(1);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lab.store().join("lock"))
        .unwrap();
    rustix::fs::flock(
        lock.as_fd(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .unwrap();
    lock.set_len(0).unwrap();
    writeln!(&lock, "424242").unwrap();
    let out = SNAPSHOT.expect(
        4,
        &[
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            Lab::s(&lab.store()),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("424242") && err.contains("in use"), "{err}");
}

#[test]
fn restore_without_terminal_or_yes_refuses_and_writes_nothing() {
    let lab = lab_with_points(1);
    let t = lab.target("t");
    let out = RESTORE.expect(
        6,
        &[
            "--store",
            Lab::s(&lab.store()),
            "--point",
            "1",
            "--target",
            Lab::s(&t),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(!t.exists(), "a refused restore created its target");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let lab = lab_with_points(2);
    let t = lab.target("t");
    lab.restore(2, &t);
    let before = fingerprint(&t);
    let out = RESTORE.expect(
        0,
        &[
            "--store",
            Lab::s(&lab.store()),
            "--point",
            "1",
            "--target",
            Lab::s(&t),
            "--dry-run",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rewrite  /etc/app.conf") && text.contains("delete   /etc/n1"),
        "{text}"
    );
    assert_same(&before, &fingerprint(&t), "after --dry-run");
}

#[test]
fn unknown_point_is_an_error_naming_it() {
    let lab = lab_with_points(1);
    let out = RESTORE.expect(1, &lab.restore_to_args(99, &lab.target("t"), &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no restore point 99") && err.contains("system_snapshot list"),
        "{err}"
    );
    let out = SNAPSHOT.expect(1, &["show", "7", "--store", Lab::s(&lab.store())]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no restore point 7"));
}

#[test]
fn missing_store_says_so() {
    let lab = Lab::new();
    let out = SNAPSHOT.expect(1, &["list", "--store", Lab::s(&lab.store())]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a restorepoint store"));
}

#[test]
fn verify_reports_damage_by_path_and_point_with_its_own_exit_code() {
    let lab = lab_with_points(3);
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&lab.store())]);
    std::fs::write(lab.store().join("replica/etc/app.conf"), "tampered\n").unwrap();
    let out = SNAPSHOT.expect(5, &["verify", "--store", Lab::s(&lab.store())]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/etc/app.conf") && text.contains("point 3"),
        "{text}"
    );
    // A restore that needs the damaged file stops before writing it, with the same exit code.
    let out = RESTORE.expect(5, &lab.restore_to_args(1, &lab.target("t"), &[]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/etc/app.conf"));
}

#[test]
fn list_json_has_the_contract_fields_oldest_first() {
    let lab = lab_with_points(3);
    let out = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&lab.store())]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<i64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    for p in v["points"].as_array().unwrap() {
        for key in ["id", "created_at", "kind", "label", "files", "bytes"] {
            assert!(p.get(key).is_some(), "missing {key} in {p}");
        }
        assert!(chrono::DateTime::parse_from_rfc3339(p["created_at"].as_str().unwrap()).is_ok());
        assert_eq!(p["kind"], "scheduled");
    }
}

#[test]
fn prune_oldest_never_removes_the_latest_and_the_rest_restore() {
    let lab = Lab::new();
    let mut fps = Vec::new();
    for i in 0..3 {
        lab.run_sh(&format!("echo 'version {i}' > app.conf && echo {i} >> log"));
        fps.push((lab.snapshot(), fingerprint(&lab.sys())));
    }
    SNAPSHOT.expect(
        0,
        &["prune", "--oldest", "5", "--store", Lab::s(&lab.store())],
    );
    let out = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&lab.store())]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["points"].as_array().unwrap().len(),
        1,
        "only the latest point stays"
    );
    lab.restore(3, &lab.target("t"));
    assert_same(
        &fps[2].1,
        &fingerprint(&lab.target("t")),
        "latest point after pruning",
    );
    assert!(
        !lab.store().join("packs/2.pack").exists() && !lab.store().join("packs/3.pack").exists()
    );
}

#[test]
fn options_may_stand_before_or_after_the_subcommand() {
    let lab = lab_with_points(1);
    let a = SNAPSHOT.expect(0, &["--store", Lab::s(&lab.store()), "list", "--json"]);
    let b = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&lab.store())]);
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn unreadable_files_are_warnings_and_the_point_still_completes() {
    require_root!();
    let lab = Lab::new();
    lab.run_sh(
        "mkdir etc && echo public > etc/motd && echo secret > etc/shadow && chmod 000 etc/shadow",
    );
    // The snapshot runs as nobody, who can read everything but etc/shadow.
    open_to_nobody(&lab);
    let out = snapshot_as_nobody(&lab);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("/etc/shadow") && err.contains("cannot read"),
        "{err}"
    );
    let out = SNAPSHOT.expect(0, &["show", "1", "--json", "--store", Lab::s(&lab.store())]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = v["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"/etc/motd") && !paths.contains(&"/etc/shadow"),
        "{paths:?}"
    );
}

/// Lets nobody (uid 65534) into the lab: before the first point, which records the root's mode.
fn open_to_nobody(lab: &Lab) {
    for d in [lab.dir.path().to_path_buf(), lab.sys()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
}

/// Runs a snapshot of the lab as nobody (see `open_to_nobody`).
fn snapshot_as_nobody(lab: &Lab) -> std::process::Output {
    if lab.store().exists() {
        lab.run_sh(&format!("chmod -R a+rwX '{}'", lab.store().display()));
    }
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(SNAPSHOT.path())
        .args([
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            Lab::s(&lab.store()),
        ])
        .output()
        .unwrap()
}

/// A directory the walk cannot list (here: nobody, mode 000; on a server an I/O error or a
/// FUSE mount refusing root) is not a directory whose files were deleted: the point keeps
/// what the one before had there, and restoring it deletes nothing.
#[test]
fn a_directory_that_cannot_be_listed_keeps_its_files_in_the_point() {
    require_root!();
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc/private && echo key > etc/private/key && echo pub > etc/motd");
    open_to_nobody(&lab);
    let first = lab.snapshot();
    let tree = fingerprint(&lab.sys());
    lab.run_sh("chmod 000 etc/private");
    let out = snapshot_as_nobody(&lab);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("/etc/private: cannot open")
            && err.contains("keeps what the point before it recorded"),
        "{err}"
    );
    let second = *lab.point_ids().last().unwrap();
    assert_ne!(second, first);
    let out = SNAPSHOT.expect(
        0,
        &[
            "show",
            &second.to_string(),
            "--json",
            "--store",
            Lab::s(&lab.store()),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["deleted"], serde_json::json!([]), "{v}");
    let t = lab.target("second");
    lab.restore(second, &t);
    assert_same(
        &tree,
        &fingerprint(&t),
        "point 2, taken while etc/private could not be listed",
    );
}

/// A hardlink follower below a directory that cannot be listed, whose leader outside is
/// rewritten (as dpkg does: a new inode renamed over): keeping the follower would name a
/// leader's content the point does not hold, and every later snapshot would be refused.
#[test]
fn a_follower_below_an_unlisted_directory_never_blocks_later_points() {
    require_root!();
    let lab = Lab::new();
    // Nobody's own files: its snapshot sets the replica's times as the tree's.
    lab.run_sh(
        "mkdir -p etc/private && echo v1 > etc/lead && ln etc/lead etc/private/twin && chown -R 65534:65534 .",
    );
    open_to_nobody(&lab);
    lab.snapshot();
    lab.run_sh("echo v2 > etc/lead.new && mv etc/lead.new etc/lead && chmod 000 etc/private");
    for run in 0..2 {
        let out = snapshot_as_nobody(&lab);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "run {run}: {err}");
    }
    assert_eq!(lab.point_ids().len(), 3);
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&lab.store())]);
}

#[test]
fn packs_no_point_refers_to_are_removed_by_the_next_writer() {
    let lab = lab_with_points(2);
    std::fs::write(
        lab.store().join("packs/77.pack"),
        b"left by a crashed prune",
    )
    .unwrap();
    std::fs::write(lab.store().join("packs/notes.txt"), b"not ours").unwrap();
    lab.snapshot();
    assert!(!lab.store().join("packs/77.pack").exists());
    assert!(
        lab.store().join("packs/notes.txt").exists(),
        "only pack files are removed"
    );
    assert!(lab.store().join("packs/2.pack").exists());
}

#[test]
fn diff_shows_text_changes_binary_changes_and_metadata() {
    let lab = Lab::new();
    lab.run_sh("mkdir etc && printf 'a\\nb\\nc\\n' > etc/app.conf && head -c 3000 /dev/urandom > etc/blob && echo x > etc/gone");
    lab.snapshot();
    lab.run_sh("printf 'a\\nB\\nc\\n' > etc/app.conf && head -c 3000 /dev/urandom > etc/blob && rm etc/gone && echo y > etc/new && chmod 600 etc/app.conf");
    lab.snapshot();
    let (sys, store) = (lab.sys(), lab.store());
    let out = SNAPSHOT.expect(
        0,
        &[
            "diff",
            "1",
            "2",
            "--root",
            Lab::s(&sys),
            "--store",
            Lab::s(&store),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "-b\n",
        "+B\n",
        "--- /etc/app.conf (point 1)",
        "mode 0644 -> 0600",
        "binary   /etc/blob: 3000 bytes",
        "deleted  /etc/gone",
        "added    /etc/new",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    lab.run_sh("echo z >> etc/new");
    let out = SNAPSHOT.expect(
        0,
        &[
            "diff",
            "2",
            "/etc/new",
            "--root",
            Lab::s(&sys),
            "--store",
            Lab::s(&store),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("+++ /etc/new (now)") && text.contains("+z") && !text.contains("app.conf"),
        "{text}"
    );
}

/// `ls` and `cat` look into older points without restoring them: each point's own listing
/// and content, a hardlink's content, refusals that name what to do.
#[test]
fn ls_and_cat_show_a_points_tree_and_files_as_they_were() {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir -p etc/ssh && echo 'port 22' > etc/ssh/sshd_config && chmod 600 etc/ssh/sshd_config \
         && ln -s sshd_config etc/ssh/link && head -c 300000 /dev/urandom > etc/blob && ln etc/blob etc/blob2",
    );
    let first = lab.snapshot();
    let blob1 = std::fs::read(lab.sys().join("etc/blob")).unwrap();
    lab.run_sh("echo 'port 2222' > etc/ssh/sshd_config && rm etc/ssh/link && head -c 1000 /dev/urandom >> etc/blob");
    let second = lab.snapshot();
    let store = lab.store();
    let s = Lab::s(&store);
    let cat = |id: i64, p: &str| {
        SNAPSHOT
            .expect(0, &["cat", &id.to_string(), p, "--store", s])
            .stdout
    };
    assert_eq!(cat(first, "/etc/ssh/sshd_config"), b"port 22\n");
    assert_eq!(cat(second, "/etc/ssh/sshd_config"), b"port 2222\n");
    assert!(
        cat(first, "/etc/blob2") == blob1,
        "a hardlink's content is its leader's"
    );
    let ls =
        |id: i64, p: &str| text(&SNAPSHOT.expect(0, &["ls", &id.to_string(), p, "--store", s]));
    let l1 = ls(first, "/etc/ssh");
    assert!(
        l1.contains("-rw------- ") && l1.contains("sshd_config"),
        "{l1}"
    );
    assert!(l1.contains("link -> sshd_config"), "{l1}");
    assert!(
        !ls(second, "/etc/ssh").contains("link"),
        "gone in the second point"
    );
    let json = SNAPSHOT.expect(
        0,
        &["ls", &first.to_string(), "/etc", "--store", s, "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["schema"], 1);
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["/etc/blob", "/etc/blob2", "/etc/ssh"]);
    // `find`: which points hold a path, by name anywhere or anchored at the root.
    let found = |p: &str| -> Vec<(i64, String)> {
        let out = SNAPSHOT.expect(0, &["find", p, "--store", s, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["found"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["point"].as_i64().unwrap(),
                    f["path"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        found("link"),
        vec![(first, "/etc/ssh/link".to_string())],
        "only the first point had it"
    );
    assert_eq!(found("/etc/*").len(), 6, "{:?}", found("/etc/*"));
    assert_eq!(found("/blob"), vec![]);
    let out = SNAPSHOT.run(&["cat", &first.to_string(), "/etc/ssh", "--store", s]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not a file"), "{}", text(&out));
    let out = SNAPSHOT.run(&["cat", &second.to_string(), "/etc/ssh/link", "--store", s]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not in point"), "{}", text(&out));
}

/// The snapshot's own flags belong to the snapshot (and `audit`): another subcommand refuses
/// them instead of ignoring them.
#[test]
fn snapshot_flags_are_refused_by_the_other_subcommands() {
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc && echo a > etc/a");
    lab.snapshot();
    let s = lab.store();
    for bad in [
        &["list", "--label", "foo"][..],
        &["list", "--source", "/nope"][..],
        &["verify", "--level", "3"][..],
        &["prune", "--exclude", "/x", "--dry-run"][..],
    ] {
        let mut args = bad.to_vec();
        args.extend(["--store", Lab::s(&s)]);
        let out = SNAPSHOT.run(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
    }
    // Before the subcommand's name too.
    let out = SNAPSHOT.run(&["--label", "x", "list", "--store", Lab::s(&s)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let help = text(&SNAPSHOT.expect(0, &["list", "--help"]));
    assert!(
        !help.contains("--source") && !help.contains("--label"),
        "{help}"
    );
    // `audit` takes the selection after its name too.
    let sys = lab.sys();
    let out = SNAPSHOT.run(&[
        "audit",
        "--root",
        Lab::s(&sys),
        "--source",
        "/etc",
        "--json",
    ]);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "{}",
        text(&out)
    );
}

/// With `--json`, an error is JSON on stdout too (schema 1, its kind and exit code), besides
/// the line on stderr.
#[test]
fn errors_are_json_when_json_is_asked_for() {
    let lab = Lab::new();
    lab.run_sh("echo a > f");
    lab.snapshot();
    let s = lab.store();
    for (args, code, kind) in [
        (vec!["show", "99", "--json"], 1, "failure"),
        (vec!["cat", "1", "/nope", "--json"], 2, "usage"),
    ] {
        let mut a = args.clone();
        a.extend(["--store", Lab::s(&s)]);
        let out = SNAPSHOT.run(&a);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)));
        assert_eq!(v["schema"], 1);
        assert_eq!(v["error"]["exit_code"], code, "{v}");
        assert_eq!(v["error"]["kind"], kind, "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let out = RESTORE.run(&[
        "--store",
        Lab::s(&s),
        "--point",
        "77",
        "--target",
        Lab::s(&lab.target("t")),
        "--yes",
        "--json",
    ]);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("restore's error as JSON");
    assert_eq!(
        v["error"]["exit_code"].as_i64(),
        out.status.code().map(i64::from),
        "{v}"
    );
}

/// Every command's `--json` is one object that says its schema (docs/json.md), times in it
/// are RFC 3339, and `diff --json` is JSON rather than the text diff.
#[test]
fn every_json_document_is_an_object_with_its_schema() {
    let lab = lab_with_points(2);
    let (sys, store) = (lab.sys(), lab.store());
    let place = ["--root", Lab::s(&sys), "--store", Lab::s(&store)];
    let target = lab.target("t");
    let restore = lab.restore_to_args(1, &target, &["--dry-run"]);
    // Not a dry run: the plan is for people (stderr), stdout holds the report alone.
    let restored = lab.restore_to_args(1, &lab.target("u"), &[]);
    let hook_conf = lab.target("hook.conf");
    std::fs::write(&hook_conf, "[hooks]\npre_snapshot = [\"exit 9\"]\n").unwrap();
    let s = Lab::s(&store);
    let t = Lab::s(&target);
    let unconfirmed: Vec<String> = ["--store", s, "--point", "1", "--target", t]
        .map(String::from)
        .into();
    let inside = store.join("x");
    let in_store = lab.restore_to_args(1, &inside, &[]);
    let device_alone = lab.restore_to_args(1, &target, &["--device", "/dev/null"]);
    let url = format!("file://{}", lab.target("remote").display());
    let remote = |extra: &[&str]| -> Vec<String> {
        ["--store", &url, "--target", t]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };
    let remote_path = remote(&["--point", "1", "--path", "/etc", "--yes"]);
    let remote_no_point = remote(&["--yes"]);
    let remote_unconfirmed = remote(&["--point", "1"]);
    let bare_remote_no_point: Vec<String> = [
        "--store",
        &url,
        "--bare-metal",
        "--device",
        "/dev/null",
        "--yes",
    ]
    .map(String::from)
    .into();
    let runs: Vec<(&Bin, Vec<&str>, i32)> = vec![
        (&SNAPSHOT, vec!["list"], 0),
        (&SNAPSHOT, vec!["show", "2"], 0),
        (&SNAPSHOT, vec!["ls", "1", "/etc"], 0),
        (&SNAPSHOT, vec!["find", "app.conf"], 0),
        (&SNAPSHOT, vec!["diff", "1", "2"], 0),
        (&SNAPSHOT, vec!["diff", "1"], 0),
        (&SNAPSHOT, vec!["verify"], 0),
        (&SNAPSHOT, vec!["prune", "--dry-run"], 0),
        (&SNAPSHOT, vec!["prune", "--oldest", "1", "--dry-run"], 0),
        (&SNAPSHOT, vec!["prune", "1", "--dry-run"], 0),
        (&SNAPSHOT, vec!["prune", "2"], 7),
        (&SNAPSHOT, vec!["pin", "1"], 0),
        (&SNAPSHOT, vec!["unpin", "1"], 0),
        (&SNAPSHOT, vec!["audit"], 0),
        (&SNAPSHOT, vec![], 0),
        (&SNAPSHOT, vec!["show", "99"], 1),
        (&RESTORE, restore.iter().map(String::as_str).collect(), 0),
        (&RESTORE, restored.iter().map(String::as_str).collect(), 0),
        (&SNAPSHOT, vec!["config-example"], 0),
        // Not under apt, and the newest point is seconds old: skipped, and said why.
        (&SNAPSHOT, vec!["apt-hook"], 0),
        // The snapshot's own flag given to another subcommand, and one clap does not know.
        (&SNAPSHOT, vec!["list", "--label", "x"], 2),
        (&SNAPSHOT, vec!["list", "--no-such-flag"], 2),
        (&SNAPSHOT, vec!["-c", Lab::s(&hook_conf)], 1),
        // No terminal to ask on and no --yes.
        (
            &RESTORE,
            unconfirmed.iter().map(String::as_str).collect(),
            6,
        ),
        (&RESTORE, in_store.iter().map(String::as_str).collect(), 2),
        (
            &RESTORE,
            device_alone.iter().map(String::as_str).collect(),
            2,
        ),
        (
            &RESTORE,
            remote_path.iter().map(String::as_str).collect(),
            2,
        ),
        (
            &RESTORE,
            remote_no_point.iter().map(String::as_str).collect(),
            2,
        ),
        (
            &RESTORE,
            remote_unconfirmed.iter().map(String::as_str).collect(),
            6,
        ),
        (
            &RESTORE,
            bare_remote_no_point.iter().map(String::as_str).collect(),
            6,
        ),
    ];
    for (runner, args, code) in runs {
        let mut all = args.clone();
        if runner.0 == "system_snapshot" {
            all.extend(place);
        }
        all.push("--json");
        let out = runner.run(&all);
        assert_eq!(out.status.code(), Some(code), "{all:?}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{all:?} printed no JSON ({e}): {}", text(&out)));
        assert_eq!(v["schema"], 1, "{all:?}: {v}");
        if code != 0 && code != 3 {
            assert_eq!(v["error"]["exit_code"], code, "{all:?}: {v}");
            assert!(v["error"]["message"].as_str().is_some(), "{all:?}: {v}");
        }
        if args.first() == Some(&"apt-hook") {
            assert_eq!(v["skipped"]["reason"], "recent", "{v}");
            assert!(v["skipped"]["point"].as_i64().is_some(), "{v}");
        }
        if args.first() == Some(&"diff") {
            let changes = v["changes"].as_array().unwrap();
            let conf = changes
                .iter()
                .find(|c| c["path"] == "/etc/app.conf")
                .unwrap_or_else(|| panic!("{v}"));
            assert_eq!(conf["change"], "modified", "{v}");
            assert!(conf["text"].as_str().unwrap().contains("-version 0"), "{v}");
            let mtime = conf["old"]["mtime"].as_str().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(mtime).is_ok(),
                "{mtime}"
            );
        }
    }
    let out = SNAPSHOT.expect(0, &["list", "--json", "--store", Lab::s(&store)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let created = v["points"][0]["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
    let disk = v["store"]["disk_bytes"].as_u64().unwrap();
    assert!(disk > 0 && disk % 512 == 0, "the store's blocks: {v}");
    let out = SNAPSHOT.expect(0, &["list", "--store", Lab::s(&store)]);
    assert!(text(&out).contains("on disk ("), "{}", text(&out));
}

/// A label given after the fact shows in `list`, survives the loss of index.db (repair
/// replays it from index.log), and an empty one removes it; a missing point is named.
#[test]
fn a_point_is_labelled_after_the_fact() {
    let lab = lab_with_points(2);
    let s = Lab::s(&lab.store()).to_string();
    let labels = || -> Vec<serde_json::Value> {
        let out = SNAPSHOT.expect(0, &["list", "--json", "--store", &s]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].clone())
            .collect()
    };
    let out = SNAPSHOT.expect(0, &["label", "1", "before the upgrade", "--store", &s]);
    assert!(
        text(&out).contains("labelled \"before the upgrade\""),
        "{}",
        text(&out)
    );
    assert_eq!(
        labels(),
        [
            serde_json::json!("before the upgrade"),
            serde_json::Value::Null
        ]
    );
    std::fs::remove_file(lab.store().join("index.db")).unwrap();
    SNAPSHOT.expect(0, &["repair", "--store", &s]);
    assert_eq!(labels()[0], "before the upgrade", "repair keeps the label");
    SNAPSHOT.expect(0, &["label", "1", "", "--store", &s]);
    assert_eq!(labels()[0], serde_json::Value::Null);
    let out = SNAPSHOT.run(&["label", "7", "x", "--store", &s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no restore point 7"), "{}", text(&out));
}

/// Another user than root is told that root's store is root's (not that it is missing or
/// empty), before anything is read or written; and a restore as a user sums up in one line
/// the owners it could not set, instead of a warning for every entry.
#[test]
fn another_user_gets_the_right_messages() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    require_root!();
    let lab = lab_with_points(1);
    lab.run_sh("mkdir -p etc/d && for i in 1 2 3 4 5 6 7; do echo $i > etc/d/f$i; done && chown -R 1000:1000 etc/d");
    lab.snapshot();
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |bin: &Bin, args: &[&str]| {
        std::process::Command::new(bin.path())
            .args(args)
            .uid(65534)
            .gid(65534)
            .env(
                "RESTOREPOINT_STATE_DIR",
                lab.dir.path().join("nobody-state"),
            )
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let store = lab.store();
    let s = Lab::s(&store);
    for args in [vec!["list", "--store", s], vec!["show", "1", "--store", s]] {
        let out = as_nobody(&SNAPSHOT, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out)
                .contains("belongs to root (mode 0700) and this user (uid 65534) cannot read it"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = as_nobody(&SNAPSHOT, &["--root", Lab::s(&lab.sys()), "--store", s]);
    assert!(text(&out).contains("cannot write it"), "{}", text(&out));
    assert!(
        !text(&out).contains("no restore point yet"),
        "{}",
        text(&out)
    );
    // A store of the user's own, holding files of other owners.
    let own = lab.dir.path().join("own");
    std::process::Command::new("cp")
        .args(["-a", s, Lab::s(&own)])
        .status()
        .unwrap();
    std::process::Command::new("chown")
        .args(["-R", "65534:65534", Lab::s(&own)])
        .status()
        .unwrap();
    let target = lab.dir.path().join("as-nobody");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::chown(&target, Some(65534), Some(65534)).unwrap();
    let out = as_nobody(
        &RESTORE,
        &[
            "--store",
            Lab::s(&own),
            "--point",
            "2",
            "--target",
            Lab::s(&target),
            "--yes",
        ],
    );
    restored_as_nobody(&out, &target);
}

/// A restore as uid 65534 of a tree whose files belong to others: it wrote them, and said in
/// one warning that it could not set their owners (exit 3).
#[track_caller]
fn restored_as_nobody(out: &std::process::Output, target: &std::path::Path) {
    assert_eq!(out.status.code(), Some(3), "{}", text(out));
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0]
            .contains("entries belong to this user (uid 65534) instead of their recorded owners"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("etc/d/f7")).unwrap(),
        "7\n"
    );
}

/// The store's access is judged by the effective user, the one the kernel judges every open
/// by: a run whose real user differs (setuid, `setpriv --euid`) is neither refused a store it
/// can read nor let past the check to fail on a bare "permission denied".
#[test]
fn store_access_is_judged_by_the_effective_user() {
    use std::os::unix::fs::PermissionsExt;
    require_root!();
    let lab = lab_with_points(1);
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = lab.store();
    let list = |ids: &[&str]| {
        std::process::Command::new("setpriv")
            .args(ids)
            .arg("--clear-groups")
            .arg(SNAPSHOT.path())
            .args(["list", "--store", Lab::s(&store)])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = list(&["--ruid=65534", "--rgid=65534"]);
    assert_eq!(out.status.code(), Some(0), "effective root: {}", text(&out));
    let out = list(&["--euid=65534", "--egid=65534"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "effective nobody: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("belongs to root (mode 0700) and this user (uid 65534) cannot read it"),
        "{}",
        text(&out)
    );
}

/// A restore from a remote store as another user than root sums up the owners it could not
/// set in one warning, as a restore from a local store does.
#[test]
fn a_remote_restore_as_a_user_sums_up_the_owners_it_could_not_set() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    require_root!();
    let lab = Lab::new();
    lab.run_sh("mkdir -p etc/d && for i in 1 2 3 4 5 6 7; do echo $i > etc/d/f$i; done && chown -R 1000:1000 etc/d");
    lab.snapshot();
    let remote = lab.target("remote");
    let url = format!("file://{}", remote.display());
    SNAPSHOT.expect(0, &["push", "--to", &url, "--store", Lab::s(&lab.store())]);
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = lab.target("as-nobody");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::chown(&target, Some(65534), Some(65534)).unwrap();
    let out = std::process::Command::new(RESTORE.path())
        .args([
            "--store",
            &url,
            "--point",
            "1",
            "--target",
            Lab::s(&target),
            "--yes",
        ])
        .uid(65534)
        .gid(65534)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    restored_as_nobody(&out, &target);
}

/// `-v` lists what the new point recorded (and a restore what it writes); it cannot be
/// combined with `-q`.
#[test]
fn verbose_lists_each_path() {
    let lab = lab_with_points(1);
    lab.run_sh("echo new > etc/added && echo changed > etc/app.conf");
    let (sys, store) = (lab.sys(), lab.store());
    let place = ["--root", Lab::s(&sys), "--store", Lab::s(&store)];
    let out = SNAPSHOT.expect(0, &[&place[..], &["-v"]].concat());
    let said = text(&out);
    assert!(
        said.contains("Added (1):") && said.contains("/etc/added"),
        "{said}"
    );
    assert!(
        said.contains("Modified (1):") && said.contains("/etc/app.conf"),
        "{said}"
    );
    let out = SNAPSHOT.run(&[&place[..], &["-v", "-q"]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let target = lab.target("v");
    let out = RESTORE.expect(0, &lab.restore_to_args(1, &target, &["-v"]));
    assert!(
        text(&out).contains("create   /etc/app.conf"),
        "{}",
        text(&out)
    );
}
