//! Every kind of file and metadata of the issue's item 4, on its own: a point of a real tree is
//! restored into an empty directory and into a tree that moved on, and compared field by field.

use crate::require_root;
use crate::util::*;

/// Builds the tree with `setup`, takes point 1, changes it with `change`, takes point 2; then
/// restores both into empty targets and point 1 over point 2's tree, comparing each with the
/// tree as it was.
fn round_trip(setup: &str, change: &str) -> Lab {
    let lab = Lab::new();
    lab.run_sh(setup);
    let before = fingerprint(&lab.sys());
    let p1 = lab.snapshot();
    lab.run_sh(change);
    let after = fingerprint(&lab.sys());
    assert_ne!(before, after, "the change script changed nothing");
    let p2 = lab.snapshot();
    lab.restore(p1, &lab.target("t1"));
    assert_same(
        &before,
        &fingerprint(&lab.target("t1")),
        "point 1 into an empty directory",
    );
    lab.restore(p2, &lab.target("t2"));
    assert_same(
        &after,
        &fingerprint(&lab.target("t2")),
        "point 2 into an empty directory",
    );
    lab.restore(p1, &lab.target("t2"));
    assert_same(
        &before,
        &fingerprint(&lab.target("t2")),
        "point 1 over point 2's tree",
    );
    lab.restore(p2, &lab.target("t2"));
    assert_same(
        &after,
        &fingerprint(&lab.target("t2")),
        "point 2 again: roll forward",
    );
    SNAPSHOT.expect(0, &["verify", "--full", "--store", Lab::s(&lab.store())]);
    lab
}

#[test]
fn restore_preserves_files_directories_symlinks_modes_and_ns_times() {
    round_trip(
        r#"
        mkdir -p etc/empty usr/bin var/log
        printf 'root:x:0:0::/root:/bin/sh\n' > etc/passwd
        : > etc/empty-file
        head -c 300000 /dev/urandom > usr/bin/tool
        chmod 4755 usr/bin/tool
        mkdir shared && chmod 1777 shared
        mkdir group && chmod 2775 group
        ln -s ../etc/passwd usr/link-relative
        ln -s /etc/passwd usr/link-absolute
        ln -s /does/not/exist usr/link-dangling
        seq 1 20000 > var/log/messages
        touch -h -d '2009-12-11 15:25:29.123456789' usr/link-relative
        touch -d '2009-12-11 15:25:29.987654321' etc/passwd etc/empty
        "#,
        r#"
        printf 'x' >> etc/passwd
        seq 20001 20100 >> var/log/messages
        rm usr/link-absolute && ln -s /etc/shadow usr/link-absolute
        rm -r etc/empty && mkdir etc/new-dir && : > etc/new-dir/file
        chmod 0700 usr/bin/tool
        touch -d '2011-01-01 00:00:00.5' etc/empty-file
        head -c 1000 /dev/urandom > usr/bin/tool2
        "#,
    );
}

#[test]
fn restore_preserves_hardlink_groups_as_they_change() {
    round_trip(
        r#"
        mkdir -p a b
        echo shared > a/one && ln a/one a/two && ln a/one b/three
        echo solo > a/solo
        "#,
        r#"
        rm b/three
        ln a/solo b/four
        cp a/two a/two.tmp && mv a/two.tmp a/two
        echo more >> a/one
        "#,
    );
}

#[test]
fn restore_keeps_sparse_files_sparse() {
    let lab = round_trip(
        r#"
        truncate -s 64M disk.img
        printf 'MBR' | dd of=disk.img bs=1 seek=0 conv=notrunc status=none
        head -c 65536 /dev/urandom | dd of=disk.img bs=1M seek=40 conv=notrunc status=none
        "#,
        r#"
        head -c 4096 /dev/urandom | dd of=disk.img bs=1M seek=20 conv=notrunc status=none
        "#,
    );
    let fp = fingerprint(&lab.target("t1"));
    assert!(
        fp[&b"disk.img"[..]].contains("sparse"),
        "restored image is not sparse: {}",
        fp[&b"disk.img"[..]]
    );
}

