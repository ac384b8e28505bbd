//! The `kiln` command-line launcher: parses arguments, sets up tracing and
//! maps errors to exit codes. All logic lives in library functions.

mod cluster_cli;

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
    /// Train a model (the digits CNN by default) and report held-out
    /// accuracy; `--resume DIR` continues a cluster run from its checkpoints.
    Train(kiln::train_cli::TrainArgs),
    /// Evaluate a saved digits model on the held-out split.
    Eval(kiln::train_cli::EvalArgs),
    /// Deep Speech 2 commands.
    Speech {
        #[command(subcommand)]
        command: kiln::speech_cli::SpeechCommand,
    },
    /// SSD object-detection commands.
    Detect {
        #[command(subcommand)]
        command: kiln::detect_cli::DetectCommand,
    },
    /// Checkpoint stores: list, show, export weights, resume a run.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    // CLUSTER-COMMANDS
    /// Run a driver and N executors on this machine (child processes, or
    /// in-process with --in-process), optionally running a built-in job.
    Local(cluster_cli::LocalArgs),
    /// Run a cluster driver: prints the join token, accepts executors.
    Driver(cluster_cli::DriverArgs),
    /// Join a driver as an executor: `kiln executor --join TOKEN@ADDR`.
    Executor(cluster_cli::ExecutorArgs),
    /// Show a driver's executors and counters.
    Status(cluster_cli::StatusArgs),
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Every committed checkpoint and whether it verifies.
    List(kiln::checkpoint_cli::StoreArgs),
    /// One checkpoint's record (blobs, counters, job) as JSON.
    Show(kiln::checkpoint_cli::StoreArgs),
    /// Write a checkpoint's weights as a safetensors model file.
    Export(kiln::checkpoint_cli::ExportArgs),
    /// Continue the run from its newest valid checkpoint on a local cluster.
    Resume(cluster_cli::ResumeArgs),
}

fn main() -> ExitCode {
    let allocator_tuned = kiln::allocator::keep_freed_buffers();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tracing::debug!(allocator_tuned, "glibc malloc thresholds");
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Train(args) => match args.resume.clone() {
            Some(dir) => cluster_cli::resume(cluster_cli::ResumeArgs::from_train(&args, dir)),
            None => kiln::train_cli::train(&args),
        },
        Command::Eval(args) => kiln::train_cli::eval(&args),
        Command::Speech { command } => kiln::speech_cli::run(&command, cluster_cli::registry),
        Command::Detect { command } => kiln::detect_cli::run(&command, cluster_cli::registry),
        Command::Info => {
            kiln::print_info();
            Ok(())
        }
        Command::Local(a) => cluster_cli::local(a),
        Command::Driver(a) => cluster_cli::driver(a),
        Command::Executor(a) => cluster_cli::executor(a),
        Command::Status(a) => cluster_cli::status(a),
        Command::Checkpoint { command } => match command {
            CheckpointCommand::List(a) => kiln::checkpoint_cli::list(&a),
            CheckpointCommand::Show(a) => kiln::checkpoint_cli::show(&a),
            CheckpointCommand::Export(a) => kiln::checkpoint_cli::export(&a),
            CheckpointCommand::Resume(a) => cluster_cli::resume(a),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
