//! Training tests: the learning-rate plan, config files, and SGD steps on
//! synthetic images reducing the MultiBox loss.

use super::*;
use crate::boxes::BBox;
use crate::model::tests::micro_config;
use ndarray::Array4;

#[test]
fn lr_plan_warms_up_then_steps() {
    let cfg = TrainConfig {
        epochs: 6,
        lr: 0.1,
        warmup_iters: 10,
        warmup_factor: 0.1,
        ..TrainConfig::default()
    };
    let plan = cfg.lr_schedule(5);
    let lr = |t: u64| plan.lr_at(0.1, t);
    assert!((lr(0) - 0.01).abs() < 1e-12);
    assert!((lr(5) - 0.055).abs() < 1e-12);
    assert!((lr(10) - 0.1).abs() < 1e-12);
    assert!((lr(19) - 0.1).abs() < 1e-12);
    assert!((lr(20) - 0.01).abs() < 1e-12);
    assert!((lr(24) - 0.01).abs() < 1e-12);
    assert!((lr(29) - 0.001).abs() < 1e-12);
    let milestones = |c: &TrainConfig, per_epoch: usize| {
        let plan = c.lr_schedule(per_epoch);
        (1..c.epochs as u64 * per_epoch as u64)
            .filter(|&t| plan.lr_at(1.0, t) < plan.lr_at(1.0, t - 1) * 0.5)
            .collect::<Vec<_>>()
    };
    let one = TrainConfig {
        epochs: 1,
        warmup_iters: 0,
        ..TrainConfig::default()
    };
    assert_eq!(milestones(&one, 25), vec![16, 20]);
    let given = TrainConfig {
        milestones: vec![4],
        ..cfg.clone()
    };
    assert_eq!(milestones(&given, 5), vec![20]);
    // A schedule nn refuses is refused by the config.
    let bad = TrainConfig { gamma: -0.5, ..cfg };
    assert!(bad.validate().is_err());
}

