//! `system_restore`: choose a point, plan, show, confirm with the typed word `yes`, apply.

use std::io::IsTerminal;
use std::path::PathBuf;

use chrono::{DateTime, Local};
use clap::Parser;

use super::render::size;
use super::*;
use crate::boot::restore::BootPlan;
use crate::model::display_path;
use crate::paths::source_rel;
use crate::restore::RestoreRequest;
use crate::restore::{Action, RestorePlan};
use crate::store::{Point, PointId, Store};

#[derive(Parser, Debug)]
#[command(
    name = "system_restore",
    version,
    about = "Roll this machine, or a copy of it, back (or forward) to a restore point",
    long_about = "Roll this machine, or a copy of it, back (or forward) to a restore point.\n\nWithout --target it rolls the running system (or the root given with --root) back in place, after taking a restore point of the current state; with --target DIR it writes the point into DIR instead. --bare-metal rebuilds a blank disk from the point."
)]
pub(super) struct Cli {
    #[command(flatten)]
    place: Place,
    /// The point to restore: its id, as `system_snapshot list` shows, or `latest`; asked for
    /// when omitted
    #[arg(long, value_name = "ID")]
    point: Option<PointSel>,
    /// Leave this path as it is on the target (repeatable, a glob as in `exclude`): a standby
    /// disk's own /etc/fstab
    #[arg(long = "keep", value_name = "PATH")]
    keep: Vec<String>,
    /// Materialize the point with DIR as its root instead of rolling the system back
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// Restore only this path and what lies below it (repeatable): one config file, one directory
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<String>,
    /// Show the plan and change nothing
    #[arg(long)]
    dry_run: bool,
    /// List each path the restore creates, rewrites, deletes or fixes, as --dry-run does
    #[arg(short, long)]
    verbose: bool,
    /// Do not ask: this replaces typing `yes`
    #[arg(long)]
    yes: bool,
    /// Compare the content of every file, not only of those whose size or mtime differs
    #[arg(long)]
    checksum: bool,
    /// Do not take a pre-restore point of the current state first (no way back then)
    #[arg(long)]
    no_safety_point: bool,
    /// In place: restore everything else when some files' stored content is damaged, leaving
    /// those files as they are (exit 5 then)
    #[arg(long)]
    skip_damaged: bool,
    /// Also write the point's boot area (boot code and GRUB's core image) back to the disk
    #[arg(long)]
    boot: bool,
    /// Write only the boot area, no files
    #[arg(long, conflicts_with_all = ["paths", "target"])]
    boot_only: bool,
    /// The disk (or disk image file) to write the boot area to, instead of the one under /boot
    #[arg(long, value_name = "DEV")]
    device: Option<PathBuf>,
    /// Also write the captured partition table back (every partition of the disk unmounted)
    #[arg(long)]
    with_partition_table: bool,
    /// Rebuild a blank disk (or disk image file) given by --device from the point: partition
    /// table, filesystems with their UUIDs and labels, files, boot area. Destroys DEV
    #[arg(long, requires = "device", conflicts_with_all = ["target", "paths", "boot", "boot_only", "with_partition_table", "checksum", "skip_damaged"])]
    bare_metal: bool,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

/// `--point`: an id, or the newest complete point.
#[derive(Debug, Clone, Copy)]
enum PointSel {
    Id(PointId),
    Latest,
}

impl std::str::FromStr for PointSel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "latest" {
            return Ok(PointSel::Latest);
        }
        s.parse()
            .map(PointSel::Id)
            .map_err(|_| format!("{s:?} is not a point: give its id (a number) or `latest`"))
    }
}

impl PointSel {
    fn local(self, store: &Store) -> Result<PointId, crate::error::Error> {
        match self {
            PointSel::Id(id) => Ok(id),
            PointSel::Latest => store
                .index
                .complete_points()?
                .last()
                .map(|p| p.id)
                .ok_or(crate::error::Error::NoPoints),
        }
    }

