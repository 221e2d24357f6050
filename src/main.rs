//! The binary edge: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use postern::cli::{Cli, Command};
use postern::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("postern: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if let Command::Demo = cli.command {
            // The demo builds its own configuration in memory.
            let text = "[log]\nlevel = \"warn\"\n";
            postern::app::init_logging(&Config::parse(text)?);
            return postern::demo::run().await;
        }
        let config = Config::load(&cli.config)?;
        match cli.command {
            Command::Serve => {
                postern::app::init_logging(&config);
                postern::app::serve(config).await
            }
            Command::Demo => unreachable!("handled above"),
            Command::Admin(command) => {
                postern::cli::admin::run(&config, command, cli.json, &mut std::io::stdout()).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("postern: {err:#}");
            ExitCode::FAILURE
        }
    }
}
