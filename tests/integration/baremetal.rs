//! `system_restore --bare-metal`: a point of a real disk (GPT with a BIOS boot partition, an
//! ext4 root, a separate ext2 /boot, swap; root on loop devices) made again on a blank disk
//! image, and checked the way an administrator would: the partition table, each filesystem's
//! type, UUID and label, every file with its metadata, the boot code.

use std::path::{Path, PathBuf};

use crate::boot::{has_tool, random, read_at, sh, write_at, Loop, Unmount};
use crate::util::*;

const MIB: u64 = 1 << 20;

macro_rules! require_tools {
    ($($t:expr),+) => {
        $(if !has_tool($t) {
            eprintln!("skipped: {} is not installed (.ci/run installs it)", $t);
            return;
        })+
    };
}

fn part(l: &Loop, n: u32) -> String {
    format!("{}p{n}", l.0)
}

/// An ext filesystem's features as dumpe2fs lists them (empty for anything else).
fn features(dev: &str) -> String {
    sh(&format!(
        "dumpe2fs -h {dev} 2>/dev/null | sed -n 's/^Filesystem features: *//p' || true"
    ))
    .trim()
    .to_string()
}

fn tag(dev: &str, name: &str) -> String {
    sh(&format!("blkid -p -s {name} -o value {dev} || true"))
        .trim()
        .to_string()
}

/// The partition lines of an `sfdisk --dump`, without the device names, and its label-id.
fn table_of(img: &Path) -> Vec<String> {
    sh(&format!("sfdisk --dump {}", img.display()))
        .lines()
        .filter(|l| l.starts_with("label") || l.contains(" : "))
        .map(|l| l.split_once(" : ").map(|(_, r)| r).unwrap_or(l).to_string())
        .collect()
}

/// The disk of a small machine: what each partition holds is in the fstab by UUID, LABEL and
/// PARTUUID, as installers write it.
struct Machine {
    lab: Lab,
    img: PathBuf,
    point: i64,
    tree: Fingerprint,
    /// (partition, TYPE, UUID, LABEL) as made.
    filesystems: Vec<(u32, String, String, String)>,
    /// The ext filesystems' features, by partition.
    features: Vec<(u32, String)>,
    boot_code: Vec<u8>,
    core: Vec<u8>,
}

fn machine() -> Option<Machine> {
    machine_with(random(440, 91), random(MIB as usize, 92))
}

