//! TensorBoard event files, as BigDL's `TrainSummary` and
//! `ValidationSummary` write them: `--tensorboard DIR` on a training job
//! writes its scalars (loss, learning rate, throughput, evaluation
//! metrics) into one run directory per job, which `tensorboard --logdir
//! DIR` shows.
//!
//! The file format: TFRecord framing ([`record`]) around `Event`
//! protocol buffers ([`proto`], encoded by prost).

pub mod proto;
pub mod reader;
pub mod record;
pub mod writer;

pub use reader::{read_scalars, Scalar};
pub use writer::EventWriter;

use std::path::PathBuf;

/// What goes wrong reading or writing an event file.
#[derive(Debug, thiserror::Error)]
pub enum TensorBoardError {
    /// The file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record's framing is broken: a length or data checksum that does
    /// not match, or a record cut short.
    #[error("{}: record at byte {offset}: {reason}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record's data is not an `Event` message.
    #[error("{}: record at byte {offset}: not an Event: {source}", path.display())]
    Event {
        /// The file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
}
