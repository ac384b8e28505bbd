//! LeNet-5 training step at batch 128 on 28x28 inputs (forward, backward,
//! SGD step), inference, and the peak memory of a training run.

use kiln::digits::lenet5;
use kiln_nn::criterion::{ClassNll, Criterion};
use kiln_nn::optim::{Optimizer, OptimizerConfig, SgdConfig};
use kiln_nn::{Module, ModuleExt, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::timing::{peak_rss_mib, time_it};

const BATCH: usize = 128;

struct Step {
    model: Box<dyn Module<f32>>,
    loss: ClassNll<f32>,
    opt: Box<dyn Optimizer<f32>>,
    x: Tensor<f32>,
    y: Tensor<f32>,
}

impl Step {
    fn new() -> Option<Self> {
        let mut rng = StdRng::seed_from_u64(0);
        let model = lenet5().build::<f32>(&mut rng).ok()?;
        let opt = OptimizerConfig::Sgd(SgdConfig {
            lr: 0.01,
            ..SgdConfig::default()
        })
        .build::<f32>()
        .ok()?;
        let x = kiln_nn::init::normal::<f32>(&mut rng, &[BATCH, 1, 28, 28], 0.0, 1.0);
        let y = Tensor::from_shape_simple_fn(ndarray::IxDyn(&[BATCH]), || {
            rng.random_range(0..10) as f32
        });
        Some(Step {
            model,
            loss: ClassNll::default(),
            opt,
            x,
            y,
        })
    }

    fn train(&mut self) -> kiln_nn::Result<f32> {
        self.model.zero_grad();
        let out = self.model.forward(&self.x)?;
        let l = self.loss.forward(&out, &self.y)?;
        let g = self.loss.backward(&out, &self.y)?;
        self.model.backward(&self.x, &g)?;
        let mut p = self.model.flat_params();
        self.opt.step(&mut p, &self.model.flat_grads())?;
        self.model.set_flat_params(&p)?;
        Ok(l)
    }
}

pub(crate) fn run(threads: usize) {
    let Some(mut s) = Step::new() else {
        eprintln!("lenet: could not build the model");
        return;
    };
    let tr = time_it(
        || {
            let _ = s.train();
        },
        20,
    );
    s.model.eval_mode();
    let x = s.x.clone();
    let inf = time_it(
        || {
            let _ = s.model.forward(&x);
        },
        20,
    );
    println!(
        "{{\"bench\":\"lenet5\",\"impl\":\"kiln\",\"threads\":{threads},\"train_step_ms\":{:.3},\"train_samples_per_s\":{:.1},\"infer_ms\":{:.3},\"infer_samples_per_s\":{:.1},\"bg_pct\":{:.1}}}",
        tr.median_s * 1e3,
        BATCH as f64 / tr.median_s,
        inf.median_s * 1e3,
        BATCH as f64 / inf.median_s,
        tr.bg_pct.max(inf.bg_pct)
    );
}

/// 200 LeNet-5 training steps, then the process's peak RSS.
pub(crate) fn peak_rss(threads: usize) {
    let before = peak_rss_mib();
    let Some(mut s) = Step::new() else {
        eprintln!("lenet: could not build the model");
        return;
    };
    let mut last = 0.0;
    for _ in 0..200 {
        last = s.train().unwrap_or(f32::NAN);
    }
    println!(
        "{{\"bench\":\"lenet5_peak_rss\",\"impl\":\"kiln\",\"threads\":{threads},\"steps\":200,\"final_loss\":{last:.4},\"rss_at_start_mib\":{before:.1},\"peak_rss_mib\":{:.1}}}",
        peak_rss_mib()
    );
}
