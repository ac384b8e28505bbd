//! Data-parallel training on the cluster, independent of any model library:
//! models plug in through [`GradientWorker`] (flat `f32` weights in, summed
//! gradients out) registered with [`crate::Registry::register_trainer`],
//! optimizers through [`ShardOptimizer`]. [`DistributedTrainer`] runs
//! synchronous iterations with parameters sharded over
//! [`ParameterShards`] actors, checkpoints and resume.

mod batches;
mod blob_pull;
mod checkpointing;
mod distributed;
mod executor_shards;
mod hosted;
mod iteration_timing;
mod shard;
mod worker;

pub use batches::SortedEpochs;
pub use checkpointing::{CheckpointPolicy, Position};
pub use distributed::{
    DistributedTrainer, IterationReport, LearningRate, ResumeInfo, ShardPlacement, TrainSpec,
    BUFFERS_BLOB,
};
pub(crate) use hosted::{slice_by_shard, ParamHost, ShardOp};
pub use hosted::{OptimizerMaker, OptimizerSpec};
pub use shard::{shard_ranges, OptimizerFactory, ParameterShards, ShardOptimizer};
pub use worker::{bytes_to_f32, BatchStats, GradientWorker, TaskTiming};
pub(crate) use worker::{run_request, TaskSide, TrainRequest, TrainerEntry};
