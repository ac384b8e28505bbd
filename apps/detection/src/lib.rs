//! SSD object detection on Kiln: VOC data, augmentation, prior boxes,
//! SSD300/SSD512 (VGG16) and small models as kiln-nn graphs, MultiBox loss,
//! single-process training, detection output (NMS), VOC mAP, prediction
//! and drawing.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod augment;
pub mod boxes;
pub mod detect;
pub mod draw;
pub mod error;
pub mod eval;
pub mod image_file;
pub mod infer;
pub mod model;
pub mod multibox;
pub mod objective;
pub mod priors;
pub mod train;
pub mod voc;

pub use error::{Error, Result};
