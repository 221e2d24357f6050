//! `postern admin ...`: placeholder, filled in by the admin commands.

use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {}

pub async fn run(
    _config: &Config,
    command: AdminCommand,
    _json: bool,
    _out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    match command {}
}
