//! Deep Speech 2 on Kiln: audio readers, feature transformers, the DS2 model,
//! CTC training, decoders with a language model, WER/CER.
//!
//! Not yet built: see the Deep Speech 2 issue.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]
