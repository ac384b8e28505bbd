//! Waveform augmentation of training utterances, drawn afresh every time
//! an utterance is trained on: speed perturbation (Ko et al. 2015, as
//! Kaldi's and ESPnet's recipes do it: the audio is resampled so that it
//! plays `speed` times faster, which changes both tempo and pitch) and
//! additive coloured noise at a random signal-to-noise ratio. Seeded, so a
//! distributed run that redoes an iteration draws the same perturbation.

use kiln_nn::bounds::{check, check_number_f32};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::resample::resample;

/// Most speed factors in [`WaveAugment::speeds`].
pub const MAX_SPEEDS: usize = 64;
/// Slowest and fastest speed factor allowed.
pub const SPEED_RANGE: std::ops::RangeInclusive<f32> = 0.5..=2.0;
/// Lowest and highest signal-to-noise ratio allowed, in dB.
pub const SNR_RANGE_DB: std::ops::RangeInclusive<f32> = -20.0..=100.0;

/// The sample rate speed perturbation works at (the DS2 front end's).
const RATE: u32 = crate::pipeline::SAMPLE_RATE;
/// Speed factors are rounded to this step, so that the resampling ratio
/// `RATE·speed : RATE` has a short polyphase table.
const SPEED_STEP: f32 = 0.01;

/// What [`WaveAugment::apply`] draws for each training utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WaveAugment {
    /// Speed factors, one drawn uniformly per utterance (1 leaves the
    /// speed; empty: no speed perturbation). Each in `[0.5, 2]`, rounded
    /// to 0.01.
    pub speeds: Vec<f32>,
    /// Probability that an utterance gets additive noise, in `[0, 1]`.
    pub noise_probability: f32,
    /// Signal-to-noise ratio range, in dB (uniform), within `[-20, 100]`.
    pub snr_db: [f32; 2],
}

impl Default for WaveAugment {
    /// Kaldi's three-way speed perturbation (0.9, 1, 1.1) and, on half of
    /// the utterances, white, pink or brown noise at 5 to 25 dB SNR.
    fn default() -> Self {
        WaveAugment {
            speeds: vec![0.9, 1.0, 1.1],
            noise_probability: 0.5,
            snr_db: [5.0, 25.0],
        }
    }
}

impl WaveAugment {
    /// Speed perturbation only (0.9, 1, 1.1), no noise.
    pub fn speed_only() -> Self {
        WaveAugment {
            noise_probability: 0.0,
            ..WaveAugment::default()
        }
    }

    /// Noise only (half of the utterances, 5 to 25 dB SNR), no speed
    /// perturbation.
    pub fn noise_only() -> Self {
        WaveAugment {
            speeds: Vec::new(),
            ..WaveAugment::default()
        }
    }

    /// Checks the settings: at most [`MAX_SPEEDS`] speeds, each finite in
    /// [`SPEED_RANGE`]; `noise_probability` finite in `[0, 1]`; `snr_db`
    /// finite within [`SNR_RANGE_DB`] with its low end first.
    pub fn validate(&self) -> Result<()> {
        let r = |e| Error::range("WaveAugment", e);
        check("speeds (count)", self.speeds.len(), 0..=MAX_SPEEDS).map_err(r)?;
        for (i, &s) in self.speeds.iter().enumerate() {
            check_number_f32(&format!("speeds[{i}]"), s, SPEED_RANGE).map_err(r)?;
        }
        check_number_f32("noise_probability", self.noise_probability, 0.0..=1.0).map_err(r)?;
        let [lo, hi] = self.snr_db;
        check_number_f32("snr_db[0]", lo, SNR_RANGE_DB).map_err(r)?;
        check_number_f32("snr_db[1]", hi, SNR_RANGE_DB).map_err(r)?;
        if lo > hi {
            return Err(Error::config(
                "WaveAugment",
                format!("snr_db [{lo}, {hi}]: the low end is above the high end"),
            ));
        }
        Ok(())
    }

    /// Whether [`WaveAugment::apply`] can change anything.
    pub fn is_active(&self) -> bool {
        self.speeds.iter().any(|&s| speed_rate(s) != RATE) || self.noise_probability > 0.0
    }

    /// A perturbed copy of `samples` (16 kHz): sped up or slowed down by a
    /// factor drawn from `speeds`, then with noise on a
    /// `noise_probability` share of the calls.
    pub fn apply(&self, samples: &[f32], rng: &mut impl Rng) -> Result<Vec<f32>> {
        let mut out = match self.speeds.len() {
            0 => samples.to_vec(),
            n => {
                let speed = self.speeds[rng.random_range(0..n)];
                // Playing `speed` times faster: the audio is read as if it
                // were sampled at RATE·speed and resampled to RATE.
                resample(samples, speed_rate(speed), RATE)?
            }
        };
        if self.noise_probability > 0.0 && rng.random::<f32>() < self.noise_probability {
            let [lo, hi] = self.snr_db;
            let snr = if hi > lo {
                rng.random_range(lo..=hi)
            } else {
                lo
            };
            let colour = match rng.random_range(0..3) {
                0 => NoiseColour::White,
                1 => NoiseColour::Pink,
                _ => NoiseColour::Brown,
            };
            add_noise(&mut out, colour, snr, rng);
        }
        Ok(out)
    }
}

/// The sample rate that `speed` reads 16 kHz audio at (speed rounded to
/// [`SPEED_STEP`]).
fn speed_rate(speed: f32) -> u32 {
    let steps = (speed / SPEED_STEP).round() as u32;
    RATE / 100 * steps
}

