//! Points copied off the machine: pushed to a remote store (a `file://` directory here; the
//! same code speaks S3), pushed again with nothing new, listed, verified, restored exactly
//! from the remote alone, a push killed between objects resumed, and a flipped bit found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use crate::util::*;

/// A single-node Garage server on localhost, stopped when dropped; None (with the reason
/// printed) where there is no `garage` binary (`.ci/run` installs it).
struct Garage {
    child: Child,
    port: u16,
}

const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "0000000000000000000000000000000000000000000000000000000000000042";

/// The `garage` binary; None (with the reason printed) where there is none.
fn garage_bin() -> Option<String> {
    let bin = [
        "garage".into(),
        format!(
            "{}/.cargo/bin/garage",
            std::env::var("HOME").unwrap_or_default()
        ),
    ]
    .into_iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(bin) = bin else {
        eprintln!("skipped the S3 half: garage is not installed (.ci/run installs it)");
        return None;
    };
    Some(bin)
}

impl Garage {
    fn start(dir: &Path) -> Option<Garage> {
        let bin = garage_bin()?;
        // Ports of this test process's own: tests run in parallel, and so may CI jobs.
        let port = 20000 + (std::process::id() % 2000) as u16 * 2;
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("garage.toml");
        std::fs::write(
            &conf,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                 [s3_api]\napi_bind_addr = \"127.0.0.1:{port}\"\ns3_region = \"garage\"\n",
                d = dir.display(),
                rpc = port + 1,
                secret = "7".repeat(64),
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .args([
                "-c",
                Lab::s(&conf),
                "server",
                "--single-node",
                "--default-bucket",
            ])
            .env("GARAGE_DEFAULT_ACCESS_KEY", KEY_ID)
            .env("GARAGE_DEFAULT_SECRET_KEY", SECRET)
            .env("GARAGE_DEFAULT_BUCKET", "restorepoint")
            .stdout(std::fs::File::create(dir.join("server.log")).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let g = Garage { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Up; the bucket is made just after the listener opens.
                std::thread::sleep(std::time::Duration::from_millis(500));
                return Some(g);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "garage did not start: see {}",
            dir.join("server.log").display()
        );
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "garage".into()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a binary with `env` (the remote's credentials) and expects `code`.
#[track_caller]
fn run(bin: &Bin, env: &[(&'static str, String)], code: i32, args: &[&str]) -> Output {
    let mut c = Command::new(bin.path());
    c.args(args).stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{} {args:?}\nstdout: {}\nstderr: {}",
        bin.0,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

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

fn push(lab: &Lab, url: &str, env: &[(&'static str, String)]) -> serde_json::Value {
    let store = lab.store();
    let args = ["push", "--to", url, "--json", "--store", Lab::s(&store)];
    let out = run(&SNAPSHOT, env, 0, &args);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A lab whose tree `setup` makes, with one point taken, and a `file://` remote beside it
/// (not pushed yet): (lab, the remote's directory, its URL).
fn lab_with_point(setup: &str) -> (Lab, PathBuf, String) {
    let lab = Lab::new();
    lab.run_sh(setup);
    lab.snapshot();
    let remote = lab.target("remote");
    let url = format!("file://{}", remote.display());
    (lab, remote, url)
}

#[test]
fn points_pushed_to_a_directory_restore_exactly_from_it_alone() {
    let lab = Lab::new();
    let remote = lab.target("remote");
    let url = format!("file://{}", remote.display());
    let damage = |_: &Lab| flip_in_largest(&remote.join("data"));
    pushed_points_restore_exactly(&lab, &url, &[], damage, Some(&remote));
}

/// The same against a real S3 server (Garage, single node, on localhost).
#[test]
fn points_pushed_to_s3_restore_exactly_from_it_alone() {
    let lab = Lab::new();
    let Some(g) = Garage::start(&lab.target("garage")) else {
        return;
    };
    let env = g.env();
    let data = lab.target("garage/data");
    let damage = |_: &Lab| flip_in_largest(&data);
    pushed_points_restore_exactly(&lab, "s3://restorepoint/host1", &env, damage, None);
}

/// Flips a bit in the largest file below `dir` (a bundle, in either kind of remote).
fn flip_in_largest(dir: &Path) {
    let f: PathBuf = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .into_path();
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[1000] ^= 0x10;
    std::fs::write(&f, bytes).unwrap();
}

/// Two points pushed, pushed again with nothing new, listed, verified, restored exactly from
/// the remote alone (the local store removed), then a bit flipped in the largest bundle is
/// found by verify and refused by a restore (exit 5).
fn pushed_points_restore_exactly(
    lab: &Lab,
    url: &str,
    env: &[(&'static str, String)],
    damage: impl Fn(&Lab),
    local: Option<&Path>,
) {
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
    let r = push(lab, url, env);
    assert_eq!(r["pushed"], serde_json::json!([1, 2]), "{r}");
    // Pushed again with nothing new: no object written.
    let before = local.map(objects);
    let r = push(lab, url, env);
    assert_eq!(r["pushed"], serde_json::json!([]), "{r}");
    assert_eq!(r["objects"], 0, "{r}");
    assert_eq!(local.map(objects), before);

    let out = run(&SNAPSHOT, env, 0, &["list", "--json", "--store", url]);
    let points: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<i64> = points["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2]);
    run(&SNAPSHOT, env, 0, &["verify", "--store", url]);

    // The local store gone: each point from the remote alone, exact.
    std::fs::remove_dir_all(lab.store()).unwrap();
    for (id, fp) in &expected {
        let t = lab.target(&format!("from-remote-{id}"));
        let id_s = id.to_string();
        let args = [
            "--store",
            url,
            "--point",
            &id_s,
            "--target",
            Lab::s(&t),
            "--yes",
        ];
        run(&RESTORE, env, 0, &args);
        assert_same(fp, &fingerprint(&t), &format!("point {id} from the remote"));
    }

    // A flipped bit in a bundle is found, and a restore that needs it refuses.
    damage(lab);
    run(&SNAPSHOT, env, 5, &["verify", "--store", url]);
    let t = lab.target("after-damage");
    let out = Command::new(RESTORE.path())
        .args([
            "--store",
            url,
            "--point",
            "2",
            "--target",
            Lab::s(&t),
            "--yes",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    // 5 when this tool finds the damage; a server that checks its own blocks (Garage) refuses
    // to serve the object instead, and the restore fails (1) naming it.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(5) | Some(1))
            && (err.contains("data/") || err.contains("does not match its hash")),
        "{:?} {err}",
        out.status.code()
    );
}

/// A push killed after each object it writes leaves the remote without the point (its
/// manifest comes last); the next push completes it, and the point restores exactly.
#[test]
fn a_killed_push_is_completed_by_the_next() {
    let (lab, remote, url) = lab_with_point(
        "mkdir -p d && for i in $(seq 1 30); do head -c 900000 /dev/urandom > d/f$i; done",
    );
    let fp = fingerprint(&lab.sys());
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
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["points"], serde_json::json!([]), "{listed}");
    let r = push(&lab, &url, &[]);
    assert_eq!(r["pushed"], serde_json::json!([1]), "{r}");
    SNAPSHOT.expect(0, &["verify", "--store", &url]);
    let t = lab.target("t");
    restores_as(&url, 1, &t, &fp, "the resumed push");
}

/// `push` takes the config's `[offsite] url` when `--to` is not given, and without either it
/// says what it needs (exit 2).
#[test]
fn push_goes_where_the_config_says() {
    let (lab, remote, _) = lab_with_point("mkdir -p etc && echo conf > etc/conf");
    let conf = lab.target("rp.conf");
    std::fs::write(
        &conf,
        format!("[offsite]\nurl = \"file://{}\"\n", remote.display()),
    )
    .unwrap();
    let store = lab.store();
    let out = SNAPSHOT.expect(2, &["push", "--store", Lab::s(&store)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("[offsite]"));
    SNAPSHOT.expect(0, &["push", "-c", Lab::s(&conf), "--store", Lab::s(&store)]);
    let url = format!("file://{}", remote.display());
    let out = SNAPSHOT.expect(0, &["list", "--json", "--store", &url]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"id\": 1"));
}

/// What would go wrong quietly is refused (exit 2): another store pushing its points where
/// this one's are (its point 1 is not this store's), a snapshot into a remote URL (it would
/// make a local directory named like it), and restore options a remote restore does not take.
#[test]
fn a_remote_store_is_not_mistaken_for_another() {
    let (lab, _, url) = lab_with_point("mkdir -p etc && echo conf > etc/conf");
    push(&lab, &url, &[]);
    // Another store of the same tree, made later: its point 1 is another.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let other = lab.target("other-store");
    SNAPSHOT.expect(
        0,
        &["--root", Lab::s(&lab.sys()), "--store", Lab::s(&other)],
    );
    let out = SNAPSHOT.expect(2, &["push", "--to", &url, "--store", Lab::s(&other)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not this store's"));

    let out = SNAPSHOT.expect(2, &["--root", Lab::s(&lab.sys()), "--store", &url]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("remote store"));
    assert!(!Path::new("file:").exists());
    let t = lab.target("t");
    let args = [
        "--store",
        &url,
        "--point",
        "1",
        "--target",
        Lab::s(&t),
        "--yes",
        "--dry-run",
    ];
    RESTORE.expect(2, &args);
    assert!(!t.exists(), "a dry run writes nothing");
}

/// A damaged catalog costs only what it names: verify reports it, the next push sends that
/// content again, and then every point restores.
#[test]
fn a_damaged_catalog_is_reported_and_its_content_sent_again() {
    let (lab, remote, url) = lab_with_point("mkdir -p d && head -c 200000 /dev/urandom > d/a");
    push(&lab, &url, &[]);
    let fp = fingerprint(&lab.sys());
    let cat = std::fs::read_dir(remote.join("catalog"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&cat).unwrap();
    bytes[5] ^= 1;
    std::fs::write(&cat, bytes).unwrap();
    let out = SNAPSHOT.expect(5, &["verify", "--store", &url]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("catalog/"));
    lab.run_sh("echo more > d/b");
    let fp2 = fingerprint(&lab.sys());
    lab.snapshot();
    let r = push(&lab, &url, &[]);
    assert_eq!(r["pushed"], serde_json::json!([2]), "{r}");
    std::fs::remove_file(&cat).unwrap();
    SNAPSHOT.expect(0, &["verify", "--store", &url]);
    for (id, fp) in [(1, &fp), (2, &fp2)] {
        let t = lab.target(&format!("t{id}"));
        let id_s = id.to_string();
        RESTORE.expect(
            0,
            &[
                "--store",
                &url,
                "--point",
                &id_s,
                "--target",
                Lab::s(&t),
                "--yes",
            ],
        );
        assert_same(fp, &fingerprint(&t), &format!("point {id}"));
    }
}

/// Restores point `id` of the remote `url` into `t` and checks it is `want`.
fn restores_as(url: &str, id: i64, t: &Path, want: &Fingerprint, what: &str) {
    RESTORE.expect(
        0,
        &[
            "--store",
            url,
            "--point",
            &id.to_string(),
            "--target",
            Lab::s(t),
            "--yes",
        ],
    );
    assert_same(want, &fingerprint(t), what);
}

/// A lab whose config pushes to a `file://` remote keeping `keep` points: (lab, the remote's
/// URL, the config, the store).
fn keep_points_lab(keep: usize) -> (Lab, String, PathBuf, PathBuf) {
    let lab = Lab::new();
    let url = format!("file://{}", lab.target("remote").display());
    let conf = lab.target("rp.conf");
    std::fs::write(
        &conf,
        format!("[offsite]\nurl = \"{url}\"\nkeep_points = {keep}\n[boot]\ncapture = false\n"),
    )
    .unwrap();
    let store = lab.store();
    (lab, url, conf, store)
}

/// `push --json` with this config and store, which must succeed.
fn push_json(conf: &Path, store: &Path) -> serde_json::Value {
    let out = SNAPSHOT.expect(
        0,
        &[
            "push",
            "-c",
            Lab::s(conf),
            "--store",
            Lab::s(store),
            "--json",
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `[offsite] keep_points`: the remote keeps the newest N points, more than the local store
/// keeps; older ones go from the remote with the bundles only they needed, and what remains
/// verifies and restores exactly.
#[test]
fn keep_points_keeps_more_off_site_than_local_and_expires_the_oldest() {
    let (lab, url, conf, store) = keep_points_lab(3);
    let push = || push_json(&conf, &store);
    let remote_ids = || listed_ids(&["--store", &url]);
    let mut expected = BTreeMap::new();
    // Each point has 20 MB of its own (several bundles of nothing else) and shares the rest.
    lab.run_sh(
        "mkdir -p etc && echo shared > etc/shared && printf '[retention]\\nceiling_ratio = 20\\n[boot]\\ncapture = false\\n' > etc/system_snapshots.conf",
    );
    for n in 1..=3 {
        lab.run_sh(&format!(
            "rm -f own* && head -c 20000000 /dev/urandom > own{n}"
        ));
        expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    }
    let r = push();
    assert_eq!(r["pushed"], serde_json::json!([1, 2, 3]), "{r}");
    assert_eq!(r["expired"]["points"], serde_json::json!([]), "{r}");
    // The local store keeps fewer: the remote still has them.
    SNAPSHOT.expect(0, &["prune", "--oldest", "2", "--store", Lab::s(&store)]);
    lab.run_sh("rm -f own* && head -c 20000000 /dev/urandom > own4");
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    // Killed once point 1's manifest is gone, before its bundles are: the next push finishes.
    let killed = Command::new(SNAPSHOT.path())
        .args(["push", "-c", Lab::s(&conf), "--store", Lab::s(&store)])
        .env("RESTOREPOINT_FAILPOINT", "expire-after-manifests")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None, "killed at the failpoint");
    assert_eq!(remote_ids(), vec![2, 3, 4]);
    SNAPSHOT.expect(0, &["verify", "--store", &url]);
    let r = push();
    assert_eq!(r["pushed"], serde_json::json!([]), "{r}");
    assert!(
        r["expired"]["bundles"].as_u64().unwrap() >= 1,
        "point 1's own bundles are deleted: {r}"
    );
    // Nothing dangles.
    SNAPSHOT.expect(0, &["verify", "--store", &url]);
    for id in [2, 3] {
        let t = lab.target(&format!("r{id}"));
        restores_as(
            &url,
            id,
            &t,
            &expected[&id],
            &format!("point {id}, gone locally"),
        );
    }
    // A keep_points of 0 is refused by the config.
    std::fs::write(&conf, "[offsite]\nkeep_points = 0\n").unwrap();
    let out = SNAPSHOT.run(&["push", "-c", Lab::s(&conf), "--store", Lab::s(&store)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("keep_points"), "{}", text(&out));
}

/// A pinned point is kept off-site too: `keep_points` counts the newest points and keeps every
/// pinned one besides, pushed whatever its age; unpinned, it expires at the next push.
#[test]
fn keep_points_keeps_pinned_points_off_site() {
    let (lab, url, conf, store) = keep_points_lab(2);
    let push = || push_json(&conf, &store);
    let mut expected = BTreeMap::new();
    for n in 1..=3 {
        lab.run_sh(&format!(
            "rm -f own* && head -c 300000 /dev/urandom > own{n}"
        ));
        expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    }
    SNAPSHOT.expect(0, &["pin", "1", "--store", Lab::s(&store)]);
    let r = push();
    assert_eq!(r["pushed"], serde_json::json!([1, 2, 3]), "{r}");
    assert_eq!(r["expired"]["points"], serde_json::json!([]), "{r}");
    lab.run_sh("rm -f own* && head -c 300000 /dev/urandom > own4");
    expected.insert(lab.snapshot(), fingerprint(&lab.sys()));
    let r = push();
    assert_eq!(r["pushed"], serde_json::json!([4]), "{r}");
    assert_eq!(r["expired"]["points"], serde_json::json!([2]), "{r}");
    assert_eq!(listed_ids(&["--store", &url]), vec![1, 3, 4]);
    SNAPSHOT.expect(0, &["verify", "--store", &url]);
    let t = lab.target("r1");
    restores_as(&url, 1, &t, &expected[&1], "pinned point 1, off-site");
    SNAPSHOT.expect(0, &["unpin", "1", "--store", Lab::s(&store)]);
    let r = push();
    assert_eq!(r["expired"]["points"], serde_json::json!([1]), "{r}");
    assert_eq!(listed_ids(&["--store", &url]), vec![3, 4]);
    SNAPSHOT.expect(0, &["verify", "--store", &url]);
}

/// S3 credentials from a file of root's alone, as the AWS tools keep them: named in the
/// config for a push, by AWS_SHARED_CREDENTIALS_FILE for a list; a file others can read is
/// refused; the secret never shows in any output.
#[test]
fn credentials_come_from_a_file_only_its_owner_reads() {
    let lab = Lab::new();
    let Some(g) = Garage::start(&lab.target("garage")) else {
        return;
    };
    lab.run_sh("echo x > f");
    lab.snapshot();
    let creds = lab.target("s3-credentials");
    std::fs::write(
        &creds,
        format!(
            "# web1's backup key\n[other]\naws_access_key_id = GKnotthisone\naws_secret_access_key = no\n\n[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\nregion = garage\nendpoint_url = http://127.0.0.1:{}\n",
            g.port
        ),
    )
    .unwrap();
    let conf = lab.target("rp.conf");
    std::fs::write(
        &conf,
        format!("[offsite]\ncredentials = \"{}\"\n", creds.display()),
    )
    .unwrap();
    let url = "s3://restorepoint/web1";
    let bare = |args: &[&str], extra: &[(&str, &Path)]| -> Output {
        let mut c = Command::new(SNAPSHOT.path());
        c.args(args).stdin(std::process::Stdio::null());
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_PROFILE",
        ] {
            c.env_remove(k);
        }
        c.env("HOME", lab.target("home"));
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let store = lab.store();
    let push_args = [
        "push",
        "-c",
        Lab::s(&conf),
        "--store",
        Lab::s(&store),
        "--to",
        url,
    ];
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = bare(&push_args, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = bare(&push_args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed = bare(
        &["list", "--store", url],
        &[("AWS_SHARED_CREDENTIALS_FILE", &creds)],
    );
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    assert!(text(&listed).contains('1'), "{}", text(&listed));
    for o in [&out, &listed] {
        assert!(!text(o).contains(SECRET), "the secret is not shown");
    }
}

/// Three Garage nodes, every object on all three (replication_factor 3, quorum 2). Stopped
/// when dropped.
struct Cluster {
    nodes: Vec<Option<Child>>,
    confs: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    api: Vec<u16>,
    bin: String,
}

impl Cluster {
    fn start(dir: &Path) -> Option<Cluster> {
        let bin = garage_bin()?;
        // Its own ports: the single-node servers use 20000-23999.
        let base = 26000 + (std::process::id() % 1000) as u16 * 8;
        let mut c = Cluster {
            nodes: Vec::new(),
            confs: Vec::new(),
            dirs: Vec::new(),
            api: Vec::new(),
            bin,
        };
        for i in 0..3u16 {
            let d = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let (api, rpc) = (base + 2 * i, base + 2 * i + 1);
            let conf = d.join("garage.toml");
            std::fs::write(
                &conf,
                format!(
                    "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\
                     [s3_api]\napi_bind_addr = \"127.0.0.1:{api}\"\ns3_region = \"garage\"\n",
                    d = d.display(),
                    secret = "5".repeat(64),
                ),
            )
            .unwrap();
            let child = Command::new(&c.bin)
                .args(["-c", Lab::s(&conf), "server"])
                .stdout(std::fs::File::create(d.join("server.log")).unwrap())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            c.nodes.push(Some(child));
            c.confs.push(conf);
            c.dirs.push(d);
            c.api.push(api);
        }
        let ids: Vec<String> = (0..3)
            .map(|i| {
                c.retry(i, &["node", "id", "-q"])
                    .lines()
                    .next()
                    .unwrap()
                    .trim()
                    .to_string()
            })
            .collect();
        for full in &ids[1..] {
            c.retry(0, &["node", "connect", full]);
        }
        for full in &ids {
            let id = full.split('@').next().unwrap();
            c.retry(0, &["layout", "assign", "-z", "dc1", "-c", "1G", id]);
        }
        c.retry(0, &["layout", "apply", "--version", "1"]);
        c.retry(
            0,
            &["key", "import", "-n", "rp-test", "--yes", KEY_ID, SECRET],
        );
        c.retry(0, &["bucket", "create", "restorepoint"]);
        c.retry(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                "restorepoint",
                "--key",
                "rp-test",
            ],
        );
        Some(c)
    }

    /// Runs `garage -c <node i's config> ARGS` until it succeeds (the cluster takes a moment
    /// to come up and to agree on its layout); its output.
    fn retry(&self, i: usize, args: &[&str]) -> String {
        let mut last = String::new();
        for _ in 0..100 {
            let out = Command::new(&self.bin)
                .args(["-c", Lab::s(&self.confs[i])])
                .args(args)
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("garage {args:?} on node {i}: {last}");
    }

    fn env(&self, node: usize) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "garage".into()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.api[node]),
            ),
        ]
    }

    fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Bytes of data blocks node `i` holds.
    fn stored(&self, i: usize) -> u64 {
        walkdir::WalkDir::new(self.dirs[i].join("data"))
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }
}

/// A node of a three-node cluster is stopped while a push runs: the push completes on the
/// other two (a write needs two of three), and the point verifies and restores exactly,
/// through another node, with that node still down.
#[test]
fn a_push_survives_a_node_of_three_stopped_during_it() {
    let (lab, _, _) = lab_with_point(
        "mkdir -p d && for i in $(seq 1 40); do head -c 1500000 /dev/urandom > d/f$i; done && ln d/f1 d/f1-link",
    );
    let fp = fingerprint(&lab.sys());
    let Some(mut c) = Cluster::start(&lab.target("cluster")) else {
        return;
    };
    let url = "s3://restorepoint/web1";
    let mut push = Command::new(SNAPSHOT.path());
    push.args([
        "push",
        "--to",
        url,
        "--store",
        Lab::s(&lab.store()),
        "--json",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for (k, v) in c.env(0) {
        push.env(k, v);
    }
    let child = push.spawn().unwrap();
    // Stopped once the first bundles have reached it.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while c.stored(2) < 4 << 20 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    c.stop(2);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["pushed"], serde_json::json!([1]), "{r}");
    run(&SNAPSHOT, &c.env(1), 0, &["verify", "--store", url]);
    let t = lab.target("t");
    run(
        &RESTORE,
        &c.env(1),
        0,
        &[
            "--store",
            url,
            "--point",
            "1",
            "--target",
            Lab::s(&t),
            "--yes",
        ],
    );
    assert_same(
        &fp,
        &fingerprint(&t),
        "restored through another node, one down",
    );
}

/// The remote holds the program and RECOVERY: fetched from there alone, the program lists the
/// remote's points; a push with nothing new sends neither again.
#[test]
fn the_kit_and_recovery_travel_to_the_remote_and_run_from_there() {
    let (lab, remote, url) = lab_with_point("echo x > f");
    push(&lab, &url, &[]);
    let recovery = std::fs::read_to_string(remote.join("kit/RECOVERY")).unwrap();
    assert!(recovery.contains(&url), "{recovery}");
    assert!(recovery.contains("--bare-metal"), "{recovery}");
    let rescue = lab.target("rescue");
    std::fs::create_dir_all(&rescue).unwrap();
    std::fs::copy(
        remote.join("kit/system_restore"),
        rescue.join("system_restore"),
    )
    .unwrap();
    sh_in(
        &rescue,
        "chmod +x system_restore && ln system_restore system_snapshot",
    );
    let out = Command::new(rescue.join("system_snapshot"))
        .args(["list", "--json", "--store", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["points"][0]["id"], 1, "{listed}");
    let r = push(&lab, &url, &[]);
    assert_eq!(r["objects"], 0, "nothing sent again: {r}");
}

fn sh_in(dir: &Path, script: &str) {
    let st = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{script}");
}

/// `--root` with a remote store: the system rolled back in place from the remote alone (a
/// rescue system whose local store is gone), the local store's place left alone.
#[test]
fn a_root_is_rolled_back_in_place_from_the_remote() {
    let (lab, _, url) = lab_with_point(
        "mkdir -p root etc usr/bin var/log && echo 'port 22' > etc/sshd && head -c 2000000 /dev/urandom > usr/bin/big \
         && ln usr/bin/big usr/bin/big2 && ln -s sshd etc/link && echo log > var/log/syslog && chmod 600 etc/sshd",
    );
    let fp = fingerprint(&lab.sys());
    push(&lab, &url, &[]);
    lab.run_sh(
        "echo 'port 2222' > etc/sshd && chmod 644 etc/sshd && rm usr/bin/big2 && echo new > etc/new \
         && head -c 100 /dev/urandom >> usr/bin/big && mkdir -p root/snapshots && echo keep > root/snapshots/local",
    );
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            &url,
            "--point",
            "1",
        ]
        .map(String::from)
        .into();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let before = fingerprint(&lab.sys());
    let out = RESTORE.expect(0, &args(&["--dry-run"]));
    assert!(text(&out).contains("to rewrite"), "{}", text(&out));
    assert_eq!(fingerprint(&lab.sys()), before, "a dry run changes nothing");
    let out = RESTORE.run(&args(&[]));
    assert_eq!(
        out.status.code(),
        Some(6),
        "no terminal, no --yes: {}",
        text(&out)
    );
    RESTORE.expect(0, &args(&["--yes"]));
    assert_eq!(
        std::fs::read_to_string(lab.sys().join("root/snapshots/local")).unwrap(),
        "keep\n",
        "the local store's place is left alone"
    );
    std::fs::remove_dir_all(lab.sys().join("root/snapshots")).unwrap();
    // /root's own times changed with the store made in it.
    let without = |mut f: Fingerprint, paths: &[&str]| {
        for p in paths.iter().chain(&["root"]) {
            f.remove(p.as_bytes());
        }
        f
    };
    assert_same(
        &without(fp.clone(), &[]),
        &without(fingerprint(&lab.sys()), &[]),
        "rolled back from the remote",
    );
    // Damage in the remote costs the files it held, named, exit 5; the rest is restored.
    lab.run_sh("head -c 100 /dev/urandom >> usr/bin/big && echo 'port 1' > etc/sshd");
    flip_in_largest(&lab.target("remote").join("data"));
    let out = RESTORE.run(&args(&["--yes"]));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("DAMAGED /usr/bin/big"),
        "{}",
        text(&out)
    );
    let damaged = ["usr/bin/big", "usr/bin/big2"];
    assert_same(
        &without(fp, &damaged),
        &without(fingerprint(&lab.sys()), &damaged),
        "everything but the damaged file",
    );
}
