//! Choosing the LM decoder's weights on a development split (`kiln speech
//! tune`): every point of a grid of alpha, beta, unknown-word offset and
//! per-letter score decodes the split's log-probabilities (computed once),
//! and the point with the lowest WER wins (ties: the smaller alpha, then
//! beta, then the larger offset and letter score). Greedy decoding is
//! scored alongside, so the report says whether the LM helps at all.

use ndarray::Array2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::decoder::{best_path, BeamSearchDecoder, LmWeights, MAX_BEAM};
use crate::error::{Error, Result};
use crate::lm::NgramLm;
use crate::metrics::{wer, ErrorRate};

/// Most grid points (every combination counts).
pub const MAX_GRID_POINTS: usize = 10_000;

/// The values tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneGrid {
    /// LM weights.
    pub alphas: Vec<f64>,
    /// Word bonuses.
    pub betas: Vec<f64>,
    /// Unknown-word offsets.
    pub unk_offsets: Vec<f64>,
    /// Unknown-word per-letter scores.
    pub unk_letter_scores: Vec<f64>,
    /// Beam width of every decode.
    pub beam_width: usize,
}

impl Default for TuneGrid {
    fn default() -> Self {
        TuneGrid {
            alphas: vec![0.25, 0.5, 0.8, 1.2, 2.0],
            betas: vec![0.0, 1.0, 2.0, 3.0],
            unk_offsets: vec![-5.0, 0.0],
            unk_letter_scores: vec![-1.0, -1.5, -2.5],
            beam_width: 32,
        }
    }
}

