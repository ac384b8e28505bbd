//! A Deep Speech 2 training step exactly as ../shared/anchors/ds2_step.py's
//! GRU variant (config `ds2_gru.toml`): batch 8 x 1 x 161 bins x 200 frames,
//! log-softmax + CTC (blank 0, mean, zero_infinity), gradient-norm clip 400,
//! SGD lr 3e-4 momentum 0.9 Nesterov; and eval-mode forward latency.

use kiln_nn::criterion::CtcLoss;
use kiln_nn::optim::clip::clip_by_norm;
use kiln_nn::optim::{Optimizer, OptimizerConfig, SgdConfig};
use kiln_nn::{ModuleExt, Tensor};
use kiln_speech::ds2::{Ds2, Ds2Config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::timing::time_n;

pub(crate) const BATCH: usize = 8;
pub(crate) const FREQ: usize = 161;
pub(crate) const FRAMES: usize = 200;
const CLASSES: usize = 29;

/// The model configuration of the bench (the TOML next to this file).
pub(crate) fn config() -> Ds2Config {
    Ds2Config::from_toml_str(include_str!("ds2_gru.toml")).expect("benches/speech/ds2_gru.toml")
}

struct Step {
    model: Ds2<f32>,
    ctc: CtcLoss,
    opt: Box<dyn Optimizer<f32>>,
    x: Tensor<f32>,
    lengths: Vec<usize>,
    targets: Vec<Vec<usize>>,
}

impl Step {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(0);
        let model = config().init::<f32>(&mut rng).expect("DS2 init");
        let opt = OptimizerConfig::Sgd(SgdConfig {
            lr: 3e-4,
            momentum: 0.9,
            nesterov: true,
            ..SgdConfig::default()
        })
        .build::<f32>()
        .expect("SGD");
        let x = kiln_nn::init::normal::<f32>(&mut rng, &[BATCH, 1, FREQ, FRAMES], 0.0, 1.0);
        // Label sequences of 20..=30 symbols in 1..29, as the script.
        let targets = (0..BATCH)
            .map(|_| {
                let len = rng.random_range(20..=30);
                (0..len).map(|_| rng.random_range(1..CLASSES)).collect()
            })
            .collect();
        Step {
            model,
            ctc: CtcLoss::new(0).with_zero_infinity(true),
            opt,
            x,
            lengths: vec![FRAMES; BATCH],
            targets,
        }
    }

    /// Forward, CTC, backward, clip, SGD update; returns the loss.
    fn train(&mut self) -> f32 {
        self.model.zero_grad();
        let (out, out_lens) = self
            .model
            .forward_with_lengths(&self.x, &self.lengths)
            .expect("DS2 forward");
        let (loss, g) = self
            .ctc
            .loss_and_grad_log_probs(&out, &self.targets, &out_lens)
            .expect("CTC");
        self.model
            .backward_with_lengths(&self.x, &self.lengths, &g)
            .expect("DS2 backward");
        let mut grads = self.model.flat_grads();
        clip_by_norm(&mut grads, 400.0).expect("clip");
        let mut p = self.model.flat_params();
        self.opt.step(&mut p, &grads).expect("SGD step");
        self.model.set_flat_params(&p).expect("set params");
        loss
    }
}

/// Train step and inference of the DS2 GRU model.
pub(crate) fn run(threads: usize, tries: usize) {
    let mut s = Step::new();
    let params = s.model.num_params();
    let mut losses = Vec::new();
    let tr = time_n(|| losses.push(s.train()), 2, 5, tries);
    s.model.eval_mode();
    let (x, lens) = (s.x.clone(), s.lengths.clone());
    let inf = time_n(
        || {
            let _ = s.model.forward_with_lengths(&x, &lens);
        },
        2,
        5,
        tries,
    );
    let audio_s = BATCH as f64 * FRAMES as f64 * 0.01;
    println!(
        "{{\"bench\":\"ds2_gru\",\"impl\":\"kiln\",\"threads\":{threads},\"params\":{params},\"train_step_s\":{:.4},\"train_step_min_s\":{:.4},\"train_audio_s_per_s\":{:.2},\"infer_s\":{:.4},\"infer_audio_s_per_s\":{:.2},\"first_loss\":{:.4},\"last_loss\":{:.4},\"train_bg_pct\":{:.1},\"infer_bg_pct\":{:.1},\"bg_pct\":{:.1}}}",
        tr.median_s,
        tr.min_s,
        audio_s / tr.median_s,
        inf.median_s,
        audio_s / inf.median_s,
        losses.first().copied().unwrap_or(f32::NAN),
        losses.last().copied().unwrap_or(f32::NAN),
        tr.bg_pct,
        inf.bg_pct,
        tr.bg_pct.max(inf.bg_pct)
    );
}
