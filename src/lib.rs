//! Kiln: a distributed deep learning runtime. This facade re-exports the
//! workspace crates and holds the glue between them (training on the
//! cluster, the CLI's commands as library functions).

pub use kiln_detection as detection;
pub use kiln_nn as nn;
pub use kiln_runtime as runtime;
pub use kiln_speech as speech;
