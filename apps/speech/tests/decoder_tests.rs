//! Decoders and metrics on hand-built probability matrices.

use kiln_speech::decoder::{best_path, BeamSearchDecoder, VocabularyDecoder};
use kiln_speech::lm::NgramLm;
use kiln_speech::metrics::{cer, wer};
use kiln_speech::text::{label_of, ALPHABET_SIZE, BLANK};
use ndarray::Array2;

/// Frames given as lists of (symbol, probability); the rest of each frame's
/// mass is spread evenly over the other labels. Symbol '_' is the blank.
fn frames(spec: &[&[(char, f32)]]) -> Array2<f32> {
    let mut m = Array2::zeros((spec.len(), ALPHABET_SIZE));
    for (t, f) in spec.iter().enumerate() {
        let used: f32 = f.iter().map(|(_, p)| p).sum();
        let rest = (1.0 - used).max(0.0) / (ALPHABET_SIZE - f.len()) as f32;
        m.row_mut(t).fill(rest.max(1e-6));
        for &(c, p) in f.iter() {
            let l = if c == '_' {
                BLANK
            } else {
                label_of(c).unwrap()
            };
            m[[t, l]] = p;
        }
    }
    m.mapv(f32::ln)
}

#[test]
fn best_path_collapses_and_drops_blanks() {
    let m = frames(&[
        &[('A', 0.9)],
        &[('A', 0.9)],
        &[('_', 0.9)],
        &[('A', 0.9)],
        &[(' ', 0.9)],
        &[('B', 0.9)],
    ]);
    assert_eq!(best_path(m.view()).unwrap(), "AA B");
}

#[test]
fn beam_search_beats_best_path() {
    // Each frame: blank 0.4, A 0.35, B 0.25. Best path is blank,blank -> "".
    // P("") = 0.16, while P("A") = 0.35*0.35 + 2*0.35*0.4 = 0.4025.
    let f: &[(char, f32)] = &[('_', 0.4), ('A', 0.35), ('B', 0.25)];
    let m = frames(&[f, f]);
    assert_eq!(best_path(m.view()).unwrap(), "");
    let beam = BeamSearchDecoder::default();
    let out = beam.decode_n(m.view()).unwrap();
    assert_eq!(out[0].0, "A");
    assert!((out[0].1 - 0.4025f64.ln()).abs() < 1e-3, "{}", out[0].1);
}

#[test]
fn language_model_flips_a_decision() {
    // acoustics slightly prefer "THE CAT SAD" over "THE CAT SAT"
    let mut spec: Vec<Vec<(char, f32)>> = Vec::new();
    for c in "THE CAT SA".chars() {
        spec.push(vec![(c, 0.98)]);
        spec.push(vec![('_', 0.98)]);
    }
    spec.push(vec![('D', 0.55), ('T', 0.44)]);
    let refs: Vec<&[(char, f32)]> = spec.iter().map(|v| v.as_slice()).collect();
    let m = frames(&refs);
    let plain = BeamSearchDecoder::default();
    assert_eq!(plain.decode(m.view()).unwrap(), "THE CAT SAD");
    let lm = NgramLm::build_witten_bell(
        [
            "THE CAT SAT",
            "THE DOG SAT",
            "THE CAT SAT DOWN",
            "A CAT SAT",
            "I WAS SAD",
        ],
        3,
    )
    .unwrap();
    let with_lm = BeamSearchDecoder {
        alpha: 1.0,
        beta: 0.5,
        lm: Some(&lm),
        ..BeamSearchDecoder::default()
    };
    assert_eq!(with_lm.decode(m.view()).unwrap(), "THE CAT SAT");
}

#[test]
fn vocabulary_decoder_snaps_words() {
    let v = VocabularyDecoder::new(["PETER", "COULD", "LISTEN", "CAT"]);
    assert_eq!(v.correct("PETRR CUOLD LISEN"), "PETER COULD LISTEN");
    assert_eq!(v.nearest("KAT"), "CAT");
}

#[test]
fn wer_cer_hand_computed() {
    // ref 3 + 4 words; edits: 1 (sub) + 2 (ins + del)
    let pairs = [("A B C", "A X C"), ("W X Y Z", "W W X Z")];
    let w = wer(pairs);
    assert_eq!((w.errors, w.reference_len), (3, 7));
    // chars: "A B C" vs "A X C": 1 of 5; "W X Y Z" vs "W W X Z": 2 of 7
    let c = cer(pairs);
    assert_eq!((c.errors, c.reference_len), (3, 12));
}

#[test]
fn wer_cer_match_jiwer() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let strs = |k: &str| -> Vec<String> {
        doc[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let (refs, hyps) = (strs("references"), strs("hypotheses"));
    let pairs = || {
        refs.iter()
            .map(String::as_str)
            .zip(hyps.iter().map(String::as_str))
    };
    let w = wer(pairs()).rate();
    let c = cer(pairs()).rate();
    assert!((w - doc["wer"].as_f64().unwrap()).abs() < 1e-12, "wer {w}");
    assert!((c - doc["cer"].as_f64().unwrap()).abs() < 1e-12, "cer {c}");
    for ((r, h), e) in pairs().zip(doc["per_utterance_wer"].as_array().unwrap()) {
        let got = wer([(r, h)]).rate();
        assert!((got - e.as_f64().unwrap()).abs() < 1e-12, "{r} / {h}");
    }
}
