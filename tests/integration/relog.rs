//! The index log under kills: snapshots (and their rollbacks and retention) killed at many
//! moments, then the index lost. The log replays into the index the store had.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

fn points_json(lab: &Lab) -> Vec<u8> {
    SNAPSHOT
        .expect(0, &["list", "--json", "--store", Lab::s(&lab.store())])
        .stdout
}

#[test]
fn after_kills_at_random_moments_a_lost_index_is_rebuilt_as_it_was() {
    let lab = Lab::new();
    lab.run_sh(
        r#"for d in 0 1 2; do mkdir -p "d$d"; for f in $(seq 1 80); do seq 1 $((f * 30)) > "d$d/f$f"; done; done
        head -c 3000000 /dev/urandom > big && ln d0/f1 d1/link"#,
    );
    let mut expected: BTreeMap<i64, Fingerprint> = BTreeMap::new();
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    let (sys, store) = (lab.sys(), lab.store());
    for round in 0..10u64 {
        lab.run_sh(&format!(
            "for f in $(seq {a} {b}); do echo r{round} >> d{d}/f$f; done; rm -f d{d}/f{c}; echo n > d{d}/new{round}; \
             head -c 1000 /dev/urandom | dd of=big bs=1 seek={s} conv=notrunc 2>/dev/null",
            a = 1 + round * 7 % 50,
            b = 10 + round * 7 % 50,
            c = 60 + round,
            d = round % 3,
            s = round * 12345
        ));
        let fp = fingerprint(&lab.sys());
        let mut child = std::process::Command::new(SNAPSHOT.path())
            .args(["--root", Lab::s(&sys), "--store", Lab::s(&store)])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(round * 37 % 300));
        let _ = child.kill();
        child.wait().unwrap();
        // A kill after the point completed leaves it; otherwise it is rolled back.
        let ids = lab.point_ids();
        if let Some(&last) = ids.last() {
            expected.entry(last).or_insert_with(|| fp.clone());
        }
        let id = lab.snapshot();
        expected.entry(id).or_insert(fp);
        if round % 4 == 3 {
            SNAPSHOT.expect(0, &["prune", "--oldest", "1", "--store", Lab::s(&store)]);
            let oldest = *expected.keys().next().unwrap();
            expected.remove(&oldest);
        }
    }
    let before = points_json(&lab);
    std::fs::remove_file(store.join("index.db")).unwrap();
    let out = SNAPSHOT.expect(0, &["repair", "--store", Lab::s(&store)]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("all intact"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(points_json(&lab), before, "the same points, ids and totals");
    lab.assert_points_restore(&expected, "after repair");
}

/// A row gone from `index.db` fails no checksum; verify still finds it, from the replica.
#[test]
fn verify_finds_a_row_missing_from_the_index() {
    let lab = Lab::new();
    lab.run_sh("mkdir d && echo a > d/a && echo b > d/b && ln -s a d/l");
    lab.snapshot();
    let c = rusqlite::Connection::open(lab.store().join("index.db")).unwrap();
    c.execute("DELETE FROM entries WHERE path = CAST('d/b' AS BLOB)", [])
        .unwrap();
    c.execute("DELETE FROM entries WHERE path = CAST('d/l' AS BLOB)", [])
        .unwrap();
    drop(c);
    let out = SNAPSHOT.expect(5, &["verify", "--store", Lab::s(&lab.store())]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("/d/b: in the replica but not in the index"),
        "{said}"
    );
    assert!(
        said.contains("/d/l: in the replica but not in the index"),
        "{said}"
    );
}

/// Index and log both lost: the packs describe themselves and the replica gives the latest
/// state, so the points come back; repair says what only the index held.
#[test]
fn repair_without_a_log_rebuilds_from_the_packs_and_the_replica() {
    let lab = Lab::new();
    let mut expected = BTreeMap::new();
    for step in [
        "mkdir -p etc/app bin && for f in $(seq 1 20); do seq 1 $((f * 40)) > etc/app/c$f; done; ln -s app/c1 etc/l",
        "seq 1 700 >> etc/app/c2 && rm etc/app/c3 && chmod 600 etc/app/c4 && echo new > bin/n",
        "touch -d '2021-02-03 04:05:06.7' etc/app/c5 && rm etc/l && mkdir etc/d && echo x > etc/d/x",
        "seq 1 900 >> etc/app/c2 && rm etc/app/c6 && echo again > bin/n && seq 5 99 > etc/app/c7",
        "seq 1 50 >> etc/app/c2 && echo third > bin/n && chmod 640 etc/app/c8",
    ] {
        lab.run_sh(step);
        expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    }
    SNAPSHOT.expect(
        0,
        &["prune", "--oldest", "1", "--store", Lab::s(&lab.store())],
    );
    expected.remove(&1);
    // A point removed from the middle, into a point that is not the latest: the merged pack
    // describes itself as well, and its row wins over the copy the next pack keeps of it.
    SNAPSHOT.expect(0, &["prune", "3", "--store", Lab::s(&lab.store())]);
    expected.remove(&3);
    let before = points_json(&lab);
    std::fs::remove_file(lab.store().join("index.db")).unwrap();
    std::fs::remove_file(lab.store().join("index.log")).unwrap();
    // Exit 3: done, and what only the index held is named.
    let out = SNAPSHOT.expect(3, &["repair", "--store", Lab::s(&lab.store())]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("from the packs") && said.contains("extended attributes"),
        "{said}"
    );
    assert_eq!(points_json(&lab), before, "the same points, ids and totals");
    lab.assert_points_restore(&expected, "after repair");
    // The store goes on, with a log again.
    assert!(lab.store().join("index.log").exists());
    lab.run_sh("echo later >> etc/app/c6");
    lab.snapshot();
}

/// A point interrupted while it healed a damaged copy, or while it recorded a file whose old
/// copy was damaged (changed or deleted since): its rollback goes through, and the next
/// snapshots too.
#[test]
fn interrupted_points_over_damaged_copies_roll_back() {
    for (failpoint, change) in [
        ("snapshot-before-replica", "chmod 600 d/f"),
        ("snapshot-after-replica", "chmod 600 d/f"),
        ("snapshot-after-replica", "seq 1 900 > d/f"),
        ("snapshot-after-replica", "rm d/f"),
        ("snapshot-before-replica", "rm d/f"),
    ] {
        let lab = Lab::new();
        lab.run_sh("mkdir d && seq 1 500 > d/f && echo g > d/g");
        lab.snapshot();
        flip(&lab.store().join("replica/d/f"), 2, 0x04);
        lab.run_sh(change);
        let (sys, store) = (lab.sys(), lab.store());
        let snap = ["--root", Lab::s(&sys), "--store", Lab::s(&store)];
        let killed = std::process::Command::new(SNAPSHOT.path())
            .args(snap)
            .env("RESTOREPOINT_FAILPOINT", failpoint)
            .output()
            .unwrap();
        assert_eq!(killed.status.code(), None, "{failpoint} after {change}");
        // The rollback: the next writer is not blocked by the damaged copy.
        SNAPSHOT.expect(0, &["prune", "--dry-run", "--store", Lab::s(&store)]);
        // 3 when the copy still had to be healed or its old version was lost; 0 when the
        // interrupted point had already put the live content in place.
        let out = SNAPSHOT.run(&snap);
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{failpoint} after {change}: {:?} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        lab.run_sh("echo more >> d/g");
        SNAPSHOT.expect(0, &snap);
        // The latest point and the replica agree again.
        SNAPSHOT.expect(0, &["verify", "--store", Lab::s(&store)]);
    }
}

/// Allocated bytes of the replica's contents and of the packs, walked as `du` would.
fn walked_usage(store: &std::path::Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    // Each inode once, however many links it has.
    let sum = |dir: std::path::PathBuf| -> i64 {
        let mut seen = std::collections::HashSet::new();
        walkdir::WalkDir::new(&dir)
            .min_depth(1)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().unwrap();
                seen.insert((m.dev(), m.ino()))
                    .then_some(m.blocks() as i64 * 512)
            })
            .sum()
    };
    (sum(store.join("replica")), sum(store.join("packs")))
}

