//! The command line (DESIGN.md "Exact command line"): `serve`, `demo` and
//! `admin ...`. `--config` and `--json` are accepted anywhere on the line.

pub mod admin;
pub mod check;
pub mod ops;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "postern",
    version,
    about = "2-Step Authentication gateway for IMAP, POP3 and SMTP submission"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "POSTERN_CONFIG",
        default_value = "config/postern.toml"
    )]
    pub config: PathBuf,
    /// Print listings and results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: mail listeners, web UI and API.
    Serve,
    /// Run the gateway with a small in-memory upstream and demo accounts.
    Demo,
    /// Administer domains, users, app passwords and sessions (works on the
    /// database directly, also while `serve` runs).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// check-config, migrate, completions, man.
    #[command(flatten)]
    Ops(ops::OpsCommand),
}
