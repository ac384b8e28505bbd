//! Feature transformers, composable like BigDL's: each stage is a
//! [`Transformer`] and `a.then(b)` chains two.
//!
//! The DS2 front end is
//! `Windower::ds2().then(Spectrogram::new(320, SpectrumKind::Magnitude)?)`
//! `.then(LogCompress::Log1p).then(Normalize::default())` on 16 kHz audio:
//! 20 ms Hamming windows (320 samples) every 10 ms (160), 161 bins. A
//! [`crate::mel::MelFilterBank`] may be inserted after the spectrogram.
//! Feature matrices are `(frames, features)`.

use std::sync::Arc;

use ndarray::Array2;
use realfft::{RealFftPlanner, RealToComplex};

use crate::error::{Error, Result};

/// One feature-extraction stage.
pub trait Transformer {
    /// What the stage takes.
    type Input;
    /// What it gives.
    type Output;

    /// Applies the stage.
    fn transform(&self, input: Self::Input) -> Result<Self::Output>;

    /// This stage followed by `next`.
    fn then<T>(self, next: T) -> Chain<Self, T>
    where
        Self: Sized,
        T: Transformer<Input = Self::Output>,
    {
        Chain {
            first: self,
            second: next,
        }
    }
}

/// Two stages in sequence (see [`Transformer::then`]).
#[derive(Debug, Clone)]
pub struct Chain<A, B> {
    first: A,
    second: B,
}

impl<A, B> Transformer for Chain<A, B>
where
    A: Transformer,
    B: Transformer<Input = A::Output>,
{
    type Input = A::Input;
    type Output = B::Output;

    fn transform(&self, input: A::Input) -> Result<B::Output> {
        self.second.transform(self.first.transform(input)?)
    }
}

/// Cuts a signal into overlapping frames and applies a Hamming window.
///
/// Frames start every `hop` samples; there are `1 + (len - window) / hop`
/// of them (no centring or padding, like BigDL's Windower and
/// `numpy` framing); a signal shorter than one window gives one
/// zero-padded frame. The window is `0.54 - 0.46 cos(2 pi n / D)` with
/// `D = window` when `periodic` (torch's `hamming_window` default and
/// librosa's) or `D = window - 1` otherwise (`numpy.hamming`).
#[derive(Debug, Clone, PartialEq)]
pub struct Windower {
    /// Window length in samples.
    pub window: usize,
    /// Hop in samples.
    pub hop: usize,
    /// Periodic (true) or symmetric Hamming window.
    pub periodic: bool,
}

impl Windower {
    /// A windower; `window` and `hop` must be positive.
    pub fn new(window: usize, hop: usize, periodic: bool) -> Result<Self> {
        if window == 0 || hop == 0 {
            return Err(Error::config(
                "Windower",
                format!("window ({window}) and hop ({hop}) must be positive"),
            ));
        }
        Ok(Windower {
            window,
            hop,
            periodic,
        })
    }

    /// DS2's: 20 ms (320 samples) every 10 ms (160) at 16 kHz, periodic.
    pub fn ds2() -> Self {
        Windower {
            window: 320,
            hop: 160,
            periodic: true,
        }
    }

    /// The window's coefficients.
    pub fn coefficients(&self) -> Vec<f32> {
        hamming(self.window, self.periodic)
    }

    /// Number of frames for a signal of `len` samples.
    pub fn frames(&self, len: usize) -> usize {
        if len <= self.window {
            1
        } else {
            1 + (len - self.window) / self.hop
        }
    }
}

/// A Hamming window of length `n`.
pub fn hamming(n: usize, periodic: bool) -> Vec<f32> {
    if n == 1 {
        return vec![1.0];
    }
    let d = if periodic { n } else { n - 1 } as f64;
    (0..n)
        .map(|i| (0.54 - 0.46 * (2.0 * std::f64::consts::PI * i as f64 / d).cos()) as f32)
        .collect()
}

impl Transformer for Windower {
    type Input = Vec<f32>;
    type Output = Array2<f32>;

    fn transform(&self, signal: Vec<f32>) -> Result<Array2<f32>> {
        let w = self.coefficients();
        let n = self.frames(signal.len());
        let mut out = Array2::zeros((n, self.window));
        for (f, mut row) in out.outer_iter_mut().enumerate() {
            let start = f * self.hop;
            for (k, v) in row.iter_mut().enumerate() {
                if let Some(x) = signal.get(start + k) {
                    *v = x * w[k];
                }
            }
        }
        Ok(out)
    }
}

/// Magnitude or power spectrum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpectrumKind {
    /// `|X|`.
    Magnitude,
    /// `|X|^2`.
    Power,
}

/// Real DFT of each (already windowed) frame: `n_fft / 2 + 1` bins. Frames
/// shorter than `n_fft` are zero-padded; longer ones are an error.
#[derive(Clone)]
pub struct Spectrogram {
    n_fft: usize,
    kind: SpectrumKind,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for Spectrogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spectrogram")
            .field("n_fft", &self.n_fft)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Spectrogram {
    /// A spectrogram with an `n_fft`-point DFT.
    pub fn new(n_fft: usize, kind: SpectrumKind) -> Result<Self> {
        if n_fft < 2 {
            return Err(Error::config("Spectrogram", format!("n_fft {n_fft} < 2")));
        }
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n_fft);
        Ok(Spectrogram { n_fft, kind, fft })
    }

