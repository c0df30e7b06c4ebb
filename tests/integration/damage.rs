//! A store damaged on purpose: bit flips in replica files, pack frames and random bytes of
//! `index.db`; truncated, missing and extra packs; a deleted index; leftover staging files;
//! an in-place restore left unfinished. For each, `verify --full` finds it, and no restore
//! writes a wrong byte or metadata field with exit 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util::*;

/// Four points of a tree that changes between them (content, modes, xattrs, hardlinks,
/// additions and deletions); returns each point's fingerprint.
fn four_points(lab: &Lab) -> BTreeMap<i64, Fingerprint> {
    let steps = [
        r#"
        mkdir -p etc/app var/log bin
        for f in $(seq 1 30); do seq 1 $((f * 50)) > etc/app/conf$f; done
        head -c 300000 /dev/urandom > bin/tool && chmod 755 bin/tool
        echo log > var/log/syslog && ln etc/app/conf1 etc/app/conf1.link
        setfattr -n user.tag -v one etc/app/conf2
        ln -s app/conf3 etc/link
        "#,
        r#"
        seq 1 999 >> etc/app/conf4 && chmod 600 etc/app/conf5 && rm etc/app/conf6
        setfattr -n user.tag -v two etc/app/conf2 && echo more >> var/log/syslog
        head -c 1000 /dev/urandom | dd of=bin/tool bs=1 seek=5000 conv=notrunc 2>/dev/null
        "#,
        r#"
        echo new > etc/app/added && seq 5 7000 > etc/app/conf7 && echo changed > etc/app/conf1
        touch -d '2020-01-02 03:04:05.123456789' etc/app/conf8 && rm etc/link
        "#,
        r#"
        rm -r var/log && seq 1 20 > etc/app/conf9 && chmod 640 etc/app/conf10
        "#,
    ];
    let mut out = BTreeMap::new();
    for s in steps {
        lab.run_sh(s);
        out.insert(lab.snapshot(), fingerprint(&lab.sys()));
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Detected,
    /// Not found by verify, and every point still restores exactly (a byte nothing reads).
    Harmless,
    /// Not found by verify, but a restore refused: verify missed damage.
    Missed(String),
    SilentlyWrong(String),
}

/// Runs `verify --full` and restores every point from `store` into fresh targets.
fn judge(lab: &Lab, store: &Path, expected: &BTreeMap<i64, Fingerprint>) -> Outcome {
    let verify = SNAPSHOT.run(&["verify", "--full", "--store", Lab::s(store)]);
    let detected = verify.status.code() != Some(0);
    let mut refused = None;
    for (id, fp) in expected {
        let target = lab.target("judged");
        let _ = std::fs::remove_dir_all(&target);
        let out = RESTORE.run(&[
            "--store",
            Lab::s(store),
            "--point",
            &id.to_string(),
            "--target",
            Lab::s(&target),
            "--yes",
        ]);
        match out.status.code() {
            Some(0) | Some(3) => {
                if &fingerprint(&target) != fp {
                    return Outcome::SilentlyWrong(format!(
                        "point {id} restored with exit {:?} but differs",
                        out.status.code()
                    ));
                }
            }
            code => {
                refused = Some(format!(
                    "point {id}: exit {code:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        }
    }
    match (detected, refused) {
        (true, _) => Outcome::Detected,
        (false, None) => Outcome::Harmless,
        (false, Some(why)) => Outcome::Missed(why),
    }
}

fn copy_store(lab: &Lab, name: &str) -> PathBuf {
    let to = lab.target(name);
    let _ = std::fs::remove_dir_all(&to);
    let st = std::process::Command::new("cp")
        .args(["-a", Lab::s(&lab.store()), Lab::s(&to)])
        .status()
        .unwrap();
    assert!(st.success());
    to
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Damages the store copy it is given.
type Damager = Box<dyn Fn(&Path)>;

#[test]
fn damaged_stores_are_detected_and_never_restore_wrong_data() {
    let lab = Lab::new();
    let expected = four_points(&lab);
    let ids: Vec<i64> = expected.keys().copied().collect();
    let mut rng = Rng(0x5eed_1234_abcd);
    let mut cases: Vec<(String, Damager)> = Vec::new();
    for i in 0..16 {
        let (at, mask) = (rng.next(), 1u8 << rng.below(8));
        cases.push((
            format!("index.db byte flip {i}"),
            Box::new(move |s: &Path| {
                let db = s.join("index.db");
                flip(&db, at % len(&db), mask)
            }),
        ));
    }
    for (name, file) in [
        ("bin/tool", "replica/bin/tool"),
        ("conf4", "replica/etc/app/conf4"),
    ] {
        let at = rng.next();
        cases.push((
            format!("replica flip in {name}"),
            Box::new(move |s: &Path| {
                let p = s.join(file);
                flip(&p, at % len(&p), 0x10)
            }),
        ));
    }
    for &id in &ids[1..] {
        let at = rng.next();
        cases.push((
            format!("pack {id} byte flip"),
            Box::new(move |s: &Path| {
                let p = s.join(format!("packs/{id}.pack"));
                if len(&p) > 0 {
                    flip(&p, at % len(&p), 0x01)
                }
            }),
        ));
    }
    // Damage that lands inside a row's values, one field at a time, as a flipped bit would
    // (SQLite has no xor: (x | m) - (x & m) flips bit m of x).
    for sql in [
        "UPDATE entries SET gid = (gid | 1) - (gid & 1) WHERE path = CAST('etc/app/conf5' AS BLOB)",
        "UPDATE entries SET mode = (mode | 1024) - (mode & 1024) WHERE path = CAST('bin/tool' AS BLOB)",
        "UPDATE entries SET mtime_ns = (mtime_ns | 4) - (mtime_ns & 4) WHERE path = CAST('etc/app/conf8' AS BLOB)",
        "UPDATE entries SET xattrs = CAST('garbage' AS BLOB) WHERE path = CAST('etc/app/conf2' AS BLOB)",
        "UPDATE entries SET kind = 9 WHERE path = CAST('etc/app/conf3' AS BLOB)",
        "UPDATE changes SET uid = (uid | 2) - (uid & 2) WHERE uid IS NOT NULL",
        "UPDATE changes SET frame_offset = frame_offset + 1 WHERE frame_offset IS NOT NULL",
        "UPDATE changes SET hash = zeroblob(32) WHERE hash IS NOT NULL",
        "UPDATE changes SET content = 'other' WHERE content = 'delta'",
        "UPDATE points SET kind = 'weekly' WHERE id = 1",
        "UPDATE points SET excludes = '[not json' WHERE id = 2",
    ] {
        cases.push((
            format!("index row: {sql}"),
            Box::new(move |s: &Path| {
                let c = rusqlite::Connection::open(s.join("index.db")).unwrap();
                // A flipped byte is not held to the schema's CHECKs either.
                c.pragma_update(None, "ignore_check_constraints", true).unwrap();
                assert!(c.execute(sql, []).unwrap() > 0, "{sql} changed nothing");
            }),
        ));
    }
    let last = *ids.last().unwrap();
    cases.push((
        "truncated pack".into(),
        Box::new(move |s: &Path| {
            let p = s.join(format!("packs/{last}.pack"));
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len(&p) / 2).unwrap();
        }),
    ));
    cases.push((
        "missing pack".into(),
        Box::new(move |s: &Path| {
            std::fs::remove_file(s.join(format!("packs/{last}.pack"))).unwrap()
        }),
    ));
    cases.push((
        "extra pack".into(),
        Box::new(|s: &Path| std::fs::write(s.join("packs/999.pack"), b"stray").unwrap()),
    ));
    cases.push((
        "lost index".into(),
        Box::new(|s: &Path| std::fs::remove_file(s.join("index.db")).unwrap()),
    ));

    let mut tally: BTreeMap<&str, u64> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (name, damage) in &cases {
        let store = copy_store(&lab, "damaged");
        damage(&store);
        let outcome = judge(&lab, &store, &expected);
        eprintln!("{name}: {outcome:?}");
        let key = match &outcome {
            Outcome::Detected => "detected",
            Outcome::Harmless => "harmless",
            Outcome::Missed(_) => "missed",
            Outcome::SilentlyWrong(_) => "silently wrong",
        };
        *tally.entry(key).or_insert(0) += 1;
        if matches!(outcome, Outcome::Missed(_) | Outcome::SilentlyWrong(_)) {
            wrong.push(format!("{name}: {outcome:?}"));
        }
        // Repair: the index comes back from its log; data that is gone stays reported.
        let repair = SNAPSHOT.run(&["repair", "--store", Lab::s(&store)]);
        let after = judge(&lab, &store, &expected);
        let index_only = name.starts_with("index") || name == "lost index" || name == "extra pack";
        if index_only {
            if repair.status.code() != Some(0) || after != Outcome::Harmless {
                wrong.push(format!(
                    "{name}: after repair (exit {:?}: {}) {after:?}",
                    repair.status.code(),
                    String::from_utf8_lossy(&repair.stdout)
                ));
            }
            *tally.entry("repaired").or_insert(0) += 1;
        } else if !matches!(after, Outcome::Detected) {
            wrong.push(format!("{name}: after repair {after:?}"));
        }
    }
    let n = |k: &str| tally.get(k).copied().unwrap_or(0);
    println!(
        "{} damage cases: {} detected, {} harmless (a byte nothing reads), {} missed by verify, {} silently wrong; repair brought back every point in {} of {} cases of index damage",
        cases.len(),
        n("detected"),
        n("harmless"),
        n("missed"),
        n("silently wrong"),
        n("repaired") - wrong.iter().filter(|w| w.contains("after repair")).count() as u64,
        n("repaired"),
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every damage to data that is read must be found, not only survived.
    assert!(n("detected") >= cases.len() as u64 - 16, "{tally:?}");
}

#[test]
fn a_lost_index_stops_every_command_and_keeps_the_data() {
    let lab = Lab::new();
    four_points(&lab);
    std::fs::remove_file(lab.store().join("index.db")).unwrap();
    let before = fingerprint(&lab.store());
    let (sys, store) = (lab.sys(), lab.store());
    let root = ["--root", Lab::s(&sys), "--store", Lab::s(&store)];
    let out = SNAPSHOT.expect(5, &root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no index.db")
            && err.contains("nothing was written")
            && err.contains("system_snapshot repair"),
        "{err}"
    );
    SNAPSHOT.expect(5, &["list", "--store", Lab::s(&lab.store())]);
    SNAPSHOT.expect(
        5,
        &["prune", "--oldest", "1", "--store", Lab::s(&lab.store())],
    );
    assert!(
        !lab.store().join("index.db").exists(),
        "an index was made anew"
    );
    assert_same(
        &before,
        &fingerprint(&lab.store()),
        "the store after the refusals",
    );
}

#[test]
fn leftover_staging_files_never_enter_a_point() {
    let lab = Lab::new();
    lab.run_sh("mkdir d && echo one > d/a");
    let mut expected = BTreeMap::new();
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    // What a kill during a rollback leaves, under every name a snapshot could pick.
    let staging = lab.store().join("staging");
    for i in 1..50 {
        std::fs::write(staging.join(format!("n{i}")), b"stale").unwrap();
        std::fs::write(staging.join(format!("n2-{i}")), b"stale").unwrap();
    }
    lab.run_sh("for i in $(seq 1 20); do echo new$i > d/new$i; done; ln d/new1 d/zlink");
    let report = lab.snapshot_json();
    assert_eq!(report["warnings"].as_array().unwrap().len(), 0, "{report}");
    expected.insert(report["point"].as_i64().unwrap(), fingerprint(&lab.sys()));
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&lab.store())]);
    assert_eq!(judge(&lab, &lab.store(), &expected), Outcome::Harmless);
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
}

/// `prune --oldest N` that stops part way (the next oldest is one an unfinished restore needs)
/// says which points it removed before it stopped: they are gone, and the operator must know.
#[test]
fn prune_oldest_stopped_part_way_names_what_it_removed() {
    let lab = Lab::new();
    lab.run_sh("mkdir d && for i in $(seq 1 40); do echo v0-$i > d/f$i; done");
    let p0 = lab.snapshot();
    lab.run_sh("for i in $(seq 1 40); do echo v1-$i > d/f$i; done");
    let p1 = lab.snapshot();
    lab.run_sh("for i in $(seq 1 40); do echo v2-$i > d/f$i; done");
    lab.snapshot();
    let killed = std::process::Command::new(RESTORE.path())
        .args(lab.restore_args(p1, &[]))
        .env("RESTOREPOINT_FAILPOINT", "restore-after-item:10")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None, "the restore was killed");
    let out = SNAPSHOT.expect(
        7,
        &["prune", "--oldest", "5", "--store", Lab::s(&lab.store())],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unfinished"), "{err}");
    assert!(
        err.contains(&format!("point {p0} was removed before this")),
        "{err}"
    );
    let ids = lab.point_ids();
    assert!(!ids.contains(&p0) && ids.contains(&p1), "{ids:?}");
}

#[test]
fn an_unfinished_restore_refuses_snapshots_and_keeps_its_points() {
    let lab = Lab::new();
    lab.run_sh("mkdir d && for i in $(seq 1 40); do echo v1-$i > d/f$i; done");
    let p1 = lab.snapshot();
    let fp1 = fingerprint(&lab.sys());
    lab.run_sh("for i in $(seq 1 40); do echo v2-$i > d/f$i; done");
    lab.snapshot();
    let (sys, store) = (lab.sys(), lab.store());
    let restore = lab.restore_args(p1, &[]);
    let killed = std::process::Command::new(RESTORE.path())
        .args(&restore)
        .env("RESTOREPOINT_FAILPOINT", "restore-after-item:10")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None, "the restore was killed");
    let snap = ["--root", Lab::s(&sys), "--store", Lab::s(&store)];
    let out = SNAPSHOT.expect(7, &snap);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "run system_restore again to finish restoring point {p1}"
        )),
        "{err}"
    );
    // Retention may not take the point the restore converges to.
    let out = SNAPSHOT.expect(
        7,
        &["prune", "--oldest", "5", "--store", Lab::s(&lab.store())],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unfinished"));
    assert!(lab.point_ids().contains(&p1));
    RESTORE.expect(0, &restore);
    assert_same(
        &fp1,
        &fingerprint_except(&lab.sys(), &[]),
        "the tree after the rerun",
    );
    SNAPSHOT.expect(0, &snap);
}

