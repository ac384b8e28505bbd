//! Band-limited resampling by windowed-sinc interpolation.
//!
//! Each output sample at input time `t` is `sum_k x[k] h(t - k)` with
//! `h(u) = 2 fc sinc(2 fc u) w(u / H)`: a low-pass at `fc = 0.5 * min(1,
//! out/in) * ROLLOFF` cycles per input sample (anti-aliasing when
//! downsampling), a Blackman-Harris window `w` over `|u| < H` and
//! `H = ZERO_CROSSINGS / (2 fc)` input samples. Signals are zero beyond
//! their ends. The output has `ceil(len * out / in)` samples.

use crate::error::{Error, Result};

/// Fraction of the Nyquist frequency kept.
const ROLLOFF: f64 = 0.94;
/// Zero crossings of the sinc on each side.
const ZERO_CROSSINGS: f64 = 24.0;

fn blackman_harris(x: f64) -> f64 {
    // x in [-1, 1] -> window over [0, 1]
    let p = std::f64::consts::PI * (x + 1.0);
    0.35875 - 0.48829 * p.cos() + 0.14128 * (2.0 * p).cos() - 0.01168 * (3.0 * p).cos()
}

/// Resamples `x` from `from` Hz to `to` Hz.
pub fn resample(x: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == 0 || to == 0 {
        return Err(Error::config(
            "resample",
            format!("sample rates must be positive (got {from} -> {to})"),
        ));
    }
    if from == to {
        return Ok(x.to_vec());
    }
    let ratio = to as f64 / from as f64;
    let fc = 0.5 * ratio.min(1.0) * ROLLOFF;
    let half = ZERO_CROSSINGS / (2.0 * fc);
    let n_out = ((x.len() as u128 * to as u128).div_ceil(from as u128)) as usize;
    let out = (0..n_out)
        .map(|n| {
            // exact rational position n * from / to
            let t = (n as u128 * from as u128) as f64 / to as f64;
            let lo = ((t - half).ceil().max(0.0)) as usize;
            let hi = ((t + half).floor() as usize).min(x.len().saturating_sub(1));
            let mut acc = 0.0f64;
            let mut k = lo;
            while k <= hi && k < x.len() {
                let u = t - k as f64;
                let a = 2.0 * fc * u;
                let sinc = if a.abs() < 1e-12 {
                    1.0
                } else {
                    (std::f64::consts::PI * a).sin() / (std::f64::consts::PI * a)
                };
                acc += x[k] as f64 * 2.0 * fc * sinc * blackman_harris(u / half);
                k += 1;
            }
            acc as f32
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(f: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * f * i as f64 / rate as f64).sin() as f32)
            .collect()
    }

    #[test]
    fn down_and_up_keep_a_sine() {
        for (from, to) in [(44_100, 16_000), (8_000, 16_000), (48_000, 16_000)] {
            let x = sine(1000.0, from, from as usize / 2);
            let y = resample(&x, from, to).unwrap();
            let expect = sine(1000.0, to, y.len());
            let edge = to as usize / 50;
            let err = y[edge..y.len() - edge]
                .iter()
                .zip(&expect[edge..y.len() - edge])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 2e-3, "{from}->{to}: max error {err}");
            assert_eq!(y.len(), (x.len() * to as usize).div_ceil(from as usize));
        }
    }

    #[test]
    fn removes_content_above_new_nyquist() {
        // 7 kHz at 44.1 kHz -> 8 kHz output (Nyquist 4 kHz): must vanish.
        let x = sine(7000.0, 44_100, 44_100 / 2);
        let y = resample(&x, 44_100, 8_000).unwrap();
        let rms = (y[400..y.len() - 400].iter().map(|v| v * v).sum::<f32>()
            / (y.len() - 800) as f32)
            .sqrt();
        assert!(rms < 1e-3, "alias rms {rms}");
    }

    #[test]
    fn zero_rate_is_an_error() {
        assert!(resample(&[0.0], 0, 16_000).is_err());
    }
}