    /// Number of output bins, `n_fft / 2 + 1`.
    pub fn bins(&self) -> usize {
        self.n_fft / 2 + 1
    }
}

impl Transformer for Spectrogram {
    type Input = Array2<f32>;
    type Output = Array2<f32>;

    fn transform(&self, frames: Array2<f32>) -> Result<Array2<f32>> {
        if frames.ncols() > self.n_fft {
            return Err(Error::Shape {
                op: "Spectrogram".into(),
                expected: format!("frames of at most n_fft = {} samples", self.n_fft),
                actual: frames.shape().to_vec(),
            });
        }
        let mut out = Array2::zeros((frames.nrows(), self.bins()));
        let mut input = self.fft.make_input_vec();
        let mut spec = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        for (row, mut o) in frames.outer_iter().zip(out.outer_iter_mut()) {
            input.iter_mut().for_each(|v| *v = 0.0);
            for (d, s) in input.iter_mut().zip(row.iter()) {
                *d = *s;
            }
            self.fft
                .process_with_scratch(&mut input, &mut spec, &mut scratch)
                .map_err(|e| Error::config("Spectrogram", e.to_string()))?;
            for (d, c) in o.iter_mut().zip(&spec) {
                let p = c.norm_sqr();
                *d = match self.kind {
                    SpectrumKind::Power => p,
                    SpectrumKind::Magnitude => p.sqrt(),
                };
            }
        }
        Ok(out)
    }
}

/// Logarithmic compression of non-negative features.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogCompress {
    /// `ln(1 + x)` (DS2's choice: finite at 0, near-linear for small x).
    Log1p,
    /// `ln(x + eps)` (torchaudio-style log-mel with a floor).
    LogEps(f32),
}

impl Transformer for LogCompress {
    type Input = Array2<f32>;
    type Output = Array2<f32>;

    fn transform(&self, x: Array2<f32>) -> Result<Array2<f32>> {
        Ok(match *self {
            LogCompress::Log1p => x.mapv_into(f32::ln_1p),
            LogCompress::LogEps(eps) => x.mapv_into(|v| (v + eps).ln()),
        })
    }
}

/// Per-utterance normalisation: each feature (column) gets zero mean and
/// unit standard deviation over the frames: `(x - mean) / (std + eps)`
/// with the population standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Added to the standard deviation.
    pub eps: f32,
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize { eps: 1e-5 }
    }
}

impl Transformer for Normalize {
    type Input = Array2<f32>;
    type Output = Array2<f32>;

    fn transform(&self, mut x: Array2<f32>) -> Result<Array2<f32>> {
        let n = x.nrows();
        if n == 0 {
            return Ok(x);
        }
        for mut col in x.columns_mut() {
            let mean = col.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = col.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            let denom = var.sqrt() + self.eps as f64;
            col.mapv_inplace(|v| ((v as f64 - mean) / denom) as f32);
        }
        Ok(x)
    }
}

/// A closure as a stage (for one-off steps in a chain).
pub struct FnTransformer<I, O, F: Fn(I) -> Result<O>> {
    f: F,
    _marker: std::marker::PhantomData<fn(I) -> O>,
}

impl<I, O, F: Fn(I) -> Result<O>> FnTransformer<I, O, F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        FnTransformer {
            f,
            _marker: std::marker::PhantomData,
        }
    }
}

impl<I, O, F: Fn(I) -> Result<O>> Transformer for FnTransformer<I, O, F> {
    type Input = I;
    type Output = O;

    fn transform(&self, input: I) -> Result<O> {
        (self.f)(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ds2_frame_and_bin_counts() {
        let sig = vec![0.1f32; 16_000];
        let spec = Windower::ds2()
            .then(Spectrogram::new(320, SpectrumKind::Magnitude).unwrap())
            .transform(sig)
            .unwrap();
        assert_eq!(spec.dim(), (99, 161));
    }

    #[test]
    fn sine_peaks_at_its_bin() {
        // 1 kHz at 16 kHz with n_fft 320: bin spacing 50 Hz -> bin 20.
        let sig: Vec<f32> = (0..3200)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin())
            .collect();
        let spec = Windower::ds2()
            .then(Spectrogram::new(320, SpectrumKind::Power).unwrap())
            .transform(sig)
            .unwrap();
        let row = spec.row(3);
        let argmax = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(argmax, 20);
    }

    #[test]
    fn normalize_gives_zero_mean_unit_std() {
        let x = Array2::from_shape_fn((50, 3), |(i, j)| (i * (j + 1)) as f32);
        let y = Normalize { eps: 0.0 }.transform(x).unwrap();
        for col in y.columns() {
            let m = col.mean().unwrap();
            let s = (col.mapv(|v| (v - m) * (v - m)).mean().unwrap()).sqrt();
            assert!(m.abs() < 1e-5 && (s - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn hamming_ends() {
        let s = hamming(5, false);
        assert!((s[0] - 0.08).abs() < 1e-6 && (s[2] - 1.0).abs() < 1e-6);
        assert!(Windower::new(0, 1, true).is_err());
    }
}
