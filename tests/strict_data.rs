//! Data from outside is decoded in full or refused, the same way by every
//! command that reads it: a split that loses files to errors says how many
//! and which, and more bad files than `--max-bad-share` (0 by default)
//! fails the command before any work. Truncated audio and images,
//! transcripts that are empty, duplicated ids and bad digits files are
//! tried here through the binary.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::path::Path;
use std::time::Duration;

use helpers::{copy_dir, kiln_output, root, s};
use rand::SeedableRng;

const LIMIT: Duration = Duration::from_secs(180);

/// The committed two-utterance split `mini` copied to `dir/corpus`, plus a
/// third chapter holding a truncated FLAC and an entry without a
/// transcript: 4 entries, 2 of them bad.
fn corpus_with_bad_files(dir: &Path) -> std::path::PathBuf {
    let corpus = dir.join("corpus");
    copy_dir(
        &root().join("apps/speech/tests/fixtures/librispeech"),
        &corpus,
    );
    let good = corpus.join("mini/4490/90921/4490-90921-0010.flac");
    let chapter = corpus.join("mini/7000/1");
    std::fs::create_dir_all(&chapter).expect("mkdir");
    let bytes = std::fs::read(&good).expect("read");
    std::fs::write(chapter.join("7000-1-0000.flac"), &bytes[..bytes.len() / 2]).expect("write");
    std::fs::write(
        chapter.join("7000-1.trans.txt"),
        "7000-1-0000 PETER COULD LISTEN\n7000-1-0001\n",
    )
    .expect("write");
    corpus
}

/// A fresh tiny DS2 model file.
fn ds2_model(dir: &Path) -> std::path::PathBuf {
    let config =
        kiln::speech::ds2::Ds2Config::from_file(&root().join("apps/speech/configs/ds2_tiny.toml"))
            .expect("config");
    let model = config
        .init::<f32>(&mut rand::rngs::StdRng::seed_from_u64(1))
        .expect("model");
    let path = dir.join("ds2.safetensors");
    model.save(&path).expect("save");
    path
}

#[test]
fn speech_eval_counts_and_names_bad_files_and_fails_unless_a_share_allows_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = corpus_with_bad_files(dir.path());
    let split = corpus.join("mini");
    let model = ds2_model(dir.path());
    let eval = |extra: &[&str]| {
        let mut args = vec!["speech", "eval", "--data", s(&split), "--model", s(&model)];
        args.extend_from_slice(extra);
        kiln_output(&args, LIMIT)
    };
    let (ok, out, err) = eval(&[]);
    assert!(!ok, "{out}\n{err}");
    assert!(err.contains("2 of 4 files are unusable"), "{err}");
    assert!(err.contains("7000-1-0000.flac"), "{err}");
    assert!(
        err.contains("utterance 7000-1-0001 has no transcript"),
        "{err}"
    );
    assert!(err.contains("--max-bad-share = 0"), "{err}");
    assert!(!out.contains("WER"), "{out}");

    let (ok, out, err) = eval(&["--max-bad-share", "0.5"]);
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("SKIPPING 2 of 4 files"), "{err}");
    assert!(out.contains("on 2 utterances"), "{out}");

    // A share outside [0, 1] is refused as a flag.
    let (ok, _, err) = eval(&["--max-bad-share", "1.5"]);
    assert!(!ok && err.contains("--max-bad-share"), "{err}");
}

#[test]
fn duplicate_utterance_ids_are_refused_naming_both_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = dir.path().join("corpus");
    copy_dir(
        &root().join("apps/speech/tests/fixtures/librispeech"),
        &corpus,
    );
    let chapter = corpus.join("mini/7000/1");
    std::fs::create_dir_all(&chapter).expect("mkdir");
    std::fs::write(
        chapter.join("7000-1.trans.txt"),
        "4490-90921-0010 ANOTHER TEXT\n",
    )
    .expect("write");
    let model = ds2_model(dir.path());
    let (ok, out, err) = kiln_output(
        &[
            "speech",
            "eval",
            "--data",
            s(&corpus.join("mini")),
            "--model",
            s(&model),
            "--max-bad-share",
            "1",
        ],
        LIMIT,
    );
    assert!(!ok, "{out}\n{err}");
    assert!(
        err.contains("utterance id 4490-90921-0010 appears twice"),
        "{err}"
    );
    assert!(
        err.contains("4490-90921.trans.txt:1") && err.contains("7000-1.trans.txt:1"),
        "{err}"
    );
}

