//! `kiln speech score`: WER and CER of a hypothesis file against a
//! reference file, both in LibriSpeech `trans.txt` format
//! (`<utterance-id> TRANSCRIPT` per line).
//!
//! Utterances are matched by id. A reference utterance missing from the
//! hypotheses counts as an empty hypothesis (all deletions) and is listed
//! in `missing`; hypothesis ids absent from the reference are listed in
//! `extra` and not scored. Texts are normalised as every scorer does
//! ([`crate::text::normalize_transcript`], inside [`crate::metrics`]).

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::corpus::parse_numbered;
use crate::error::{Error, Result};
use crate::metrics::{char_errors, word_errors, ErrorRate};

/// Result of [`score_files`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreReport {
    /// Reference utterances scored.
    pub utterances: usize,
    /// Word error rate (errors / reference words).
    pub wer: f64,
    /// Character error rate (errors / reference characters).
    pub cer: f64,
    /// Word edit counts.
    pub words: ErrorRate,
    /// Character edit counts.
    pub chars: ErrorRate,
    /// Reference ids with no hypothesis (scored as empty).
    pub missing: Vec<String>,
    /// Hypothesis ids not in the reference (not scored).
    pub extra: Vec<String>,
}

/// Scores `(id, text)` lists.
pub fn score_pairs(reference: &[(String, String)], hypothesis: &[(String, String)]) -> ScoreReport {
    let hyp: HashMap<&str, &str> = hypothesis
        .iter()
        .map(|(i, t)| (i.as_str(), t.as_str()))
        .collect();
    let refs: std::collections::HashSet<&str> = reference.iter().map(|(i, _)| i.as_str()).collect();
    let mut words = ErrorRate::default();
    let mut chars = ErrorRate::default();
    let mut missing = Vec::new();
    for (id, r) in reference {
        let h = match hyp.get(id.as_str()) {
            Some(h) => h.to_string(),
            None => {
                missing.push(id.clone());
                String::new()
            }
        };
        let w = word_errors(r, &h);
        let c = char_errors(r, &h);
        words.errors += w.errors;
        words.reference_len += w.reference_len;
        chars.errors += c.errors;
        chars.reference_len += c.reference_len;
    }
    let extra = hypothesis
        .iter()
        .filter(|(i, _)| !refs.contains(i.as_str()))
        .map(|(i, _)| i.clone())
        .collect();
    ScoreReport {
        utterances: reference.len(),
        wer: words.rate(),
        cer: chars.rate(),
        words,
        chars,
        missing,
        extra,
    }
}

/// Reads a `trans.txt`-format file, refusing duplicate ids (naming the
/// line); with `references`, also empty transcripts (a reference with no
/// words cannot be scored against) and a file with no entry.
fn read_unique(path: &Path, references: bool) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let entries = parse_numbered(path, &text)?;
    let mut seen = std::collections::HashMap::new();
    for (line, id, transcript) in &entries {
        if let Some(first) = seen.insert(id.as_str(), *line) {
            return Err(Error::parse(
                path,
                *line,
                format!("duplicate utterance id {id} (first on line {first})"),
            ));
        }
        if references && transcript.is_empty() {
            return Err(Error::parse(
                path,
                *line,
                format!("reference utterance {id} is empty"),
            ));
        }
    }
    if references && entries.is_empty() {
        return Err(Error::parse(path, 1, "no reference utterance"));
    }
    Ok(entries.into_iter().map(|(_, id, t)| (id, t)).collect())
}

/// Reads and scores a reference and a hypothesis `trans.txt` file.
pub fn score_files(reference: &Path, hypothesis: &Path) -> Result<ScoreReport> {
    let r = read_unique(reference, true)?;
    let h = read_unique(hypothesis, false)?;
    Ok(score_pairs(&r, &h))
}

impl ScoreReport {
    /// One human-readable line: `WER x% (e/n) CER y% (e/n) over k utterances`.
    pub fn summary(&self) -> String {
        format!(
            "WER {:.2}% ({}/{}) CER {:.2}% ({}/{}) over {} utterances",
            100.0 * self.wer,
            self.words.errors,
            self.words.reference_len,
            100.0 * self.cer,
            self.chars.errors,
            self.chars.reference_len,
            self.utterances
        )
    }
}
