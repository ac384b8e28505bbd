//! Layers and containers, one per file, families in folders, and the
//! serialisable [`LayerConfig`] that rebuilds any of them.
//!
//! Every layer follows burn's "config then init" pattern: a `…Config`
//! struct (serde, validated once by `init`) builds the layer.

use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::module::Module;
use crate::tensor::Float;

pub mod activation;
pub mod container;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod recurrent;
pub mod shape;

pub use activation::{HardTanh, LeakyReLU, LogSoftMax, ReLU, Sigmoid, SoftMax, Tanh};
pub use container::{Concat, ConcatTable, Graph, GraphConfig, GraphNode, NodeOp, Sequential};
pub use conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
pub use dropout::{Dropout, DropoutConfig};
pub use elementwise::{CAdd, CMul, Scale};
pub use embedding::{Embedding, EmbeddingConfig};
pub use linear::{Linear, LinearConfig};
pub use norm::{BatchNorm, BatchNormConfig, Normalize, NormalizeConfig};
pub use pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, Pool2dConfig};
pub use recurrent::{
    BiRecurrent, BiRecurrentConfig, CellKind, MergeMode, Recurrent, RecurrentConfig,
    SequenceBatchNorm, SequenceModule, TimeDistributed,
};
pub use shape::{Flatten, Identity, Reshape, Transpose};

/// The structure of any layer or container, serialisable (stored beside the
/// weights in a model file). `build` creates a freshly initialised module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerConfig {
    /// Fully connected layer.
    Linear(LinearConfig),
    /// max(0, x).
    Relu,
    /// max(0, x) + slope * min(0, x).
    LeakyRelu {
        /// Slope for negative inputs.
        negative_slope: f64,
    },
    /// tanh(x).
    Tanh,
    /// 1 / (1 + exp(-x)).
    Sigmoid,
    /// Clamp to [min_val, max_val].
    HardTanh {
        /// Lower bound.
        min_val: f64,
        /// Upper bound.
        max_val: f64,
    },
    /// Softmax over dimension `dim` (negative counts from the end).
    SoftMax {
        /// Dimension.
        dim: isize,
    },
    /// Log-softmax over dimension `dim` (negative counts from the end).
    LogSoftMax {
        /// Dimension.
        dim: isize,
    },
    /// Reshape every sample (the batch dimension is kept); one entry may be -1.
    Reshape {
        /// Per-sample shape.
        shape: Vec<isize>,
    },
    /// Flattens dimensions `start_dim..` into one.
    Flatten {
        /// First dimension flattened (1 keeps the batch dimension).
        start_dim: usize,
    },
    /// Swaps two dimensions.
    Transpose {
        /// First dimension.
        dim0: usize,
        /// Second dimension.
        dim1: usize,
    },
    /// Passes the input through.
    Identity,
    /// Runs children in order.
    Sequential {
        /// The children.
        layers: Vec<LayerConfig>,
    },
    /// Runs every branch on the same input and concatenates outputs along `dim`.
    Concat {
        /// Concatenation dimension.
        dim: usize,
        /// The branches.
        branches: Vec<LayerConfig>,
    },
    /// A directed acyclic graph of modules and merge operations.
    Graph(GraphConfig),
    /// 2-D convolution over NCHW images.
    Conv2d(Conv2dConfig),
    /// 1-D convolution over `[N, C, L]` sequences.
    Conv1d(Conv1dConfig),
    /// 2-D max pooling.
    MaxPool2d(Pool2dConfig),
    /// 2-D average pooling.
    AvgPool2d(AvgPool2dConfig),
    /// Batch normalisation over dimension 1 (BatchNorm1d and BatchNorm2d).
    BatchNorm(BatchNormConfig),
    /// Channel-wise L2 normalisation with a learned per-channel scale (SSD).
    Normalize(NormalizeConfig),
    /// Inverted dropout (identity in evaluation mode).
    Dropout(DropoutConfig),
    /// Adds a learned bias of `shape`, broadcast over the input.
    CAdd {
        /// Shape of the bias (aligned with the input's trailing dimensions).
        shape: Vec<usize>,
    },
    /// Multiplies by a learned weight of `shape`, broadcast over the input.
    CMul {
        /// Shape of the weight (aligned with the input's trailing dimensions).
        shape: Vec<usize>,
    },
    /// `x * weight + bias`, both of `shape`, broadcast over the input.
    Scale {
        /// Shape of the weight and bias (aligned with the input's trailing dimensions).
        shape: Vec<usize>,
    },
    /// Lookup table from integer indices to learned vectors.
    Embedding(EmbeddingConfig),
    /// One recurrent layer (RNN tanh/ReLU, LSTM or GRU) over `(T, N, F)`.
    Recurrent(RecurrentConfig),
    /// A bidirectional recurrent layer (sum or concat merge).
    BiRecurrent(BiRecurrentConfig),
    /// Batch norm over the features of `(T, N, F)`, statistics over all valid steps (DS2).
    SequenceBatchNorm(BatchNormConfig),
    /// Applies `inner` to `(T*N, ...)` and reshapes back to `(T, N, ...)`.
    TimeDistributed {
        /// The per-step module.
        inner: Box<LayerConfig>,
    },
    // LAYERS-HELPER-VARIANTS (conv, pooling, normalisation, embedding, dropout, cadd/cmul/scale)
}