/// All-zero blocks of a file that allocates them are holes in the store's replica (as in an
/// `rsync -S` mirror), and allocated again in every restored copy: a restore follows the
/// source, not the replica.
#[test]
fn zero_blocks_are_holes_in_the_replica_and_allocated_when_restored() {
    use std::os::unix::fs::MetadataExt;
    let lab = round_trip(
        r#"
        { head -c 8192 /dev/urandom; head -c 1048576 /dev/zero; head -c 100 /dev/urandom; } > small.bin
        { head -c 8192 /dev/urandom; head -c 3145728 /dev/zero; head -c 100 /dev/urandom; } > large.bin
        "#,
        r#"
        printf x | dd of=small.bin bs=1 seek=5 conv=notrunc status=none
        printf x | dd of=large.bin bs=1 seek=5 conv=notrunc status=none
        "#,
    );
    for name in ["small.bin", "large.bin"] {
        let sys = std::fs::metadata(lab.sys().join(name)).unwrap();
        assert!(
            sys.blocks() * 512 >= sys.size(),
            "{name}: the source has holes"
        );
        let replica = std::fs::metadata(lab.store().join("replica").join(name)).unwrap();
        assert!(
            replica.blocks() * 512 < sys.size() / 2,
            "{name}: the replica allocates {} blocks for {} bytes",
            replica.blocks(),
            sys.size()
        );
        for t in ["t1", "t2"] {
            let restored = std::fs::metadata(lab.target(t).join(name)).unwrap();
            assert!(
                restored.blocks() * 512 >= restored.size(),
                "{name} in {t}: restored with holes"
            );
        }
    }
}

#[test]
fn large_files_are_stored_as_small_chunked_deltas() {
    let lab = round_trip(
        r#"
        head -c 24000000 /dev/urandom > big.bin
        "#,
        r#"
        printf 'inserted bytes' | dd of=big.bin bs=1 seek=12000000 conv=notrunc status=none
        head -c 3000 /dev/urandom >> big.bin
        "#,
    );
    let out = SNAPSHOT.expect(0, &["show", "2", "--json", "--store", Lab::s(&lab.store())]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = v["modified"][0]["stored"].as_u64().unwrap();
    assert!(
        stored < 1 << 20,
        "a 14-byte edit of a 24 MB file stored {stored} bytes"
    );
}

#[test]
fn restore_handles_odd_names_and_paths_longer_than_4096_bytes() {
    round_trip(
        r#"
        printf 'latin1' > "$(printf 'caf\351')"
        printf 'newline' > "$(printf 'two\nlines')"
        printf 'spaces' > ' leading and trailing '
        # The shell cannot cd past PATH_MAX; perl's relative chdir can.
        perl -e 'mkdir "deep"; chdir "deep"; my $n = "d" x 200;
                 for (1..25) { mkdir $n or die; chdir $n or die }
                 open(F, ">file") or die; print F "at the bottom\n"; close F'
        "#,
        r#"
        perl -e 'chdir "deep"; my $n = "d" x 200; for (1..25) { chdir $n or die }
                 open(F, ">file") or die; print F "changed at the bottom\n"; close F;
                 symlink("\377target", "link") or die'
        "#,
    );
}

#[test]
fn restore_preserves_owners_devices_and_fifos() {
    require_root!();
    round_trip(
        r#"
        mkdir dev2 home
        mknod dev2/null c 1 3
        mknod dev2/loop7 b 7 7
        mkfifo dev2/fifo
        perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => "dev2/socket", Listen => 1) or die'
        echo mine > home/file && chown 1234:5678 home/file
        chown -h 42:43 dev2/fifo
        mkdir home/user && chown 1000:1000 home/user
        ln -s file home/link && chown -h 7:8 home/link
        "#,
        r#"
        chown 999:999 home/file
        rm dev2/null && mknod dev2/null c 1 5
        chmod 600 dev2/loop7
        "#,
    );
}

#[test]
fn restore_preserves_xattrs_acls_and_capabilities() {
    require_root!();
    round_trip(
        r#"
        echo data > f && setfattr -n user.comment -v 'hello' f
        setfattr -n trusted.overlay -v 'y' f
        echo bin > ping && chmod 755 ping && setcap cap_net_raw+ep ping
        mkdir acl && setfacl -m u:1001:rwx -m d:g:1002:rx acl
        echo x > acl/file && setfacl -m u:1003:r acl/file
        ln -s f link && setfattr -h -n trusted.l -v 'on-symlink' link
        chown 1005 ping && setcap cap_net_raw+ep ping
        "#,
        r#"
        setfattr -x user.comment f
        setfattr -n user.other -v "$(printf 'bin\001ary')" f
        setcap cap_net_admin+ep ping
        setfacl -m u:1004:r acl/file
        "#,
    );
}

#[test]
fn restore_preserves_immutable_and_append_only_flags() {
    require_root!();
    let lab = round_trip(
        r#"
        mkdir locked && echo sealed > locked/file
        chattr +i locked/file
        echo log > append.log && chattr +a append.log
        chattr +d locked
        "#,
        r#"
        chattr -a append.log && echo more >> append.log && chattr +a append.log
        echo new > other
        "#,
    );
    // The tree still holds immutable files: clear them so the lab can be removed.
    for t in ["sys", "t1", "t2"] {
        let _ = std::process::Command::new("chattr")
            .args(["-R", "-i", "-a"])
            .arg(lab.target(t))
            .status();
    }
}
