//! `system_snapshot export`: a point as a tar stream, extracted by GNU tar
//! (`tar -xp --xattrs --xattrs-include='*' --acls --numeric-owner`) and compared field by field
//! with the tree as it was when the point was taken.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

/// What the README tells to extract an export with.
const TAR_X: [&str; 5] = [
    "-xp",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--numeric-owner",
];

/// GNU tar is there (the format is checked against it, not against any tar).
fn gnu_tar() -> bool {
    let found = Command::new("tar")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar"));
    if !found {
        eprintln!("skipped: GNU tar is not installed");
    }
    found
}

/// `system_snapshot export ID [PATH]` of the lab's store, expecting exit `code`; the archive,
/// saved next to the store, and what the command said on stderr.
#[track_caller]
fn export(lab: &Lab, code: i32, id: i64, path: Option<&str>) -> (PathBuf, String) {
    let mut args = vec!["export".to_string(), id.to_string()];
    args.extend(path.map(String::from));
    args.extend(["--store".to_string(), Lab::s(&lab.store()).to_string()]);
    let out = SNAPSHOT.expect(code, &args);
    let file = lab.target(&format!(
        "point{id}{}.tar",
        path.unwrap_or("").replace('/', "_")
    ));
    std::fs::write(&file, &out.stdout).unwrap();
    (file, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Extracts `archive` into `dir` (made when missing) as the README says, with `extra` options;
/// fails on anything tar says but the notes GNU tar gives for what it keeps anyway.
#[track_caller]
fn extract(archive: &Path, dir: &Path, extra: &[&str]) {
    extract_with(&TAR_X, archive, dir, extra)
}

#[track_caller]
fn extract_with(flags: &[&str], archive: &Path, dir: &Path, extra: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("tar")
        .args(flags)
        .arg("-f")
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run tar");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tar -x failed: {stderr}");
    for line in stderr.lines() {
        // hdrcharset=BINARY (a name that is not UTF-8) is unknown to GNU tar, which keeps the
        // bytes as they are; times before 1970 are set as they are.
        assert!(
            line.contains("Ignoring unknown extended header keyword 'hdrcharset'")
                || line.contains("implausibly old time stamp"),
            "tar said: {stderr}"
        );
    }
}

/// Names in the archive, as `tar -t` lists them.
fn listing(archive: &Path) -> Vec<String> {
    let out = Command::new("tar")
        .args(["-tf"])
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Files, directories, symlinks, hardlinks (one whose leader comes after it in the archive,
/// one of a sparse file), sparse files (one all hole), long symlink targets, names that are
/// not UTF-8 or hold a newline, xattrs (one whose name holds `=` and `%`), ACLs (one
/// inherited, and none where the directory's default ACL would give one), a FIFO, a socket, a
/// time before 1970, and paths past 4096 bytes.
const TREE: &str = r#"
    mkdir -p etc/empty usr/bin var/log shared x acl
    printf 'root:x:0:0::/root:/bin/sh\n' > etc/passwd
    : > etc/empty-file
    head -c 300000 /dev/urandom > usr/bin/tool && chmod 4755 usr/bin/tool
    chmod 1777 shared
    ln -s ../etc/passwd usr/link-relative
    ln -s /does/not/exist usr/link-dangling
    ln -s "$(printf '%0300d' 0)" usr/link-long
    echo shared > a-one && ln a-one usr/a-two && ln a-one var/a-three
    echo group > x.y && ln x.y x/z
    truncate -s 64M disk.img
    printf 'MBR' | dd of=disk.img bs=1 seek=0 conv=notrunc status=none
    head -c 65536 /dev/urandom | dd of=disk.img bs=1M seek=40 conv=notrunc status=none
    ln disk.img var/disk-link
    truncate -s 10M var/holes-only
    printf 'latin1' > "$(printf 'caf\351')"
    printf 'utf8' > "$(printf 'caf\303\251')"
    printf 'newline' > "$(printf 'two\nlines')"
    ln -s "$(printf '\377target')" odd-link
    mkfifo var/fifo
    setfattr -n user.comment -v hello etc/passwd
    setfattr -n 'user.a=b%c' -v "$(printf 'bin\001ary')" etc/passwd
    setfacl -m u:1001:rwx -m d:g:1002:rx acl
    echo x > acl/file && setfacl -m u:1003:r acl/file
    mkdir acl/inherited
    echo y > acl/no-acl && setfacl -b acl/no-acl
    mkdir acl/no-default && setfacl -b acl/no-default
    perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => "var/socket", Listen => 1) or die'
    # The shell cannot cd past PATH_MAX; perl's relative chdir can.
    perl -e 'mkdir "deep"; chdir "deep"; my $n = "d" x 200;
             for (1..25) { mkdir $n or die; chdir $n or die }
             open(F, ">file") or die; print F "at the bottom\n"; close F'
    touch -h -d '2009-12-11 15:25:29.123456789' usr/link-relative
    touch -d '2009-12-11 15:25:29.987654321' etc/passwd etc/empty
    : > var/old && TZ=UTC touch -d '1969-12-31 23:59:58.5' var/old
"#;

/// Owners (one past the ustar field), devices (a minor of 20 bits), capabilities (one on a
/// setuid file of another owner), trusted xattrs, on a symlink too.
const ROOT_TREE: &str = r#"
    mkdir dev2 home
    mknod dev2/null c 1 3
    mknod dev2/loop7 b 7 7
    mknod dev2/wide b 259 1048575
    echo mine > home/file && chown 1234:5678 home/file
    chown -h 42:43 var/fifo
    mkdir home/user && chown 1000:1000 home/user
    ln -s file home/link && chown -h 7:8 home/link
    echo big > home/biguid && chown 4000000000:3000000000 home/biguid
    echo bin > ping && chmod 755 ping && chown 1005 ping && setcap cap_net_raw+ep ping
    echo s > suid && chown 1006 suid && chmod 4755 suid && setcap cap_net_admin+ep suid
    setfattr -n trusted.overlay -v y etc/passwd
    ln -s passwd etc/tlink && setfattr -h -n trusted.l -v on-symlink etc/tlink
"#;

const CHANGE: &str = r#"
    printf 'x' >> etc/passwd
    rm usr/link-dangling && ln -s /elsewhere usr/link-dangling
    rm -r etc/empty && mkdir etc/new-dir && : > etc/new-dir/file
    chmod 0700 usr/bin/tool
    rm var/a-three
    head -c 4096 /dev/urandom | dd of=disk.img bs=1M seek=20 conv=notrunc status=none
    setfacl -m u:1004:r acl/file
    perl -e 'chdir "deep"; my $n = "d" x 200; for (1..25) { chdir $n or die }
             open(F, ">file") or die; print F "changed at the bottom\n"; close F;
             symlink("\377target", "link") or die'
"#;

const ROOT_CHANGE: &str = r#"
    chown 999:999 home/file
    rm dev2/null && mknod dev2/null c 1 5
    setcap cap_net_admin+ep ping
"#;

/// Paths under `deep/` are past PATH_MAX: GNU tar (1.34) cannot create them ("Cannot mkdir:
/// File name too long"), even from an archive of its own. They are checked in the archive
/// instead: every one listed, the file's content read with `tar -xO`.
fn check_deep_paths(archive: &Path, expected: &Fingerprint) {
    let want: Vec<String> = expected
        .iter()
        .filter(|(p, _)| p.starts_with(b"deep"))
        .map(|(p, d)| {
            let slash = if d.starts_with("Directory") { "/" } else { "" };
            format!("./{}{slash}", String::from_utf8_lossy(p))
        })
        .collect();
    assert!(
        want.iter().any(|p| p.len() > 5000),
        "the tree has a long path"
    );
    let listed: Vec<String> = listing(archive)
        .into_iter()
        .filter(|n| n.starts_with("./deep"))
        .collect();
    // Shown with each run of 200 d's as one D.
    let short = |v: &[String]| -> Vec<String> {
        v.iter().map(|n| n.replace(&"d".repeat(200), "D")).collect()
    };
    assert_eq!(
        short(&listed),
        short(&want),
        "the paths past PATH_MAX, in tree order"
    );
    let file = want.iter().find(|p| p.ends_with("/file")).unwrap();
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let hash = blake3::hash(&out.stdout).to_hex();
    let desc = &expected[&file.as_bytes()[2..]];
    assert!(
        desc.contains(&format!("blake3={}", &hash[..16])),
        "the content at the bottom: {desc}"
    );
}

/// Exports point `id`, extracts it with GNU tar and compares it with `expected`, the tree as it
/// was when the point was taken (without its socket, which tar cannot hold).
fn check_point(lab: &Lab, id: i64, expected: &Fingerprint) {
    // The socket is left out with a warning: exit 3.
    let (archive, said) = export(lab, 3, id, None);
    assert!(
        said.contains("warning: /var/socket: a socket, left out"),
        "{said}"
    );
    // A default ACL where the archive is extracted would be inherited by what tar creates
    // there: `--acls` gives every path the ACLs the archive has, none included.
    let dir = lab.target(&format!("x{id}"));
    std::fs::create_dir(&dir).unwrap();
    let acl = Command::new("setfacl")
        .args(["-d", "-m", "u:1234:rwx"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(acl.success());
    extract(&archive, &dir, &["--exclude=./deep/*"]);
    let mut want = expected.clone();
    want.retain(|p, d| !p.starts_with(b"deep/") && !d.starts_with("Socket"));
    assert_same(
        &want,
        &fingerprint(&dir),
        &format!("point {id} through tar"),
    );
    // Without --acls, GNU tar sets the ACLs from their raw xattrs, also in the archive.
    let raw = lab.target(&format!("raw{id}"));
    let flags = ["-xp", "--xattrs", "--xattrs-include=*", "--numeric-owner"];
    extract_with(&flags, &archive, &raw, &["--exclude=./deep/*"]);
    assert_same(&want, &fingerprint(&raw), &format!("point {id}, no --acls"));
    check_deep_paths(&archive, expected);
    for sparse in ["disk.img", "var/holes-only"] {
        assert!(
            want[sparse.as_bytes()].contains(" sparse"),
            "{sparse} is sparse: {}",
            want[sparse.as_bytes()]
        );
    }
}

#[test]
fn gnu_tar_extracts_an_export_as_the_point_was() {
    if !gnu_tar() {
        return;
    }
    let lab = Lab::new();
    lab.run_sh(TREE);
    if is_root() {
        lab.run_sh(ROOT_TREE);
    } else {
        eprintln!("skipped in part: owners, devices, capabilities and trusted xattrs need root");
    }
    let before = fingerprint(&lab.sys());
    let p1 = lab.snapshot();
    lab.run_sh(CHANGE);
    if is_root() {
        lab.run_sh(ROOT_CHANGE);
    }
    let after = fingerprint(&lab.sys());
    let p2 = lab.snapshot();
    check_point(&lab, p1, &before);
    check_point(&lab, p2, &after);
    // The same point gives the same bytes.
    let (a, _) = export(&lab, 3, p1, None);
    let again = lab.target("again.tar");
    std::fs::rename(&a, &again).unwrap();
    let (b, _) = export(&lab, 3, p1, None);
    assert!(std::fs::read(&again).unwrap() == std::fs::read(b).unwrap());
}

/// `export ID PATH`: the subtree at its place (`./etc/...`), nothing above it; a hardlink
/// whose leader is outside carries the content; one file alone; through a pipe into tar.
#[test]
fn export_of_a_path_holds_that_subtree_at_its_place() {
    if !gnu_tar() {
        return;
    }
    let lab = Lab::new();
    lab.run_sh(
        r#"
        mkdir -p etc/ssh usr/bin usr/lib
        echo 'port 22' > etc/ssh/sshd_config && chmod 600 etc/ssh/sshd_config
        setfattr -n user.k -v v etc/ssh
        echo '127.0.0.1 localhost' > etc/hosts
        head -c 100000 /dev/urandom > usr/bin/tool && ln usr/bin/tool usr/lib/tool
        touch -d '2001-02-03 04:05:06.7' etc etc/ssh
        "#,
    );
    let etc = fingerprint(&lab.sys().join("etc"));
    let tool = std::fs::read(lab.sys().join("usr/bin/tool")).unwrap();
    let p1 = lab.snapshot();
    lab.run_sh("echo 'port 2222' > etc/ssh/sshd_config && rm usr/bin/tool && echo new > etc/new");
    lab.snapshot();

    let (archive, _) = export(&lab, 0, p1, Some("/etc"));
    let names = listing(&archive);
    assert_eq!(
        names,
        [
            "./etc/",
            "./etc/hosts",
            "./etc/ssh/",
            "./etc/ssh/sshd_config"
        ]
    );
    let dir = lab.target("etc-only");
    extract(&archive, &dir, &[]);
    assert_same(&etc, &fingerprint(&dir.join("etc")), "/etc of point 1");

    let (archive, _) = export(&lab, 0, p1, Some("/usr/lib"));
    assert_eq!(listing(&archive), ["./usr/lib/", "./usr/lib/tool"]);
    let dir = lab.target("lib-only");
    extract(&archive, &dir, &[]);
    assert!(std::fs::read(dir.join("usr/lib/tool")).unwrap() == tool);

    let (archive, _) = export(&lab, 0, p1, Some("etc/ssh/sshd_config"));
    assert_eq!(listing(&archive), ["./etc/ssh/sshd_config"]);

    // Streamed straight into tar, as the README shows it.
    let dir = lab.target("piped");
    std::fs::create_dir(&dir).unwrap();
    hermetic_env();
    let mut export = Command::new(SNAPSHOT.path())
        .args(["export", &p1.to_string(), "/etc", "--store"])
        .arg(lab.store())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tar = Command::new("tar")
        .args(TAR_X)
        .args(["-f", "-", "-C"])
        .arg(&dir)
        .stdin(export.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(export.wait().unwrap().success() && tar.success());
    assert_same(&etc, &fingerprint(&dir.join("etc")), "/etc through a pipe");
}

#[test]
fn export_refuses_a_missing_path_a_missing_point_json_and_a_terminal() {
    let lab = Lab::new();
    lab.run_sh("mkdir etc && echo a > etc/a");
    lab.snapshot();
    let store = lab.store();
    let s = Lab::s(&store);

    let out = SNAPSHOT.expect(2, &["export", "1", "/nope", "--store", s]);
    assert!(out.stdout.is_empty(), "no archive");
    let said = text(&out);
    assert!(
        said.contains("/nope is not in point 1") && said.contains("system_snapshot ls 1"),
        "{said}"
    );

    let out = SNAPSHOT.expect(1, &["export", "9", "--store", s]);
    assert!(out.stdout.is_empty(), "no archive");
    assert!(text(&out).contains("no restore point 9"), "{}", text(&out));

    let out = SNAPSHOT.expect(2, &["export", "1", "--json", "--store", s]);
    assert!(
        text(&out).contains("--json has nowhere to go"),
        "{}",
        text(&out)
    );

    hermetic_env();
    let mut c = Command::new(SNAPSHOT.path());
    c.args(["export", "1", "--store", s]);
    let mut p = rexpect::session::spawn_command(c, Some(30_000)).expect("spawn in a pty");
    p.exp_string("redirect it to a file").unwrap();
    p.exp_eof().unwrap();
    match p.process().wait().unwrap() {
        rexpect::process::WaitStatus::Exited(_, code) => assert_eq!(code, 2),
        other => panic!("{other:?}"),
    }
}

/// A file whose content is damaged in the store is left out, with its hardlinks, and named;
/// everything else is in the archive, which tar reads to its end; exit 5.
#[test]
fn export_leaves_out_a_damaged_file_and_its_hardlinks_and_says_so() {
    if !gnu_tar() {
        return;
    }
    let lab = Lab::new();
    // A large sparse file is read by its leaves: damage is found there too.
    lab.run_sh(
        r#"
        echo damaged-soon > a && ln a b && echo intact > c
        truncate -s 16M image && echo data | dd of=image bs=1M seek=3 conv=notrunc status=none
        "#,
    );
    lab.snapshot();
    flip(&lab.store().join("replica/a"), 3, 0x20);
    flip(&lab.store().join("replica/image"), (3 << 20) + 1, 0x20);
    let (archive, said) = export(&lab, 5, 1, None);
    assert!(
        said.contains("DAMAGED /a: ") && said.contains("DAMAGED /b: its hardlink leader /a"),
        "{said}"
    );
    assert!(said.contains("DAMAGED /image: "), "{said}");
    assert!(
        said.contains("3 file(s) of point 1 could not be rebuilt"),
        "{said}"
    );
    assert_eq!(listing(&archive), ["./", "./c"]);
}

/// A sparse file past 8 GiB (its real size and the offsets of its map past what a ustar field
/// holds) comes back with its data and its holes, read by its leaves: quick.
#[test]
fn a_sparse_file_past_8_gib_comes_back_with_its_holes() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    if !gnu_tar() {
        return;
    }
    let lab = Lab::new();
    let size = (9u64 << 30) + 4096;
    let tail: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
    {
        let f = std::fs::File::create(lab.sys().join("big.img")).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"boot", 0).unwrap();
        f.write_all_at(&tail, size - 4096).unwrap();
    }
    let id = lab.snapshot();
    let (archive, _) = export(&lab, 0, id, None);
    assert!(
        std::fs::metadata(&archive).unwrap().len() < 1 << 20,
        "only the data is in the archive"
    );
    let dir = lab.target("x");
    extract(&archive, &dir, &[]);
    let f = std::fs::File::open(dir.join("big.img")).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 < 1 << 20, "holes stay holes");
    let mut head = [0u8; 8];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"boot\0\0\0\0");
    let mut back = vec![0u8; 4096];
    f.read_exact_at(&mut back, size - 4096).unwrap();
    assert!(back == tail);
    let mut middle = [1u8; 4096];
    f.read_exact_at(&mut middle, 8 << 30).unwrap();
    assert!(middle.iter().all(|&b| b == 0));
}
