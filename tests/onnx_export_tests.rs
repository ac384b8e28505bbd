//! Kiln's ONNX exports run in onnxruntime with Kiln's outputs: every model
//! Kiln trains (digits CNN, LeNet-5, Deep Speech 2, SSD) is built with
//! fixed weights, exported, and its Kiln output compared with what
//! onnxruntime computed on the same file (committed fixtures).
//!
//! The fixtures are regenerated, after a change to the exporter or to a
//! model, with:
//!
//! ```text
//! KILN_WRITE_ONNX_FIXTURES=1 cargo test --test onnx_export_tests
//! ~/.cache/kiln-anchors/venv/bin/python tests/fixtures/onnx_export/run_onnxruntime.py
//! ```
//!
//! The first writes the exports to `target/onnx_export/` and their
//! SHA-256 and inputs to `tests/fixtures/onnx_export/`; the second runs
//! onnxruntime on them and writes its outputs there. The test checks that
//! this code's export is byte for byte the file onnxruntime ran (its
//! hash), then compares the outputs.

use std::path::{Path, PathBuf};

use kiln_nn::layers::LayerConfig;
use kiln_nn::{Module, ModuleExt, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx_export")
}

/// A model to export: its structure, built module and input.
struct Case {
    name: &'static str,
    config: LayerConfig,
    input_shape: Vec<usize>,
}

fn cases() -> Vec<Case> {
    let ds2 = kiln_speech::ds2::Ds2Config::from_toml_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/speech/configs/ds2_tiny.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    let ssd = kiln_detection::model::SsdConfig::tiny(vec!["circle".into(), "square".into()])
        .with_image_size(64)
        .unwrap();
    vec![
        Case {
            name: "digits_cnn",
            config: kiln::digits::digits_cnn(),
            input_shape: vec![2, 1, 8, 8],
        },
        Case {
            name: "lenet5",
            config: kiln::digits::lenet5(),
            input_shape: vec![2, 1, 28, 28],
        },
        Case {
            name: "ds2_tiny",
            config: LayerConfig::Graph(ds2.inference_graph()),
            input_shape: vec![2, 1, 161, 30],
        },
        Case {
            name: "ssd_tiny",
            config: LayerConfig::Graph(ssd.graph().unwrap()),
            input_shape: vec![2, 3, 64, 64],
        },
    ]
}

/// The module with fixed weights and batch-norm statistics.
fn build(config: &LayerConfig) -> Box<dyn Module<f32>> {
    let mut m: Box<dyn Module<f32>> = match config {
        LayerConfig::Graph(g) => Box::new(g.init::<f32>(&mut StdRng::seed_from_u64(7)).unwrap()),
        other => other.build::<f32>(&mut StdRng::seed_from_u64(7)).unwrap(),
    };
    let stats: Vec<f32> = (0..m.num_buffers())
        .map(|i| 0.5 + (i % 9) as f32 * 0.1)
        .collect();
    m.set_flat_buffers(&stats).unwrap();
    m.set_training(false);
    m
}

fn outputs(config: &LayerConfig, m: &mut dyn Module<f32>, x: &Tensor<f32>) -> Vec<Tensor<f32>> {
    match config {
        LayerConfig::Graph(g) if g.outputs.len() > 1 => {
            // A multi-output graph: rebuild it as a graph to run all outputs.
            let mut graph = g.init::<f32>(&mut StdRng::seed_from_u64(0)).unwrap();
            graph.set_flat_params(&m.flat_params()).unwrap();
            graph.set_flat_buffers(&m.flat_buffers()).unwrap();
            graph.set_training(false);
            graph.forward_many(std::slice::from_ref(x)).unwrap()
        }
        _ => vec![m.forward(x).unwrap()],
    }
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn kiln_exports_run_in_onnxruntime_with_kilns_outputs() {
    let write = std::env::var_os("KILN_WRITE_ONNX_FIXTURES").is_some();
    let export_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/onnx_export");
    for case in cases() {
        let mut m = build(&case.config);
        let mut shape: Vec<Option<usize>> = case.input_shape.iter().map(|&d| Some(d)).collect();
        shape[0] = None;
        let onnx = kiln_onnx::export::export_model(m.as_ref(), &case.config, &[shape]).unwrap();
        let bytes = kiln_onnx::export::to_bytes(&onnx).unwrap();
        let hash_path = fixtures().join(format!("{}.sha256", case.name));
        let input_path = fixtures().join(format!("{}.input.npy", case.name));
        if write {
            std::fs::create_dir_all(&export_dir).unwrap();
            std::fs::write(export_dir.join(format!("{}.onnx", case.name)), &bytes).unwrap();
            std::fs::write(&hash_path, sha256(&bytes)).unwrap();
            let x = kiln_nn::init::uniform::<f32>(
                &mut StdRng::seed_from_u64(11),
                &case.input_shape,
                1.0,
            );
            kiln_nn::npy::write(&input_path, &x).unwrap();
            continue;
        }
        let want_hash = std::fs::read_to_string(&hash_path).unwrap();
        assert_eq!(
            sha256(&bytes),
            want_hash.trim(),
            "{}: the export changed; regenerate the fixtures (see this file's docs)",
            case.name
        );
        let x = kiln_nn::npy::read(&input_path).unwrap();
        let got = outputs(&case.config, m.as_mut(), &x);
        for (k, y) in got.iter().enumerate() {
            let ort =
                kiln_nn::npy::read(&fixtures().join(format!("{}.ort.{k}.npy", case.name))).unwrap();
            assert_eq!(y.shape(), ort.shape(), "{} output {k}", case.name);
            let d = y
                .iter()
                .zip(ort.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            eprintln!(
                "{} output {k}: largest difference from onnxruntime {d:e}",
                case.name
            );
            assert!(
                d < 1e-4,
                "{} output {k}: onnxruntime differs by {d}",
                case.name
            );
        }
    }
}

#[test]
fn the_exports_import_back_into_kiln() {
    for case in cases() {
        let m = build(&case.config);
        let mut shape: Vec<Option<usize>> = case.input_shape.iter().map(|&d| Some(d)).collect();
        shape[0] = None;
        let onnx = kiln_onnx::export::export_model(m.as_ref(), &case.config, &[shape]).unwrap();
        let imported = kiln_onnx::import_model(&onnx, Path::new(case.name));
        let back = imported.unwrap().build().unwrap();
        assert_eq!(back.num_params(), m.num_params(), "{}", case.name);
    }
}
