//! The character alphabet and the TranscriptVectorizer.
//!
//! DS2's 29 symbols: blank = 0, space = 1, apostrophe = 2, `a`..`z` = 3..28.
//! Transcripts are upper case in LibriSpeech; lower-case letters are folded
//! to the same labels. Decoded text is upper case.

use crate::error::{Error, Result};
use crate::features::Transformer;

/// Label of the CTC blank.
pub const BLANK: usize = 0;
/// Label of the space.
pub const SPACE: usize = 1;
/// Label of the apostrophe.
pub const APOSTROPHE: usize = 2;
/// Number of labels (blank included).
pub const ALPHABET_SIZE: usize = 29;

/// The label of a character, if it is in the alphabet.
pub fn label_of(c: char) -> Option<usize> {
    match c {
        ' ' => Some(SPACE),
        '\'' => Some(APOSTROPHE),
        'A'..='Z' => Some(3 + (c as usize - 'A' as usize)),
        'a'..='z' => Some(3 + (c as usize - 'a' as usize)),
        _ => None,
    }
}

/// The character of a non-blank label (upper case).
pub fn char_of(label: usize) -> Result<char> {
    match label {
        SPACE => Ok(' '),
        APOSTROPHE => Ok('\''),
        3..=28 => Ok((b'A' + (label - 3) as u8) as char),
        _ => Err(Error::UnknownLabel {
            index: label,
            size: ALPHABET_SIZE,
        }),
    }
}

/// The one normalisation every WER/CER scorer applies to references and
/// hypotheses alike (`kiln speech eval`, `kiln speech score`, training's
/// `dev_wer`/`dev_cer`): upper case (the alphabet folds case, and decoded
/// text is upper case), whitespace runs as one space, ends trimmed.
pub fn normalize_transcript(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_uppercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Labels to text (blanks are skipped).
pub fn labels_to_text(labels: &[usize]) -> Result<String> {
    labels
        .iter()
        .filter(|&&l| l != BLANK)
        .map(|&l| char_of(l))
        .collect()
}

/// Turns transcripts into label sequences (no blanks). Runs of whitespace
/// become one space; leading and trailing whitespace is dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranscriptVectorizer;

impl TranscriptVectorizer {
    /// The labels of `text`, or an error naming every unknown character.
    pub fn encode(&self, text: &str) -> Result<Vec<usize>> {
        let norm = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut unknown = String::new();
        let mut out = Vec::with_capacity(norm.len());
        for c in norm.chars() {
            match label_of(c) {
                Some(l) => out.push(l),
                None => {
                    if !unknown.contains(c) {
                        unknown.push(c);
                    }
                }
            }
        }
        if !unknown.is_empty() {
            return Err(Error::UnknownCharacters {
                text: text.to_string(),
                chars: unknown,
            });
        }
        Ok(out)
    }
}

impl Transformer for TranscriptVectorizer {
    type Input = String;
    type Output = Vec<usize>;

    fn transform(&self, text: String) -> Result<Vec<usize>> {
        self.encode(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes() {
        let v = TranscriptVectorizer.encode("  DIDN'T  go ").unwrap();
        assert_eq!(v[..4], [6, 11, 6, 16]);
        assert_eq!(v[4], APOSTROPHE);
        assert_eq!(labels_to_text(&v).unwrap(), "DIDN'T GO");
        assert_eq!(label_of('Z'), Some(28));
    }

    #[test]
    fn names_unknown_characters() {
        let e = TranscriptVectorizer.encode("HI, 2 YOU!").unwrap_err();
        match e {
            Error::UnknownCharacters { chars, .. } => assert_eq!(chars, ",2!"),
            other => panic!("{other}"),
        }
        assert!(char_of(29).is_err());
    }
}