    fn remote(self, remote: &crate::offsite::Remote) -> Result<PointId, crate::error::Error> {
        match self {
            PointSel::Id(id) => Ok(id),
            PointSel::Latest => crate::offsite::latest(remote)?
                .map(PointId)
                .ok_or(crate::error::Error::NoPoints),
        }
    }
}

/// `--bare-metal`: shows the plan, asks for `yes` (the disk is erased), runs the steps. From
/// a local store, or from a remote one (`--store s3://…`, `--point` named).
fn restore_bare_metal(cli: &Cli, device: &std::path::Path) -> Result<i32, crate::error::Error> {
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !terminal && (cli.point.is_none() || (!cli.yes && !cli.dry_run)) {
        return Ok(refuse(
            NEEDS_CONFIRMATION,
            "no terminal to ask on; name the point and confirm on the command line: --point ID --yes (or --dry-run to see the plan)",
        ));
    }
    let url = remote_url(cli);
    let scratch = std::env::temp_dir();
    let mut local = None;
    let remote = match url {
        Some(u) => Some(cli.place.remote(u)?),
        None => {
            let (system, config) = cli.place.system()?;
            let store = system.open_store()?;
            local = Some((system, config, store));
            None
        }
    };
    let id = match (cli.point, &local, &remote) {
        (Some(sel), Some((_, _, store)), _) => sel.local(store)?,
        (Some(sel), _, Some(r)) => sel.remote(r)?,
        (Some(_), None, None) => unreachable!("a store is local or remote"),
        (None, Some((_, config, store)), _) => {
            match choose_point(store, &config.database_locations)? {
                Some(id) => id,
                None => return Ok(cancelled()),
            }
        }
        (None, None, _) => {
            return Err(crate::error::Error::Usage(
                "a bare-metal restore from a remote store needs --point ID (`system_snapshot list --store URL` lists them)".into(),
            ));
        }
    };
    let rec = match (&remote, &local) {
        (Some(r), _) => crate::baremetal::Records::remote(
            id,
            crate::offsite::point_disk(r, id.0, &scratch)?,
            &r.url,
        ),
        (None, Some((_, _, store))) => crate::baremetal::Records::local(store, id)?,
        (None, None) => unreachable!("a store is local or remote"),
    };
    let plan = crate::baremetal::plan(&rec, device)?;
    if cli.json && cli.dry_run {
        print_json("plan", &plan);
        return Ok(SUCCESS);
    }
    for line in plan.describe() {
        outln!("{line}");
    }
    if cli.dry_run {
        return Ok(SUCCESS);
    }
    if !cli.yes {
        outln!(
            "EVERYTHING ON {} WILL BE DESTROYED: it becomes the disk of point {id}.",
            device.display()
        );
        let answer: Result<String, _> = dialoguer::Input::new()
            .with_prompt(format!(
                "To erase {} and rebuild it from point {id}, type 'yes' ",
                device.display()
            ))
            .allow_empty(true)
            .interact_text();
        if !matches!(answer, Ok(a) if a.trim() == "yes") {
            return Ok(cancelled());
        }
    }
    let progress = progress_bar();
    let mut source = match (&remote, &mut local) {
        (Some(remote), _) => crate::baremetal::FileSource::Remote {
            remote,
            scratch: &scratch,
        },
        (None, Some((system, _, store))) => crate::baremetal::FileSource::Local {
            root: &system.root,
            store,
        },
        (None, None) => unreachable!("a store is local or remote"),
    };
    let mut files = |root: &std::path::Path| {
        crate::baremetal::restore_files(&mut source, id, root, progress.as_ref())
    };
    let json = cli.json;
    let report = crate::baremetal::run(&plan, &rec, &mut files, &mut |line| {
        if json {
            eprintln!("{line}");
        } else {
            outln!("{line}");
        }
    })?;
    let f = &report.files;
    if json {
        print_json("report", &report);
    } else {
        outln!(
            "Rebuilt {} from point {id}: {} filesystem(s), {} entries restored ({}), boot area {}.",
            device.display(),
            report.filesystems,
            f.entries,
            size(f.bytes),
            size(report.boot_bytes)
        );
    }
    for w in &f.warnings {
        eprintln!("warning: {w}");
    }
    for d in &f.damaged {
        eprintln!("DAMAGED {d}");
    }
    Ok(if !f.damaged.is_empty() {
        DAMAGED
    } else if f.warnings.is_empty() {
        SUCCESS
    } else {
        WARNINGS
    })
}

