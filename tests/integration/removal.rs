//! Points removed from the middle of the history (`prune ID`), pins, and retention around
//! them: every point left restores exactly as it was recorded, whatever was removed around
//! it, and a removal killed at any step leaves every complete point restorable.

use std::collections::BTreeMap;

use crate::crash::{build, check_all, mutate};
use crate::util::*;

fn store_args(lab: &Lab) -> [String; 2] {
    ["--store".into(), Lab::s(&lab.store()).into()]
}

/// `build`, then `n` points with churn between them (files edited, removed, turned into
/// directories, twins split, the 12 MB file patched), each with the fingerprint it was taken of.
fn history(lab: &Lab, n: usize, seed: u64) -> BTreeMap<i64, Fingerprint> {
    build(lab);
    let mut rng = Rng(seed);
    let mut expected = BTreeMap::new();
    for _ in 0..n {
        let fp = fingerprint(&lab.sys());
        expected.insert(lab.snapshot(), fp);
        mutate(lab, &mut rng);
    }
    expected
}

/// A config file beside the store whose retention keeps `min_points` and removes the rest
/// while the store is over 1 × its replica.
fn retention_conf(lab: &Lab, min_points: usize) -> std::path::PathBuf {
    let conf = lab.target("rp.conf");
    std::fs::write(
        &conf,
        format!(
            "[retention]\nceiling_ratio = 1.0\nmin_points = {min_points}\nage_floor = \"0s\"\n"
        ),
    )
    .unwrap();
    conf
}

