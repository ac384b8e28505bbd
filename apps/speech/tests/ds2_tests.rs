//! The Deep Speech 2 model: whole-model gradient check in f64 (with unequal
//! utterance lengths), CTC training on a tiny batch, save/load, and errors.

use kiln_nn::criterion::ctc::CtcLoss;
use kiln_nn::gradcheck::check_module;
use kiln_nn::layers::LayerConfig;
use kiln_nn::{Module, ModuleExt, Param, Tensor};
use kiln_speech::ds2::{Ds2, Ds2Config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TINY: &str = r#"
freq_bins = 8
num_classes = 5
[[conv]]
channels = 2
kernel = [3, 3]
stride = [2, 2]
padding = [1, 1]
[[conv]]
channels = 2
kernel = [3, 3]
stride = [2, 1]
padding = [1, 1]
[rnn]
cell = "gru"
layers = 2
hidden = 3
merge = "sum"
"#;

fn spectrogram(n: usize, t: usize, seed: u64) -> Tensor<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    Tensor::from_shape_simple_fn(ndarray::IxDyn(&[n, 1, 8, t]), || {
        rng.random_range(-1.0..1.0)
    })
}

/// The model with fixed utterance lengths, as a plain module for gradcheck.
struct Fixed {
    model: Ds2<f64>,
    lengths: Vec<usize>,
}

impl Module<f64> for Fixed {
    fn name(&self) -> String {
        self.model.name()
    }
    fn forward(&mut self, x: &Tensor<f64>) -> kiln_nn::Result<Tensor<f64>> {
        let (y, _) = self
            .model
            .forward_with_lengths(x, &self.lengths)
            .map_err(|e| kiln_nn::Error::invalid("ds2", e.to_string()))?;
        // Padded output frames are meaningless: keep them out of the check.
        let out = self.model.ds2_config().output_lengths(&self.lengths);
        let mut y = y;
        for (n, &l) in out.iter().enumerate() {
            for t in l..y.shape()[0] {
                y.index_axis_mut(ndarray::Axis(0), t)
                    .index_axis_mut(ndarray::Axis(0), n)
                    .fill(0.0);
            }
        }
        Ok(y)
    }
    fn backward(&mut self, x: &Tensor<f64>, g: &Tensor<f64>) -> kiln_nn::Result<Tensor<f64>> {
        self.model
            .backward_with_lengths(x, &self.lengths, g)
            .map_err(|e| kiln_nn::Error::invalid("ds2", e.to_string()))
    }
    fn visit_params(&self, p: &str, f: &mut dyn FnMut(&str, &Param<f64>)) {
        self.model.visit_params(p, f)
    }
    fn visit_params_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Param<f64>)) {
        self.model.visit_params_mut(p, f)
    }
    fn config(&self) -> LayerConfig {
        self.model.config()
    }
}

#[test]
fn whole_model_passes_gradcheck_with_unequal_lengths() {
    let config = Ds2Config::from_toml_str(TINY).unwrap();
    let model = config.init::<f64>(&mut StdRng::seed_from_u64(1)).unwrap();
    let x = spectrogram(2, 7, 2);
    assert_eq!(config.output_lengths(&[7, 5]), [4, 3]);
    let mut m = Fixed {
        model,
        lengths: vec![7, 5],
    };
    let r = check_module(&mut m, &x, 1e-6).unwrap();
    assert!(r.checked > 300, "{}", r.checked);
    r.within(1e-5).unwrap();
    // And with every utterance full length, through the plain Module view.
    let mut full = config.init::<f64>(&mut StdRng::seed_from_u64(3)).unwrap();
    check_module(&mut full, &x, 1e-6)
        .unwrap()
        .within(1e-5)
        .unwrap();
}

#[test]
fn a_few_sgd_steps_reduce_the_ctc_loss() {
    let config = Ds2Config::from_toml_str(TINY).unwrap();
    let mut model = config.init::<f32>(&mut StdRng::seed_from_u64(5)).unwrap();
    let x = spectrogram(2, 12, 6).mapv(|v| v as f32);
    let lengths = [12, 9];
    let targets = vec![vec![1, 2, 3], vec![4, 1]];
    let ctc = CtcLoss::new(0);
    let mut losses = Vec::new();
    for _ in 0..15 {
        let (lp, out_lens) = model.forward_with_lengths(&x, &lengths).unwrap();
        let (loss, grad) = ctc
            .loss_and_grad_log_probs(&lp, &targets, &out_lens)
            .unwrap();
        losses.push(loss);
        model.zero_grad();
        model.backward_with_lengths(&x, &lengths, &grad).unwrap();
        model.visit_params_mut("", &mut |_, p| {
            let g = p.grad.clone();
            p.value.scaled_add(-0.05, &g);
        });
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.7 * first, "CTC loss {losses:?}");
}