/// Flips one byte in the replica's copy of `rel`.
fn flip_replica(lab: &Lab, rel: &str) {
    flip(&lab.store().join("replica").join(rel), 3, 0x20);
}

#[test]
fn a_snapshot_mends_a_damaged_copy_from_the_unchanged_live_file() {
    let lab = Lab::new();
    lab.run_sh("mkdir d && seq 1 500 > d/f && echo other > d/g");
    let mut expected = BTreeMap::new();
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    flip_replica(&lab, "d/f");
    SNAPSHOT.expect(5, &["verify", "--store", Lab::s(&lab.store())]);
    lab.run_sh("chmod 600 d/f && echo more >> d/g");
    let (sys, store) = (lab.sys(), lab.store());
    let out = SNAPSHOT.expect(3, &["--root", Lab::s(&sys), "--store", Lab::s(&store)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/d/f") && err.contains("rewritten from the live file"),
        "{err}"
    );
    expected.insert(lab.point_ids()[1], fingerprint(&lab.sys()));
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&store)]);
    assert_eq!(judge(&lab, &store, &expected), Outcome::Harmless);
}

#[test]
fn a_damaged_copy_of_a_changed_file_costs_its_old_versions_not_later_points() {
    let lab = Lab::new();
    lab.run_sh("mkdir d && seq 1 500 > d/f && echo other > d/g");
    let first = lab.snapshot();
    lab.run_sh("echo two >> d/g");
    let second = lab.snapshot();
    flip_replica(&lab, "d/f");
    lab.run_sh("seq 1 900 > d/f");
    let (sys, store) = (lab.sys(), lab.store());
    let snap = ["--root", Lab::s(&sys), "--store", Lab::s(&store)];
    let out = SNAPSHOT.expect(3, &snap);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/d/f") && err.contains("cannot restore this file"),
        "{err}"
    );
    let third_tree = fingerprint(&lab.sys());
    // Later points are not poisoned: the file changes again and the next snapshot is clean.
    lab.run_sh("seq 1 950 > d/f");
    SNAPSHOT.expect(0, &snap);
    let fourth_tree = fingerprint(&lab.sys());
    let verify = SNAPSHOT.expect(5, &["verify", "--full", "--store", Lab::s(&store)]);
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(
        report.contains(&format!("point {second}: /d/f")),
        "the version the damage took is named: {report}"
    );
    let ids = lab.point_ids();
    assert_eq!(ids.len(), 4);
    for (id, fp) in [(ids[2], &third_tree), (ids[3], &fourth_tree)] {
        let t = lab.target(&format!("t{id}"));
        lab.restore(id, &t);
        assert_same(fp, &fingerprint(&t), "a point taken after the damage");
    }
    // An older point's version of the file is gone: its restore says so (never exit 0).
    let t = lab.target("old");
    let out = RESTORE.run(&lab.restore_to_args(first, &t, &[]));
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `verify` reads without the lock, so a snapshot writing meanwhile can look like damage. The
/// test stands in for one: it holds the store's lock while a replica file is "half rewritten"
/// (a flipped byte). Verify names the writer, waits for it and checks again: damage that was
/// the writer's work in progress is not reported; damage still there on a store at rest is.
#[test]
fn damage_seen_while_a_writer_holds_the_store_is_checked_again_when_it_ends() {
    use std::io::BufRead;
    let lab = Lab::new();
    lab.run_sh("mkdir d && seq 1 500 > d/f");
    lab.snapshot();
    let store = lab.store();
    for heals in [true, false] {
        // As a writer does: the lock, then its pid in the file.
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .open(store.join("lock"))
            .unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        lock.set_len(0).unwrap();
        std::io::Write::write_all(&mut &lock, std::process::id().to_string().as_bytes()).unwrap();
        flip_replica(&lab, "d/f");
        let mut verify = std::process::Command::new(SNAPSHOT.path())
            .args(["verify", "--store", Lab::s(&store)])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(verify.stderr.take().unwrap());
        let (mut line, mut said) = (String::new(), String::new());
        while !line.contains("checking again") {
            line.clear();
            if err.read_line(&mut line).unwrap() == 0 {
                break;
            }
            said.push_str(&line);
        }
        let me = std::process::id();
        assert!(
            line.contains(&format!("process {me} held the store")),
            "verify says whom it waits for: {said}"
        );
        if heals {
            flip_replica(&lab, "d/f");
        }
        drop(lock);
        // A verify that never sees the lock go would hang the test run: a deadline instead.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(verify.wait_with_output().unwrap()));
        let out = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("verify still waits after the lock was let go");
        let report = String::from_utf8_lossy(&out.stdout);
        if heals {
            assert_eq!(out.status.code(), Some(0), "{report}");
            assert!(report.contains("all intact"), "{report}");
        } else {
            assert_eq!(out.status.code(), Some(5), "{report}");
            assert!(report.contains("/d/f"), "{report}");
            assert!(
                !report.contains("may be that writer's"),
                "checked again at rest, the damage is real: {report}"
            );
        }
    }
}

