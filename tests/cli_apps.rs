//! The application commands, run as a user would: `kiln speech score`,
//! `kiln speech lm`, `kiln speech train|eval|transcribe` (a local cluster
//! of executor processes) and `kiln detect score`.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use helpers::root;

/// Runs kiln to its end (killed by its own id after three minutes, which
/// fails the test).
fn kiln(args: &[&str]) -> Output {
    kiln_bounded(args, Duration::from_secs(180))
}

/// Runs kiln, killing it (by its own id) if it outlives `limit`; its
/// executor children exit when its stdin pipe to them closes.
fn kiln_bounded(args: &[&str], limit: Duration) -> Output {
    helpers::kiln_process(args, &[], limit)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn speech_score_prints_wer_and_cer_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("ref.txt");
    let h = dir.path().join("hyp.txt");
    std::fs::write(&r, "u1 THE CAT SAT\nu2 HELLO WORLD\n").expect("write");
    // u1: one substitution (3 words); u2: one deletion (2 words) -> WER 2/5
    std::fs::write(&h, "u1 THE BAT SAT\nu2 HELLO\n").expect("write");
    let o = kiln(&[
        "speech",
        "score",
        "--reference",
        r.to_str().unwrap(),
        "--hypothesis",
        h.to_str().unwrap(),
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert!((v["wer"].as_f64().unwrap() - 0.4).abs() < 1e-12, "{out}");
    assert!(v["cer"].as_f64().unwrap() > 0.0);

    let o = kiln(&[
        "speech",
        "score",
        "--reference",
        r.to_str().unwrap(),
        "--hypothesis",
        h.to_str().unwrap(),
    ]);
    assert!(text(&o).0.contains("WER 40.00%"), "{}", text(&o).0);

    std::fs::write(&h, "u1 THE BAT SAT\nu1 AGAIN\n").expect("write");
    let o = kiln(&[
        "speech",
        "score",
        "--reference",
        r.to_str().unwrap(),
        "--hypothesis",
        h.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("hyp.txt"), "{}", text(&o).1);
}

#[test]
fn speech_lm_builds_an_arpa_model_from_transcripts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("lm.arpa");
    let trans =
        root().join("apps/speech/tests/fixtures/librispeech/mini/4490/90921/4490-90921.trans.txt");
    let o = kiln(&[
        "speech",
        "lm",
        "--order",
        "2",
        "--out",
        out.to_str().unwrap(),
        trans.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let arpa = std::fs::read_to_string(&out).expect("written");
    assert!(
        arpa.contains("\\data\\") && arpa.contains("\\2-grams:") && arpa.contains("\\end\\"),
        "{arpa}"
    );
}

/// Writes the ground truth of a VOC split as a detections file (score 1).
fn ground_truth_as_detections(voc: &Path, split: &str, out: &Path) {
    let classes = kiln::detection::voc::read_classes(&voc.join("classes.txt")).expect("classes");
    let ids =
        std::fs::read_to_string(voc.join(format!("ImageSets/Main/{split}.txt"))).expect("split");
    let mut lines = String::new();
    for id in ids.split_whitespace() {
        let a = kiln::detection::voc::parse_annotation(
            &voc.join(format!("Annotations/{id}.xml")),
            &classes,
        )
        .expect("xml");
        for o in &a.objects {
            let b = &o.bbox;
            lines += &format!(
                "{id} {} 1.0 {} {} {} {}\n",
                o.name, b.xmin, b.ymin, b.xmax, b.ymax
            );
        }
    }
    std::fs::write(out, lines).expect("write");
}

#[test]
fn detect_score_gives_map_one_for_ground_truth_and_names_bad_lines() {
    let voc = root().join("apps/detection/tests/fixtures/voc-tiny");
    let dir = tempfile::tempdir().expect("tempdir");
    let dets = dir.path().join("dets.txt");
    ground_truth_as_detections(&voc, "trainval", &dets);
    for metric in ["voc07", "area"] {
        let o = kiln(&[
            "detect",
            "score",
            "--voc",
            voc.to_str().unwrap(),
            "--split",
            "trainval",
            "--detections",
            dets.to_str().unwrap(),
            "--metric",
            metric,
            "--json",
        ]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
        assert!((v["map"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{out}");
    }
    std::fs::write(&dets, "000001 circle 0.9 1 2 3\n").expect("write");
    let o = kiln(&[
        "detect",
        "score",
        "--voc",
        voc.to_str().unwrap(),
        "--split",
        "trainval",
        "--detections",
        dets.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = text(&o).1;
    assert!(err.contains("dets.txt") && err.contains('1'), "{err}");
}

/// Copies the LibriSpeech tree `from` to `to` with every `trans.txt`
/// lower-cased, and appends those transcripts to `references`.
fn copy_lower_cased(from: &Path, to: &Path, references: &mut String) {
    std::fs::create_dir_all(to).expect("mkdir");
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for src in entries {
        let dst = to.join(src.file_name().expect("a name"));
        if src.is_dir() {
            copy_lower_cased(&src, &dst, references);
        } else if src.to_string_lossy().ends_with(".trans.txt") {
            let text = std::fs::read_to_string(&src).expect("read");
            let lowered: String = text
                .lines()
                .map(|l| match l.split_once(' ') {
                    Some((id, t)) => format!("{id} {}\n", t.to_lowercase()),
                    None => format!("{l}\n"),
                })
                .collect();
            references.push_str(&lowered);
            std::fs::write(&dst, lowered).expect("write");
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// Speed perturbation, noise, SpecAugment and SortaGrad together on a
/// local cluster: the run trains (the executors keep the audio, perturb
/// it and recompute the features every time), resumes, and refuses to
/// resume with other augmentation, naming the setting.
#[test]
fn speech_train_with_waveform_augmentation_and_sorta_grad() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = root().join("apps/speech/configs/ds2_tiny.toml");
    let corpus = root().join("apps/speech/tests/fixtures/librispeech");
    let model = dir.path().join("ds2.safetensors");
    let ckpt = dir.path().join("ckpt");
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let train = |epochs: &str, extra: &[&str]| {
        let mut args: Vec<String> = [
            "speech",
            "train",
            "--data",
            &p(&corpus),
            "--train-split",
            "mini",
            "--dev-split",
            "mini",
            "--executors",
            "2",
            "--config",
            &p(&config),
            "--epochs",
            epochs,
            "--batch-size",
            "2",
            "--checkpoint-dir",
            &p(&ckpt),
            "--no-progress",
            "--out",
            &p(&model),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        kiln_bounded(&refs, Duration::from_secs(120))
    };
    let all = [
        "--speed-perturb",
        "--noise",
        "--spec-augment",
        "--sorta-grad",
    ];
    let o = train("2", &all);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("EPOCH ")).count(),
        2,
        "{out}"
    );
    assert!(model.exists());
    let mut resumed = all.to_vec();
    resumed.push("--resume");
    let o = train("3", &resumed);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("RESUMED ") && out.contains("epoch=2"), "{out}");
    let o = train(
        "4",
        &[
            "--speed-perturb",
            "--spec-augment",
            "--sorta-grad",
            "--resume",
        ],
    );
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}\n{err}");
    assert!(err.contains("speech.wave_augment"), "{err}");
}

#[test]
fn speech_train_eval_and_transcribe_on_a_local_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = root().join("apps/speech/configs/ds2_tiny.toml");
    let corpus = root().join("apps/speech/tests/fixtures/librispeech");
    let split = corpus.join("mini");
    let model = dir.path().join("ds2.safetensors");
    let ckpt = dir.path().join("ckpt");
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let train = |epochs: &str, resume: bool, extra: &[&str]| {
        let mut args = vec![
            "speech".to_string(),
            "train".into(),
            "--data".into(),
            p(&corpus),
            "--train-split".into(),
            "mini".into(),
            "--dev-split".into(),
            "mini".into(),
            "--executors".into(),
            "2".into(),
            "--config".into(),
            p(&config),
            "--epochs".into(),
            epochs.into(),
            "--batch-size".into(),
            "2".into(),
            "--checkpoint-dir".into(),
            p(&ckpt),
            "--no-progress".into(),
            "--out".into(),
            p(&model),
        ];
        if resume {
            args.push("--resume".into());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        kiln_bounded(&refs, Duration::from_secs(120))
    };
    let o = train("3", false, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let epochs: Vec<&str> = out.lines().filter(|l| l.starts_with("EPOCH ")).collect();
    assert_eq!(epochs.len(), 3, "{out}");
    assert!(epochs.iter().all(|l| l.contains("dev_wer=")), "{out}");
    assert!(out.contains("DEV-WER "), "{out}");
    assert!(model.exists());

    // Two more epochs from the last checkpoint.
    let o = train("5", true, &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("RESUMED "), "{out}");
    assert!(out.contains("epoch=3"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("EPOCH ")).count(),
        2,
        "{out}"
    );
    // The last checkpoint exports to the model training wrote (weights and
    // batch-norm statistics).
    let exported = dir.path().join("exported.safetensors");
    let o = kiln(&[
        "checkpoint",
        "export",
        "--dir",
        &p(&ckpt),
        "--out",
        &p(&exported),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let state = |path: &Path| {
        use kiln::nn::ModuleExt;
        let m = kiln::speech::ds2::Ds2::<f32>::load(path).expect("a DS2 model file");
        (m.flat_params(), m.flat_buffers())
    };
    assert_eq!(state(&exported), state(&model));
    // Resuming with other training data is refused, naming the setting.
    let o = train("6", true, &["--max-seconds", "10"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("speech.max_seconds = 20.0, this run has 10.0"),
        "{err}"
    );

    // Eval: greedy, then beam search with an LM built from the transcripts.
    let o = kiln(&[
        "speech",
        "eval",
        "--data",
        &p(&split),
        "--model",
        &p(&model),
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["utterances"], 2, "{out}");
    assert!(v["wer"].as_f64().expect("wer") >= 0.0, "{out}");
    assert!(v["cer"].as_f64().expect("cer") >= 0.0, "{out}");

    // The same split with lower-case references: `kiln speech eval`
    // (training's dev WER runs the same scorer) and `kiln speech score`
    // on the transcripts give the same WER and CER as upper case does.
    let lower = dir.path().join("mini-lower");
    let mut references = String::new();
    copy_lower_cased(&split, &lower, &mut references);
    let o = kiln(&[
        "speech",
        "eval",
        "--data",
        &p(&lower),
        "--model",
        &p(&model),
        "--json",
    ]);
    let (out_l, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let vl: serde_json::Value = serde_json::from_str(out_l.trim()).expect("one JSON line");
    assert_eq!(
        (&vl["wer"], &vl["cer"]),
        (&v["wer"], &v["cer"]),
        "{out}\n{out_l}"
    );
    let o = kiln(&["speech", "transcribe", "--model", &p(&model), &p(&split)]);
    assert!(o.status.success(), "{}", text(&o).1);
    let (hyp_path, ref_path) = (dir.path().join("hyp.txt"), dir.path().join("ref.txt"));
    std::fs::write(&hyp_path, &o.stdout).expect("write");
    std::fs::write(&ref_path, &references).expect("write");
    let o = kiln(&[
        "speech",
        "score",
        "--reference",
        &p(&ref_path),
        "--hypothesis",
        &p(&hyp_path),
        "--json",
    ]);
    let (out_s, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let vs: serde_json::Value = serde_json::from_str(out_s.trim()).expect("one JSON line");
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        (a.as_f64().expect("a rate") - b.as_f64().expect("a rate")).abs() < 1e-12
    };
    assert!(
        close(&vs["wer"], &v["wer"]) && close(&vs["cer"], &v["cer"]),
        "eval {out} vs score {out_s}"
    );

    let lm = dir.path().join("lm.arpa");
    let transcripts: Vec<String> = [
        "4490/90921/4490-90921.trans.txt",
        "3505/259831/3505-259831.trans.txt",
    ]
    .iter()
    .map(|t| p(&split.join(t)))
    .collect();
    let mut args = vec!["speech", "lm", "--order", "2", "--out"];
    let lm_s = p(&lm);
    args.push(&lm_s);
    args.extend(transcripts.iter().map(String::as_str));
    assert!(kiln(&args).status.success());
    let o = kiln(&[
        "speech",
        "eval",
        "--data",
        &p(&corpus),
        "--model",
        &p(&model),
        "--lm",
        &lm_s,
    ]);
    let (out, err) = text(&o);
    // The corpus root has no dev* split: a clear error.
    assert!(
        !o.status.success() && err.contains("no dev"),
        "{out}\n{err}"
    );
    let o = kiln(&[
        "speech",
        "eval",
        "--data",
        &p(&split),
        "--model",
        &p(&model),
        "--lm",
        &lm_s,
    ]);
    let (out, err) = text(&o);
    assert!(
        o.status.success() && out.starts_with("WER "),
        "{out}\n{err}"
    );

    // Tune the LM decoder on the split; eval then uses the tuned weights
    // (and gets the WER tuning reported).
    let (split_s, model_s) = (p(&split), p(&model));
    let with_lm = |cmd: &str, extra: &[&str]| {
        let mut args = vec![
            "speech", cmd, "--data", &split_s, "--model", &model_s, "--lm", &lm_s,
        ];
        args.extend_from_slice(extra);
        kiln(&args)
    };
    let o = with_lm(
        "tune",
        &[
            "--beam",
            "8",
            "--alphas",
            "0.5,1",
            "--betas",
            "0,2",
            "--unk-offsets",
            "0",
            "--unk-letter-scores",
            "-1.5,-3",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("GREEDY WER "), "{out}");
    let best = out
        .lines()
        .find_map(|l| l.strip_prefix("BEST WER "))
        .expect("a BEST line");
    assert!(best.contains("8 grid points"), "{best}");
    let tuned = dir.path().join("ds2.safetensors.decoder.json");
    assert!(out.contains(&format!("TUNED {}", tuned.display())), "{out}");
    let best_wer: f64 = best
        .split('%')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a WER");
    let o = with_lm("eval", &["--json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("using the tuned decoder weights"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    let eval_wer = 100.0 * v["wer"].as_f64().expect("wer");
    assert!(
        (eval_wer - best_wer).abs() < 0.006,
        "eval {eval_wer} vs tune {best_wer}"
    );
    // A tuned file that does not decode is an error naming it.
    std::fs::write(&tuned, "{\"weights\": 3}").expect("write");
    let o = with_lm("eval", &[]);
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("decoder.json"), "{err}");
    std::fs::remove_file(&tuned).expect("remove");
    let o = with_lm("tune", &["--unk-letter-scores", "0.5"]);
    assert!(!o.status.success(), "a positive letter score is refused");

    // Transcribe one file and a directory: one `<id> TEXT` line each.
    let flac = split.join("4490/90921/4490-90921-0010.flac");
    let o = kiln(&[
        "speech",
        "transcribe",
        "--model",
        &p(&model),
        &p(&flac),
        &p(&split),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let ids: Vec<&str> = out
        .lines()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        ["4490-90921-0010", "3505-259831-0002", "4490-90921-0010"],
        "{out}"
    );

    // A file that is not audio: an error naming it.
    let bogus = dir.path().join("noise.wav");
    std::fs::write(&bogus, b"RIFF not really").expect("write");
    let o = kiln(&["speech", "transcribe", "--model", &p(&model), &p(&bogus)]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("noise.wav"), "{}", text(&o).1);
}
