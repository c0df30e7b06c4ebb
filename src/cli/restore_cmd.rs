//! `system_restore`: plan, show, confirm, apply.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;

use super::render::size;
use super::*;
use crate::exclude::DEFAULT_EXCLUDES;
use crate::model::display_path;
use crate::restore::{Action, RestorePlan};

#[derive(Parser, Debug)]
#[command(
    name = "system_restore",
    version,
    about = "Roll this machine, or a copy of it, back (or forward) to a restore point"
)]
struct Cli {
    #[command(flatten)]
    place: Place,
    /// The point to restore (its id, as `system_snapshot list` shows)
    #[arg(long, value_name = "ID")]
    point: Option<i64>,
    /// Materialize the point with DIR as its root instead of rolling the system back
    #[arg(long, value_name = "DIR")]
    target: Option<PathBuf>,
    /// Show the plan and change nothing
    #[arg(long)]
    dry_run: bool,
    /// Do not ask: this replaces typing `yes`
    #[arg(long)]
    yes: bool,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

pub fn main() -> i32 {
    raise_fd_limit();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { USAGE } else { SUCCESS };
        }
    };
    run(&cli).unwrap_or_else(|e| fail(&e))
}

fn run(cli: &Cli) -> Result<i32, crate::error::Error> {
    let system = cli.place.system();
    let Some(target) = cli.target.clone() else {
        eprintln!("error: restoring the running system in place is not available in this version; materialize the point with --target DIR");
        return Ok(USAGE);
    };
    let Some(id) = cli.point else {
        eprintln!("error: name the point with --point ID (`system_snapshot list` shows them)");
        return Ok(USAGE);
    };
    if !cli.dry_run && !cli.yes && !std::io::stdin().is_terminal() {
        eprintln!("error: no terminal to confirm on; add --yes to restore point {id} into {} without asking", target.display());
        return Ok(NEEDS_CONFIRMATION);
    }
    if crate::engine::within(&system.store, &target).is_some() {
        eprintln!(
            "error: the target {} lies inside the store {}; choose a directory outside it",
            target.display(),
            system.store.display()
        );
        return Ok(USAGE);
    }
    std::fs::create_dir_all(&target).map_err(|e| {
        crate::error::Error::io(format!("creating the target {}", target.display()), e)
    })?;
    let store = system.open_store()?;
    let excludes: Vec<String> = DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect();
    let plan = system.plan_restore(&store, id, &target, &excludes)?;
    print_plan(cli, &plan, &target);
    if cli.dry_run {
        return Ok(SUCCESS);
    }
    if !cli.yes && !confirm(id, &target)? {
        println!("Nothing was changed.");
        return Ok(CANCELLED);
    }
    let progress = progress_bar();
    let r = system.apply_restore(&store, &plan, &target, progress.as_ref())?;
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("report serializes")
        );
    } else {
        println!(
            "Restored point {id} into {}: {} created, {} rewritten, {} deleted, {} metadata fixed, {} written",
            target.display(), r.created, r.rewritten, r.deleted, r.metadata, size(r.bytes_written)
        );
    }
    for w in &r.warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    Ok(if r.warnings.is_empty() {
        SUCCESS
    } else {
        WARNINGS
    })
}

fn print_plan(cli: &Cli, plan: &RestorePlan, target: &std::path::Path) {
    let s = plan.summary();
    if cli.json && cli.dry_run {
        let items: Vec<serde_json::Value> = plan
            .items
            .iter()
            .map(|it| serde_json::json!({"action": it.action, "path": display_path(&it.path)}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"point": plan.point, "summary": s, "items": items})
        );
        return;
    }
    println!(
        "Plan for point {} into {}: {} to create, {} to rewrite, {} to delete, {} metadata to fix, {} to write",
        plan.point, target.display(), s.create, s.rewrite, s.delete, s.metadata, size(s.bytes_to_write)
    );
    if cli.dry_run {
        for it in &plan.items {
            let verb = match it.action {
                Action::Create => "create",
                Action::Rewrite => "rewrite",
                Action::Delete => "delete",
                Action::Metadata => "metadata",
            };
            println!("  {verb:<8} {}", display_path(&it.path));
        }
    }
}

fn confirm(id: i64, target: &std::path::Path) -> Result<bool, crate::error::Error> {
    let answer: Result<String, _> = dialoguer::Input::new()
        .with_prompt(format!(
            "To restore point {id} into {}, type 'yes'",
            target.display()
        ))
        .allow_empty(true)
        .interact_text();
    Ok(matches!(answer, Ok(a) if a.trim() == "yes"))
}
