//! PyTorch parity of every optimizer over 5 steps, and of L-BFGS on the
//! Rosenbrock function (fixtures from `tests/fixtures/gen_optim_fixtures.py`).

use kiln_nn::optim::{LbfgsConfig, LineSearch, OptimizerConfig};
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

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1e-3),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[test]
fn elementwise_optimizers_match_pytorch_after_five_steps() {
    let f = fixture("optim_optimizers.json");
    let initial = floats(&f["initial"]);
    let grads: Vec<Vec<f64>> = f["grads"].as_array().unwrap().iter().map(floats).collect();
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for c in cases {
        let cfg: OptimizerConfig = serde_json::from_value(c["config"].clone())
            .unwrap_or_else(|e| panic!("{}: {e}", c["config"]));
        let mut opt = cfg.build::<f64>().unwrap();
        let mut p = initial.clone();
        for g in &grads {
            opt.step(&mut p, g).unwrap();
        }
        let what = opt.name();
        assert_close(&what, &p, &floats(&c["final"]), 1e-9);
        let state = opt.state();
        assert_eq!(state.step, 5);
        let want = c["state"].as_object().unwrap();
        assert_eq!(
            state.buffers.len(),
            want.len(),
            "{what}: buffers {:?}",
            state.buffers
        );
        for (name, buf) in &state.buffers {
            assert_close(&format!("{what} {name}"), buf, &floats(&want[name]), 1e-9);
        }
    }
}

#[test]
fn elementwise_optimizers_in_f32_track_pytorch_f64() {
    let f = fixture("optim_optimizers.json");
    let initial: Vec<f32> = floats(&f["initial"]).iter().map(|&v| v as f32).collect();
    let grads: Vec<Vec<f32>> = f["grads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| floats(g).iter().map(|&v| v as f32).collect())
        .collect();
    for c in f["cases"].as_array().unwrap() {
        let cfg: OptimizerConfig = serde_json::from_value(c["config"].clone()).unwrap();
        let mut opt = cfg.build::<f32>().unwrap();
        let mut p = initial.clone();
        for g in &grads {
            opt.step(&mut p, g).unwrap();
        }
        let p: Vec<f64> = p.iter().map(|&v| v as f64).collect();
        assert_close(&opt.name(), &p, &floats(&c["final"]), 1e-4);
    }
}

fn rosenbrock(x: &[f64]) -> (f64, Vec<f64>) {
    let n = x.len();
    let mut f = 0.0;
    let mut g = vec![0.0; n];
    for i in 0..n - 1 {
        let a = 1.0 - x[i];
        let b = x[i + 1] - x[i] * x[i];
        f += a * a + 10.0 * b * b;
        g[i] += -2.0 * a - 40.0 * b * x[i];
        g[i + 1] += 20.0 * b;
    }
    (f, g)
}

#[test]
fn lbfgs_matches_pytorch_on_rosenbrock() {
    let f = fixture("optim_optimizers.json");
    for c in f["lbfgs"].as_array().unwrap() {
        let k = &c["config"];
        let cfg = LbfgsConfig {
            lr: k["lr"].as_f64().unwrap(),
            max_iter: k["max_iter"].as_u64().unwrap() as usize,
            history_size: k["history_size"].as_u64().unwrap() as usize,
            line_search: if k["line_search_fn"] == "strong_wolfe" {
                LineSearch::StrongWolfe
            } else {
                LineSearch::None
            },
            ..Default::default()
        };
        let mut opt = cfg.build().unwrap();
        let mut x = floats(&c["x0"]);
        let mut losses = Vec::new();
        for _ in 0..5 {
            let mut closure = |p: &[f64]| Ok(rosenbrock(p));
            losses.push(opt.step(&mut x, &mut closure).unwrap());
        }
        let what = format!("LBFGS {k}");
        assert_close(
            &format!("{what} losses"),
            &losses,
            &floats(&c["losses"]),
            1e-7,
        );
        assert_close(&format!("{what} params"), &x, &floats(&c["final"]), 1e-7);
        assert_eq!(
            opt.func_evals() as u64,
            c["func_evals"].as_u64().unwrap(),
            "{what}"
        );
        assert_eq!(opt.n_iter() as u64, c["n_iter"].as_u64().unwrap(), "{what}");
    }
}
