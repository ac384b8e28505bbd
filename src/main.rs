//! The `kiln` command-line launcher: parses arguments, sets up tracing and
//! maps errors to exit codes. All logic lives in library functions.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln::cli::{checkpoint, cluster, detect, model, speech, submit, train};
use kiln::jobs::JobKinds;
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
    /// Train the digits model in this process and report held-out
    /// accuracy; `--resume DIR` continues a cluster run from its checkpoints.
    Train(train::TrainArgs),
    /// Evaluate a saved digits model on the held-out split.
    Eval(train::EvalArgs),
    /// Deep Speech 2 commands.
    Speech {
        #[command(subcommand)]
        command: speech::SpeechCommand,
    },
    /// SSD object-detection commands.
    Detect {
        #[command(subcommand)]
        command: detect::DetectCommand,
    },
    /// Models in and out: import ONNX, run any model on .npy arrays, show
    /// one's layers and shapes.
    Model {
        #[command(subcommand)]
        command: model::ModelCommand,
    },
    /// Checkpoint stores: list, show, export weights, resume a run.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Run a driver and N executors on this machine and a job on them
    /// (submitted as `kiln submit` would); without a job, serve.
    Local(cluster::LocalArgs),
    /// Run a cluster driver: prints the join token, accepts executors and
    /// submitted jobs.
    Driver(cluster::DriverArgs),
    /// Join a driver as an executor: `kiln executor --join TOKEN@HOST:PORT`.
    Executor(cluster::ExecutorArgs),
    /// Submit a job to a running cluster and follow it.
    Submit(submit::SubmitArgs),
    /// See, follow, cancel and fetch a cluster's jobs.
    Jobs(submit::JobsArgs),
    /// Show a driver's executors and counters.
    Status(cluster::StatusArgs),
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Every committed checkpoint and whether it verifies.
    List(checkpoint::StoreArgs),
    /// One checkpoint's record (blobs, counters, job) as JSON.
    Show(checkpoint::StoreArgs),
    /// Write a checkpoint's weights as the model file of its job.
    Export(checkpoint::ExportArgs),
    /// Continue the run from its newest valid checkpoint (on a local
    /// cluster, or `--cluster` a running one).
    Resume(checkpoint::ResumeArgs),
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
    let kinds = JobKinds::builtin();
    let result: anyhow::Result<()> = match cli.command {
        Command::Train(args) => match args.resume_args() {
            Some(resume) => checkpoint::resume(&resume, &kinds),
            None => train::train(&args),
        },
        Command::Eval(args) => train::eval(&args),
        Command::Speech { command } => speech::run(&command, &kinds),
        Command::Detect { command } => detect::run(&command, &kinds),
        Command::Model { command } => model::run(&command),
        Command::Info => {
            kiln::print_info();
            Ok(())
        }
        Command::Local(a) => cluster::local(a, &kinds),
        Command::Driver(a) => cluster::driver(a, &kinds),
        Command::Executor(a) => cluster::executor(a, &kinds),
        Command::Submit(a) => submit::submit(a),
        Command::Jobs(a) => submit::jobs(a),
        Command::Status(a) => cluster::status(a),
        Command::Checkpoint { command } => match command {
            CheckpointCommand::List(a) => checkpoint::list(&a),
            CheckpointCommand::Show(a) => checkpoint::show(&a),
            CheckpointCommand::Export(a) => checkpoint::export(&a, &kinds),
            CheckpointCommand::Resume(a) => checkpoint::resume(&a, &kinds),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", kiln::cli::error_text(&e));
            ExitCode::FAILURE
        }
    }
}
