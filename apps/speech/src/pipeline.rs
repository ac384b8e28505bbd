//! The DS2 glue between the pieces: audio to normalised spectrogram
//! features ([`front_end`]), utterances ready for the model ([`Example`]),
//! padded batches ([`batch`]), one CTC training pass ([`ctc_pass`]), the
//! evaluation loss, and decoding to text ([`Decoder`], [`transcribe`]).

use std::path::Path;

use kiln_nn::criterion::ctc::{CtcLoss, CtcReduction};
use kiln_nn::tensor::Tensor;
use kiln_nn::ModuleExt;
use ndarray::{Array2, Axis, IxDyn};
use serde::{Deserialize, Serialize};

use crate::audio::{read_audio_at, Audio};
use crate::decoder::{best_path, BeamSearchDecoder, LmWeights};
use crate::ds2::{Ds2, Ds2Config};
use crate::error::{Error, Result};
use crate::features::{LogCompress, Normalize, Spectrogram, SpectrumKind, Transformer, Windower};
use crate::lm::NgramLm;
use crate::text::{TranscriptVectorizer, BLANK};

/// Sample rate the front end works at.
pub const SAMPLE_RATE: u32 = 16_000;

/// The DS2 front end on 16 kHz audio: 20 ms Hamming windows every 10 ms,
/// magnitude spectrum (161 bins), `log1p`, per-utterance normalisation.
/// Returns `(frames, 161)`.
pub fn front_end(audio: &Audio) -> Result<Array2<f32>> {
    let audio = if audio.sample_rate == SAMPLE_RATE {
        std::borrow::Cow::Borrowed(audio)
    } else {
        std::borrow::Cow::Owned(audio.resampled(SAMPLE_RATE)?)
    };
    Windower::ds2()
        .then(Spectrogram::new(320, SpectrumKind::Magnitude)?)
        .then(LogCompress::Log1p)
        .then(Normalize::default())
        .transform(audio.samples.clone())
}

/// One utterance ready for the model: its features and labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Utterance id (`<speaker>-<chapter>-<utt>` or a file stem).
    pub id: String,
    /// The transcript, whitespace-normalised (empty when unknown).
    pub transcript: String,
    /// Features, `frames × bins`, row-major.
    pub features: Vec<f32>,
    /// Number of frames.
    pub frames: usize,
    /// Feature bins per frame.
    pub bins: usize,
    /// Transcript labels (no blanks).
    pub labels: Vec<u32>,
    /// The 16 kHz samples the features were computed from, kept only for
    /// waveform augmentation ([`Example::keeping_audio`]); empty otherwise.
    #[serde(default)]
    pub audio: Vec<f32>,
}

impl Example {
    /// Computes the features of `audio` and encodes `transcript`.
    pub fn new(id: &str, transcript: &str, audio: &Audio) -> Result<Example> {
        let feats = front_end(audio)?;
        let labels = TranscriptVectorizer.encode(transcript)?;
        let (frames, bins) = feats.dim();
        Ok(Example {
            id: id.to_string(),
            transcript: transcript.split_whitespace().collect::<Vec<_>>().join(" "),
            features: feats.into_raw_vec_and_offset().0,
            frames,
            bins,
            labels: labels.into_iter().map(|l| l as u32).collect(),
            audio: Vec::new(),
        })
    }

    /// [`Example::new`] that also keeps the (16 kHz) samples, so that
    /// training can perturb the waveform and recompute the features
    /// ([`Example::with_audio`]).
    pub fn keeping_audio(id: &str, transcript: &str, audio: &Audio) -> Result<Example> {
        let mut e = Example::new(id, transcript, audio)?;
        e.audio = if audio.sample_rate == SAMPLE_RATE {
            audio.samples.clone()
        } else {
            audio.resampled(SAMPLE_RATE)?.samples
        };
        Ok(e)
    }

    /// This utterance with its features computed from `samples` (16 kHz)
    /// instead, e.g. a perturbed copy of its own audio; the returned
    /// example keeps no audio.
    pub fn with_audio(&self, samples: Vec<f32>) -> Result<Example> {
        let feats = front_end(&Audio {
            samples,
            sample_rate: SAMPLE_RATE,
        })?;
        let (frames, bins) = feats.dim();
        Ok(Example {
            id: self.id.clone(),
            transcript: self.transcript.clone(),
            features: feats.into_raw_vec_and_offset().0,
            frames,
            bins,
            labels: self.labels.clone(),
            audio: Vec::new(),
        })
    }

