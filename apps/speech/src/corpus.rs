//! LibriSpeech-layout corpora:
//! `<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` with one
//! `<utterance-id> TRANSCRIPT` line per utterance, and the audio of each in
//! `<utterance-id>.flac` beside it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_nn::bad_files::is_file_id;
use rayon::prelude::*;

use crate::audio::{read_audio_at, Audio};
use crate::error::{Error, Result};

/// One utterance of a corpus listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Utterance {
    /// `<speaker>-<chapter>-<utt>`.
    pub id: String,
    /// Its audio file.
    pub audio_path: PathBuf,
    /// The transcript as written in the `.trans.txt` file.
    pub transcript: String,
}

/// An utterance with its audio loaded.
#[derive(Debug, Clone)]
pub struct LoadedUtterance {
    /// The listing entry.
    pub utterance: Utterance,
    /// Its audio (mono, at the requested rate).
    pub audio: Audio,
}

/// A file that could not be used, with the reason.
pub type BadFile = (PathBuf, Error);

/// What [`read_corpus`] loaded and what it skipped.
#[derive(Debug)]
pub struct CorpusReport {
    /// Utterances loaded, sorted by id.
    pub utterances: Vec<LoadedUtterance>,
    /// Files skipped with the reason (only when skipping bad files).
    pub skipped: Vec<BadFile>,
}

/// Options of [`read_corpus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorpusOptions {
    /// Sample rate to resample every file to.
    pub sample_rate: u32,
    /// Skip unreadable files (and transcript lines without audio) and report
    /// them instead of failing.
    pub skip_bad: bool,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            sample_rate: 16_000,
            skip_bad: false,
        }
    }
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// Parses one `.trans.txt` file into `(id, transcript)` pairs.
pub fn parse_transcripts(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_transcript_text(path, &text)
}

/// Parses `<id> TRANSCRIPT` lines (blank lines skipped); `path` names the
/// source in errors.
pub fn parse_transcript_text(path: &Path, text: &str) -> Result<Vec<(String, String)>> {
    Ok(parse_numbered(path, text)?
        .into_iter()
        .map(|(_, id, t)| (id, t))
        .collect())
}

/// Like [`parse_transcript_text`], with each entry's 1-based line number.
pub(crate) fn parse_numbered(path: &Path, text: &str) -> Result<Vec<(usize, String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (id, rest) = match line.split_once(char::is_whitespace) {
            Some((id, rest)) => (id, rest.trim()),
            None => (line, ""),
        };
        if id.is_empty() {
            return Err(Error::parse(path, i + 1, "missing utterance id"));
        }
        out.push((
            i + 1,
            id.to_string(),
            rest.split_whitespace().collect::<Vec<_>>().join(" "),
        ));
    }
    Ok(out)
}

/// Lists a split's utterances from its `*/*/*.trans.txt` files, sorted by
/// id. Transcript files that do not parse, entries without a transcript or
/// whose id is not a file name, and entries whose audio file is missing
/// are an error, or with `skip_bad` are returned in the second list. Two
/// entries with one id are always an error naming both.
pub fn list_utterances(split_dir: &Path, skip_bad: bool) -> Result<(Vec<Utterance>, Vec<BadFile>)> {
    let mut utts = Vec::new();
    let mut bad = Vec::new();
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for speaker in sorted_dirs(split_dir)? {
        if !speaker.is_dir() {
            continue;
        }
        for chapter in sorted_dirs(&speaker)? {
            if !chapter.is_dir() {
                continue;
            }
            for file in sorted_dirs(&chapter)? {
                let is_trans = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".trans.txt"));
                if !is_trans {
                    continue;
                }
                let entries = match std::fs::read_to_string(&file)
                    .map_err(|e| Error::io(&file, e))
                    .and_then(|text| parse_numbered(&file, &text))
                {
                    Ok(p) => p,
                    Err(e) if skip_bad => {
                        bad.push((file.clone(), e));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for (line, id, transcript) in entries {
                    if let Some((first, first_line)) = seen.get(&id) {
                        return Err(Error::DuplicateId {
                            id,
                            first: first.clone(),
                            first_line: *first_line,
                            second: file.clone(),
                            second_line: line,
                        });
                    }
                    seen.insert(id.clone(), (file.clone(), line));
                    let refused = if !is_file_id(&id) {
                        Some((
                            file.clone(),
                            Error::parse(
                                &file,
                                line,
                                format!("utterance id {id:?} is not a file name"),
                            ),
                        ))
                    } else if transcript.is_empty() {
                        Some((
                            file.clone(),
                            Error::parse(&file, line, format!("utterance {id} has no transcript")),
                        ))
                    } else {
                        let audio_path = chapter.join(format!("{id}.flac"));
                        if audio_path.is_file() {
                            utts.push(Utterance {
                                id,
                                audio_path,
                                transcript,
                            });
                            None
                        } else {
                            let err = Error::audio(
                                &audio_path,
                                format!(
                                    "missing audio for utterance {id} listed in {}",
                                    file.display()
                                ),
                            );
                            Some((audio_path, err))
                        }
                    };
                    match refused {
                        Some(b) if skip_bad => bad.push(b),
                        Some((_, e)) => return Err(e),
                        None => {}
                    }
                }
            }
        }
    }
    utts.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((utts, bad))
}

/// Lists and loads a split (in parallel), resampling to
/// `options.sample_rate`.
pub fn read_corpus(split_dir: &Path, options: CorpusOptions) -> Result<CorpusReport> {
    let (utts, mut skipped) = list_utterances(split_dir, options.skip_bad)?;
    let loaded: Vec<(Utterance, Result<Audio>)> = utts
        .into_par_iter()
        .map(|u| {
            let a = read_audio_at(&u.audio_path, options.sample_rate);
            (u, a)
        })
        .collect();
    let mut utterances = Vec::with_capacity(loaded.len());
    for (utterance, audio) in loaded {
        match audio {
            Ok(audio) => utterances.push(LoadedUtterance { utterance, audio }),
            Err(e) if options.skip_bad => skipped.push((utterance.audio_path, e)),
            Err(e) => return Err(e),
        }
    }
    Ok(CorpusReport {
        utterances,
        skipped,
    })
}
