//! [`Ds2Config`]: the Deep Speech 2 architecture as a TOML document, and the
//! exact output-length arithmetic of its convolutional front end.

use std::path::Path;

use kiln_nn::layers::{CellKind, MergeMode};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::text::ALPHABET_SIZE;

fn default_classes() -> usize {
    ALPHABET_SIZE
}

fn default_clip() -> f64 {
    20.0
}

fn default_merge() -> MergeMode {
    MergeMode::Sum
}

/// One convolution of the front end, over `(N, C, freq, time)`; each pair is `[freq, time]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// Output channels.
    pub channels: usize,
    /// Kernel size `[freq, time]`.
    pub kernel: [usize; 2],
    /// Stride `[freq, time]`.
    pub stride: [usize; 2],
    /// Zero padding `[freq, time]` on each side.
    #[serde(default)]
    pub padding: [usize; 2],
}

impl ConvSpec {
    /// Output size of axis `axis` (0 = freq, 1 = time) for an input of `len`
    /// (PyTorch's `floor((len + 2p - k) / s) + 1`); 0 when the kernel does not fit.
    pub fn out_len(&self, axis: usize, len: usize) -> usize {
        let padded = len + 2 * self.padding[axis];
        if padded < self.kernel[axis] {
            0
        } else {
            (padded - self.kernel[axis]) / self.stride[axis] + 1
        }
    }
}

/// The recurrent stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RnnSpec {
    /// `gru`, `lstm`, `rnn_tanh` or `rnn_relu`.
    pub cell: CellKind,
    /// Number of bidirectional layers.
    pub layers: usize,
    /// Hidden units per direction.
    pub hidden: usize,
    /// `sum` (DS2, output `hidden`) or `concat` (output `2 * hidden`).
    #[serde(default = "default_merge")]
    pub merge: MergeMode,
}

/// The Deep Speech 2 architecture (Amodei et al. 2016): convolutions with
/// batch norm and `HardTanh(0, clip)` over `(N, 1, freq, time)`
/// spectrograms, bidirectional recurrent layers with sequence-wise batch
/// norm between them, and a fully connected layer to the characters.
/// See `apps/speech/configs/` for documented examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ds2Config {
    /// Frequency bins of the input spectrogram (161 for a 20 ms window at 16 kHz).
    pub freq_bins: usize,
    /// The convolutions, in order.
    pub conv: Vec<ConvSpec>,
    /// The recurrent stack.
    pub rnn: RnnSpec,
    /// Output classes (default 29: blank, space, apostrophe, a-z).
    #[serde(default = "default_classes")]
    pub num_classes: usize,
    /// Upper bound of the clipped ReLU after each convolution (default 20).
    #[serde(default = "default_clip")]
    pub clip: f64,
}

impl Ds2Config {
    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let c: Ds2Config =
            toml::from_str(text).map_err(|e| Error::config("Ds2Config", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text)
            .map_err(|e| Error::config(path.display().to_string(), e.to_string()))
    }

    /// The configuration as TOML.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::config("Ds2Config", e.to_string()))
    }

    /// Checks every size is positive and the front end keeps at least one frequency bin.
    pub fn validate(&self) -> Result<()> {
        let bad = |r: &str| Err(Error::config("Ds2Config", r));
        if self.freq_bins == 0 || self.num_classes == 0 {
            return bad("freq_bins and num_classes must be positive");
        }
        if self.rnn.layers == 0 || self.rnn.hidden == 0 {
            return bad("rnn.layers and rnn.hidden must be positive");
        }
        if self.clip.is_nan() || self.clip <= 0.0 {
            return bad("clip must be positive");
        }
        for (i, c) in self.conv.iter().enumerate() {
            if c.channels == 0 || c.kernel.contains(&0) || c.stride.contains(&0) {
                return Err(Error::config(
                    "Ds2Config",
                    format!("conv[{i}]: channels, kernel and stride must be positive"),
                ));
            }
        }
        if self.conv_freq_bins() == 0 {
            return bad("the convolutions leave no frequency bins");
        }
        Ok(())
    }

    /// Frequency bins after the convolutions.
    pub fn conv_freq_bins(&self) -> usize {
        self.conv
            .iter()
            .fold(self.freq_bins, |f, c| c.out_len(0, f))
    }

    /// Features per step entering the first recurrent layer: channels × bins.
    pub fn rnn_input_size(&self) -> usize {
        let channels = self.conv.last().map_or(1, |c| c.channels);
        channels * self.conv_freq_bins()
    }

    /// Output features of each recurrent layer.
    pub fn rnn_output_size(&self) -> usize {
        match self.rnn.merge {
            MergeMode::Sum => self.rnn.hidden,
            MergeMode::Concat => 2 * self.rnn.hidden,
        }
    }

    /// Output frames for an input of `frames` time steps (exact, per utterance).
    pub fn output_length(&self, frames: usize) -> usize {
        self.conv.iter().fold(frames, |t, c| c.out_len(1, t))
    }

    /// Output lengths for per-utterance input lengths.
    pub fn output_lengths(&self, lengths: &[usize]) -> Vec<usize> {
        lengths.iter().map(|&l| self.output_length(l)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Ds2Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(name);
        Ds2Config::from_file(&path).unwrap()
    }

    #[test]
    fn example_configs_parse_and_have_the_documented_sizes() {
        let paper = example("ds2_paper.toml");
        assert_eq!(paper.conv_freq_bins(), 41);
        assert_eq!(paper.rnn_input_size(), 32 * 41);
        assert_eq!(paper.output_length(1000), 500);
        assert_eq!(paper.num_classes, 29);
        let small = example("ds2_small.toml");
        assert_eq!(small.rnn.merge, MergeMode::Sum);
        let back = Ds2Config::from_toml_str(&small.to_toml_string().unwrap()).unwrap();
        assert_eq!(back, small);
    }

    #[test]
    fn output_lengths_follow_the_conv_arithmetic() {
        let c = example("ds2_paper.toml");
        // time: k 11, s 2, p 5 then k 11, s 1, p 5.
        for t in [1usize, 2, 10, 11, 99, 100] {
            let t1 = (t + 10 - 11) / 2 + 1;
            let t2 = t1 + 10 - 11 + 1;
            assert_eq!(c.output_length(t), t2, "{t}");
        }
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut c = example("ds2_small.toml");
        c.rnn.hidden = 0;
        assert!(c.validate().is_err());
        assert!(Ds2Config::from_toml_str("freq_bins = 3").is_err());
        let mut c = example("ds2_small.toml");
        c.freq_bins = 1;
        c.conv[0].padding = [0, 0];
        assert!(c.validate().is_err());
    }
}
