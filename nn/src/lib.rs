//! Kiln's neural-network library: tensors on ndarray, Torch/BigDL-style
//! modules with explicit forward and backward passes, criterions, optimizers
//! over flat parameter buffers, safetensors serialization and a
//! single-process trainer.
//!
//! Conventions (kept everywhere in the crate):
//! - images are NCHW, sequences are (T, N, F) (time-major, like PyTorch RNNs);
//! - class indices are 0-based and stored as floats in target tensors;
//! - every module caches what its backward pass needs during `forward`, and
//!   `backward(input, grad_output)` accumulates parameter gradients
//!   (`zero_grad` clears them) and returns the gradient of the input.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod bad_files;
pub mod bounds;
pub mod criterion;
pub mod data;
pub mod error;
pub mod gradcheck;
pub mod init;
pub mod layers;
pub mod matmul;
pub mod metrics;
pub mod module;
pub mod npy;
pub mod objective;
pub mod optim;
pub mod serialize;
mod simd;
pub mod summary;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
pub use module::{Module, ModuleExt, Param};
pub use objective::{BatchLoss, Objective};
pub use tensor::{Float, Tensor};