    /// Reads an audio file (WAV or FLAC, any rate) into an example without
    /// a transcript (for transcription).
    pub fn from_file(id: &str, path: &Path) -> Result<Example> {
        Example::new(id, "", &read_audio_at(path, SAMPLE_RATE)?)
    }
}

/// Pads `examples` into one `(N, 1, bins, T)` input (zeros beyond each
/// utterance's frames) and returns it with the frame counts.
pub fn batch(examples: &[&Example], config: &Ds2Config) -> Result<(Tensor<f32>, Vec<usize>)> {
    if examples.is_empty() {
        return Err(Error::config("DS2 batch", "no utterances"));
    }
    let bins = config.freq_bins;
    for e in examples {
        if e.bins != bins || e.features.len() != e.frames * e.bins || e.frames == 0 {
            return Err(Error::config(
                format!("utterance {}", e.id),
                format!(
                    "{} frames of {} bins ({} values); the model takes {bins} bins and at least one frame",
                    e.frames,
                    e.bins,
                    e.features.len()
                ),
            ));
        }
    }
    let t = examples.iter().map(|e| e.frames).max().unwrap_or(0);
    let mut x = Tensor::<f32>::zeros(IxDyn(&[examples.len(), 1, bins, t]));
    for (n, e) in examples.iter().enumerate() {
        let mut dst = x.index_axis_mut(Axis(0), n);
        let mut dst = dst.index_axis_mut(Axis(0), 0);
        for f in 0..e.frames {
            for b in 0..bins {
                dst[[b, f]] = e.features[f * bins + b];
            }
        }
    }
    Ok((x, examples.iter().map(|e| e.frames).collect()))
}

fn targets(examples: &[&Example]) -> Vec<Vec<usize>> {
    examples
        .iter()
        .map(|e| e.labels.iter().map(|&l| l as usize).collect())
        .collect()
}

/// The CTC loss DS2 trains with: summed over utterances (the trainer
/// divides by the batch size), infeasible alignments count as zero.
fn ctc() -> CtcLoss {
    CtcLoss::new(BLANK)
        .with_reduction(CtcReduction::Sum)
        .with_zero_infinity(true)
}

/// Forward and backward of `examples` in training mode: accumulates the
/// gradient of the **summed** CTC loss into the model's gradients and
/// returns that sum.
pub fn ctc_pass(model: &mut Ds2<f32>, examples: &[&Example]) -> Result<f64> {
    let (x, lengths) = batch(examples, model.ds2_config())?;
    model.train_mode();
    let (log_probs, out_lengths) = model.forward_with_lengths(&x, &lengths)?;
    let (loss, grad) =
        ctc().loss_and_grad_log_probs(&log_probs, &targets(examples), &out_lengths)?;
    model.backward_with_lengths(&x, &lengths, &grad)?;
    Ok(loss as f64)
}

/// Utterances per forward pass when evaluating or transcribing.
const EVAL_CHUNK: usize = 16;

/// Summed CTC loss of `examples` in evaluation mode (running statistics).
pub fn ctc_loss(model: &mut Ds2<f32>, examples: &[&Example]) -> Result<f64> {
    model.eval_mode();
    let mut sum = 0.0;
    for chunk in examples.chunks(EVAL_CHUNK) {
        let (x, lengths) = batch(chunk, model.ds2_config())?;
        let (log_probs, out_lengths) = model.forward_with_lengths(&x, &lengths)?;
        sum += ctc().forward(&log_probs, &targets(chunk), &out_lengths)? as f64;
    }
    Ok(sum)
}

/// How log-probabilities become text.
#[derive(Debug, Clone, Copy)]
pub enum Decoder<'a> {
    /// Best path (argmax per frame, collapse repeats, drop blanks).
    Greedy,
    /// Prefix beam search, optionally with an n-gram language model.
    Beam(BeamSearchDecoder<'a>),
}

impl Decoder<'_> {
    fn decode(&self, log_probs: ndarray::ArrayView2<'_, f32>) -> Result<String> {
        match self {
            Decoder::Greedy => best_path(log_probs),
            Decoder::Beam(b) => b.decode(log_probs),
        }
    }
}

