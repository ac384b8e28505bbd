//! The `speech` job kind: Deep Speech 2 trained with CTC on a
//! LibriSpeech-layout corpus. Executors read their partitions of the
//! training split and compute the features themselves (bad files skipped
//! and logged); the dev split's WER and CER (greedy decoding) are computed
//! on the driver after every epoch.

use std::path::{Path, PathBuf};

use kiln_nn::optim::schedule::LrSchedule;
use kiln_nn::optim::{AdamConfig, OptimizerConfig};
use kiln_nn::ModuleExt;
use kiln_runtime::staging::FileRef;
use kiln_runtime::train::{BatchStats, SortedEpochs};
use kiln_runtime::transport::encode;
use kiln_runtime::{DistributedTrainer, JobContext, Registry};
use kiln_speech::alignment;
use kiln_speech::audio::{read_audio_at, AudioLength};
use kiln_speech::augment::SpecAugment;
use kiln_speech::checked::{checked_examples, checked_utterances};
use kiln_speech::corpus::Utterance;
use kiln_speech::ds2::{Ds2, Ds2Config};
use kiln_speech::metrics::error_rates;
use kiln_speech::objective::{Ds2Objective, Ds2ObjectiveConfig};
use kiln_speech::pipeline::{self, Decoder, Example, SAMPLE_RATE};
use kiln_speech::text::TranscriptVectorizer;
use kiln_speech::wave_augment::WaveAugment;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::jobs::staged::{local, partition_range, publish_all, publish_manifest, read_manifest};
use crate::jobs::{
    bounded, in_range, positive_number, JobEnv, JobError, Result, MAX_BATCH_SIZE, MAX_EPOCHS,
    MAX_LEARNING_RATE,
};
use crate::training::{
    register_objective, LearningRate, Metric, RunSettings, TrainingJob, TrainingPlan,
    TrainingReport,
};

/// The kind's name.
pub const KIND: &str = "speech";
/// Name of the speech corpus source in the registry.
pub const SPEECH_SOURCE: &str = "kiln.speech_corpus";
/// Name of the DS2 trainer in the registry.
pub const DS2_TRAINER: &str = "kiln.ds2";
/// The small CPU-friendly DS2 (apps/speech/configs/ds2_small.toml).
pub const DS2_SMALL: &str = include_str!("../../apps/speech/configs/ds2_small.toml");

/// Longest training utterance a run may keep, in seconds.
pub const MAX_SECONDS: f64 = 3600.0;

/// Settings of a DS2 run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechSettings {
    /// Corpus root holding `train*` and `dev*` splits (LibriSpeech layout),
    /// or one split directory, on the driver's host.
    pub data: PathBuf,
    /// Training split under `data` (default: its first `train*`
    /// directory; none when `data` is itself the split).
    #[serde(default)]
    pub train_split: Option<String>,
    /// Dev split under `data` (default: its first `dev*` directory, if
    /// any): WER/CER after every epoch.
    #[serde(default)]
    pub dev_split: Option<String>,
    /// The network.
    pub model: Ds2Config,
    /// Epochs.
    pub epochs: u64,
    /// Global batch size (utterances).
    pub batch_size: usize,
    /// Adam's initial learning rate.
    pub learning_rate: f64,
    /// The learning rate is divided by this after every epoch (DS2's
    /// annealing; 1 keeps it constant).
    pub anneal: f64,
    /// Seed of the initial weights and the data order.
    pub seed: u64,
    /// Longest training utterance, in seconds (longer ones are skipped).
    pub max_seconds: f64,
    /// Feature masking of training utterances.
    #[serde(default)]
    pub spec_augment: Option<SpecAugment>,
    /// Waveform perturbation of training utterances (speed and noise),
    /// drawn afresh every epoch; executors then keep each utterance's
    /// audio beside its features.
    #[serde(default)]
    pub wave_augment: Option<WaveAugment>,
    /// SortaGrad (DS2, section 3.1): the first epoch takes the utterances
    /// from shortest to longest, later epochs in a seeded random order.
    #[serde(default)]
    pub sorta_grad: bool,
    /// Share of each split's files (audio that does not decode, entries
    /// without a transcript or audio, characters outside the alphabet)
    /// that may be skipped, each named, in [0, 1]; more fails the run
    /// before it starts. 0 by default: one bad file fails it.
    #[serde(default)]
    pub max_bad_share: f64,
}

