//! MultiBox loss and gradients against PyTorch (ssd_step.py's algorithm);
//! fixture made by `fixtures/gen_multibox_fixture.py`.

use kiln_detection::boxes::{BBox, Prior};
use kiln_detection::multibox::{encode_targets, multibox_loss, GroundTruth, MultiBoxConfig};
use kiln_nn::Tensor;

#[derive(serde::Deserialize)]
struct Gt {
    boxes: Vec<f32>,
    labels: Vec<usize>,
}

#[derive(serde::Deserialize)]
struct Fixture {
    num_classes: usize,
    num_priors: usize,
    priors_cxcywh: Vec<f32>,
    gt: Vec<Gt>,
    matched_labels: Vec<Vec<usize>>,
    loc: Vec<f64>,
    conf: Vec<f64>,
    loss_loc: f64,
    loss_conf: f64,
    num_pos: usize,
    grad_loc: Vec<f64>,
    grad_conf: Vec<f64>,
}

#[test]
fn multibox_matches_pytorch_fixture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/multibox_fixture.json"
    );
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let priors: Vec<Prior> = fx
        .priors_cxcywh
        .chunks(4)
        .map(|c| Prior {
            cx: c[0],
            cy: c[1],
            w: c[2],
            h: c[3],
        })
        .collect();
    assert_eq!(priors.len(), fx.num_priors);
    let gts: Vec<GroundTruth> = fx
        .gt
        .iter()
        .map(|g| GroundTruth {
            boxes: g
                .boxes
                .chunks(4)
                .map(|b| BBox::new(b[0], b[1], b[2], b[3]))
                .collect(),
            labels: g.labels.clone(),
        })
        .collect();
    let cfg = MultiBoxConfig::new(fx.num_classes);
    let t = encode_targets(&gts, &priors, &cfg).unwrap();
    assert_eq!(t.labels, fx.matched_labels);
    let n = gts.len();
    let p = fx.num_priors;
    let loc = Tensor::from_shape_vec(ndarray::IxDyn(&[n, p, 4]), fx.loc).unwrap();
    let conf = Tensor::from_shape_vec(ndarray::IxDyn(&[n, p, fx.num_classes]), fx.conf).unwrap();
    let out = multibox_loss(&loc, &conf, &t, &cfg).unwrap();
    assert_eq!(out.num_pos, fx.num_pos);
    assert!(
        (out.loss_loc - fx.loss_loc).abs() < 1e-4,
        "{} vs {}",
        out.loss_loc,
        fx.loss_loc
    );
    assert!(
        (out.loss_conf - fx.loss_conf).abs() < 1e-4,
        "{} vs {}",
        out.loss_conf,
        fx.loss_conf
    );
    let max_diff = |a: &Tensor<f64>, b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let (dl, dc) = (
        max_diff(&out.grad_loc, &fx.grad_loc),
        max_diff(&out.grad_conf, &fx.grad_conf),
    );
    eprintln!(
        "loss_loc {} (torch {}), loss_conf {} (torch {}), max |dgrad| loc {dl:e} conf {dc:e}",
        out.loss_loc, fx.loss_loc, out.loss_conf, fx.loss_conf
    );
    assert!(dl < 1e-4 && dc < 1e-4);
    // The same in f32.
    let out32 = multibox_loss(&loc.mapv(|v| v as f32), &conf.mapv(|v| v as f32), &t, &cfg).unwrap();
    assert!((f64::from(out32.loss()) - (fx.loss_loc + fx.loss_conf)).abs() < 1e-3);
}
