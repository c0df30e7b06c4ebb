//! Test helpers: a tree fingerprint that says, per path, everything an administrator would
//! compare (type, mode, owner, size, ns mtime, content hash, link target, rdev, xattrs,
//! settable inode flags, hardlink group, sparseness), read with its own fd-based walk so it
//! reaches paths past 4096 bytes; and runners for the two binaries.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Output;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips the calling test (with the reason printed) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::util::is_root() {
            eprintln!("skipped: needs root (ownership, device nodes, trusted xattrs, inode flags)");
            return;
        }
    };
}

const SETTABLE_FLAGS: u32 = 0x1
    | 0x2
    | 0x4
    | 0x8
    | 0x10
    | 0x20
    | 0x40
    | 0x80
    | 0x4000
    | 0x1_0000
    | 0x2_0000
    | 0x80_0000
    | 0x2000_0000;

/// path → description of everything restorable about it.
pub type Fingerprint = BTreeMap<Vec<u8>, String>;

pub fn fingerprint(root: &Path) -> Fingerprint {
    fingerprint_except(root, &[])
}

/// The fingerprint, leaving out the named top-level entries (a store kept inside the tree).
pub fn fingerprint_except(root: &Path, skip: &[&str]) -> Fingerprint {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open tree root");
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<u8>> = HashMap::new();
    describe(fd.as_fd(), b".", b"", &mut out, &mut inodes);
    visit(fd, b"", skip, &mut out, &mut inodes);
    out
}

fn visit(
    dir: OwnedFd,
    path: &[u8],
    skip: &[&str],
    out: &mut Fingerprint,
    inodes: &mut HashMap<u64, Vec<u8>>,
) {
    let mut names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .filter(|n| !(path.is_empty() && skip.iter().any(|s| s.as_bytes() == n.as_slice())))
        .collect();
    names.sort();
    for name in names {
        let child = if path.is_empty() {
            name.clone()
        } else {
            [path, b"/", &name].concat()
        };
        let is_dir = describe(dir.as_fd(), &name, &child, out, inodes);
        if is_dir {
            let sub = rustix::fs::openat(
                &dir,
                &name[..],
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .expect("open dir");
            visit(sub, &child, skip, out, inodes);
        }
    }
}

fn describe(
    dir: BorrowedFd,
    name: &[u8],
    path: &[u8],
    out: &mut Fingerprint,
    inodes: &mut HashMap<u64, Vec<u8>>,
) -> bool {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).expect("stat");
    let ft = FileType::from_raw_mode(st.st_mode);
    let proc = [
        format!("/proc/self/fd/{}/", dir.as_raw_fd()).as_bytes(),
        name,
    ]
    .concat();
    let mut d = format!(
        "{:?} mode={:o} owner={}:{} mtime={}.{:09}",
        ft,
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid,
        st.st_mtime,
        st.st_mtime_nsec
    );
    if ft == FileType::Symlink {
        d = format!(
            "{:?} owner={}:{} mtime={}.{:09}",
            ft, st.st_uid, st.st_gid, st.st_mtime, st.st_mtime_nsec
        );
        let t = rustix::fs::readlinkat(dir, name, Vec::new()).expect("readlink");
        d.push_str(&format!(" target={:?}", t));
    }
    if matches!(ft, FileType::CharacterDevice | FileType::BlockDevice) {
        d.push_str(&format!(
            " rdev={}:{}",
            rustix::fs::major(st.st_rdev),
            rustix::fs::minor(st.st_rdev)
        ));
    }
    if ft == FileType::RegularFile {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open file");
        let mut f = File::from(fd);
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        d.push_str(&format!(
            " size={} blake3={}",
            st.st_size,
            &h.finalize().to_hex()[..16]
        ));
        if (st.st_blocks as i64) * 512 + 4096 <= st.st_size {
            d.push_str(" sparse");
        }
        if st.st_nlink > 1 {
            let leader = inodes.entry(st.st_ino).or_insert_with(|| path.to_vec());
            d.push_str(&format!(
                " hardlink-group={:?}",
                String::from_utf8_lossy(leader)
            ));
        }
    }
    if matches!(ft, FileType::RegularFile | FileType::Directory) {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open");
        let flags = rustix::fs::ioctl_getflags(&fd)
            .map(|f| f.bits() & SETTABLE_FLAGS)
            .unwrap_or(0);
        if flags != 0 {
            d.push_str(&format!(" flags={flags:#x}"));
        }
    }
    d.push_str(&xattrs(&proc));
    out.insert(path.to_vec(), d);
    ft == FileType::Directory
}