fn recorded_usage(store: &std::path::Path) -> (i64, i64) {
    let c = rusqlite::Connection::open(store.join("index.db")).unwrap();
    c.query_row("SELECT replica, packs FROM usage", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

/// The usage the index keeps (so that a run does not walk the store) is what a walk finds,
/// after snapshots that add, grow, shrink and delete, retention, a rollback and a restore.
#[test]
fn the_recorded_usage_is_what_a_walk_finds() {
    let lab = Lab::new();
    let store = lab.store();
    let check = |when: &str| {
        assert_eq!(recorded_usage(&store), walked_usage(&store), "{when}");
    };
    lab.run_sh("mkdir -p a/b && for f in $(seq 1 50); do seq 1 $((f * 200)) > a/b/f$f; done; head -c 3000000 /dev/urandom > big");
    lab.snapshot();
    check("after the first point");
    lab.run_sh("rm -r a/b && mkdir a/c && seq 1 99999 > a/c/new && truncate -s 1000 big");
    lab.snapshot();
    check("after deletions and a shrink");
    lab.run_sh(
        "head -c 5000000 /dev/urandom > big && for f in $(seq 1 300); do echo $f > a/c/n$f; done",
    );
    lab.snapshot();
    check("after growth and a bigger directory");
    SNAPSHOT.expect(0, &["prune", "--oldest", "1", "--store", Lab::s(&store)]);
    check("after removing the oldest point");
    let (sys, st) = (lab.sys(), lab.store());
    lab.run_sh("echo killed > a/c/k");
    let killed = std::process::Command::new(SNAPSHOT.path())
        .args(["--root", Lab::s(&sys), "--store", Lab::s(&st)])
        .env("RESTOREPOINT_FAILPOINT", "snapshot-after-replica")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None);
    SNAPSHOT.expect(0, &["prune", "--dry-run", "--store", Lab::s(&store)]);
    check("after the rollback of an interrupted point");
    lab.restore_in_place(0, 2, &[]);
    check("after an in-place restore and its safety point");
    lab.run_sh("seq 1 77777 > a/c/new && echo more >> a/c/n5");
    lab.snapshot();
    let ids = lab.point_ids();
    SNAPSHOT.expect(
        0,
        &["prune", &ids[1].to_string(), "--store", Lab::s(&store)],
    );
    check("after removing a point from the middle");
}

fn inode(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// A hardlink group is one file in the replica too (not one copy per path), and every point
/// still restores exactly as the group changes, grows, loses a member and splits.
#[test]
fn hardlink_groups_share_one_file_in_the_replica() {
    let lab = Lab::new();
    let mut expected = BTreeMap::new();
    let steps = [
        "mkdir -p a b && head -c 1000000 /dev/urandom > a/big && for i in 1 2 3; do ln a/big b/l$i; done",
        "echo more >> a/big && ln a/big a/l4",
        "rm b/l2 && echo own > b/l2",
        // The group's mode changes: every member is recorded again, already linked.
        "chmod 600 a/big",
        "cp a/big b/copy && mv b/copy b/l1",
    ];
    let store = lab.store();
    for step in steps {
        lab.run_sh(step);
        expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
        let r = store.join("replica");
        assert_eq!(
            inode(&r.join("a/big")),
            inode(&r.join("b/l3")),
            "after {step}"
        );
        assert_eq!(
            recorded_usage(&store),
            walked_usage(&store),
            "usage after {step}"
        );
        SNAPSHOT.expect(0, &["verify", "--store", Lab::s(&store)]);
    }
    let r = store.join("replica");
    assert_eq!(inode(&r.join("a/big")), inode(&r.join("a/l4")));
    assert_ne!(
        inode(&r.join("a/big")),
        inode(&r.join("b/l1")),
        "b/l1 left the group"
    );
    assert_ne!(inode(&r.join("a/big")), inode(&r.join("b/l2")));
    // The group costs one file: about 1 MB of replica, not four.
    assert!(
        recorded_usage(&store).0 < 2_500_000,
        "{:?}",
        recorded_usage(&store)
    );
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&store)]);
    lab.assert_points_restore(&expected, "");
}

