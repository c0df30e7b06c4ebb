//! The steps of a bare-metal restore, each printed with the command it runs and its result.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{On, Plan, Records};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub point: crate::store::PointId,
    pub device: PathBuf,
    pub filesystems: usize,
    pub files: Files,
    pub boot_bytes: u64,
}

/// What the files step restored into the new filesystems.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Files {
    pub entries: u64,
    pub bytes: u64,
    /// `path: message`.
    pub warnings: Vec<String>,
    /// `path: problem`: stored content that could not be rebuilt, left out.
    pub damaged: Vec<String>,
}

/// Restores the point's files into the directory it is given (the new filesystems, mounted).
pub type FilesStep<'a> = dyn FnMut(&Path) -> Result<Files> + 'a;

/// What the steps have set up, taken down in reverse when they end, however they end.
struct Setup {
    loop_dev: Option<String>,
    root: Option<PathBuf>,
    mounted: Vec<PathBuf>,
    /// Volume groups activated on the disk: deactivated before it is detached, or a loop
    /// device stays held and the group stays in the kernel's tables.
    active: Vec<String>,
}

impl Setup {
    fn unmount_all(&mut self, say: &mut dyn FnMut(String)) -> std::result::Result<(), String> {
        while let Some(dir) = self.mounted.pop() {
            if let Err(e) = command("umount", &[dir.display().to_string()], None) {
                self.mounted.push(dir);
                return Err(e);
            }
            say(format!("  unmounted {}", dir.display()));
        }
        if let Some(root) = self.root.take() {
            // Only once nothing is mounted there: an rmdir cannot take restored files with it.
            let _ = std::fs::remove_dir(&root);
        }
        Ok(())
    }
}

impl Setup {
    fn deactivate(&mut self, say: &mut dyn FnMut(String)) -> std::result::Result<(), String> {
        while let Some(vg) = self.active.pop() {
            match command("lvm", &["vgchange".into(), "-an".into(), vg.clone()], None) {
                Ok(_) => {}
                // A step failed before the group was made: there is nothing to deactivate.
                Err(e) if e.contains("not found") => continue,
                Err(e) => {
                    self.active.push(vg);
                    return Err(e);
                }
            }
            say(format!("  deactivated volume group {vg}"));
        }
        Ok(())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.unmount_all(&mut |_| {});
        let _ = self.deactivate(&mut |_| {});
        if let Some(l) = self.loop_dev.take() {
            let _ = command("partx", &["-d".into(), l.clone()], None);
            let _ = command("losetup", &["-d".into(), l], None);
        }
    }
}

/// Runs `tool args…` (PATH as cron and rescue shells lack sbin), feeding `input`; its stdout,
/// or its stderr (or exit status) as the error.
fn command(
    tool: &str,
    args: &[String],
    input: Option<&str>,
) -> std::result::Result<String, String> {
    let exe =
        crate::boot::records::which(tool).ok_or_else(|| format!("{tool} is not installed"))?;
    let mut child = Command::new(exe)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    // A tool that stops before reading all its input (sfdisk refusing a busy disk) says why
    // on stderr: that, not the broken pipe, is the error.
    let fed = match (input, child.stdin.take()) {
        (Some(text), Some(mut stdin)) => stdin.write_all(text.as_bytes()),
        _ => Ok(()),
    };
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {tool}: {e}"))?;
    if let (Err(e), true) = (fed, out.status.success()) {
        return Err(format!("writing to {tool}: {e}"));
    }
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if err.is_empty() {
            format!("{tool} failed ({})", out.status)
        } else {
            format!("{tool} failed ({}): {err}", out.status)
        })
    }
}

/// The loop device a disk image file is attached to, if any.
pub fn loop_of(file: &Path) -> Option<String> {
    let out = command("losetup", &["-j".into(), file.display().to_string()], None).ok()?;
    out.lines()
        .next()
        .and_then(|l| l.split(':').next())
        .map(str::to_string)
}

/// The partition device nodes of `disk`, by number, from sysfs.
fn partitions_of(disk: &Path) -> BTreeMap<u32, PathBuf> {
    let mut out = BTreeMap::new();
    let Some(name) = disk
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_os_string()))
    else {
        return out;
    };
    let sys = Path::new("/sys/class/block").join(&name);
    let Ok(entries) = std::fs::read_dir(&sys) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(n) = std::fs::read_to_string(e.path().join("partition")) else {
            continue;
        };
        if let Ok(n) = n.trim().parse() {
            out.insert(n, Path::new("/dev").join(e.file_name()));
        }
    }
    out
}

