//! Large files read leaf by leaf (DESIGN.md "Large files"): a point after a small edit of a
//! large file stores the old bytes of the blocks that changed, not the file; every point
//! restores exactly; a kill while the replica is patched in place rolls back; a damaged leaf
//! map or replica leaf costs speed or that file's older versions, never a wrong restore.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::util::*;

const MIB: u64 = 1 << 20;

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn noise(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next() as u8).collect()
}

/// A 48 MiB disk image that is mostly holes, and a 10 MiB log without any.
fn build(lab: &Lab, rng: &mut Rng) {
    let sys = lab.sys();
    std::fs::create_dir_all(sys.join("img")).unwrap();
    let img = sys.join("img/disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(48 * MIB)
        .unwrap();
    for (at, len) in [(0, 3 * MIB), (20 * MIB, MIB), (40 * MIB, 2 * MIB + 777)] {
        write_at(&img, at, &noise(rng, len as usize));
    }
    std::fs::write(sys.join("log.bin"), noise(rng, 10 * MIB as usize)).unwrap();
}

fn stored_bytes(report: &serde_json::Value) -> u64 {
    report["stored_bytes"].as_u64().expect("stored_bytes")
}

fn check_points(lab: &Lab, expected: &[(i64, Fingerprint)], when: &str) {
    for (id, fp) in expected {
        let t = lab.target(&format!("check-{id}"));
        let _ = std::fs::remove_dir_all(&t);
        lab.restore(*id, &t);
        assert_same(fp, &fingerprint(&t), &format!("{when}: point {id}"));
    }
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&lab.store())]);
}

#[test]
fn edits_appends_shrinks_and_growth_of_large_files_store_only_their_blocks_and_restore_exactly() {
    let lab = Lab::new();
    let mut rng = Rng(0x1a76e);
    build(&lab, &mut rng);
    let (img, log) = (lab.sys().join("img/disk.img"), lab.sys().join("log.bin"));
    let mut expected = vec![(lab.snapshot(), fingerprint(&lab.sys()))];

    // 700 bytes in the data, 4 KiB into a hole, 100 KiB appended to the log.
    write_at(&img, 20 * MIB + 5000, &noise(&mut rng, 700));
    write_at(&img, 30 * MIB + 123, &noise(&mut rng, 4096));
    let f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all_at(&noise(&mut rng, 100 << 10), 10 * MIB)
        .unwrap();
    let report = lab.snapshot_json();
    expected.push((report["point"].as_i64().unwrap(), fingerprint(&lab.sys())));
    // The old bytes of three or four 4 KiB blocks, compressed: not 58 MiB of files.
    assert!(
        stored_bytes(&report) < 64 << 10,
        "an edit of a large file stored {} bytes",
        stored_bytes(&report)
    );

    // Shrinks (one inside a leaf, one dropping whole leaves), then growth past the old end.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(36 * MIB + 5)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(9 * MIB)
        .unwrap();
    expected.push((lab.snapshot(), fingerprint(&lab.sys())));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    write_at(&img, 60 * MIB, &noise(&mut rng, 3000));
    write_at(&img, 2 * MIB, &noise(&mut rng, 3000));
    expected.push((lab.snapshot(), fingerprint(&lab.sys())));

    // An unchanged image with a new mtime: nothing stored for it.
    lab.run_sh("touch img/disk.img");
    let report = lab.snapshot_json();
    assert!(
        stored_bytes(&report) < 4096,
        "a touch stored {}",
        stored_bytes(&report)
    );
    expected.push((report["point"].as_i64().unwrap(), fingerprint(&lab.sys())));

    check_points(&lab, &expected, "after edits");
    // The holes stay holes in the replica: it holds about the data, not 64 MiB.
    let replica = lab.store().join("replica/img/disk.img");
    let allocated = std::fs::metadata(&replica).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&allocated) * 512 < 16 * MIB,
        "the replica's image allocates {} bytes",
        std::os::unix::fs::MetadataExt::blocks(&allocated) * 512
    );
}

/// Runs a snapshot that kills itself at `failpoint`.
fn killed_at(lab: &Lab, failpoint: &str, round: u64) {
    let st = std::process::Command::new(SNAPSHOT.path())
        .args([
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            Lab::s(&lab.store()),
        ])
        .env("RESTOREPOINT_FAILPOINT", failpoint)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), None, "round {round}: not killed at {failpoint}");
}

