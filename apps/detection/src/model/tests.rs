//! Model tests: output shapes and prior counts, save/load, and an f64
//! finite-difference check of the backward pass through the MultiBox loss.

use super::*;
use crate::boxes::{BBox, DEFAULT_VARIANCES};
use crate::multibox::{encode_targets, multibox_loss, GroundTruth, MultiBoxConfig};
use crate::priors::FeatureMapSpec;
use kiln_nn::ModuleExt;

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("c{k}")).collect()
}

/// A micro SSD: 16-pixel inputs, maps 4 and 2, 4 priors per cell (80 priors).
pub(crate) fn micro_config(batch_norm: bool) -> SsdConfig {
    let spec = |size: usize, min: f32, max: f32| FeatureMapSpec {
        size,
        step: None,
        min_size: min,
        max_size: Some(max),
        aspect_ratios: vec![2.0],
    };
    SsdConfig {
        backbone: Backbone::Small(SmallBackbone {
            stages: vec![3, 4],
            source_channels: 4,
            batch_norm,
            source_depth: 1,
        }),
        classes: classes(2),
        priors: PriorBoxConfig {
            image_size: 16,
            feature_maps: vec![spec(4, 4.0, 8.0), spec(2, 8.0, 14.0)],
            flip: true,
            clip: true,
            variances: DEFAULT_VARIANCES,
        },
        mean: [0.0; 3],
    }
}

fn images<F: Float>(n: usize, s: usize, seed: u64) -> Tensor<F> {
    kiln_nn::init::uniform::<F>(&mut StdRng::seed_from_u64(seed), &[n, 3, s, s], 1.0)
}

fn forward_shapes(cfg: SsdConfig, priors: usize) {
    let c = cfg.num_classes();
    let s = cfg.image_size();
    assert_eq!(cfg.priors.num_priors(), priors);
    let mut m = Ssd::<f32>::new(cfg, &mut StdRng::seed_from_u64(1)).unwrap();
    assert_eq!(m.priors().len(), priors);
    let out = m.forward(&images(1, s, 2)).unwrap();
    assert_eq!(out.loc.shape(), [1, priors, 4]);
    assert_eq!(out.conf.shape(), [1, priors, c]);
}

#[test]
fn the_small_backbone_runs_at_other_input_sizes() {
    // tiny at 192 px: maps 24/12/6/3, 4 priors per cell.
    let cfg = SsdConfig::tiny(classes(6)).with_image_size(192).unwrap();
    let maps: Vec<usize> = cfg.priors.feature_maps.iter().map(|f| f.size).collect();
    assert_eq!(maps, vec![24, 12, 6, 3]);
    let tiny = SsdConfig::tiny(classes(6));
    for (a, b) in cfg
        .priors
        .feature_maps
        .iter()
        .zip(&tiny.priors.feature_maps)
    {
        assert!((a.min_size / 192.0 - b.min_size / 128.0).abs() < 1e-6);
    }
    forward_shapes(cfg, 4 * (24 * 24 + 12 * 12 + 6 * 6 + 3 * 3));
    // An odd size: ceil-mode pools and stride-2 convs round up.
    let odd = SsdConfig::tiny(classes(2)).with_image_size(100).unwrap();
    let maps: Vec<usize> = odd.priors.feature_maps.iter().map(|f| f.size).collect();
    assert_eq!(maps, vec![13, 7, 4, 2]);
    forward_shapes(odd, 4 * (169 + 49 + 16 + 4));
    assert!(SsdConfig::ssd300(classes(2)).with_image_size(256).is_err());
    assert!(SsdConfig::tiny(classes(2)).with_image_size(8).is_err());
}

#[test]
fn small_tiny_and_ssd300_output_one_row_per_prior() {
    forward_shapes(SsdConfig::tiny(classes(6)), 1360);
    let mut deep = SsdConfig::tiny(classes(6));
    deep.backbone = Backbone::Small(SmallBackbone {
        source_depth: 2,
        ..SmallBackbone::default()
    });
    forward_shapes(deep, 1360);
    forward_shapes(SsdConfig::small(classes(6)), 7620);
    forward_shapes(SsdConfig::ssd300(classes(20)), 8732);
}

