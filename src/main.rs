//! The `kiln` command-line launcher: parses arguments, sets up tracing and
//! maps errors to exit codes. All logic lives in library functions.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: distributed deep learning on a cluster of ordinary machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print build information: version, matrix-multiply backend, threads.
    Info,
    // TRAIN-COMMANDS (enabled once kiln-nn's conv layers and optimizers land)
    // CLUSTER-COMMANDS
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Info => {
            kiln::print_info();
            Ok(())
        } // TRAIN-DISPATCH
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
