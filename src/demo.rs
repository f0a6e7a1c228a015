//! `hvflight demo`: a throwaway lab with the agent watching it (filled in below).

use std::process::ExitCode;

pub fn run(_guests: usize, _short: bool, _interval_ms: u64) -> anyhow::Result<ExitCode> {
    anyhow::bail!("demo: not built yet")
}
