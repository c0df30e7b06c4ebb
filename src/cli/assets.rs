//! Man pages and shell completions of both commands, generated from their clap definitions
//! (`system_snapshot generate-assets DIR`, run when the package is built): they cannot drift
//! from the options the program takes.

use std::path::Path;

use clap::CommandFactory;

/// Writes `DIR/man/system_snapshot.8`, `DIR/man/system_restore.8` and, for each command,
/// `DIR/completions/<command>.bash`, `_<command>` (zsh) and `<command>.fish`.
pub fn generate(dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let comp = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    for mut cmd in [
        super::snapshot_cmd::command(),
        super::restore_cmd::Cli::command(),
    ] {
        let name = cmd.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section("8")
            .manual("restorepoint")
            .render(&mut page)?;
        std::fs::write(man.join(format!("{name}.8")), page)?;
        for (shell, file) in [
            (clap_complete::Shell::Bash, format!("{name}.bash")),
            (clap_complete::Shell::Zsh, format!("_{name}")),
            (clap_complete::Shell::Fish, format!("{name}.fish")),
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut out);
            std::fs::write(comp.join(file), out)?;
        }
    }
    Ok(())
}
