//! CTC loss and gradients against PyTorch fixtures:
//! - `fixtures/ctc_vectors.json` (copied from the project's anchors, made by
//!   `anchors/ctc.py`; see `fixtures/README_ctc.md`),
//! - `fixtures/ctc_random.json` (made by `fixtures/gen_ctc_fixtures.py`),
//!
//! plus a central finite-difference check of the exact and logits gradients in f64.

use kiln_nn::criterion::ctc::{CtcLoss, CtcReduction};
use kiln_nn::tensor::{from_vec, Tensor};
use serde_json::Value;

const TOL: f64 = 1e-4;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Value::String(s) if s == "nan" => f64::NAN,
        other => panic!("not a number: {other}"),
    }
}

fn flat(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
        x => out.push(num(x)),
    }
}

fn tensor(case: &Value, key: &str) -> Tensor<f64> {
    let shape = [
        case["T"].as_u64().unwrap() as usize,
        case["N"].as_u64().unwrap() as usize,
        case["C"].as_u64().unwrap() as usize,
    ];
    let mut data = Vec::new();
    flat(&case[key], &mut data);
    from_vec(&shape, data).unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn targets(case: &Value) -> Vec<Vec<usize>> {
    case["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(usizes)
        .collect()
}

fn max_abs_diff(a: &Tensor<f64>, b: &Tensor<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn close(a: f64, b: f64) -> bool {
    (a.is_infinite() && a == b) || (a - b).abs() <= TOL * (1.0 + b.abs())
}

/// Checks every case of a fixture file; returns the worst gradient error
/// and the case count.
fn check_file(name: &str) -> (f64, usize) {
    let doc = fixture(name);
    let cases = doc["cases"].as_array().unwrap();
    let mut worst: f64 = 0.0;
    for case in cases {
        let cname = case["name"].as_str().unwrap();
        let blank = case["blank"].as_u64().unwrap() as usize;
        let zi = case["zero_infinity"].as_bool().unwrap();
        let lp = tensor(case, "log_probs");
        // ctc_random.json omits logits (log_probs are normalised logits).
        let logits = if case.get("logits").is_some() {
            tensor(case, "logits")
        } else {
            lp.clone()
        };
        let tg = targets(case);
        let il = usizes(&case["input_lengths"]);
        let sum = CtcLoss::new(blank)
            .with_reduction(CtcReduction::Sum)
            .with_zero_infinity(zi);

        let mut expected = Vec::new();
        flat(&case["loss_per_sample"], &mut expected);
        let got = sum.forward_per_sample(&lp, &tg, &il).unwrap();
        for (g, e) in got.iter().zip(&expected) {
            assert!(close(*g, *e), "{name}/{cname}: loss {g} vs {e}");
        }
        let mut raw = Vec::new();
        flat(&case["loss_per_sample_without_zero_infinity"], &mut raw);
        let got_raw = sum
            .with_zero_infinity(false)
            .forward_per_sample(&lp, &tg, &il)
            .unwrap();
        for (g, e) in got_raw.iter().zip(&raw) {
            assert!(close(*g, *e), "{name}/{cname}: raw loss {g} vs {e}");
        }
        let mean = sum
            .with_reduction(CtcReduction::Mean)
            .forward(&lp, &tg, &il)
            .unwrap();
        let e_mean = num(&case["loss_mean_torch"]);
        assert!(
            close(mean, e_mean),
            "{name}/{cname}: mean {mean} vs {e_mean}"
        );
        let s = sum.forward(&lp, &tg, &il).unwrap();
        assert!(close(s, num(&case["loss_sum"])), "{name}/{cname}: sum {s}");

        let (s2, g_exact) = sum.loss_and_grad_log_probs(&lp, &tg, &il).unwrap();
        assert!(close(s2, s));
        let d = max_abs_diff(&g_exact, &tensor(case, "grad_log_probs_exact"));
        assert!(d < TOL, "{name}/{cname}: exact grad off by {d}");
        worst = worst.max(d);
        let g_torch = sum.backward_torch(&lp, &tg, &il).unwrap();
        // ctc_random.json omits the torch gradient: for normalised inputs it
        // equals the logits gradient.
        let torch_key = if case.get("grad_log_probs_torch").is_some() {
            "grad_log_probs_torch"
        } else {
            "grad_logits"
        };
        let d = max_abs_diff(&g_torch, &tensor(case, torch_key));
        assert!(d < TOL, "{name}/{cname}: torch grad off by {d}");
        worst = worst.max(d);
        let (s3, g_logits) = sum.loss_and_grad_logits(&logits, &tg, &il).unwrap();
        assert!(close(s3, s), "{name}/{cname}: fused loss {s3} vs {s}");
        let d = max_abs_diff(&g_logits, &tensor(case, "grad_logits"));
        assert!(d < TOL, "{name}/{cname}: logits grad off by {d}");
        worst = worst.max(d);

        // f32 agrees too
        let lp32 = lp.mapv(|v| v as f32);
        let l32 = sum.forward(&lp32, &tg, &il).unwrap() as f64;
        assert!(
            close(l32, s) || (l32 - s).abs() < 1e-3,
            "{name}/{cname}: f32 {l32} vs {s}"
        );

        // mean-reduction gradient = per-sample scaled sum gradient
        let g_mean = sum
            .with_reduction(CtcReduction::Mean)
            .backward(&lp, &tg, &il)
            .unwrap();
        let n = tg.len() as f64;
        for (i, t) in tg.iter().enumerate() {
            let scale = 1.0 / (t.len().max(1) as f64 * n);
            let a = g_mean.slice(ndarray::s![.., i, ..]);
            let b = g_exact.slice(ndarray::s![.., i, ..]);
            for (x, y) in a.iter().zip(b.iter()) {
                assert!((x - y * scale).abs() < 1e-12);
            }
        }
    }
    (worst, cases.len())
}

#[test]
fn matches_anchor_ctc_vectors() {
    let (worst, n) = check_file("ctc_vectors.json");
    assert_eq!(n, 6);
    println!("ctc_vectors.json: {n} cases, worst gradient error {worst:e}");
}

#[test]
fn matches_random_torch_fixture() {
    let (worst, n) = check_file("ctc_random.json");
    assert!(n >= 1);
    println!("ctc_random.json: {n} cases, worst gradient error {worst:e}");
}

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
}

#[test]
fn finite_differences_f64() {
    let (t, n, c) = (7, 3, 5);
    let mut seed = 42;
    let logits = from_vec(&[t, n, c], (0..t * n * c).map(|_| lcg(&mut seed)).collect()).unwrap();
    let tg = vec![vec![1, 2, 2], vec![3], vec![4, 1]];
    let il = vec![7, 5, 6];
    for red in [CtcReduction::Sum, CtcReduction::Mean, CtcReduction::None] {
        let ctc = CtcLoss::new(0).with_reduction(red);
        // exact gradient w.r.t. free log-probs (use logits as arbitrary inputs)
        let g = ctc.backward(&logits, &tg, &il).unwrap();
        let (_, gl) = ctc.loss_and_grad_logits(&logits, &tg, &il).unwrap();
        let eps = 1e-6;
        let mut worst: f64 = 0.0;
        let mut worst_l: f64 = 0.0;
        for idx in 0..logits.len() {
            let mut a = logits.clone();
            let mut b = logits.clone();
            a.as_slice_mut().unwrap()[idx] += eps;
            b.as_slice_mut().unwrap()[idx] -= eps;
            let fd = (ctc.forward(&a, &tg, &il).unwrap() - ctc.forward(&b, &tg, &il).unwrap())
                / (2.0 * eps);
            worst = worst.max((fd - g.as_slice().unwrap()[idx]).abs());
            let fdl = (ctc.loss_and_grad_logits(&a, &tg, &il).unwrap().0
                - ctc.loss_and_grad_logits(&b, &tg, &il).unwrap().0)
                / (2.0 * eps);
            worst_l = worst_l.max((fdl - gl.as_slice().unwrap()[idx]).abs());
        }
        assert!(
            worst < 1e-6,
            "{red:?}: exact gradient vs finite differences {worst}"
        );
        assert!(
            worst_l < 1e-6,
            "{red:?}: logits gradient vs finite differences {worst_l}"
        );
    }
}
