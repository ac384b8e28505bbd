//! Bad numbers and bad keys on the command line and in settings files are
//! refused before any work starts (no cluster, no file written), with a
//! message naming the flag or setting, the value, the allowed range and
//! the file; nothing panics or hangs.

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use helpers::root;

/// Longer than any refusal takes: a command still running then hangs.
const LIMIT: Duration = Duration::from_secs(30);

/// Runs kiln (killed by its own id if it outlives [`LIMIT`], which fails
/// the test) and returns its output.
fn kiln(args: &[&str]) -> Output {
    helpers::kiln_process(args, &[], LIMIT)
}

/// Asserts kiln refuses `args` with exit status 2 (clap) or 1 (checks),
/// without panicking or starting a cluster, and that stderr names every
/// one of `wanted`.
fn refused(args: &[&str], wanted: &[&str]) {
    let o = kiln(args);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        matches!(o.status.code(), Some(1) | Some(2)),
        "kiln {args:?}: status {:?}\n{out}\n{err}",
        o.status
    );
    assert!(!err.contains("panicked"), "kiln {args:?} panicked:\n{err}");
    assert!(
        !out.contains("JOIN "),
        "kiln {args:?} started a cluster before refusing:\n{out}\n{err}"
    );
    for w in wanted {
        assert!(err.contains(w), "kiln {args:?}: {w:?} not in:\n{err}");
    }
}

fn p(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn out_of_range_flags_are_refused_naming_flag_value_and_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = dir.path().join("t.trans.txt");
    std::fs::write(&t, "u1 THE CAT SAT\n").expect("write");
    let arpa = dir.path().join("lm.arpa");
    let (t, arpa_s) = (p(&t), p(&arpa));
    let max = "18446744073709551615";
    for order in [max, "0", "11"] {
        refused(
            &["speech", "lm", "--order", order, "--out", &arpa_s, &t],
            &["--order", order, "1..=10"],
        );
    }
    assert!(!arpa.exists(), "a refused LM order wrote its file");
    let transcribe = |flag: &str, v: &str, wanted: &[&str]| {
        let arg = format!("{flag}={v}");
        refused(
            &[
                "speech",
                "transcribe",
                "--model",
                "m",
                "--lm",
                "l",
                &arg,
                "x",
            ],
            wanted,
        );
    };
    transcribe("--beam", "0", &["--beam", "1..=10000"]);
    transcribe("--beam", max, &["--beam", max, "1..=10000"]);
    for v in ["nan", "inf", "-inf", "-1"] {
        transcribe("--alpha", v, &["--alpha"]);
    }
    transcribe("--beta", "NaN", &["--beta", "finite"]);
    let local_digits = |flag: &str, v: &str, wanted: &[&str]| {
        let arg = format!("{flag}={v}");
        refused(&["local", "--in-process", "digits", &arg], wanted);
    };
    local_digits("--shards", "0", &["--shards", "1..=4096"]);
    local_digits("--shards", max, &["--shards"]);
    local_digits("--partitions", "0", &["--partitions", "1..=65536"]);
    local_digits("--shard-replicas", "0", &["--shard-replicas"]);
    local_digits("--epochs", "0", &["--epochs", "1..=100000"]);
    local_digits("--batch-size", max, &["--batch-size", "[1, 65536]"]);
    for v in ["nan", "inf", "0", "-0.1", "11"] {
        local_digits("--lr", v, &["--lr"]);
    }
    refused(
        &["local", "--max-attempts", "0", "digits"],
        &["--max-attempts", "1..=1000"],
    );
    refused(
        &["local", "--executor-threads", max, "digits"],
        &["--executor-threads", "[0, 1024]"],
    );
    refused(
        &["executor", "--join", "x@127.0.0.1:1", "--threads", "5000"],
        &["--threads", "[0, 1024]"],
    );
    let speech = |flag: &str, v: &str, wanted: &[&str]| {
        let arg = format!("{flag}={v}");
        refused(
            &[
                "local",
                "--in-process",
                "speech",
                "train",
                "--data",
                "d",
                &arg,
            ],
            wanted,
        );
    };
    speech("--anneal", "0", &["--anneal", "[1, 100]"]);
    speech("--anneal", "inf", &["--anneal"]);
    speech("--max-seconds", "nan", &["--max-seconds"]);
    speech("--max-seconds", "0", &["--max-seconds", "(0, 3600]"]);
    refused(
        &[
            "detect",
            "predict",
            "--model",
            "m",
            "--out",
            "o",
            "--threshold",
            "nan",
            "x",
        ],
        &["--threshold"],
    );
    refused(
        &[
            "detect",
            "eval",
            "--voc",
            "v",
            "--model",
            "m",
            "--batch-size",
            "0",
        ],
        &["--batch-size", "[1, 1024]"],
    );
}

#[test]
fn zero_executors_is_refused_not_a_hang() {
    refused(
        &["local", "--executors", "0", "digits"],
        &["--executors", "1..=1024"],
    );
    refused(
        &["detect", "train", "--voc", "v", "--executors", "0"],
        &["--executors"],
    );
    refused(
        &["train", "--resume", "somewhere", "--executors", "0"],
        &["--executors", "1..=1024"],
    );
}

