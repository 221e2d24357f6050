//! The binary edge: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use postern::cli::{Cli, Command};
use postern::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Ops(command) = &cli.command {
        return postern::cli::ops::run(command, &cli.config, cli.json);
    }
    // The demo builds its own configuration in memory; everything else reads
    // the file before the runtime starts, since `serve` sizes the runtime by it.
    let config = match cli.command {
        Command::Demo => None,
        _ => match Config::load(&cli.config) {
            Ok(config) => Some(config),
            Err(err) => return fail(anyhow::Error::from(err), cli.json),
        },
    };
    let workers = match (&cli.command, &config) {
        (Command::Serve, Some(config)) => Some(config.limits.worker_threads),
        _ => None,
    };
    let runtime = match postern::app::build_runtime(workers) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("postern: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match (cli.command, config) {
            (Command::Demo, _) => {
                let text = "[log]\nlevel = \"warn\"\n";
                postern::app::init_logging(&Config::parse(text)?);
                postern::demo::run().await
            }
            (Command::Serve, Some(config)) => {
                postern::app::init_logging(&config);
                postern::app::serve(config).await
            }
            (Command::Admin(command), Some(config)) => {
                postern::cli::admin::run(&config, command, cli.json, &mut std::io::stdout()).await
            }
            (_, None) => unreachable!("only the demo runs without the configuration file"),
            (Command::Ops(_), _) => unreachable!("operating commands returned above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err, cli.json),
    }
}

/// Prints the error once on stderr (with `--json`, as `{"error": "..."}`) and
/// exits 1.
fn fail(err: anyhow::Error, json: bool) -> ExitCode {
    if json {
        eprintln!("{}", serde_json::json!({ "error": format!("{err:#}") }));
    } else {
        eprintln!("postern: {err:#}");
    }
    ExitCode::FAILURE
}