/// The `--store` URL when it names a remote store.
fn remote_url(cli: &Cli) -> Option<&str> {
    cli.place
        .store
        .as_ref()
        .and_then(|s| s.to_str())
        .filter(|s| s.starts_with("s3://") || s.starts_with("file://"))
}

/// From a remote store, in place: the system root (`--root DIR`, else `/`) made equal to
/// the point, reading only what differs. No pre-restore point: the store is remote.
fn restore_remote_in_place(
    cli: &Cli,
    remote: &crate::offsite::Remote,
    id: PointId,
) -> Result<i32, crate::error::Error> {
    let url = remote.url.as_str();
    let root = cli.place.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    if !root.is_dir() {
        return Err(crate::error::Error::Usage(format!(
            "the root {} is not a directory (missing?); check --root",
            root.display()
        )));
    }
    let config = cli.place.config_or_default(&root)?;
    // The system's own store, as its config names it: the restore leaves it alone.
    let store = config
        .store
        .clone()
        .unwrap_or_else(|| PathBuf::from("/root/snapshots"));
    let system = crate::engine::System::new(&root, super::under(&root, &store));
    let req = crate::offsite::InPlaceRequest {
        point: id,
        protect: protect(cli, &config),
        checksum: cli.checksum,
    };
    let plan = system.plan_restore_from(remote, &req, progress_bar().as_ref())?;
    let where_ = root.display().to_string();
    print_plan(cli, &plan, &[], &where_);
    if cli.dry_run {
        return Ok(SUCCESS);
    }
    if !cli.yes {
        outln!("ARE YOU SURE? THIS WILL REVERT {where_} TO POINT {id} OF {url}!");
        outln!("No restore point of the current state is taken: the store is remote. Running the same restore again finishes an interrupted one.");
        let answer: Result<String, _> = dialoguer::Input::new()
            .with_prompt(format!(
                "To continue and revert {where_} to point {id}, type 'yes' "
            ))
            .allow_empty(true)
            .interact_text();
        if !matches!(answer, Ok(a) if a.trim() == "yes") {
            return Ok(cancelled());
        }
    }
    let r = system.restore_from(remote, &plan, progress_bar().as_ref())?;
    if cli.json {
        print_json("report", &r);
    } else {
        outln!(
            "Restored point {id} of {url} into {where_}: {} created, {} rewritten, {} deleted, {} metadata fixed, {} written",
            r.created, r.rewritten, r.deleted, r.metadata, size(r.bytes_written)
        );
        outln!("Reboot so that running programs use the restored files.");
    }
    Ok(report_end(
        &r,
        id,
        &format!("their content in {url} is damaged or missing"),
        &format!("system_snapshot verify --store {url}"),
    ))
}

/// What a restore never writes or deletes besides the point's exclusions: the configured
/// database directories and the `--keep` paths.
fn protect(cli: &Cli, config: &crate::config::Config) -> Vec<String> {
    config
        .database_locations
        .iter()
        .chain(&cli.keep)
        .cloned()
        .collect()
}