/// The spectral shape of additive noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseColour {
    /// Flat spectrum.
    White,
    /// Power falling 3 dB per octave (Paul Kellet's economy filter).
    Pink,
    /// Power falling 6 dB per octave (leaky integrated white noise).
    Brown,
}

/// Adds noise of `colour` to `x` at `snr_db` below the signal's mean
/// power (silent signals are left alone).
pub fn add_noise(x: &mut [f32], colour: NoiseColour, snr_db: f32, rng: &mut impl Rng) {
    let power = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    if power <= 0.0 || !power.is_finite() {
        return;
    }
    let mut noise = gaussians(x.len(), rng);
    match colour {
        NoiseColour::White => {}
        NoiseColour::Pink => {
            let (mut b0, mut b1, mut b2) = (0.0f32, 0.0f32, 0.0f32);
            for v in &mut noise {
                b0 = 0.99765 * b0 + *v * 0.0990460;
                b1 = 0.96300 * b1 + *v * 0.2965164;
                b2 = 0.57000 * b2 + *v * 1.0526913;
                *v = b0 + b1 + b2 + *v * 0.1848;
            }
        }
        NoiseColour::Brown => {
            let mut acc = 0.0f32;
            for v in &mut noise {
                acc = 0.995 * acc + *v;
                *v = acc;
            }
        }
    }
    let noise_power =
        noise.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / noise.len().max(1) as f64;
    if noise_power <= 0.0 {
        return;
    }
    let gain = (power / noise_power / 10f64.powf(snr_db as f64 / 10.0)).sqrt() as f32;
    for (s, n) in x.iter_mut().zip(&noise) {
        *s += gain * n;
    }
}

/// `n` standard normal draws (Box–Muller, both values of each pair).
fn gaussians(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f32 = rng.random_range(f32::EPSILON..1.0);
        let u2: f32 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
        out.push(r * cos);
        out.push(r * sin);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn tone(seconds: f32, hz: f32) -> Vec<f32> {
        let n = (seconds * RATE as f32) as usize;
        (0..n)
            .map(|i| 0.5 * (std::f32::consts::TAU * hz * i as f32 / RATE as f32).sin())
            .collect()
    }

    /// The dominant frequency of `x`, by counting upward zero crossings.
    fn frequency(x: &[f32]) -> f32 {
        let crossings = x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        crossings as f32 * RATE as f32 / x.len() as f32
    }

    #[test]
    fn speed_changes_length_and_pitch_by_the_factor() {
        let x = tone(1.0, 440.0);
        for speed in [0.9f32, 1.1] {
            let aug = WaveAugment {
                speeds: vec![speed],
                noise_probability: 0.0,
                ..WaveAugment::default()
            };
            let y = aug.apply(&x, &mut StdRng::seed_from_u64(1)).unwrap();
            let want = x.len() as f32 / speed;
            assert!(
                (y.len() as f32 - want).abs() <= 2.0,
                "{} vs {want}",
                y.len()
            );
            let f = frequency(&y[1000..y.len() - 1000]);
            assert!((f - 440.0 * speed).abs() < 5.0, "speed {speed}: {f} Hz");
        }
        let same = WaveAugment::speed_only();
        assert!(same.is_active());
        let unchanged = WaveAugment {
            speeds: vec![1.0],
            noise_probability: 0.0,
            ..WaveAugment::default()
        };
        assert!(!unchanged.is_active());
        assert_eq!(
            unchanged.apply(&x, &mut StdRng::seed_from_u64(1)).unwrap(),
            x
        );
    }

    #[test]
    fn noise_lands_at_the_drawn_snr_for_every_colour() {
        let x = tone(1.0, 300.0);
        let power = |v: &[f32]| v.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / v.len() as f64;
        for colour in [NoiseColour::White, NoiseColour::Pink, NoiseColour::Brown] {
            for snr in [0.0f32, 10.0, 30.0] {
                let mut y = x.clone();
                add_noise(&mut y, colour, snr, &mut StdRng::seed_from_u64(3));
                let noise: Vec<f32> = y.iter().zip(&x).map(|(a, b)| a - b).collect();
                let got = 10.0 * (power(&x) / power(&noise)).log10();
                assert!((got - snr as f64).abs() < 1e-3, "{colour:?} {snr}: {got}");
            }
        }
        let mut silent = vec![0.0f32; 100];
        add_noise(
            &mut silent,
            NoiseColour::White,
            10.0,
            &mut StdRng::seed_from_u64(3),
        );
        assert!(silent.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_same_seed_draws_the_same_and_settings_are_checked() {
        let x = tone(0.5, 200.0);
        let aug = WaveAugment {
            noise_probability: 1.0,
            ..WaveAugment::default()
        };
        let a = aug.apply(&x, &mut StdRng::seed_from_u64(9)).unwrap();
        assert_eq!(a, aug.apply(&x, &mut StdRng::seed_from_u64(9)).unwrap());
        assert_ne!(a, aug.apply(&x, &mut StdRng::seed_from_u64(10)).unwrap());
        assert!(WaveAugment::default().validate().is_ok());
        for bad in [
            WaveAugment {
                speeds: vec![0.3],
                ..WaveAugment::default()
            },
            WaveAugment {
                speeds: vec![f32::NAN],
                ..WaveAugment::default()
            },
            WaveAugment {
                noise_probability: 1.5,
                ..WaveAugment::default()
            },
            WaveAugment {
                snr_db: [20.0, 10.0],
                ..WaveAugment::default()
            },
            WaveAugment {
                snr_db: [f32::INFINITY, 10.0],
                ..WaveAugment::default()
            },
            WaveAugment {
                speeds: vec![1.0; MAX_SPEEDS + 1],
                ..WaveAugment::default()
            },
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains("WaveAugment"), "{err}");
        }
    }
}
