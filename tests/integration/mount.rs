//! `system_snapshot mount`: points mounted with FUSE by the real binary and read with ordinary
//! tools (stat, getfattr, getfacl, getcap, find, diff -r, cp -a), compared with the tree's
//! fingerprint as it was when the point was taken; writes refused; `all`; a snapshot and a
//! prune while mounted; damage in the store giving EIO, never other bytes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Why FUSE mounts cannot be tested here, if they cannot.
fn cannot_mount() -> Option<&'static str> {
    if !is_root() {
        return Some("needs root (mount(2) without fusermount3, device nodes, owners)");
    }
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    if fuse.is_err() {
        return Some("/dev/fuse is missing or cannot be opened");
    }
    None
}

macro_rules! require_fuse {
    () => {
        if let Some(why) = cannot_mount() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Whether `dir` is a mount point of this process's namespace (mountinfo's fifth field).
fn mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(d))
}

/// A `system_snapshot mount` running in the background. Dropped while still running (a
/// failed assertion), it is detached and killed, so that no test leaves a mount behind.
struct Mount {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Mount {
    fn start(lab: &Lab, which: &str, name: &str) -> Mount {
        Mount::start_with(lab, which, name, &[])
    }

    fn start_with(lab: &Lab, which: &str, name: &str, extra: &[&str]) -> Mount {
        let dir = lab.target(name);
        std::fs::create_dir_all(&dir).unwrap();
        let log = lab.target(&format!("{name}.out"));
        hermetic_env();
        let child = Command::new(SNAPSHOT.path())
            .args([
                "mount",
                which,
                Lab::s(&dir),
                "--store",
                Lab::s(&lab.store()),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("start system_snapshot mount");
        let mut m = Mount {
            child: Some(child),
            dir,
            log,
        };
        let start = Instant::now();
        while !mounted(&m.dir) {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                panic!(
                    "mount {which} exited with {st} before mounting: {}",
                    m.output()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "not mounted after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// What the mount printed: stdout, then stderr.
    fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}{}",
            read(&self.log),
            read(&self.log.with_extension("err"))
        )
    }

    /// Waits for the process to end (it must, once unmounted); its status.
    fn wait(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("still running");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "system_snapshot mount still running 30 s after its unmount"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `umount DIR`, as an administrator ends it.
    fn umount(mut self) -> (ExitStatus, String) {
        let st = Command::new("umount").arg(&self.dir).status().unwrap();
        assert!(st.success(), "umount {}", self.dir.display());
        let st = self.wait();
        (st, self.output())
    }

    /// SIGTERM (or SIGINT, as Ctrl-C), which must unmount cleanly.
    fn signal(mut self, sig: rustix::process::Signal) -> (ExitStatus, String) {
        let pid = rustix::process::Pid::from_raw(self.child.as_ref().unwrap().id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
        let st = self.wait();
        (st, self.output())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a tool on the mount; its stdout (asserting success).
#[track_caller]
fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

const EIO: i32 = 5;
const EROFS: i32 = 30;
const ESTALE: i32 = 116;

/// Inode flags are no part of what `cp -a` copies.
fn without_flags(fp: &Fingerprint) -> Fingerprint {
    fp.iter()
        .map(|(p, d)| {
            let kept: Vec<&str> = d.split(' ').filter(|w| !w.starts_with("flags=")).collect();
            (p.clone(), kept.join(" "))
        })
        .collect()
}

const TREE: &str = r#"
    mkdir -p etc/app empty var/log var/tmp bin dev2 acl
    echo hello > etc/hosts
    setfattr -n user.comment -v hello etc/hosts
    setfattr -n trusted.t -v x etc/hosts
    for f in $(seq 1 20); do seq 1 $((f * 100)) > etc/app/conf$f; done
    touch -d '2001-02-03 04:05:06.123456789' etc/app/conf2
    ln etc/app/conf1 etc/app/conf1.link && ln etc/app/conf1 bin/conf1.again
    ln -s app/conf3 etc/link && ln -s /nowhere dangling
    head -c 20000000 /dev/urandom > bin/big && chmod 750 bin/big
    truncate -s 64M var/sparse.img
    printf data | dd of=var/sparse.img bs=1 seek=1000000 conv=notrunc 2>/dev/null
    echo bin > bin/ping && chmod 755 bin/ping && setcap cap_net_raw+ep bin/ping
    echo su > bin/suid && chmod 4755 bin/suid
    chmod 1777 var/tmp
    setfacl -m u:1001:rwx -m d:g:1002:rx acl
    echo x > acl/file && setfacl -m u:1003:r acl/file
    mknod dev2/null c 1 3 && mknod dev2/loop7 b 7 7 && mkfifo dev2/fifo
    echo mine > etc/owned && chown 1234:5678 etc/owned
    ln -s etc/hosts owned-link && chown -h 7:8 owned-link
    chattr +d etc/app
"#;

const CHANGE: &str = r#"
    echo changed > etc/hosts && setfattr -n user.comment -v other etc/hosts
    seq 1 99999 >> etc/app/conf4 && rm etc/app/conf5 && chmod 600 etc/app/conf6
    head -c 1000 /dev/urandom | dd of=bin/big bs=1 seek=5000000 conv=notrunc 2>/dev/null
    echo new > etc/app/added && rm etc/app/conf1.link
    rm dev2/null && mknod dev2/null c 1 5
    printf more | dd of=var/sparse.img bs=1 seek=30000000 conv=notrunc 2>/dev/null
    rmdir empty && mkdir newdir && setcap cap_net_admin+ep bin/ping
"#;

#[test]
fn a_mounted_point_reads_as_the_tree_was_and_refuses_writes() {
    require_fuse!();
    let lab = Lab::new();
    lab.run_sh(TREE);
    let fp1 = fingerprint(&lab.sys());
    let p1 = lab.snapshot();
    lab.run_sh(CHANGE);
    let fp2 = fingerprint(&lab.sys());
    let p2 = lab.snapshot();
    assert_ne!(fp1, fp2);

    let m = Mount::start(&lab, &p1.to_string(), "p1");
    assert!(m.output().contains("to unmount: umount "), "{}", m.output());
    // Everything the fingerprint compares comes through FUSE: type, mode, owner, ns mtime,
    // size, content, symlink target, rdev, xattrs (ACLs and capabilities among them), inode
    // flags, hardlink groups and sparseness. What it leaves out cannot match: see DESIGN.md.
    assert_same(&fp1, &fingerprint(&m.dir), "point 1 mounted");

    // Ordinary tools.
    assert_eq!(
        tool("stat", &["-c", "%h %i", Lab::s(&m.path("etc/app/conf1"))])
            .split(' ')
            .next(),
        Some("3")
    );
    let same_ino = |a: &str, b: &str| {
        tool("stat", &["-c", "%i", Lab::s(&m.path(a))])
            == tool("stat", &["-c", "%i", Lab::s(&m.path(b))])
    };
    assert!(same_ino("etc/app/conf1", "bin/conf1.again"));
    assert!(!same_ino("etc/app/conf1", "etc/app/conf2"));
    assert_eq!(
        tool("stat", &["-c", "%A %U", Lab::s(&m.path("bin/suid"))]),
        "-rwsr-xr-x root\n"
    );
    assert_eq!(
        tool("stat", &["-c", "%t:%T", Lab::s(&m.path("dev2/null"))]),
        "1:3\n"
    );
    assert!(
        tool("getfattr", &["-d", "-m", "-", Lab::s(&m.path("etc/hosts"))])
            .contains("user.comment=\"hello\"")
    );
    assert!(tool("getfacl", &["-n", Lab::s(&m.path("acl/file"))]).contains("user:1003:r--"));
    assert!(tool("getfacl", &["-n", Lab::s(&m.path("acl"))]).contains("default:group:1002:r-x"));
    assert!(tool("getcap", &[Lab::s(&m.path("bin/ping"))]).contains("cap_net_raw"));
    let lsattr = tool("lsattr", &["-d", Lab::s(&m.path("etc/app"))]);
    assert!(lsattr.split(' ').next().unwrap().contains('d'), "{lsattr}");
    assert_eq!(tool("cat", &[Lab::s(&m.path("etc/hosts"))]), "hello\n");
    assert_eq!(
        tool("readlink", &[Lab::s(&m.path("etc/link"))]),
        "app/conf3\n"
    );
    assert_eq!(
        tool("find", &[Lab::s(&m.dir)]).lines().count(),
        fp1.len(),
        "find lists every path of the point"
    );
    // diff -r against the point restored by system_restore (device nodes and the FIFO are
    // compared by the fingerprints above: diff cannot read them).
    let restored = lab.target("restored1");
    lab.restore(p1, &restored);
    tool(
        "diff",
        &[
            "-r",
            "--no-dereference",
            "-x",
            "dev2",
            Lab::s(&restored),
            Lab::s(&m.dir),
        ],
    );
    // cp -a out of the mount: the same tree, holes, hardlinks, xattrs and device nodes
    // included (cp copies no inode flags).
    let copy = lab.target("copy1");
    tool("cp", &["-a", Lab::s(&m.dir), Lab::s(&copy)]);
    assert_same(
        &without_flags(&fp1),
        &without_flags(&fingerprint(&copy)),
        "cp -a of the mount",
    );

    // Read-only: every write is EROFS.
    assert_eq!(
        errno_of(std::fs::write(m.path("etc/new"), b"x")),
        Some(EROFS)
    );
    assert_eq!(
        errno_of(
            std::fs::OpenOptions::new()
                .write(true)
                .open(m.path("etc/hosts"))
        ),
        Some(EROFS)
    );
    assert_eq!(errno_of(std::fs::create_dir(m.path("etc/d"))), Some(EROFS));
    assert_eq!(
        errno_of(std::fs::remove_file(m.path("etc/hosts"))),
        Some(EROFS)
    );
    assert_eq!(
        errno_of(std::fs::rename(m.path("etc/hosts"), m.path("etc/h2"))),
        Some(EROFS)
    );
    let chmod = Command::new("chmod")
        .args(["777", Lab::s(&m.path("etc/hosts"))])
        .output()
        .unwrap();
    assert!(
        !chmod.status.success()
            && String::from_utf8_lossy(&chmod.stderr).contains("Read-only file system")
    );
    let setfattr = Command::new("setfattr")
        .args(["-n", "user.x", "-v", "1", Lab::s(&m.path("etc/hosts"))])
        .output()
        .unwrap();
    assert!(!setfattr.status.success());
    assert_eq!(
        tool("cat", &[Lab::s(&lab.sys().join("etc/hosts"))]),
        "changed\n"
    );

    let (st, out) = m.umount();
    assert_eq!(st.code(), Some(0), "{out}");
    assert!(!mounted(&lab.target("p1")));
    // The rebuilt copies were unnamed temp files: nothing is left in the store.
    assert_eq!(
        std::fs::read_dir(lab.store().join("staging"))
            .unwrap()
            .count(),
        0
    );

    // `all`: one directory per point; a snapshot and a prune while it is mounted.
    let m = Mount::start(&lab, "all", "all");
    let ids = |m: &Mount| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&m.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&m), vec![p1.to_string(), p2.to_string()]);
    assert_same(
        &fp1,
        &fingerprint(&m.path(&p1.to_string())),
        "point 1 under all/",
    );
    assert_same(
        &fp2,
        &fingerprint(&m.path(&p2.to_string())),
        "point 2 under all/",
    );
    lab.run_sh("echo third > etc/hosts && rm etc/app/conf7");
    let fp3 = fingerprint(&lab.sys());
    let p3 = lab.snapshot();
    std::thread::sleep(Duration::from_millis(1500)); // the list of points' TTL
    assert_eq!(
        ids(&m),
        vec![p1.to_string(), p2.to_string(), p3.to_string()]
    );
    assert_same(
        &fp3,
        &fingerprint(&m.path(&p3.to_string())),
        "point 3, taken while mounted",
    );
    // Point 2's files still read as they were, though the replica moved on under them.
    assert_same(
        &fp2,
        &fingerprint(&m.path(&p2.to_string())),
        "point 2 after point 3",
    );
    SNAPSHOT.expect(
        0,
        &["prune", "--oldest", "1", "--store", Lab::s(&lab.store())],
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ids(&m), vec![p2.to_string(), p3.to_string()]);
    // Point 1 is gone from the store: a file of it the kernel still knows reads as it was
    // (from the kernel's cache, or rebuilt when the bytes are still the same) or fails; it
    // never reads as another version.
    for (rel, want) in [("etc/hosts", "hello\n"), ("etc/app/conf4", "")] {
        match std::fs::read(m.path(&format!("{p1}/{rel}"))) {
            Ok(v) if want.is_empty() => assert_eq!(
                v,
                (1..=400)
                    .map(|i| format!("{i}\n"))
                    .collect::<String>()
                    .into_bytes(),
                "{rel}"
            ),
            Ok(v) => assert_eq!(v, want.as_bytes(), "{rel}"),
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(ESTALE | EIO) | Some(2)),
                "{rel}: {e}"
            ),
        }
    }
    let (st, out) = m.signal(rustix::process::Signal::TERM);
    assert_eq!(st.code(), Some(0), "SIGTERM: {out}");
    assert!(!mounted(&lab.target("all")));
}

#[test]
fn a_damaged_file_reads_as_eio_and_the_rest_as_recorded() {
    require_fuse!();
    let lab = Lab::new();
    lab.run_sh(
        r#"
        mkdir etc && echo intact > etc/a && seq 1 5000 > etc/b && head -c 300000 /dev/urandom > etc/c
        "#,
    );
    let c1 = std::fs::read(lab.sys().join("etc/c")).unwrap();
    let p1 = lab.snapshot();
    // Point 2 changes etc/c: point 1's version is rebuilt from point 2's frame.
    lab.run_sh("head -c 1000 /dev/urandom | dd of=etc/c bs=1 seek=1000 conv=notrunc 2>/dev/null");
    lab.snapshot();
    flip(&lab.store().join("replica/etc/b"), 100, 0x04);
    let m = Mount::start(&lab, &p1.to_string(), "p1");
    assert_eq!(std::fs::read(m.path("etc/a")).unwrap(), b"intact\n");
    assert_eq!(errno_of(std::fs::read(m.path("etc/b"))), Some(EIO));
    // cat says so too, and exits non-zero.
    let cat = Command::new("cat").arg(m.path("etc/b")).output().unwrap();
    assert!(!cat.status.success());
    assert!(String::from_utf8_lossy(&cat.stderr).contains("Input/output error"));
    // The metadata still lists it as the point had it.
    assert_eq!(
        std::fs::metadata(m.path("etc/b")).unwrap().len(),
        std::fs::metadata(lab.sys().join("etc/b")).unwrap().len()
    );
    // etc/c at point 1, through point 2's frame.
    assert_eq!(std::fs::read(m.path("etc/c")).unwrap(), c1);
    let (st, out) = m.signal(rustix::process::Signal::INT);
    assert_eq!(st.code(), Some(0), "{out}");
    assert!(
        out.contains("warning: point 1 /etc/b:") && out.contains("does not match"),
        "{out}"
    );
}

#[test]
fn mount_refuses_a_missing_or_non_empty_directory_and_an_unknown_point() {
    let lab = Lab::new();
    lab.run_sh("echo x > f");
    let p1 = lab.snapshot();
    let s = Lab::s(&lab.store()).to_string();
    let missing = lab.target("nope");
    let out = SNAPSHOT.expect(
        2,
        &["mount", &p1.to_string(), Lab::s(&missing), "--store", &s],
    );
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    let full = lab.target("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"x").unwrap();
    let out = SNAPSHOT.expect(2, &["mount", &p1.to_string(), Lab::s(&full), "--store", &s]);
    assert!(text(&out).contains("is not empty"), "{}", text(&out));
    let empty = lab.target("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = SNAPSHOT.run(&["mount", "99", Lab::s(&empty), "--store", &s]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out).contains("no restore point 99"), "{}", text(&out));
    let out = SNAPSHOT.expect(2, &["mount", "latest", Lab::s(&empty), "--store", &s]);
    assert!(
        text(&out).contains("neither a point id nor `all`"),
        "{}",
        text(&out)
    );
    assert!(!mounted(&empty));
}

/// Runs `args` as uid and gid `id` (no supplementary groups); its exit status and stderr.
fn as_user(id: u32, args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={id}"),
            &format!("--regid={id}"),
            "--clear-groups",
            "--",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_kernel_applies_the_recorded_modes_and_acls_and_only_allow_other_lets_others_in() {
    require_fuse!();
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let lab = Lab::new();
    lab.run_sh(
        r#"
        echo open > open && chmod 644 open
        echo closed > closed && chmod 600 closed
        echo granted > acl && chmod 600 acl && setfacl -m u:1003:r acl
        mkdir private && chmod 700 private && echo x > private/f
        "#,
    );
    let p1 = lab.snapshot().to_string();
    // Other users must be able to reach the mount point.
    let mut perm = std::fs::metadata(lab.dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(lab.dir.path(), perm).unwrap();

    let m = Mount::start(&lab, &p1, "mine");
    let (ok, err) = as_user(1003, &["cat", Lab::s(&m.path("open"))]);
    assert!(!ok, "without --allow-other another user gets in: {err}");
    let (st, out) = m.umount();
    assert_eq!(st.code(), Some(0), "{out}");

    let m = Mount::start_with(&lab, &p1, "shared", &["--allow-other"]);
    let read = |id: u32, rel: &str| as_user(id, &["cat", Lab::s(&m.path(rel))]);
    assert!(read(1003, "open").0, "{}", read(1003, "open").1);
    let (ok, err) = read(1004, "closed");
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, err) = read(1003, "acl");
    assert!(ok, "the recorded ACL grants user 1003: {err}");
    assert!(!read(1004, "acl").0);
    let (ok, err) = read(1004, "private/f");
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (st, out) = m.umount();
    assert_eq!(st.code(), Some(0), "{out}");
}

#[test]
fn all_builds_a_dropped_tree_again_with_the_same_inode_numbers() {
    require_fuse!();
    let lab = Lab::new();
    let mut fps = Vec::new();
    lab.run_sh("mkdir d && echo 0 > d/f && ln d/f d/g");
    for i in 1..=6 {
        fps.push((lab.snapshot(), fingerprint(&lab.sys())));
        lab.run_sh(&format!(
            "echo {i} > d/f && echo {i} > n{i} && mkdir -p e{i}/x"
        ));
    }
    let m = Mount::start(&lab, "all", "all");
    let ino = |p: i64| {
        tool(
            "stat",
            &["-c", "%i %h", Lab::s(&m.path(&format!("{p}/d/f")))],
        )
    };
    let first = ino(fps[0].0);
    // More points than the mount keeps: the first ones' trees are dropped on the way.
    for (id, fp) in &fps {
        assert_same(
            fp,
            &fingerprint(&m.path(&id.to_string())),
            &format!("point {id}"),
        );
    }
    // Make the kernel forget its inodes and dentries, so that it asks again.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    assert_eq!(ino(fps[0].0), first);
    assert_same(
        &fps[0].1,
        &fingerprint(&m.path(&fps[0].0.to_string())),
        "point 1 again",
    );
    // A point's root under all/ is listed without building its tree: its links are not
    // counted (1, as btrfs shows directories).
    assert_eq!(
        tool(
            "stat",
            &["-c", "%h", Lab::s(&m.path(&fps[0].0.to_string()))]
        ),
        "1\n"
    );
    let (st, out) = m.umount();
    assert_eq!(st.code(), Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");
}
