//! Kiln: a distributed deep learning runtime. This facade re-exports the
//! workspace crates and holds the glue between them (the digits job, the
//! CLI's commands as library functions that tests call).

pub use kiln_detection as detection;
pub use kiln_nn as nn;
pub use kiln_runtime as runtime;
pub use kiln_speech as speech;

pub mod allocator;
pub mod checkpoint_cli;
pub mod cluster_train;
pub mod detect_cli;
pub mod detect_cluster;
pub mod digits_cluster;
pub mod digits_job;
pub mod local_run;
pub mod run_checkpoints;
pub mod run_output;
pub mod shard_placement;
pub mod speech_cli;
pub mod speech_cluster;
pub mod train_cli;

/// Prints the build's version, matrix-multiply backend and thread count.
pub fn print_info() {
    println!("kiln {}", env!("CARGO_PKG_VERSION"));
    println!("matmul backend: {}", kiln_nn::matmul::backend_name());
    println!("compute threads: {}", rayon::current_num_threads());
}