/// A store that went through every kind of write (points, a rolled-back snapshot, retention, an
/// in-place restore with its safety point and journal) loses its index: repair rebuilds it
/// from the log, and the store is the same as before.
#[test]
fn repair_rebuilds_a_lost_index_from_its_log() {
    let lab = Lab::new();
    let mut expected = four_points(&lab);
    let (sys, store) = (lab.sys(), lab.store());
    let snap = ["--root", Lab::s(&sys), "--store", Lab::s(&store)];
    lab.run_sh("echo killed >> etc/app/conf11");
    let killed = std::process::Command::new(SNAPSHOT.path())
        .args(snap)
        .env("RESTOREPOINT_FAILPOINT", "snapshot-before-replica")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None);
    SNAPSHOT.expect(0, &["prune", "--oldest", "1", "--store", Lab::s(&store)]);
    let first = *expected.keys().next().unwrap();
    expected.remove(&first);
    let second = *expected.keys().next().unwrap();
    let before_restore = fingerprint(&lab.sys());
    lab.restore_in_place(0, second, &[]);
    let list = |store: &Path| {
        SNAPSHOT
            .expect(0, &["list", "--json", "--store", Lab::s(store)])
            .stdout
    };
    let before = list(&store);
    let points: serde_json::Value = serde_json::from_slice(&before).unwrap();
    let safety = points["points"].as_array().unwrap().last().unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        points["points"].as_array().unwrap().last().unwrap()["kind"],
        "pre-restore"
    );
    expected.insert(safety, before_restore);

    std::fs::remove_file(store.join("index.db")).unwrap();
    SNAPSHOT.expect(5, &snap);
    let out = SNAPSHOT.expect(0, &["repair", "--store", Lab::s(&store)]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("rebuilt from index.log") && said.contains("all intact"),
        "{said}"
    );
    assert_eq!(
        list(&store),
        before,
        "the rebuilt index lists the same points"
    );
    assert_eq!(judge(&lab, &store, &expected), Outcome::Harmless);
    // It goes on: the next snapshot is point safety + 1 (ids are never reused).
    lab.run_sh("echo after >> etc/app/conf12");
    let next = lab.snapshot_json()["point"].as_i64().unwrap();
    // 1-4 were taken, 5 was killed and rolled back, 6 is the safety point.
    assert_eq!((safety, next), (6, 7), "point ids are never reused");
}

