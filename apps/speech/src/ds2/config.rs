//! [`Ds2Config`]: the Deep Speech 2 architecture as a TOML document, and the
//! exact output-length arithmetic of its convolutional front end.

use std::path::Path;

use kiln_nn::layers::{
    BatchNormConfig, BiRecurrentConfig, CellKind, Conv2dConfig, GraphConfig, GraphNode,
    LayerConfig, LinearConfig, MergeMode, RecurrentConfig,
};
use serde::{Deserialize, Serialize};

use kiln_nn::bounds::{check, check_number, open_closed, OutOfRange};

use crate::error::{Error, Result};
use crate::text::ALPHABET_SIZE;

/// Largest number of frequency bins of the input spectrogram.
pub const MAX_FREQ_BINS: usize = 4096;
/// Most convolutions in the front end.
pub const MAX_CONVS: usize = 16;
/// Most output channels of a convolution.
pub const MAX_CHANNELS: usize = 4096;
/// Largest kernel side, stride or padding of a convolution.
pub const MAX_KERNEL: usize = 256;
/// Most recurrent layers.
pub const MAX_RNN_LAYERS: usize = 32;
/// Largest hidden size of a recurrent layer (its weights grow with its square).
pub const MAX_HIDDEN: usize = 8192;
/// Largest clip of the clipped ReLU.
pub const MAX_CLIP: f64 = 1e6;

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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
    /// Parses and validates a TOML document (unknown keys are refused,
    /// naming the key and its line).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let c: Ds2Config =
            toml::from_str(text).map_err(|e| Error::config("Ds2Config", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Reads and validates a TOML file; every error names the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            error: Box::new(e),
        })
    }

    /// The configuration as TOML.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::config("Ds2Config", e.to_string()))
    }

    /// Checks every size against its range (`freq_bins` in `[1, 4096]`,
    /// `num_classes` in `[2, 29]`, at most 16 convolutions with channels in
    /// `[1, 4096]`, kernel and stride in `[1, 256]` and padding in `[0,
    /// 256]`, `rnn.layers` in `[1, 32]`, `rnn.hidden` in `[1, 8192]`,
    /// `clip` in `(0, 1e6]`) and that the front end keeps at least one
    /// frequency bin.
    pub fn validate(&self) -> Result<()> {
        self.check_ranges()
            .map_err(|e| Error::range("Ds2Config", e))?;
        if self.conv_freq_bins() == 0 {
            return Err(Error::config(
                "Ds2Config",
                "the convolutions leave no frequency bins",
            ));
        }
        Ok(())
    }

    fn check_ranges(&self) -> std::result::Result<(), OutOfRange> {
        check("freq_bins", self.freq_bins, 1..=MAX_FREQ_BINS)?;
        check("num_classes", self.num_classes, 2..=ALPHABET_SIZE)?;
        check_number("clip", self.clip, open_closed(0.0, MAX_CLIP))?;
        check(
            "conv (number of convolutions)",
            self.conv.len(),
            0..=MAX_CONVS,
        )?;
        for (i, c) in self.conv.iter().enumerate() {
            let name = |field: &str| format!("conv[{i}].{field}");
            check(&name("channels"), c.channels, 1..=MAX_CHANNELS)?;
            for axis in 0..2 {
                check(&name("kernel"), c.kernel[axis], 1..=MAX_KERNEL)?;
                check(&name("stride"), c.stride[axis], 1..=MAX_KERNEL)?;
                check(&name("padding"), c.padding[axis], 0..=MAX_KERNEL)?;
            }
        }
        check("rnn.layers", self.rnn.layers, 1..=MAX_RNN_LAYERS)?;
        check("rnn.hidden", self.rnn.hidden, 1..=MAX_HIDDEN)?;
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

    /// The configuration recorded in a DS2 model file's bytes (`path`
    /// names them in errors), without building the model.
    pub fn of_model_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let meta = kiln_nn::serialize::metadata_of(bytes, path)?;
        let key = crate::ds2::DS2_CONFIG_KEY;
        let json = meta.get(key).ok_or_else(|| {
            Error::config(
                path.display().to_string(),
                format!("no {key:?} metadata: not a DS2 model file"),
            )
        })?;
        let config: Ds2Config = serde_json::from_str(json)
            .map_err(|e| Error::config(path.display().to_string(), e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The network as a kiln-nn graph for whole utterances (every input
    /// step valid): what `kiln model run` and ONNX export use. Its node
    /// names give the same parameter names as [`crate::ds2::Ds2`], so a
    /// DS2 model file's weights load into it. Input `(N, 1, F, T)`, output
    /// log-probabilities `(T', N, classes)`.
    pub fn inference_graph(&self) -> GraphConfig {
        let mut nodes = Vec::new();
        let mut last = "input".to_string();
        let push =
            |nodes: &mut Vec<GraphNode>, name: String, layer: LayerConfig, last: &mut String| {
                nodes.push(GraphNode::layer(&name, layer, last));
                *last = name;
            };
        let mut in_ch = 1;
        for (i, spec) in self.conv.iter().enumerate() {
            let conv = Conv2dConfig::new(in_ch, spec.channels, spec.kernel)
                .with_stride(spec.stride)
                .with_padding(spec.padding)
                .with_bias(false);
            push(
                &mut nodes,
                format!("conv.{i}.conv"),
                LayerConfig::Conv2d(conv),
                &mut last,
            );
            let bn = LayerConfig::BatchNorm(BatchNormConfig::new(spec.channels));
            push(&mut nodes, format!("conv.{i}.bn"), bn, &mut last);
            let act = LayerConfig::HardTanh {
                min_val: 0.0,
                max_val: self.clip,
            };
            push(&mut nodes, format!("conv.{i}.act"), act, &mut last);
            in_ch = spec.channels;
        }
        // (N, C, F, T) -> (T, N, C, F) -> (T, N, C*F), as Ds2's forward pass.
        let to_time_major = LayerConfig::Sequential {
            layers: vec![
                LayerConfig::Transpose { dim0: 0, dim1: 3 },
                LayerConfig::Transpose { dim0: 1, dim1: 3 },
                LayerConfig::Transpose { dim0: 2, dim1: 3 },
                LayerConfig::Reshape {
                    shape: vec![-1, self.rnn_input_size() as isize],
                },
            ],
        };
        push(&mut nodes, "to_time_major".into(), to_time_major, &mut last);
        let out = self.rnn_output_size();
        for i in 0..self.rnn.layers {
            if i > 0 {
                let norm = LayerConfig::SequenceBatchNorm(BatchNormConfig::new(out));
                push(&mut nodes, format!("rnn.{i}.norm"), norm, &mut last);
            }
            let input = if i == 0 { self.rnn_input_size() } else { out };
            let layer = RecurrentConfig::new(self.rnn.cell, input, self.rnn.hidden);
            let rnn = LayerConfig::BiRecurrent(BiRecurrentConfig::new(layer, self.rnn.merge));
            push(&mut nodes, format!("rnn.{i}"), rnn, &mut last);
        }
        let norm = LayerConfig::SequenceBatchNorm(BatchNormConfig::new(out));
        push(&mut nodes, "fc.norm".into(), norm, &mut last);
        let fc = LayerConfig::TimeDistributed {
            inner: Box::new(LayerConfig::Linear(LinearConfig {
                in_features: out,
                out_features: self.num_classes,
                bias: false,
            })),
        };
        push(&mut nodes, "fc".into(), fc, &mut last);
        push(
            &mut nodes,
            "log_probs".into(),
            LayerConfig::LogSoftMax { dim: -1 },
            &mut last,
        );
        GraphConfig {
            inputs: vec!["input".into()],
            nodes,
            outputs: vec![last],
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

    #[test]
    fn out_of_range_and_non_finite_values_are_refused_naming_the_setting() {
        let base = example("ds2_small.toml");
        type Change = Box<dyn Fn(&mut Ds2Config)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.rnn.hidden = usize::MAX), "rnn.hidden"),
            (Box::new(|c| c.rnn.layers = 1000), "rnn.layers"),
            (Box::new(|c| c.freq_bins = 1 << 40), "freq_bins"),
            (Box::new(|c| c.num_classes = 30), "num_classes"),
            (Box::new(|c| c.clip = f64::NAN), "clip"),
            (Box::new(|c| c.clip = f64::INFINITY), "clip"),
            (Box::new(|c| c.clip = -1.0), "clip"),
            (
                Box::new(|c| c.conv[0].channels = 1 << 20),
                "conv[0].channels",
            ),
            (Box::new(|c| c.conv[0].stride = [0, 1]), "conv[0].stride"),
            (
                Box::new(|c| c.conv[0].padding = [usize::MAX, 0]),
                "conv[0].padding",
            ),
        ];
        for (change, setting) in cases {
            let mut c = base.clone();
            change(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(setting), "{setting}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = example("ds2_small.toml").to_toml_string().unwrap();
        let typos = [
            text.replace("clip = ", "clipp = "),
            format!("clipp = 1.0\n{text}"),
            text.replace("[rnn]\n", "[rnn]\nhiden = 3\n"),
            text.replace("[[conv]]\n", "[[conv]]\nchanels = 3\n"),
        ];
        for (i, t) in typos.iter().enumerate() {
            assert_ne!(t, &text, "case {i} did not change the text");
            let path = dir.path().join(format!("typo{i}.toml"));
            std::fs::write(&path, t).unwrap();
            let e = Ds2Config::from_file(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains("unknown field"), "{e}");
        }
    }
}
