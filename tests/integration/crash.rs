//! The crash contract: a snapshot killed (SIGKILL) at a named failpoint or at a random moment
//! leaves every complete point restorable exactly, and the next run recovers by itself.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

pub(crate) fn build(lab: &Lab) {
    lab.run_sh(
        r#"
        for d in 0 1 2 3; do mkdir -p "dir$d"; for f in $(seq 1 60); do seq 1 $((f * 40)) > "dir$d/file$f"; done; done
        head -c 12000000 /dev/urandom > big.bin
        ln dir0/file1 dir1/hardlink
        ln -s dir0/file2 link
        mkdir twins && for f in $(seq 1 30); do cp -p dir0/file$f twins/t$f && cp -p dir0/file$f twins/u$f; done
        "#,
    );
}

/// Changes a spread of files, so a snapshot has work in every phase.
pub(crate) fn mutate(lab: &Lab, rng: &mut Rng) {
    let mut script = String::new();
    for _ in 0..40 {
        let (d, f) = (rng.below(4), 1 + rng.below(70));
        let p = format!("dir{d}/file{f}");
        // A step may not fit what earlier steps made of the path (a file became a directory).
        // Twins (same content, owner, mode, mtime) share a replica inode: new ones, and old
        // ones given a new mode or mtime, split it.
        let t = format!(
            "twins/{}{}",
            ["t", "u"][rng.below(2) as usize],
            1 + rng.below(30)
        );
        script += &match rng.below(9) {
            6 => format!("[ ! -f {p} ] || cp -p {p} {p}.twin\n"),
            7 => format!("[ ! -f {t} ] || chmod {:o} {t}\n", 0o600 + rng.below(0o177)),
            8 => format!(
                "[ ! -f {t} ] || touch -d @{} {t}\n",
                1_600_000_000 + rng.below(1000)
            ),
            0 => format!("rm -f {p} || true\n"),
            1 => format!("echo {} >> {p} || true\n", rng.next()),
            2 => format!(
                "seq {} {} > {p} || true\n",
                rng.below(100),
                200 + rng.below(3000)
            ),
            3 => format!(
                // Files only: a directory without x would be unreadable to a non-root run.
                "[ ! -f {p} ] || chmod {:o} {p}\n",
                0o600 + rng.below(0o177)
            ),
            4 => format!("rm -rf {p} && mkdir -p {p} && echo inside > {p}/x\n"),
            _ => format!("echo new{} > {p}.new || true\n", rng.next()),
        };
    }
    script += &format!(
        "printf '%s' {} | dd of=big.bin bs=1 seek={} conv=notrunc status=none\n",
        rng.next(),
        rng.below(12_000_000)
    );
    lab.run_sh(&script);
}

pub(crate) fn snapshot_cmd(lab: &Lab) -> Command {
    let mut c = Command::new(SNAPSHOT.path());
    c.args([
        "--root",
        Lab::s(&lab.sys()),
        "--store",
        Lab::s(&lab.store()),
        "--json",
    ])
    .stdin(std::process::Stdio::null());
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

fn complete_points(lab: &Lab) -> Vec<i64> {
    lab.point_ids()
}

/// Every complete point restores into one converging target exactly as it was recorded.
pub(crate) fn check_all(lab: &Lab, expected: &BTreeMap<i64, Fingerprint>, when: &str) {
    let points = complete_points(lab);
    for id in &points {
        let want = expected
            .get(id)
            .unwrap_or_else(|| panic!("{when}: point {id} exists but was never completed"));
        lab.restore(*id, &lab.target("check"));
        assert_same(
            want,
            &fingerprint(&lab.target("check")),
            &format!("{when}: point {id}"),
        );
    }
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&lab.store())]);
}

/// Records the point a completed run made (its id is the newest).
fn note_point(lab: &Lab, expected: &mut BTreeMap<i64, Fingerprint>, fp: &Fingerprint) {
    if let Some(&last) = complete_points(lab).last() {
        expected.entry(last).or_insert_with(|| fp.clone());
    }
}

