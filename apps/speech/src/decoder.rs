//! CTC decoders over `(T, C)` per-frame log-probabilities (or any scores
//! monotone in them for best path) in the [`crate::text`] alphabet:
//! best path, vocabulary correction, and prefix beam search with an
//! optional n-gram language model.

use std::collections::HashMap;

use kiln_nn::bounds::{check, check_number, check_number_f32};
use ndarray::ArrayView2;

use crate::error::{Error, Result};
use crate::lm::{NgramLm, BOS, EOS};
use crate::metrics::edit_distance;
use crate::text::{labels_to_text, ALPHABET_SIZE, BLANK, SPACE};

fn check_classes(op: &str, scores: &ArrayView2<'_, f32>) -> Result<()> {
    if scores.ncols() != ALPHABET_SIZE {
        return Err(Error::Shape {
            op: op.into(),
            expected: format!("(frames, {ALPHABET_SIZE})"),
            actual: scores.shape().to_vec(),
        });
    }
    Ok(())
}

/// Best path: the argmax label of each frame, repeats collapsed, blanks
/// dropped. Works on any `(T, C)` scores (`blank` is the blank's index).
pub fn best_path_labels(scores: ArrayView2<'_, f32>, blank: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev = None;
    for row in scores.outer_iter() {
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap_or(blank);
        if Some(best) != prev && best != blank {
            out.push(best);
        }
        prev = Some(best);
    }
    out
}

/// Best-path transcript (spaces normalised) in the DS2 alphabet.
pub fn best_path(scores: ArrayView2<'_, f32>) -> Result<String> {
    check_classes("best_path", &scores)?;
    let text = labels_to_text(&best_path_labels(scores, BLANK))?;
    Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Replaces each decoded word by the nearest vocabulary word in character
/// edit distance (BigDL's VocabDecoder); ties go to the word listed first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabularyDecoder {
    words: Vec<Vec<char>>,
}

impl VocabularyDecoder {
    /// A decoder over `words` (duplicates and empty words dropped, order kept).
    pub fn new<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> Self {
        let mut seen = std::collections::HashSet::new();
        let words = words
            .into_iter()
            .map(|w| w.as_ref().trim().to_string())
            .filter(|w| !w.is_empty() && seen.insert(w.clone()))
            .map(|w| w.chars().collect())
            .collect();
        VocabularyDecoder { words }
    }

    /// The nearest vocabulary word to `word` (itself if the vocabulary is empty).
    pub fn nearest(&self, word: &str) -> String {
        let w: Vec<char> = word.chars().collect();
        let mut best: Option<(usize, &Vec<char>)> = None;
        for v in &self.words {
            let d = edit_distance(&w, v);
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, v));
                if d == 0 {
                    break;
                }
            }
        }
        best.map_or_else(|| word.to_string(), |(_, v)| v.iter().collect())
    }

    /// `text` with every word replaced by its nearest vocabulary word.
    pub fn correct(&self, text: &str) -> String {
        text.split_whitespace()
            .map(|w| self.nearest(w))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Best path followed by vocabulary correction.
    pub fn decode(&self, scores: ArrayView2<'_, f32>) -> Result<String> {
        Ok(self.correct(&best_path(scores)?))
    }
}

/// Widest beam of [`BeamSearchDecoder`] (its work and memory grow with it).
pub const MAX_BEAM: usize = 10_000;
/// Largest magnitude of the LM weight and the word bonus.
pub const MAX_WEIGHT: f64 = 1000.0;

/// Default of [`BeamSearchDecoder::unk_offset`].
pub const DEFAULT_UNK_OFFSET: f64 = 0.0;
/// Default of [`BeamSearchDecoder::unk_letter_score`].
pub const DEFAULT_UNK_LETTER_SCORE: f64 = -1.5;

/// How an LM's scores enter [`BeamSearchDecoder`]: the LM weight, the word
/// bonus and the scoring of unknown words.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmWeights {
    /// LM weight.
    pub alpha: f64,
    /// Word insertion bonus (natural-log units).
    pub beta: f64,
    /// See [`BeamSearchDecoder::unk_offset`].
    pub unk_offset: f64,
    /// See [`BeamSearchDecoder::unk_letter_score`].
    pub unk_letter_score: f64,
}

impl Default for LmWeights {
    fn default() -> Self {
        LmWeights {
            alpha: 0.8,
            beta: 1.0,
            unk_offset: DEFAULT_UNK_OFFSET,
            unk_letter_score: DEFAULT_UNK_LETTER_SCORE,
        }
    }
}

