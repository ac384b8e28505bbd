//! Word and character error rates with the standard Levenshtein
//! definitions: the minimum number of substitutions, deletions and
//! insertions turning the reference into the hypothesis, summed over
//! utterances and divided by the total reference length (words, or
//! characters including spaces). Both texts are first normalised by
//! [`normalize_transcript`] (upper case, whitespace runs as one space, ends
//! trimmed), so every scorer (`kiln speech eval`, `kiln speech score`,
//! training's dev WER) compares the same way whatever the case of the
//! references.

use serde::Serialize;

use crate::text::normalize_transcript;

/// Levenshtein distance between two sequences.
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(x != y);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Accumulated edit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ErrorRate {
    /// Edits summed over utterances.
    pub errors: usize,
    /// Reference length summed over utterances.
    pub reference_len: usize,
}

impl ErrorRate {
    /// `errors / reference_len` (0 for an empty reference with no errors,
    /// infinity for errors against an empty reference).
    pub fn rate(&self) -> f64 {
        if self.reference_len == 0 {
            if self.errors == 0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            self.errors as f64 / self.reference_len as f64
        }
    }
}

/// Word edits of one utterance (texts normalised by [`normalize_transcript`]).
pub fn word_errors(reference: &str, hypothesis: &str) -> ErrorRate {
    let (reference, hypothesis) = (
        normalize_transcript(reference),
        normalize_transcript(hypothesis),
    );
    let r: Vec<&str> = reference.split_whitespace().collect();
    let h: Vec<&str> = hypothesis.split_whitespace().collect();
    ErrorRate {
        errors: edit_distance(&r, &h),
        reference_len: r.len(),
    }
}

/// Character edits of one utterance (texts normalised by
/// [`normalize_transcript`]: whitespace runs count as one space, ends
/// trimmed, case folded).
pub fn char_errors(reference: &str, hypothesis: &str) -> ErrorRate {
    let norm = |s: &str| -> Vec<char> { normalize_transcript(s).chars().collect() };
    let (r, h) = (norm(reference), norm(hypothesis));
    ErrorRate {
        errors: edit_distance(&r, &h),
        reference_len: r.len(),
    }
}

/// Corpus WER over (reference, hypothesis) pairs.
pub fn wer<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> ErrorRate {
    pairs.into_iter().fold(ErrorRate::default(), |acc, (r, h)| {
        let e = word_errors(r, h);
        ErrorRate {
            errors: acc.errors + e.errors,
            reference_len: acc.reference_len + e.reference_len,
        }
    })
}

/// Corpus CER over (reference, hypothesis) pairs.
pub fn cer<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> ErrorRate {
    pairs.into_iter().fold(ErrorRate::default(), |acc, (r, h)| {
        let e = char_errors(r, h);
        ErrorRate {
            errors: acc.errors + e.errors,
            reference_len: acc.reference_len + e.reference_len,
        }
    })
}

/// Corpus WER and CER of (reference, hypothesis) pairs: what `kiln speech
/// eval`, `kiln speech score` and training's dev scores all report.
pub fn error_rates<'a>(pairs: &[(&'a str, &'a str)]) -> (ErrorRate, ErrorRate) {
    (wer(pairs.iter().copied()), cer(pairs.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        assert_eq!(edit_distance(b"kitten", b"sitting"), 3);
        assert_eq!(edit_distance::<u8>(b"", b"abc"), 3);
        // 1 substitution + 1 deletion over 4 words
        let e = word_errors("THE CAT SAT DOWN", "THE BAT SAT");
        assert_eq!((e.errors, e.reference_len), (2, 4));
        // corpus: (2 + 1) / (4 + 2)
        let w = wer([
            ("THE CAT SAT DOWN", "THE BAT SAT"),
            ("HELLO WORLD", "HELLO WORLD AGAIN"),
        ]);
        assert!((w.rate() - 0.5).abs() < 1e-12);
        // "ABC D" vs "ABD D": 1 substitution over 5 chars
        let c = cer([("ABC D", "ABD  D")]);
        assert!((c.rate() - 0.2).abs() < 1e-12);
        assert_eq!(ErrorRate::default().rate(), 0.0);
    }

    #[test]
    fn case_and_spacing_do_not_count_as_errors() {
        let w = wer([("the cat  sat", "THE CAT SAT"), (" Hello ", "HELLO")]);
        assert_eq!((w.errors, w.reference_len), (0, 4));
        let c = cer([("the cat  sat", "THE CAT SAT")]);
        assert_eq!((c.errors, c.reference_len), (0, 11));
        let w = wer([("the cat", "THE BAT")]);
        assert_eq!((w.errors, w.reference_len), (1, 2));
    }
}