/// Prints a restore's warnings, one line each, but for the owners a restore by another user
/// than root cannot set: those are one line for all, or a restore of a whole tree as a user
/// prints a warning for every entry it wrote.
fn print_warnings<'a>(warnings: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut owners: Vec<&str> = Vec::new();
    for (path, message) in warnings {
        if message.starts_with("owner ") && message.ends_with("(not running as root)") {
            owners.push(path);
        } else {
            eprintln!("warning: {path}: {message}");
        }
    }
    if !owners.is_empty() {
        let shown: Vec<&str> = owners.iter().take(5).copied().collect();
        eprintln!(
            "warning: {} entries belong to this user (uid {}) instead of their recorded owners: only root can give files away ({}{}). Run the restore as root to restore the owners",
            owners.len(),
            rustix::process::geteuid().as_raw(),
            shown.join(", "),
            if owners.len() > shown.len() { ", …" } else { "" }
        );
    }
}

/// Prints a restore's warnings and damaged paths; its exit code.
fn report_end(r: &crate::restore::RestoreReport, id: PointId, why: &str, verify: &str) -> i32 {
    print_warnings(
        r.warnings
            .iter()
            .map(|w| (w.path.as_str(), w.message.as_str())),
    );
    for d in &r.damaged {
        eprintln!("DAMAGED {}: {}", d.path, d.problem);
    }
    if !r.damaged.is_empty() {
        eprintln!(
            "{} path(s) of point {id} were not restored: {why}; everything else was. Run `{verify}` to see everything affected.",
            r.damaged.len()
        );
        return DAMAGED;
    }
    if r.warnings.is_empty() {
        SUCCESS
    } else {
        WARNINGS
    }
}

/// From a remote store: into a new directory (`--target`), or in place (`--root`), with
/// `--point` named.
fn restore_remote(cli: &Cli, url: &str) -> Result<i32, crate::error::Error> {
    let unsupported = [
        (
            cli.dry_run && cli.target.is_some(),
            "--dry-run with --target",
        ),
        (!cli.paths.is_empty(), "--path"),
        (
            cli.checksum && cli.target.is_some(),
            "--checksum with --target",
        ),
        (cli.skip_damaged, "--skip-damaged"),
        (cli.boot || cli.boot_only, "--boot"),
        (cli.no_safety_point, "--no-safety-point"),
    ];
    if let Some((_, flag)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(crate::error::Error::Usage(format!(
            "{flag} does not go with a remote store yet: a restore from one writes a whole point into a new directory (--point ID --target DIR) or onto the system (--point ID, --root DIR)"
        )));
    }
    let Some(sel) = cli.point else {
        return Err(crate::error::Error::Usage(
            "a restore from a remote store needs --point ID (`system_snapshot list --store URL` lists them)".into(),
        ));
    };
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !terminal && !cli.yes && !cli.dry_run {
        return Ok(refuse(
            NEEDS_CONFIRMATION,
            "no terminal to ask on; confirm on the command line: --yes (or --dry-run to see the plan)",
        ));
    }
    let remote = cli.place.remote(url)?;
    let id = sel.remote(&remote)?;
    let Some(target) = cli.target.as_ref() else {
        return restore_remote_in_place(cli, &remote, id);
    };
    let r = crate::offsite::restore(&remote, id.0, target, &std::env::temp_dir())?;
    if cli.json {
        print_json("report", &r);
    } else {
        outln!(
            "Restored point {id} from {} into {}: {} entries, {}",
            remote.url,
            target.display(),
            r.entries,
            super::render::size(r.bytes)
        );
    }
    print_warnings(
        r.warnings
            .iter()
            .map(|w| (w.path.as_str(), w.message.as_str())),
    );
    Ok(if r.warnings.is_empty() {
        SUCCESS
    } else {
        WARNINGS
    })
}

pub fn main() -> i32 {
    raise_fd_limit();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return parse_failed(e),
    };
    super::JSON_ERRORS.store(cli.json, std::sync::atomic::Ordering::Relaxed);
    run(&cli).unwrap_or_else(|e| fail(&e))
}