/// Bytes the snapshot read through `read` calls (`rchar` of /proc/PID/io): a shell's own
/// counter takes in each child it waited for.
fn snapshot_rchar(lab: &Lab) -> u64 {
    let script = format!(
        "'{}' --root '{}' --store '{}' >/dev/null || exit 1; read -r _ n < /proc/$$/io; echo $n",
        SNAPSHOT.path().display(),
        Lab::s(&lab.sys()),
        Lab::s(&lab.store())
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A hardlink group is read once, through its leader, as `cp -a` does: a driver linked 13
/// times in /usr/lib costs one read. A member that is not the inode the leader was read from
/// is read for itself, and every point restores exactly.
#[test]
fn a_hardlink_group_is_read_once() {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir -p a b && head -c 4000000 /dev/urandom > a/big && for i in 1 2 3 4 5; do ln a/big b/l$i; done \
         && head -c 3000000 /dev/urandom > a/small && ln a/small b/s1",
    );
    let mut expected = BTreeMap::new();
    let read = snapshot_rchar(&lab);
    expected.insert(lab.point_ids()[0], fingerprint(&lab.sys()));
    // Once: 7 MB and the store's own reads; each extra read of the group is 4 MB more.
    assert!(read < 9_000_000, "the first point read {read} bytes");
    // New links of a changed group: the changed content is read once more, not per link.
    lab.run_sh(
        "echo more >> a/big && ln a/big a/l6 && ln a/big a/l7 && rm b/s1 && cp a/small b/s1",
    );
    let read = snapshot_rchar(&lab);
    expected.insert(*lab.point_ids().last().unwrap(), fingerprint(&lab.sys()));
    assert!(read < 30_000_000, "the second point read {read} bytes");
    let store = lab.store();
    let r = store.join("replica");
    assert_eq!(inode(&r.join("a/big")), inode(&r.join("a/l7")));
    assert_eq!(inode(&r.join("a/big")), inode(&r.join("b/l5")));
    assert_ne!(inode(&r.join("a/small")), inode(&r.join("b/s1")));
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&store)]);
    lab.assert_points_restore(&expected, "");
}