/// The machine, with `boot_code` in sector 0 and `core` in its BIOS boot partition; its /boot
/// holds `grub/marker`, which the GRUB of `grub_pieces` prints.
fn machine_with(boot_code: Vec<u8>, core: Vec<u8>) -> Option<Machine> {
    let lab = Lab::new();
    let img = lab.target("disk.img");
    sh(&format!(
        "truncate -s 96M {p}; printf 'label: gpt\\nsize=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=\"bios\"\\nsize=48MiB, type=linux, name=\"root\"\\nsize=16MiB, type=linux\\ntype=swap\\n' | sfdisk -q {p}",
        p = img.display()
    ));
    write_at(&img, 0, &boot_code);
    write_at(&img, 2048 * 512, &core);
    let l = Loop::attach(&img)?;
    sh(&format!(
        "mke2fs -q -F -t ext4 -L rootfs {}; mke2fs -q -F -t ext2 -L boot {}; mkswap -L swp {} >/dev/null",
        part(&l, 2),
        part(&l, 3),
        part(&l, 4)
    ));
    let filesystems: Vec<(u32, String, String, String)> = (2..=4)
        .map(|n| {
            let d = part(&l, n);
            (n, tag(&d, "TYPE"), tag(&d, "UUID"), tag(&d, "LABEL"))
        })
        .collect();
    // Made with features a plain mke2fs would not choose, as an older or tuned system has.
    sh(&format!("tune2fs -O ^dir_nlink {} >/dev/null", part(&l, 2)));
    let features: Vec<(u32, String)> = [2, 3].map(|n| (n, features(&part(&l, n)))).into();
    let sys = lab.sys();
    let root = Unmount::mount(&part(&l, 2), &sys);
    let boot = Unmount::mount(&part(&l, 3), &sys.join("boot"));
    let partuuid = tag(&part(&l, 4), "PART_ENTRY_UUID");
    assert!(!partuuid.is_empty(), "the swap partition has a PARTUUID");
    std::fs::create_dir_all(sys.join("etc")).unwrap();
    std::fs::write(
        sys.join("etc/fstab"),
        format!(
            "# <file system> <mount point> <type> <options> <dump> <pass>\nUUID={} / ext4 errors=remount-ro 0 1\nLABEL=boot /boot ext2 defaults 0 2\nPARTUUID={partuuid} none swap sw 0 0\ntmpfs /tmp tmpfs defaults 0 0\n",
            filesystems[0].2
        ),
    )
    .unwrap();
    lab.run_sh(
        "mkdir -p boot/grub usr/bin var/log home/ann tmp dev && chmod 1777 tmp
         head -c 300000 /dev/urandom > boot/vmlinuz-6.1.0-test
         echo 'set timeout=1' > boot/grub/grub.cfg
         echo RESTOREPOINT-BOOT-OK > boot/grub/marker
         printf '#!/bin/sh\\necho hi\\n' > usr/bin/tool && chmod 755 usr/bin/tool
         ln usr/bin/tool usr/bin/tool-again
         ln -s tool usr/bin/tool-link
         echo server > etc/hostname
         echo 'log line' > var/log/syslog && chown 4:4 var/log/syslog
         echo notes > home/ann/notes && chown -R 1000:1000 home/ann && chmod 700 home/ann
         mknod var/null-copy c 1 3
         truncate -s 5M var/sparse.img && printf x | dd of=var/sparse.img bs=1 seek=3000000 conv=notrunc status=none
         touch -d '2020-01-02 03:04:05.123456789' etc/hostname",
    );
    if has_tool("setfattr") {
        sh(&format!(
            "setfattr -n user.origin -v bare-metal {}",
            sys.join("etc/hostname").display()
        ));
    }
    crate::boot::config_with_device(&lab, Path::new(&l.0));
    let tree = fingerprint(&sys);
    let point = lab.snapshot();
    drop(boot);
    drop(root);
    drop(l);
    Some(Machine {
        lab,
        img,
        point,
        tree,
        filesystems,
        features,
        boot_code,
        core,
    })
}

/// `blank` is the machine's disk again: its table, boot code and core image, each
/// filesystem's type, UUID and label, and every file with its metadata.
fn assert_rebuilt(m: &Machine, blank: &Path, what: &str) {
    assert_eq!(table_of(blank), table_of(&m.img), "the partition table");
    assert_eq!(read_at(blank, 0, 440), m.boot_code, "the boot code");
    assert!(
        read_at(blank, 2048 * 512, MIB as usize) == m.core,
        "GRUB's core image"
    );
    let l = Loop::attach(blank).expect("a loop device (the restore had one)");
    for (n, kind, uuid, label) in &m.filesystems {
        let d = part(&l, *n);
        assert_eq!(
            (tag(&d, "TYPE"), tag(&d, "UUID"), tag(&d, "LABEL")),
            (kind.clone(), uuid.clone(), label.clone()),
            "partition {n}"
        );
    }
    for (n, f) in &m.features {
        assert_eq!(&features(&part(&l, *n)), f, "partition {n}'s ext features");
    }
    let r = m.lab.target("restored");
    let _root = Unmount::mount(&part(&l, 2), &r);
    let _boot = Unmount::mount(&part(&l, 3), &r.join("boot"));
    assert_same(&m.tree, &fingerprint(&r), what);
}

fn bare_metal(m: &Machine, device: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = [
        "--store",
        Lab::s(&m.lab.store()),
        "--point",
        &m.point.to_string(),
        "--bare-metal",
        "--device",
        Lab::s(device),
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|a| a.to_string()));
    RESTORE.run(&args)
}