impl SpeechSettings {
    /// The defaults of `kiln speech train` for corpus `data`.
    pub fn new(data: PathBuf) -> Result<Self> {
        Ok(SpeechSettings {
            data,
            train_split: None,
            dev_split: None,
            model: Ds2Config::from_toml_str(DS2_SMALL)?,
            epochs: 40,
            batch_size: 8,
            learning_rate: 1e-3,
            anneal: 1.05,
            seed: 1,
            max_seconds: 20.0,
            spec_augment: None,
            wave_augment: None,
            sorta_grad: false,
            max_bad_share: 0.0,
        })
    }

    /// Checks the settings' ranges: `epochs` in `[1, 100000]`,
    /// `batch_size` in `[1, 65536]`, `learning_rate` in `(0, 10]`, `anneal`
    /// in `[1, 100]` (the rate is divided by it every epoch),
    /// `max_seconds` in `(0, 3600]`, `max_bad_share` in `[0, 1]`, and the model's and SpecAugment's own
    /// ranges.
    pub fn check(&self) -> Result<()> {
        self.model.validate()?;
        if let Some(a) = &self.spec_augment {
            a.validate()?;
        }
        if let Some(a) = &self.wave_augment {
            a.validate()?;
        }
        bounded(KIND, "job.epochs", self.epochs, 1..=MAX_EPOCHS)?;
        bounded(KIND, "job.batch_size", self.batch_size, 1..=MAX_BATCH_SIZE)?;
        positive_number(
            KIND,
            "job.learning_rate",
            self.learning_rate,
            MAX_LEARNING_RATE,
        )?;
        positive_number(KIND, "job.max_seconds", self.max_seconds, MAX_SECONDS)?;
        in_range(KIND, "job.max_bad_share", self.max_bad_share, 0.0..=1.0)?;
        in_range(KIND, "job.anneal", self.anneal, 1.0..=100.0)
    }

    /// The training split's directory.
    pub fn train_dir(&self) -> PathBuf {
        match &self.train_split {
            Some(s) => self.data.join(s),
            None => self.data.clone(),
        }
    }

    /// The dev split's directory, if any.
    pub fn dev_dir(&self) -> Option<PathBuf> {
        self.dev_split.as_ref().map(|s| self.data.join(s))
    }
}

/// The first subdirectory of `root` whose name starts with `prefix`.
pub fn find_split(root: &Path, prefix: &str) -> std::io::Result<Option<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

/// One utterance of a training split, as the driver lists it: its id,
/// transcript and audio file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UtteranceRef {
    /// Utterance id.
    pub id: String,
    /// Its transcript.
    pub transcript: String,
    /// Its audio file on the driver's host.
    pub audio: FileRef,
}

/// Arguments of the speech source: the split's utterances (a staged
/// manifest of [`UtteranceRef`]s, sorted by id), the longest utterance
/// kept, whether to stage even where the paths exist, and whether to keep
/// each utterance's audio (for waveform augmentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpeechSource {
    /// The manifest.
    pub utterances: FileRef,
    /// Utterances longer than this many seconds are skipped (logged).
    pub max_seconds: f64,
    /// Stage the audio even where the paths exist.
    pub stage: bool,
    /// Keep each example's 16 kHz samples ([`Example::keeping_audio`]).
    #[serde(default)]
    pub keep_audio: bool,
}

/// What a run says before it starts about training utterances that teach
/// nothing: those CTC cannot align (the model's output for their audio is
/// shorter than their transcript needs) and those longer than
/// `max_seconds` (skipped), with their count and the first few ids.
fn check_alignments(
    listed: &[(Utterance, AudioLength)],
    model: &Ds2Config,
    max_seconds: f64,
) -> Vec<String> {
    const SHOWN: usize = 5;
    let mut unalignable = Vec::new();
    let mut too_long = Vec::new();
    for (u, length) in listed {
        if length.seconds() > max_seconds {
            too_long.push(u.id.as_str());
            continue;
        }
        let Ok(labels) = TranscriptVectorizer.encode(&u.transcript) else {
            continue;
        };
        if let Some(bad) = alignment::unalignable(model, &u.id, &labels, length) {
            unalignable.push(bad);
        }
    }
    let mut lines = Vec::new();
    if !unalignable.is_empty() {
        let shown: Vec<String> = unalignable
            .iter()
            .take(SHOWN)
            .map(|b| {
                format!(
                    "{} ({} output frames, {} needed)",
                    b.id, b.output_frames, b.needed
                )
            })
            .collect();
        lines.push(format!(
            "WARNING {} of {} training utterances cannot be aligned by CTC (the model's output for their audio is shorter than their transcript needs; they teach nothing): {}{}",
            unalignable.len(),
            listed.len(),
            shown.join(", "),
            if unalignable.len() > SHOWN { ", …" } else { "" }
        ));
    }
    if !too_long.is_empty() {
        lines.push(format!(
            "SKIPPING {} of {} training utterances longer than max_seconds = {max_seconds}: {}{}",
            too_long.len(),
            listed.len(),
            too_long[..too_long.len().min(SHOWN)].join(", "),
            if too_long.len() > SHOWN { ", …" } else { "" }
        ));
    }
    lines
}

