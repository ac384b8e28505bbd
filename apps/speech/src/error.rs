//! The crate's error type: every variant names what went wrong and where
//! (file, line).

use std::path::PathBuf;

/// Errors raised by kiln-speech.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An audio file is corrupt, truncated or in an unsupported format.
    #[error("{path}: audio: {reason}")]
    Audio {
        /// The audio file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A text file (transcripts, ARPA model) has a malformed line.
    #[error("{path}:{line}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// Two entries of a corpus share an utterance id.
    #[error("utterance id {id} appears twice: {}:{first_line} and {}:{second_line}", first.display(), second.display())]
    DuplicateId {
        /// The id.
        id: String,
        /// The file of its first entry.
        first: PathBuf,
        /// That entry's 1-based line.
        first_line: usize,
        /// The file of the second entry.
        second: PathBuf,
        /// That entry's 1-based line.
        second_line: usize,
    },
    /// A split lists no utterance that can be used.
    #[error("{}: no usable utterance", split.display())]
    NoUsableUtterance {
        /// The split's directory.
        split: PathBuf,
    },
    /// A transcript holds characters outside the alphabet.
    #[error("transcript {text:?}: characters not in the alphabet: {chars:?}")]
    UnknownCharacters {
        /// The transcript.
        text: String,
        /// The offending characters, in order of first appearance.
        chars: String,
    },
    /// A label index outside the alphabet.
    #[error("label {index} is not below the alphabet size {size}")]
    UnknownLabel {
        /// The label.
        index: usize,
        /// The alphabet size.
        size: usize,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("{what}: invalid configuration: {reason}")]
    Config {
        /// The component being configured.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// A setting outside its allowed range (names the setting, its value
    /// and the range).
    #[error("{what}: {range}")]
    Range {
        /// The component being configured (e.g. `Ds2Config`).
        what: String,
        /// The setting, its value and the allowed range.
        range: kiln_nn::bounds::OutOfRange,
    },
    /// A configuration file was refused (unknown key, bad value, out of
    /// range): the file and why.
    #[error("{}: {error}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: Box<Error>,
    },
    /// An input array has a shape the operation cannot take.
    #[error("{op}: expected {expected}, got shape {actual:?}")]
    Shape {
        /// The operation.
        op: String,
        /// What it expected.
        expected: String,
        /// What it got.
        actual: Vec<usize>,
    },
    /// An error from a kiln-nn layer, criterion or model file.
    #[error(transparent)]
    Nn(#[from] kiln_nn::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An audio error on `path`.
    pub fn audio(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Audio {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A parse error at `path`:`line`.
    pub fn parse(path: impl Into<PathBuf>, line: usize, reason: impl Into<String>) -> Self {
        Error::Parse {
            path: path.into(),
            line,
            reason: reason.into(),
        }
    }

    /// A range error of component `what`.
    pub fn range(what: impl Into<String>, range: kiln_nn::bounds::OutOfRange) -> Self {
        Error::Range {
            what: what.into(),
            range,
        }
    }

    /// A configuration error for `what`.
    pub fn config(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
