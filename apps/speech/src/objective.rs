//! Deep Speech 2 with the CTC loss as an [`Objective`]: what data-parallel
//! training runs on each share of a batch of [`Example`]s, optionally
//! perturbing every training utterance's waveform with [`WaveAugment`]
//! (its features are then computed afresh) and masking its features with
//! [`SpecAugment`].

use kiln_nn::objective::{BatchLoss, Objective};
use kiln_nn::Module;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::augment::SpecAugment;
use crate::ds2::{Ds2, Ds2Config};
use crate::error::{Error, Result};
use crate::pipeline::{self, Example};
use crate::wave_augment::WaveAugment;

/// What builds a [`Ds2Objective`]: the network and the feature masking of
/// training utterances, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ds2ObjectiveConfig {
    /// The network.
    pub model: Ds2Config,
    /// Feature masking of training utterances.
    #[serde(default)]
    pub spec_augment: Option<SpecAugment>,
    /// Waveform perturbation of training utterances (they must carry
    /// their audio, [`Example::keeping_audio`]).
    #[serde(default)]
    pub wave_augment: Option<WaveAugment>,
}

/// Spreads the per-utterance mask seeds of one share (an odd constant,
/// the golden ratio's 64-bit fraction).
const MASK_SEED_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;
/// Separates the waveform draws' seeds from the masks' seeds.
const WAVE_SEED_SALT: u64 = 0xD1B5_4A32_D192_ED03;

/// DS2 trained with CTC on [`Example`]s.
pub struct Ds2Objective {
    model: Ds2<f32>,
    spec_augment: Option<SpecAugment>,
    wave_augment: Option<WaveAugment>,
}

impl Ds2Objective {
    /// Builds the network (its weights are whatever the trainer loads).
    pub fn new(config: &Ds2ObjectiveConfig) -> Result<Self> {
        if let Some(a) = &config.spec_augment {
            a.validate()?;
        }
        if let Some(a) = &config.wave_augment {
            a.validate()?;
        }
        let model = config.model.init::<f32>(&mut StdRng::seed_from_u64(0))?;
        Ok(Ds2Objective {
            model,
            spec_augment: config.spec_augment.clone(),
            wave_augment: config.wave_augment.clone(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Ds2<f32> {
        &self.model
    }

    /// `example` as this objective trains on it with per-utterance seed
    /// `seed`: its waveform perturbed and its features recomputed, then
    /// masked. An example without audio cannot be perturbed: an error
    /// naming it.
    pub fn augmented(&self, example: &Example, seed: u64) -> Result<Example> {
        let perturbed = match &self.wave_augment {
            Some(wave) if wave.is_active() => {
                if example.audio.is_empty() {
                    return Err(Error::config(
                        format!("utterance {}", example.id),
                        "waveform augmentation needs the audio, and this example was read without it",
                    ));
                }
                let mut rng = StdRng::seed_from_u64(seed ^ WAVE_SEED_SALT);
                let samples = wave.apply(&example.audio, &mut rng)?;
                Some(example.with_audio(samples)?)
            }
            _ => None,
        };
        let base = perturbed.as_ref().unwrap_or(example);
        match &self.spec_augment {
            Some(spec) => spec.augmented(base, seed),
            None => Ok(perturbed.unwrap_or_else(|| example.clone())),
        }
    }
}

impl Objective<Example> for Ds2Objective {
    type Error = Error;

    fn network(&self) -> &dyn Module<f32> {
        &self.model
    }

    fn network_mut(&mut self) -> &mut dyn Module<f32> {
        &mut self.model
    }

    /// CTC summed over the share's utterances; each utterance is perturbed
    /// (waveform, then features) from its own streams of `seed`, so a
    /// redone share draws alike.
    fn loss_and_gradients(&mut self, samples: &[&Example], seed: u64) -> Result<BatchLoss> {
        let loss = if self.spec_augment.is_none() && self.wave_augment.is_none() {
            pipeline::ctc_pass(&mut self.model, samples)?
        } else {
            let augmented = samples
                .iter()
                .enumerate()
                .map(|(i, e)| self.augmented(e, seed ^ (i as u64).wrapping_mul(MASK_SEED_STRIDE)))
                .collect::<Result<Vec<_>>>()?;
            pipeline::ctc_pass(&mut self.model, &augmented.iter().collect::<Vec<_>>())?
        };
        Ok(BatchLoss {
            loss_sum: loss,
            samples: samples.len() as u64,
            correct: 0,
        })
    }

    fn evaluate(&mut self, samples: &[&Example]) -> Result<BatchLoss> {
        let loss = pipeline::ctc_loss(&mut self.model, samples)?;
        Ok(BatchLoss {
            loss_sum: loss,
            samples: samples.len() as u64,
            correct: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::Audio;

    fn objective(wave: WaveAugment) -> Ds2Objective {
        Ds2Objective::new(&Ds2ObjectiveConfig {
            model: Ds2Config::from_toml_str(include_str!("../configs/ds2_tiny.toml")).unwrap(),
            spec_augment: None,
            wave_augment: Some(wave),
        })
        .unwrap()
    }

    #[test]
    fn waveform_augmentation_recomputes_features_and_needs_the_audio() {
        let audio = Audio {
            samples: (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect(),
            sample_rate: pipeline::SAMPLE_RATE,
        };
        let faster = objective(WaveAugment {
            speeds: vec![1.1],
            noise_probability: 0.0,
            ..WaveAugment::default()
        });
        let kept = Example::keeping_audio("u1", "A B", &audio).unwrap();
        let out = faster.augmented(&kept, 3).unwrap();
        assert!(
            out.frames < kept.frames,
            "{} vs {}",
            out.frames,
            kept.frames
        );
        assert_eq!(
            (out.labels.clone(), out.audio.len()),
            (kept.labels.clone(), 0)
        );
        let bare = Example::new("u2", "A B", &audio).unwrap();
        let err = faster.augmented(&bare, 3).unwrap_err().to_string();
        assert!(
            err.contains("u2") && err.contains("needs the audio"),
            "{err}"
        );
    }
}
