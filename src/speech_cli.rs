//! `kiln speech …`: the Deep Speech 2 commands that work without a trained
//! model (scoring transcripts, building an n-gram language model).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// `kiln speech` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpeechCommand {
    /// Score hypothesis transcripts against references (both in LibriSpeech
    /// trans.txt format: `<utterance-id> TEXT` per line); prints WER and CER.
    Score(ScoreArgs),
    /// Build an ARPA n-gram language model (interpolated Witten-Bell) from
    /// trans.txt files, for the prefix beam-search decoder.
    Lm(LmArgs),
}

/// Arguments of `kiln speech score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Reference transcripts.
    #[arg(long)]
    pub reference: PathBuf,
    /// Hypothesis transcripts.
    #[arg(long)]
    pub hypothesis: PathBuf,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `kiln speech lm`.
#[derive(Debug, Args)]
pub struct LmArgs {
    /// N-gram order.
    #[arg(long, default_value_t = 3)]
    pub order: usize,
    /// Output ARPA file.
    #[arg(long)]
    pub out: PathBuf,
    /// trans.txt files to learn from.
    #[arg(required = true)]
    pub transcripts: Vec<PathBuf>,
}

/// Runs a `kiln speech` subcommand.
pub fn run(cmd: &SpeechCommand) -> anyhow::Result<()> {
    match cmd {
        SpeechCommand::Score(a) => {
            let report = kiln_speech::score::score_files(&a.reference, &a.hypothesis)
                .with_context(|| {
                    format!(
                        "scoring {} against {}",
                        a.hypothesis.display(),
                        a.reference.display()
                    )
                })?;
            if a.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.summary());
            }
            Ok(())
        }
        SpeechCommand::Lm(a) => {
            let files: Vec<&std::path::Path> = a.transcripts.iter().map(PathBuf::as_path).collect();
            kiln_speech::lm::build_arpa_from_transcripts(&files, a.order, &a.out)
                .with_context(|| format!("building {}", a.out.display()))?;
            println!("wrote {}-gram model to {}", a.order, a.out.display());
            Ok(())
        }
    }
}
