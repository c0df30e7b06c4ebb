//! Points copied off the machine: pushed to a remote store (a `file://` directory here; the
//! same code speaks S3), pushed again with nothing new, listed, verified, restored exactly
//! from the remote alone, a push killed between objects resumed, and a flipped bit found.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::*;

fn objects(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            use std::os::unix::fs::MetadataExt;
            (
                e.path().display().to_string(),
                m.mtime_nsec() as u64 + m.size(),
            )
        })
        .collect();
    v.sort();
    v
}

fn push(lab: &Lab, url: &str) -> serde_json::Value {
    let out = SNAPSHOT.expect(
        0,
        &[
            "push",
            "--to",
            url,
            "--json",
            "--store",
            Lab::s(&lab.store()),
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn points_pushed_to_a_remote_store_restore_exactly_from_it_alone() {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir -p etc usr/lib a && echo conf > etc/conf && head -c 3000000 /dev/urandom > usr/lib/big \
         && ln usr/lib/big usr/lib/big-link && ln -s ../etc/conf a/link && cp -p etc/conf a/twin \
         && head -c 20000000 /dev/urandom > usr/lib/huge && truncate -s 50M usr/lib/sparse.img \
         && printf data | dd of=usr/lib/sparse.img bs=1 seek=30000000 conv=notrunc status=none \
         && chmod 640 etc/conf && touch -d '2011-01-01 00:00:00.5' a/twin",
    );
    if is_root() {
        lab.run_sh("mkfifo a/fifo && chown 12:34 etc/conf && setfattr -n user.note -v hi etc/conf 2>/dev/null || true");
    }
    let mut expected = BTreeMap::new();
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    lab.run_sh("echo more >> etc/conf && rm a/twin && echo new > a/new");
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    let remote = lab.target("remote");
    let url = format!("file://{}", remote.display());

    let r = push(&lab, &url);
    assert_eq!(r["pushed"], serde_json::json!([1, 2]), "{r}");
    // Pushed again with nothing new: no object written.
    let before = objects(&remote);
    let r = push(&lab, &url);
    assert_eq!(r["pushed"], serde_json::json!([]), "{r}");
    assert_eq!(r["objects"], 0, "{r}");
    assert_eq!(objects(&remote), before);

    let listed = RESTORE.path(); // both binaries hold both commands; list is system_snapshot's
    let _ = listed;
    let out = SNAPSHOT.expect(0, &["list", "--json", "--store", &url]);
    let points: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<i64> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2]);
    SNAPSHOT.expect(0, &["verify", "--store", &url]);

    // The local store gone: each point from the remote alone, exact.
    std::fs::remove_dir_all(lab.store()).unwrap();
    for (id, fp) in &expected {
        let t = lab.target(&format!("from-remote-{id}"));
        RESTORE.expect(
            0,
            &[
                "--store",
                &url,
                "--point",
                &id.to_string(),
                "--target",
                Lab::s(&t),
                "--yes",
            ],
        );
        assert_same(fp, &fingerprint(&t), &format!("point {id} from the remote"));
    }

    // A flipped bit in a bundle is found, and a restore that needs it refuses.
    let bundle = walkdir::WalkDir::new(remote.join("data"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .into_path();
    let mut bytes = std::fs::read(&bundle).unwrap();
    bytes[1000] ^= 0x10;
    std::fs::write(&bundle, bytes).unwrap();
    let out = SNAPSHOT.run(&["verify", "--store", &url]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let t = lab.target("after-damage");
    let out = RESTORE.run(&[
        "--store",
        &url,
        "--point",
        "2",
        "--target",
        Lab::s(&t),
        "--yes",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A push killed after each object it writes leaves the remote without the point (its
/// manifest comes last); the next push completes it, and the point restores exactly.
#[test]
fn a_killed_push_is_completed_by_the_next() {
    let lab = Lab::new();
    lab.run_sh("mkdir -p d && for i in $(seq 1 30); do head -c 900000 /dev/urandom > d/f$i; done");
    let fp = fingerprint(&lab.sys());
    lab.snapshot();
    let remote = lab.target("remote");
    let url = format!("file://{}", remote.display());
    let killed = std::process::Command::new(SNAPSHOT.path())
        .args(["push", "--to", &url, "--store", Lab::s(&lab.store())])
        .env("RESTOREPOINT_FAILPOINT", "push-after-bundle")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None, "killed at the failpoint");
    assert!(
        !remote.join("points").exists()
            || std::fs::read_dir(remote.join("points")).unwrap().count() == 0,
        "no point counts as off site before its manifest"
    );
    let out = SNAPSHOT.expect(0, &["list", "--json", "--store", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let r = push(&lab, &url);
    assert_eq!(r["pushed"], serde_json::json!([1]), "{r}");
    SNAPSHOT.expect(0, &["verify", "--store", &url]);
    let t = lab.target("t");
    RESTORE.expect(
        0,
        &[
            "--store",
            &url,
            "--point",
            "1",
            "--target",
            Lab::s(&t),
            "--yes",
        ],
    );
    assert_same(&fp, &fingerprint(&t), "the resumed push");
}
