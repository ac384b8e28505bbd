//! Mel filter bank with torchaudio's defaults (`melscale_fbanks` with
//! `mel_scale="htk"`, `norm=None`): HTK mel scale `2595 log10(1 + f/700)`,
//! `n_mels + 2` points equally spaced in mel between `f_min` and `f_max`,
//! triangular filters evaluated at the `n_freqs` linearly spaced bin
//! frequencies `0..=sample_rate/2`, peak 1, not area-normalised.

use ndarray::Array2;

use crate::error::{Error, Result};
use crate::features::Transformer;

/// Hz to HTK mel.
pub fn hz_to_mel(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

/// HTK mel to Hz.
pub fn mel_to_hz(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// Projects `(frames, n_freqs)` spectra onto `n_mels` mel bands.
#[derive(Debug, Clone, PartialEq)]
pub struct MelFilterBank {
    /// `(n_freqs, n_mels)` filter weights.
    pub weights: Array2<f32>,
}

impl MelFilterBank {
    /// Filters for spectra of `n_freqs` bins (`n_fft / 2 + 1`) at
    /// `sample_rate`, between `f_min` and `f_max` Hz.
    pub fn new(
        n_freqs: usize,
        n_mels: usize,
        sample_rate: u32,
        f_min: f64,
        f_max: f64,
    ) -> Result<Self> {
        if n_freqs < 2 || n_mels == 0 || !(0.0 <= f_min && f_min < f_max) {
            return Err(Error::config(
                "MelFilterBank",
                format!("n_freqs {n_freqs}, n_mels {n_mels}, f_min {f_min}, f_max {f_max}"),
            ));
        }
        let nyquist = sample_rate as f64 / 2.0;
        let freqs: Vec<f64> = (0..n_freqs)
            .map(|i| nyquist * i as f64 / (n_freqs - 1) as f64)
            .collect();
        let (m0, m1) = (hz_to_mel(f_min), hz_to_mel(f_max));
        let f_pts: Vec<f64> = (0..n_mels + 2)
            .map(|i| mel_to_hz(m0 + (m1 - m0) * i as f64 / (n_mels + 1) as f64))
            .collect();
        let mut weights = Array2::zeros((n_freqs, n_mels));
        for (i, &f) in freqs.iter().enumerate() {
            for m in 0..n_mels {
                let down = (f - f_pts[m]) / (f_pts[m + 1] - f_pts[m]);
                let up = (f_pts[m + 2] - f) / (f_pts[m + 2] - f_pts[m + 1]);
                weights[[i, m]] = down.min(up).max(0.0) as f32;
            }
        }
        Ok(MelFilterBank { weights })
    }

    /// torchaudio's defaults for `n_fft` at `sample_rate`: `f_min` 0,
    /// `f_max` the Nyquist frequency.
    pub fn for_fft(n_fft: usize, n_mels: usize, sample_rate: u32) -> Result<Self> {
        Self::new(
            n_fft / 2 + 1,
            n_mels,
            sample_rate,
            0.0,
            sample_rate as f64 / 2.0,
        )
    }
}

impl Transformer for MelFilterBank {
    type Input = Array2<f32>;
    type Output = Array2<f32>;

    fn transform(&self, spec: Array2<f32>) -> Result<Array2<f32>> {
        if spec.ncols() != self.weights.nrows() {
            return Err(Error::Shape {
                op: "MelFilterBank".into(),
                expected: format!("(frames, {})", self.weights.nrows()),
                actual: spec.shape().to_vec(),
            });
        }
        Ok(spec.dot(&self.weights))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_round_trip_and_peaks() {
        assert!((mel_to_hz(hz_to_mel(1234.5)) - 1234.5).abs() < 1e-9);
        let fb = MelFilterBank::for_fft(320, 40, 16_000).unwrap();
        assert_eq!(fb.weights.dim(), (161, 40));
        for col in fb.weights.columns() {
            let peak = col.iter().copied().fold(0.0f32, f32::max);
            assert!(peak > 0.3 && peak <= 1.0);
        }
    }
}
