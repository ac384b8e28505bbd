//! The crate's error type: every variant names the file, the node or the
//! tensor, and what is wrong with it.

use std::path::PathBuf;

/// Errors raised while reading or importing an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed ONNX `ModelProto`.
    #[error("{}: not a valid ONNX model: {reason} at byte {offset} of {len}", path.display())]
    Decode {
        /// The file (or `<bytes>` when decoding from memory).
        path: PathBuf,
        /// Byte offset at which decoding stopped.
        offset: u64,
        /// The file's length in bytes.
        len: usize,
        /// The protobuf decoder's message.
        reason: String,
    },
    /// A model-level field is missing or unsupported (opset, graph, IR version).
    #[error("{}: {field}: {reason}", path.display())]
    Model {
        /// The file.
        path: PathBuf,
        /// The field of the model (e.g. `opset_import`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A node uses an operator Kiln does not import.
    #[error(
        "node {node:?}: operator {op} (domain {domain:?}) is not supported; supported: {supported}"
    )]
    UnsupportedOp {
        /// The node's name (or its first output when unnamed).
        node: String,
        /// The operator type.
        op: String,
        /// The operator's domain (`""` is ONNX's own).
        domain: String,
        /// The operators Kiln imports.
        supported: String,
    },
    /// A node's attribute or input has a value Kiln cannot represent.
    #[error("node {node:?} ({op}): {what}: {reason}")]
    Unsupported {
        /// The node.
        node: String,
        /// The operator type.
        op: String,
        /// The attribute or input concerned (e.g. `attribute auto_pad`).
        what: String,
        /// What is missing or why the value cannot be imported.
        reason: String,
    },
    /// A node is malformed: a missing input, a wrong attribute type, a
    /// shape that does not fit its operator.
    #[error("node {node:?} ({op}): {reason}")]
    Invalid {
        /// The node.
        node: String,
        /// The operator type.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// An initializer or constant tensor cannot be read.
    #[error("tensor {name:?}: {reason}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer of a Kiln model cannot be written as ONNX.
    #[error("exporting layer {layer:?}: {reason}")]
    Export {
        /// The layer's path in the model (`features.0`).
        layer: String,
        /// What cannot be exported.
        reason: String,
    },
    /// Building or loading the converted Kiln model failed.
    #[error("building the imported model: {0}")]
    Nn(#[from] kiln_nn::Error),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
