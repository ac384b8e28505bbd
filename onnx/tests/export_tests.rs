//! Kiln models exported to ONNX and imported back give the same outputs
//! (the onnxruntime parity of the exports is tests/onnx_export_tests.rs in
//! the kiln crate).

use std::path::Path;

use kiln_nn::layers::{
    AvgPool2dConfig, BatchNormConfig, BiRecurrentConfig, Conv2dConfig, GraphConfig, GraphNode,
    LayerConfig, LinearConfig, MergeMode, Pool2dConfig, RecurrentConfig,
};
use kiln_nn::{Module, ModuleExt, Tensor};
use kiln_onnx::export::{export_model, to_bytes};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Builds `config` with random weights and batch-norm statistics.
fn model(config: &LayerConfig, seed: u64) -> Box<dyn Module<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = config.build::<f32>(&mut rng).unwrap();
    let buffers: Vec<f32> = (0..m.num_buffers())
        .map(|i| 0.5 + (i % 7) as f32 * 0.1)
        .collect();
    m.set_flat_buffers(&buffers).unwrap();
    m.set_training(false);
    m
}

fn input(shape: &[usize], seed: u64) -> Tensor<f32> {
    kiln_nn::init::uniform(&mut StdRng::seed_from_u64(seed), shape, 1.0)
}

/// Exports, re-imports and compares outputs on `x`.
fn round_trip(config: &LayerConfig, x: &Tensor<f32>) -> f32 {
    let mut m = model(config, 3);
    let mut shape: Vec<Option<usize>> = x.shape().iter().map(|&d| Some(d)).collect();
    shape[0] = None;
    let onnx = export_model(m.as_ref(), config, &[shape]).unwrap();
    let bytes = to_bytes(&onnx).unwrap();
    let decoded = kiln_onnx::decode::decode_model(&bytes, Path::new("export.onnx")).unwrap();
    let imported = kiln_onnx::import_model(&decoded, Path::new("export.onnx")).unwrap();
    let mut back = imported.build().unwrap();
    let want = m.forward(x).unwrap();
    let got = back.forward(x).unwrap();
    assert_eq!(got.shape(), want.shape());
    got.iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_convolutional_classifier_round_trips() {
    let config = LayerConfig::Sequential {
        layers: vec![
            LayerConfig::Conv2d(Conv2dConfig::new(1, 4, [3, 3]).with_padding([1, 1])),
            LayerConfig::BatchNorm(BatchNormConfig::new(4)),
            LayerConfig::LeakyRelu {
                negative_slope: 0.2,
            },
            LayerConfig::MaxPool2d(Pool2dConfig::new([2, 2])),
            LayerConfig::AvgPool2d(AvgPool2dConfig {
                kernel_size: [3, 3],
                stride: Some([2, 2]),
                padding: [1, 1],
                ceil_mode: true,
                count_include_pad: false,
                divisor_override: None,
            }),
            LayerConfig::Flatten { start_dim: 1 },
            LayerConfig::Linear(LinearConfig::new(4 * 3 * 3, 6)),
            LayerConfig::HardTanh {
                min_val: -0.5,
                max_val: 0.5,
            },
            LayerConfig::Linear(LinearConfig::new(6, 3)),
            LayerConfig::LogSoftMax { dim: 1 },
        ],
    };
    let d = round_trip(&config, &input(&[2, 1, 8, 8], 1));
    assert!(d < 1e-5, "{d}");
}

#[test]
fn a_graph_with_joins_sums_reshapes_and_constants_round_trips() {
    let config = LayerConfig::Graph(GraphConfig {
        inputs: vec!["x".into()],
        nodes: vec![
            GraphNode::layer(
                "a",
                LayerConfig::Conv2d(Conv2dConfig::new(3, 4, [1, 1])),
                "x",
            ),
            GraphNode::layer(
                "b",
                LayerConfig::CMul {
                    shape: vec![4, 1, 1],
                },
                "a",
            ),
            GraphNode::add("s", &["a", "b"]),
            GraphNode::join("j", 1, &["s", "a"]),
            GraphNode::layer("t", LayerConfig::Transpose { dim0: 1, dim1: 3 }, "j"),
            GraphNode::layer("r", LayerConfig::Reshape { shape: vec![-1, 8] }, "t"),
            GraphNode::layer("c", LayerConfig::CAdd { shape: vec![8] }, "r"),
            GraphNode::layer("o", LayerConfig::SoftMax { dim: -1 }, "c"),
        ],
        outputs: vec!["o".into()],
    });
    let d = round_trip(&config, &input(&[2, 3, 5, 4], 2));
    assert!(d < 1e-5, "{d}");
}

#[test]
fn recurrent_layers_round_trip_in_every_cell_and_direction() {
    let mut layers = Vec::new();
    let mut width = 5;
    for (cell, bi) in [
        (RecurrentConfig::gru(5, 4), true),
        (RecurrentConfig::lstm(8, 3), false),
        (RecurrentConfig::rnn_tanh(3, 4), true),
    ] {
        assert_eq!(cell.input_size, width);
        width = if bi {
            2 * cell.hidden_size
        } else {
            cell.hidden_size
        };
        layers.push(if bi {
            LayerConfig::BiRecurrent(BiRecurrentConfig::new(cell, MergeMode::Concat))
        } else {
            LayerConfig::Recurrent(cell)
        });
    }
    layers.push(LayerConfig::SequenceBatchNorm(BatchNormConfig::new(width)));
    layers.push(LayerConfig::TimeDistributed {
        inner: Box::new(LayerConfig::Linear(LinearConfig::new(width, 2))),
    });
    let config = LayerConfig::Sequential { layers };
    let d = round_trip(&config, &input(&[6, 2, 5], 4));
    assert!(d < 1e-5, "{d}");
}

#[test]
fn exported_parameters_keep_their_kiln_names() {
    let config = LayerConfig::Sequential {
        layers: vec![
            LayerConfig::Conv2d(Conv2dConfig::new(1, 2, [3, 3])),
            LayerConfig::Relu,
        ],
    };
    let m = model(&config, 1);
    let onnx = export_model(
        m.as_ref(),
        &config,
        &[vec![None, Some(1), Some(5), Some(5)]],
    )
    .unwrap();
    let graph = onnx.graph.as_ref().unwrap();
    let names: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["0.weight", "0.bias"]);
    assert_eq!(onnx.opset_import[0].version, 17);
}

#[test]
fn a_layer_without_an_onnx_form_is_an_error_naming_it() {
    let config = LayerConfig::Sequential {
        layers: vec![
            LayerConfig::Relu,
            LayerConfig::Embedding(kiln_nn::layers::EmbeddingConfig::new(5, 2)),
        ],
    };
    let m = model(&config, 1);
    let e = export_model(m.as_ref(), &config, &[vec![None, Some(3)]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer \"1\"") && e.contains("embedding"), "{e}");
}
