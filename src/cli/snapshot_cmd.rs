//! `system_snapshot`: take a point (default), or list / show / verify / prune.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

use super::render::{rfc3339, size, when, when_created};
use super::*;
use crate::delta::Level;
use crate::engine::{PathChange, System};
use crate::paths::source_rel;
use crate::snapshot::SnapshotOptions;
use crate::store::{PointId, PointKind};

#[derive(Parser, Debug)]
#[command(
    name = "system_snapshot",
    version,
    about = "Record a restore point of this machine's filesystems"
)]
struct Cli {
    #[command(flatten)]
    place: Place,
    #[command(flatten)]
    selection: Selection,
    /// A note stored with the point
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,
    /// Machine-readable output
    #[arg(long, global = true)]
    json: bool,
    /// Print only warnings and errors (what cron and the timer want: mail only when something
    /// is wrong)
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Also list each path the new point recorded as added, modified, deleted or changed in
    /// metadata only (what `show ID` lists)
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    verbose: bool,
    /// zstd level for new frames (1-19; 9 by default)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
    level: Option<i32>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

/// What a snapshot (or an audit of one) records: taken by the snapshot itself and by `audit`
/// only, so that no other subcommand accepts them silently.
#[derive(clap::Args, Debug, Default, Clone)]
struct Selection {
    /// A directory to record, relative to the root (repeatable; default: /)
    #[arg(long = "source", value_name = "PATH")]
    sources: Vec<String>,
    /// Leave out paths matching GLOB (`/tmp` anchored at the root, `*.pid` anywhere); repeatable
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a commented example of /etc/system_snapshots.conf
    ConfigExample,
    /// What is NOT backed up: excluded paths with their sizes and rules, mounts not crossed
    Audit {
        #[command(flatten)]
        selection: Selection,
    },
    /// List the complete points, oldest first
    List,
    /// What a point changed against the point before it
    Show { id: PointId },
    /// A point's directory (or one path), listed as `ls -l` does, without restoring it
    Ls {
        id: PointId,
        /// A path of the point (default: its root)
        #[arg(default_value = "/")]
        path: String,
    },
    /// One file of a point, its content to standard output (checked against its hash)
    Cat { id: PointId, path: String },
    /// A point (or every point: `all`) as a read-only filesystem on DIR, until it is
    /// unmounted (umount DIR, or Ctrl-C here); content is checked against its hash
    Mount {
        /// A point id, or `all` (one directory per point, named by its id)
        #[arg(value_name = "ID|all")]
        point: String,
        /// An empty directory
        dir: std::path::PathBuf,
        /// Let other users in (the recorded modes still apply; not root: needs
        /// user_allow_other in /etc/fuse.conf)
        #[arg(long)]
        allow_other: bool,
    },
    /// A point (or the subtree at PATH) as a tar stream (pax, with xattrs, ACLs, hardlinks,
    /// devices, sparse files, long names) to standard output: extract it with
    /// `tar -xp --xattrs --xattrs-include='*' --acls --numeric-owner -f FILE -C DIR`
    Export {
        id: PointId,
        /// A path of the point (default: its root); names in the archive are `./` and the
        /// path, as the point has it (`./etc/passwd`)
        #[arg(default_value = "/")]
        path: String,
    },
    /// Which points hold a path matching PATTERN (`/etc/*.conf` from the root, `*.conf` a
    /// name anywhere), with sizes and times
    Find { pattern: String },
    /// What changed between two points, or between a point and the live system
    Diff {
        id: PointId,
        /// A second point id, then paths (/etc/fstab …) to limit the diff to
        #[arg(value_name = "ID2|PATH")]
        rest: Vec<String>,
    },
    /// Give a point a label after the fact (an empty TEXT removes it)
    Label { id: PointId, text: String },
    /// Check the store: the replica against the index; with --full every older version too
    Verify {
        #[arg(long)]
        full: bool,
    },
    /// Rebuild a lost or damaged index.db from index.log (or a damaged index.log from the
    /// index), then verify everything
    Repair {
        /// Rebuild the index from the log even when it reads back whole
        #[arg(long)]
        force: bool,
    },
    /// Copy every complete point that is not there yet to a remote store (s3://BUCKET/PREFIX,
    /// credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, endpoint from
    /// AWS_ENDPOINT_URL; or file:///DIR)
    Push {
        /// The remote store (default: the config's [offsite] url)
        #[arg(long, value_name = "URL")]
        to: Option<String>,
    },
    /// Take a point before a package operation, once per apt run (what the apt hook in
    /// /etc/apt/apt.conf.d runs; never fails apt)
    AptHook,
    /// Write the man pages and shell completions into DIR (for packaging)
    #[command(hide = true)]
    GenerateAssets { dir: std::path::PathBuf },
    /// Pin a point: retention never removes it, and `prune ID` refuses it
    Pin { id: PointId },
    /// Unpin a point: retention may remove it again
    Unpin { id: PointId },
    /// Apply retention now: each point kept or removed, and the rule that decided; or remove
    /// the points given, from anywhere in the history (each one's changes are merged into the
    /// next point, so every other point restores as before)
    Prune {
        /// Points to remove (not the latest, not a pinned one)
        #[arg(value_name = "ID", conflicts_with = "oldest")]
        ids: Vec<PointId>,
        /// Remove the N oldest points (pinned ones are skipped) instead of applying the
        /// retention policy
        #[arg(long, value_name = "N")]
        oldest: Option<usize>,
        /// Say what would be removed, and why, without removing anything
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn main() -> i32 {
    raise_fd_limit();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return parse_failed(e),
    };
    super::JSON_ERRORS.store(cli.json, std::sync::atomic::Ordering::Relaxed);
    // A remote store has no system or config of its own to read.
    if let Some(url) = remote_url(&cli) {
        let remote = match &cli.cmd {
            Some(Cmd::List) => Some(list_remote(&cli, &url)),
            Some(Cmd::Verify { .. }) => Some(verify_remote(&cli, &url)),
            _ => None,
        };
        if let Some(r) = remote {
            return r.unwrap_or_else(|e| fail(&e));
        }
    }
    if let Some(Cmd::GenerateAssets { dir }) = &cli.cmd {
        return match super::assets::generate(dir) {
            Ok(()) => SUCCESS,
            Err(e) => fail(&crate::error::Error::io(
                format!(
                    "writing the man pages and completions into {}",
                    dir.display()
                ),
                e,
            )),
        };
    }
    if matches!(cli.cmd, Some(Cmd::AptHook)) {
        // apt must go on whatever happens here: every failure is a warning and exit 0.
        let outcome = cli
            .place
            .system()
            .and_then(|(system, config)| apt_hook(&cli, &system, &config))
            .unwrap_or_else(|e| {
                apt_warning(format!(
                    "no restore point before this package operation: {e}"
                ))
            });
        if cli.json {
            print_json("apt_hook", &outcome);
        }
        return SUCCESS;
    }
    // The snapshot's own flags, given before another subcommand's name, would be ignored.
    let snapshot_flags = !cli.selection.sources.is_empty()
        || !cli.selection.excludes.is_empty()
        || cli.label.is_some()
        || cli.level.is_some();
    if snapshot_flags && !matches!(cli.cmd, None | Some(Cmd::Audit { .. })) {
        let why = "--source, --exclude, --label and --level are the snapshot's own (and --source, --exclude audit's): this subcommand does not take them";
        return fail(&crate::error::Error::Usage(why.into()));
    }
    let (system, config) = match cli.place.system() {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let result = match &cli.cmd {
        None => take(&cli, &system, &config),
        Some(Cmd::Audit { selection }) => audit(&cli, selection, &system, &config),
        Some(Cmd::ConfigExample) => {
            if cli.json {
                print_json(
                    "example",
                    &serde_json::json!({ "example": crate::config::EXAMPLE }),
                );
            } else {
                out!("{}", crate::config::EXAMPLE);
            }
            Ok(SUCCESS)
        }
        Some(Cmd::List) => list(&cli, &system),
        Some(Cmd::Push { to }) => match to.as_ref().or(config.offsite.url.as_ref()) {
            Some(url) => push(&cli, &system, url, &config.offsite),
            None => Err(crate::error::Error::Usage(
                "push needs a remote store: --to s3://BUCKET/PREFIX (or file:///DIR), or `url` in the config's [offsite] section".into(),
            )),
        },
        Some(Cmd::AptHook | Cmd::GenerateAssets { .. }) => unreachable!("handled above"),
        Some(Cmd::Show { id }) => show(&cli, &system, *id),
        Some(Cmd::Ls { id, path }) => ls(&cli, &system, *id, path),
        Some(Cmd::Cat { id, path }) => cat(&system, *id, path),
        Some(Cmd::Export { id, path }) => export(&cli, &system, *id, path),
        Some(Cmd::Find { pattern }) => find(&cli, &system, pattern),
        Some(Cmd::Label { id, text }) => label(&cli, &system, *id, text),
        Some(Cmd::Mount {
            point,
            dir,
            allow_other,
        }) => mount(&cli, &system, point, dir, *allow_other),
        Some(Cmd::Verify { full }) => verify(&cli, &system, *full),
        Some(Cmd::Repair { force }) => repair(&cli, &system, *force),
        Some(Cmd::Diff { id, rest }) => diff(&cli, &system, *id, rest),
        Some(Cmd::Pin { id }) => pin(&cli, &system, *id, true),
        Some(Cmd::Unpin { id }) => pin(&cli, &system, *id, false),
        Some(Cmd::Prune {
            ids,
            oldest: Some(n),
            dry_run,
        }) if ids.is_empty() => prune(&cli, &system, *n, *dry_run),
        Some(Cmd::Prune { ids, dry_run, .. }) if !ids.is_empty() => {
            prune_points(&cli, &system, ids, *dry_run)
        }
        Some(Cmd::Prune { dry_run, .. }) => prune_policy(&cli, &system, &config, *dry_run),
    };
    result.unwrap_or_else(|e| fail(&e))
}

type CmdResult = Result<i32, crate::error::Error>;

/// The command's clap definition, for the man page and completions.
pub(super) fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// One point per apt run, none when the newest is younger than `[apt] min_interval`, taken
/// by a child `system_snapshot -q` that apt waits for at most `[apt] timeout`.
fn apt_hook(
    cli: &Cli,
    system: &System,
    config: &Config,
) -> Result<crate::apt::Outcome, crate::error::Error> {
    use crate::apt::Outcome;
    let label = match crate::apt::decide(config.apt.min_interval.0, || {
        system.list().unwrap_or_default()
    }) {
        crate::apt::Decision::Take { label } => label,
        crate::apt::Decision::Skip(skip) => {
            print_skip(&skip);
            return Ok(Outcome::Skipped(skip));
        }
    };
    let exe = crate::boot::kit::source()?;
    let mut c = std::process::Command::new(&exe);
    {
        use std::os::unix::process::CommandExt;
        c.arg0("system_snapshot").process_group(0);
    }
    c.args(["-q", "--label", &label]);
    if let Some(f) = &cli.place.config {
        c.arg("-c").arg(f);
    }
    c.arg("--root").arg(&system.root);
    c.arg("--store").arg(&system.store);
    c.stdin(std::process::Stdio::null());
    if cli.json {
        // stdout holds the one JSON document: whatever the snapshot prints is for people.
        let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned();
        c.stdout(stderr.map_err(|e| crate::error::Error::io("duplicating stderr", e))?);
    }
    let mut child = c
        .spawn()
        .map_err(|e| crate::error::Error::io(format!("starting {}", exe.display()), e))?;
    let timeout = config.apt.timeout.0;
    Ok(match crate::hooks::wait_until(&mut child, timeout) {
        Ok(st) if st.success() || st.code() == Some(WARNINGS) => {
            let point = system.list().unwrap_or_default().last().map(|p| p.id);
            let warnings = !st.success();
            if warnings {
                eprintln!("restorepoint: restore point taken {label}, with the warnings above")
            } else {
                eprintln!(
                    "restorepoint: restore point {} taken {label}",
                    point.map_or("?".to_string(), |i| i.to_string())
                );
            }
            Outcome::Taken {
                point,
                label,
                warnings,
            }
        }
        Ok(st) => apt_warning(format!(
            "the restore point {label} failed ({st}); apt goes on"
        )),
        Err(why) => apt_warning(format!(
            "the restore point {label} {why}; apt goes on (the next run rolls the unfinished point back)"
        )),
    })
}

/// A warning of the apt hook: said on stderr, where apt shows it, and kept for `--json`.
fn apt_warning(message: String) -> crate::apt::Outcome {
    eprintln!("restorepoint: warning: {message}");
    crate::apt::Outcome::Warning { message }
}

/// Why the apt hook took no point, on stderr (apt shows it): nothing for a second dpkg call.
fn print_skip(skip: &crate::apt::Skip) {
    match skip {
        crate::apt::Skip::SameRun => {}
        crate::apt::Skip::NoPointYet => eprintln!("restorepoint: no restore point yet, so none is taken before this package operation; the first comes from the timer (or run system_snapshot)"),
        crate::apt::Skip::Recent { point, minutes } => eprintln!(
            "restorepoint: restore point {point} is {minutes} min old: none taken before this package operation ([apt] min_interval)"
        ),
    }
}

/// A snapshot run, told to the machine's monitoring (syslog, status file, Prometheus
/// textfile) however it ends.
fn take(cli: &Cli, system: &System, config: &Config) -> CmdResult {
    let started = std::time::Instant::now();
    let result = take_point(cli, system, config);
    let exit_code = match &result {
        Ok((code, _)) => *code,
        Err(e) => exit_code_for(e),
    };
    let problems = config.monitoring.report_snapshot(
        &system.store,
        result.as_ref().map(|(_, r)| r),
        exit_code,
        started.elapsed().as_secs_f64(),
    );
    for p in problems {
        eprintln!("warning: monitoring: {p}");
    }
    result.map(|(code, _)| code)
}

fn take_point(
    cli: &Cli,
    system: &System,
    config: &Config,
) -> Result<(i32, crate::snapshot::SnapshotReport), crate::error::Error> {
    let opts = snapshot_options(cli, &cli.selection, config, &system.root)?;
    crate::store::check_access(&system.store, true)?;
    let policy = config.retention.policy();
    let started = std::time::Instant::now();
    if !cli.json && !cli.quiet {
        print_preamble(system, &policy, &config.database_locations);
    }
    let progress = progress_bar();
    let hooked = system.take(
        &opts,
        &policy,
        config.boot.kit,
        &config.hooks,
        progress.as_ref(),
    );
    let hook_warnings = hooked.warnings;
    let (r, decisions) = match hooked.result {
        Ok(v) => v,
        Err(e) => {
            for w in &hook_warnings {
                eprintln!("warning: {w}");
            }
            return Err(e);
        }
    };
    let removed: Vec<&crate::retention::Decision> = decisions.iter().filter(|d| d.remove).collect();
    let secs = started.elapsed().as_secs_f64();
    if cli.json {
        let mut v = serde_json::to_value(&r).expect("report serializes");
        v["retention"] = serde_json::to_value(&decisions).expect("decisions serialize");
        v["seconds"] = serde_json::json!(secs);
        print_json("report", &v);
    } else if !cli.quiet {
        let changed = r.added + r.modified + r.deleted + r.metadata_only;
        outln!(
            "Restore point {} recorded: {} entries ({}), {} changed ({} added, {} modified, {} deleted, {} metadata only), {} stored",
            r.point, r.files, size(r.bytes), changed, r.added, r.modified, r.deleted, r.metadata_only, size(r.stored_bytes)
        );
        if cli.verbose {
            print_changes(&system.show(r.point)?, true);
        }
        for b in &r.boot {
            outln!("Boot area recorded: {b}");
        }
        if let Some(n) = &r.boot_note {
            outln!("Note: {n}");
        }
        for d in &removed {
            outln!("Removed restore point {}: {}", d.id, d.reason);
        }
        outln!(
            "Done in {secs:.1} s: {} entries scanned, {changed} changed, {} stored, {} point{} removed",
            r.files,
            size(r.stored_bytes),
            removed.len(),
            if removed.len() == 1 { "" } else { "s" }
        );
    }
    for w in &r.warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    for w in &hook_warnings {
        eprintln!("warning: {w}");
    }
    let pruned: Vec<_> = decisions.iter().flat_map(|d| &d.warnings).collect();
    for w in &pruned {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    let code = if r.warnings.is_empty() && hook_warnings.is_empty() && pruned.is_empty() {
        SUCCESS
    } else {
        WARNINGS
    };
    Ok((code, r))
}

/// The snapshot's settings: flags over the config file over the defaults.
fn snapshot_options(
    cli: &Cli,
    sel: &Selection,
    config: &Config,
    root: &std::path::Path,
) -> Result<SnapshotOptions, crate::error::Error> {
    let sources = crate::selection::sources(
        root,
        &sel.sources,
        &config.sources,
        config.boot.capture && config.one_file_system,
    )?;
    let excludes =
        crate::selection::excludes(&config.exclude, &config.database_locations, &sel.excludes);
    // A run from a terminal is someone's decision; one from cron is the schedule's.
    let kind = if std::io::stdin().is_terminal() {
        PointKind::Manual
    } else {
        PointKind::Scheduled
    };
    let opts = SnapshotOptions {
        sources,
        excludes,
        one_file_system: config.one_file_system,
        kind,
        label: cli.label.clone(),
        level: cli.level.map(Level).unwrap_or_default(),
        admission: Some(config.retention.policy()),
        boot: config.boot.source(),
        kit_bytes: 0, // measured by the engine once the store is open
    };
    Ok(opts)
}

fn audit(cli: &Cli, selection: &Selection, system: &System, config: &Config) -> CmdResult {
    // Given before or after `audit`.
    let mut sel = cli.selection.clone();
    sel.sources.extend(selection.sources.iter().cloned());
    sel.excludes.extend(selection.excludes.iter().cloned());
    let opts = snapshot_options(cli, &sel, config, &system.root)?;
    let store = crate::paths::within(&system.root, &system.store);
    let r = crate::audit::audit(&system.root, store, &opts)?;
    if cli.json {
        print_json("report", &r);
    } else {
        outln!("Not backed up ({} paths):", r.excluded.len());
        for e in &r.excluded {
            let bytes = match (e.disk_bytes, e.bytes) {
                (Some(d), Some(a)) if a > d + d / 10 || d > a + a / 10 => {
                    format!("{} on disk ({} apparent)", size(d), size(a))
                }
                (Some(d), _) => format!("{} on disk", size(d)),
                _ => "another filesystem".into(),
            };
            outln!("  {:<40} {:>34}  rule {}", e.path, bytes, e.rule);
        }
        if !r.mounts_not_crossed.is_empty() {
            outln!("Mounts not crossed (list them as sources to record them):");
            for m in &r.mounts_not_crossed {
                outln!("  {m}");
            }
        }
        for w in &r.warnings {
            outln!("WARNING: {w}");
        }
    }
    Ok(if r.warnings.is_empty() {
        SUCCESS
    } else {
        WARNINGS
    })
}

/// What the original tool printed before a scheduled snapshot.
fn print_preamble(system: &System, policy: &crate::retention::Policy, databases: &[String]) {
    let b = system.budget(policy);
    match b.ceiling {
        Some(c) => {
            let verdict = if c.over {
                "over it: retention will remove points"
            } else {
                "within it"
            };
            outln!(
                "Current size of the store {}: {} of data and history (ceiling {} × {} replica + 1 MiB = {}: {verdict})",
                system.store.display(),
                size(b.used),
                policy.ceiling_ratio,
                size(c.replica),
                size(c.bytes)
            );
        }
        None => outln!(
            "Current size of the store {}: {} (no restore point yet)",
            system.store.display(),
            size(b.used)
        ),
    }
    outln!(
        "Retention: at least {} points are kept; none younger than {} is removed; the oldest go while the store exceeds {} × the latest point's data",
        policy.min_points,
        crate::retention::human(policy.age_floor),
        policy.ceiling_ratio
    );
    if databases.is_empty() {
        outln!("Databases excluded: none configured");
    } else {
        outln!(
            "Databases excluded (to be dumped by their own jobs): {}",
            databases.join(", ")
        );
    }
    outln!(
        "Taking snapshot at {}",
        chrono::Local::now().format("%b-%d-%Y--%Hhrs.%Mmin")
    );
}

/// `--store` naming a remote store (s3://, file://) instead of a directory.
fn remote_url(cli: &Cli) -> Option<String> {
    let s = cli.place.store.as_ref()?.to_str()?;
    (s.starts_with("s3://") || s.starts_with("file://")).then(|| s.to_string())
}

fn push(cli: &Cli, system: &System, to: &str, conf: &crate::config::Offsite) -> CmdResult {
    let keep = conf.keep_points.map(|k| k.0);
    let remote = crate::offsite::Remote::open_with(to, conf.credentials.as_deref())?;
    let store = system.open_store()?;
    let r = crate::offsite::push(&store, &remote, keep)?;
    let expired = match keep {
        Some(k) => {
            // Pinned here, kept there too: a pin is the operator's "never remove this one".
            let pinned = store
                .index
                .complete_points()?
                .iter()
                .filter(|p| p.pinned)
                .map(|p| p.id.0)
                .collect();
            Some(crate::offsite::expire(
                &remote,
                k,
                &pinned,
                &std::env::temp_dir(),
            )?)
        }
        None => None,
    };
    if cli.json {
        let mut v = serde_json::to_value(&r).expect("report serializes");
        v["expired"] = serde_json::to_value(&expired).expect("report serializes");
        print_json("push", &v);
    } else {
        outln!(
            "Pushed {} point(s) to {} ({} already there): {} new contents, {} objects, {}",
            r.pushed.len(),
            remote.url,
            r.already.len(),
            r.contents,
            r.objects,
            size(r.bytes)
        );
        if let Some(e) = expired.filter(|e| !e.points.is_empty() || e.bundles > 0) {
            outln!(
                "Removed from {} (keep_points): point(s) {:?}, {} bundles ({}), {} catalogs",
                remote.url,
                e.points,
                e.bundles,
                size(e.bytes),
                e.catalogs
            );
        }
    }
    Ok(SUCCESS)
}

fn verify_remote(cli: &Cli, url: &str) -> CmdResult {
    let remote = cli.place.remote(url)?;
    let r = crate::offsite::verify(&remote, &std::env::temp_dir())?;
    if cli.json {
        print_json("report", &r);
    } else {
        for d in &r.damaged {
            outln!("DAMAGED: {d}");
        }
        outln!(
            "Checked {} points, {} contents and {} bundles in {}: {}",
            r.points,
            r.contents,
            r.bundles,
            remote.url,
            if r.damaged.is_empty() {
                "all intact".to_string()
            } else {
                format!("{} damaged", r.damaged.len())
            }
        );
    }
    Ok(if r.damaged.is_empty() {
        SUCCESS
    } else {
        DAMAGED
    })
}

fn list_remote(cli: &Cli, url: &str) -> CmdResult {
    let remote = cli.place.remote(url)?;
    let points = crate::offsite::list(&remote, &std::env::temp_dir())?;
    if cli.json {
        print_json("points", &points);
        return Ok(SUCCESS);
    }
    // A remote holds content, not this store's reverse deltas: no STORED column.
    points_table(points.into_iter().map(|p| PointRow {
        id: p.id,
        created: when_created(&p.created_at),
        kind: p.kind,
        files: p.files,
        bytes: p.bytes,
        stored: None,
        label: p.label,
    }));
    Ok(SUCCESS)
}

fn list(cli: &Cli, system: &System) -> CmdResult {
    let points = system.list()?;
    // The data: the replica and the history. `total` would count the kit and the index too,
    // but only when the index records no usage (a walk then): the same store would change size
    // with a repair.
    let usage = system.usage()?;
    let data = usage.replica + usage.packs;
    if cli.json {
        print_json(
            "points",
            &serde_json::json!({
                "points": points,
                "store": {"disk_bytes": data, "replica_disk_bytes": usage.replica, "history_disk_bytes": usage.packs},
            }),
        );
        return Ok(SUCCESS);
    }
    points_table(points.into_iter().map(|p| PointRow {
        id: p.id.0,
        created: when_created(&p.created_at),
        kind: p.kind.to_string(),
        files: p.files,
        bytes: p.bytes,
        stored: Some(p.stored_bytes),
        // A pin matters when choosing what to prune: it shows where the label is read.
        label: match (p.pinned, p.label) {
            (true, Some(l)) => Some(format!("[pinned] {l}")),
            (true, None) => Some("[pinned]".into()),
            (false, l) => l,
        },
    }));
    // SIZE is what a point's files hold (as `ls` counts); what `du` and `df` see of the store
    // is its blocks, said once here.
    outln!(
        "Store {}: {} of data on disk ({} the latest state, {} the history of older points)",
        system.store.display(),
        size(data),
        size(usage.replica),
        size(usage.packs)
    );
    Ok(SUCCESS)
}

/// One line of `list`.
struct PointRow {
    id: i64,
    created: String,
    kind: String,
    files: u64,
    bytes: u64,
    stored: Option<u64>,
    label: Option<String>,
}

fn points_table(rows: impl Iterator<Item = PointRow>) {
    outln!(
        "{:>5}  {:<19}  {:<11}  {:>9}  {:>10}  {:>10}  LABEL",
        "ID",
        "CREATED",
        "KIND",
        "ENTRIES",
        "SIZE",
        "STORED"
    );
    for p in rows {
        outln!(
            "{:>5}  {:<19}  {:<11}  {:>9}  {:>10}  {:>10}  {}",
            p.id,
            p.created,
            p.kind,
            p.files,
            size(p.bytes),
            p.stored.map_or("-".to_string(), size),
            p.label.unwrap_or_default()
        );
    }
}

fn ls(cli: &Cli, system: &System, id: PointId, path: &str) -> CmdResult {
    let rel = crate::paths::source_rel(path)?;
    let store = crate::store::Store::open_for_reading(&system.store)?;
    let entries = crate::browse::list(&store, id, &rel)?;
    if cli.json {
        let v: Vec<serde_json::Value> = entries
            .iter()
            .map(|(p, e)| {
                serde_json::json!({
                    "path": crate::model::display_path(p),
                    "kind": e.kind.name(),
                    "mode": format!("{:04o}", e.mode & 0o7777),
                    "uid": e.uid,
                    "gid": e.gid,
                    "size": e.size,
                    "mtime": rfc3339(e.mtime.sec, e.mtime.nsec),
                    "target": e.target.as_ref().map(|t| String::from_utf8_lossy(t).into_owned()),
                    "link": e.link.as_ref().map(|l| crate::model::display_path(l)),
                })
            })
            .collect();
        print_json("ls", &serde_json::json!({"point": id.0, "entries": v}));
        return Ok(SUCCESS);
    }
    for (p, e) in &entries {
        let at = when(e.mtime.sec, e.mtime.nsec);
        let name = crate::model::basename(p);
        let mut line = format!(
            "{} {:>5} {:>5} {:>12} {at} {}",
            crate::browse::mode_string(e),
            e.uid,
            e.gid,
            e.size,
            String::from_utf8_lossy(if name.is_empty() { b"/" } else { name })
        );
        if let Some(t) = &e.target {
            line.push_str(&format!(" -> {}", String::from_utf8_lossy(t)));
        }
        if let Some(l) = &e.link {
            line.push_str(&format!(" (hardlink of {})", crate::model::display_path(l)));
        }
        outln!("{line}");
    }
    Ok(SUCCESS)
}

fn label(cli: &Cli, system: &System, id: PointId, text: &str) -> CmdResult {
    let p = system.set_label(id, text)?;
    if cli.json {
        print_json("point", &p);
    } else if !cli.quiet {
        match &p.label {
            Some(l) => outln!("Restore point {id} is labelled {l:?}."),
            None => outln!("Restore point {id} has no label now."),
        }
    }
    Ok(SUCCESS)
}

fn find(cli: &Cli, system: &System, pattern: &str) -> CmdResult {
    let store = crate::store::Store::open_for_reading(&system.store)?;
    let found = crate::browse::find(&store, pattern)?;
    if cli.json {
        let found: Vec<serde_json::Value> = found
            .iter()
            .map(|f| {
                serde_json::json!({
                    "point": f.point,
                    "path": f.path,
                    "kind": f.kind,
                    "size": f.size,
                    "mtime": rfc3339(f.mtime, 0),
                })
            })
            .collect();
        print_json("found", &serde_json::json!({ "found": found }));
    } else {
        for f in &found {
            let at = when(f.mtime, 0);
            outln!(
                "point {:>4}  {:>10}  {at}  {}{}",
                f.point,
                size(f.size),
                f.path,
                if f.kind == "file" {
                    String::new()
                } else {
                    format!(" ({})", f.kind)
                }
            );
        }
    }
    if found.is_empty() && !cli.json {
        eprintln!("No point holds a path matching {pattern:?}.");
    }
    Ok(SUCCESS)
}

fn mount(
    cli: &Cli,
    system: &System,
    point: &str,
    dir: &std::path::Path,
    allow_other: bool,
) -> CmdResult {
    use crate::mount::Points;
    let points = if point == "all" {
        Points::All
    } else {
        Points::One(point.parse().map_err(|_| {
            crate::error::Error::Usage(format!(
                "{point:?} is neither a point id nor `all`; `system_snapshot list` shows the points"
            ))
        })?)
    };
    let opts = crate::mount::MountOptions { allow_other };
    let mounted = crate::mount::mount(&system.store, points, dir, &opts)?;
    let what = match points {
        Points::One(id) => format!("Point {id}"),
        Points::All => "Every point".to_string(),
    };
    if cli.json {
        print_json(
            "mount",
            &serde_json::json!({
                "point": match points { Points::One(id) => serde_json::json!(id.0), Points::All => serde_json::json!("all") },
                "dir": mounted.dir(),
                "unmount": mounted.unmount_command(),
            }),
        );
    } else if !cli.quiet {
        outln!(
            "{what} of {} is mounted read-only on {}; to unmount: {} (or Ctrl-C here)",
            system.store.display(),
            mounted.dir().display(),
            mounted.unmount_command()
        );
    }
    mounted.serve()?;
    Ok(SUCCESS)
}

fn cat(system: &System, id: PointId, path: &str) -> CmdResult {
    let rel = crate::paths::source_rel(path)?;
    let store = crate::store::Store::open_for_reading(&system.store)?;
    let mut out = std::io::stdout().lock();
    crate::browse::cat(&store, id, &rel, &mut out)?;
    Ok(SUCCESS)
}

fn export(cli: &Cli, system: &System, id: PointId, path: &str) -> CmdResult {
    use crate::error::Error;
    // Standard output is the archive: nothing else may go there.
    if cli.json {
        return Err(Error::Usage(
            "export writes the tar archive to standard output, so --json has nowhere to go: leave it out".into(),
        ));
    }
    if std::io::stdout().is_terminal() {
        return Err(Error::Usage(format!(
            "export writes a tar archive, not text for a terminal: redirect it to a file (`system_snapshot export {id} {path} > point-{id}.tar`) or pipe it to tar (`| tar -xp --xattrs --xattrs-include='*' --acls --numeric-owner -f - -C DIR`)"
        )));
    }
    let rel = crate::paths::source_rel(path)?;
    let store = crate::store::Store::open_for_reading(&system.store)?;
    let stdout = std::io::stdout().lock();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout);
    let r = crate::export::write_tar(&store, id, &rel, &mut out)?;
    for w in &r.warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    for d in &r.damaged {
        eprintln!("DAMAGED {}: {}", d.path, d.problem);
    }
    if r.damaged.is_empty() {
        return Ok(if r.warnings.is_empty() {
            SUCCESS
        } else {
            WARNINGS
        });
    }
    let then = if r.store_changed {
        format!("the store was being written while it was read (a snapshot, prune, restore or repair held it), which can look like damage: export point {id} again, and if files are still damaged run `system_snapshot verify --full`")
    } else {
        "run `system_snapshot verify --full` to see everything affected".into()
    };
    eprintln!(
        "error: {} file(s) of point {id} could not be rebuilt and are not in the archive (the rest is complete); {then}",
        r.damaged.len()
    );
    Ok(DAMAGED)
}

fn show(cli: &Cli, system: &System, id: PointId) -> CmdResult {
    let c = system.show(id)?;
    if cli.json {
        print_json("show", &c);
        return Ok(SUCCESS);
    }
    let p = c.point.as_ref().expect("show returns its point");
    outln!(
        "Restore point {} ({}, {}{})",
        p.id,
        when_created(&p.created_at),
        p.kind,
        p.label
            .as_ref()
            .map(|l| format!(", {l}"))
            .unwrap_or_default()
    );
    for b in &c.boot {
        outln!("Boot area: {} (found by {})", b.summary(), b.found_by);
    }
    if let Some(n) = &c.boot_note {
        outln!("Boot area: none: {n}");
    }
    if c.initial {
        outln!(
            "The oldest point: its {} entries are its whole content.",
            c.added.len()
        );
    }
    print_changes(&c, !c.initial);
    Ok(SUCCESS)
}

/// A point's changes by kind, a path a line (`added`: also its added paths).
fn print_changes(c: &crate::engine::PointChanges, added: bool) {
    let section = |title: &str, items: &[PathChange]| {
        if items.is_empty() {
            return;
        }
        outln!("{title} ({}):", items.len());
        for i in items {
            outln!(
                "  {:<13} {:>10}  stored {:>10}  {}",
                i.kind,
                size(i.size),
                size(i.stored),
                i.path
            );
        }
    };
    if added {
        section("Added", &c.added);
    }
    section("Modified", &c.modified);
    section("Deleted", &c.deleted);
    section("Metadata only", &c.metadata_only);
}

fn diff(cli: &Cli, system: &System, a: PointId, rest: &[String]) -> CmdResult {
    let (b, paths) = match rest.first().and_then(|r| r.parse::<PointId>().ok()) {
        Some(b) => (Some(b), &rest[1..]),
        None => (None, rest),
    };
    let paths = paths
        .iter()
        .map(|p| source_rel(p))
        .collect::<Result<Vec<_>, _>>()?;
    let blocks = system.diff(a, b, &paths)?;
    if cli.json {
        let side = |e: &Option<crate::model::Entry>| {
            e.as_ref().map(|e| {
                serde_json::json!({
                    "kind": e.kind.name(),
                    "size": e.size,
                    "mode": format!("{:04o}", e.mode & 0o7777),
                    "uid": e.uid,
                    "gid": e.gid,
                    "mtime": rfc3339(e.mtime.sec, e.mtime.nsec),
                })
            })
        };
        let items: Vec<serde_json::Value> = blocks
            .iter()
            .map(|(it, text)| {
                serde_json::json!({
                    "path": crate::model::display_path(&it.path),
                    "change": it.change,
                    "old": side(&it.old),
                    "new": side(&it.new),
                    "text": text,
                })
            })
            .collect();
        print_json(
            "diff",
            &serde_json::json!({"from": a.0, "to": b.map(|b| b.0), "changes": items}),
        );
        return Ok(SUCCESS);
    }
    for (_, block) in &blocks {
        out!("{block}");
    }
    if blocks.is_empty() {
        outln!("No differences.");
    }
    Ok(SUCCESS)
}

fn repair(cli: &Cli, system: &System, force: bool) -> CmdResult {
    let (r, v) = system.repair(force)?;
    if cli.json {
        print_json("repair", &serde_json::json!({ "repair": r, "verify": v }));
    } else {
        if r.index_intact {
            outln!("index.db reads back whole: nothing to rebuild");
        } else if r.from_packs {
            outln!(
                "index.db rebuilt from the packs and the replica (index.log was missing or unusable): {} records, {} points ({})",
                r.records,
                r.points.len(),
                r.points.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            );
        } else {
            outln!(
                "index.db rebuilt from index.log: {} records, {} points ({})",
                r.records,
                r.points.len(),
                r.points
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if r.log_rewritten {
            outln!("index.log rewritten from the index");
        }
        if let Some(k) = &r.kept_damaged_index {
            outln!("The damaged index was kept as {}", k.display());
        }
        if !r.damaged_records.is_empty() {
            outln!(
                "NOT rebuilt: {} damaged stretches of index.log (at offsets {}); what they held is missing, see below",
                r.damaged_records.len(),
                r.damaged_records.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        for n in &r.not_rebuilt {
            outln!("NOT rebuilt: {n}");
        }
        for p in &r.moved_packs {
            outln!(
                "Moved {}: no point of the rebuilt index names it",
                p.display()
            );
        }
        print_verify(&v, true);
    }
    Ok(if !v.damage.is_empty() || !r.damaged_records.is_empty() {
        DAMAGED
    } else if !r.not_rebuilt.is_empty() {
        WARNINGS
    } else {
        SUCCESS
    })
}

fn verify(cli: &Cli, system: &System, full: bool) -> CmdResult {
    let r = system.verify_with(full, &|who| {
        eprintln!(
            "verify: found damage while {who} held the store for writing (a snapshot, prune, restore or repair), whose work in progress can look like damage: checking again when it ends"
        )
    })?;
    if cli.json {
        print_json("report", &r);
    } else {
        print_verify(&r, full);
    }
    Ok(if r.damage.is_empty() {
        SUCCESS
    } else {
        DAMAGED
    })
}

fn print_verify(r: &crate::verify::VerifyReport, full: bool) {
    for d in &r.damage {
        let at = d
            .point
            .map(|p| format!("point {p}"))
            .unwrap_or_else(|| "store".into());
        outln!("DAMAGED {at}: {}: {}", d.path, d.problem);
    }
    for id in &r.interrupted {
        match &r.writer {
            Some(who) => outln!(
                "Note: point {id} is incomplete while {who} holds the store for writing: it is that snapshot's point in progress, or an interrupted one the next writer rolls back; its paths were left out of the check"
            ),
            None => outln!("Note: point {id} was interrupted; the next snapshot rolls it back"),
        }
    }
    if r.store_changed && !r.damage.is_empty() {
        outln!(
            "Note: the store was being written each time it was checked; the damage above may be that writer's work in progress: run verify again when no snapshot runs"
        );
    }
    outln!(
        "Checked the index, {} points, {} replica files{}: {}",
        r.points_checked,
        r.replica_files,
        if full {
            format!(" and {} older versions", r.older_versions)
        } else {
            String::new()
        },
        if r.damage.is_empty() {
            "all intact".to_string()
        } else {
            format!("{} damaged", r.damage.len())
        }
    );
}

fn prune_policy(cli: &Cli, system: &System, config: &Config, dry_run: bool) -> CmdResult {
    let decisions = system.prune(&config.retention.policy(), dry_run)?;
    let warnings: Vec<_> = decisions.iter().flat_map(|d| &d.warnings).collect();
    let code = if warnings.is_empty() {
        SUCCESS
    } else {
        WARNINGS
    };
    if cli.json {
        print_json("decisions", &decisions);
        return Ok(code);
    }
    for d in &decisions {
        outln!("Restore point {}: {}", d.id, d.describe(dry_run));
    }
    for w in &warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    Ok(code)
}

fn pin(cli: &Cli, system: &System, id: PointId, pinned: bool) -> CmdResult {
    let p = system.set_pin(id, pinned)?;
    if cli.json {
        print_json("point", &p);
    } else if !cli.quiet {
        if pinned {
            outln!("Restore point {id} is pinned: retention keeps it until `system_snapshot unpin {id}`.");
        } else {
            outln!("Restore point {id} is not pinned now: retention may remove it.");
        }
    }
    Ok(SUCCESS)
}

fn prune_points(cli: &Cli, system: &System, ids: &[PointId], dry_run: bool) -> CmdResult {
    let (removed, stopped) = system.remove_points(ids, dry_run)?;
    if cli.json && stopped.is_none() {
        print_json("removed", &removed);
        return Ok(SUCCESS);
    }
    let verb = if dry_run { "Would remove" } else { "Removed" };
    for r in removed.iter().filter(|_| !cli.json) {
        let how = match r.merged_into {
            Some(s) => format!("its changes merged into point {s}"),
            None => "the oldest point".to_string(),
        };
        outln!(
            "{verb} restore point {} ({}): {how}",
            r.removed.id,
            when_created(&r.removed.created_at)
        );
    }
    if let Some(e) = stopped {
        let ids: Vec<PointId> = removed.iter().map(|r| r.removed.id).collect();
        return Ok(stopped_part_way(&e, &ids));
    }
    if !dry_run {
        let freed: i64 = removed.iter().map(|r| r.freed_bytes).sum();
        if freed >= 0 {
            outln!("Freed {} of history.", size(freed as u64));
        } else {
            outln!(
                "The history grew by {} (changes stored again against a newer point).",
                size(freed.unsigned_abs())
            );
        }
    }
    Ok(SUCCESS)
}

/// A removal that failed after others went: the error, naming the points already gone.
fn stopped_part_way(e: &crate::error::Error, removed: &[PointId]) -> i32 {
    let msg = match removed.len() {
        0 => e.to_string(),
        n => format!(
            "{e} (point {} {} removed before this)",
            removed
                .iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if n == 1 { "was" } else { "were" }
        ),
    };
    super::refuse(exit_code_for(e), &msg)
}

fn prune(cli: &Cli, system: &System, n: usize, dry_run: bool) -> CmdResult {
    let (removed, stopped) = system.remove_oldest(n, dry_run)?;
    if cli.json && stopped.is_none() {
        print_json("removed", &removed);
        return Ok(SUCCESS);
    }
    let verb = if dry_run { "Would remove" } else { "Removed" };
    for p in removed.iter().filter(|_| !cli.json) {
        outln!(
            "{verb} restore point {} ({}): oldest unpinned point, --oldest {n}",
            p.id,
            when_created(&p.created_at)
        );
    }
    if let Some(e) = stopped {
        let ids: Vec<PointId> = removed.iter().map(|p| p.id).collect();
        return Ok(stopped_part_way(&e, &ids));
    }
    if removed.len() < n {
        outln!("Kept the latest point and pinned points: --oldest never removes them.");
    }
    Ok(SUCCESS)
}
