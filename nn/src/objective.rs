//! [`Objective`]: a network together with its loss on samples of some type,
//! the one thing data-parallel training needs of a model. Applications
//! implement it for their models (a classifier here, Deep Speech 2 with
//! CTC, SSD with the MultiBox loss); a generic gradient worker outside
//! this crate loads weights, zeroes gradients, calls
//! [`Objective::loss_and_gradients`] and reads the flat gradients back, so
//! no model repeats that bookkeeping.

use crate::criterion::{ClassNll, Criterion, Reduction};
use crate::error::{Error, Result};
use crate::layers::LayerConfig;
use crate::module::{Module, ModuleExt};
use crate::tensor::Tensor;

/// Loss and counts of one batch (or one share of a batch).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchLoss {
    /// Sum of the per-sample losses.
    pub loss_sum: f64,
    /// Samples seen.
    pub samples: u64,
    /// Samples predicted correctly (classification; 0 where meaningless).
    pub correct: u64,
}

/// A network and its loss on samples of type `S`.
///
/// The contract a data-parallel trainer relies on: after
/// [`Objective::loss_and_gradients`] the network's parameter gradients
/// (accumulated onto whatever they held: the caller zeroes them first) are
/// the gradient of the **sum** of the samples' losses, so that splitting a
/// batch into shares and adding the shares' gradients gives the batch's
/// gradient whatever the split.
pub trait Objective<S>: Send {
    /// What a pass reports when it fails (the application's error type).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The network whose parameters are trained (flat weights, gradients
    /// and buffers are read and written through it).
    fn network(&self) -> &dyn Module<f32>;

    /// The network, mutably.
    fn network_mut(&mut self) -> &mut dyn Module<f32>;

    /// Forward and backward in training mode on `samples`, accumulating the
    /// gradient of the summed loss into the parameters' gradients. `seed`
    /// drives any randomness of the pass (dropout, augmentation), so the
    /// same share with the same seed gives the same gradient.
    fn loss_and_gradients(
        &mut self,
        samples: &[&S],
        seed: u64,
    ) -> std::result::Result<BatchLoss, Self::Error>;

    /// The summed loss (and correct count) in evaluation mode, without
    /// gradients. Objectives that are not judged by a loss say so with an
    /// error.
    fn evaluate(&mut self, samples: &[&S]) -> std::result::Result<BatchLoss, Self::Error>;
}

/// A labelled sample: flat features and a class index.
pub type LabelledSample = (Vec<f32>, u32);

/// A classifier trained with class NLL on its log-probabilities (a network
/// ending in `LogSoftMax`), on [`LabelledSample`]s reshaped to
/// `sample_shape`.
pub struct Classifier {
    network: Box<dyn Module<f32>>,
    sample_shape: Vec<usize>,
}

/// Samples per forward pass when a classifier evaluates.
const EVAL_CHUNK: usize = 512;

impl Classifier {
    /// Builds `config` (its weights are whatever the trainer loads) for
    /// samples of `sample_shape` (e.g. `[1, 8, 8]`).
    pub fn new(config: &LayerConfig, sample_shape: &[usize]) -> Result<Self> {
        use rand::SeedableRng;
        if sample_shape.is_empty() || sample_shape.contains(&0) {
            return Err(Error::config(
                "Classifier",
                format!("sample shape {sample_shape:?} must be non-empty with no zero side"),
            ));
        }
        let network = config.build::<f32>(&mut rand::rngs::StdRng::seed_from_u64(0))?;
        Ok(Classifier {
            network,
            sample_shape: sample_shape.to_vec(),
        })
    }

    fn batch(&self, samples: &[&LabelledSample]) -> Result<(Tensor<f32>, Tensor<f32>)> {
        let per: usize = self.sample_shape.iter().product();
        let mut x = Vec::with_capacity(per * samples.len());
        for (i, (features, _)) in samples.iter().enumerate() {
            if features.len() != per {
                return Err(Error::shape(
                    format!("Classifier sample {i}"),
                    format!("{:?} = {per} features", self.sample_shape),
                    &[features.len()],
                ));
            }
            x.extend_from_slice(features);
        }
        let mut shape = vec![samples.len()];
        shape.extend_from_slice(&self.sample_shape);
        let x = Tensor::from_shape_vec(ndarray::IxDyn(&shape), x)
            .map_err(|e| Error::config("Classifier", e.to_string()))?;
        let y = Tensor::from_shape_vec(
            ndarray::IxDyn(&[samples.len()]),
            samples.iter().map(|(_, c)| *c as f32).collect(),
        )
        .map_err(|e| Error::config("Classifier", e.to_string()))?;
        Ok((x, y))
    }