/// Files with the same content, owner, mode and mtime (the same licence text in many
/// packages) share one inode in the replica, as a mirror cannot; a file that stops being a
/// twin, by content or by metadata, gets a copy of its own, the others keep theirs as they
/// were; restores never link them; the recorded usage stays what a walk finds.
#[test]
fn twins_share_one_file_in_the_replica_and_restore_apart() {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir -p a b c d && head -c 20000 /dev/urandom > a/x && cp -p a/x b/x && cp -p a/x d/x \
         && cp a/x c/x && chmod 600 c/x && touch -r a/x c/x && head -c 5000 /dev/urandom > a/y && cp -p a/y b/y",
    );
    let mut expected = BTreeMap::new();
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    let store = lab.store();
    let r = store.join("replica");
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(r.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(inode(&r.join("a/x")), inode(&r.join("b/x")));
    assert_eq!(inode(&r.join("a/x")), inode(&r.join("d/x")));
    assert_eq!(inode(&r.join("a/y")), inode(&r.join("b/y")));
    assert_ne!(inode(&r.join("a/x")), inode(&r.join("c/x")), "another mode");
    assert_eq!(recorded_usage(&store), walked_usage(&store));
    let steps = [
        // A new mode for one twin: it gets its own copy, the others keep theirs.
        "chmod 640 b/x",
        // New content for another, and a new file that is the twin of an old one.
        "echo more >> d/x && cp -p a/y e-new",
        // A twin removed, the last one changed in mode and back.
        "rm b/y && chmod 700 a/y && chmod 644 a/y",
    ];
    for step in steps {
        lab.run_sh(step);
        expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
        assert_eq!(
            recorded_usage(&store),
            walked_usage(&store),
            "usage after {step}"
        );
        SNAPSHOT.expect(0, &["verify", "--store", Lab::s(&store)]);
    }
    assert_ne!(inode(&r.join("a/x")), inode(&r.join("b/x")));
    assert_eq!(mode("a/x"), 0o644);
    assert_eq!(mode("b/x"), 0o640);
    assert_ne!(inode(&r.join("a/x")), inode(&r.join("d/x")));
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&store)]);
    lab.assert_points_restore(&expected, "");
}

