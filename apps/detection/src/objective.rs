//! SSD with the MultiBox loss as an [`Objective`]: what data-parallel
//! training runs on each share of a batch of [`VocSample`]s (images
//! decoded and augmented in parallel, seeded per image, so the batch does
//! not depend on which executor computes it).

use kiln_nn::objective::{BatchLoss, Objective};
use kiln_nn::Module;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::augment::SsdAugment;
use crate::error::{Error, Result};
use crate::model::{Ssd, SsdConfig};
use crate::multibox::MultiBoxConfig;
use crate::train::{augmented_samples, train_step_scaled, TrainConfig, VocSample};

/// What builds an [`SsdObjective`]: the network and the training settings
/// (augmentation, matching and mining).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsdObjectiveConfig {
    /// The network.
    pub model: SsdConfig,
    /// Augmentation and loss settings.
    pub train: TrainConfig,
}

/// SSD trained with the MultiBox loss on [`VocSample`]s.
pub struct SsdObjective {
    model: Ssd<f32>,
    augment: SsdAugment,
    loss: MultiBoxConfig,
}

impl SsdObjective {
    /// Builds the network (its weights are whatever the trainer loads).
    pub fn new(c: &SsdObjectiveConfig) -> Result<Self> {
        c.train.validate()?;
        let model = Ssd::<f32>::new(c.model.clone(), &mut StdRng::seed_from_u64(0))?;
        Ok(SsdObjective {
            augment: SsdAugment {
                size: c.model.image_size(),
                mean: c.model.mean,
                max_expand: c.train.max_expand,
                photometric: c.train.photometric,
            },
            loss: MultiBoxConfig {
                num_classes: c.model.num_classes(),
                overlap_threshold: c.train.overlap_threshold,
                neg_pos_ratio: c.train.neg_pos_ratio,
                variances: c.model.priors.variances,
            },
            model,
        })
    }
}

impl Objective<VocSample> for SsdObjective {
    type Error = Error;

    fn network(&self) -> &dyn Module<f32> {
        self.model.graph()
    }

    fn network_mut(&mut self) -> &mut dyn Module<f32> {
        self.model.graph_mut()
    }

    /// The MultiBox loss is normalised by the share's matched priors, so
    /// its gradient is scaled by the share's image count: the sum over
    /// shares divided by the batch size then averages the shares'
    /// normalised losses (what DDP does with a per-rank normalised loss).
    fn loss_and_gradients(&mut self, samples: &[&VocSample], seed: u64) -> Result<BatchLoss> {
        let (images, gts) = augmented_samples(samples, &self.augment, seed, 0)?;
        self.model.set_training(true);
        let n = samples.len() as f32;
        let out = train_step_scaled(&mut self.model, &images, &gts, &self.loss, n)?;
        let loss = f64::from(out.loss());
        if !loss.is_finite() {
            return Err(Error::invalid(
                "MultiBox loss",
                format!("the loss became {loss}: lower the learning rate"),
            ));
        }
        Ok(BatchLoss {
            loss_sum: loss * samples.len() as f64,
            samples: samples.len() as u64,
            correct: 0,
        })
    }

    fn evaluate(&mut self, _samples: &[&VocSample]) -> Result<BatchLoss> {
        Err(Error::invalid(
            "evaluate",
            "SSD is evaluated by mAP (`kiln detect eval`), not by a loss on the cluster",
        ))
    }
}
