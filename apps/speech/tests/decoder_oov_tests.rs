//! The LM decoder and words the LM never saw: unknown words keep their
//! boundaries (no gluing into one long word), and an LM that knows every
//! reference word never makes WER worse than greedy decoding. The
//! emissions are synthetic: each letter spread over two frames with a
//! confusable letter beside it, spaces likely but not certain, as a
//! model on unseen voices produces.

use kiln_speech::decoder::{best_path, BeamSearchDecoder};
use kiln_speech::lm::NgramLm;
use kiln_speech::metrics::wer;
use kiln_speech::text::{label_of, ALPHABET_SIZE, BLANK, SPACE};
use ndarray::Array2;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Emissions for `text`: per letter a frame where it has `p_letter` (or,
/// with probability `confuse`, a random other letter has it and the true
/// one `p_letter - 0.2`), then a blank frame; a space has `p_space`
/// against blank. The rest of each frame's mass is spread evenly.
fn emissions(
    text: &str,
    p_letter: f32,
    p_space: f32,
    confuse: f64,
    rng: &mut StdRng,
) -> Array2<f32> {
    let mut rows: Vec<Vec<(usize, f32)>> = Vec::new();
    for c in text.chars() {
        if c == ' ' {
            rows.push(vec![(SPACE, p_space), (BLANK, 0.95 - p_space)]);
            continue;
        }
        let l = label_of(c).unwrap();
        if rng.random_bool(confuse) {
            let other = loop {
                let o = label_of((b'A' + rng.random_range(0..26u8)) as char).unwrap();
                if o != l {
                    break o;
                }
            };
            rows.push(vec![(other, p_letter), (l, p_letter - 0.2)]);
        } else {
            rows.push(vec![(l, p_letter)]);
        }
        rows.push(vec![(BLANK, 0.9)]);
    }
    let mut m = Array2::zeros((rows.len(), ALPHABET_SIZE));
    for (t, r) in rows.iter().enumerate() {
        let used: f32 = r.iter().map(|x| x.1).sum();
        let rest = ((1.0 - used) / (ALPHABET_SIZE - r.len()) as f32).max(1e-6);
        m.row_mut(t).fill(rest);
        for &(l, p) in r {
            m[[t, l]] = p;
        }
    }
    m.mapv(f32::ln)
}

const TRAINING: [&str; 6] = [
    "THE CAT SAT ON THE MAT",
    "THE DOG SAT ON THE LOG",
    "A CAT AND A DOG",
    "THE MAN SAW THE CAT",
    "THE DOG SAW A MAN ON THE MAT",
    "ON THE LOG SAT A CAT",
];

fn lm(sentences: &[&str]) -> NgramLm {
    NgramLm::build_witten_bell(sentences.iter().copied(), 3).unwrap()
}

#[test]
fn unknown_words_keep_their_boundaries() {
    let lm = lm(&TRAINING);
    let mut rng = StdRng::seed_from_u64(7);
    // Half the words are not in the LM's vocabulary.
    let text = "THE ZEBRA SAT ON THE QUIXOTIC MAT NEAR A WOMBAT";
    let m = emissions(text, 0.7, 0.75, 0.0, &mut rng);
    assert_eq!(best_path(m.view()).unwrap(), text);
    // Scored as the bare `<unk>` word (no cost for its letters), the
    // unknown words swallow the ones after them (the reported failure).
    let bare = BeamSearchDecoder {
        beam_width: 64,
        alpha: 1.0,
        beta: 2.0,
        lm: Some(&lm),
        unk_offset: 0.0,
        unk_letter_score: 0.0,
        ..BeamSearchDecoder::default()
    };
    let glued = bare.decode(m.view()).unwrap();
    assert!(
        glued.split_whitespace().count() < text.split_whitespace().count(),
        "{glued}"
    );
    for (alpha, beta) in [(1.0, 2.0), (0.5, 1.0)] {
        let decoder = BeamSearchDecoder {
            beam_width: 64,
            alpha,
            beta,
            lm: Some(&lm),
            ..BeamSearchDecoder::default()
        };
        let out = decoder.decode(m.view()).unwrap();
        assert_eq!(
            out.split_whitespace().count(),
            text.split_whitespace().count(),
            "alpha {alpha} beta {beta}: {out:?}"
        );
        assert_eq!(out, text, "alpha {alpha} beta {beta}");
    }
}

#[test]
fn an_lm_that_knows_every_reference_word_never_loses_to_greedy() {
    let references = [
        "THE CAT SAT ON THE MAT",
        "THE DOG SAW A MAN",
        "A CAT AND A DOG SAT ON THE LOG",
        "THE MAN SAW THE DOG ON THE MAT",
        "ON THE MAT SAT A DOG AND A CAT",
        "THE CAT SAW THE LOG",
    ];
    let lm = lm(&TRAINING);
    for r in references {
        for w in r.split_whitespace() {
            assert!(lm.contains(w), "{w}");
        }
    }
    let mut rng = StdRng::seed_from_u64(11);
    let mut greedy = Vec::new();
    let mut with_lm = Vec::new();
    for r in references {
        for _ in 0..4 {
            let m = emissions(r, 0.55, 0.6, 0.25, &mut rng);
            greedy.push((r, best_path(m.view()).unwrap()));
            let decoder = BeamSearchDecoder {
                beam_width: 64,
                alpha: 1.0,
                beta: 2.0,
                lm: Some(&lm),
                ..BeamSearchDecoder::default()
            };
            with_lm.push((r, decoder.decode(m.view()).unwrap()));
        }
    }
    let pairs = |v: &Vec<(&str, String)>| -> Vec<(String, String)> {
        v.iter().map(|(r, h)| (r.to_string(), h.clone())).collect()
    };
    let g = wer(pairs(&greedy).iter().map(|(r, h)| (r.as_str(), h.as_str())));
    let l = wer(pairs(&with_lm)
        .iter()
        .map(|(r, h)| (r.as_str(), h.as_str())));
    assert!(g.errors > 10, "the fixture must be hard for greedy: {g:?}");
    assert!(l.errors <= g.errors, "LM {l:?} vs greedy {g:?}");
    assert!(
        l.errors * 4 < g.errors,
        "the LM should fix most errors: LM {l:?} vs greedy {g:?}"
    );
}

#[test]
fn unknown_word_settings_are_checked() {
    let lm = lm(&TRAINING);
    let m = emissions("THE CAT", 0.7, 0.75, 0.0, &mut StdRng::seed_from_u64(1));
    for (offset, letter, says) in [
        (f64::NAN, -1.5, "unk_offset"),
        (2000.0, -1.5, "unk_offset"),
        (0.0, 0.5, "unk_letter_score"),
        (0.0, f64::NEG_INFINITY, "unk_letter_score"),
    ] {
        let d = BeamSearchDecoder {
            lm: Some(&lm),
            unk_offset: offset,
            unk_letter_score: letter,
            ..BeamSearchDecoder::default()
        };
        let e = d.decode(m.view()).unwrap_err().to_string();
        assert!(e.contains(says), "{offset} {letter}: {e}");
    }
}