impl LayerConfig {
    /// Builds a freshly initialised module from this configuration.
    pub fn build<F: Float>(&self, rng: &mut StdRng) -> Result<Box<dyn Module<F>>> {
        use activation::*;
        Ok(match self {
            LayerConfig::Linear(c) => Box::new(c.init(rng)?),
            LayerConfig::Relu => Box::new(ReLU),
            LayerConfig::LeakyRelu { negative_slope } => Box::new(LeakyReLU::new(*negative_slope)),
            LayerConfig::Tanh => Box::new(Tanh::default()),
            LayerConfig::Sigmoid => Box::new(Sigmoid::default()),
            LayerConfig::HardTanh { min_val, max_val } => {
                Box::new(HardTanh::new(*min_val, *max_val)?)
            }
            LayerConfig::SoftMax { dim } => Box::new(SoftMax::new(*dim)),
            LayerConfig::LogSoftMax { dim } => Box::new(LogSoftMax::new(*dim)),
            LayerConfig::Reshape { shape } => Box::new(Reshape::new(shape.clone())?),
            LayerConfig::Flatten { start_dim } => Box::new(Flatten::new(*start_dim)),
            LayerConfig::Transpose { dim0, dim1 } => Box::new(Transpose::new(*dim0, *dim1)),
            LayerConfig::Identity => Box::new(Identity),
            LayerConfig::Sequential { layers } => {
                let mut s = Sequential::new();
                for l in layers {
                    s.push_boxed(l.build(rng)?);
                }
                Box::new(s)
            }
            LayerConfig::Concat { dim, branches } => {
                let mut c = Concat::new(*dim);
                for b in branches {
                    c.push_boxed(b.build(rng)?);
                }
                Box::new(c)
            }
            LayerConfig::Graph(g) => Box::new(g.init(rng)?),
            LayerConfig::Conv2d(c) => Box::new(c.init(rng)?),
            LayerConfig::Conv1d(c) => Box::new(c.init(rng)?),
            LayerConfig::MaxPool2d(c) => Box::new(c.init()?),
            LayerConfig::AvgPool2d(c) => Box::new(c.init()?),
            LayerConfig::BatchNorm(c) => Box::new(c.init::<F>()?),
            LayerConfig::Normalize(c) => Box::new(c.init::<F>()?),
            LayerConfig::Dropout(c) => Box::new(c.init::<F>()?),
            LayerConfig::CAdd { shape } => Box::new(CAdd::<F>::new(shape, rng)?),
            LayerConfig::CMul { shape } => Box::new(CMul::<F>::new(shape, rng)?),
            LayerConfig::Scale { shape } => Box::new(Scale::<F>::new(shape, rng)?),
            LayerConfig::Embedding(c) => Box::new(c.init::<F>(rng)?),
            LayerConfig::Recurrent(c) => Box::new(c.init::<F>(rng)?),
            LayerConfig::BiRecurrent(c) => Box::new(c.init::<F>(rng)?),
            LayerConfig::SequenceBatchNorm(c) => Box::new(SequenceBatchNorm::<F>::new(c)?),
            LayerConfig::TimeDistributed { inner } => {
                Box::new(TimeDistributed::new(inner.build::<F>(rng)?))
            } // LAYERS-HELPER-BUILD
        })
    }
}

