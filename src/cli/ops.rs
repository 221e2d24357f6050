//! Operating commands that run before (or instead of) loading the configuration
//! the usual way: `check-config`, `migrate`, `completions` and `man`.
//!
//! Exit codes (README "Exit codes"): 0 done; 1 problems found or the command
//! failed; 2 a usage error (clap's own).

use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Subcommand};

use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Check a configuration file: one line per problem, naming the key; exit 0
    /// when there is none, 1 when there are.
    CheckConfig {
        /// Also connect to each upstream, the relay and the store.
        #[arg(long)]
        connect: bool,
    },
    /// Bring the database schema up to date (`serve` does it at start too).
    Migrate {
        /// Only report which migrations are pending; exit 1 if any is.
        #[arg(long)]
        check: bool,
    },
    /// Print a shell completion script to stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout.
    Man,
}

/// Sections of the manual page that clap does not know (roff).
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Done. \fBcheck\-config\fR: no problem; \fBmigrate \-\-check\fR: nothing pending.
.TP
\fB1\fR
The command failed (the message is on standard error): a bad configuration, a store that cannot be reached, an unknown domain, a database schema of another version. \fBcheck\-config\fR: problems were printed, one per line, each naming its key; \fBmigrate \-\-check\fR: migrations are pending.
.TP
\fB2\fR
Usage error: an unknown command, option or value.
.SH FILES
.TP
\fI/etc/postern/postern.toml\fR
The configuration of the Debian package (\fB\-\-config\fR, \fBPOSTERN_CONFIG\fR); every key is documented in \fI/usr/share/doc/postern/postern.toml.example\fR.
.TP
\fI/var/lib/postern\fR
The SQLite database, the instance key and a generated certificate.
.SH SIGNALS
\fBSIGHUP\fR reloads the TLS certificate and key of \fBserve\fR without dropping sessions; \fBSIGTERM\fR and \fBSIGINT\fR close the listeners, let live sessions finish for \fB[limits] drain_secs\fR, then end the rest with a goodbye.
"#;

/// Runs one operating command to its exit code.
pub fn run(command: &OpsCommand, config_path: &Path, json: bool) -> ExitCode {
    match command {
        OpsCommand::Completions { shell } => {
            let mut cli = crate::cli::Cli::command();
            clap_complete::generate(*shell, &mut cli, "postern", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        OpsCommand::Man => {
            let man = clap_mangen::Man::new(crate::cli::Cli::command());
            let mut out = std::io::stdout();
            let rendered = man
                .render(&mut out)
                .and_then(|()| std::io::Write::write_all(&mut out, MAN_EXTRA.as_bytes()));
            match rendered {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("postern: cannot write the manual page: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        OpsCommand::CheckConfig { connect } => {
            with_runtime(|| async { check_config(config_path, *connect, json).await })
        }
        OpsCommand::Migrate { check } => {
            with_runtime(|| async { migrate(config_path, *check, json).await })
        }
    }
}

fn with_runtime<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(body()),
        Err(err) => {
            eprintln!("postern: cannot start the runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn check_config(path: &Path, connect: bool, json: bool) -> ExitCode {
    let problems = super::check::check(path, connect).await;
    if json {
        let list: Vec<_> = problems
            .iter()
            .map(|p| serde_json::json!({"key": p.key, "message": p.message}))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else if problems.is_empty() {
        println!(
            "{}: ok{}",
            path.display(),
            if connect {
                " (upstreams, relay and store reachable)"
            } else {
                ""
            }
        );
    } else {
        for problem in &problems {
            println!("{problem}");
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        if !json {
            eprintln!(
                "postern: {}: {} problem{}",
                path.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
        }
        ExitCode::FAILURE
    }
}

/// An error on stderr: `postern: MESSAGE`, or with `--json` `{"error": MESSAGE}`.
fn fail(json: bool, message: &str) -> ExitCode {
    if json {
        eprintln!("{}", serde_json::json!({ "error": message }));
    } else {
        eprintln!("postern: {message}");
    }
    ExitCode::FAILURE
}

async fn migrate(path: &Path, check: bool, json: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => {
            return fail(json, &err.to_string());
        }
    };
    let store = match Store::open(&config.store.url).await {
        Ok(store) => store,
        Err(err) => {
            return fail(json, &format!("cannot open the store: {err}"));
        }
    };
    let code = migrate_store(&store, check, json).await;
    store.close().await;
    code
}

async fn migrate_store(store: &Store, check: bool, json: bool) -> ExitCode {
    let status = match store.schema_status().await {
        Ok(status) => status,
        Err(err) => {
            return fail(json, &format!("cannot read the schema version: {err}"));
        }
    };
    if status.needs_newer_binary() {
        return fail(json, &crate::store::SchemaMismatch(status).to_string());
    }
    let versions = |list: &[crate::store::MigrationId]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|m| serde_json::json!({"version": m.version, "description": m.description}))
            .collect()
    };
    if check {
        if json {
            println!(
                "{}",
                serde_json::json!({"version": status.version(), "pending": versions(&status.pending)})
            );
        } else if status.pending.is_empty() {
            println!("schema up to date (version {:04})", status.version());
        } else {
            for m in &status.pending {
                println!("pending {m}");
            }
        }
        return if status.pending.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match store.migrate().await {
        Ok(applied) => {
            let version = store
                .schema_status()
                .await
                .map(|s| s.version())
                .unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"version": version, "applied": versions(&applied)})
                );
            } else if applied.is_empty() {
                println!("schema up to date (version {version:04})");
            } else {
                for m in &applied {
                    println!("applied {m}");
                }
                println!("schema up to date (version {version:04})");
            }
            ExitCode::SUCCESS
        }
        Err(err) => fail(json, &format!("migration failed: {err}")),
    }
}
