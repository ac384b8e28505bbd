//! Model interop for Kiln: ONNX models imported into kiln-nn graphs that
//! Kiln runs, fine-tunes on a cluster and saves.
//!
//! [`import_file`] reads an `.onnx` file (decoded with the ONNX schema's
//! own message types, from the `onnx-protobuf` crate), converts each node
//! to a Kiln layer ([`ops::SUPPORTED`] lists the operators), folds the
//! shape arithmetic exporters emit, and returns an [`ImportedModel`]:
//! a [`kiln_nn::layers::GraphConfig`] and its tensors. An operator,
//! attribute or layout Kiln cannot represent is an error naming the node,
//! never a silently different model.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod attributes;
pub mod constant;
pub mod decode;
pub mod error;
pub mod export;
pub mod import;
pub mod ops;

pub use error::{Error, Result};
pub use import::{import_file, import_model, ImportedModel, ModelInput, IMPORTED_FROM_KEY, OPSETS};
