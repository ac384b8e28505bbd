//! `kiln model import|show|run|export`, run as a user would: a PyTorch
//! export imported, described, run on a .npy input (PyTorch's output
//! within 1e-4), exported again and run from the .onnx file; bad input
//! fails with the file named.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

fn kiln(args: &[&str]) -> Output {
    helpers::kiln_process(args, &[], Duration::from_secs(120))
}

/// `kiln model run` of `model` on one input, writing `outputs`.
fn run_model(model: &str, input: &str, outputs: &[&str]) -> Output {
    let mut args = vec!["model", "run", "--model", model, "--input", input];
    for o in outputs {
        args.extend(["--output", o]);
    }
    kiln(&args)
}

fn ok(o: &Output) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    out
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("onnx/tests/fixtures")
        .join(name)
}

fn max_difference(a: &Path, b: &Path) -> f32 {
    let (a, b) = (
        kiln_nn::npy::read(a).unwrap(),
        kiln_nn::npy::read(b).unwrap(),
    );
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn import_show_run_and_export_a_pytorch_model() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let s = |q: &Path| q.to_str().unwrap().to_string();
    let onnx = s(&fixture("ds2_like.onnx"));
    let input = s(&fixture("ds2_like.input.npy"));
    let model = s(&p("ds2.safetensors"));
    let out = ok(&kiln(&["model", "import", &onnx, "--out", &model]));
    assert!(out.contains("6837 parameters"), "{out}");
    let out = ok(&kiln(&["model", "show", &model]));
    assert!(
        out.contains("imported from ds2_like.onnx (pytorch"),
        "{out}"
    );
    assert!(out.contains("gru1: bi_recurrent"), "{out}");
    assert!(
        out.contains("input input: [2, 1, 16, 20]") && out.contains("output 0: [20, 2, 29]"),
        "{out}"
    );
    ok(&run_model(&model, &input, &[&s(&p("y.npy"))]));
    assert!(max_difference(&p("y.npy"), &fixture("ds2_like.output.npy")) < 1e-4);
    // Out again as ONNX, and run from that file.
    let back = s(&p("back.onnx"));
    let out = ok(&kiln(&["model", "export", &model, "--onnx", &back]));
    assert!(out.contains("opset 17"), "{out}");
    ok(&run_model(&back, &input, &[&s(&p("z.npy"))]));
    assert!(max_difference(&p("z.npy"), &fixture("ds2_like.output.npy")) < 1e-4);
}

#[test]
fn bad_files_and_arguments_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = |q: &Path| q.to_str().unwrap().to_string();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x96").unwrap();
    let o = kiln(&[
        "model",
        "import",
        &s(&junk),
        "--out",
        &s(&dir.path().join("m.safetensors")),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("junk.onnx: not a valid ONNX model"), "{err}");
    // The wrong input shape.
    let o = run_model(
        &s(&fixture("lenet5.onnx")),
        &s(&fixture("ds2_like.input.npy")),
        &[&s(&dir.path().join("y.npy"))],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("\"fc1\"") && err.contains("shape mismatch"),
        "{err}"
    );
    assert!(!dir.path().join("y.npy").exists());
    // Two outputs asked of a one-output model.
    let o = run_model(
        &s(&fixture("lenet5.onnx")),
        &s(&fixture("lenet5.input.npy")),
        &[&s(&dir.path().join("a.npy")), &s(&dir.path().join("b.npy"))],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("1 output(s) but 2 --output"), "{err}");
    // A native model without a recorded input shape needs --input-shape.
    let model = dir.path().join("lenet.safetensors");
    ok(&kiln(&[
        "model",
        "import",
        &s(&fixture("lenet5.onnx")),
        "--out",
        &s(&model),
    ]));
    let o = kiln(&[
        "model",
        "export",
        &s(&model),
        "--onnx",
        &s(&dir.path().join("l.onnx")),
    ]);
    assert!(
        o.status.success(),
        "imported models record their input shape"
    );
}