fn xattrs(path: &[u8]) -> String {
    let mut buf = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(path, &mut buf[..]) {
        Ok(n) => n,
        Err(_) => return String::new(),
    };
    let mut names: Vec<&[u8]> = buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .collect();
    names.sort();
    let mut s = String::new();
    for name in names {
        if name == b"security.selinux" {
            continue;
        }
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, name, &mut v[..]).unwrap_or(0);
        s.push_str(&format!(
            " xattr[{}]={}",
            String::from_utf8_lossy(name),
            hex(&v[..len])
        ));
    }
    s
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Asserts two fingerprints are equal, showing the paths that differ.
#[track_caller]
pub fn assert_same(expected: &Fingerprint, actual: &Fingerprint, what: &str) {
    if expected == actual {
        return;
    }
    let mut diffs = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => diffs.push(format!("missing {:?}: {e}", String::from_utf8_lossy(p))),
            Some(a) if a != e => diffs.push(format!(
                "differs {:?}:\n    want {e}\n    have {a}",
                String::from_utf8_lossy(p)
            )),
            _ => {}
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            diffs.push(format!("extra {:?}: {a}", String::from_utf8_lossy(p)));
        }
    }
    diffs.truncate(20);
    panic!("{what}: trees differ:\n  {}", diffs.join("\n  "));
}

/// A small deterministic generator (xorshift), so a failing run can be repeated.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Flips the bits `mask` of the byte at offset `at` of the file at `path`.
pub fn flip(path: &Path, at: u64, mask: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= mask;
    f.write_all_at(&b, at).unwrap();
}

/// The temp files (`.restorepoint-*`) a restore left in `dir`.
pub fn restorepoint_temps(dir: &Path) -> Vec<std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".restorepoint-")
        })
        .collect()
}

/// What a run printed: its stdout, then its stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The ids `system_snapshot list --json` prints for the store `place` names (`--store S` or
/// `--root R`), oldest first.
pub fn listed_ids(place: &[&str]) -> Vec<i64> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(place);
    let out = SNAPSHOT.expect(0, &args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect()
}

/// The machine's own `/etc/fstab` and list of stores stay out of the tests (every binary the
/// tests start inherits this): the stores they make go into a list of this process's, and no
/// fstab mount point is expected unless a test names its own fstab.
pub fn hermetic_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let state = std::env::temp_dir().join(format!("rp-test-state-{}", std::process::id()));
        std::env::set_var("RESTOREPOINT_STATE_DIR", state);
        std::env::set_var("RESTOREPOINT_FSTAB", "/dev/null");
    });
}

/// Forgets that the tests made a store at `store`, so that one removed on purpose can be made
/// again at the same path.
pub fn forget_store(store: &Path) {
    hermetic_env();
    let file = PathBuf::from(std::env::var_os("RESTOREPOINT_STATE_DIR").unwrap()).join("stores");
    let needle = serde_json::to_string(store).unwrap();
    if let Ok(text) = std::fs::read_to_string(&file) {
        let kept: String = text
            .lines()
            .filter(|l| !l.contains(&needle))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&file, kept).unwrap();
    }
}

