//! SSD300-VGG16 inference (`SsdConfig::ssd300`, 21 classes): eval-mode
//! forward plus the softmax of the class logits, without detection output
//! (NMS), at batch 1 and 8 on random `N x 3 x 300 x 300` inputs.

use kiln_detection::model::{Ssd, SsdConfig};
use kiln_nn::layers::SoftMax;
use kiln_nn::{Module, ModuleExt};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::timing::time_n;

/// Inference images/s at batch 1 and 8.
pub(crate) fn run(threads: usize, tries: usize) {
    let mut rng = StdRng::seed_from_u64(0);
    let mut model =
        Ssd::<f32>::new(SsdConfig::ssd300(crate::voc_classes()), &mut rng).expect("SSD300");
    model.set_training(false);
    let params = model.graph().num_params();
    let priors = model.priors().len();
    let mut softmax = SoftMax::new(-1);
    for (batch, iters) in [(1usize, 10usize), (8, 5)] {
        let x = kiln_nn::init::normal::<f32>(&mut rng, &[batch, 3, 300, 300], 0.0, 1.0);
        let t = time_n(
            || {
                let out = model.infer(x.clone()).expect("SSD300 inference");
                let _scores = softmax.forward(&out.conf).expect("softmax");
            },
            2,
            iters,
            tries,
        );
        println!(
            "{{\"bench\":\"ssd300\",\"impl\":\"kiln\",\"threads\":{threads},\"batch\":{batch},\"params\":{params},\"priors\":{priors},\"infer_s\":{:.4},\"infer_min_s\":{:.4},\"images_per_s\":{:.3},\"bg_pct\":{:.1}}}",
            t.median_s,
            t.min_s,
            batch as f64 / t.median_s,
            t.bg_pct
        );
    }
}