#[test]
fn cosine_plan_warms_up_then_anneals_to_zero() {
    let cfg = TrainConfig {
        epochs: 4,
        lr: 0.1,
        warmup_iters: 10,
        warmup_factor: 0.1,
        milestones: vec![1],
        lr_schedule: LrSchedule::Cosine,
        ..TrainConfig::default()
    };
    let plan = cfg.lr_schedule(15);
    let lr = |t: u64| plan.lr_at(0.1, t);
    assert!((lr(0) - 0.01).abs() < 1e-12);
    assert!((lr(5) - 0.055).abs() < 1e-12);
    // Milestones do not apply: full rate right after the warm-up, half at
    // the middle of the remaining 50 iterations, 0 at the end of the run.
    assert!((lr(10) - 0.1).abs() < 1e-12);
    assert!((lr(15) - 0.1 * 0.5 * (1.0 + (0.1 * std::f64::consts::PI).cos())).abs() < 1e-12);
    assert!((lr(35) - 0.05).abs() < 1e-12);
    assert!(lr(59) > 0.0 && lr(59) < 1e-3);
    assert!(lr(60).abs() < 1e-12);
    for t in 10..60 {
        assert!(lr(t + 1) <= lr(t));
    }
    // The JSON names, and an unknown one is an error.
    let json: TrainConfig = serde_json::from_str(r#"{"lr_schedule": "cosine"}"#).unwrap();
    assert_eq!(json.lr_schedule, LrSchedule::Cosine);
    let default: TrainConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(default.lr_schedule, LrSchedule::MultiStep);
    assert!(serde_json::from_str::<TrainConfig>(r#"{"lr_schedule": "linear"}"#).is_err());
}

#[test]
fn config_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.json");
    std::fs::write(&path, r#"{"epochs": 3, "preset": "tiny"}"#).unwrap();
    let cfg = TrainConfig::from_file(&path).unwrap();
    assert_eq!((cfg.epochs, cfg.batch_size), (3, 16));
    // Widths and input size of the small backbone come from the file.
    std::fs::write(
        &path,
        r#"{"preset": "tiny", "image_size": 160,
            "small_backbone": {"stages": [8, 8, 8], "source_channels": 8, "batch_norm": false}}"#,
    )
    .unwrap();
    let model = TrainConfig::from_file(&path)
        .unwrap()
        .model_config(vec!["a".into()])
        .unwrap();
    assert_eq!(model.image_size(), 160);
    assert_eq!(model.priors.feature_maps[0].size, 20);
    assert!(matches!(&model.backbone, Backbone::Small(b) if b.source_channels == 8));
    std::fs::write(&path, r#"{"preset": "ssd300", "image_size": 200}"#).unwrap();
    let cfg = TrainConfig::from_file(&path).unwrap();
    assert!(cfg.model_config(vec!["a".into()]).is_err());
    std::fs::write(&path, r#"{"epoch": 3}"#).unwrap();
    let err = TrainConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("train.json") && err.contains("epoch"), "{err}");
}

#[test]
fn nested_unknown_keys_are_refused_naming_key_path_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.json");
    std::fs::write(
        &path,
        r#"{"small_backbone": {"stages": [8], "source_channels": 8, "batch_norm": false, "widht": 3}}"#,
    )
    .unwrap();
    let err = TrainConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("nested.json") && err.contains("small_backbone") && err.contains("widht"),
        "{err}"
    );
}

#[test]
fn out_of_range_settings_are_refused_naming_setting_value_range_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("range.json");
    for (json, setting, range) in [
        (r#"{"image_size": 100000}"#, "image_size", "[32, 2048]"),
        (r#"{"image_size": 8}"#, "image_size", "[32, 2048]"),
        (r#"{"batch_size": 0}"#, "batch_size", "[1, 1024]"),
        (
            r#"{"batch_size": 18446744073709551615}"#,
            "batch_size",
            "[1, 1024]",
        ),
        (r#"{"epochs": 0}"#, "epochs", "[1, 100000]"),
        (r#"{"lr": -0.1}"#, "lr", "(0, 10]"),
        (r#"{"gamma": -0.5}"#, "gamma", "(0, 1]"),
        (r#"{"gamma": 2.0}"#, "gamma", "(0, 1]"),
        (r#"{"momentum": 1.0}"#, "momentum", "[0, 1)"),
        (r#"{"max_expand": 1e30}"#, "max_expand", "[1, 16]"),
        (r#"{"overlap_threshold": 0}"#, "overlap_threshold", "(0, 1]"),
        (
            r#"{"epochs": 2, "milestones": [1, 3]}"#,
            "milestones[1]",
            "[0, 2]",
        ),
        (
            r#"{"small_backbone": {"stages": [100000], "source_channels": 8, "batch_norm": false}}"#,
            "stages[0]",
            "[1, 4096]",
        ),
    ] {
        std::fs::write(&path, json).unwrap();
        let err = TrainConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("range.json") && err.contains(setting) && err.contains(range),
            "{json}: {err}"
        );
    }
    std::fs::write(&path, r#"{"preset": "tinny"}"#).unwrap();
    let err = TrainConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("range.json") && err.contains("tinny"), "{err}");
    // NaN cannot be written in JSON; in memory it is refused too.
    let nan = TrainConfig {
        lr: f64::NAN,
        ..TrainConfig::default()
    };
    assert!(nan.validate().unwrap_err().to_string().contains("lr = NaN"));
}

/// The shipped recipe of the shapes result (BENCHMARKS.md) reads and
/// builds the model it names: the wider small backbone with two convs per
/// source on 160-pixel inputs (maps 20/10/5/3), 1,479,344 parameters for
/// the six shape classes.
#[test]
fn the_shipped_shapes_config_builds_its_model() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/shapes_small_160.json");
    let cfg = TrainConfig::from_file(&path).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.lr_schedule, LrSchedule::Cosine);
    let classes = ["circle", "square", "triangle", "star", "ellipse", "cross"]
        .map(String::from)
        .to_vec();
    let model_cfg = cfg.model_config(classes).unwrap();
    let maps: Vec<usize> = model_cfg
        .priors
        .feature_maps
        .iter()
        .map(|f| f.size)
        .collect();
    assert_eq!(maps, [20, 10, 5, 3]);
    let graph = model_cfg.graph().unwrap();
    let model = kiln_nn::layers::LayerConfig::Graph(graph)
        .build::<f32>(&mut StdRng::seed_from_u64(0))
        .unwrap();
    assert_eq!(model.num_params(), 1_479_344);
}

/// Two 16x16 images with one bright square each, and their ground truth.
fn synthetic() -> (Tensor<f32>, Vec<GroundTruth>) {
    let mut x = Array4::<f32>::from_elem((2, 3, 16, 16), -0.5);
    for c in 0..3 {
        for i in 2..9 {
            for j in 3..10 {
                x[[0, c, i, j]] = 1.0;
            }
        }
        for i in 6..15 {
            for j in 5..14 {
                x[[1, c, i, j]] = if c == 0 { 1.0 } else { -1.0 };
            }
        }
    }
    let gts = vec![
        GroundTruth {
            boxes: vec![BBox::new(3.0 / 16.0, 2.0 / 16.0, 10.0 / 16.0, 9.0 / 16.0)],
            labels: vec![1],
        },
        GroundTruth {
            boxes: vec![BBox::new(5.0 / 16.0, 6.0 / 16.0, 14.0 / 16.0, 15.0 / 16.0)],
            labels: vec![2],
        },
    ];
    (x.into_dyn(), gts)
}

#[test]
fn sgd_steps_reduce_the_loss() {
    let mut m = Ssd::<f32>::new(micro_config(true), &mut StdRng::seed_from_u64(11)).unwrap();
    m.set_training(true);
    let (x, gts) = synthetic();
    let loss_cfg = MultiBoxConfig::new(3);
    let mut opt = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..SgdConfig::default()
    }
    .build::<f32>()
    .unwrap();
    let mut params = m.graph().flat_params();
    let mut losses = Vec::new();
    for _ in 0..40 {
        m.graph_mut().zero_grad();
        let out = train_step(&mut m, &x, &gts, &loss_cfg).unwrap();
        losses.push(out.loss());
        opt.step(&mut params, &m.graph().flat_grads()).unwrap();
        m.graph_mut().set_flat_params(&params).unwrap();
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.5 * first, "loss {first} -> {last}: {losses:?}");
}

#[test]
fn sample_seeds_differ_by_epoch_and_index() {
    let a = sample_seed(1, 0, 0);
    assert_ne!(a, sample_seed(1, 1, 0));
    assert_ne!(a, sample_seed(1, 0, 1));
    assert_eq!(a, sample_seed(1, 0, 0));
}