#[test]
fn a_blank_larger_disk_image_becomes_the_recorded_disk() {
    crate::require_root!();
    require_tools!("sfdisk", "mke2fs", "mkswap", "losetup", "partx", "blkid");
    let Some(m) = machine() else { return };
    let blank = m.lab.target("blank.img");
    sh(&format!("truncate -s 128M {}", blank.display()));

    let out = bare_metal(&m, &blank, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan = text(&out);
    for (n, kind, uuid, _) in &m.filesystems {
        assert!(
            plan.contains(&format!("{kind} UUID {uuid}")),
            "partition {n}: {plan}"
        );
    }
    assert!(plan.contains("mounted on /boot"), "{plan}");
    assert!(
        std::fs::read(&blank).unwrap().iter().all(|&b| b == 0),
        "a dry run writes nothing"
    );
    let out = bare_metal(&m, &blank, &[]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "no terminal and no --yes: {}",
        text(&out)
    );

    let out = bare_metal(&m, &blank, &["--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    for step in [
        "[partition table] sfdisk",
        "[filesystem 2] mke2fs",
        "[mount /boot] mount",
        "[files]",
        "[boot area]",
    ] {
        assert!(said.contains(step), "the step {step} is shown: {said}");
    }

    assert_rebuilt(&m, &blank, "the rebuilt disk's files");
}

#[test]
fn a_smaller_disk_a_mounted_one_or_a_point_without_records_is_refused_untouched() {
    crate::require_root!();
    require_tools!("sfdisk", "mke2fs", "mkswap", "losetup", "partx", "blkid");
    let Some(m) = machine() else { return };
    let small = m.lab.target("small.img");
    sh(&format!("truncate -s 64M {}", small.display()));
    let out = bare_metal(&m, &small, &["--yes"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(text(&out).contains("needs"), "{}", text(&out));
    assert!(
        std::fs::read(&small).unwrap().iter().all(|&b| b == 0),
        "the smaller disk is untouched"
    );

    // The machine's own disk, in use (its mounted filesystem writes by itself: the table,
    // the boot area and the filesystems' first blocks are compared).
    let Some(l) = Loop::attach(&m.img) else {
        return;
    };
    let _root = Unmount::mount(&part(&l, 2), &m.lab.target("busy"));
    let head = |img: &Path| read_at(img, 0, 4 * MIB as usize);
    let before = head(&m.img);
    let out = bare_metal(&m, Path::new(&l.0), &["--yes"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(text(&out).contains("is mounted"), "{}", text(&out));
    assert!(head(&m.img) == before, "the disk in use is untouched");

    // A point of a plain tree has no disk records.
    let plain = Lab::new();
    std::fs::write(plain.sys().join("f"), "x").unwrap();
    std::fs::create_dir_all(plain.sys().join("etc")).unwrap();
    std::fs::write(
        plain.sys().join("etc/system_snapshots.conf"),
        "[boot]\ncapture = false\n",
    )
    .unwrap();
    let id = plain.snapshot();
    let blank = plain.target("blank.img");
    sh(&format!("truncate -s 128M {}", blank.display()));
    let out = RESTORE.run(&[
        "--store",
        Lab::s(&plain.store()),
        "--point",
        &id.to_string(),
        "--bare-metal",
        "--device",
        Lab::s(&blank),
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(
        text(&out).contains("no record of its disk"),
        "{}",
        text(&out)
    );
}

/// GRUB's boot code and a core image for the machine's GPT disk, as grub-bios-setup would
/// write them (core image at sector 2048, the BIOS boot partition). Its embedded config prints
/// the file `grub/marker` of the /boot filesystem (partition 3) on the serial port: the
/// marker shows only when the table, the filesystem, its files and the boot code are all there.
fn grub_pieces(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let cfg = dir.join("early.cfg");
    std::fs::write(
        &cfg,
        "serial --unit=0 --speed=115200\nterminal_output serial\ncat (hd0,gpt3)/grub/marker\nhalt\n",
    )
    .unwrap();
    let core = dir.join("core.img");
    sh(&format!(
        "grub-mkimage -O i386-pc -o {} -c {} -p '(hd0,gpt3)/grub' biosdisk part_gpt ext2 serial terminal cat halt",
        core.display(),
        cfg.display()
    ));
    let mut boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img").unwrap();
    boot[0x5C..0x64].copy_from_slice(&2048u64.to_le_bytes());
    let mut core = std::fs::read(&core).unwrap();
    core[0x1F4..0x1FC].copy_from_slice(&2049u64.to_le_bytes());
    assert!(
        core.len() as u64 <= MIB,
        "the core image fits the BIOS boot partition"
    );
    core.resize(MIB as usize, 0);
    boot.truncate(440);
    (boot, core)
}

#[test]
fn the_rebuilt_disk_boots_in_qemu_and_reads_its_restored_boot_filesystem() {
    crate::require_root!();
    require_tools!(
        "sfdisk",
        "mke2fs",
        "mkswap",
        "losetup",
        "partx",
        "blkid",
        "grub-mkimage",
        "qemu-system-x86_64"
    );
    if !Path::new("/usr/lib/grub/i386-pc/boot.img").exists() {
        eprintln!("skipped: GRUB's i386-pc images are not installed (grub-pc-bin)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (boot_code, core) = grub_pieces(dir.path());
    let Some(m) = machine_with(boot_code, core) else {
        return;
    };
    let long = std::time::Duration::from_secs(60);
    assert!(
        crate::boot::boots(&m.img, long),
        "the machine's own disk boots"
    );
    let blank = m.lab.target("blank.img");
    sh(&format!("truncate -s 100M {}", blank.display()));
    assert!(
        !crate::boot::boots(&blank, std::time::Duration::from_secs(10)),
        "a blank disk does not"
    );
    let out = bare_metal(&m, &blank, &["--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        crate::boot::boots(&blank, long),
        "the rebuilt disk boots and GRUB reads the restored /boot"
    );
}

/// A step that fails names itself and what to do; what the steps mounted and attached is taken
/// down; the same command, run again, starts over and finishes.
#[test]
fn a_failed_step_is_named_cleaned_up_and_the_same_command_finishes_it() {
    crate::require_root!();
    require_tools!("sfdisk", "mke2fs", "mkswap", "losetup", "partx", "blkid");
    let Some(m) = machine() else { return };
    let blank = m.lab.target("blank.img");
    sh(&format!("truncate -s 100M {}", blank.display()));
    // A `mount` that fails for /boot only, found first on PATH.
    let bin = m.lab.target("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = ["/usr/bin/mount", "/bin/mount"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    std::fs::write(
        bin.join("mount"),
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do last=$a; done\ncase $last in */boot) echo 'mount: simulated I/O error' >&2; exit 32;; esac\nexec {real} \"$@\"\n"
        ),
    )
    .unwrap();
    sh(&format!("chmod 755 {}/mount", bin.display()));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new(RESTORE.path())
        .args([
            "--store",
            Lab::s(&m.lab.store()),
            "--point",
            &m.point.to_string(),
            "--bare-metal",
            "--device",
            Lab::s(&blank),
            "--yes",
        ])
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("step `mount /boot`"), "{said}");
    assert!(said.contains("simulated I/O error"), "{said}");
    assert!(said.contains("run the same command again"), "{said}");
    // Its temporary root (other tests' may be mounted meanwhile).
    let root = said
        .split_whitespace()
        .find(|w| w.contains("restorepoint-bare-metal."))
        .expect("the temporary root is shown")
        .to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!(" {root} ")),
        "the root it had mounted is unmounted: {mounts}"
    );
    assert!(!Path::new(&root).exists(), "and removed");
    assert!(
        sh(&format!("losetup -j {}", blank.display()))
            .trim()
            .is_empty(),
        "the image is detached"
    );

    let out = bare_metal(&m, &blank, &["--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_rebuilt(&m, &blank, "the disk after the second run");
}

/// The point pushed off site carries its disk records and boot area: the disk is rebuilt from
/// the remote copy alone, the local store gone.
#[test]
fn a_blank_disk_is_rebuilt_from_the_off_site_copy_alone() {
    crate::require_root!();
    require_tools!("sfdisk", "mke2fs", "mkswap", "losetup", "partx", "blkid");
    let Some(m) = machine() else { return };
    let url = format!("file://{}", m.lab.target("offsite").display());
    SNAPSHOT.expect(
        0,
        &["push", "--store", Lab::s(&m.lab.store()), "--to", &url],
    );
    std::fs::remove_dir_all(m.lab.store()).unwrap();
    let blank = m.lab.target("blank.img");
    sh(&format!("truncate -s 100M {}", blank.display()));
    let out = RESTORE.run(&[
        "--store",
        &url,
        "--point",
        &m.point.to_string(),
        "--bare-metal",
        "--device",
        Lab::s(&blank),
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_rebuilt(&m, &blank, "the files from the remote");
}

/// A standby disk: rebuilt once with --bare-metal (on a larger disk), then converged to the
/// newest point by an in-place restore onto its mounted root: no safety point (it is not this
/// machine's state), its own /etc/fstab kept, and the boot code written to it.
#[test]
fn a_standby_disk_is_kept_converged_to_the_latest_point() {
    crate::require_root!();
    require_tools!("sfdisk", "mke2fs", "mkswap", "losetup", "partx", "blkid");
    let Some(m) = machine() else { return };
    let standby = m.lab.target("standby.img");
    sh(&format!("truncate -s 128M {}", standby.display()));
    let out = bare_metal(&m, &standby, &["--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The machine changes and takes its nightly point.
    let l = Loop::attach(&m.img).expect("a loop device");
    let sys = m.lab.sys();
    let root = Unmount::mount(&part(&l, 2), &sys);
    let boot = Unmount::mount(&part(&l, 3), &sys.join("boot"));
    crate::boot::config_with_device(&m.lab, Path::new(&l.0));
    m.lab.run_sh(
        "echo web2 > etc/hostname && head -c 200000 /dev/urandom > boot/vmlinuz-6.1.0-next \
         && rm usr/bin/tool-again && echo 'new log' >> var/log/syslog",
    );
    let tree = fingerprint(&sys);
    let latest = m.lab.snapshot();
    drop(boot);
    drop(root);
    drop(l);

    // The standby, mounted, with its own fstab and its boot code gone.
    let s = Loop::attach(&standby).expect("a loop device");
    let sroot = m.lab.target("standby");
    let _r = Unmount::mount(&part(&s, 2), &sroot);
    let _b = Unmount::mount(&part(&s, 3), &sroot.join("boot"));
    std::fs::write(sroot.join("etc/fstab"), "# the standby's own\n").unwrap();
    write_at(Path::new(&s.0), 0, &[0; 440]);
    let out = RESTORE.run(&[
        "--root",
        Lab::s(&sroot),
        "--store",
        Lab::s(&m.lab.store()),
        "--point",
        "latest",
        "--no-safety-point",
        "--keep",
        "/etc/fstab",
        "--boot",
        "--device",
        &s.0,
        "--yes",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(sroot.join("etc/fstab")).unwrap(),
        "# the standby's own\n",
        "its own fstab is kept"
    );
    let mut want = tree.clone();
    let mut got = fingerprint(&sroot);
    want.remove(&b"etc/fstab"[..]);
    got.remove(&b"etc/fstab"[..]);
    assert_same(&want, &got, "the standby after converging");
    assert_eq!(
        read_at(Path::new(&s.0), 0, 440),
        m.boot_code,
        "its boot code"
    );
    assert_eq!(
        m.lab.point_ids().last(),
        Some(&latest),
        "no safety point was added"
    );
}