/// Prefix beam search (Hannun et al. 2014) with an optional word n-gram LM.
///
/// A prefix's score is `ln P_ctc(prefix) + alpha * ln P_lm(words) + beta *
/// words`; the LM and bonus are applied when a word is completed (a space
/// follows it, or at the end, where `</s>` is scored too). Leading and
/// repeated spaces are not emitted. Labels whose log-probability at a frame
/// is below `prune_log_prob` are not tried at that frame.
///
/// Words outside the LM's vocabulary are scored so that they neither
/// vanish (an unknown word is not all but forbidden, as with the LM's
/// bare `<unk>` probability the old decoder used) nor swallow the words
/// around them: a word the LM never saw is scored as `<unk>` followed by
/// its spelling, `alpha * ln P(<unk> | history) + unk_offset +
/// unk_letter_score * letters` (without `<unk>` in the model, its rarest
/// word's probability stands in). Its cost grows with its length, so
/// dropping the spaces between words to make one long unknown "word" never
/// pays: each word the run absorbs would have cost at most `ln P(word)`
/// plus the bonus, while its letters cost `unk_letter_score` each. While a
/// word is being spelt, a partial word that begins no vocabulary word
/// already carries that cost (pyctcdecode scores partial words the same
/// way), so the beam ranks hypotheses as they will end.
#[derive(Debug, Clone, Copy)]
pub struct BeamSearchDecoder<'a> {
    /// Prefixes kept after each frame.
    pub beam_width: usize,
    /// LM weight.
    pub alpha: f64,
    /// Word insertion bonus (natural-log units).
    pub beta: f64,
    /// Optional language model (log10 probabilities are converted to ln).
    pub lm: Option<&'a NgramLm>,
    /// Labels with a lower frame log-probability are skipped.
    pub prune_log_prob: f32,
    /// Added (natural-log units) to the score of a word outside the LM's
    /// vocabulary and of a partial word that begins none of its words;
    /// unused without an LM. Negative values favour vocabulary words.
    pub unk_offset: f64,
    /// Score (natural-log units, at most 0) of each letter of such a word:
    /// what makes a long unknown word cost more than a short one.
    pub unk_letter_score: f64,
}