/// The example of one utterance whose audio is at `path`, or `None`
/// (logged) when it is longer than `max_seconds` (the driver said so
/// before the run started). Audio that does not decode or a transcript
/// outside the alphabet is an error naming the file: the driver checked
/// every file before the run, so the file changed since.
fn example_of(
    id: &str,
    transcript: &str,
    path: &Path,
    max_seconds: f64,
    keep_audio: bool,
) -> std::result::Result<Option<Example>, String> {
    let audio = read_audio_at(path, SAMPLE_RATE).map_err(|e| e.to_string())?;
    if audio.duration_s() > max_seconds {
        warn!(file = %path.display(), max_seconds, "skipped: too long");
        return Ok(None);
    }
    let example = if keep_audio {
        Example::keeping_audio(id, transcript, &audio)
    } else {
        Example::new(id, transcript, &audio)
    };
    example
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads partition `p` of `n` of the manifest's utterances (a contiguous
/// range), staging each audio file where the executor lacks it.
/// Utterances longer than `max_seconds` are skipped; a file that cannot be
/// staged or read fails the task (it is retried elsewhere).
pub fn read_speech_partition(
    a: &SpeechSource,
    p: u32,
    n: u32,
) -> std::result::Result<Vec<Example>, kiln_runtime::BoxError> {
    let utts: Vec<UtteranceRef> = read_manifest(&a.utterances, a.stage)?;
    let range = partition_range(utts.len(), p, n);
    let mut out = Vec::with_capacity(range.len());
    for u in &utts[range] {
        let path = local(&u.audio, a.stage)?;
        out.extend(example_of(
            &u.id,
            &u.transcript,
            &path,
            a.max_seconds,
            a.keep_audio,
        )?);
    }
    Ok(out)
}

/// Reads a whole split on this process (for evaluation) as examples, its
/// unusable files held to `max_bad_share` (`setting` names where it was
/// set): the examples, sorted by id, and the `SKIPPING` line naming the
/// files left out, if any.
pub fn read_split(
    split: &Path,
    max_bad_share: f64,
    setting: &str,
) -> Result<(Vec<Example>, Option<String>)> {
    let checked = checked_examples(split, max_bad_share, setting)?;
    Ok((
        checked.items.into_iter().map(|(_, e)| e).collect(),
        checked.skipped,
    ))
}

/// WER and CER of `model` on `examples` with `decoder` (`kiln speech
/// eval` and training's dev scores; normalised as `kiln speech score` is).
pub fn score(
    model: &mut Ds2<f32>,
    examples: &[Example],
    decoder: &Decoder<'_>,
) -> Result<(f64, f64)> {
    let refs: Vec<&Example> = examples.iter().collect();
    let hyps = pipeline::transcribe(model, &refs, decoder)?;
    let pairs: Vec<(&str, &str)> = examples
        .iter()
        .zip(&hyps)
        .map(|(e, h)| (e.transcript.as_str(), h.as_str()))
        .collect();
    let (w, c) = error_rates(&pairs);
    Ok((w.rate(), c.rate()))
}

/// `config`'s DS2 with `params` and `buffers` (batch-norm statistics).
pub fn load_model(config: &Ds2Config, params: &[f32], buffers: &[f32]) -> Result<Ds2<f32>> {
    let mut model = config.init::<f32>(&mut StdRng::seed_from_u64(0))?;
    model.set_flat_params(params)?;
    if !buffers.is_empty() {
        model.set_flat_buffers(buffers)?;
    }
    Ok(model)
}

/// The speech kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct Speech;

/// What the kind keeps on the driver: the dev split and its latest score.
pub struct SpeechEval {
    dev: Vec<Example>,
    last: Option<(f64, f64)>,
}

impl TrainingJob for Speech {
    type Settings = SpeechSettings;
    type Sample = Example;
    type Eval = SpeechEval;

    fn kind(&self) -> &'static str {
        KIND
    }

    fn trainer(&self) -> &'static str {
        DS2_TRAINER
    }

    fn free_on_resume(&self) -> &'static [&'static str] {
        &[
            "epochs",
            "learning_rate",
            "anneal",
            "dev_split",
            "max_bad_share",
        ]
    }

    fn default_shards(&self) -> usize {
        2
    }

    fn register(&self, r: &mut Registry) {
        r.register_source(SPEECH_SOURCE, read_speech_partition);
        register_objective::<Example, Ds2ObjectiveConfig, _, _>(r, DS2_TRAINER, Ds2Objective::new);
    }

    fn validate(&self, s: &mut SpeechSettings, env: &JobEnv) -> Result<String> {
        s.data = env.existing(KIND, "job.data", &s.data)?;
        let io = |e| JobError::Io {
            path: s.data.clone(),
            source: e,
        };
        if s.train_split.is_none() {
            s.train_split = find_split(&s.data, "train").map_err(io)?;
        }
        if s.dev_split.is_none() && s.train_split.is_some() {
            s.dev_split = find_split(&s.data, "dev").map_err(io)?;
        }
        let train = s.train_dir();
        if !train.is_dir() {
            return Err(JobError::MissingPath {
                kind: KIND.into(),
                setting: "job.train_split".into(),
                path: train,
            });
        }
        if let Some(dev) = s.dev_dir() {
            if !dev.is_dir() {
                return Err(JobError::MissingPath {
                    kind: KIND.into(),
                    setting: "job.dev_split".into(),
                    path: dev,
                });
            }
        }
        s.check()?;
        Ok(format!(
            "DS2 on {}{}, {} epochs, batch {}",
            train.display(),
            s.dev_dir()
                .map(|d| format!(" (dev {})", d.display()))
                .unwrap_or_default(),
            s.epochs,
            s.batch_size
        ))
    }

    async fn plan(
        &self,
        s: &SpeechSettings,
        run: &RunSettings,
        partitions: u32,
        ctx: &JobContext,
    ) -> Result<TrainingPlan<Example, SpeechEval>> {
        let initial = s.model.init::<f32>(&mut StdRng::seed_from_u64(s.seed))?;
        let train = s.train_dir();
        let checking = std::time::Instant::now();
        let checked = {
            let (dir, share) = (train.clone(), s.max_bad_share);
            tokio::task::spawn_blocking(move || {
                checked_utterances(&dir, share, "job.max_bad_share")
            })
            .await
            .map_err(|e| JobError::step(format!("reading {}", train.display()), e))??
        };
        ctx.line(format!(
            "CHECKED {} training utterances of {} in {:.1} s (decoded in full)",
            checked.items.len(),
            train.display(),
            checking.elapsed().as_secs_f64()
        ));
        if let Some(line) = checked.skipped {
            ctx.line(line);
        }
        let mut listed = checked.items;
        for line in check_alignments(&listed, &s.model, s.max_seconds) {
            ctx.line(line);
        }
        // Too long to train on: left out of the manifest (executors would
        // skip them), so that its indices are the training set's.
        listed.retain(|(_, length)| length.seconds() <= s.max_seconds);
        let sorted_epochs = s.sorta_grad.then(|| SortedEpochs {
            keys: listed
                .iter()
                .map(|(_, length)| length.samples_at(SAMPLE_RATE))
                .collect(),
            epochs: 1,
        });
        let audio = publish_all(
            ctx,
            listed.iter().map(|(u, _)| u.audio_path.clone()).collect(),
        )
        .await?;
        let utterances: Vec<UtteranceRef> = listed
            .into_iter()
            .zip(audio)
            .map(|((u, _), audio)| UtteranceRef {
                id: u.id,
                transcript: u.transcript,
                audio,
            })
            .collect();
        let source = SpeechSource {
            utterances: publish_manifest(ctx, "train-utterances.rmp", &utterances).await?,
            max_seconds: s.max_seconds,
            stage: run.stage,
            keep_audio: s.wave_augment.as_ref().is_some_and(WaveAugment::is_active),
        };
        let data = ctx.driver().source(SPEECH_SOURCE, &source, partitions)?;
        let dev = match s.dev_dir() {
            Some(dir) => {
                let (dir2, share) = (dir.clone(), s.max_bad_share);
                let (dev, skipped) = tokio::task::spawn_blocking(move || {
                    read_split(&dir2, share, "job.max_bad_share")
                })
                .await
                .map_err(|e| JobError::step(format!("reading {}", dir.display()), e))??;
                if let Some(line) = skipped {
                    ctx.line(line);
                }
                dev
            }
            None => Vec::new(),
        };
        let worker = Ds2ObjectiveConfig {
            model: s.model.clone(),
            spec_augment: s.spec_augment.clone(),
            wave_augment: s.wave_augment.clone(),
        };
        Ok(TrainingPlan {
            data,
            worker_config: encode(&worker)?,
            params: initial.flat_params(),
            buffers: initial.flat_buffers(),
            optimizer: OptimizerConfig::Adam(AdamConfig {
                lr: s.learning_rate,
                ..AdamConfig::default()
            }),
            learning_rate: LearningRate {
                base: s.learning_rate,
                schedule: LrSchedule::Exponential {
                    gamma: 1.0 / s.anneal,
                },
            },
            epochs: s.epochs,
            batch_size: s.batch_size,
            seed: s.seed,
            sorted_epochs,
            eval: SpeechEval { dev, last: None },
        })
    }

    async fn evaluate(
        &self,
        s: &SpeechSettings,
        eval: &mut SpeechEval,
        _epoch: &BatchStats,
        trainer: &mut DistributedTrainer<Example>,
    ) -> Result<Vec<Metric>> {
        if eval.dev.is_empty() {
            return Ok(Vec::new());
        }
        trainer.current_params().await?;
        let mut model = load_model(&s.model, trainer.params(), trainer.buffers())?;
        let (w, c) = score(&mut model, &eval.dev, &Decoder::Greedy)?;
        eval.last = Some((w, c));
        Ok(vec![("dev_wer".into(), w), ("dev_cer".into(), c)])
    }

    async fn finish(
        &self,
        _s: &SpeechSettings,
        eval: &mut SpeechEval,
        report: &TrainingReport,
        _trainer: &mut DistributedTrainer<Example>,
    ) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        if let Some((w, c)) = eval.last {
            lines.push(format!("DEV-WER {w:.4} DEV-CER {c:.4} (greedy)"));
        }
        lines.push(format!(
            "trained DS2 on {} executors: {:.1} utterances/s",
            report.executors, report.samples_per_second
        ));
        Ok(lines)
    }

    fn save_model(
        &self,
        s: &SpeechSettings,
        params: &[f32],
        buffers: &[f32],
        path: &Path,
    ) -> Result<()> {
        load_model(&s.model, params, buffers)?.save(path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmentation_settings_are_checked_before_a_run() {
        let mut s = SpeechSettings::new(PathBuf::from("corpus")).unwrap();
        s.wave_augment = Some(WaveAugment::default());
        s.sorta_grad = true;
        assert!(s.check().is_ok());
        s.wave_augment = Some(WaveAugment {
            snr_db: [30.0, f32::NAN],
            ..WaveAugment::default()
        });
        let err = s.check().unwrap_err().to_string();
        assert!(err.contains("snr_db[1]"), "{err}");
        s.wave_augment = Some(WaveAugment {
            speeds: vec![0.9, 3.0],
            ..WaveAugment::default()
        });
        let err = s.check().unwrap_err().to_string();
        assert!(err.contains("speeds[1]"), "{err}");
        // Unknown keys are refused, in the settings and in the augmentation.
        let mut json =
            serde_json::to_value(SpeechSettings::new(PathBuf::from("c")).unwrap()).unwrap();
        json["wave_augment"] = serde_json::json!({"speeds": [1.1], "snr": [1, 2]});
        let err = serde_json::from_value::<SpeechSettings>(json.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("snr"), "{err}");
        json["wave_augment"] = serde_json::json!({"speeds": [1.1]});
        json["sorta_grads"] = serde_json::json!(true);
        let err = serde_json::from_value::<SpeechSettings>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sorta_grads"), "{err}");
    }
}