#[test]
fn save_and_load_round_trip() {
    let config = Ds2Config::from_toml_str(TINY).unwrap();
    let mut model = config.init::<f32>(&mut StdRng::seed_from_u64(7)).unwrap();
    let x = spectrogram(2, 9, 8).mapv(|v| v as f32);
    model.forward_with_lengths(&x, &[9, 6]).unwrap(); // moves running statistics
    model.eval_mode();
    let (want, _) = model.forward_with_lengths(&x, &[9, 6]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds2.safetensors");
    model.save(&path).unwrap();
    let mut back = Ds2::<f32>::load(&path).unwrap();
    assert_eq!(back.ds2_config(), &config);
    back.eval_mode();
    let (got, _) = back.forward_with_lengths(&x, &[9, 6]).unwrap();
    assert_eq!(got, want);
    assert_eq!(back.flat_params(), model.flat_params());
}

#[test]
fn bad_inputs_are_errors() {
    let config = Ds2Config::from_toml_str(TINY).unwrap();
    let mut model = config.init::<f32>(&mut StdRng::seed_from_u64(7)).unwrap();
    let x = Tensor::<f32>::zeros(ndarray::IxDyn(&[2, 1, 8, 5]));
    assert!(model.forward_with_lengths(&x, &[5]).is_err());
    assert!(model.forward_with_lengths(&x, &[6, 5]).is_err());
    let wrong_freq = Tensor::<f32>::zeros(ndarray::IxDyn(&[2, 1, 7, 5]));
    assert!(model.forward_with_lengths(&wrong_freq, &[5, 5]).is_err());
    assert!(model
        .backward_with_lengths(&x, &[5, 5], &Tensor::zeros(ndarray::IxDyn(&[3, 2, 5])))
        .is_err());
    let (lp, lens) = model.forward_with_lengths(&x, &[5, 2]).unwrap();
    assert_eq!(lp.shape(), [3, 2, 5]);
    assert_eq!(lens, [3, 1]);
    assert!(model
        .backward_with_lengths(&x, &[5, 2], &Tensor::zeros(ndarray::IxDyn(&[3, 2, 4])))
        .is_err());
}

#[test]
fn lstm_concat_variant_passes_gradcheck() {
    let text = TINY
        .replace("cell = \"gru\"", "cell = \"lstm\"")
        .replace("merge = \"sum\"", "merge = \"concat\"");
    let config = Ds2Config::from_toml_str(&text).unwrap();
    assert_eq!(config.rnn_output_size(), 6);
    let model = config.init::<f64>(&mut StdRng::seed_from_u64(11)).unwrap();
    let mut m = Fixed {
        model,
        lengths: vec![6, 7],
    };
    check_module(&mut m, &spectrogram(2, 7, 12), 1e-6)
        .unwrap()
        .within(1e-5)
        .unwrap();
}

/// The inference graph (what ONNX export and `kiln model run` use) loads a
/// trained model's weights by name and gives its outputs on whole utterances.
#[test]
fn the_inference_graph_gives_the_model_outputs() {
    for merge in ["sum", "concat"] {
        let config =
            Ds2Config::from_toml_str(&TINY.replace("\"sum\"", &format!("\"{merge}\""))).unwrap();
        let mut model = config.init::<f64>(&mut StdRng::seed_from_u64(5)).unwrap();
        // Non-trivial running statistics.
        let stats: Vec<f64> = (0..model.num_buffers())
            .map(|i| 0.6 + (i % 5) as f64 * 0.1)
            .collect();
        model.set_flat_buffers(&stats).unwrap();
        model.set_training(false);
        let bytes = kiln_nn::serialize::to_bytes(&model, &Default::default()).unwrap();
        let mut graph = config
            .inference_graph()
            .init::<f64>(&mut StdRng::seed_from_u64(0))
            .unwrap();
        kiln_nn::serialize::load_weights_from_bytes(&mut graph, &bytes, std::path::Path::new("m"))
            .unwrap();
        graph.set_training(false);
        let x = spectrogram(2, 9, 3);
        let want = model.forward(&x).unwrap();
        let got = graph.forward(&x).unwrap();
        assert_eq!(got.shape(), want.shape());
        let d = got
            .iter()
            .zip(want.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-12, "{merge}: {d}");
    }
}
