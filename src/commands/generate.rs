//! `hvflight generate man|completions DIR` (hidden): the man pages and shell
//! completions the .deb ships, generated from the clap definitions so they
//! cannot drift from the real command line. `make deb` runs it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use crate::cli::{Cli, GenerateCommand};

pub fn generate(what: GenerateCommand) -> Result<ExitCode> {
    match what {
        GenerateCommand::Man { dir } => man(&dir)?,
        GenerateCommand::Completions { dir } => completions(&dir)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// hvflight.1 and one page per subcommand (hvflight-bundle-analyze.1, …).
pub fn man(dir: &Path) -> Result<()> {
    prepare(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))
}

/// The command without its hidden subcommands (clap_complete would offer
/// them; clap_mangen already skips them).
fn visible(full: clap::Command) -> clap::Command {
    let mut cmd = clap::Command::new("hvflight")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default());
    for a in full.get_arguments() {
        cmd = cmd.arg(a.clone());
    }
    for sc in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        cmd = cmd.subcommand(sc.clone());
    }
    cmd
}

/// hvflight.bash, _hvflight (zsh) and hvflight.fish.
pub fn completions(dir: &Path) -> Result<()> {
    use clap_complete::Shell;
    prepare(dir)?;
    let mut cmd = visible(Cli::command());
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "hvflight", dir)
            .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
    }
    Ok(())
}
