//! SSD object detection on Kiln: VOC data, prior boxes, MultiBox loss, NMS, mAP.
//!
//! Not yet built: see the SSD issue.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]
