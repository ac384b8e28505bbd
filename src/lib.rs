//! Kiln: a distributed deep learning runtime. This facade re-exports the
//! workspace crates and holds what joins them:
//! * [`jobs`]: the job model (every workload is a registered job kind with
//!   serializable settings: digits, Deep Speech 2, SSD, word count, or a
//!   user's own) and the runner a driver uses for submitted jobs;
//! * [`training`]: the one generic training loop every training kind runs
//!   in, and the bridge from kiln-nn objectives and optimizers to the
//!   runtime's trainer;
//! * [`output_paths`]: output paths checked writable before work starts;
//! * [`cli`]: the `kiln` commands as library functions that tests call.

pub use kiln_detection as detection;
pub use kiln_nn as nn;
pub use kiln_runtime as runtime;
pub use kiln_speech as speech;

pub mod allocator;
pub mod cli;
pub mod digits;
pub mod jobs;
pub mod model_files;
pub mod output_paths;
pub mod tensorboard;
pub mod training;

/// Prints the build's version, matrix-multiply backend and thread count.
pub fn print_info() {
    println!("kiln {}", env!("CARGO_PKG_VERSION"));
    println!("matmul backend: {}", kiln_nn::matmul::backend_name());
    println!("compute threads: {}", rayon::current_num_threads());
}