fn prune(lab: &Lab, code: i32, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = vec!["prune".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(store_args(lab));
    SNAPSHOT.expect(code, &args)
}

#[test]
fn points_removed_from_the_middle_leave_every_other_point_exact() {
    let lab = Lab::new();
    let mut expected = history(&lab, 8, 0x9e11);
    assert_eq!(lab.point_ids(), (1..=8).collect::<Vec<_>>());

    // Refused, nothing removed: the latest, an unknown point.
    let out = prune(&lab, 7, &["8"]);
    assert!(text(&out).contains("latest"), "{}", text(&out));
    prune(&lab, 1, &["99"]);
    assert_eq!(lab.point_ids().len(), 8);

    // A dry run names the point each change would go into, and removes nothing.
    let out = prune(&lab, 0, &["4", "5", "--dry-run"]);
    let said = text(&out);
    assert!(
        said.contains("Would remove restore point 4") && said.contains("merged into point 6"),
        "{said}"
    );
    assert_eq!(lab.point_ids().len(), 8);

    // One at a time, then two next to each other, then the one before the latest, then the
    // oldest: after each, every point left restores as it was taken and verifies whole.
    for ids in [&["4"][..], &["5", "6"], &["7"], &["1"], &["3"]] {
        let out = prune(&lab, 0, &[ids, &["--json"]].concat());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["removed"].as_array().unwrap().len(), ids.len(), "{v}");
        for id in ids {
            expected.remove(&id.parse::<i64>().unwrap());
        }
        assert_eq!(
            lab.point_ids(),
            expected.keys().copied().collect::<Vec<_>>()
        );
        check_all(&lab, &expected, &format!("after removing {ids:?}"));
    }
    assert_eq!(lab.point_ids(), vec![2, 8]);
    // The store holds no pack of a removed point, and no merge left behind.
    let mut packs: Vec<String> = std::fs::read_dir(lab.store().join("packs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    packs.sort();
    assert!(
        packs.iter().all(|p| p == "2.pack" || p == "8.pack"),
        "{packs:?}"
    );
}

#[test]
fn pinned_points_stay_through_retention_and_prune() {
    let lab = Lab::new();
    let mut expected = history(&lab, 6, 0x7a11);
    let s = store_args(&lab);
    let out = SNAPSHOT.expect(0, &["pin", "2", &s[0], &s[1]]);
    assert!(text(&out).contains("pinned"), "{}", text(&out));
    let listed = SNAPSHOT.expect(0, &["list", "--json", &s[0], &s[1]]);
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let pinned: Vec<i64> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pinned"] == true)
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(pinned, vec![2]);
    assert!(text(&SNAPSHOT.expect(0, &["list", &s[0], &s[1]])).contains("[pinned]"));

    // `prune ID` refuses a pinned point; `--oldest` passes over it.
    let out = prune(&lab, 7, &["2"]);
    assert!(text(&out).contains("unpin 2"), "{}", text(&out));
    let out = prune(&lab, 0, &["--oldest", "2"]);
    assert!(
        text(&out).contains("restore point 1") && text(&out).contains("restore point 3"),
        "{}",
        text(&out)
    );
    expected.remove(&1);
    expected.remove(&3);
    assert_eq!(lab.point_ids(), vec![2, 4, 5, 6]);
    check_all(&lab, &expected, "after --oldest 2 around a pin");

    // Retention that would keep only the latest keeps the pinned point too, and removes the
    // points after it (merged into their successors).
    let conf = retention_conf(&lab, 1);
    let out = SNAPSHOT.expect(
        0,
        &["prune", "--json", "--config", Lab::s(&conf), &s[0], &s[1]],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules: Vec<(i64, String)> = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"].as_i64().unwrap(),
                d["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(rules[0], (2, "pinned".to_string()), "{v}");
    assert_eq!(rules.last().unwrap(), &(6, "latest".to_string()), "{v}");
    let left = lab.point_ids();
    assert!(left.contains(&2) && left.contains(&6), "{left:?}");
    expected.retain(|id, _| left.contains(id));
    check_all(&lab, &expected, "after retention around a pin");

    // Unpinned, it can go like any other.
    SNAPSHOT.expect(0, &["unpin", "2", &s[0], &s[1]]);
    prune(&lab, 0, &["2"]);
    expected.remove(&2);
    check_all(&lab, &expected, "after unpinning and removing point 2");
}

/// A removal killed at each of its steps: before the commit the merged pack is discarded,
/// after it the next writer finishes the renames. Either way every complete point restores.
#[test]
fn a_removal_killed_at_any_step_leaves_every_point_restorable() {
    let lab = Lab::new();
    let mut expected = history(&lab, 7, 0xdead);
    let s = store_args(&lab);
    // (failpoint, the point removed, whether the kill comes after the commit)
    for (fp, id, committed) in [
        ("merge-before-commit", 3, false),
        ("index-after-log-append", 3, false),
        ("merge-after-commit", 3, true),
        ("merge-before-rename", 4, true),
    ] {
        let st = std::process::Command::new(SNAPSHOT.path())
            .args(["prune", &id.to_string(), &s[0], &s[1]])
            .env("RESTOREPOINT_FAILPOINT", fp)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(st.code(), None, "{fp}: the process should have been killed");
        if committed {
            expected.remove(&id);
        }
        // A restore takes the lock and finishes (or discards) the merge first.
        check_all(&lab, &expected, &format!("after a removal killed at {fp}"));
        let names: Vec<String> = std::fs::read_dir(lab.store().join("packs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains(".merge-")),
            "{fp}: {names:?}"
        );
    }
    // The log holds exactly the writes that committed: the index rebuilt from it alone gives
    // the same points, and each restores.
    std::fs::remove_file(lab.store().join("index.db")).unwrap();
    SNAPSHOT.expect(0, &["repair", &s[0], &s[1]]);
    assert_eq!(
        lab.point_ids(),
        expected.keys().copied().collect::<Vec<_>>()
    );
    check_all(&lab, &expected, "after a repair from the log");
}

/// A version the merge must rebuild but cannot read now (a damaged replica copy) refuses the
/// removal and loses nothing: once a snapshot has mended the copy from the live file, the same
/// removal goes through and the old version restores exactly.
#[test]
fn a_removal_over_a_damaged_copy_is_refused_until_the_copy_is_mended() {
    let lab = Lab::new();
    let s = store_args(&lab);
    let mut f = Vec::new();
    for v in 1..=3 {
        lab.run_sh(&format!("seq 1 {} > f && seq {v} 3000 > g", 2000 + v * 10));
        f.push(std::fs::read(lab.sys().join("f")).unwrap());
        lab.snapshot();
    }
    flip(&lab.store().join("replica/f"), 100, 0x10);
    let out = prune(&lab, 5, &["2"]);
    let said = text(&out);
    assert!(
        said.contains("/f") && said.contains("Nothing was removed"),
        "{said}"
    );
    assert_eq!(lab.point_ids(), vec![1, 2, 3]);
    // A snapshot that reads f again mends the copy (exit 3 names it).
    lab.run_sh("touch f");
    SNAPSHOT.expect(3, &["--root", Lab::s(&lab.sys()), &s[0], &s[1]]);
    prune(&lab, 0, &["2"]);
    let t = lab.target("p1");
    RESTORE.expect(0, &lab.restore_to_args(1, &t, &["--path", "/f"]));
    assert_eq!(std::fs::read(t.join("f")).unwrap(), f[0]);
}

/// Retention that cannot remove a point (a damaged frame it would have to read through) keeps
/// it with the reason, warns (exit 3), and still records and prunes what it can: a snapshot
/// never fails because an old point could not go.
#[test]
fn retention_keeps_a_point_it_cannot_remove_and_warns() {
    let lab = Lab::new();
    let s = store_args(&lab);
    // g: 600 KB of new random bytes each time, so the history passes the ceiling's 1 MiB slack.
    for v in 1..=4 {
        lab.run_sh(&format!(
            "seq 1 {} > f && head -c 600000 /dev/urandom > g",
            2000 + v * 10
        ));
        lab.snapshot();
    }
    SNAPSHOT.expect(0, &["pin", "1", &s[0], &s[1]]);
    // Point 3's frame of f is what merging 2 into 3 must read through.
    let (off, len): (i64, i64) = rusqlite::Connection::open(lab.store().join("index.db"))
        .unwrap()
        .query_row(
            "SELECT frame_offset, frame_len FROM changes WHERE point_id = 3 AND path = CAST('f' AS BLOB)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(len > 4);
    flip(
        &lab.store().join("packs/3.pack"),
        (off + len / 2) as u64,
        0x10,
    );
    let conf = retention_conf(&lab, 1);
    let c = ["--config", Lab::s(&conf)];
    let out = SNAPSHOT.expect(3, &["prune", "--json", c[0], c[1], &s[0], &s[1]]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let two = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == 2)
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(two["rule"], "removal-failed", "{v}");
    assert!(
        two["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("/f"),
        "{v}"
    );
    assert!(lab.point_ids().contains(&2));
    // The next snapshot is recorded, and says the same as a warning, not a failure.
    lab.run_sh("echo more >> f");
    let out = SNAPSHOT.expect(3, &["--root", Lab::s(&lab.sys()), c[0], c[1], &s[0], &s[1]]);
    assert!(
        text(&out).contains("retention could not remove it"),
        "{}",
        text(&out)
    );
}

/// Retention does not merge away points whose changes the next point does not share: that
/// would free almost nothing and lose their history.
#[test]
fn retention_does_not_merge_points_that_changed_different_files() {
    let lab = Lab::new();
    let s = store_args(&lab);
    lab.run_sh("for i in 1 2 3 4 5 6; do head -c 2000000 /dev/urandom > f$i; done");
    lab.snapshot();
    for i in 2..=6 {
        lab.run_sh(&format!("head -c 2000000 /dev/urandom > f{i}"));
        lab.snapshot();
    }
    SNAPSHOT.expect(0, &["pin", "1", &s[0], &s[1]]);
    let conf = retention_conf(&lab, 2);
    let out = SNAPSHOT.expect(
        0,
        &["prune", "--json", "--config", Lab::s(&conf), &s[0], &s[1]],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rules: Vec<String> = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["rule"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lab.point_ids(), vec![1, 2, 3, 4, 5, 6], "{v}");
    assert_eq!(rules[1..4], ["merge-frees-little"; 3], "{v}");
}

/// A version the successor recorded lost for good (its old copy was damaged when it was taken)
/// does not block the removal of the point before it: what needs it is lost either way.
#[test]
fn a_removal_before_a_version_recorded_lost_goes_through() {
    let lab = Lab::new();
    let s = store_args(&lab);
    for v in 1..=2 {
        lab.run_sh(&format!("seq 1 {} > f && seq {v} 3000 > g", 2000 + v * 10));
        lab.snapshot();
    }
    // Point 3 finds the copy of f damaged while f changed: its old version is recorded lost.
    flip(&lab.store().join("replica/f"), 100, 0x10);
    lab.run_sh("seq 1 2030 > f && seq 3 3000 > g");
    SNAPSHOT.expect(3, &["--root", Lab::s(&lab.sys()), &s[0], &s[1]]);
    prune(&lab, 0, &["2"]);
    assert_eq!(lab.point_ids(), vec![1, 3]);
    SNAPSHOT.expect(5, &["cat", "1", "/f", &s[0], &s[1]]);
    let t = lab.target("p1");
    RESTORE.expect(0, &lab.restore_to_args(1, &t, &["--path", "/g"]));
    assert_eq!(
        std::fs::read(t.join("g")).unwrap(),
        b"1\n"
            .iter()
            .copied()
            .chain((2..=3000).flat_map(|n| format!("{n}\n").into_bytes()))
            .collect::<Vec<u8>>()
    );
}
