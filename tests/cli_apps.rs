//! The application commands that need no trained model: `kiln speech score`,
//! `kiln speech lm` and `kiln detect score`, run as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("kiln runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
