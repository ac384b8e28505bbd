//! Band-limited resampling by windowed-sinc interpolation.
//!
//! Each output sample at input time `t` is `sum_k x[k] h(t - k)` with
//! `h(u) = 2 fc sinc(2 fc u) w(u / H)`: a low-pass at `fc = 0.5 * min(1,
//! out/in) * ROLLOFF` cycles per input sample (anti-aliasing when
//! downsampling), a Blackman-Harris window `w` over `|u| < H` and
//! `H = ZERO_CROSSINGS / (2 fc)` input samples. Signals are zero beyond
//! their ends. The output has `ceil(len * out / in)` samples. The weights
//! are tabulated per polyphase phase (`out / gcd(in, out)` phases) unless
//! that table would exceed `MAX_TABLE` entries.

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
    let kernel = |u: f64| -> f64 {
        if u.abs() > half {
            return 0.0;
        }
        let a = 2.0 * fc * u;
        let sinc = if a.abs() < 1e-12 {
            1.0
        } else {
            (std::f64::consts::PI * a).sin() / (std::f64::consts::PI * a)
        };
        2.0 * fc * sinc * blackman_harris(u / half)
    };
    let n_out = ((x.len() as u128 * to as u128).div_ceil(from as u128)) as usize;
    // Polyphase: output n sits at input time i + p/to with i = n*from div to
    // and p = n*from mod to, a multiple of g = gcd; taps k = i + j for
    // j in -reach+1..=reach, weights tabulated per phase.
    let g = gcd(from as u64, to as u64);
    let phases = (to as u64 / g) as usize;
    let reach = half.ceil() as i64 + 1;
    let width = (2 * reach) as usize;
    let table: Vec<f32> = if phases.saturating_mul(width) <= MAX_TABLE {
        (0..phases)
            .flat_map(|ph| {
                let frac = (ph as u64 * g) as f64 / to as f64;
                (0..width).map(move |w| kernel(frac - (w as i64 - reach + 1) as f64) as f32)
            })
            .collect()
    } else {
        Vec::new()
    };
    let out = (0..n_out)
        .map(|n| {
            let pos = n as u128 * from as u128;
            let i = (pos / to as u128) as i64;
            let p = (pos % to as u128) as u64;
            let mut acc = 0.0f64;
            for w in 0..width {
                let k = i + w as i64 - reach + 1;
                if k < 0 || k as usize >= x.len() {
                    continue;
                }
                let weight = if table.is_empty() {
                    kernel(p as f64 / to as f64 - (w as i64 - reach + 1) as f64)
                } else {
                    table[(p / g) as usize * width + w] as f64
                };
                acc += x[k as usize] as f64 * weight;
            }
            acc as f32
        })
        .collect();
    Ok(out)
}

/// Largest polyphase table (weights) before falling back to direct evaluation.
const MAX_TABLE: usize = 1 << 22;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
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
    fn coprime_rates_table_and_direct() {
        // 16001 -> 16000 uses a 16000-phase table; 16000 -> 96001 would need
        // 96001 phases x 54 taps > MAX_TABLE, so it evaluates directly.
        for (from, to, n) in [(16_001, 16_000, 8_000), (16_000, 96_001, 1_600)] {
            let x = sine(500.0, from, n);
            let y = resample(&x, from, to).unwrap();
            let expect = sine(500.0, to, y.len());
            let edge = y.len() / 10;
            let err = y[edge..y.len() - edge]
                .iter()
                .zip(&expect[edge..y.len() - edge])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 2e-3, "{from}->{to}: {err}");
        }
    }

    #[test]
    fn zero_rate_is_an_error() {
        assert!(resample(&[0.0], 0, 16_000).is_err());
    }
}
#[cfg(test)]
mod timing {
    #[test]
    #[ignore]
    fn time_10s() {
        let x: Vec<f32> = (0..441_000).map(|i| (i as f32 * 0.01).sin()).collect();
        let t = std::time::Instant::now();
        let y = super::resample(&x, 44_100, 16_000).unwrap();
        println!("10 s 44.1k->16k: {:?} ({} samples)", t.elapsed(), y.len());
    }
}
