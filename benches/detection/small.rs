//! The small SSD of ../shared/anchors/ssd_step.py built from kiln-detection
//! pieces ([`SsdConfig::small_plain`]): a training step on batch 8 at
//! 300x300 (matching inside the step, forward, MultiBox loss, backward, SGD
//! lr 1e-3 momentum 0.9 weight decay 5e-4), eval-mode inference (forward
//! plus softmax, no NMS) and the matching of 8 images alone.
//!
//! The ground truth follows the script's recipe (1..=5 boxes per image,
//! corner `U(0, 0.7)`, side `U(0.05, 0.45)` clipped to 1, labels 1..=20)
//! from Kiln's seeded generator, so the boxes are not PyTorch's own.

use kiln_detection::boxes::BBox;
use kiln_detection::model::{Ssd, SsdConfig};
use kiln_detection::multibox::{encode_targets, GroundTruth, MultiBoxConfig};
use kiln_detection::train::train_step;
use kiln_nn::layers::SoftMax;
use kiln_nn::optim::{Optimizer, OptimizerConfig, SgdConfig};
use kiln_nn::{Module, ModuleExt, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::timing::time_n;

const BATCH: usize = 8;
const SIZE: usize = 300;

/// Random ground truth as `make_targets` of the anchor script.
fn make_targets(rng: &mut StdRng, classes: usize) -> Vec<GroundTruth> {
    (0..BATCH)
        .map(|_| {
            let k = rng.random_range(1..=5);
            let mut gt = GroundTruth::default();
            for _ in 0..k {
                let (x, y) = (rng.random::<f32>() * 0.7, rng.random::<f32>() * 0.7);
                let w = rng.random::<f32>() * 0.4 + 0.05;
                let h = rng.random::<f32>() * 0.4 + 0.05;
                gt.boxes
                    .push(BBox::new(x, y, (x + w).min(1.0), (y + h).min(1.0)));
                gt.labels.push(rng.random_range(1..classes));
            }
            gt
        })
        .collect()
}

struct Step {
    model: Ssd<f32>,
    opt: Box<dyn Optimizer<f32>>,
    params: Vec<f32>,
    loss_cfg: MultiBoxConfig,
    x: Tensor<f32>,
    gts: Vec<GroundTruth>,
}

impl Step {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(0);
        let model = Ssd::<f32>::new(SsdConfig::small_plain(crate::voc_classes()), &mut rng)
            .expect("small SSD");
        let classes = model.config().num_classes();
        let mut data_rng = StdRng::seed_from_u64(1);
        let x = kiln_nn::init::normal::<f32>(&mut data_rng, &[BATCH, 3, SIZE, SIZE], 0.0, 1.0);
        let gts = make_targets(&mut data_rng, classes);
        let opt = OptimizerConfig::Sgd(SgdConfig {
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 5e-4,
            ..SgdConfig::default()
        })
        .build::<f32>()
        .expect("SGD");
        let params = model.graph().flat_params();
        let mut loss_cfg = MultiBoxConfig::new(classes);
        loss_cfg.variances = model.config().priors.variances;
        Step {
            model,
            opt,
            params,
            loss_cfg,
            x,
            gts,
        }
    }

    /// Matching, forward, loss, backward and SGD update; returns the loss.
    fn train(&mut self) -> f32 {
        self.model.graph_mut().zero_grad();
        let out = train_step(&mut self.model, &self.x, &self.gts, &self.loss_cfg)
            .expect("SSD train step");
        let grads = self.model.graph().flat_grads();
        self.opt.step(&mut self.params, &grads).expect("SGD step");
        self.model
            .graph_mut()
            .set_flat_params(&self.params)
            .expect("set params");
        out.loss()
    }
}

/// Train step, inference and matching of the small SSD.
pub(crate) fn run(threads: usize, tries: usize) {
    let mut s = Step::new();
    let params = s.model.graph().num_params();
    let priors = s.model.priors().len();
    let mut losses = Vec::new();
    s.model.set_training(true);
    let tr = time_n(|| losses.push(s.train()), 2, 10, tries);
    s.model.set_training(false);
    let mut softmax = SoftMax::new(-1);
    let x = s.x.clone();
    let inf = time_n(
        || {
            let out = s.model.infer(x.clone()).expect("small SSD inference");
            let _scores = softmax.forward(&out.conf).expect("softmax");
        },
        2,
        10,
        tries,
    );
    let mt = time_n(
        || {
            let _ = encode_targets(&s.gts, s.model.priors(), &s.loss_cfg).expect("matching");
        },
        2,
        20,
        tries,
    );
    let b = BATCH as f64;
    println!(
        "{{\"bench\":\"ssd_small\",\"impl\":\"kiln\",\"threads\":{threads},\"batch\":{BATCH},\"params\":{params},\"priors\":{priors},\"train_step_s\":{:.4},\"train_step_min_s\":{:.4},\"train_images_per_s\":{:.3},\"infer_s\":{:.4},\"infer_images_per_s\":{:.3},\"matching_ms\":{:.3},\"first_loss\":{:.4},\"last_loss\":{:.4},\"train_bg_pct\":{:.1},\"infer_bg_pct\":{:.1},\"matching_bg_pct\":{:.1},\"bg_pct\":{:.1}}}",
        tr.median_s,
        tr.min_s,
        b / tr.median_s,
        inf.median_s,
        b / inf.median_s,
        mt.median_s * 1e3,
        losses.first().copied().unwrap_or(f32::NAN),
        losses.last().copied().unwrap_or(f32::NAN),
        tr.bg_pct,
        inf.bg_pct,
        mt.bg_pct,
        tr.bg_pct.max(inf.bg_pct).max(mt.bg_pct)
    );
}