#[test]
fn speech_training_refuses_bad_files_before_it_starts_or_skips_and_names_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = corpus_with_bad_files(dir.path());
    let model = dir.path().join("trained.safetensors");
    let config = root().join("apps/speech/configs/ds2_tiny.toml");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "speech",
            "train",
            "--data",
            s(&corpus),
            "--train-split",
            "mini",
            "--executors",
            "1",
            "--config",
            s(&config),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--no-progress",
            "--out",
            s(&model),
        ];
        args.extend_from_slice(extra);
        kiln_output(&args, LIMIT)
    };
    refused_then_skipped(
        train,
        &model,
        "2 of 4 files",
        "job.max_bad_share",
        "SKIPPING 2 of 4 files",
    );
}

/// A training run on a split with bad files: refused before its first
/// epoch by default (the error counts them, `counted`, and names the
/// `setting`), then trained with the files skipped (`skipping` starts
/// its line) under `--max-bad-share 0.5`; the model file `out` is
/// written only then.
fn refused_then_skipped(
    train: impl Fn(&[&str]) -> (bool, String, String),
    out_file: &Path,
    counted: &str,
    setting: &str,
    skipping: &str,
) {
    let (ok, out, err) = train(&[]);
    assert!(!ok, "{out}\n{err}");
    assert!(err.contains(&format!("{counted} are unusable")), "{err}");
    assert!(err.contains(&format!("{setting} = 0")), "{err}");
    assert!(!out.contains("EPOCH "), "{out}");
    assert!(!out_file.exists());
    let (ok, out, err) = train(&["--max-bad-share", "0.5"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains(skipping), "{out}");
    assert!(out.contains("EPOCH 1"), "{out}");
    assert!(out_file.exists());
}

#[test]
fn transcribe_takes_a_corpus_root_as_train_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = ds2_model(dir.path());
    let corpus = root().join("apps/speech/tests/fixtures/librispeech");
    let (ok, out, err) = kiln_output(
        &["speech", "transcribe", "--model", s(&model), s(&corpus)],
        LIMIT,
    );
    assert!(ok, "{out}\n{err}");
    for id in ["3505-259831-0002", "4490-90921-0010"] {
        assert!(out.lines().any(|l| l.starts_with(id)), "{id}: {out}");
    }
    // A directory that holds no split says so.
    let (ok, _, err) = kiln_output(
        &["speech", "transcribe", "--model", s(&model), s(dir.path())],
        LIMIT,
    );
    assert!(!ok && err.contains("neither a LibriSpeech split"), "{err}");
}

/// The committed VOC-layout fixture copied to `dir/voc`, with image
/// 000002 truncated to half its bytes.
fn voc_with_a_truncated_image(dir: &Path) -> std::path::PathBuf {
    let voc = dir.join("voc");
    copy_dir(&root().join("apps/detection/tests/fixtures/voc-tiny"), &voc);
    let image = voc.join("JPEGImages/000002.jpg");
    let bytes = std::fs::read(&image).expect("read");
    std::fs::write(&image, &bytes[..bytes.len() / 2]).expect("write");
    voc
}

/// A fresh tiny SSD for `voc`'s classes.
fn ssd_model(dir: &Path, voc: &Path) -> std::path::PathBuf {
    let classes = kiln::detection::voc::read_classes(&voc.join("classes.txt")).expect("classes");
    let config = kiln::detection::train::TrainConfig::default()
        .model_config(classes)
        .expect("config");
    let model =
        kiln::detection::model::Ssd::<f32>::new(config, &mut rand::rngs::StdRng::seed_from_u64(1))
            .expect("model");
    let path = dir.join("ssd.safetensors");
    model.save(&path).expect("save");
    path
}