/// A fully allocated file with zero blocks (a swapfile): the replica holds holes there, and a
/// repair from the replica alone (index and log lost) must not take it for a sparse file.
#[test]
fn a_repair_from_the_replica_keeps_zero_blocks_allocated() {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir etc; (printf 'A%.0s' $(seq 4096); head -c 1048576 /dev/zero; printf 'B%.0s' $(seq 4096)) > etc/img",
    );
    let src = lab.sys().join("etc/img");
    let m = std::fs::metadata(&src).unwrap();
    eprintln!("source: size {} allocated {}", m.len(), m.blocks() * 512);
    lab.snapshot();
    let store = lab.store();
    let r = std::fs::metadata(store.join("replica/etc/img")).unwrap();
    eprintln!("replica allocated {}", r.blocks() * 512);
    let id = lab.point_ids()[0];
    let t0 = lab.target("before");
    lab.restore(id, &t0);
    let b0 = std::fs::metadata(t0.join("etc/img")).unwrap().blocks() * 512;
    std::fs::remove_file(store.join("index.db")).unwrap();
    std::fs::remove_file(store.join("index.log")).unwrap();
    let out = SNAPSHOT.run(&["repair", "--store", Lab::s(&store)]);
    eprintln!("{}", text(&out));
    let id = lab.point_ids()[0];
    let t = lab.target("after");
    lab.restore(id, &t);
    let b1 = std::fs::metadata(t.join("etc/img")).unwrap().blocks() * 512;
    eprintln!("restored allocated: before repair {b0}, after repair {b1}");
    assert_eq!(b0, b1, "restore after repair allocates differently");
}

/// A damaged copy whose change is lost gets an empty placeholder in a rollback, with its old
/// entry: linking twins there would make a later path with that old content a link of the
/// empty placeholder instead of its rebuilt copy. A rollback links no twins.
#[test]
fn a_rollback_never_links_a_file_to_a_placeholder() {
    let lab = Lab::new();
    let (sys, store) = (lab.sys(), lab.store());
    lab.run_sh(
        "mkdir -p etc/a etc/b && seq 1 3000 > etc/a/p && touch -d '2020-01-01 00:00:00' etc/a/p && chmod 644 etc/a/p",
    );
    lab.snapshot();
    // q: the same content, mode, owner and mtime, written by a later pass (its own inode).
    lab.run_sh("cp -p etc/a/p etc/b/q");
    let p2 = lab.snapshot();
    let good = std::fs::read(sys.join("etc/b/q")).unwrap();
    let (ip, iq) = (
        std::fs::metadata(store.join("replica/etc/a/p"))
            .unwrap()
            .ino(),
        std::fs::metadata(store.join("replica/etc/b/q"))
            .unwrap()
            .ino(),
    );
    assert_ne!(ip, iq, "separate replica inodes");
    // p's copy is damaged (unnoticed: p does not change).
    flip(&store.join("replica/etc/a/p"), 10, 0x01);
    // Both go; the snapshot is killed once the replica is shaped.
    lab.run_sh("rm etc/a/p etc/b/q");
    let killed = Command::new(SNAPSHOT.path())
        .args(["--root", Lab::s(&sys), "--store", Lab::s(&store)])
        .env("RESTOREPOINT_FAILPOINT", "snapshot-after-replica")
        .output()
        .unwrap();
    eprintln!("killed run: {}", text(&killed));
    assert_eq!(killed.status.code(), None);
    // The next writer rolls it back; then point 2 is restored.
    let t = lab.target("r2");
    let out = RESTORE.run(&lab.restore_to_args(p2, &t, &[]));
    eprintln!("restore: {}", text(&out));
    let q = std::fs::read(store.join("replica/etc/b/q")).unwrap();
    let iq2 = std::fs::metadata(store.join("replica/etc/b/q"))
        .unwrap()
        .nlink();
    eprintln!(
        "replica q: {} bytes (good: {}), nlink {}",
        q.len(),
        good.len(),
        iq2
    );
    assert_eq!(q, good, "q's replica copy after the rollback");
    assert_eq!(std::fs::read(t.join("etc/b/q")).unwrap(), good);
}