    fn scored(out: &Tensor<f32>, y: &Tensor<f32>, loss: f32, samples: usize) -> BatchLoss {
        BatchLoss {
            loss_sum: f64::from(loss),
            samples: samples as u64,
            correct: crate::metrics::top_k_correct(out, y, 1).unwrap_or(0) as u64,
        }
    }
}

impl Objective<LabelledSample> for Classifier {
    type Error = Error;

    fn network(&self) -> &dyn Module<f32> {
        self.network.as_ref()
    }

    fn network_mut(&mut self) -> &mut dyn Module<f32> {
        self.network.as_mut()
    }

    fn loss_and_gradients(&mut self, samples: &[&LabelledSample], _seed: u64) -> Result<BatchLoss> {
        self.network.train_mode();
        let (x, y) = self.batch(samples)?;
        let out = self.network.forward(&x)?;
        let mut nll = ClassNll::<f32>::new().with_reduction(Reduction::Sum);
        let loss = nll.forward(&out, &y)?;
        let g = nll.backward(&out, &y)?;
        self.network.backward_params(&x, &g)?;
        Ok(Self::scored(&out, &y, loss, samples.len()))
    }

    fn evaluate(&mut self, samples: &[&LabelledSample]) -> Result<BatchLoss> {
        self.network.eval_mode();
        let mut total = BatchLoss::default();
        for chunk in samples.chunks(EVAL_CHUNK) {
            let (x, y) = self.batch(chunk)?;
            let out = self.network.forward(&x)?;
            let mut nll = ClassNll::<f32>::new().with_reduction(Reduction::Sum);
            let loss = nll.forward(&out, &y)?;
            let s = Self::scored(&out, &y, loss, chunk.len());
            total.loss_sum += s.loss_sum;
            total.samples += s.samples;
            total.correct += s.correct;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::LinearConfig;

    fn classifier() -> Classifier {
        let config = LayerConfig::Sequential {
            layers: vec![
                LayerConfig::Linear(LinearConfig::new(3, 4)),
                LayerConfig::LogSoftMax { dim: 1 },
            ],
        };
        Classifier::new(&config, &[3]).unwrap()
    }

    #[test]
    fn shares_add_up_to_the_batch_gradient() {
        let mut c = classifier();
        let params: Vec<f32> = (0..c.network().num_params())
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        c.network_mut().set_flat_params(&params).unwrap();
        let samples: Vec<LabelledSample> = (0..5)
            .map(|i| (vec![i as f32, 1.0 - i as f32, 0.5], (i % 4) as u32))
            .collect();
        let refs: Vec<&LabelledSample> = samples.iter().collect();
        let mut grads = |share: &[&LabelledSample]| {
            c.network_mut().zero_grad();
            let loss = c.loss_and_gradients(share, 0).unwrap();
            (loss, c.network().flat_grads())
        };
        let (all_loss, all) = grads(&refs);
        let (a_loss, a) = grads(&refs[..2]);
        let (b_loss, b) = grads(&refs[2..]);
        assert_eq!(all_loss.samples, 5);
        assert!((all_loss.loss_sum - (a_loss.loss_sum + b_loss.loss_sum)).abs() < 1e-5);
        for i in 0..all.len() {
            assert!((all[i] - (a[i] + b[i])).abs() < 1e-5, "{i}");
        }
        let eval = c.evaluate(&refs).unwrap();
        assert!((eval.loss_sum - all_loss.loss_sum).abs() < 1e-5);
        assert_eq!(eval.correct, all_loss.correct);
    }

    #[test]
    fn a_sample_of_the_wrong_size_is_an_error_naming_it() {
        let mut c = classifier();
        let bad = [(vec![1.0], 0u32)];
        let refs: Vec<&LabelledSample> = bad.iter().collect();
        let err = c.loss_and_gradients(&refs, 0).unwrap_err().to_string();
        assert!(err.contains("sample 0"), "{err}");
        assert!(Classifier::new(&LayerConfig::Relu, &[]).is_err());
    }
}
