//! `kiln speech score` as a library function.

use kiln_speech::score::score_files;

#[test]
fn scores_trans_files() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("ref.trans.txt");
    let h = dir.path().join("hyp.trans.txt");
    std::fs::write(&r, "u1 THE CAT SAT\nu2 HELLO WORLD\nu3 GONE\n").unwrap();
    std::fs::write(&h, "u2 hello word\nu1 THE CAT SAT\nu9 EXTRA\n").unwrap();
    let rep = score_files(&r, &h).unwrap();
    // words: 0 + 1 + 1 (u3 missing) over 3 + 2 + 1
    assert_eq!((rep.words.errors, rep.words.reference_len), (2, 6));
    assert!((rep.wer - 2.0 / 6.0).abs() < 1e-12);
    // chars: 0 + 1 ("WORLD" -> "WORD") + 4 over 11 + 11 + 4
    assert_eq!((rep.chars.errors, rep.chars.reference_len), (5, 26));
    assert_eq!(rep.missing, ["u3"]);
    assert_eq!(rep.extra, ["u9"]);
    let json = serde_json::to_string(&rep).unwrap();
    assert!(json.contains("\"wer\""));
    assert!(rep.summary().starts_with("WER 33.33%"));
}

#[test]
fn duplicate_ids_are_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("ref.txt");
    std::fs::write(&r, "u1 A\n\nu1 B\n").unwrap();
    let e = score_files(&r, &r).unwrap_err().to_string();
    assert!(e.contains("ref.txt:3"), "{e}");
}

#[test]
fn eval_score_and_training_agree_on_lower_case_references() {
    // `kiln speech score` reads files; `kiln speech eval` and training's
    // dev WER call `metrics::error_rates` on the decoded (upper-case)
    // transcripts. Lower-case references must give the same rates.
    use kiln_speech::metrics::error_rates;
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("ref.trans.txt");
    let h = dir.path().join("hyp.trans.txt");
    std::fs::write(&r, "u1 the cat sat\nu2 hello  world\n").unwrap();
    std::fs::write(&h, "u1 THE CAT SAT\nu2 HELLO WORD\n").unwrap();
    let rep = score_files(&r, &h).unwrap();
    let (w, c) = error_rates(&[
        ("the cat sat", "THE CAT SAT"),
        ("hello  world", "HELLO WORD"),
    ]);
    assert_eq!(rep.words, w);
    assert_eq!(rep.chars, c);
    // Standard definitions: edits over reference words / characters.
    assert_eq!((w.errors, w.reference_len), (1, 5));
    assert_eq!((c.errors, c.reference_len), (1, 22));
    assert!((rep.wer - 0.2).abs() < 1e-12);
}

#[test]
fn empty_references_are_refused_and_empty_hypotheses_scored() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("ref.txt");
    let h = dir.path().join("hyp.txt");
    std::fs::write(&r, "u1 A B\nu2\n").unwrap();
    std::fs::write(&h, "u1 A B\nu2 C\n").unwrap();
    let e = score_files(&r, &h).unwrap_err().to_string();
    assert!(
        e.contains("ref.txt:2") && e.contains("reference utterance u2 is empty"),
        "{e}"
    );
    // A reference file with no entry scores nothing: refused.
    std::fs::write(&r, "\n\n").unwrap();
    let e = score_files(&r, &h).unwrap_err().to_string();
    assert!(e.contains("no reference utterance"), "{e}");
    // A hypothesis may be empty: the model said nothing (all deletions).
    std::fs::write(&r, "u1 A B\n").unwrap();
    std::fs::write(&h, "u1\n").unwrap();
    let rep = score_files(&r, &h).unwrap();
    assert_eq!((rep.words.errors, rep.words.reference_len), (2, 2));
}
