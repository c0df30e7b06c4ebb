//! The two commands: parse (clap) → validate into library types → call `engine::System` →
//! render. Prompts (dialoguer) and progress bars (indicatif) live here, never in the core.

mod exit;
mod render;
mod restore_cmd;
mod snapshot_cmd;

pub use exit::*;
pub use restore_cmd::main as restore_main;
pub use snapshot_cmd::main as snapshot_main;

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::error::Error;

/// Where the system and its store are: shared by both commands.
#[derive(clap::Args, Debug)]
struct Place {
    /// The system root: `/`, or a tree treated as a whole system (a disk mounted from a rescue CD)
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The store (default: /root/snapshots under the root)
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
}

impl Place {
    fn system(&self) -> crate::engine::System {
        let root = self.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let store = self
            .store
            .clone()
            .unwrap_or_else(|| root.join("root/snapshots"));
        crate::engine::System::new(root, store)
    }
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
    let mut msg = format!("error: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg.push_str(&format!(": {s_text}"));
        }
        src = s.source();
    }
    eprintln!("{msg}");
    exit_code_for(e)
}

fn progress_bar() -> Box<dyn crate::progress::Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(render::Bar::new())
    } else {
        Box::new(crate::progress::Silent)
    }
}