#[cfg(test)]
mod helper_layer_config_tests {
    use super::*;
    use rand::SeedableRng;

    /// Every conv/pool/norm/dropout/elementwise/embedding variant parses
    /// from JSON with serde defaults, builds, and reports its own config.
    #[test]
    fn helper_layer_configs_parse_build_and_round_trip() {
        let json = r#"[
            {"type": "conv2d", "in_channels": 3, "out_channels": 8, "kernel_size": [3, 3]},
            {"type": "conv1d", "in_channels": 3, "out_channels": 8, "kernel_size": 5, "groups": 1},
            {"type": "max_pool2d", "kernel_size": [2, 2]},
            {"type": "avg_pool2d", "kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "ceil_mode": true},
            {"type": "batch_norm", "num_features": 8},
            {"type": "dropout", "p": 0.3},
            {"type": "c_add", "shape": [8, 1, 1]},
            {"type": "c_mul", "shape": [8, 1, 1]},
            {"type": "scale", "shape": [8, 1, 1]},
            {"type": "normalize", "channels": 8},
            {"type": "embedding", "num_embeddings": 10, "embedding_dim": 4, "padding_idx": 0}
        ]"#;
        let configs: Vec<LayerConfig> = serde_json::from_str(json).unwrap();
        assert_eq!(
            configs[0],
            LayerConfig::Conv2d(Conv2dConfig::new(3, 8, [3, 3]))
        );
        assert_eq!(configs[4], LayerConfig::BatchNorm(BatchNormConfig::new(8)));
        assert_eq!(configs[5], LayerConfig::Dropout(DropoutConfig::new(0.3)));
        assert_eq!(configs[9], LayerConfig::Normalize(NormalizeConfig::new(8)));
        let mut rng = StdRng::seed_from_u64(0);
        for c in &configs {
            let m = c.build::<f32>(&mut rng).unwrap();
            assert_eq!(&m.config(), c);
            let text = serde_json::to_string(c).unwrap();
            assert_eq!(&serde_json::from_str::<LayerConfig>(&text).unwrap(), c);
        }
    }

    /// Model files are read from outside: an unknown key anywhere in a
    /// layer configuration, graph nodes included, is refused by name.
    #[test]
    fn unknown_keys_are_refused_at_every_level() {
        let graph = |node: &str| {
            format!(
                r#"{{"type": "graph", "inputs": ["x"], "outputs": ["b"], "nodes": [
                    {{"name": "a", "op": "layer", "layer": {{"type": "relu"}}, "inputs": ["x"]}},
                    {node}]}}"#
            )
        };
        let good = graph(r#"{"name": "b", "op": "join", "dim": 1, "inputs": ["a", "x"]}"#);
        let parsed: LayerConfig = serde_json::from_str(&good).unwrap();
        let text = serde_json::to_string(&parsed).unwrap();
        assert_eq!(serde_json::from_str::<LayerConfig>(&text).unwrap(), parsed);
        for (bad, key) in [
            (
                graph(r#"{"name": "b", "op": "join", "dim": 1, "dimm": 2, "inputs": ["a"]}"#),
                "dimm",
            ),
            (
                graph(r#"{"name": "b", "op": "add", "dim": 1, "inputs": ["a"]}"#),
                "add takes no field",
            ),
            (
                graph(
                    r#"{"name": "b", "op": "layer", "layer": {"type": "linear", "in_features": 2, "out_features": 2, "biass": false}, "inputs": ["a"]}"#,
                ),
                "biass",
            ),
            (
                r#"{"type": "sequential", "layers": [{"type": "dropout", "p": 0.1, "q": 1}]}"#
                    .to_string(),
                "`q`",
            ),
            (
                r#"{"type": "flatten", "start_dim": 1, "end": 2}"#.to_string(),
                "end",
            ),
        ] {
            let e = serde_json::from_str::<LayerConfig>(&bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
