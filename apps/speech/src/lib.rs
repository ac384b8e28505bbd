//! Deep Speech 2 on Kiln: audio readers, feature transformers, decoders
//! with a language model, WER/CER. (The CTC loss is in `kiln_nn`.)
//!
//! Pipeline: [`audio::read_audio_at`] (WAV/FLAC, resampled to 16 kHz) or
//! [`corpus::read_corpus`] (LibriSpeech layout) -> [`segment::TimeSegmenter`]
//! -> [`features::Windower`] -> [`features::Spectrogram`] ->
//! optional [`mel::MelFilterBank`] -> [`features::LogCompress`] ->
//! [`features::Normalize`]; transcripts through
//! [`text::TranscriptVectorizer`]; model outputs through
//! [`decoder::best_path`] or [`decoder::BeamSearchDecoder`] with an
//! [`lm::NgramLm`]; the acoustic model is [`ds2::Ds2`], built from a
//! TOML [`ds2::Ds2Config`]; scores with [`metrics`] and [`score`].
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod alignment;
pub mod audio;
pub mod augment;
pub mod checked;
pub mod corpus;
pub mod decoder;
pub mod ds2;
pub mod error;
pub mod features;
pub mod lm;
pub mod mel;
pub mod metrics;
pub mod objective;
pub mod pipeline;
pub mod resample;
pub mod score;
pub mod segment;
pub mod text;
pub mod tune;
pub mod wave_augment;

pub use error::{Error, Result};
