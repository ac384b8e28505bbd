//! `kiln submit` and `kiln jobs`: a client of a standing cluster. A
//! submitted job runs on the driver whatever the client does; the client
//! follows its output, draws its progress, and fetches its model file.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_runtime::jobs::{JobEvent, JobInfo};
use kiln_runtime::{transport, ClusterClient, JobState};

use super::job_args::{JobCommand, Submission};
use super::{out_line, tokio_runtime};

/// How long a client waits for the driver's answer to one request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `kiln submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The cluster: `TOKEN@HOST:PORT` as printed by `kiln driver`.
    #[arg(long, value_name = "TOKEN@HOST:PORT")]
    pub cluster: String,
    /// Print the job's id and return at once instead of following it.
    #[arg(long)]
    pub detach: bool,
    #[command(subcommand)]
    #[allow(missing_docs)]
    pub job: JobCommand,
}

/// `kiln jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// The cluster: `TOKEN@HOST:PORT` as printed by `kiln driver`.
    #[arg(long, value_name = "TOKEN@HOST:PORT")]
    pub cluster: String,
    #[command(subcommand)]
    #[allow(missing_docs)]
    pub command: JobsCommand,
}

/// `kiln jobs` subcommands.
#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Every job: id, kind, state, progress, description.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job's record as JSON.
    Show {
        /// The job's id.
        id: u64,
    },
    /// A job's output lines.
    Logs {
        /// The job's id.
        id: u64,
        /// Keep printing until the job ends.
        #[arg(long, short)]
        follow: bool,
        /// Start at this line (0-based).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job's id.
        id: u64,
    },
    /// Fetch one of a job's output files (e.g. its model).
    Fetch {
        /// The job's id.
        id: u64,
        /// The output's name.
        #[arg(long, default_value = "model")]
        output: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Connects to the cluster named `TOKEN@HOST:PORT`.
pub async fn connect(cluster: &str) -> anyhow::Result<ClusterClient> {
    let (token, addr) = transport::parse_join(cluster)?;
    ClusterClient::connect(addr, &token, CLIENT_TIMEOUT)
        .await
        .with_context(|| format!("connecting to the driver at {addr}"))
}

fn progress_bar(visible: bool) -> ProgressBar {
    let bar = if visible {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} it {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Prints job `id`'s output from line `from` (with a progress bar when
/// `progress`) until it ends or, without `follow`, until the lines so far
/// are printed. Returns its final record.
pub async fn print_job(
    client: &ClusterClient,
    id: u64,
    from: u64,
    follow: bool,
    progress: bool,
) -> anyhow::Result<JobInfo> {
    let bar = progress_bar(progress);
    let info = client
        .follow(id, from, follow, |event| match event {
            JobEvent::Line { text, .. } => bar.suspend(|| out_line(text)),
            JobEvent::Progress(p) => {
                bar.set_length(p.total);
                bar.set_position(p.done);
                bar.set_message(p.message.clone());
            }
            JobEvent::Finished(_) => bar.finish_and_clear(),
        })
        .await?;
    bar.finish_and_clear();
    Ok(info)
}

/// Submits `sub`, follows it to its end (unless `detach`) and fetches its
/// output; an error if the job fails or is cancelled. Ctrl-C detaches: the
/// job goes on.
pub async fn submit_and_follow(
    client: &ClusterClient,
    sub: &Submission,
    detach: bool,
) -> anyhow::Result<()> {
    sub.check_outputs()?;
    let info = client
        .submit(&sub.kind, &sub.settings)
        .await
        .with_context(|| match &sub.source {
            Some(file) => format!("{}: job of kind {:?} refused", file.display(), sub.kind),
            None => format!("submitting a job of kind {:?}", sub.kind),
        })?;
    out_line(&format!("JOB {} queued: {}", info.id, info.description));
    if detach {
        return Ok(());
    }
    let id = info.id;
    let followed = tokio::select! {
        r = print_job(client, id, 0, true, sub.progress) => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!(
                "detached from job {id}; it goes on. Follow it with `kiln jobs --cluster … logs {id} --follow`, stop it with `kiln jobs --cluster … cancel {id}`"
            );
            return Ok(());
        }
    };
    match &followed.state {
        JobState::Succeeded => {}
        state => bail!("job {id} {state}"),
    }
    if let Some((name, path)) = &sub.fetch {
        let got = client.fetch(id, name, path).await?;
        let label = if name == "model" { "MODEL" } else { "OUTPUT" };
        out_line(&format!(
            "{label} {} ({} bytes)",
            got.path.display(),
            got.len
        ));
    }
    Ok(())
}

/// Runs `kiln submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let sub = args.job.submission()?;
    tokio_runtime()?.block_on(async {
        let client = connect(&args.cluster).await?;
        submit_and_follow(&client, &sub, args.detach).await
    })
}

fn ms_ago(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!("{:.0}s ago", now.saturating_sub(ms) as f64 / 1000.0)
}

/// Runs `kiln jobs`.
pub fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    tokio_runtime()?.block_on(async {
        let client = connect(&args.cluster).await?;
        match args.command {
            JobsCommand::List { json } => {
                let jobs = client.jobs().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&jobs)?);
                    return Ok(());
                }
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:>4}  {:<18} {:<10} {:>12} {:>10}  description",
                    "id", "kind", "state", "progress", "submitted"
                )?;
                for j in jobs {
                    let progress = j
                        .progress
                        .as_ref()
                        .map(|p| format!("{}/{}", p.done, p.total))
                        .unwrap_or_else(|| "-".into());
                    writeln!(
                        out,
                        "{:>4}  {:<18} {:<10} {:>12} {:>10}  {}",
                        j.id,
                        j.kind,
                        j.state.word(),
                        progress,
                        ms_ago(j.submitted_ms),
                        j.description
                    )?;
                    if let JobState::Failed(e) = &j.state {
                        writeln!(out, "      error: {e}")?;
                    }
                }
            }
            JobsCommand::Show { id } => {
                println!("{}", serde_json::to_string_pretty(&client.job(id).await?)?);
            }
            JobsCommand::Logs { id, follow, from } => {
                let info = print_job(&client, id, from, follow, false).await?;
                if follow {
                    match &info.state {
                        JobState::Succeeded => {}
                        state => bail!("job {id} {state}"),
                    }
                }
            }
            JobsCommand::Cancel { id } => {
                let info = client.cancel(id).await?;
                println!(
                    "job {id}: {}",
                    if info.state == JobState::Cancelled {
                        "cancelled"
                    } else {
                        "asked to stop (it stops after its current step)"
                    }
                );
            }
            JobsCommand::Fetch { id, output, out } => {
                crate::output_paths::check_output_file("--out", &out)?;
                let got = client.fetch(id, &output, &out).await?;
                println!("{} ({} bytes)", got.path.display(), got.len);
            }
        }
        Ok(())
    })
}
