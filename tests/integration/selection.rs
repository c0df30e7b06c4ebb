//! What a restore selects: the directories kept while their contents are excluded (`/tmp/*`),
//! and hardlink groups cut by `--path`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::util::{Lab, RESTORE, SNAPSHOT};

const PSEUDO: [&str; 5] = ["dev", "proc", "sys", "run", "tmp"];

fn meta_line(p: &Path) -> String {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    format!(
        "mode {:o} owner {}:{} mtime {}.{:09}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        m.mtime_nsec()
    )
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The dry-run plan of a restore, as JSON.
fn dry_run(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let store = Lab::s(&lab.store()).to_string();
    let mut all = vec!["--store", &store, "--dry-run", "--json"];
    all.extend_from_slice(args);
    let out = RESTORE.expect(0, &all);
    serde_json::from_slice(&out.stdout).expect("json plan")
}

fn pseudo_tree(lab: &Lab) {
    lab.run_sh(
        "mkdir -p dev/pts proc/1 sys/kernel run/lock tmp/.X11-unix etc
         echo tty > dev/console && echo 1 > proc/1/status && echo k > sys/kernel/x
         echo 42 > run/sshd.pid && echo lock > run/lock/l && echo s > tmp/.X11-unix/X0
         echo scratch > tmp/f && echo conf > etc/conf
         chmod 1777 tmp && chmod 0555 proc sys && chmod 0711 run
         touch -d '2024-03-04 05:06:07.123456789' dev proc sys run tmp",
    );
    if crate::util::is_root() {
        lab.run_sh("chown 1234:5678 run && chown 0:7 tmp");
    }
}

/// `/dev/* /proc/* /sys/* /run/* /tmp/*`: a point restored into an empty directory has those
/// directories, with their mode, owner and times, and nothing in them.
#[test]
fn pseudo_filesystem_directories_are_kept_without_their_contents() {
    let lab = Lab::new();
    pseudo_tree(&lab);
    let id = lab.snapshot();
    let t = lab.target("empty");
    lab.restore(id, &t);
    for d in PSEUDO {
        let (src, dst) = (lab.sys().join(d), t.join(d));
        assert!(dst.is_dir(), "/{d} is restored as a directory");
        assert_eq!(meta_line(&src), meta_line(&dst), "/{d}'s metadata");
        assert!(names_in(&dst).is_empty(), "/{d} is restored empty");
    }
    let tmp_mode = std::fs::metadata(t.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777, "/tmp keeps its sticky bit");
    assert_eq!(read(&t.join("etc/conf")), "conf\n");
}

/// In place, the live contents of those directories are never deleted, whatever the point
/// holds, while the directories' own metadata comes back.
#[test]
fn an_in_place_restore_never_touches_what_is_inside_them() {
    let lab = Lab::new();
    pseudo_tree(&lab);
    let id = lab.snapshot();
    lab.run_sh(
        "echo live > tmp/new && mkdir -p tmp/d && echo x > tmp/d/y && chmod u+w proc && echo 2 > proc/2 && chmod 0555 proc
         echo newer > run/lock/l && rm tmp/f && chmod 0755 tmp && echo edited > etc/conf",
    );
    let before: Vec<(String, Vec<String>)> = PSEUDO
        .iter()
        .map(|d| (d.to_string(), names_in(&lab.sys().join(d))))
        .collect();
    lab.restore_in_place(0, id, &[]);
    for (d, names) in before {
        assert_eq!(
            names_in(&lab.sys().join(&d)),
            names,
            "/{d} keeps what it holds"
        );
    }
    assert_eq!(read(&lab.sys().join("tmp/d/y")), "x\n");
    assert_eq!(read(&lab.sys().join("run/lock/l")), "newer\n");
    assert!(
        !lab.sys().join("tmp/f").exists(),
        "excluded: not brought back"
    );
    assert_eq!(read(&lab.sys().join("etc/conf")), "conf\n");
    let tmp_mode = std::fs::metadata(lab.sys().join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777, "/tmp's mode comes back");
}

/// A point taken before `/tmp` existed: restoring it does not delete the live `/tmp` with what
/// is in it (the point excluded that), and says so.
#[test]
fn a_directory_holding_excluded_paths_is_not_deleted() {
    let lab = Lab::new();
    lab.run_sh("mkdir etc && echo conf > etc/conf");
    let id = lab.snapshot();
    lab.run_sh("mkdir -m 1777 tmp && echo live > tmp/work && mkdir new && echo n > new/file");
    let out = lab.restore_in_place(3, id, &["--no-safety-point"]);
    let msg =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains("/tmp") && msg.contains("excluded"), "{msg}");
    assert_eq!(read(&lab.sys().join("tmp/work")), "live\n");
    assert!(!lab.sys().join("new").exists(), "what the point lacks goes");
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

/// Restores point `id` in place, selecting `paths` (all of it when none); exit 0 expected.
fn restore_paths_in_place(lab: &Lab, id: i64, paths: &[&str]) -> std::process::Output {
    let extra: Vec<&str> = paths.iter().flat_map(|p| ["--path", p]).collect();
    lab.restore_in_place(0, id, &extra)
}

/// `--path /b` where `/b/follower` is a hardlink of `/a/leader`, and both (one inode) changed
/// since the point: the follower gets the point's content, the leader outside the selection
/// keeps the live one, and a second run has nothing to do.
#[test]
fn a_follower_whose_leader_is_not_selected_gets_the_points_content() {
    let lab = Lab::new();
    lab.run_sh("mkdir a b && echo point > a/leader && ln a/leader b/follower");
    let id = lab.snapshot();
    lab.run_sh("echo live > a/leader");
    assert_eq!(read(&lab.sys().join("b/follower")), "live\n");
    restore_paths_in_place(&lab, id, &["/b"]);
    assert_eq!(read(&lab.sys().join("b/follower")), "point\n");
    assert_eq!(
        read(&lab.sys().join("a/leader")),
        "live\n",
        "outside the selection"
    );
    let again = dry_run(
        &lab,
        &["--root", Lab::s(&lab.sys()), "--point", "1", "--path", "/b"],
    );
    assert_eq!(again["items"], serde_json::json!([]), "converged: {again}");
}

/// The same selection while the link is still as the point recorded it: nothing to do (the
/// group is not split for nothing).
#[test]
fn an_intact_link_to_a_leader_outside_the_selection_is_left_alone() {
    let lab = Lab::new();
    lab.run_sh("mkdir a b && echo same > a/leader && ln a/leader b/follower");
    let id = lab.snapshot();
    let plan = dry_run(
        &lab,
        &[
            "--root",
            Lab::s(&lab.sys()),
            "--point",
            &id.to_string(),
            "--path",
            "/b",
        ],
    );
    assert_eq!(plan["items"], serde_json::json!([]), "{plan}");
    assert_eq!(
        ino(&lab.sys().join("a/leader")),
        ino(&lab.sys().join("b/follower"))
    );
}

/// Into an empty target, `--path /opt` where `/opt` holds two links of `/lib/libx.so` (their leader: first in byte order): the
/// restore succeeds, with the point's content, and the two stay one inode.
#[test]
fn followers_of_an_unselected_leader_are_restored_linked_to_each_other() {
    let lab = Lab::new();
    lab.run_sh(
        "mkdir -p lib opt/app && echo shared > lib/libx.so
         ln lib/libx.so opt/app/libx.so && ln lib/libx.so opt/app/libx.so.1
         echo own > opt/app/conf",
    );
    let id = lab.snapshot();
    lab.run_sh("echo changed > lib/libx.so");
    let t = lab.target("empty");
    let (store_dir, ids) = (lab.store(), id.to_string());
    let store = Lab::s(&store_dir);
    RESTORE.expect(0, &lab.restore_to_args(id, &t, &["--path", "/opt"]));
    let (a, b) = (t.join("opt/app/libx.so"), t.join("opt/app/libx.so.1"));
    assert_eq!(read(&a), "shared\n");
    assert_eq!(read(&b), "shared\n");
    assert_eq!(ino(&a), ino(&b), "the two links stay one file");
    assert_eq!(std::fs::metadata(&a).unwrap().nlink(), 2);
    assert!(!t.join("lib").exists(), "nothing outside the selection");
    let again = dry_run(
        &lab,
        &["--point", &ids, "--target", Lab::s(&t), "--path", "/opt"],
    );
    assert_eq!(again["items"], serde_json::json!([]), "converged: {again}");

    // In place as well: the live pair is one inode with the live leader's new content.
    restore_paths_in_place(&lab, id, &["/opt"]);
    let (a, b) = (
        lab.sys().join("opt/app/libx.so"),
        lab.sys().join("opt/app/libx.so.1"),
    );
    assert_eq!(read(&a), "shared\n");
    assert_eq!(ino(&a), ino(&b));
    assert_eq!(read(&lab.sys().join("lib/libx.so")), "changed\n");
    SNAPSHOT.expect(0, &["verify", "--full", "--store", store]);
}

/// A filesystem mounted on `/run` (as on a real system): the point holds the directory, as
/// mounted, and nothing of what is in it; an in-place restore leaves the mount's contents.
#[test]
fn a_mounted_run_is_recorded_as_its_directory_only() {
    crate::require_root!();
    let lab = Lab::new();
    lab.run_sh("mkdir -p run etc && echo conf > etc/conf");
    let run = lab.sys().join("run");
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"])
        .arg(&run)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs on run");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(run.clone());
    lab.run_sh("mkdir run/lock && echo 1 > run/lock/x && echo 7 > run/daemon.pid");
    let id = lab.snapshot();
    let t = lab.target("empty");
    lab.restore(id, &t);
    assert!(t.join("run").is_dir());
    assert!(names_in(&t.join("run")).is_empty(), "nothing of the mount");
    assert_eq!(meta_line(&run), meta_line(&t.join("run")));
    lab.run_sh("echo 8 > run/other");
    restore_paths_in_place(&lab, id, &[]);
    assert_eq!(names_in(&run), ["daemon.pid", "lock", "other"]);
}