#[test]
fn settings_files_refuse_unknown_keys_and_bad_numbers_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let voc = p(&root().join("tests/data/shapes-tiny"));
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        p(&path)
    };
    let out = dir.path().join("ssd.safetensors");
    let out_s = p(&out);
    // Detection JSON: an unknown key nested two levels down, a huge image,
    // a rate plan that would turn the learning rate negative.
    for (name, json, wanted) in [
        (
            "nested.json",
            r#"{"small_backbone": {"stages": [8], "source_channels": 8, "batch_norm": false, "widht": 3}}"#,
            vec!["nested.json", "small_backbone.widht", "unknown field"],
        ),
        (
            "big.json",
            r#"{"image_size": 100000}"#,
            vec!["big.json", "image_size = 100000", "[32, 2048]"],
        ),
        (
            "gamma.json",
            r#"{"gamma": -0.5}"#,
            vec!["gamma.json", "gamma = -0.5", "(0, 1]"],
        ),
        (
            "batch.json",
            r#"{"batch_size": 18446744073709551615}"#,
            vec!["batch.json", "batch_size", "[1, 1024]"],
        ),
    ] {
        let cfg = write(name, json);
        // In this process and on a local cluster: refused before training
        // or the cluster starts, and no model file is written.
        refused(
            &[
                "detect", "train", "--voc", &voc, "--config", &cfg, "--out", &out_s,
            ],
            &wanted,
        );
        refused(
            &[
                "detect",
                "train",
                "--voc",
                &voc,
                "--config",
                &cfg,
                "--out",
                &out_s,
                "--executors",
                "1",
                "--in-process",
            ],
            &wanted,
        );
        assert!(!out.exists(), "{name}: a model file was written");
    }
    // Speech TOML: a typo at the top level and inside a table.
    let small = std::fs::read_to_string(root().join("apps/speech/configs/ds2_small.toml"))
        .expect("the small config");
    for (name, text, key) in [
        ("clipp.toml", small.replace("clip = ", "clipp = "), "clipp"),
        (
            "hiden.toml",
            small.replace("hidden = ", "hiden = "),
            "hiden",
        ),
        (
            "huge.toml",
            small.replace("hidden = 64", "hidden = 9223372036854775807"),
            "rnn.hidden",
        ),
    ] {
        let cfg = write(name, &text);
        refused(
            &[
                "local",
                "--in-process",
                "speech",
                "train",
                "--data",
                &voc,
                "--config",
                &cfg,
            ],
            &[name, key],
        );
    }
    // JSON job settings: unknown keys at any depth, and ranges, refused
    // before `kiln local` starts its cluster.
    let job = |settings: &str| {
        vec![
            "local".to_string(),
            "--in-process".into(),
            "job".into(),
            "--kind".into(),
            "detection".into(),
            "--settings".into(),
            settings.to_string(),
        ]
    };
    for (settings, wanted) in [
        (
            format!(
                r#"{{"job": {{"voc": "{voc}", "train": {{"small_backbone": {{"stages": [8], "source_channels": 8, "batch_norm": false, "zz": 1}}}}}}}}"#
            ),
            vec!["job.train.small_backbone.zz", "unknown field"],
        ),
        (
            format!(r#"{{"job": {{"voc": "{voc}", "train": {{"lr": -1.0}}}}}}"#),
            vec!["lr = -1", "(0, 10]"],
        ),
        (
            format!(
                r#"{{"job": {{"voc": "{voc}", "train": {{"epochs": 1}}}}, "run": {{"shards": 0}}}}"#
            ),
            vec!["run.shards = 0"],
        ),
    ] {
        let args = job(&settings);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, &wanted);
    }
}

#[test]
fn an_arpa_file_with_nan_or_inf_probabilities_is_refused_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (bad, line) in [("nan", 5), ("inf", 5), ("0.5", 5)] {
        let arpa = dir.path().join(format!("bad-{bad}.arpa"));
        std::fs::write(
            &arpa,
            format!("\\data\\\nngram 1=2\n\n\\1-grams:\n{bad} A\n-1.0 B\n\n\\end\\\n"),
        )
        .expect("write");
        let where_ = format!("bad-{bad}.arpa:{line}");
        refused(
            &[
                "speech",
                "transcribe",
                "--model",
                "missing.safetensors",
                "--lm",
                &p(&arpa),
                "x",
            ],
            &[&where_],
        );
    }
}

#[test]
fn speech_score_folds_case_like_eval_and_training() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("ref.txt");
    let h = dir.path().join("hyp.txt");
    std::fs::write(&r, "u1 the cat sat\nu2 hello world\n").expect("write");
    std::fs::write(&h, "u1 THE CAT SAT\nu2 HELLO WORLD\n").expect("write");
    let o = kiln(&[
        "speech",
        "score",
        "--reference",
        &p(&r),
        "--hypothesis",
        &p(&h),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.starts_with("WER 0.00%"), "{out}");
}

#[test]
fn a_settings_file_with_an_unknown_key_is_refused_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("digits-settings.json");
    std::fs::write(&file, r#"{"job": {"epochs": 1, "epochz": 2}}"#).expect("write");
    let at = format!("@{}", p(&file));
    refused(
        &[
            "local",
            "--in-process",
            "job",
            "--kind",
            "digits",
            "--settings",
            &at,
        ],
        &["digits-settings.json", "job.epochz", "unknown field"],
    );
}
