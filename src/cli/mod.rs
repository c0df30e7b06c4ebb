//! The two commands: parse (clap) → validate into library types → call `engine::System` →
//! render. Prompts (dialoguer) and progress bars (indicatif) live here, never in the core.

/// `println!` that never panics on a closed stdout: see `write_out`.
macro_rules! outln {
    () => {
        $crate::cli::write_out(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// `print!` that never panics on a closed stdout: see `write_out`.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::cli::write_out(format_args!($($t)*))
    };
}

mod assets;
mod exit;
mod render;
mod restore_cmd;
mod snapshot_cmd;

pub use exit::*;
pub use restore_cmd::main as restore_main;
pub use snapshot_cmd::main as snapshot_main;

/// Both commands are in each binary, chosen by the name it is run under: the recovery kit
/// keeps one program under both names (half the size in every store). A name that is neither
/// runs `default`, the binary's own command.
pub fn main_by_name(default: fn() -> i32) -> i32 {
    let name = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    match name.as_deref() {
        Some("system_snapshot") => snapshot_main(),
        Some("system_restore") => restore_main(),
        _ => default(),
    }
}

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::Config;

use crate::error::Error;

/// Where the system, its config and its store are: shared by both commands.
#[derive(clap::Args, Debug)]
struct Place {
    /// The config file (default: /etc/system_snapshots.conf under the root; missing means defaults)
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The system root: `/`, or a tree treated as a whole system (a disk mounted from a rescue CD)
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The store (default: the config's `store`, else /root/snapshots, under the root)
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
}

impl Place {
    /// The config's `[offsite] credentials`, for commands that read a remote store without a
    /// system (list, verify, restore from a URL). A config that cannot be read is an error
    /// only when named with `-c`.
    fn offsite_credentials(&self) -> Result<Option<PathBuf>, Error> {
        let root = self.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let config = match &self.config {
            Some(path) => Config::load(path, true)?,
            None => Config::load(
                &under(&root, Path::new("/etc/system_snapshots.conf")),
                false,
            )
            .unwrap_or_default(),
        };
        Ok(config.offsite.credentials)
    }

    /// The config file (`-c`, else the root's), or the defaults when the root has none.
    fn config_or_default(&self, root: &Path) -> Result<Config, Error> {
        match &self.config {
            Some(path) => Config::load(path, true),
            None => Config::load(&under(root, Path::new("/etc/system_snapshots.conf")), false),
        }
    }

    /// The remote store at `url`, with the config's credentials file.
    fn remote(&self, url: &str) -> Result<crate::offsite::Remote, Error> {
        crate::offsite::Remote::open_with(url, self.offsite_credentials()?.as_deref())
    }

    /// The system and its configuration; flags override the config file.
    fn system(&self) -> Result<(crate::engine::System, Config), Error> {
        // A remote store is read by list, verify and system_restore --target; anything else
        // would make a local directory named like the URL.
        if let Some(s) = self.store.as_ref().and_then(|s| s.to_str()) {
            if s.starts_with("s3://") || s.starts_with("file://") {
                return Err(Error::Usage(format!(
                    "{s} is a remote store: only `list`, `verify` and `system_restore --target` read one; points go there with `system_snapshot push --to {s}`"
                )));
            }
        }
        // xattrs, ACLs and capabilities are read and set through /proc/self/fd (the only way
        // to reach a symlink's, or a path past 4096 bytes); without /proc every entry would
        // look vanished, as in a chroot that never mounted it.
        if !Path::new("/proc/self/fd").is_dir() {
            return Err(Error::Usage(
                "/proc is not mounted, and restorepoint reads and sets xattrs and ACLs through it: mount it first (mount -t proc proc /proc; in a chroot, from outside: mount --bind /proc CHROOT/proc)".into(),
            ));
        }
        let root = self.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        // Checked first: a store, lock or target must never be created under a mistyped root.
        if !root.is_dir() {
            return Err(Error::Usage(format!(
                "the root {} is not a directory (missing?); check --root",
                root.display()
            )));
        }
        let config = match &self.config {
            Some(path) => Config::load(path, true)?,
            None => Config::load(
                &under(&root, Path::new("/etc/system_snapshots.conf")),
                false,
            )?,
        };
        let store = match (&self.store, &config.store) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => under(&root, s),
            (None, None) => root.join("root/snapshots"),
        };
        Ok((crate::engine::System::new(root, store), config))
    }
}

/// A path of the system (`/var/lib/mysql`) as seen from here, under the root.
fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Deep trees hold one fd per level during a walk: allow as many as the hard limit does.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

/// Prints the error with its causes and returns its exit code.
fn fail(e: &Error) -> i32 {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg.push_str(&format!(": {s_text}"));
        }
        src = s.source();
    }
    refuse(exit_code_for(e), &msg)
}