/// Where the kernel has a partition: (start, size) in 512-byte sectors, from sysfs.
fn geometry(node: &Path) -> Option<(u64, u64)> {
    let sys = Path::new("/sys/class/block").join(node.file_name()?);
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(sys.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("start")?, read("size")?))
}

fn shell_words(tool: &str, args: &[String]) -> String {
    std::iter::once(tool.to_string())
        .chain(args.iter().map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rebuilds the disk as `plan` says, restores the point's files into its filesystems and its
/// boot area onto it. `say` gets each step's command and result.
pub fn run(
    plan: &Plan,
    rec: &Records,
    files: &mut FilesStep,
    say: &mut dyn FnMut(String),
) -> Result<Report> {
    let mut setup = Setup {
        loop_dev: None,
        root: None,
        mounted: Vec::new(),
        active: Vec::new(),
    };
    let result = steps(plan, rec, files, say, &mut setup);
    let teardown = setup
        .unmount_all(say)
        .map_err(|e| ("unmount", e))
        .and_then(|_| {
            setup
                .deactivate(say)
                .map_err(|e| ("deactivate volume groups", e))
        });
    let left_mounted: Vec<String> = setup
        .mounted
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    if let Some(l) = setup.loop_dev.take() {
        let _ = command("partx", &["-d".into(), l.clone()], None);
        match command("losetup", &["-d".into(), l.clone()], None) {
            Ok(_) => say(format!("  detached {l}")),
            Err(e) => say(format!("  could not detach {l}: {e}")),
        }
    }
    let report = match (result, &teardown) {
        (
            Err(Error::BareMetalStep {
                device,
                step,
                message,
                next,
            }),
            Err(t),
        ) => {
            // Still mounted, the disk would be refused as in use: say what to unmount first.
            return Err(Error::BareMetalStep {
                device,
                step,
                message: format!("{message}; then the step `{}` failed too: {}", t.0, t.1),
                next: format!(
                    "{}, then {next}",
                    undo_by_hand(&left_mounted, &setup.active)
                ),
            });
        }
        (r, _) => r?,
    };
    if let Err((step, e)) = teardown {
        return Err(Error::BareMetalStep {
            device: plan.device.clone(),
            step: step.into(),
            message: e,
            next: format!(
                "everything was written; {}",
                undo_by_hand(&left_mounted, &setup.active)
            ),
        });
    }
    Ok(report)
}

/// What is left for the operator after a failed teardown: filesystems still mounted, volume
/// groups still active (the disk is in use until both are undone).
fn undo_by_hand(mounted: &[String], active: &[String]) -> String {
    let mut todo = Vec::new();
    if !mounted.is_empty() {
        todo.push(format!(
            "unmount {} (umount -l if busy)",
            mounted.join(" and ")
        ));
    }
    if !active.is_empty() {
        todo.push(format!(
            "deactivate {} (vgchange -an NAME)",
            active.join(" and ")
        ));
    }
    if todo.is_empty() {
        "nothing is left mounted or active".into()
    } else {
        todo.join(", then ")
    }
}

fn steps(
    plan: &Plan,
    rec: &Records,
    files: &mut FilesStep,
    say: &mut dyn FnMut(String),
    setup: &mut Setup,
) -> Result<Report> {
    let again = "the disk is partly written and nothing else was touched; fix the cause and run the same command again: it starts over from the partition table";
    let fail = |step: &str, message: String| Error::BareMetalStep {
        device: plan.device.clone(),
        step: step.to_string(),
        message,
        next: again.to_string(),
    };
    let run = |say: &mut dyn FnMut(String),
               step: &str,
               tool: &str,
               args: Vec<String>,
               input: Option<&str>| {
        say(format!("[{step}] {}", shell_words(tool, &args)));
        match command(tool, &args, input) {
            Ok(out) => {
                say("  ok".into());
                Ok(out)
            }
            Err(e) => {
                say(format!("  FAILED: {e}"));
                Err(fail(step, e))
            }
        }
    };
    let disk: PathBuf = if plan.image_file {
        let out = run(
            say,
            "attach",
            "losetup",
            vec![
                "--find".into(),
                "--show".into(),
                plan.device.display().to_string(),
            ],
            None,
        )?;
        let l = out.trim().to_string();
        setup.loop_dev = Some(l.clone());
        PathBuf::from(l)
    } else {
        plan.device.clone()
    };
    let d = disk.display().to_string();
    // Checked again now: the disk may have been mounted (or taken by LVM, swap, md) while the
    // plan waited for `yes`.
    if let Some(why) = super::in_use(&disk) {
        return Err(fail("partition table", why));
    }
    run(
        say,
        "partition table",
        "sfdisk",
        vec![
            "--wipe".into(),
            "always".into(),
            "--wipe-partitions".into(),
            "always".into(),
            d.clone(),
        ],
        Some(&plan.script),
    )?;
    // The kernel may lack the parser for the table (or refuse to re-read a disk it holds):
    // partx adds the partitions it does not show yet.
    let wanted: Vec<u32> = plan.partitions.iter().map(|p| p.number).collect();
    let _ = command("partx", &["-u".into(), d.clone()], None);
    if !wanted.iter().all(|n| partitions_of(&disk).contains_key(n)) {
        let _ = run(
            say,
            "partitions",
            "partx",
            vec!["-a".into(), d.clone()],
            None,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let nodes = loop {
        let found = partitions_of(&disk);
        if wanted
            .iter()
            .all(|n| found.get(n).is_some_and(|p| p.exists()))
        {
            break found;
        }
        if Instant::now() > deadline {
            return Err(fail(
                "partitions",
                format!(
                    "the kernel shows partitions {:?} of {d}, the table has {wanted:?}",
                    found.keys().collect::<Vec<_>>()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The kernel must see the new table, not an old one it kept: mkfs at old offsets would
    // write over the new partitions' neighbours.
    for p in &plan.partitions {
        let seen = geometry(&nodes[&p.number]);
        let k = plan.layout.sector / 512;
        if seen != Some((p.start * k, p.sectors * k)) {
            return Err(fail(
                "partitions",
                format!(
                    "the kernel has partition {} of {d} at {:?} (start, size in 512-byte sectors), the table at {:?}; re-read the table (partx -u {d}, or detach and attach the disk) and run again",
                    p.number,
                    seen,
                    (p.start * k, p.sectors * k)
                ),
            ));
        }
    }
    let lv_nodes = volume_groups(plan, &nodes, say, setup, &run, &fail)?;
    let node_of = |f: &super::Filesystem| -> PathBuf {
        match &f.on {
            On::Partition(n) => nodes[n].clone(),
            On::Lv { .. } => lv_nodes[&f.on].clone(),
        }
    };
    for f in &plan.filesystems {
        if let Some((tool, args)) = f.mkfs(&node_of(f)) {
            run(say, &format!("filesystem {}", f.on), &tool, args, None)?;
        }
    }
    let root = tempfile::Builder::new()
        .prefix("restorepoint-bare-metal.")
        .tempdir()
        .map_err(|e| fail("mount", format!("making a temporary directory: {e}")))?
        .keep();
    setup.root = Some(root.clone());
    for f in plan.mounts() {
        let m = f.mount.as_deref().unwrap_or("/");
        let dir = match m.trim_start_matches('/') {
            "" => root.clone(),
            rel => root.join(rel),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail("mount", format!("making {}: {e}", dir.display())))?;
        let mut args = vec!["-t".to_string(), f.mount_type().to_string()];
        if f.kind == "xfs" {
            // The disk the point was taken of may be attached too, with the same UUID.
            args.extend(["-o".into(), "nouuid".into()]);
        }
        args.extend([node_of(f).display().to_string(), dir.display().to_string()]);
        run(say, &format!("mount {m}"), "mount", args, None)?;
        setup.mounted.push(dir);
    }
    say(format!(
        "[files] restoring point {} into {}",
        plan.point,
        root.display()
    ));
    let done = match files(&root) {
        Ok(d) => d,
        Err(e) => {
            say(format!("  FAILED: {e}"));
            return Err(fail("files", e.to_string()));
        }
    };
    say(format!(
        "  {} entries, {} written{}",
        done.entries,
        crate::model::human_size(done.bytes),
        if done.damaged.is_empty() {
            String::new()
        } else {
            format!(", {} damaged and left out", done.damaged.len())
        }
    ));
    if let Err(e) = setup.unmount_all(say) {
        return Err(fail("unmount", e));
    }
    say(format!(
        "[boot area] writing the boot code captured from {}",
        plan.captured_disk
    ));
    let boot = crate::boot::restore::plan_recreated(&*rec.blob, plan.point, &plan.capture, &disk)
        .and_then(|b| crate::boot::restore::apply(&b));
    let boot_bytes = match boot {
        Ok(n) => n,
        Err(e) => {
            say(format!("  FAILED: {e}"));
            return Err(fail("boot area", e.to_string()));
        }
    };
    say(format!(
        "  {} written, read back and checked",
        crate::model::human_size(boot_bytes)
    ));
    Ok(Report {
        point: plan.point,
        device: plan.device.clone(),
        filesystems: plan.filesystems.len(),
        files: done,
        boot_bytes,
    })
}

/// Makes each volume group of the plan again on its new partitions, with its recorded UUIDs
/// and extents, and activates it: LVM's own `pvcreate --restorefile` and `vgcfgrestore` read
/// the metadata the point recorded. The device node of each logical volume, once it is there.
fn volume_groups(
    plan: &Plan,
    nodes: &BTreeMap<u32, PathBuf>,
    say: &mut dyn FnMut(String),
    setup: &mut Setup,
    run: &impl Fn(&mut dyn FnMut(String), &str, &str, Vec<String>, Option<&str>) -> Result<String>,
    fail: &impl Fn(&str, String) -> Error,
) -> Result<BTreeMap<On, PathBuf>> {
    let mut out = BTreeMap::new();
    if plan.volume_groups.is_empty() {
        return Ok(out);
    }
    let dir = tempfile::Builder::new()
        .prefix("restorepoint-lvm.")
        .tempdir()
        .map_err(|e| {
            fail(
                "volume groups",
                format!("making a temporary directory: {e}"),
            )
        })?;
    for g in &plan.volume_groups {
        let step = format!("volume group {}", g.name);
        // Counted as active from here: udev may activate the group as soon as vgcfgrestore
        // writes it, and a vgchange that fails half way leaves some volumes active; a
        // `vgchange -an` of a group that is not active does no harm.
        setup.active.push(g.name.clone());
        let file = dir.path().join(&g.name);
        std::fs::write(&file, &g.metadata)
            .map_err(|e| fail(&step, format!("writing {}: {e}", file.display())))?;
        let file = file.display().to_string();
        for pv in &g.pvs {
            let node = pv.partition.and_then(|n| nodes.get(&n)).ok_or_else(|| {
                fail(&step, format!("no partition for physical volume {}", pv.id))
            })?;
            // The partition was just wiped; --force twice lets pvcreate take it without asking
            // (there is nobody to answer on a rescue console's pipe).
            run(
                say,
                &step,
                "lvm",
                [
                    "pvcreate",
                    "--force",
                    "--force",
                    "--yes",
                    "--uuid",
                    &pv.id,
                    "--restorefile",
                    &file,
                ]
                .iter()
                .map(|a| a.to_string())
                .chain([node.display().to_string()])
                .collect(),
                None,
            )?;
        }
        run(
            say,
            &step,
            "lvm",
            vec![
                "vgcfgrestore".into(),
                "-f".into(),
                file.clone(),
                g.name.clone(),
            ],
            None,
        )?;
        run(
            say,
            &step,
            "lvm",
            // -K: a volume flagged to skip activation still gets its filesystem restored.
            vec!["vgchange".into(), "-ay".into(), "-K".into(), g.name.clone()],
            None,
        )?;
        // Only the volumes the plan writes (a filesystem or swap) are waited for: nothing is
        // written to the others, whatever the rescue system's LVM does with them.
        let planned = |lv: &str| {
            plan.filesystems
                .iter()
                .any(|f| matches!(&f.on, On::Lv { vg, lv: l } if *vg == g.name && l == lv))
        };
        for lv in g.lvs.iter().filter(|lv| lv.visible && planned(&lv.name)) {
            out.insert(
                On::Lv {
                    vg: g.name.clone(),
                    lv: lv.name.clone(),
                },
                Path::new("/dev/mapper").join(super::lvm::mapper_name(&g.name, &lv.name)),
            );
        }
    }
    // udev (where it runs) makes the nodes after vgchange returns.
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Some(missing) = out.values().find(|p| !p.exists()) {
        if Instant::now() > deadline {
            return Err(fail(
                "volume groups",
                format!(
                    "{} did not appear after vgchange -ay (is device-mapper in this kernel? modprobe dm_mod)",
                    missing.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(out)
}