fn run(cli: &Cli) -> Result<i32, crate::error::Error> {
    if let (true, Some(device)) = (cli.bare_metal, cli.device.as_deref()) {
        return restore_bare_metal(cli, device);
    }
    if (cli.device.is_some() || cli.with_partition_table) && !(cli.boot || cli.boot_only) {
        return Err(crate::error::Error::Usage(
            "--device and --with-partition-table go with --boot or --boot-only".into(),
        ));
    }
    if let Some(url) = remote_url(cli) {
        return restore_remote(cli, url);
    }
    let (system, config) = cli.place.system()?;
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !terminal && (cli.point.is_none() || (!cli.yes && !cli.dry_run)) {
        return Ok(refuse(
            NEEDS_CONFIRMATION,
            "no terminal to ask on; name the point and confirm on the command line: --point ID --yes (or --dry-run to see the plan)",
        ));
    }
    if let Some(t) = &cli.target {
        crate::restore::check_target(&system.store, t)?;
    }
    let paths = cli
        .paths
        .iter()
        .map(|p| source_rel(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut store = system.open_store()?;
    let id = match cli.point {
        Some(sel) => sel.local(&store)?,
        None => match choose_point(&store, &config.database_locations)? {
            Some(id) => id,
            None => {
                return Ok(cancelled());
            }
        },
    };
    let boot_plans = if cli.boot || cli.boot_only {
        system.plan_boot(
            &store,
            id,
            cli.device.as_deref(),
            config.boot.device.as_deref(),
            cli.with_partition_table,
        )?
    } else {
        Vec::new()
    };
    let req = RestoreRequest {
        point: id,
        target: cli.target.clone(),
        paths,
        safety_point: !cli.no_safety_point,
        protect: protect(cli, &config),
        boot: crate::boot::restore::safety_source(&boot_plans, config.boot.source()),
        checksum: cli.checksum,
        skip_damaged: cli.skip_damaged,
    };
    let mut plan = if cli.boot_only {
        RestorePlan {
            point: id,
            ..Default::default()
        }
    } else {
        system.plan_restore_with(&store, &req, progress_bar().as_ref())?
    };
    // In place, damage is found before the question (and shown by --dry-run): the restore
    // would refuse it later, before its first write, anyway.
    if cli.target.is_none() && !plan.is_empty() {
        system.check_plan(&store, &mut plan, progress_bar().as_ref())?;
    }
    let where_ = cli
        .target
        .as_ref()
        .unwrap_or(&system.root)
        .display()
        .to_string();
    print_plan(cli, &plan, &boot_plans, &where_);
    if boot_plans.is_empty() && !cli.json {
        warn_boot_mismatch(&system, &store, &config, &plan);
    }
    if !plan.damaged.is_empty() && !cli.dry_run && !cli.skip_damaged {
        return Err(crate::restore::damaged_refusal(id, &plan.damaged));
    }
    if cli.dry_run {
        return Ok(if plan.damaged.is_empty() {
            SUCCESS
        } else {
            DAMAGED
        });
    }
    if !cli.yes && !confirm(cli, id, &where_, &boot_plans) {
        return Ok(cancelled());
    }
    let progress = progress_bar();
    let outcome = system.restore(&mut store, &req, &plan, &boot_plans, progress.as_ref())?;
    let r = &outcome.report;
    if cli.json {
        print_json("outcome", &outcome);
    } else {
        if let Some(j) = &outcome.resumed {
            outln!(
                "Finished the restore of point {id} that was interrupted (started {}).",
                j.started_at
            );
        }
        for (dev, n) in &outcome.boot_written {
            if *n == 0 {
                outln!(
                    "The boot area of {} already matched point {id}.",
                    dev.display()
                );
            } else {
                outln!(
                    "Wrote point {id}'s boot area to {}: {}, read back and checked.",
                    dev.display(),
                    size(*n)
                );
            }
        }
        if !cli.boot_only {
            outln!(
                "Restored point {id} into {where_}: {} created, {} rewritten, {} deleted, {} metadata fixed, {} written",
                r.created, r.rewritten, r.deleted, r.metadata, size(r.bytes_written)
            );
        }
        if let Some(s) = outcome.safety_point {
            outln!("The state before this restore is restore point {s}: restore it to roll forward again.");
        }
        if cli.target.is_none() {
            outln!("Reboot so that running programs use the restored files.");
        }
    }
    Ok(report_end(
        r,
        id,
        "their stored content is damaged",
        "system_snapshot verify --full",
    ))
}

/// `Restore point 1: 12-11-2009 : at 15 hours, 25 min, and 29 seconds. ( 0 days, 0 hrs, 40 minutes ago)`
pub fn point_line(p: &Point, now: DateTime<Local>) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(&p.created_at) else {
        return format!("Restore point {}: {}", p.id, p.created_at);
    };
    let t = t.with_timezone(&Local);
    let ago = (now - t).num_minutes().max(0);
    let mut line = format!(
        "Restore point {}: {} : at {} hours, {} min, and {} seconds. ( {} days, {} hrs, {} minutes ago)",
        p.id,
        t.format("%m-%d-%Y"),
        t.format("%-H"),
        t.format("%-M"),
        t.format("%-S"),
        ago / 1440,
        ago / 60 % 24,
        ago % 60
    );
    if p.kind != crate::store::PointKind::Scheduled || p.label.is_some() {
        line.push_str(&format!(
            " [{}{}]",
            p.kind,
            p.label
                .as_ref()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        ));
    }
    line
}

/// Lists the points and asks for one until a listed number is given. None: the operator left.
fn choose_point(
    store: &Store,
    databases: &[String],
) -> Result<Option<PointId>, crate::error::Error> {
    let points = store.index.complete_points()?;
    if points.is_empty() {
        return Err(crate::error::Error::NoPoints);
    }
    let now = Local::now();
    outln!("Backups currently available:");
    for p in &points {
        outln!("{}", point_line(p, now));
    }
    outln!(
        "The current server time is {}",
        now.format("%a %b %e %H:%M:%S %Z %Y")
    );
    if databases.is_empty() {
        outln!("Database locations that will not be touched: none configured");
    } else {
        outln!(
            "Database locations that will not be touched: {}",
            databases.join(", ")
        );
    }
    loop {
        let answer: Result<String, _> = dialoguer::Input::new()
            .with_prompt(
                "Enter the number of the restore point to recover to (or press CTRL-C to exit)",
            )
            .allow_empty(true)
            .interact_text();
        let Ok(answer) = answer else { return Ok(None) };
        match answer.trim().parse::<PointId>() {
            Ok(n) if points.iter().any(|p| p.id == n) => return Ok(Some(n)),
            _ => outln!(
                "There is no restore point {:?}; enter one of the numbers listed above.",
                answer.trim()
            ),
        }
    }
}

/// Paths whose change decides whether the machine boots.
fn boot_critical(path: &[u8]) -> bool {
    let p = String::from_utf8_lossy(path);
    let under = |dir: &str| p == dir || p.starts_with(&format!("{dir}/"));
    under("boot")
        || under("lib/modules")
        || under("usr/lib/modules")
        || p == "etc/fstab"
        || under("etc/default/grub")
        || p == "etc/crypttab"
}

fn print_plan(cli: &Cli, plan: &RestorePlan, boot_plans: &[BootPlan], target: &str) {
    let s = plan.summary();
    let boot: Vec<String> = plan
        .items
        .iter()
        .filter(|it| boot_critical(&it.path))
        .map(|it| display_path(&it.path))
        .collect();
    if cli.json && cli.dry_run {
        let items: Vec<serde_json::Value> = plan
            .items
            .iter()
            .map(|it| serde_json::json!({"action": it.action, "path": display_path(&it.path)}))
            .collect();
        print_json(
            "plan",
            &serde_json::json!({"point": plan.point, "summary": s, "boot_critical": boot, "items": items, "boot_area": boot_plans, "damaged": plan.damaged}),
        );
        return;
    }
    print_boot_plan(boot_plans);
    if cli.boot_only {
        return;
    }
    outln!(
        "Plan for point {} into {target}: {} to create, {} to rewrite, {} to delete, {} metadata to fix, {} to write",
        plan.point, s.create, s.rewrite, s.delete, s.metadata, size(s.bytes_to_write)
    );
    for d in &plan.damaged {
        outln!(
            "DAMAGED {}: {} (its stored content cannot be rebuilt: it {})",
            d.path,
            d.problem,
            if cli.skip_damaged {
                "is left as it is (--skip-damaged)"
            } else {
                "stops this restore; --skip-damaged leaves it as it is"
            }
        );
    }
    if boot.is_empty() {
        outln!("Boot-critical paths among them: none");
    } else {
        outln!(
            "Boot-critical paths among them ({}): {}",
            boot.len(),
            boot.iter().take(12).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if cli.dry_run || cli.verbose {
        for it in &plan.items {
            let verb = match it.action {
                Action::Create => "create",
                Action::Rewrite => "rewrite",
                Action::Delete => "delete",
                Action::Metadata => "metadata",
            };
            outln!("  {verb:<8} {}", display_path(&it.path));
        }
    }
}

/// GRUB's boot code and core image must come from the same build as its modules in
/// /boot/grub: rolling /boot back without the boot area can leave `grub rescue>`. Says so
/// when the point's boot area differs from the disk's and the plan touches /boot.
fn warn_boot_mismatch(
    system: &crate::engine::System,
    store: &Store,
    config: &crate::config::Config,
    plan: &RestorePlan,
) {
    if !plan.items.iter().any(|it| it.path.starts_with(b"boot/")) {
        return;
    }
    let Ok(plans) = system.plan_boot(
        store,
        plan.point,
        None,
        config.boot.device.as_deref(),
        false,
    ) else {
        return;
    };
    for b in plans.iter().filter(|b| !b.is_noop()) {
        outln!(
            "Note: the boot area of {} differs from point {}'s, and this restore changes /boot: add --boot to restore both, so GRUB's boot code and its modules stay from the same build.",
            b.device.display(),
            plan.point
        );
    }
}

fn print_boot_plan(plans: &[BootPlan]) {
    for b in plans {
        outln!(
            "Boot area of point {} to {} (chosen by {}; captured from {}):",
            b.point,
            b.device.display(),
            b.chosen_by,
            b.captured_disk
        );
        for w in &b.writes {
            outln!(
                "  {:<40} at byte {:>10}, {:>9}: {}",
                w.name,
                w.offset,
                size(w.len),
                if w.differs {
                    "to write"
                } else {
                    "already equal"
                }
            );
        }
        if b.with_partition_table {
            if b.table_changes.is_empty() {
                outln!("  The partition table already matches the captured one.");
            } else {
                outln!(
                    "  The partition table will be written back, undoing: {}",
                    b.table_changes.join("; ")
                );
            }
        } else {
            outln!("  The disk signature and partition table (sector 0 from byte 440) are left as they are.");
        }
    }
}

fn confirm(cli: &Cli, id: PointId, target: &str, boot: &[BootPlan]) -> bool {
    for b in boot.iter().filter(|b| !b.is_noop()) {
        outln!(
            "THE BOOT AREA OF {} WILL BE OVERWRITTEN WITH POINT {id}'S.",
            b.device.display()
        );
    }
    let prompt = if cli.target.is_some() {
        format!("To continue and restore point {id} into {target}, type 'yes' ")
    } else {
        outln!("ARE YOU SURE? THIS WILL REVERT THE FILESYSTEM TO THIS POINT IN TIME!");
        if cli.no_safety_point {
            outln!("No restore point of the current state will be taken (--no-safety-point): there is no way back.");
        } else {
            outln!("A restore point of the current state is taken first: restoring it rolls the system forward again.");
        }
        "To continue and revert the system to a prior point in time, type 'yes' ".to_string()
    };
    let answer: Result<String, _> = dialoguer::Input::new()
        .with_prompt(prompt)
        .allow_empty(true)
        .interact_text();
    matches!(answer, Ok(a) if a.trim() == "yes")
}