pub struct Bin(pub &'static str);

pub const SNAPSHOT: Bin = Bin("system_snapshot");
pub const RESTORE: Bin = Bin("system_restore");

impl Bin {
    pub fn path(&self) -> PathBuf {
        assert_cmd::cargo::cargo_bin(self.0)
    }

    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        hermetic_env();
        let out = std::process::Command::new(self.path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run binary");
        out
    }

    /// Runs and asserts the exit code, showing the output when it is not the expected one.
    #[track_caller]
    pub fn expect<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
        &self,
        code: i32,
        args: &[S],
    ) -> Output {
        let out = self.run(args);
        if out.status.code() != Some(code) {
            panic!(
                "{} {:?}: exit {:?}, expected {code}\nstdout: {}\nstderr: {}",
                self.0,
                args,
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }
}

/// A scratch area with a system root `sys/`, a store `store/`, and room for restore targets.
pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        hermetic_env();
        let dir = tempfile::Builder::new()
            .prefix("rp-test")
            .tempdir_in(std::env::var("RP_TEST_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("sys")).unwrap();
        Lab { dir }
    }
    pub fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    /// The store a config-driven run uses: /root/snapshots under the root.
    pub fn store_under_root(&self) -> PathBuf {
        self.sys().join("root/snapshots")
    }
    pub fn target(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    /// Takes a point of the whole `sys/` tree; returns its id.
    pub fn snapshot(&self) -> i64 {
        self.snapshot_json()["point"].as_i64().expect("point id")
    }

    /// The ids of the store's complete points, oldest first (`list --json`).
    pub fn point_ids(&self) -> Vec<i64> {
        listed_ids(&["--store", Self::s(&self.store())])
    }

    /// Takes a point of the whole `sys/` tree (exit 0 expected); returns the JSON report.
    pub fn snapshot_json(&self) -> serde_json::Value {
        let out = SNAPSHOT.expect(
            0,
            &[
                "--root",
                Self::s(&self.sys()),
                "--store",
                Self::s(&self.store()),
                "--json",
            ],
        );
        serde_json::from_slice(&out.stdout).expect("json report")
    }

    /// The arguments of a restore of point `id` onto the system itself (`sys/`, confirmed with
    /// `--yes`), followed by `extra`.
    pub fn restore_args(&self, id: i64, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--root",
            Self::s(&self.sys()),
            "--store",
            Self::s(&self.store()),
            "--point",
            &id.to_string(),
            "--yes",
        ]
        .map(String::from)
        .into();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// The arguments of a restore of point `id` into `target` (confirmed with `--yes`),
    /// followed by `extra`.
    pub fn restore_to_args(&self, id: i64, target: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--store",
            Self::s(&self.store()),
            "--point",
            &id.to_string(),
            "--target",
            Self::s(target),
            "--yes",
        ]
        .map(String::from)
        .into();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// Restores point `id` onto the system itself with `extra` flags, expecting exit `code`.
    #[track_caller]
    pub fn restore_in_place(&self, code: i32, id: i64, extra: &[&str]) -> Output {
        RESTORE.expect(code, &self.restore_args(id, extra))
    }

    /// Restores point `id` into `target` (created if needed).
    pub fn restore(&self, id: i64, target: &Path) {
        RESTORE.expect(0, &self.restore_to_args(id, target, &[]));
    }

    /// Restores each point into a directory of its own and compares it with the fingerprint
    /// the tree had when the point was taken (`when`: said in a failure, after the point).
    #[track_caller]
    pub fn assert_points_restore(&self, expected: &BTreeMap<i64, Fingerprint>, when: &str) {
        for (id, fp) in expected {
            let t = self.target(&format!("p{id}"));
            self.restore(*id, &t);
            assert_same(
                fp,
                &fingerprint(&t),
                format!("point {id} {when}").trim_end(),
            );
        }
    }

    pub fn run_sh(&self, script: &str) {
        let st = std::process::Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(self.sys())
            .status()
            .expect("sh");
        assert!(st.success(), "setup script failed: {script}");
    }
}
