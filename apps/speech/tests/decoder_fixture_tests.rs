//! The LM decoder on a real model's output: 30 dev-unseen utterances
//! (voices and words the model never trained on) as a trained DS2 scored
//! them, quantised to a tenth of a nat (`tests/fixtures/ds2_unseen`,
//! written by `examples/dump_log_probs.rs`; its doc has the command). An
//! LM built from text that contains every reference word (the split's
//! other transcripts plus the missing words) must never make WER worse
//! than greedy decoding, for any of a range of weights, and never glues
//! words together.

use std::path::PathBuf;

use kiln_speech::decoder::{best_path, BeamSearchDecoder};
use kiln_speech::lm::NgramLm;
use kiln_speech::metrics::{wer, ErrorRate};
use kiln_speech::text::ALPHABET_SIZE;
use ndarray::Array2;

struct Utterance {
    reference: String,
    log_probs: Array2<f32>,
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ds2_unseen")
}

fn utterances() -> Vec<Utterance> {
    let dir = fixture_dir();
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("utterances.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(dir.join("log_probs.bin")).unwrap();
    let mut at = 0;
    let out: Vec<Utterance> = listed
        .iter()
        .map(|u| {
            let frames = u["frames"].as_u64().unwrap() as usize;
            let n = frames * ALPHABET_SIZE;
            let values = bytes[at..at + n]
                .iter()
                .map(|&q| -(q as f32) / 10.0)
                .collect();
            at += n;
            Utterance {
                reference: u["reference"].as_str().unwrap().to_string(),
                log_probs: Array2::from_shape_vec((frames, ALPHABET_SIZE), values).unwrap(),
            }
        })
        .collect();
    assert_eq!(
        at,
        bytes.len(),
        "log_probs.bin holds exactly the listed frames"
    );
    out
}

fn lm() -> NgramLm {
    let text = std::fs::read_to_string(fixture_dir().join("lm_text.txt")).unwrap();
    NgramLm::build_witten_bell(text.lines(), 3).unwrap()
}

fn rate(refs: &[Utterance], hyps: &[String]) -> ErrorRate {
    wer(refs
        .iter()
        .zip(hyps)
        .map(|(u, h)| (u.reference.as_str(), h.as_str())))
}

#[test]
fn the_fixture_is_real_model_output_on_unseen_words() {
    let utts = utterances();
    assert_eq!(utts.len(), 30);
    let lm = lm();
    for u in &utts {
        for w in u.reference.split_whitespace() {
            assert!(lm.contains(w), "the LM lacks {w}");
        }
        // Each frame is a distribution (up to the quantisation).
        for row in u.log_probs.rows() {
            let total: f32 = row.iter().map(|l| l.exp()).sum();
            assert!((0.8..1.2).contains(&total), "{total}");
        }
    }
    let greedy: Vec<String> = utts
        .iter()
        .map(|u| best_path(u.log_probs.view()).unwrap())
        .collect();
    let g = rate(&utts, &greedy);
    assert!(g.rate() > 0.2, "hard enough for greedy: {g:?}");
}

#[test]
fn an_lm_with_every_reference_word_never_loses_to_greedy() {
    let utts = utterances();
    let lm = lm();
    let greedy: Vec<String> = utts
        .iter()
        .map(|u| best_path(u.log_probs.view()).unwrap())
        .collect();
    let g = rate(&utts, &greedy);
    let longest_reference_word = utts
        .iter()
        .flat_map(|u| u.reference.split_whitespace())
        .map(str::len)
        .max()
        .unwrap();
    // The LM weight multiplies natural-log probabilities: 1 is about 2.3
    // in the log10 units of KenLM-based decoders, the top of what they
    // use. Beyond it the LM overrides the acoustics of a model this weak
    // (alpha 1.5 makes 92 errors here against greedy's 90; alpha 0.25
    // makes 49), which is what `kiln speech tune` is for.
    for alpha in [0.25, 0.5, 1.0] {
        for beta in [0.0, 2.0] {
            let decoder = BeamSearchDecoder {
                beam_width: 32,
                alpha,
                beta,
                lm: Some(&lm),
                ..BeamSearchDecoder::default()
            };
            let hyps: Vec<String> = utts
                .iter()
                .map(|u| decoder.decode(u.log_probs.view()).unwrap())
                .collect();
            let l = rate(&utts, &hyps);
            assert!(
                l.errors <= g.errors,
                "alpha {alpha} beta {beta}: LM {l:?} vs greedy {g:?}"
            );
            for h in &hyps {
                for w in h.split_whitespace() {
                    assert!(
                        w.len() <= longest_reference_word + 4,
                        "alpha {alpha} beta {beta}: glued word {w:?} in {h:?}"
                    );
                }
            }
        }
    }
}
