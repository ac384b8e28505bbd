//! SSD object detection on Kiln: VOC data, augmentation, prior boxes,
//! MultiBox loss, detection output (NMS), VOC mAP and drawing.
//!
//! Models (VGG16 SSD300/512 and the small configuration) need the conv
//! layers being added to kiln-nn and are not built yet; see the SSD issue.
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
pub mod multibox;
pub mod priors;
pub mod voc;

pub use error::{Error, Result};