/// SSD512's forward is ~90 GFLOP, too slow for a unit test on two cores;
/// the graph's head sizes are checked against its 24,564 priors instead.
#[test]
fn ssd512_heads_match_its_priors() {
    let cfg = SsdConfig::ssd512(classes(20));
    let graph = cfg.graph().unwrap();
    let head_priors: usize = graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            kiln_nn::layers::NodeOp::Layer { layer } => match layer.as_ref() {
                LayerConfig::Conv2d(c) if n.name.starts_with("loc") => Some(c.out_channels / 4),
                _ => None,
            },
            _ => None,
        })
        .zip(&cfg.priors.feature_maps)
        .map(|(a, f)| a * f.size * f.size)
        .sum();
    assert_eq!(head_priors, 24564);
    assert_eq!(cfg.priors.num_priors(), 24564);
    assert!(graph.nodes.iter().any(|n| n.name == "conv12_2"));
}

#[test]
fn vgg_ssd300_has_the_papers_layers() {
    let cfg = SsdConfig::ssd300(classes(20));
    let graph = cfg.graph().unwrap();
    let find = |name: &str| graph.nodes.iter().find(|n| n.name == name).unwrap();
    let fc6 = layer_of(find("fc6")).unwrap();
    assert_eq!(
        (fc6.dilation, fc6.padding, fc6.out_channels),
        ([6, 6], [6, 6], 1024)
    );
    let m = Ssd::<f32>::new(cfg, &mut StdRng::seed_from_u64(0)).unwrap();
    // ssd.pytorch's SSD300 for VOC: 26,285,486 parameters (L2Norm's 512 included).
    assert_eq!(m.graph().num_params(), 26_285_486);
}

#[test]
fn small_plain_is_the_reference_small_ssd() {
    let cfg = SsdConfig::small_plain(classes(20));
    let graph = cfg.graph().unwrap();
    assert!(graph.nodes.iter().all(|n| !n.name.starts_with("bn_")));
    let convs: Vec<(usize, usize, [usize; 2])> = graph
        .nodes
        .iter()
        .filter_map(layer_of)
        .filter(|c| c.kernel_size == [3, 3])
        .map(|c| (c.in_channels, c.out_channels, c.stride))
        .collect();
    let (one, two) = ([1, 1], [2, 2]);
    assert_eq!(
        &convs[..6],
        [
            (3, 32, one),
            (32, 64, one),
            (64, 128, one),
            (128, 256, one),
            (256, 256, two),
            (256, 256, two)
        ]
    );
    // ssd_step.py's SmallSSD: 2,260,076 parameters with 21 classes.
    let m = Ssd::<f32>::new(cfg, &mut StdRng::seed_from_u64(0)).unwrap();
    assert_eq!(m.graph().num_params(), 2_260_076);
    assert_eq!(m.priors().len(), 7620);
}