/// Prints an error the command decided itself (no terminal to ask on, flags that do not go
/// together) as `fail` prints any other, and returns `code`.
fn refuse(code: i32, msg: &str) -> i32 {
    eprintln!("error: {msg}");
    json_error(code, msg);
    code
}

/// The operator did not confirm (or chose no point): nothing was changed.
fn cancelled() -> i32 {
    outln!("Nothing was changed.");
    json_error(
        CANCELLED,
        "nothing was changed: the operator did not type `yes`",
    );
    CANCELLED
}

/// A command line clap refused: printed by clap; under `--json` (looked for in the raw
/// arguments, since they did not parse) the error object too.
fn parse_failed(e: clap::Error) -> i32 {
    let _ = e.print();
    if !e.use_stderr() {
        return SUCCESS;
    }
    if std::env::args_os().any(|a| a == "--json") {
        JSON_ERRORS.store(true, Ordering::Relaxed);
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        json_error(USAGE, first.trim_start_matches("error: "));
    }
    USAGE
}

/// A script that asked for JSON reads an error as JSON too (stdout, as any result).
fn json_error(code: i32, msg: &str) {
    if !JSON_ERRORS.load(Ordering::Relaxed) {
        return;
    }
    let kind = match code {
        USAGE => "usage",
        LOCKED => "locked",
        DAMAGED => "damaged",
        NEEDS_CONFIRMATION => "needs_confirmation",
        REFUSED => "refused",
        CANCELLED => "cancelled",
        _ => "failure",
    };
    write_stdout(format_args!(
        "{}\n",
        serde_json::json!({"schema": JSON_SCHEMA, "error": {"kind": kind, "exit_code": code, "message": msg}})
    ));
}

/// The version of every JSON document the commands print (docs/json.md): raised only when a
/// field changes meaning or goes away, never for a field added.
pub const JSON_SCHEMA: u32 = 1;

/// Prints a command's result as one JSON document: an object gains `"schema"`; anything else
/// (a list of points, of decisions) is put under `key` beside it, so that every document a
/// script parses is an object that says its version.
fn print_json(key: &str, value: &impl serde::Serialize) {
    let v = serde_json::to_value(value).expect("command results serialize");
    let v = match v {
        serde_json::Value::Object(mut m) => {
            m.insert("schema".into(), JSON_SCHEMA.into());
            serde_json::Value::Object(m)
        }
        other => serde_json::json!({ "schema": JSON_SCHEMA, key: other }),
    };
    write_stdout(format_args!(
        "{}\n",
        serde_json::to_string_pretty(&v).expect("JSON values print")
    ));
}

/// Set once the command line asked for `--json`: errors are printed as JSON too, and every
/// line for people (a plan, a question) goes to stderr, so that stdout holds exactly the one
/// JSON document a script parses.
static JSON_ERRORS: AtomicBool = AtomicBool::new(false);

fn progress_bar() -> Box<dyn crate::progress::Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(render::Bar::new())
    } else {
        Box::new(crate::progress::Silent)
    }
}

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Writes to stdout. Once its reader has gone (`system_snapshot list --json | head`) the rest
/// of the output is dropped and the command finishes its work with its own exit code: a closed
/// pipe must neither panic nor stop a snapshot or a restore half-way.
pub(crate) fn write_out(args: std::fmt::Arguments) {
    if JSON_ERRORS.load(Ordering::Relaxed) {
        eprint!("{args}");
        return;
    }
    write_stdout(args);
}

fn write_stdout(args: std::fmt::Arguments) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            STDOUT_GONE.store(true, Ordering::Relaxed);
        }
    }
}
