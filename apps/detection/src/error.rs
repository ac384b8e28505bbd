//! The crate's error type: every variant says what went wrong and where.

use std::path::PathBuf;

/// Errors raised by kiln-detection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An annotation XML file is malformed or misses a required element.
    #[error("{path}: malformed annotation: {reason}")]
    Annotation {
        /// The XML file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An annotation names a class that is not in the class list.
    #[error("{path}: unknown class {name:?} (known: {known})")]
    UnknownClass {
        /// The file that names it.
        path: PathBuf,
        /// The class name.
        name: String,
        /// The known classes, comma-separated.
        known: String,
    },
    /// A box lies outside its image or is empty.
    #[error("{path}: box {index} {bbox:?} is invalid for a {width}x{height} image: {reason}")]
    BadBox {
        /// The annotation file.
        path: PathBuf,
        /// The object's index in the file.
        index: usize,
        /// The box (xmin, ymin, xmax, ymax).
        bbox: [f32; 4],
        /// Image width.
        width: usize,
        /// Image height.
        height: usize,
        /// Why the box is refused.
        reason: String,
    },
    /// An image could not be decoded or encoded.
    #[error("{path}: image: {reason}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's or encoder's message.
        reason: String,
    },
    /// A line of a text file (split list, class list, detections file) is malformed.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
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
        /// The component being configured (e.g. `TrainConfig`).
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
    /// A tensor argument has the wrong shape.
    #[error("{op}: shape mismatch: expected {expected}, got {actual:?}")]
    Shape {
        /// The operation.
        op: String,
        /// What was expected, in words.
        expected: String,
        /// The shape it got.
        actual: Vec<usize>,
    },
    /// A value (label, index) is out of its valid range.
    #[error("{op}: invalid value: {reason}")]
    InvalidValue {
        /// The operation.
        op: String,
        /// Why.
        reason: String,
    },
    /// JSON (de)serialisation failed.
    #[error("{what}: json: {reason}")]
    Json {
        /// What was being (de)serialised.
        what: String,
        /// The serde message.
        reason: String,
    },
    /// An error from kiln-nn.
    #[error(transparent)]
    Nn(#[from] kiln_nn::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Range`] of component `what`.
    pub fn range(what: impl Into<String>, range: kiln_nn::bounds::OutOfRange) -> Self {
        Error::Range {
            what: what.into(),
            range,
        }
    }

    /// An [`Error::Config`].
    pub fn config(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Shape`].
    pub fn shape(op: impl Into<String>, expected: impl Into<String>, actual: &[usize]) -> Self {
        Error::Shape {
            op: op.into(),
            expected: expected.into(),
            actual: actual.to_vec(),
        }
    }

    /// An [`Error::InvalidValue`].
    pub fn invalid(op: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidValue {
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Line`].
    pub fn line(path: impl Into<PathBuf>, line: usize, reason: impl Into<String>) -> Self {
        Error::Line {
            path: path.into(),
            line,
            reason: reason.into(),
        }
    }
}
