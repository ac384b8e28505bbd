//! The `word-count` job kind: Spark's first example on Kiln's datasets.
//! Lines of a file or a directory's files are split into lower-case words
//! on the executors, counted with a shuffle (`reduce_by_key`), and written
//! as `word<TAB>count` lines, sorted by word, into the job's `counts`
//! output.

use std::path::PathBuf;
use std::time::Duration;

use kiln_runtime::staging::FileRef;
use kiln_runtime::{JobContext, Registry};
use serde::{Deserialize, Serialize};

use crate::jobs::staged::{local, publish_all};
use crate::jobs::{bounded, Job, JobEnv, JobError, Result, MAX_PARTITIONS};

/// The kind's name.
pub const KIND: &str = "word-count";
/// Lines of files, sleeping `ms` per partition (long enough jobs for
/// fault-injection tests and demos).
pub const SLOW_TEXT_LINES: &str = "kiln.slow_text_lines";
/// Longest `slow_ms` accepted (ten minutes per partition).
pub const MAX_SLOW_MS: u64 = 600_000;

/// Settings of a word count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordCountSettings {
    /// A text file or a directory of them (its regular files, sorted), on
    /// the driver's host.
    pub input: PathBuf,
    /// Partitions of the lines and of the counts.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Sleep this long in each source partition (fault-injection demos).
    #[serde(default)]
    pub slow_ms: u64,
    /// Executors fetch the files from the driver's host even where the
    /// paths exist.
    #[serde(default)]
    pub stage: bool,
}

fn default_partitions() -> u32 {
    8
}

/// The word-count kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct WordCount;

fn words(line: String) -> Vec<String> {
    line.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The input's files, sorted (the file itself for a file).
fn input_files(input: &std::path::Path) -> Result<Vec<PathBuf>> {
    if !input.is_dir() {
        return Ok(vec![input.to_path_buf()]);
    }
    let io = |e| JobError::Io {
        path: input.to_path_buf(),
        source: e,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(input)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// Arguments of the text source: the files (every `n`-th one from `p` is
/// partition `p`'s), whether to stage them, and a sleep per partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinesSource {
    /// The files, on the driver's host.
    pub files: Vec<FileRef>,
    /// Stage them even where the paths exist.
    pub stage: bool,
    /// Milliseconds to sleep per partition.
    pub slow_ms: u64,
}

/// The lines of partition `p`'s files.
fn read_lines_partition(
    a: &LinesSource,
    p: u32,
    n: u32,
) -> std::result::Result<Vec<String>, kiln_runtime::BoxError> {
    let mut out = Vec::new();
    for f in a.files.iter().skip(p as usize).step_by(n.max(1) as usize) {
        let path = local(f, a.stage)?;
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", f.path.display()))?;
        out.extend(text.lines().map(str::to_owned));
    }
    std::thread::sleep(Duration::from_millis(a.slow_ms));
    Ok(out)
}

impl Job for WordCount {
    type Settings = WordCountSettings;

    fn kind(&self) -> &'static str {
        KIND
    }

    fn register(&self, r: &mut Registry) {
        r.register_flat_map("wc.words", words)
            .register_map("wc.pair_one", |w: String| (w, 1u64))
            .register_reduce_by_key::<String, u64>("wc.sum", |a, b| a + b)
            .register_source(SLOW_TEXT_LINES, read_lines_partition);
    }

    fn validate(&self, s: &mut WordCountSettings, env: &JobEnv) -> Result<String> {
        s.input = env.existing(KIND, "input", &s.input)?;
        bounded(KIND, "partitions", s.partitions, 1..=MAX_PARTITIONS)?;
        if s.slow_ms > MAX_SLOW_MS {
            return Err(JobError::invalid(
                KIND,
                "slow_ms",
                s.slow_ms,
                format!("must be at most {MAX_SLOW_MS}"),
            ));
        }
        let files = input_files(&s.input)?;
        Ok(format!(
            "word count of {} ({} files)",
            s.input.display(),
            files.len()
        ))
    }

    async fn run(&self, s: WordCountSettings, ctx: JobContext) -> Result<()> {
        {
            let files = publish_all(&ctx, input_files(&s.input)?).await?;
            let source = LinesSource {
                files,
                stage: s.stage,
                slow_ms: s.slow_ms,
            };
            let driver = ctx.driver();
            let counts = driver
                .source::<_, String>(SLOW_TEXT_LINES, &source, s.partitions)?
                .flat_map::<String>("wc.words")?
                .map::<(String, u64)>("wc.pair_one")?
                .reduce_by_key("wc.sum", s.partitions)?
                .collect()
                .await?;
            let mut counts: Vec<(String, u64)> = counts;
            counts.sort();
            let mut text = String::new();
            for (w, c) in &counts {
                text.push_str(&format!("{w}\t{c}\n"));
            }
            let path = ctx.dir().join("counts.tsv");
            std::fs::write(&path, text).map_err(|e| JobError::Io {
                path: path.clone(),
                source: e,
            })?;
            ctx.add_output("counts", path);
            let mut top = counts.clone();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for (w, c) in top.iter().take(20) {
                ctx.line(format!("{c:>10}  {w}"));
            }
            ctx.line(format!("DONE words={}", counts.len()));
            Ok(())
        }
    }
}
