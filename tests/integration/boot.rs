//! Boot area capture and `system_restore --boot` on disk images made with sfdisk (no root
//! needed), on a real loop device (root), and a QEMU boot before and after (root, QEMU).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

const MIB: u64 = 1 << 20;

/// Skips the calling test, with the reason, when a tool is missing (`.ci/run` installs them).
macro_rules! require_tool {
    ($($t:expr),+) => {
        $(if !has_tool($t) {
            eprintln!("skipped: {} is not installed (.ci/run installs it)", $t);
            return;
        })+
    };
}

pub(crate) fn has_tool(t: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(t).exists())
}

pub(crate) fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn random(n: usize, seed: u8) -> Vec<u8> {
    // Not zero, not constant: each byte says where it is and which fill it came from.
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

pub(crate) fn write_at(img: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

pub(crate) fn read_at(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(img).unwrap();
    let mut b = vec![0; len];
    f.read_exact_at(&mut b, offset).unwrap();
    b
}

/// A 64 MiB MBR disk: partitions at 2048 and 43008, boot code and a 1 MiB gap filled.
fn mbr_image(path: &Path, seed: u8) {
    sh(&format!(
        "truncate -s 64M {p}; printf 'label: dos\\nunit: sectors\\nstart=2048, size=40960, type=83, bootable\\nstart=43008, type=83\\n' | sfdisk -q {p}",
        p = path.display()
    ));
    fill_boot(path, 512, 2047 * 512, seed);
}

/// A 64 MiB GPT disk: BIOS boot partition at 2048 (1 MiB), an ESP, a Linux partition.
fn gpt_image(path: &Path, seed: u8) {
    sh(&format!(
        "truncate -s 64M {p}; printf 'label: gpt\\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\\nsize=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\\n' | sfdisk -q {p}",
        p = path.display()
    ));
    fill_boot(path, 2048 * 512, MIB, seed);
}

/// Boot code (bytes 0–439) and the core-image region get recognisable content.
fn fill_boot(path: &Path, core_at: u64, core_len: u64, seed: u8) {
    write_at(path, 0, &random(440, seed));
    write_at(
        path,
        core_at,
        &random(core_len as usize, seed.wrapping_add(1)),
    );
}

/// A lab whose config names `disk.img` there, an MBR image filled from `seed`.
fn mbr_lab(seed: u8) -> (Lab, PathBuf) {
    let lab = Lab::new();
    let img = lab.target("disk.img");
    mbr_image(&img, seed);
    config_with_device(&lab, &img);
    (lab, img)
}

pub(crate) fn config_with_device(lab: &Lab, device: &Path) {
    std::fs::create_dir_all(lab.sys().join("etc")).unwrap();
    std::fs::write(
        lab.sys().join("etc/system_snapshots.conf"),
        format!("[boot]\ndevice = \"{}\"\n", device.display()),
    )
    .unwrap();
}

/// `system_restore --root SYS --store STORE --point N --yes EXTRA…`, not yet run.
fn restore_command(lab: &Lab, point: i64, extra: &[&str]) -> Command {
    let mut c = Command::new(RESTORE.path());
    c.args(lab.restore_args(point, extra))
        .stdin(std::process::Stdio::null());
    c
}

fn restore_boot(lab: &Lab, point: i64, extra: &[&str]) -> std::process::Output {
    restore_command(lab, point, extra)
        .output()
        .expect("run system_restore")
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn mbr_boot_code_and_gap_come_back_and_the_table_is_left_alone() {
    require_tool!("sfdisk");
    let (lab, img) = mbr_lab(7);
    let report = lab.snapshot_json();
    assert!(
        report["boot"][0]
            .as_str()
            .unwrap()
            .contains("gap 1023.5 KiB"),
        "{report}"
    );
    let captured = std::fs::read(&img).unwrap();

    // A broken GRUB install: other boot code, other core image. And a change the tool must
    // not undo: the active flag moved (byte 446 and 462) and the reserved word at 444.
    fill_boot(&img, 512, 2047 * 512, 99);
    write_at(&img, 444, &[0x5A, 0x5A]);
    write_at(&img, 446, &[0x00]);
    write_at(&img, 462, &[0x80]);
    let sector0_tail = read_at(&img, 440, 72);

    let out = restore_boot(&lab, 1, &["--boot-only"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("read back and checked"),
        "{}",
        text(&out)
    );
    let now = std::fs::read(&img).unwrap();
    assert_eq!(&now[..440], &captured[..440], "boot code restored");
    assert_eq!(
        &now[440..512],
        &sector0_tail[..],
        "signature and table untouched"
    );
    assert_eq!(
        &now[512..2048 * 512],
        &captured[512..2048 * 512],
        "gap restored"
    );
    assert_eq!(
        &now[2048 * 512..],
        &captured[2048 * 512..],
        "partitions untouched"
    );

    // Writing it again is a no-op that says so.
    let out = restore_boot(&lab, 1, &["--boot-only", "--no-safety-point"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("already matched"), "{}", text(&out));
}

#[test]
fn gpt_boot_code_and_bios_boot_partition_come_back() {
    require_tool!("sfdisk");
    let lab = Lab::new();
    let img = lab.target("gpt.img");
    gpt_image(&img, 3);
    config_with_device(&lab, &img);
    let report = lab.snapshot_json();
    let line = report["boot"][0].as_str().unwrap().to_string();
    assert!(
        line.contains("gpt") && line.contains("BIOS boot partition 1.0 MiB"),
        "{line}"
    );
    let captured = std::fs::read(&img).unwrap();
    fill_boot(&img, 2048 * 512, MIB, 200);
    assert_ne!(std::fs::read(&img).unwrap(), captured);

    let out = restore_boot(&lab, 1, &["--boot-only"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        std::fs::read(&img).unwrap() == captured,
        "the whole image is back: boot code, BIOS boot partition; GPTs untouched"
    );
    let verify = sh(&format!("sfdisk --verify {} 2>&1", img.display()));
    assert!(verify.contains("No errors detected"), "{verify}");
}

#[test]
fn a_changed_layout_or_another_disk_is_refused_and_nothing_is_written() {
    require_tool!("sfdisk");
    let (lab, img) = mbr_lab(11);
    lab.snapshot_json();
    let id = sh(&format!("sfdisk --disk-id {}", img.display()));

    // Same disk identifier, partition 1 now starts at sector 63: the captured gap would
    // overwrite the start of the partition.
    sh(&format!(
        "printf 'label: dos\\nlabel-id: {}\\nunit: sectors\\nstart=63, size=40960, type=83\\nstart=43008, type=83\\n' | sfdisk -q {}",
        id.trim(),
        img.display()
    ));
    let before = std::fs::read(&img).unwrap();
    let out = restore_boot(&lab, 1, &["--boot-only"]);
    assert_eq!(code(&out), 7, "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("partition 1: now start 63") && msg.contains("was start 2048"),
        "{msg}"
    );
    assert!(msg.contains("--with-partition-table"), "{msg}");
    assert_eq!(std::fs::read(&img).unwrap(), before, "nothing written");
    assert_eq!(
        points(&lab),
        1,
        "a refused restore takes no safety point either"
    );

    // Another disk altogether, named on the command line.
    let other = lab.target("other.img");
    mbr_image(&other, 12);
    let before = std::fs::read(&other).unwrap();
    let out = restore_boot(&lab, 1, &["--boot-only", "--device", Lab::s(&other)]);
    assert_eq!(code(&out), 7, "{}", text(&out));
    assert!(text(&out).contains("disk identifier is"), "{}", text(&out));
    assert_eq!(std::fs::read(&other).unwrap(), before);
}

fn points(lab: &Lab) -> usize {
    lab.point_ids().len()
}

#[test]
fn with_partition_table_puts_the_captured_table_back() {
    require_tool!("sfdisk");
    let lab = Lab::new();
    for (name, gpt) in [("mbr.img", false), ("gpt.img", true)] {
        let img = lab.target(name);
        if gpt {
            gpt_image(&img, 21);
        } else {
            mbr_image(&img, 22);
        }
        config_with_device(&lab, &img);
        let point = lab.snapshot_json()["point"].as_i64().unwrap();
        let captured = std::fs::read(&img).unwrap();
        let dump = sh(&format!("sfdisk --dump {}", img.display()));
        // Repartitioned (new identifier too) and the boot code wiped.
        let label = if gpt { "gpt" } else { "dos" };
        sh(&format!(
            "printf 'label: {label}\\nstart=4096, type=L\\n' | sfdisk -q --wipe never {}",
            img.display()
        ));
        write_at(&img, 0, &[0; 440]);
        let out = restore_boot(&lab, point, &["--boot-only", "--with-partition-table"]);
        assert_eq!(code(&out), 0, "{name}: {}", text(&out));
        assert!(
            text(&out).contains("undoing"),
            "{name}: the plan says what the table write undoes: {}",
            text(&out)
        );
        assert_eq!(
            sh(&format!("sfdisk --dump {}", img.display())),
            dump,
            "{name}"
        );
        assert!(
            std::fs::read(&img).unwrap() == captured,
            "{name}: byte-identical to the captured disk"
        );
    }
}

#[test]
fn identical_boot_areas_are_stored_once_and_dropped_with_their_last_point() {
    require_tool!("sfdisk");
    let (lab, img) = mbr_lab(31);
    let files = || std::fs::read_dir(lab.store().join("boot")).unwrap().count();
    lab.snapshot_json();
    let one = files();
    lab.snapshot_json();
    assert_eq!(files(), one, "an unchanged boot area adds nothing");
    fill_boot(&img, 512, 2047 * 512, 32);
    lab.snapshot_json();
    assert_eq!(files(), one + 2, "new boot code and gap: two new files");
    SNAPSHOT.expect(
        0,
        &["prune", "--oldest", "2", "--store", Lab::s(&lab.store())],
    );
    assert_eq!(
        files(),
        one,
        "the old boot area went with the last point using it"
    );
    // What is left still restores and verifies.
    SNAPSHOT.expect(0, &["verify", "--store", Lab::s(&lab.store())]);
    let captured = std::fs::read(&img).unwrap();
    write_at(&img, 0, &[0; 440]);
    let out = restore_boot(&lab, 3, &["--boot-only", "--no-safety-point"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(std::fs::read(&img).unwrap() == captured);
}

#[test]
fn verify_names_a_damaged_boot_file() {
    require_tool!("sfdisk");
    let (lab, img) = mbr_lab(41);
    lab.snapshot_json();
    let biggest = std::fs::read_dir(lab.store().join("boot"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| p.metadata().unwrap().len())
        .unwrap();
    let mut b = std::fs::read(&biggest).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&biggest, b).unwrap();
    let out = SNAPSHOT.run(&["verify", "--store", Lab::s(&lab.store())]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(text(&out).contains("boot area of"), "{}", text(&out));
    // And the restore refuses to write damaged bytes.
    let before = std::fs::read(&img).unwrap();
    let out = restore_boot(&lab, 1, &["--boot-only"]);
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(std::fs::read(&img).unwrap() == before);
}

#[test]
fn without_a_partition_table_there_is_nothing_to_capture_and_boot_restore_says_so() {
    let lab = Lab::new();
    let img = lab.target("blank.img");
    std::fs::write(&img, vec![0u8; 4 * MIB as usize]).unwrap();
    config_with_device(&lab, &img);
    let out = SNAPSHOT.run(&[
        "--root",
        Lab::s(&lab.sys()),
        "--store",
        Lab::s(&lab.store()),
    ]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(text(&out).contains("no partition table"), "{}", text(&out));
    let out = restore_boot(&lab, 1, &["--boot-only"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("holds no boot area"), "{}", text(&out));
}

#[test]
fn the_recovery_kit_holds_both_binaries_and_the_steps() {
    require_tool!("sfdisk");
    let (lab, _img) = mbr_lab(51);
    lab.snapshot_json();
    let kit = lab.store().join("kit");
    // One program under both names: it runs the command it is named as.
    for bin in [SNAPSHOT, RESTORE] {
        let copy = kit.join(bin.0);
        assert!(
            std::fs::read(&copy).unwrap() == std::fs::read(SNAPSHOT.path()).unwrap(),
            "{} in the kit is the current program",
            bin.0
        );
        let out = Command::new(&copy).arg("--version").output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(bin.0));
    }
    let recovery = std::fs::read_to_string(kit.join("RECOVERY")).unwrap();
    for want in [
        "system_restore --root /mnt/sysimage",
        "--boot",
        "label-id:",
        "start=        2048",
        "partition  1: start         2048",
    ] {
        assert!(
            recovery.contains(want),
            "RECOVERY lacks {want:?}:\n{recovery}"
        );
    }
}

/// The rescue-CD flow: the system is a tree, its disk an image. A kernel upgrade changed
/// /boot and the boot code; one `system_restore --root` run puts both back, and the
/// pre-restore point rolls both forward again.
#[test]
fn rescue_flow_restores_files_and_boot_area_in_one_run() {
    require_tool!("sfdisk");
    let (lab, img) = mbr_lab(61);
    lab.run_sh(
        "mkdir -p boot/grub lib/modules/6.1.0/kernel etc
         echo kernel-6.1 > boot/vmlinuz-6.1.0; echo initrd-6.1 > boot/initrd.img-6.1.0
         echo 'menuentry 6.1' > boot/grub/grub.cfg; echo mod > lib/modules/6.1.0/kernel/a.ko
         echo '/dev/sda1 / ext4 defaults 0 1' > etc/fstab",
    );
    let root = lab.sys();
    let store = Lab::s(&lab.store_under_root()).to_string();
    SNAPSHOT.expect(0, &["--root", Lab::s(&root)]);
    let good_tree = fingerprint_except(&root, &["root"]);
    let good_disk = std::fs::read(&img).unwrap();

    lab.run_sh(
        "echo kernel-6.2-broken > boot/vmlinuz-6.1.0; echo kernel-6.2 > boot/vmlinuz-6.2.0
         echo 'menuentry 6.2' > boot/grub/grub.cfg; rm -r lib/modules/6.1.0
         mkdir -p lib/modules/6.2.0; echo mod2 > lib/modules/6.2.0/b.ko",
    );
    fill_boot(&img, 512, 2047 * 512, 62);
    let bad_tree = fingerprint_except(&root, &["root"]);
    let bad_disk = std::fs::read(&img).unwrap();

    // Without --boot, the plan warns that /boot and the boot code would disagree.
    let out = RESTORE.run(&["--root", Lab::s(&root), "--point", "1", "--dry-run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("add --boot to restore both"),
        "{}",
        text(&out)
    );
    // The command RECOVERY gives, with the lab's tree where the rescue system mounts the
    // root, run from the kit.
    let recovery = std::fs::read_to_string(lab.store_under_root().join("kit/RECOVERY")).unwrap();
    let line = recovery
        .lines()
        .find(|l| l.contains("system_restore --root /mnt/sysimage"))
        .expect("RECOVERY gives the command");
    let line = line.trim().replace("/mnt/sysimage", Lab::s(&root));
    let mut words = line.split(' ');
    let kit_binary = words.next().unwrap().to_string();
    assert!(
        kit_binary.ends_with("root/snapshots/kit/system_restore"),
        "{line}"
    );
    let out = Command::new(&kit_binary)
        .args(words)
        .args(["--point", "1", "--yes"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("Boot-critical paths among them"), "{msg}");
    assert_same(&good_tree, &fingerprint_except(&root, &["root"]), "files");
    assert!(std::fs::read(&img).unwrap() == good_disk, "boot area back");
    SNAPSHOT.expect(0, &["verify", "--full", "--store", &store]);

    // Roll forward: the pre-restore point (2) holds the broken state, boot area included.
    let out = RESTORE.run(&[
        "--root",
        Lab::s(&root),
        "--point",
        "2",
        "--boot",
        "--yes",
        "--no-safety-point",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_same(
        &bad_tree,
        &fingerprint_except(&root, &["root"]),
        "rolled forward",
    );
    assert!(std::fs::read(&img).unwrap() == bad_disk);
}

/// A loop device with a partition mounted at the root's /boot: the disk is found from
/// mountinfo and sysfs, read and written as a block device.
#[test]
fn the_disk_under_boot_is_found_on_a_real_block_device() {
    crate::require_root!();
    require_tool!("sfdisk", "losetup", "partx", "mkfs.ext4");
    let lab = Lab::new();
    let img = lab.target("loop.img");
    mbr_image(&img, 71);
    let Some(dev) = Loop::attach(&img) else {
        return;
    };
    let part = format!("{}p1", dev.0);
    let boot = lab.sys().join("boot");
    sh(&format!("mkfs.ext4 -q {part}"));
    let _mount = Unmount::mount(&part, &boot);
    std::fs::write(boot.join("vmlinuz"), "kernel").unwrap();
    let report = lab.snapshot_json();
    let line = report["boot"][0].as_str().unwrap_or_default().to_string();
    assert!(line.starts_with(&dev.0), "captured the loop disk: {report}");
    let captured = read_at(Path::new(&dev.0), 0, 2048 * 512);

    write_at(Path::new(&dev.0), 0, &random(440, 72));
    write_at(Path::new(&dev.0), 512, &random(4096, 73));
    let out = restore_boot(&lab, 1, &["--boot-only"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("the mount of") || text(&out).contains("is on"),
        "{}",
        text(&out)
    );
    assert!(read_at(Path::new(&dev.0), 0, 2048 * 512) == captured);
    // The partition table write is refused while a partition is mounted.
    let out = restore_boot(
        &lab,
        1,
        &["--boot-only", "--with-partition-table", "--no-safety-point"],
    );
    assert_eq!(code(&out), 7, "{}", text(&out));
    assert!(text(&out).contains("is mounted"), "{}", text(&out));
}

pub(crate) struct Loop(pub(crate) String);

impl Loop {
    /// A loop device over `img` (`extra`: losetup options such as `-b 4096`). None, with the
    /// reason printed, when loop devices cannot be used here.
    pub(crate) fn plain(img: &Path, extra: &[&str]) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .args(extra)
            .arg(img)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipped: no loop device: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }

    /// With partition nodes (this kernel may lack the partition parsers: partx adds them).
    pub(crate) fn attach(img: &Path) -> Option<Loop> {
        let l = Loop::plain(img, &[])?;
        let _ = Command::new("partx").args(["-a", &l.0]).output();
        let p1 = PathBuf::from(format!("{}p1", l.0));
        for _ in 0..50 {
            if p1.exists() {
                return Some(l);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("skipped: {} has no partition nodes", l.0);
        None
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("partx").args(["-d", &self.0]).output();
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}

pub(crate) struct Unmount(PathBuf);

impl Unmount {
    /// Mounts (`mount ARGS… DIR`, DIR created) and unmounts when dropped.
    pub(crate) fn mount(args: &str, dir: &Path) -> Unmount {
        std::fs::create_dir_all(dir).unwrap();
        sh(&format!("mount {args} {}", dir.display()));
        Unmount(dir.to_path_buf())
    }
}

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// GRUB's pieces written by hand (grub-install cannot probe image files): boot.img's code in
/// sector 0 and a core image whose embedded config prints a marker on the serial port. MBR:
/// core image at sector 1 (the gap). GPT: in the BIOS boot partition at 2048, with the two
/// absolute sector numbers patched as grub-bios-setup would.
fn grub_image(dir: &Path, gpt: bool) -> PathBuf {
    let img = dir.join(if gpt { "gpt-boot.img" } else { "mbr-boot.img" });
    let cfg = dir.join("early.cfg");
    std::fs::write(
        &cfg,
        "serial --unit=0 --speed=115200\nterminal_output serial\necho RESTOREPOINT-BOOT-OK\nhalt\n",
    )
    .unwrap();
    let core = dir.join("core.img");
    let (part_mod, prefix) = if gpt {
        ("part_gpt", "(hd0,gpt2)/grub")
    } else {
        ("part_msdos", "(hd0,msdos1)/grub")
    };
    sh(&format!(
        "grub-mkimage -O i386-pc -o {core} -c {cfg} -p '{prefix}' biosdisk {part_mod} ext2 serial terminal echo halt",
        core = core.display(),
        cfg = cfg.display()
    ));
    let mut boot = std::fs::read("/usr/lib/grub/i386-pc/boot.img").unwrap();
    let mut core_bytes = std::fs::read(&core).unwrap();
    if gpt {
        gpt_image(&img, 0);
        boot[0x5C..0x64].copy_from_slice(&2048u64.to_le_bytes());
        core_bytes[0x1F4..0x1FC].copy_from_slice(&2049u64.to_le_bytes());
        write_at(&img, 2048 * 512, &vec![0; MIB as usize]);
        write_at(&img, 2048 * 512, &core_bytes);
    } else {
        mbr_image(&img, 0);
        write_at(&img, 512, &vec![0; 2047 * 512]);
        write_at(&img, 512, &core_bytes);
    }
    write_at(&img, 0, &boot[..440]);
    img
}

/// Boots the image in QEMU and says whether the marker reached the serial console within
/// `wait`. TCG unless RP_QEMU_ACCEL says otherwise: on this nested VM KVM's firmware takes
/// about 16 s to reach the boot sector, TCG 0.25 s, and real-mode boot code runs the same.
pub(crate) fn boots(img: &Path, wait: std::time::Duration) -> bool {
    use std::io::Read;
    let accel = std::env::var("RP_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", &accel])
        .args(["-m", "128", "-nographic", "-no-reboot", "-net", "none"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", img.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start qemu");
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(20).any(|w| w == b"RESTOREPOINT-BOOT-OK") {
                let _ = tx.send(true);
                return;
            }
        }
        let _ = tx.send(false);
    });
    let booted = rx.recv_timeout(wait).unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    booted
}

#[test]
fn a_wiped_boot_area_stops_the_boot_and_the_restore_brings_it_back_in_qemu() {
    require_tool!("sfdisk", "grub-mkimage", "qemu-system-x86_64");
    if !Path::new("/usr/lib/grub/i386-pc/boot.img").exists() {
        eprintln!("skipped: GRUB's i386-pc images are not installed (grub-pc-bin)");
        return;
    }
    let long = std::time::Duration::from_secs(60);
    let short = std::time::Duration::from_secs(10);
    for gpt in [false, true] {
        let lab = Lab::new();
        let img = grub_image(lab.dir.path(), gpt);
        assert!(boots(&img, long), "gpt={gpt}: the built image boots");
        config_with_device(&lab, &img);
        lab.snapshot_json();
        let good = std::fs::read(&img).unwrap();

        let core_at = if gpt { 2048 * 512 } else { 512 };
        write_at(&img, 0, &[0; 440]);
        write_at(&img, core_at, &vec![0; MIB as usize - 512]);
        assert!(
            !boots(&img, short),
            "gpt={gpt}: a wiped boot area does not boot"
        );

        let out = restore_boot(&lab, 1, &["--boot-only"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert!(
            std::fs::read(&img).unwrap() == good,
            "gpt={gpt}: byte-identical"
        );
        assert!(
            boots(&img, long),
            "gpt={gpt}: boots again after the restore"
        );
    }
}

/// Killed after the boot bytes are stored but before the point names them: the next run
/// drops the unreferenced files, and killed between the boot write and the files of a
/// restore: running the restore again finishes both.
#[test]
fn crashes_around_the_boot_area_lose_nothing() {
    require_tool!("sfdisk");
    let (lab, img) = mbr_lab(81);
    lab.run_sh("mkdir -p boot; echo k1 > boot/vmlinuz");
    lab.snapshot_json();
    let files = || std::fs::read_dir(lab.store().join("boot")).unwrap().count();
    let before = files();
    let good_tree = fingerprint(&lab.sys());
    let good_disk = std::fs::read(&img).unwrap();

    fill_boot(&img, 512, 2047 * 512, 82);
    lab.run_sh("echo k2 > boot/vmlinuz");
    let killed = Command::new(SNAPSHOT.path())
        .args([
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            Lab::s(&lab.store()),
        ])
        .env("RESTOREPOINT_FAILPOINT", "snapshot-after-boot-capture")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None, "killed by its failpoint");
    assert!(
        files() > before,
        "the new boot bytes were written before the kill"
    );
    assert_eq!(points(&lab), 1);
    // verify only reads: it leaves the clean-up to the next writer.
    SNAPSHOT.expect(0, &["verify", "--store", Lab::s(&lab.store())]);
    assert!(files() > before);
    SNAPSHOT.expect(0, &["prune", "--dry-run", "--store", Lab::s(&lab.store())]);
    assert_eq!(
        files(),
        before,
        "the next writer removed what no point names"
    );

    let restore = |failpoint: Option<&str>| {
        let mut c = restore_command(&lab, 1, &["--boot"]);
        if let Some(f) = failpoint {
            c.env("RESTOREPOINT_FAILPOINT", f);
        }
        c.output().unwrap()
    };
    let out = restore(Some("restore-after-boot"));
    assert_eq!(out.status.code(), None, "{}", text(&out));
    assert!(std::fs::read(&img).unwrap() == good_disk, "boot area first");
    let out = restore(None);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("interrupted"), "{}", text(&out));
    assert_same(
        &good_tree,
        &fingerprint(&lab.sys()),
        "files after the rerun",
    );
    assert!(std::fs::read(&img).unwrap() == good_disk);
    assert_eq!(points(&lab), 2, "one safety point, not two");
}

/// /boot on a filesystem of its own is recorded with the root (the walk stays on one
/// filesystem), and an in-place restore puts its files back.
#[test]
fn a_separate_boot_filesystem_is_recorded_and_restored() {
    crate::require_root!();
    let lab = Lab::new();
    let _mount = Unmount::mount("-t tmpfs -o size=8m rp-boot", &lab.sys().join("boot"));
    lab.run_sh("echo kernel-1 > boot/vmlinuz; mkdir boot/grub; echo cfg-1 > boot/grub/grub.cfg; echo x > etc-file");
    let point = lab.snapshot_json()["point"].as_i64().unwrap();
    let out = SNAPSHOT.expect(
        0,
        &[
            "show",
            &point.to_string(),
            "--json",
            "--store",
            Lab::s(&lab.store()),
        ],
    );
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains("boot/grub/grub.cfg"), "{shown}");
    let good = fingerprint(&lab.sys());
    lab.run_sh("echo kernel-2 > boot/vmlinuz; rm -r boot/grub; echo new > boot/vmlinuz-2");
    let out = restore_boot(&lab, point, &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_same(&good, &fingerprint(&lab.sys()), "after the restore");
}

/// A disk with 4096-byte logical sectors (a loop device with -b 4096): the GPT header lies at
/// byte 4096, sector numbers count 4 KiB sectors, and the capture and restore follow.
#[test]
fn a_4k_sector_disk_is_read_and_written_in_its_own_sectors() {
    crate::require_root!();
    require_tool!("sfdisk", "losetup");
    let lab = Lab::new();
    let img = lab.target("4k.img");
    sh(&format!("truncate -s 64M {}", img.display()));
    let Some(dev) = Loop::plain(&img, &["-b", "4096"]) else {
        return;
    };
    sh(&format!(
        "printf 'label: gpt\\nstart=256, size=256, type=21686148-6449-6E6F-744E-656564454649\\ntype=0FC63DAF-8483-4772-8E79-3D69D8477DE4\\n' | sfdisk -q {}",
        dev.0
    ));
    let disk = Path::new(&dev.0);
    write_at(disk, 0, &random(440, 91));
    write_at(disk, 256 * 4096, &random(MIB as usize, 92));
    config_with_device(&lab, disk);
    let report = lab.snapshot_json();
    let line = report["boot"][0].as_str().unwrap_or_default().to_string();
    assert!(
        line.contains("gpt") && line.contains("BIOS boot partition 1.0 MiB"),
        "{report}"
    );
    let captured = read_at(disk, 0, 2 * MIB as usize);
    write_at(disk, 0, &[0; 440]);
    write_at(disk, 256 * 4096, &vec![0; MIB as usize]);
    let out = restore_boot(&lab, 1, &["--boot-only"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("at byte    1048576"), "{}", text(&out));
    assert!(read_at(disk, 0, 2 * MIB as usize) == captured);
}

/// The operator's session with --boot, in a real terminal: the plan names the disk and what
/// will be written, `no` writes nothing, `yes` writes the boot area and the files.
#[test]
fn interactive_boot_restore_shows_the_disk_and_needs_yes() {
    require_tool!("sfdisk");
    let (lab, img) = mbr_lab(101);
    lab.run_sh("mkdir -p boot; echo kernel-1 > boot/vmlinuz");
    lab.snapshot();
    let good_disk = std::fs::read(&img).unwrap();
    fill_boot(&img, 512, 2047 * 512, 102);
    lab.run_sh("echo kernel-2 > boot/vmlinuz");
    lab.snapshot();
    let new_disk = std::fs::read(&img).unwrap();

    for answer in ["no", "yes"] {
        let mut c = Command::new(RESTORE.path());
        c.args([
            "--root",
            Lab::s(&lab.sys()),
            "--store",
            Lab::s(&lab.store()),
            "--boot",
        ])
        .env("TERM", "xterm");
        let mut p = rexpect::session::spawn_command(c, Some(30_000)).expect("spawn in a pty");
        p.exp_string("Enter the number of the restore point to recover to")
            .unwrap();
        p.send_line("1").unwrap();
        p.exp_string(&format!("Boot area of point 1 to {}", img.display()))
            .unwrap();
        p.exp_string("boot code (sector 0, bytes 0-439)").unwrap();
        p.exp_string("to write").unwrap();
        p.exp_string("Boot-critical paths among them (1): /boot/vmlinuz")
            .unwrap();
        p.exp_string(&format!(
            "THE BOOT AREA OF {} WILL BE OVERWRITTEN WITH POINT 1'S.",
            img.display()
        ))
        .unwrap();
        p.exp_string("type 'yes'").unwrap();
        p.send_line(answer).unwrap();
        if answer == "no" {
            p.exp_string("Nothing was changed").unwrap();
            p.exp_eof().unwrap();
            assert!(
                std::fs::read(&img).unwrap() == new_disk,
                "no: nothing written"
            );
        } else {
            p.exp_string("Wrote point 1's boot area").unwrap();
            p.exp_string("Restored point 1").unwrap();
            p.exp_eof().unwrap();
            assert!(
                std::fs::read(&img).unwrap() == good_disk,
                "yes: boot area back"
            );
            assert_eq!(
                std::fs::read_to_string(lab.sys().join("boot/vmlinuz")).unwrap(),
                "kernel-1\n"
            );
        }
    }
}

/// On a rescue system the disk may have another name and /boot no block device behind it
/// (here a tmpfs): the disk is found among /sys/block by its recorded identity.
#[test]
fn without_discovery_the_disk_is_found_by_its_identity() {
    crate::require_root!();
    require_tool!("sfdisk", "losetup");
    let lab = Lab::new();
    let img = lab.target("id.img");
    mbr_image(&img, 111);
    let Some(dev) = Loop::plain(&img, &[]) else {
        return;
    };
    config_with_device(&lab, Path::new(&dev.0));
    lab.snapshot_json();
    let captured = read_at(Path::new(&dev.0), 0, 2048 * 512);
    write_at(Path::new(&dev.0), 0, &[0; 440]);

    std::fs::remove_file(lab.sys().join("etc/system_snapshots.conf")).unwrap();
    let _mount = Unmount::mount("-t tmpfs rp-boot", &lab.sys().join("boot"));
    let out = restore_boot(&lab, 1, &["--boot-only"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains(&format!("to {} (chosen by its identity", dev.0)),
        "{}",
        text(&out)
    );
    assert!(read_at(Path::new(&dev.0), 0, 2048 * 512) == captured);
}