impl Default for BeamSearchDecoder<'_> {
    fn default() -> Self {
        BeamSearchDecoder {
            beam_width: 32,
            alpha: 0.0,
            beta: 0.0,
            lm: None,
            prune_log_prob: -30.0,
            unk_offset: DEFAULT_UNK_OFFSET,
            unk_letter_score: DEFAULT_UNK_LETTER_SCORE,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Beam {
    pb: f64,
    pnb: f64,
    /// LM + bonus score of the completed words.
    lm: f64,
}

fn lse(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

impl BeamSearchDecoder<'_> {
    fn words_of(prefix: &[usize]) -> Result<Vec<String>> {
        Ok(labels_to_text(prefix)?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// Score of appending the last word of `words` (LM + bonus).
    fn word_score(&self, words: &[String], end: bool) -> f64 {
        let mut s = 0.0;
        if let Some(lm) = self.lm {
            let mut hist: Vec<&str> = vec![BOS];
            hist.extend(words.iter().map(String::as_str));
            if let Some((w, h)) = hist.split_last() {
                if !words.is_empty() && !end {
                    s += if lm.contains(w) {
                        self.alpha * lm.ln_prob(h, w)
                    } else if lm.has_unk() {
                        self.alpha * lm.ln_prob(h, w) + self.spelling_score(w)
                    } else {
                        self.alpha * lm.min_unigram_log10() * std::f64::consts::LN_10
                            + self.spelling_score(w)
                    };
                }
            }
            if end {
                s += self.alpha * lm.ln_prob(&hist, EOS);
            }
        }
        if !words.is_empty() && !end {
            s += self.beta;
        }
        s
    }

    /// The score of spelling out an unknown word (or partial word).
    fn spelling_score(&self, word: &str) -> f64 {
        self.unk_offset + self.unk_letter_score * word.chars().count() as f64
    }

    /// The penalty of the partial word at the end of `prefix` (the
    /// letters after its last space) when it begins no vocabulary word.
    fn partial_score(&self, prefix: &[usize]) -> Result<f64> {
        let Some(lm) = self.lm else {
            return Ok(0.0);
        };
        let start = prefix
            .iter()
            .rposition(|&l| l == SPACE)
            .map_or(0, |i| i + 1);
        if start == prefix.len() {
            return Ok(0.0);
        }
        let partial = labels_to_text(&prefix[start..])?;
        if lm.is_word_prefix(&partial) {
            return Ok(0.0);
        }
        Ok(self.spelling_score(&partial))
    }

    /// Checks the settings: `beam_width` in `[1, 10000]` ([`MAX_BEAM`]),
    /// `alpha` in `[0, 1000]`, `beta` in `[-1000, 1000]`, `prune_log_prob`
    /// in `[-1000, 0]`, `unk_offset` in `[-1000, 1000]`, `unk_letter_score`
    /// in `[-1000, 0]`, all finite.
    pub fn validate(&self) -> Result<()> {
        let r = |e| Error::range("BeamSearchDecoder", e);
        check("beam_width", self.beam_width, 1..=MAX_BEAM).map_err(r)?;
        check_number("alpha", self.alpha, 0.0..=MAX_WEIGHT).map_err(r)?;
        check_number("beta", self.beta, -MAX_WEIGHT..=MAX_WEIGHT).map_err(r)?;
        check_number_f32("prune_log_prob", self.prune_log_prob, -1000.0..=0.0).map_err(r)?;
        check_number("unk_offset", self.unk_offset, -MAX_WEIGHT..=MAX_WEIGHT).map_err(r)?;
        check_number("unk_letter_score", self.unk_letter_score, -MAX_WEIGHT..=0.0).map_err(r)?;
        Ok(())
    }

    /// The best transcripts with their total scores, best first (at most
    /// `beam_width`).
    pub fn decode_n(&self, log_probs: ArrayView2<'_, f32>) -> Result<Vec<(String, f64)>> {
        check_classes("BeamSearchDecoder", &log_probs)?;
        self.validate()?;
        let ninf = f64::NEG_INFINITY;
        let mut beams: HashMap<Vec<usize>, Beam> = HashMap::new();
        beams.insert(
            Vec::new(),
            Beam {
                pb: 0.0,
                pnb: ninf,
                lm: 0.0,
            },
        );
        for row in log_probs.outer_iter() {
            let mut next: HashMap<Vec<usize>, Beam> = HashMap::new();
            let cands: Vec<usize> = (0..row.len())
                .filter(|&c| c == BLANK || row[c] >= self.prune_log_prob)
                .collect();
            for (prefix, b) in &beams {
                let total = lse(b.pb, b.pnb);
                let last = prefix.last().copied();
                for &c in &cands {
                    let p = row[c] as f64;
                    let mut add = |key: Vec<usize>, pb: f64, pnb: f64, lm: f64| {
                        let e = next.entry(key).or_insert(Beam {
                            pb: ninf,
                            pnb: ninf,
                            lm,
                        });
                        e.pb = lse(e.pb, pb);
                        e.pnb = lse(e.pnb, pnb);
                    };
                    if c == BLANK {
                        add(prefix.clone(), total + p, ninf, b.lm);
                    } else if c == SPACE && (last.is_none() || last == Some(SPACE)) {
                        // no leading or double spaces: the frame acts like a blank
                        add(prefix.clone(), total + p, ninf, b.lm);
                    } else if Some(c) == last {
                        add(prefix.clone(), ninf, b.pnb + p, b.lm);
                        let mut ext = prefix.clone();
                        ext.push(c);
                        add(ext, ninf, b.pb + p, b.lm);
                    } else {
                        let mut lm = b.lm;
                        if c == SPACE {
                            lm += self.word_score(&Self::words_of(prefix)?, false);
                        }
                        let mut ext = prefix.clone();
                        ext.push(c);
                        add(ext, ninf, total + p, lm);
                    }
                }
            }
            let mut ranked: Vec<(f64, Vec<usize>, Beam)> = next
                .into_iter()
                .map(|(prefix, b)| {
                    let partial = self.partial_score(&prefix)?;
                    Ok((lse(b.pb, b.pnb) + b.lm + partial, prefix, b))
                })
                .collect::<Result<_>>()?;
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            ranked.truncate(self.beam_width);
            beams = ranked.into_iter().map(|(_, p, b)| (p, b)).collect();
        }
        let mut finals = Vec::with_capacity(beams.len());
        for (prefix, b) in beams {
            let words = Self::words_of(&prefix)?;
            let mut score = lse(b.pb, b.pnb) + b.lm;
            if prefix.last().is_some_and(|&l| l != SPACE) {
                // the last word is complete at the end
                score += self.word_score(&words, false);
            }
            score += self.word_score(&words, true);
            finals.push((words.join(" "), score));
        }
        finals.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(finals)
    }

    /// The best transcript.
    pub fn decode(&self, log_probs: ArrayView2<'_, f32>) -> Result<String> {
        Ok(self
            .decode_n(log_probs)?
            .into_iter()
            .next()
            .map(|(t, _)| t)
            .unwrap_or_default())
    }
}
