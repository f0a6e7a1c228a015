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

/// hvflight.bash, _hvflight (zsh) and hvflight.fish.
pub fn completions(dir: &Path) -> Result<()> {
    use clap_complete::Shell;
    prepare(dir)?;
    let mut cmd = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "hvflight", dir)
            .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
    }
    Ok(())
}