impl TuneGrid {
    /// Every combination, checked as a decoder would check it.
    pub fn points(&self) -> Result<Vec<LmWeights>> {
        let n = self.alphas.len()
            * self.betas.len()
            * self.unk_offsets.len()
            * self.unk_letter_scores.len();
        if n == 0 || n > MAX_GRID_POINTS {
            return Err(Error::config(
                "tune grid",
                format!("{n} points; give every list at least one value and at most {MAX_GRID_POINTS} points in all"),
            ));
        }
        kiln_nn::bounds::check("beam width", self.beam_width, 1..=MAX_BEAM)
            .map_err(|e| Error::range("tune grid", e))?;
        let mut out = Vec::with_capacity(n);
        for &alpha in &self.alphas {
            for &beta in &self.betas {
                for &unk_offset in &self.unk_offsets {
                    for &unk_letter_score in &self.unk_letter_scores {
                        let w = LmWeights {
                            alpha,
                            beta,
                            unk_offset,
                            unk_letter_score,
                        };
                        decoder(None, self.beam_width, w).validate()?;
                        out.push(w);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn decoder(lm: Option<&NgramLm>, beam_width: usize, w: LmWeights) -> BeamSearchDecoder<'_> {
    BeamSearchDecoder {
        beam_width,
        alpha: w.alpha,
        beta: w.beta,
        unk_offset: w.unk_offset,
        unk_letter_score: w.unk_letter_score,
        lm,
        ..BeamSearchDecoder::default()
    }
}

/// One grid point's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunePoint {
    /// The weights.
    pub weights: LmWeights,
    /// Word errors over the split.
    pub wer: ErrorRate,
    /// Words in the hypotheses (against the references' count: far fewer
    /// means glued words).
    pub hypothesis_words: usize,
}

/// What tuning found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneReport {
    /// Greedy decoding's word errors.
    pub greedy: ErrorRate,
    /// Words in the references.
    pub reference_words: usize,
    /// The winner.
    pub best: TunePoint,
    /// Every point, in grid order.
    pub points: Vec<TunePoint>,
    /// The beam width used.
    pub beam_width: usize,
}

/// Decodes `log_probs` (one `(frames, classes)` matrix per utterance, in
/// the order of `references`) at every point of `grid` and returns the
/// report; the points run in parallel.
pub fn tune(
    log_probs: &[Array2<f32>],
    references: &[String],
    lm: &NgramLm,
    grid: &TuneGrid,
) -> Result<TuneReport> {
    if log_probs.len() != references.len() || references.is_empty() {
        return Err(Error::config(
            "tune",
            format!(
                "{} utterances and {} references: need as many of each, at least one",
                log_probs.len(),
                references.len()
            ),
        ));
    }
    let points = grid.points()?;
    let greedy_texts = log_probs
        .iter()
        .map(|lp| best_path(lp.view()))
        .collect::<Result<Vec<_>>>()?;
    let pairs = |hyps: &[String]| -> ErrorRate {
        wer(references
            .iter()
            .zip(hyps)
            .map(|(r, h)| (r.as_str(), h.as_str())))
    };
    let greedy = pairs(&greedy_texts);
    let results = points
        .par_iter()
        .map(|&w| {
            let d = decoder(Some(lm), grid.beam_width, w);
            let hyps = log_probs
                .iter()
                .map(|lp| d.decode(lp.view()))
                .collect::<Result<Vec<_>>>()?;
            Ok(TunePoint {
                weights: w,
                wer: pairs(&hyps),
                hypothesis_words: hyps.iter().map(|h| h.split_whitespace().count()).sum(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let key = |p: &TunePoint| {
        (
            p.wer.errors,
            p.weights.alpha,
            p.weights.beta,
            -p.weights.unk_offset,
            -p.weights.unk_letter_score,
        )
    };
    let best = results
        .iter()
        .min_by(|a, b| {
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .cloned()
        .ok_or_else(|| Error::config("tune grid", "no point"))?;
    Ok(TuneReport {
        greedy,
        reference_words: references
            .iter()
            .map(|r| r.split_whitespace().count())
            .sum(),
        best,
        points: results,
        beam_width: grid.beam_width,
    })
}

/// The tuned decoder written beside a model (`<model>.decoder.json`),
/// which `kiln speech eval` and `transcribe` use when given an LM and no
/// weights of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunedDecoder {
    /// The chosen weights.
    pub weights: LmWeights,
    /// The beam width they were chosen with.
    pub beam_width: usize,
    /// The LM they were chosen for.
    pub lm: String,
    /// The split they were chosen on.
    pub split: String,
    /// Greedy WER on that split.
    pub greedy_wer: f64,
    /// WER with these weights on that split.
    pub wer: f64,
}

impl TunedDecoder {
    /// Where the tuned decoder of `model` lives.
    pub fn path_for(model: &std::path::Path) -> std::path::PathBuf {
        let mut name = model.file_name().unwrap_or_default().to_os_string();
        name.push(".decoder.json");
        model.with_file_name(name)
    }

    /// Reads and checks one (the weights as a decoder checks them).
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let t: TunedDecoder =
            serde_json::from_str(&text).map_err(|e| Error::parse(path, e.line(), e.to_string()))?;
        decoder(None, t.beam_width, t.weights).validate()?;
        Ok(t)
    }

    /// Writes it as JSON.
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::config("tuned decoder", e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{label_of, ALPHABET_SIZE, BLANK, SPACE};

    /// Confident emissions of `text` (letters 0.8, spaces 0.6 against blank).
    fn emissions(text: &str) -> Array2<f32> {
        let mut rows: Vec<(usize, f32)> = Vec::new();
        for c in text.chars() {
            if c == ' ' {
                rows.push((SPACE, 0.6));
            } else {
                rows.push((label_of(c).unwrap_or(BLANK), 0.8));
                rows.push((BLANK, 0.9));
            }
        }
        let mut m = Array2::from_elem((rows.len(), ALPHABET_SIZE), 0.2 / ALPHABET_SIZE as f32);
        for (t, &(l, p)) in rows.iter().enumerate() {
            m[[t, l]] = p;
            if l == SPACE {
                m[[t, BLANK]] = 0.35;
            }
        }
        m.mapv(f32::ln)
    }

    #[test]
    fn the_best_point_is_no_worse_than_greedy_and_round_trips() {
        let lm = NgramLm::build_witten_bell(["THE CAT SAT", "THE DOG SAT ON A MAT"], 2).unwrap();
        let refs: Vec<String> = ["THE CAT SAT", "THE ZEBRA SAT ON A MAT"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let lps: Vec<Array2<f32>> = refs.iter().map(|r| emissions(r)).collect();
        let grid = TuneGrid {
            beam_width: 16,
            ..TuneGrid::default()
        };
        let r = tune(&lps, &refs, &lm, &grid).unwrap();
        assert_eq!(r.points.len(), 5 * 4 * 2 * 3);
        assert_eq!(r.reference_words, 9);
        assert!(r.best.wer.errors <= r.greedy.errors, "{r:?}");
        assert_eq!(r.best.wer.errors, 0, "{:?}", r.best);
        // Some point glues or drops words: the report shows it.
        assert!(r.points.iter().any(|p| p.wer.errors > 0));
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.safetensors");
        let path = TunedDecoder::path_for(&model);
        assert!(path.ends_with("m.safetensors.decoder.json"));
        let t = TunedDecoder {
            weights: r.best.weights,
            beam_width: 16,
            lm: "lm.arpa".into(),
            split: "dev".into(),
            greedy_wer: r.greedy.rate(),
            wer: r.best.wer.rate(),
        };
        t.write(&path).unwrap();
        assert_eq!(TunedDecoder::read(&path).unwrap(), t);
        std::fs::write(&path, "{\"weights\":{\"alpha\":1}}").unwrap();
        assert!(TunedDecoder::read(&path).is_err());
        let bad = TuneGrid {
            alphas: vec![],
            ..TuneGrid::default()
        };
        assert!(tune(&lps, &refs, &lm, &bad).is_err());
        let bad = TuneGrid {
            unk_letter_scores: vec![1.0],
            ..TuneGrid::default()
        };
        assert!(tune(&lps, &refs, &lm, &bad)
            .unwrap_err()
            .to_string()
            .contains("unk_letter_score"));
    }
}