/// DS2 and SSD model files (as `kiln speech train` and `kiln detect train`
/// write them) run and export: DS2 through its inference graph, SSD with
/// its two outputs; the .onnx gives the same outputs as the model file.
#[test]
fn ds2_and_ssd_model_files_run_and_export() {
    use kiln_nn::Module;
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let s = |q: &Path| q.to_str().unwrap().to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // DS2 from the tiny configuration.
    let config =
        kiln_speech::ds2::Ds2Config::from_file(&root.join("apps/speech/configs/ds2_tiny.toml"))
            .unwrap();
    let mut ds2 = config
        .init::<f32>(&mut rand::rngs::StdRng::seed_from_u64(1))
        .unwrap();
    ds2.save(&p("ds2.safetensors")).unwrap();
    let x = kiln_nn::init::uniform::<f32>(
        &mut rand::rngs::StdRng::seed_from_u64(2),
        &[2, 1, 161, 24],
        1.0,
    );
    kiln_nn::npy::write(&p("x.npy"), &x).unwrap();
    ds2.set_training(false);
    kiln_nn::npy::write(&p("want.npy"), &ds2.forward(&x).unwrap()).unwrap();
    let out = ok(&kiln(&["model", "show", &s(&p("ds2.safetensors"))]));
    assert!(
        out.contains("a Deep Speech 2 model") && out.contains("input input: [?, 1, 161, ?]"),
        "{out}"
    );
    ok(&run_model(
        &s(&p("ds2.safetensors")),
        &s(&p("x.npy")),
        &[&s(&p("a.npy"))],
    ));
    assert!(max_difference(&p("a.npy"), &p("want.npy")) < 1e-5);
    ok(&kiln(&[
        "model",
        "export",
        &s(&p("ds2.safetensors")),
        "--onnx",
        &s(&p("ds2.onnx")),
    ]));
    ok(&run_model(
        &s(&p("ds2.onnx")),
        &s(&p("x.npy")),
        &[&s(&p("b.npy"))],
    ));
    assert!(max_difference(&p("b.npy"), &p("want.npy")) < 1e-5);
    // SSD, tiny preset at 64 pixels: box offsets and class scores.
    let ssd_config = kiln_detection::model::SsdConfig::tiny(vec!["a".into(), "b".into()])
        .with_image_size(64)
        .unwrap();
    let ssd = kiln_detection::model::Ssd::<f32>::new(
        ssd_config,
        &mut rand::rngs::StdRng::seed_from_u64(3),
    )
    .unwrap();
    ssd.save(&p("ssd.safetensors")).unwrap();
    let img = kiln_nn::init::uniform::<f32>(
        &mut rand::rngs::StdRng::seed_from_u64(4),
        &[1, 3, 64, 64],
        1.0,
    );
    kiln_nn::npy::write(&p("img.npy"), &img).unwrap();
    let out = ok(&kiln(&["model", "show", &s(&p("ssd.safetensors"))]));
    assert!(
        out.contains("an SSD detection model") && out.contains("output 1: [1, 340, 3]"),
        "{out}"
    );
    let run = |model: &str, tag: &str| {
        ok(&run_model(
            model,
            &s(&p("img.npy")),
            &[
                &s(&p(&format!("loc{tag}.npy"))),
                &s(&p(&format!("conf{tag}.npy"))),
            ],
        ));
    };
    run(&s(&p("ssd.safetensors")), "a");
    ok(&kiln(&[
        "model",
        "export",
        &s(&p("ssd.safetensors")),
        "--onnx",
        &s(&p("ssd.onnx")),
    ]));
    run(&s(&p("ssd.onnx")), "b");
    assert!(max_difference(&p("loca.npy"), &p("locb.npy")) < 1e-5);
    assert!(max_difference(&p("confa.npy"), &p("confb.npy")) < 1e-5);
}
