//! SpecAugment-style masking of training features (Park et al. 2019,
//! without time warping): a few bands of consecutive frequency bins and a
//! few runs of consecutive frames are set to zero, which is the mean of
//! the per-utterance normalised features. Seeded, so a distributed run
//! that redoes an iteration masks the same way.

use kiln_nn::bounds::{check, check_number_f32};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pipeline::Example;

/// Most masks of each kind per utterance.
pub const MAX_MASKS: usize = 100;
/// Widest mask, in bins or frames.
pub const MAX_MASK_WIDTH: usize = 100_000;

/// How many masks of which widths [`SpecAugment::apply`] draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpecAugment {
    /// Frequency masks per utterance.
    pub freq_masks: usize,
    /// Widest frequency mask, in bins (each width is uniform in `0..=max`).
    pub max_freq_width: usize,
    /// Time masks per utterance.
    pub time_masks: usize,
    /// Widest time mask, in frames.
    pub max_time_width: usize,
    /// No time mask is wider than this fraction of the utterance.
    pub max_time_fraction: f32,
}

impl Default for SpecAugment {
    /// Two frequency masks of up to 27 bins and two time masks of up to 40
    /// frames (0.4 s), each at most a fifth of the utterance: the paper's
    /// LibriSpeech double policy with the time width scaled to utterances
    /// of a few seconds.
    fn default() -> Self {
        SpecAugment {
            freq_masks: 2,
            max_freq_width: 27,
            time_masks: 2,
            max_time_width: 40,
            max_time_fraction: 0.2,
        }
    }
}

impl SpecAugment {
    /// Checks the settings: at most [`MAX_MASKS`] masks of each kind,
    /// widths of at most [`MAX_MASK_WIDTH`], `max_time_fraction` a finite
    /// number in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        let r = |e| Error::range("SpecAugment", e);
        check("freq_masks", self.freq_masks, 0..=MAX_MASKS).map_err(r)?;
        check("time_masks", self.time_masks, 0..=MAX_MASKS).map_err(r)?;
        check("max_freq_width", self.max_freq_width, 0..=MAX_MASK_WIDTH).map_err(r)?;
        check("max_time_width", self.max_time_width, 0..=MAX_MASK_WIDTH).map_err(r)?;
        check_number_f32("max_time_fraction", self.max_time_fraction, 0.0..=1.0).map_err(r)?;
        Ok(())
    }

    /// Masks `features` (`frames × bins`, row-major) in place.
    pub fn apply(
        &self,
        features: &mut [f32],
        frames: usize,
        bins: usize,
        rng: &mut impl Rng,
    ) -> Result<()> {
        if features.len() != frames * bins {
            return Err(Error::config(
                "SpecAugment",
                format!(
                    "{} values are not {frames} frames of {bins} bins",
                    features.len()
                ),
            ));
        }
        for _ in 0..self.freq_masks {
            let (lo, hi) = span(rng, self.max_freq_width.min(bins), bins);
            for frame in features.chunks_exact_mut(bins.max(1)) {
                frame[lo..hi].fill(0.0);
            }
        }
        let widest = self
            .max_time_width
            .min((self.max_time_fraction * frames as f32) as usize)
            .min(frames);
        for _ in 0..self.time_masks {
            let (lo, hi) = span(rng, widest, frames);
            features[lo * bins..hi * bins].fill(0.0);
        }
        Ok(())
    }

    /// A masked copy of `example`, drawn from `seed`.
    pub fn augmented(&self, example: &Example, seed: u64) -> Result<Example> {
        let mut out = example.clone();
        let mut rng = StdRng::seed_from_u64(seed);
        self.apply(&mut out.features, out.frames, out.bins, &mut rng)
            .map_err(|e| Error::config(format!("utterance {}", example.id), e.to_string()))?;
        Ok(out)
    }
}

/// A run `lo..hi` of width uniform in `0..=widest` at a uniform place in
/// `0..len` (`widest ≤ len`).
fn span(rng: &mut impl Rng, widest: usize, len: usize) -> (usize, usize) {
    let width = rng.random_range(0..=widest);
    let lo = rng.random_range(0..=len - width);
    (lo, lo + width)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(aug: &SpecAugment, frames: usize, bins: usize, seed: u64) -> Vec<f32> {
        let mut f = vec![1.0f32; frames * bins];
        aug.apply(&mut f, frames, bins, &mut StdRng::seed_from_u64(seed))
            .unwrap();
        f
    }

    #[test]
    fn masks_are_whole_bands_and_runs_within_their_limits() {
        let aug = SpecAugment {
            freq_masks: 1,
            max_freq_width: 5,
            time_masks: 0,
            ..SpecAugment::default()
        };
        let (frames, bins) = (50, 20);
        let mut seen_some = false;
        for seed in 0..20 {
            let f = masked(&aug, frames, bins, seed);
            // A frequency mask zeroes the same bins in every frame.
            let zero_bins: Vec<usize> = (0..bins).filter(|&b| f[b] == 0.0).collect();
            for t in 0..frames {
                for b in 0..bins {
                    assert_eq!(f[t * bins + b] == 0.0, zero_bins.contains(&b));
                }
            }
            assert!(zero_bins.len() <= 5);
            if let (Some(a), Some(z)) = (zero_bins.first(), zero_bins.last()) {
                assert_eq!(z - a + 1, zero_bins.len(), "contiguous");
                seen_some = true;
            }
        }
        assert!(seen_some);
        let aug = SpecAugment {
            freq_masks: 0,
            time_masks: 1,
            max_time_width: 40,
            max_time_fraction: 0.2,
            ..SpecAugment::default()
        };
        for seed in 0..20 {
            let f = masked(&aug, frames, bins, seed);
            let zero_frames: Vec<usize> = (0..frames)
                .filter(|&t| f[t * bins..(t + 1) * bins].iter().all(|&v| v == 0.0))
                .collect();
            let zeros = f.iter().filter(|&&v| v == 0.0).count();
            assert_eq!(zeros, zero_frames.len() * bins, "only whole frames");
            // At most a fifth of 50 frames, though 40 are allowed.
            assert!(zero_frames.len() <= 10, "{zero_frames:?}");
        }
    }

    #[test]
    fn the_same_seed_masks_the_same_way_and_sizes_are_checked() {
        let aug = SpecAugment::default();
        assert_eq!(masked(&aug, 300, 161, 7), masked(&aug, 300, 161, 7));
        assert_ne!(masked(&aug, 300, 161, 7), masked(&aug, 300, 161, 8));
        // Masks wider than the input are clipped to it.
        let f = masked(&aug, 1, 3, 1);
        assert_eq!(f.len(), 3);
        let mut short = vec![0.0f32; 5];
        let err = aug
            .apply(&mut short, 2, 3, &mut StdRng::seed_from_u64(0))
            .unwrap_err();
        assert!(err.to_string().contains("2 frames of 3 bins"), "{err}");
        let bad = SpecAugment {
            max_time_fraction: 1.5,
            ..SpecAugment::default()
        };
        assert!(bad.validate().is_err());
        for bad in [
            SpecAugment {
                max_time_fraction: f32::NAN,
                ..SpecAugment::default()
            },
            SpecAugment {
                time_masks: usize::MAX,
                ..SpecAugment::default()
            },
            SpecAugment {
                freq_masks: MAX_MASKS + 1,
                ..SpecAugment::default()
            },
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("SpecAugment:") && e.contains("must be"), "{e}");
        }
        // Applied anyway, it still masks within the utterance.
        let f = masked(&bad, 4, 2, 3);
        assert_eq!(f.len(), 8);
    }
}
