//! PyTorch parity of Linear, LogSoftMax + ClassNLL and CrossEntropy
//! (fixtures from `tests/fixtures/gen_optim_fixtures.py`).

use kiln_nn::criterion::{ClassNll, Criterion, CrossEntropy, Reduction};
use kiln_nn::layers::{LinearConfig, LogSoftMax};
use kiln_nn::tensor::from_vec;
use kiln_nn::{Module, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn shape(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[test]
fn linear_forward_backward_matches_pytorch_f32() {
    let f = fixture("optim_linear.json");
    let (i, o) = (
        f["in_features"].as_u64().unwrap() as usize,
        f["out_features"].as_u64().unwrap() as usize,
    );
    let mut lin = LinearConfig::new(i, o)
        .init::<f32>(&mut StdRng::seed_from_u64(0))
        .unwrap();
    let t32 = |v: &Value, s: &[usize]| -> Tensor<f32> {
        from_vec(s, floats(v).iter().map(|&x| x as f32).collect()).unwrap()
    };
    lin.weight.value = t32(&f["weight"], &[o, i]);
    if let Some(b) = &mut lin.bias {
        b.value = t32(&f["bias"], &[o]);
    }
    let xs = shape(&f["input_shape"]);
    let x = t32(&f["input"], &xs);
    let y = lin.forward(&x).unwrap();
    let gy = t32(&f["grad_output"], &[xs[0], o]);
    let gx = lin.backward(&x, &gy).unwrap();
    let v = |t: &Tensor<f32>| t.iter().map(|&x| x as f64).collect::<Vec<_>>();
    assert_close("output", &v(&y), &floats(&f["output"]), 1e-4);
    assert_close("grad_input", &v(&gx), &floats(&f["grad_input"]), 1e-4);
    assert_close(
        "grad_weight",
        &v(&lin.weight.grad),
        &floats(&f["grad_weight"]),
        1e-4,
    );
    let gb = lin.bias.as_ref().map(|b| v(&b.grad)).unwrap();
    assert_close("grad_bias", &gb, &floats(&f["grad_bias"]), 1e-4);
}

fn run_case(c: &Value) -> (f64, Vec<f64>) {
    let s = shape(&c["shape"]);
    let x: Tensor<f64> = from_vec(&s, floats(&c["logits"])).unwrap();
    let t: Tensor<f64> = from_vec(&shape(&c["target_shape"]), floats(&c["target"])).unwrap();
    let weight = c["weight"].as_array().map(|_| floats(&c["weight"]));
    let ignore = Some(c["ignore_index"].as_i64().unwrap());
    let reduction = match c["reduction"].as_str().unwrap() {
        "sum" => Reduction::Sum,
        _ => Reduction::Mean,
    };
    if c["kind"] == "nll" {
        let mut nll = ClassNll::new()
            .with_ignore_index(ignore)
            .with_reduction(reduction);
        if let Some(w) = weight {
            nll = nll.with_weight(w);
        }
        let mut lsm = LogSoftMax::new(1);
        let lp = lsm.forward(&x).unwrap();
        let loss = nll.forward(&lp, &t).unwrap();
        let g = nll.backward(&lp, &t).unwrap();
        let gx = lsm.backward(&x, &g).unwrap();
        (loss, gx.iter().copied().collect())
    } else {
        let mut ce = CrossEntropy::new()
            .with_ignore_index(ignore)
            .with_reduction(reduction)
            .with_label_smoothing(c["label_smoothing"].as_f64().unwrap());
        if let Some(w) = weight {
            ce = ce.with_weight(w);
        }
        let loss = ce.forward(&x, &t).unwrap();
        let gx = ce.backward(&x, &t).unwrap();
        (loss, gx.iter().copied().collect())
    }
}

#[test]
fn log_softmax_nll_and_cross_entropy_match_pytorch() {
    let f = fixture("optim_criterion.json");
    let cases = f.as_array().unwrap();
    assert!(cases.len() >= 10);
    for (k, c) in cases.iter().enumerate() {
        let (loss, grad) = run_case(c);
        let what = format!(
            "case {k} ({}, smoothing {})",
            c["kind"], c["label_smoothing"]
        );
        assert_close(
            &format!("{what} loss"),
            &[loss],
            &[c["loss"].as_f64().unwrap()],
            1e-9,
        );
        assert_close(&format!("{what} grad"), &grad, &floats(&c["grad"]), 1e-9);
    }
}

#[test]
fn pointwise_criterions_match_pytorch() {
    use kiln_nn::criterion::{Bce, KlDiv, KlReduction, Mse, SmoothL1, L1};
    let f = fixture("optim_pointwise.json");
    let cases = f.as_array().unwrap();
    assert!(cases.len() >= 15);
    for (k, c) in cases.iter().enumerate() {
        let s = shape(&c["shape"]);
        let x: Tensor<f64> = from_vec(&s, floats(&c["input"])).unwrap();
        let t: Tensor<f64> = from_vec(&s, floats(&c["target"])).unwrap();
        let red = c["reduction"].as_str().unwrap();
        let r = if red == "sum" {
            Reduction::Sum
        } else {
            Reduction::Mean
        };
        let mut crit: Box<dyn Criterion<f64>> = match c["kind"].as_str().unwrap() {
            "mse" => Box::new(Mse::new(r)),
            "l1" => Box::new(L1::new(r)),
            "smooth_l1" => Box::new(SmoothL1::new(r, c["beta"].as_f64().unwrap()).unwrap()),
            "bce" => {
                let mut b = Bce::new(r);
                if c["weight"].is_array() {
                    let w = floats(&c["weight"]);
                    b = b.with_weight(from_vec(&[w.len()], w).unwrap());
                }
                Box::new(b)
            }
            "kl_div" => Box::new(KlDiv::new(match red {
                "sum" => KlReduction::Sum,
                "batchmean" => KlReduction::BatchMean,
                _ => KlReduction::Mean,
            })),
            other => panic!("unknown kind {other}"),
        };
        let loss = crit.forward(&x, &t).unwrap();
        let g = crit.backward(&x, &t).unwrap();
        let what = format!("case {k} ({} {red})", c["kind"]);
        assert_close(
            &format!("{what} loss"),
            &[loss],
            &[c["loss"].as_f64().unwrap()],
            1e-9,
        );
        let g: Vec<f64> = g.iter().copied().collect();
        assert_close(&format!("{what} grad"), &g, &floats(&c["grad"]), 1e-9);
    }
}