#[test]
fn detection_eval_and_predict_refuse_a_truncated_image_or_skip_it_when_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let voc = voc_with_a_truncated_image(dir.path());
    let model = ssd_model(dir.path(), &voc);
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "detect",
            "eval",
            "--voc",
            s(&voc),
            "--model",
            s(&model),
            "--split",
            "trainval",
        ];
        args.extend_from_slice(extra);
        kiln_output(&args, LIMIT)
    };
    let (ok, out, err) = eval(&[]);
    assert!(!ok, "{out}\n{err}");
    assert!(err.contains("1 of 3 files are unusable"), "{err}");
    assert!(err.contains("000002.jpg: image: JPEG"), "{err}");
    let (ok, out, err) = eval(&["--max-bad-share", "0.34"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("SKIPPING 1 of 3 files of image set trainval"),
        "{err}"
    );
    assert!(out.contains("mAP"), "{out}");

    let images: Vec<String> = ["000001", "000002", "000003"]
        .iter()
        .map(|id| s(&voc.join(format!("JPEGImages/{id}.jpg"))).to_string())
        .collect();
    let predict = |extra: &[&str]| {
        let out_dir = dir.path().join(format!("pred{}", extra.len()));
        let mut args = vec!["detect", "predict", "--model", s(&model)];
        let out_s = s(&out_dir).to_string();
        args.extend_from_slice(&["--out", &out_s]);
        args.extend_from_slice(extra);
        args.extend(images.iter().map(String::as_str));
        (kiln_output(&args, LIMIT), out_dir)
    };
    let ((ok, out, err), out_dir) = predict(&[]);
    assert!(!ok, "{out}\n{err}");
    assert!(
        err.contains("1 of 3 files are unusable") && err.contains("000002.jpg"),
        "{err}"
    );
    assert!(!out_dir.exists(), "nothing is written");
    let ((ok, out, err), out_dir) = predict(&["--max-bad-share", "0.5"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        err.contains("SKIPPING 1 of 3 files of the images given"),
        "{err}"
    );
    assert!(out_dir.join("000001.png").exists() && out_dir.join("000003.png").exists());
    assert!(!out_dir.join("000002.png").exists());
}

#[test]
fn duplicate_image_ids_and_ids_that_leave_the_folder_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let voc = dir.path().join("voc");
    copy_dir(&root().join("apps/detection/tests/fixtures/voc-tiny"), &voc);
    let model = ssd_model(dir.path(), &voc);
    let list = voc.join("ImageSets/Main/trainval.txt");
    for (text, want) in [
        (
            "000001\n000002\n000001\n",
            "duplicate image id 000001 (first on line 1)",
        ),
        ("000001\n../../etc/passwd\n", "is not a file name"),
    ] {
        std::fs::write(&list, text).expect("write");
        let (ok, out, err) = kiln_output(
            &[
                "detect",
                "eval",
                "--voc",
                s(&voc),
                "--model",
                s(&model),
                "--split",
                "trainval",
            ],
            LIMIT,
        );
        assert!(!ok, "{out}\n{err}");
        assert!(err.contains(want) && err.contains("trainval.txt"), "{err}");
    }
}

#[test]
fn a_bad_digits_file_is_refused_before_the_cluster_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("digits.csv");
    let mut rows = String::new();
    for i in 0..20 {
        rows.push_str(&format!("{}{}\n", "0,".repeat(64), i % 10));
    }
    rows.push_str(&format!("{}17\n", "0,".repeat(64)));
    std::fs::write(&bad, rows).expect("write");
    let start = std::time::Instant::now();
    let (ok, out, err) = kiln_output(
        &[
            "local",
            "--executors",
            "1",
            "digits",
            "--data",
            s(&bad),
            "--epochs",
            "1",
            "--no-progress",
        ],
        LIMIT,
    );
    assert!(!ok, "{out}\n{err}");
    assert!(err.contains("line 21: label 17 outside 0..10"), "{err}");
    assert!(!err.contains("attempt"), "refused before any task: {err}");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_model_of_another_application_is_named_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ds2 = ds2_model(dir.path());
    let voc = root().join("apps/detection/tests/fixtures/voc-tiny");
    let ssd = ssd_model(dir.path(), &voc);
    let corpus = root().join("apps/speech/tests/fixtures/librispeech/mini");
    for (args, want) in [
        (
            vec!["eval", "--model", s(&ds2)],
            "this is a Deep Speech 2 model, which `kiln speech eval` and `kiln speech transcribe` read; this command reads a digits classifier",
        ),
        (
            vec!["detect", "eval", "--voc", s(&voc), "--split", "trainval", "--model", s(&ds2)],
            "this is a Deep Speech 2 model",
        ),
        (
            vec!["speech", "eval", "--data", s(&corpus), "--model", s(&ssd)],
            "this is an SSD detection model, which `kiln detect eval` and `kiln detect predict` read",
        ),
    ] {
        let (ok, out, err) = kiln_output(&args, LIMIT);
        assert!(!ok, "{args:?}: {out}\n{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn detection_training_checks_every_image_before_it_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let voc = voc_with_a_truncated_image(dir.path());
    let model = dir.path().join("ssd.safetensors");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "detect",
            "train",
            "--voc",
            s(&voc),
            "--split",
            "trainval",
            "--epochs",
            "1",
            "--executors",
            "1",
            "--no-progress",
            "--out",
            s(&model),
        ];
        args.extend_from_slice(extra);
        kiln_output(&args, LIMIT)
    };
    refused_then_skipped(
        train,
        &model,
        "1 of 3 files",
        "job.train.max_bad_share",
        "SKIPPING 1 of 3 files of image set trainval",
    );
}