/// A beam-search decoder over `lm` with `weights`.
pub fn lm_decoder(lm: &NgramLm, beam_width: usize, weights: LmWeights) -> Decoder<'_> {
    Decoder::Beam(BeamSearchDecoder {
        beam_width,
        alpha: weights.alpha,
        beta: weights.beta,
        unk_offset: weights.unk_offset,
        unk_letter_score: weights.unk_letter_score,
        lm: Some(lm),
        ..BeamSearchDecoder::default()
    })
}

/// Runs `model` in evaluation mode over `examples` and hands each
/// utterance's `(frames, classes)` log-probabilities to `each`, in order.
fn for_each_log_probs(
    model: &mut Ds2<f32>,
    examples: &[&Example],
    mut each: impl FnMut(ndarray::ArrayView2<'_, f32>) -> Result<()>,
) -> Result<()> {
    model.eval_mode();
    for chunk in examples.chunks(EVAL_CHUNK) {
        let (x, lengths) = batch(chunk, model.ds2_config())?;
        let (log_probs, out_lengths) = model.forward_with_lengths(&x, &lengths)?;
        for (n, &len) in out_lengths.iter().enumerate() {
            let lp = log_probs.index_axis(Axis(1), n);
            let lp = lp
                .slice_axis(Axis(0), ndarray::Slice::from(0..len))
                .into_dimensionality::<ndarray::Ix2>()
                .map_err(|e| Error::config("DS2 output", e.to_string()))?;
            each(lp)?;
        }
    }
    Ok(())
}

/// Transcribes `examples` in evaluation mode, in order.
pub fn transcribe(
    model: &mut Ds2<f32>,
    examples: &[&Example],
    decoder: &Decoder<'_>,
) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(examples.len());
    for_each_log_probs(model, examples, |lp| {
        out.push(decoder.decode(lp)?);
        Ok(())
    })?;
    Ok(out)
}

/// Each utterance's `(frames, classes)` log-probabilities, in order (for
/// decoding them many ways: [`crate::tune`]).
pub fn log_probs(model: &mut Ds2<f32>, examples: &[&Example]) -> Result<Vec<ndarray::Array2<f32>>> {
    let mut out = Vec::with_capacity(examples.len());
    for_each_log_probs(model, examples, |lp| {
        out.push(lp.to_owned());
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const TINY: &str = include_str!("../configs/ds2_tiny.toml");

    fn tone(seconds: f32, hz: f32) -> Audio {
        let n = (seconds * 16_000.0) as usize;
        Audio {
            samples: (0..n)
                .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / 16_000.0).sin() * 0.3)
                .collect(),
            sample_rate: 16_000,
        }
    }

    #[test]
    fn examples_batch_with_padding_and_decode() {
        let config = Ds2Config::from_toml_str(TINY).unwrap();
        let a = Example::new("a", " HELLO  WORLD ", &tone(0.5, 440.0)).unwrap();
        let b = Example::new("b", "HI", &tone(0.3, 880.0)).unwrap();
        assert_eq!(a.transcript, "HELLO WORLD");
        assert_eq!(a.bins, 161);
        assert_eq!((a.frames, b.frames), (49, 29));
        let (x, lengths) = batch(&[&a, &b], &config).unwrap();
        assert_eq!(x.shape(), &[2, 1, 161, 49]);
        assert_eq!(lengths, vec![49, 29]);
        assert_eq!(x[[1, 0, 3, 28]], b.features[28 * 161 + 3]);
        assert_eq!(x[[1, 0, 3, 29]], 0.0);

        let mut model = config
            .init::<f32>(&mut rand::rngs::StdRng::seed_from_u64(1))
            .unwrap();
        model.zero_grad();
        let loss = ctc_pass(&mut model, &[&a, &b]).unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{loss}");
        assert!(model.flat_grads().iter().any(|g| *g != 0.0));
        let eval = ctc_loss(&mut model, &[&a, &b]).unwrap();
        assert!(eval.is_finite() && eval > 0.0);
        let texts = transcribe(&mut model, &[&a, &b], &Decoder::Greedy).unwrap();
        assert_eq!(texts.len(), 2);
    }

    #[test]
    fn wrong_feature_sizes_are_errors() {
        let config = Ds2Config::from_toml_str(TINY).unwrap();
        let mut a = Example::new("a", "HI", &tone(0.2, 440.0)).unwrap();
        a.features.pop();
        let e = batch(&[&a], &config).unwrap_err().to_string();
        assert!(e.contains("utterance a"), "{e}");
        assert!(batch(&[], &config).is_err());
        assert!(Example::new("x", "NO DIGITS 4", &tone(0.2, 440.0)).is_err());
    }
}
