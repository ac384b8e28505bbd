//! The crate's error type: every variant says what went wrong and where.

use std::path::PathBuf;

/// Errors raised by kiln-nn.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A layer or criterion got an input whose shape it cannot take.
    #[error("{op}: shape mismatch: expected {expected}, got {actual:?}")]
    Shape {
        /// The layer or operation that refused the input (e.g. `Linear(784->10)`).
        op: String,
        /// What the operation expected, in words (e.g. `[N, 784]`).
        expected: String,
        /// The shape it got.
        actual: Vec<usize>,
    },
    /// Two operands whose shapes must agree do not.
    #[error("{op}: shapes {lhs:?} and {rhs:?} do not agree")]
    ShapeMismatch {
        /// The operation.
        op: String,
        /// Left operand's shape.
        lhs: Vec<usize>,
        /// Right operand's shape.
        rhs: Vec<usize>,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("{what}: invalid configuration: {reason}")]
    Config {
        /// The layer, optimizer or component being configured.
        what: String,
        /// Why the configuration was refused.
        reason: String,
    },
    /// A target or index value is outside its valid range.
    #[error("{op}: invalid value: {reason}")]
    InvalidValue {
        /// The operation.
        op: String,
        /// Why.
        reason: String,
    },
    /// `backward` was called before `forward` (nothing cached).
    #[error("{op}: backward called before forward")]
    NoForward {
        /// The layer.
        op: String,
    },
    /// A serialized model does not fit the model it is loaded into.
    #[error("tensor {name:?}: {reason}")]
    Tensor {
        /// The tensor's qualified name (e.g. `0.weight`).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A model or data file could not be parsed.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting outside its allowed range (names the setting and the range).
    #[error("{what}: {range}")]
    Range {
        /// The component being configured (e.g. `LrSchedule`).
        what: String,
        /// The setting, its value and the allowed range.
        range: crate::bounds::OutOfRange,
    },
    /// More of a dataset's files are unusable than the command accepts.
    #[error(transparent)]
    BadFiles(#[from] crate::bad_files::TooManyBadFiles),
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A shape error for operation `op` that expected `expected` and got `actual`.
    pub fn shape(op: impl Into<String>, expected: impl Into<String>, actual: &[usize]) -> Self {
        Error::Shape {
            op: op.into(),
            expected: expected.into(),
            actual: actual.to_vec(),
        }
    }

    /// A configuration error for component `what`.
    pub fn config(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A range error of component `what`.
    pub fn range(what: impl Into<String>, range: crate::bounds::OutOfRange) -> Self {
        Error::Range {
            what: what.into(),
            range,
        }
    }

    /// An invalid-value error for operation `op`.
    pub fn invalid(op: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidValue {
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