#[test]
fn a_snapshot_killed_while_patching_the_replica_in_place_rolls_back_and_every_point_restores() {
    let lab = Lab::new();
    let mut rng = Rng(0xdead);
    build(&lab, &mut rng);
    let img = lab.sys().join("img/disk.img");
    let mut expected = vec![(lab.snapshot(), fingerprint(&lab.sys()))];
    for round in 0..3u64 {
        for leaf in [1, 21, 41] {
            write_at(&img, (leaf + round) * MIB + 99, &noise(&mut rng, 5000));
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len((48 + round) * MIB - 7)
            .unwrap();
        let fp = fingerprint(&lab.sys());
        // Killed after the second of the patch's writes: the replica's copy is half new.
        killed_at(&lab, "replica-patch-write:2", round);
        if round == 1 {
            // And the rollback of that point, after it wrote the old bytes back.
            killed_at(&lab, "rollback-before-replica", round);
        }
        let id = lab.snapshot();
        assert_eq!(lab.point_ids().len(), expected.len() + 1, "round {round}");
        expected.push((id, fp));
        check_points(&lab, &expected, &format!("round {round}"));
    }
}

#[test]
fn a_damaged_leaf_map_or_replica_leaf_never_gives_a_wrong_restore() {
    let lab = Lab::new();
    let mut rng = Rng(0xbadbad);
    build(&lab, &mut rng);
    let img = lab.sys().join("img/disk.img");
    let mut expected = vec![(lab.snapshot(), fingerprint(&lab.sys()))];

    // A leaf map whose bytes changed fails its row sum: the file is read whole instead.
    let c = rusqlite::Connection::open(lab.store().join("index.db")).unwrap();
    let n = c
        .execute(
            "UPDATE leaf_maps SET leaves = zeroblob(length(leaves)) WHERE path = CAST('img/disk.img' AS BLOB)",
            [],
        )
        .unwrap();
    assert_eq!(n, 1, "the image has a leaf map");
    drop(c);
    write_at(&img, 20 * MIB + 5000, &noise(&mut rng, 700));
    expected.push((lab.snapshot(), fingerprint(&lab.sys())));
    check_points(&lab, &expected, "after a damaged leaf map");

    // A replica leaf that changed under the store: the leaf the next edit touches.
    flip(
        &lab.store().join("replica/img/disk.img"),
        40 * MIB + 10,
        0x40,
    );
    write_at(&img, 40 * MIB + 20, &noise(&mut rng, 700));
    let out = SNAPSHOT.expect(
        3,
        &[
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            Lab::s(&lab.store()),
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("img/disk.img"),
        "the damage is named: {warnings}"
    );
    let last = report["point"].as_i64().unwrap();
    let t = lab.target("latest");
    lab.restore(last, &t);
    assert_same(
        &fingerprint(&lab.sys()),
        &fingerprint(&t),
        "the newest point",
    );
    // The version the damaged copy held is lost, and said so; never restored wrong.
    let before = expected.last().unwrap().0;
    let out = RESTORE.run(&lab.restore_to_args(before, &lab.target("older"), &[]));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("img/disk.img"), "{}", text(&out));
}

#[test]
fn a_sparse_image_restores_by_its_data_and_a_damaged_or_missing_leaf_is_named() {
    let lab = Lab::new();
    let mut rng = Rng(0x5ba75e);
    build(&lab, &mut rng);
    let id = lab.snapshot();
    let t = lab.target("whole");
    lab.restore(id, &t);
    assert_same(
        &fingerprint(&lab.sys()),
        &fingerprint(&t),
        "the image's point",
    );
    let blocks =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(t.join("img/disk.img")).unwrap());
    assert!(
        blocks * 512 < 16 * MIB,
        "the restored image allocates {} bytes",
        blocks * 512
    );

    // A flipped byte in a data leaf of the replica's copy: the file is named, never written wrong.
    let replica = lab.store().join("replica/img/disk.img");
    flip(&replica, 20 * MIB + 10, 0x08);
    let out = RESTORE.run(&lab.restore_to_args(id, &lab.target("flipped"), &[]));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("img/disk.img"), "{}", text(&out));
    assert!(
        !lab.target("flipped/img/disk.img").exists(),
        "a damaged file was written"
    );
    flip(&replica, 20 * MIB + 10, 0x08);

    // A data leaf turned into a hole: zeros where the point has data are damage too.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&replica)
        .unwrap();
    let punch = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    rustix::fs::fallocate(&f, punch, 40 * MIB, MIB).unwrap();
    let out = RESTORE.run(&lab.restore_to_args(id, &lab.target("punched"), &[]));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("img/disk.img"), "{}", text(&out));
}
