//! Forward and backward parity with PyTorch for Conv2d, BatchNorm2d,
//! MaxPool2d and AvgPool2d, from the fixtures written by
//! `tests/fixtures/gen_layer_fixtures.py` (computed in f32 on both sides).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_nn::layers::LayerConfig;
use kiln_nn::{Module, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Deserialize;

#[derive(Deserialize)]
struct Flat {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl Flat {
    fn tensor(&self) -> Tensor<f32> {
        Tensor::from_shape_vec(
            ndarray::IxDyn(&self.shape),
            self.data.iter().map(|&v| v as f32).collect(),
        )
        .expect("fixture tensor fills its shape")
    }
}

#[derive(Deserialize)]
struct Case {
    name: String,
    layer: LayerConfig,
    training: bool,
    input: Flat,
    params: BTreeMap<String, Flat>,
    buffers: BTreeMap<String, Flat>,
    grad_output: Flat,
    output: Flat,
    grad_input: Flat,
    grad_params: BTreeMap<String, Flat>,
    buffers_after: BTreeMap<String, Flat>,
}

fn load(name: &str) -> Case {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("layer_{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn assert_close(case: &str, what: &str, got: &Tensor<f32>, want: &Flat) {
    assert_eq!(got.shape(), want.shape.as_slice(), "{case}: {what} shape");
    for (i, (&g, &w)) in got.iter().zip(&want.data).enumerate() {
        let tol = 1e-4 * w.abs().max(1.0);
        assert!(
            (g as f64 - w).abs() <= tol,
            "{case}: {what}[{i}] = {g}, PyTorch {w}"
        );
    }
}

fn check(name: &str) {
    let case = load(name);
    let mut rng = StdRng::seed_from_u64(0);
    let mut m = case.layer.build::<f32>(&mut rng).expect("layer builds");
    let mut seen = 0;
    m.visit_params_mut("", &mut |n, p| {
        let v = case
            .params
            .get(n)
            .unwrap_or_else(|| panic!("{name}: no param {n}"));
        assert_eq!(p.value.shape(), v.shape.as_slice(), "{name}: {n}");
        p.value = v.tensor();
        seen += 1;
    });
    assert_eq!(seen, case.params.len(), "{name}: parameter count");
    m.visit_buffers_mut("", &mut |n, b| {
        if let Some(v) = case.buffers.get(n) {
            *b = v.tensor();
        }
    });
    m.set_training(case.training);
    let x = case.input.tensor();
    let y = m.forward(&x).expect("forward");
    assert_close(&case.name, "output", &y, &case.output);
    let gx = m
        .backward(&x, &case.grad_output.tensor())
        .expect("backward");
    assert_close(&case.name, "grad_input", &gx, &case.grad_input);
    m.visit_params("", &mut |n, p| {
        assert_close(
            &case.name,
            &format!("grad {n}"),
            &p.grad,
            &case.grad_params[n],
        );
    });
    let mut buffers = 0;
    m.visit_buffers("", &mut |n, b| {
        if let Some(want) = case.buffers_after.get(n) {
            assert_close(&case.name, n, b, want);
            buffers += 1;
        }
    });
    assert_eq!(buffers, case.buffers_after.len(), "{name}: buffers checked");
}

#[test]
fn conv2d_plain_matches_pytorch() {
    check("conv2d_plain");
}

#[test]
fn conv2d_groups_dilation_stride_padding_matches_pytorch() {
    check("conv2d_groups_dilation");
}

#[test]
fn conv2d_strided_without_bias_matches_pytorch() {
    check("conv2d_strided_nobias");
}

#[test]
fn batch_norm2d_training_mode_matches_pytorch() {
    check("batch_norm2d_train");
}

#[test]
fn batch_norm2d_eval_mode_matches_pytorch() {
    check("batch_norm2d_eval");
}

#[test]
fn max_pool2d_ceil_mode_with_padding_matches_pytorch() {
    check("max_pool2d_ceil_pad");
}

#[test]
fn max_pool2d_ceil_mode_matches_pytorch() {
    check("max_pool2d_ceil");
}

#[test]
fn avg_pool2d_ceil_mode_with_padding_matches_pytorch() {
    check("avg_pool2d_ceil_pad");
}

#[test]
fn avg_pool2d_excluding_padding_matches_pytorch() {
    check("avg_pool2d_ceil_pad_exclude");
}
