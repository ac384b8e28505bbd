//! Parity with PyTorch: models built in PyTorch, exported with
//! `torch.onnx.export`, imported into Kiln, run on the same input
//! (fixtures from tests/fixtures/gen_onnx_fixtures.py, whose docstring has
//! the rerun command).

use std::path::{Path, PathBuf};

use kiln_nn::{Module, ModuleExt};
use kiln_onnx::import_file;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Imports `name.onnx`, runs it on `name.input.npy` and returns the
/// largest difference from PyTorch's `name.output.npy`.
fn max_difference(name: &str) -> f32 {
    let model = import_file(&fixture(&format!("{name}.onnx"))).unwrap();
    let mut graph = model.build().unwrap();
    let x = kiln_nn::npy::read(&fixture(&format!("{name}.input.npy"))).unwrap();
    let want = kiln_nn::npy::read(&fixture(&format!("{name}.output.npy"))).unwrap();
    let got = graph.forward(&x).unwrap();
    assert_eq!(got.shape(), want.shape(), "{name}");
    got.iter()
        .zip(want.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn lenet5_matches_pytorch() {
    let d = max_difference("lenet5");
    assert!(d < 1e-4, "lenet5: {d}");
}

#[test]
fn ds2_shaped_conv_bigru_model_matches_pytorch() {
    let d = max_difference("ds2_like");
    assert!(d < 1e-4, "ds2_like: {d}");
}

#[test]
fn image_operator_zoo_matches_pytorch() {
    let d = max_difference("image_zoo");
    assert!(d < 1e-4, "image_zoo: {d}");
}

#[test]
fn lstm_and_bidirectional_relu_rnn_match_pytorch() {
    let d = max_difference("sequence_zoo");
    assert!(d < 1e-4, "sequence_zoo: {d}");
}

#[test]
fn initializers_keep_pytorch_parameter_names() {
    let model = import_file(&fixture("lenet5.onnx")).unwrap();
    let graph = model.build().unwrap();
    let names: Vec<String> = graph.param_layout().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "conv1.weight",
            "conv1.bias",
            "conv2.weight",
            "conv2.bias",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "fc3.weight",
            "fc3.bias"
        ]
    );
    assert_eq!(graph.num_params(), 61_706);
}

#[test]
fn an_imported_model_saves_loads_and_gives_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds2.safetensors");
    let model = import_file(&fixture("ds2_like.onnx")).unwrap();
    model.save(&path, "ds2_like.onnx").unwrap();
    let mut loaded = kiln_nn::serialize::load::<f32>(&path).unwrap();
    loaded.set_training(false);
    let x = kiln_nn::npy::read(&fixture("ds2_like.input.npy")).unwrap();
    let a = model.build().unwrap().forward(&x).unwrap();
    let b = loaded.forward(&x).unwrap();
    assert_eq!(a, b);
}
