//! Kiln cluster runtime: driver, executor and parameter actors over
//! authenticated QUIC, RDD-like datasets and a fault-tolerant scheduler.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod checkpoint;
