//! Forward and backward parity with PyTorch for RNN (tanh; ReLU packed), LSTM, GRU and a
//! bidirectional GRU over packed (unequal-length) sequences, from the
//! fixtures written by `tests/fixtures/gen_rnn_fixtures.py` (float64).
//! Checked in f64 (tight) and in f32 (the training precision).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_nn::layers::{BiRecurrent, LayerConfig, Recurrent, SequenceModule};
use kiln_nn::{Float, Module, ModuleExt, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Deserialize;

#[derive(Deserialize)]
struct Flat {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl Flat {
    fn tensor<F: Float>(&self) -> Tensor<F> {
        Tensor::from_shape_vec(
            ndarray::IxDyn(&self.shape),
            self.data.iter().map(|&v| F::of(v)).collect(),
        )
        .expect("fixture tensor fills its shape")
    }
}

#[derive(Deserialize)]
struct Case {
    name: String,
    layer: LayerConfig,
    lengths: Vec<usize>,
    input: Flat,
    params: BTreeMap<String, Flat>,
    grad_output: Flat,
    output: Flat,
    grad_input: Flat,
    grad_params: BTreeMap<String, Flat>,
}

fn load(name: &str) -> Case {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("rnn_{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn assert_close<F: Float>(case: &str, what: &str, got: &Tensor<F>, want: &Flat, tol: f64) {
    assert_eq!(got.shape(), want.shape.as_slice(), "{case}: {what} shape");
    for (i, (&g, &w)) in got.iter().zip(&want.data).enumerate() {
        assert!(
            (g.as_f64() - w).abs() <= tol * w.abs().max(1.0),
            "{case}: {what}[{i}] = {g}, PyTorch {w}"
        );
    }
}

fn build<F: Float>(case: &Case) -> Box<dyn SequenceModule<F>> {
    let mut rng = StdRng::seed_from_u64(0);
    match &case.layer {
        LayerConfig::Recurrent(c) => {
            Box::new(c.init::<F>(&mut rng).expect("builds")) as Box<dyn SequenceModule<F>>
        }
        LayerConfig::BiRecurrent(c) => Box::new(c.init::<F>(&mut rng).expect("builds")),
        other => panic!("{}: not a recurrent layer: {other:?}", case.name),
    }
}

fn check<F: Float>(name: &str, tol: f64) {
    let case = load(name);
    let mut m = build::<F>(&case);
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
    let x = case.input.tensor::<F>();
    let y = m.forward_with_lengths(&x, &case.lengths).expect("forward");
    assert_close(name, "output", &y, &case.output, tol);
    m.zero_grad();
    let gx = m
        .backward_with_lengths(&x, &case.lengths, &case.grad_output.tensor())
        .expect("backward");
    assert_close(name, "grad_input", &gx, &case.grad_input, tol);
    m.visit_params("", &mut |n, p| {
        assert_close(
            name,
            &format!("grad {n}"),
            &p.grad,
            &case.grad_params[n],
            tol,
        );
    });
}

#[test]
fn rnn_tanh_matches_pytorch() {
    check::<f64>("rnn_tanh", 1e-10);
    check::<f32>("rnn_tanh", 1e-4);
}

#[test]
fn packed_rnn_relu_matches_pytorch() {
    check::<f64>("rnn_relu_packed", 1e-10);
    check::<f32>("rnn_relu_packed", 1e-4);
}

#[test]
fn lstm_matches_pytorch() {
    check::<f64>("lstm", 1e-10);
    check::<f32>("lstm", 1e-4);
}

#[test]
fn gru_matches_pytorch() {
    check::<f64>("gru", 1e-10);
    check::<f32>("gru", 1e-4);
}

#[test]
fn packed_lstm_matches_pytorch() {
    check::<f64>("lstm_packed", 1e-10);
    check::<f32>("lstm_packed", 1e-4);
}

#[test]
fn packed_bidirectional_gru_matches_pytorch() {
    check::<f64>("bigru_packed", 1e-10);
    check::<f32>("bigru_packed", 1e-4);
}

#[test]
fn layer_configs_rebuild_the_same_structure() {
    for name in ["rnn_tanh", "lstm", "gru", "bigru_packed"] {
        let case = load(name);
        let m = case
            .layer
            .build::<f32>(&mut StdRng::seed_from_u64(1))
            .expect("builds");
        assert_eq!(m.config(), case.layer);
        let mut names: Vec<String> = m.param_layout().into_iter().map(|s| s.name).collect();
        names.sort();
        let want: Vec<String> = case.params.keys().cloned().collect();
        assert_eq!(names, want, "{name}: PyTorch parameter names");
    }
    // Keep the concrete types exported.
    let _: Option<Recurrent<f32>> = None;
    let _: Option<BiRecurrent<f32>> = None;
}