fn layer_of(n: &GraphNode) -> Option<Conv2dConfig> {
    match &n.op {
        kiln_nn::layers::NodeOp::Layer { layer } => match layer.as_ref() {
            LayerConfig::Conv2d(c) => Some(c.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn mismatched_priors_are_refused() {
    let mut cfg = SsdConfig::tiny(classes(2));
    cfg.priors.image_size = 100;
    let err = cfg.graph().unwrap_err().to_string();
    assert!(
        err.contains("[13, 7, 4, 2]") && err.contains("[16, 8, 4, 2]"),
        "{err}"
    );
    assert!(SsdConfig::preset("nope", classes(1)).is_err());
}

#[test]
fn save_then_load_gives_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ssd.safetensors");
    let mut m = Ssd::<f32>::new(micro_config(true), &mut StdRng::seed_from_u64(3)).unwrap();
    m.set_training(false);
    m.save(&path).unwrap();
    let mut back = Ssd::<f32>::load(&path).unwrap();
    back.set_training(false);
    assert_eq!(back.config(), m.config());
    let x = images(2, 16, 4);
    let (a, b) = (m.forward(&x).unwrap(), back.forward(&x).unwrap());
    assert_eq!(a.loc, b.loc);
    assert_eq!(a.conf, b.conf);
    // A plain kiln-nn model file is refused with the file's name.
    let err = Ssd::<f32>::load(&dir.path().join("missing")).err().unwrap();
    assert!(err.to_string().contains("missing"), "{err}");
}

fn micro_gts() -> Vec<GroundTruth> {
    vec![
        GroundTruth {
            boxes: vec![
                BBox::new(0.1, 0.1, 0.5, 0.6),
                BBox::new(0.5, 0.4, 0.95, 0.9),
            ],
            labels: vec![1, 2],
        },
        GroundTruth {
            boxes: vec![BBox::new(0.2, 0.3, 0.9, 0.8)],
            labels: vec![2],
        },
    ]
}

fn loss_of(m: &mut Ssd<f64>, x: &Tensor<f64>, targets: &crate::multibox::Targets) -> f64 {
    let cfg = MultiBoxConfig::new(3);
    let out = m.forward(x).unwrap();
    multibox_loss(&out.loc, &out.conf, targets, &cfg)
        .unwrap()
        .loss()
}

/// The analytic gradient of loss(model(x)) w.r.t. parameters spread over
/// every layer matches central differences (f64, batch norm in training
/// mode), with one and with two convs per source.
#[test]
fn backward_matches_finite_differences_through_the_loss() {
    for depth in [1, 2] {
        let mut cfg = micro_config(true);
        if let Backbone::Small(b) = &mut cfg.backbone {
            b.source_depth = depth;
        }
        check_gradients(cfg);
    }
}

fn check_gradients(cfg: SsdConfig) {
    let mut m = Ssd::<f64>::new(cfg, &mut StdRng::seed_from_u64(7)).unwrap();
    m.set_training(true);
    let x = images::<f64>(2, 16, 8) * 50.0;
    let cfg = MultiBoxConfig::new(3);
    let targets = encode_targets(&micro_gts(), m.priors(), &cfg).unwrap();
    m.graph_mut().zero_grad();
    let out = m.forward(&x).unwrap();
    let loss = multibox_loss(&out.loc, &out.conf, &targets, &cfg).unwrap();
    assert!(loss.num_pos > 0);
    m.backward(loss.grad_loc, loss.grad_conf).unwrap();
    let grads = m.graph().flat_grads();
    let params = m.graph().flat_params();
    let layout = m.graph().param_layout();
    let eps = 1e-6;
    let mut checked = 0;
    for slot in &layout {
        let n: usize = slot.shape.iter().product();
        for k in [0, n / 2, n - 1] {
            let i = slot.offset + k;
            let mut p = params.clone();
            p[i] = params[i] + eps;
            m.graph_mut().set_flat_params(&p).unwrap();
            let up = loss_of(&mut m, &x, &targets);
            p[i] = params[i] - eps;
            m.graph_mut().set_flat_params(&p).unwrap();
            let down = loss_of(&mut m, &x, &targets);
            let numeric = (up - down) / (2.0 * eps);
            let err = (numeric - grads[i]).abs() / (1e-3 + numeric.abs().max(grads[i].abs()));
            assert!(
                err < 1e-4,
                "{}[{k}]: analytic {} vs numeric {numeric}",
                slot.name,
                grads[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked}");
}

/// Inference (activations freed early, ReLUs in place) gives exactly the
/// outputs of a forward pass.
#[test]
fn inference_matches_forward_exactly() {
    let mut m =
        Ssd::<f32>::new(SsdConfig::tiny(classes(4)), &mut StdRng::seed_from_u64(5)).unwrap();
    m.set_training(false);
    let s = m.config().image_size();
    let x = images::<f32>(2, s, 3);
    let want = m.forward(&x).unwrap();
    let got = m.infer(x).unwrap();
    assert_eq!(got.loc, want.loc);
    assert_eq!(got.conf, want.conf);
    assert!(m.infer(images::<f32>(1, s + 1, 3)).is_err());
}
