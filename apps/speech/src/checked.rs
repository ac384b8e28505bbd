//! A split read and checked in full before work starts, the same way for
//! training, evaluation and transcription: every listed utterance's audio
//! decoded (WAV or FLAC, finite samples, at most
//! [`crate::audio::MAX_AUDIO_SECONDS`]) and its transcript in the
//! alphabet. Unusable files and entries (see
//! [`crate::corpus::list_utterances`]) are counted, named, and held to the
//! caller's `max_bad_share`.

use std::path::Path;

use kiln_nn::bad_files::BadFiles;
use rayon::prelude::*;

use crate::audio::{read_audio, AudioLength};
use crate::corpus::{list_utterances, Utterance};
use crate::error::{Error, Result};
use crate::pipeline::{Example, SAMPLE_RATE};
use crate::text::TranscriptVectorizer;

/// The usable utterances of a split, each with what checking it made.
#[derive(Debug, Clone)]
pub struct CheckedSplit<T> {
    /// Usable utterances, sorted by id.
    pub items: Vec<(Utterance, T)>,
    /// The `SKIPPING` line that counts and names the files left out, if
    /// any were (within the allowed share).
    pub skipped: Option<String>,
}

/// Decodes every utterance of `split` and encodes its transcript, keeping
/// only the audio's length: what a training run checks on its driver
/// before it starts (its executors decode again).
pub fn checked_utterances(
    split: &Path,
    max_bad_share: f64,
    setting: &str,
) -> Result<CheckedSplit<AudioLength>> {
    check_split(split, max_bad_share, setting, |u| {
        let audio = read_audio(&u.audio_path)?;
        TranscriptVectorizer.encode(&u.transcript)?;
        Ok(AudioLength {
            samples: audio.samples.len() as u64,
            sample_rate: audio.sample_rate,
        })
    })
}

/// Every utterance of `split` as an example (audio at 16 kHz, features
/// and labels): what evaluation and training's dev scores use.
pub fn checked_examples(
    split: &Path,
    max_bad_share: f64,
    setting: &str,
) -> Result<CheckedSplit<Example>> {
    check_split(split, max_bad_share, setting, |u| {
        let audio = crate::audio::read_audio_at(&u.audio_path, SAMPLE_RATE)?;
        Example::new(&u.id, &u.transcript, &audio)
    })
}

fn check_split<T: Send>(
    split: &Path,
    max_bad_share: f64,
    setting: &str,
    check: impl Fn(&Utterance) -> Result<T> + Sync,
) -> Result<CheckedSplit<T>> {
    let (listed, refused) = list_utterances(split, true)?;
    let mut bad = BadFiles::new(
        format!("split {}", split.display()),
        listed.len() + refused.len(),
    );
    for (path, e) in &refused {
        bad.push(path, e);
    }
    let checked: Vec<(Utterance, Result<T>)> = listed
        .into_par_iter()
        .map(|u| {
            let r = check(&u);
            (u, r)
        })
        .collect();
    let mut items = Vec::with_capacity(checked.len());
    for (u, r) in checked {
        match r {
            Ok(t) => items.push((u, t)),
            Err(e) => bad.push(&u.audio_path, e),
        }
    }
    let skipped = bad
        .check(max_bad_share, setting)
        .map_err(kiln_nn::Error::from)?;
    if items.is_empty() {
        return Err(Error::NoUsableUtterance {
            split: split.to_path_buf(),
        });
    }
    Ok(CheckedSplit { items, skipped })
}
