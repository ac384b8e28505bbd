//! Deep Speech 2 with the CTC loss as an [`Objective`]: what data-parallel
//! training runs on each share of a batch of [`Example`]s, optionally
//! masking every training utterance with [`SpecAugment`].

use kiln_nn::objective::{BatchLoss, Objective};
use kiln_nn::Module;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::augment::SpecAugment;
use crate::ds2::{Ds2, Ds2Config};
use crate::error::{Error, Result};
use crate::pipeline::{self, Example};

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
}

/// Spreads the per-utterance mask seeds of one share (an odd constant,
/// the golden ratio's 64-bit fraction).
const MASK_SEED_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

/// DS2 trained with CTC on [`Example`]s.
pub struct Ds2Objective {
    model: Ds2<f32>,
    spec_augment: Option<SpecAugment>,
}

impl Ds2Objective {
    /// Builds the network (its weights are whatever the trainer loads).
    pub fn new(config: &Ds2ObjectiveConfig) -> Result<Self> {
        if let Some(a) = &config.spec_augment {
            a.validate()?;
        }
        let model = config.model.init::<f32>(&mut StdRng::seed_from_u64(0))?;
        Ok(Ds2Objective {
            model,
            spec_augment: config.spec_augment.clone(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Ds2<f32> {
        &self.model
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

    /// CTC summed over the share's utterances; with SpecAugment each
    /// utterance is masked from its own stream of `seed` (so a redone
    /// share masks alike).
    fn loss_and_gradients(&mut self, samples: &[&Example], seed: u64) -> Result<BatchLoss> {
        let loss = match &self.spec_augment {
            None => pipeline::ctc_pass(&mut self.model, samples)?,
            Some(aug) => {
                let masked = samples
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        aug.augmented(e, seed ^ (i as u64).wrapping_mul(MASK_SEED_STRIDE))
                    })
                    .collect::<Result<Vec<_>>>()?;
                pipeline::ctc_pass(&mut self.model, &masked.iter().collect::<Vec<_>>())?
            }
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