#[test]
fn snapshot_killed_at_each_failpoint_recovers_and_every_point_restores() {
    let lab = Lab::new();
    build(&lab);
    let mut expected = BTreeMap::new();
    let mut rng = Rng(0x5eed);
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    let failpoints = [
        "snapshot-after-point-row",
        "snapshot-before-commit",
        "snapshot-after-commit",
        "snapshot-before-replica",
        "replica-patch-write",
        "snapshot-after-replica",
        "snapshot-after-complete",
    ];
    for fp_name in failpoints {
        mutate(&lab, &mut rng);
        let fp = fingerprint(&lab.sys());
        let st = snapshot_cmd(&lab)
            .env("RESTOREPOINT_FAILPOINT", fp_name)
            .status()
            .unwrap();
        assert_eq!(
            st.code(),
            None,
            "{fp_name}: the process should have been killed"
        );
        if fp_name == "snapshot-after-replica" {
            // Crash the rollback of that point too, half-way.
            let st = snapshot_cmd(&lab)
                .env("RESTOREPOINT_FAILPOINT", "rollback-before-replica")
                .status()
                .unwrap();
            assert_eq!(
                st.code(),
                None,
                "rollback-before-replica: the process should have been killed"
            );
        }
        if fp_name == "snapshot-after-complete" {
            note_point(&lab, &mut expected, &fp);
        }
        check_all(&lab, &expected, &format!("after a crash at {fp_name}"));
        let id = lab.snapshot();
        expected.entry(id).or_insert(fp);
        check_all(&lab, &expected, &format!("after recovering from {fp_name}"));
    }
}

#[test]
fn snapshot_killed_at_random_moments_recovers_and_every_point_restores() {
    let lab = Lab::new();
    build(&lab);
    let mut expected = BTreeMap::new();
    let mut rng = Rng(0xc0ffee);
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    for round in 0..12 {
        mutate(&lab, &mut rng);
        let fp = fingerprint(&lab.sys());
        let mut child = snapshot_cmd(&lab).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        // Killed after its point was marked complete (during retention, say), or not killed at
        // all: either way a new complete point was taken of this tree.
        note_point(&lab, &mut expected, &fp);
        check_all(&lab, &expected, &format!("round {round}, killed"));
        let id = lab.snapshot();
        expected.entry(id).or_insert(fp);
    }
    check_all(&lab, &expected, "at the end");
}

/// The first point writes the replica as it reads the system (no rows to wait for: undoing a
/// first point empties the replica). Killed at any step, or at a random moment, the next run
/// leaves no trace of it, and its own point restores exactly and verifies whole.
#[test]
fn a_first_point_killed_anywhere_leaves_nothing_behind() {
    let lab = Lab::new();
    build(&lab);
    let fp = fingerprint(&lab.sys());
    let mut rng = Rng(0xf125);
    let kills = [
        "snapshot-after-point-row",
        "snapshot-before-commit",
        "snapshot-after-commit",
        "snapshot-before-replica",
        "snapshot-after-replica",
        "random",
        "random",
        "random",
        "at once",
    ];
    for kill in kills {
        let _ = std::fs::remove_dir_all(lab.store());
        forget_store(&lab.store());
        let mut cmd = snapshot_cmd(&lab);
        if kill == "random" || kill == "at once" {
            let mut child = cmd.spawn().unwrap();
            let ms = if kill == "at once" { 0 } else { rng.below(300) };
            std::thread::sleep(Duration::from_millis(ms));
            let _ = child.kill();
            child.wait().unwrap();
        } else {
            let st = cmd.env("RESTOREPOINT_FAILPOINT", kill).status().unwrap();
            assert_eq!(
                st.code(),
                None,
                "{kill}: the process should have been killed"
            );
        }
        let mut expected = BTreeMap::new();
        // Killed before the store had an index (it was being created): nothing to list.
        if lab.store().join("index.db").exists() {
            note_point(&lab, &mut expected, &fp);
        }
        if expected.is_empty() && lab.store().join("index.db").exists() {
            // Nothing complete: a writer's clean-up must leave an empty replica.
            SNAPSHOT.expect(0, &["prune", "--store", Lab::s(&lab.store())]);
            let left: Vec<_> = std::fs::read_dir(lab.store().join("replica"))
                .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{kill}: the replica still holds {left:?}");
        }
        let id = lab.snapshot();
        expected.entry(id).or_insert(fp.clone());
        check_all(
            &lab,
            &expected,
            &format!("after a first point killed at {kill}"),
        );
    }
}