#[test]
fn a_damaged_log_is_reported_and_rewritten_from_the_intact_index() {
    let lab = Lab::new();
    let expected = four_points(&lab);
    let store = lab.store();
    let log = store.join("index.log");
    flip(&log, len(&log) / 2, 0x08);
    let out = SNAPSHOT.expect(5, &["verify", "--store", Lab::s(&store)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("index.log"));
    let out = SNAPSHOT.expect(0, &["repair", "--store", Lab::s(&store)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("index.log rewritten"));
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&store)]);
    // The rewritten log is whole: it alone rebuilds the index.
    std::fs::remove_file(store.join("index.db")).unwrap();
    SNAPSHOT.expect(0, &["repair", "--store", Lab::s(&store)]);
    assert_eq!(judge(&lab, &store, &expected), Outcome::Harmless);
}

/// Killed between a log append and the index commit it describes: the next writer cuts those
/// records from the log, so a later repair never replays a write that never happened.
#[test]
fn records_of_a_transaction_that_never_committed_are_cut_from_the_log() {
    for nth in [2, 3, 4] {
        let lab = Lab::new();
        lab.run_sh("mkdir d && for i in $(seq 1 30); do echo v1-$i > d/f$i; done");
        let mut expected = BTreeMap::new();
        expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
        lab.run_sh("for i in $(seq 1 30); do echo v2-$i > d/f$i; done; chmod 600 d/f1");
        let (sys, store) = (lab.sys(), lab.store());
        let snap = ["--root", Lab::s(&sys), "--store", Lab::s(&store)];
        let killed = std::process::Command::new(SNAPSHOT.path())
            .args(snap)
            .env(
                "RESTOREPOINT_FAILPOINT",
                format!("index-after-log-append:{nth}"),
            )
            .output()
            .unwrap();
        assert_eq!(killed.status.code(), None, "killed at append {nth}");
        // The next writer rolls the point back; the store holds point 1 only.
        SNAPSHOT.expect(0, &["prune", "--dry-run", "--store", Lab::s(&store)]);
        SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&store)]);
        std::fs::remove_file(store.join("index.db")).unwrap();
        SNAPSHOT.expect(0, &["repair", "--store", Lab::s(&store)]);
        assert_eq!(
            judge(&lab, &store, &expected),
            Outcome::Harmless,
            "after a kill at append {nth}"
        );
    }
}
