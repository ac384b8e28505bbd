//! The runtime's one error type.

use std::net::SocketAddr;

/// Everything that can go wrong in kiln-runtime. Variants name what failed
/// and where: the peer address, the executor id, the task.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating or loading certificates failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A user-supplied certificate or key file is unusable (not PEM, an
    /// empty chain, a key that does not match the certificate).
    #[error("certificate setup failed for {path}: {reason}")]
    Certificate {
        /// The file at fault.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A join token could not be parsed.
    #[error("malformed join token: {0}")]
    BadToken(String),
    /// Binding or connecting a QUIC endpoint failed.
    #[error("QUIC endpoint error at {addr}: {reason}")]
    Endpoint {
        /// Local or remote address involved.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The connection to or from a peer failed or was closed.
    #[error("connection with {peer} failed: {reason}")]
    Connection {
        /// The remote address.
        peer: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The peer refused our handshake (bad token, wrong protocol version).
    #[error("handshake with {peer} refused: {reason}")]
    Refused {
        /// The remote address.
        peer: SocketAddr,
        /// Why it was refused.
        reason: String,
    },
    /// A frame announced a length above the limit; the stream is dropped.
    #[error("frame from {peer} is {len} bytes, over the {max}-byte limit")]
    FrameTooLarge {
        /// The remote address.
        peer: SocketAddr,
        /// Announced length.
        len: u64,
        /// Configured limit.
        max: u64,
    },
    /// A frame could not be decoded (never dropped silently).
    #[error("undecodable frame from {peer}: {reason}")]
    Decode {
        /// The remote address.
        peer: SocketAddr,
        /// The decoder's message.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// A network wait exceeded its timeout.
    #[error("timed out after {millis} ms waiting for {what} from {peer}")]
    Timeout {
        /// The remote address.
        peer: SocketAddr,
        /// What we waited for.
        what: String,
        /// The timeout.
        millis: u64,
    },
    /// A function name was not found in the registry.
    #[error("no {kind} function registered under the name {name:?}")]
    UnknownFunction {
        /// Function kind (narrow, source, fold, shuffle, foreach).
        kind: &'static str,
        /// The name looked up.
        name: String,
    },
    /// A registered function was used with other element types.
    #[error("function {name:?} expects {expected}, but the dataset holds {found}")]
    TypeMismatch {
        /// The function name.
        name: String,
        /// The type the function was registered with.
        expected: &'static str,
        /// The type it was used with.
        found: &'static str,
    },
    /// A task failed on an executor (user function error or panic).
    #[error("task {task} failed on executor {executor}: {cause}")]
    TaskFailed {
        /// The task, as `job/stage/partition#attempt`.
        task: String,
        /// The executor that ran it.
        executor: String,
        /// The error or panic message.
        cause: String,
    },
    /// A job gave up after a task exhausted its attempts.
    #[error("job {job} failed: task {task} failed {attempts} times; last cause: {last_cause}")]
    JobFailed {
        /// The job id.
        job: u64,
        /// The task, as `stage/partition`.
        task: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last_cause: String,
    },
    /// `zip` of datasets with different partition counts.
    #[error("zip needs the same number of partitions: {left} vs {right}")]
    ZipPartitions {
        /// Partitions of the left dataset.
        left: u32,
        /// Partitions of the right dataset.
        right: u32,
    },
    /// `zip` of partitions with different element counts.
    #[error("zip: partition {partition} has {left} elements on the left but {right} on the right")]
    ZipMismatch {
        /// The partition index.
        partition: u32,
        /// Elements on the left.
        left: u64,
        /// Elements on the right.
        right: u64,
    },
    /// Shuffle blocks could not be fetched from a peer executor.
    #[error("shuffle {shuffle}: fetching map {map} from executor {executor} failed: {reason}")]
    FetchFailed {
        /// The shuffle id.
        shuffle: u64,
        /// The map partition.
        map: u32,
        /// The executor that should hold it.
        executor: u64,
        /// What went wrong.
        reason: String,
    },
    /// A supervised actor failed or stopped while it was still needed
    /// (e.g. an executor's task runner); the node exits with this.
    #[error("{actor} failed: {reason}")]
    ActorFailed {
        /// Which actor.
        actor: String,
        /// Its failure or stop reason.
        reason: String,
    },
    /// The driver's actor is gone or refused the request.
    #[error("driver unavailable: {0}")]
    DriverGone(String),
    /// Local I/O (files of a text source, certificates).
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A cluster-level invariant or configuration problem.
    #[error("{0}")]
    Invalid(String),
    /// A run cannot resume from a checkpoint written with other settings.
    #[error(
        "cannot resume from checkpoint {checkpoint}: it was written with {setting} = {in_checkpoint}, \
         this run has {in_run}; resume with the checkpoint's job settings"
    )]
    Incompatible {
        /// The checkpoint's id.
        checkpoint: u64,
        /// The setting that differs (a checkpoint meta key, e.g.
        /// `train.params` for the model size).
        setting: String,
        /// Its value in the checkpoint.
        in_checkpoint: String,
        /// Its value in this run.
        in_run: String,
    },
    /// The driver takes no submitted jobs.
    #[error("the driver runs no submitted jobs: {reason}")]
    JobsUnavailable {
        /// Why.
        reason: String,
    },
    /// The driver refused a submission before queuing it (unknown kind,
    /// unknown or invalid settings, missing data); nothing ran.
    #[error("job of kind {kind:?} refused: {reason}")]
    SubmissionRefused {
        /// The job kind submitted.
        kind: String,
        /// Why it was refused (names the setting or path).
        reason: String,
    },
    /// No job with this id on the driver.
    #[error("no job {id} on this driver")]
    UnknownJob {
        /// The id asked for.
        id: u64,
    },
    /// A finished job cannot be cancelled.
    #[error("job {id} has already finished ({state}): nothing to cancel")]
    JobFinished {
        /// The job.
        id: u64,
        /// How it ended.
        state: String,
    },
    /// A job's output file cannot be fetched.
    #[error("job {id}: output {output:?}: {reason}")]
    JobOutput {
        /// The job.
        id: u64,
        /// The output name.
        output: String,
        /// What went wrong.
        reason: String,
    },
    /// A job ended with an error (or was cancelled) while a client waited
    /// for it.
    #[error("job {id} {state}")]
    JobEnded {
        /// The job.
        id: u64,
        /// How it ended (`failed: <error>` or `cancelled`).
        state: String,
    },
    /// A checkpoint blob of an executor-hosted parameter shard could not
    /// be brought from its holder into the driver's store (the holder
    /// failed to stage it, the transfer broke, or the bytes did not match
    /// the length or checksum the holder reported). No blob file is left.
    #[error("checkpoint {id}: blob {blob:?} of parameter shard {shard} from executor {executor}: {reason}")]
    CheckpointTransfer {
        /// The checkpoint's id.
        id: u64,
        /// The parameter shard.
        shard: u32,
        /// The blob's name.
        blob: String,
        /// The executor holding the shard.
        executor: u64,
        /// What went wrong.
        reason: String,
    },
    /// Two executors that both reach the driver cannot reach each other
    /// (a partitioned network): a fetch between them failed while both
    /// were alive.
    #[error(
        "executor {from} cannot reach executor {to}, though both reach the driver \
         (the network between them is cut or filtered): {reason}"
    )]
    PeersUnreachable {
        /// The executor that fetched (`id (name)`).
        from: String,
        /// The executor it could not reach (`id (name) at address`).
        to: String,
        /// The fetch's error.
        reason: String,
    },
    /// A training iteration's loss is NaN or infinite: the run stops
    /// before the step is applied, so no checkpoint holds its result.
    #[error(
        "iteration {iteration}: the loss is {loss} (summed over {samples} samples): training diverged or the data \
         holds non-finite values; the step was not applied and nothing after iteration {} was checkpointed \
         (try a lower learning rate, or gradient clipping)", iteration.saturating_sub(1)
    )]
    NonFiniteLoss {
        /// The iteration (1-based).
        iteration: u64,
        /// The batch's summed loss.
        loss: f64,
        /// Samples in the batch.
        samples: u64,
    },
    /// The weights after a training iteration hold NaN or infinite values
    /// (a finite loss, but a step too large): the run stops before any
    /// checkpoint holds them.
    #[error(
        "iteration {iteration}: the step made weight {index} {value}: training diverged; \
         nothing after iteration {} was checkpointed (try a lower learning rate, or gradient clipping)",
        iteration.saturating_sub(1)
    )]
    NonFiniteWeights {
        /// The iteration (1-based).
        iteration: u64,
        /// The first bad weight's index in the flat parameter vector.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A data file could not be staged to an executor (not published, the
    /// transfer failed, or the bytes did not match its length and hash).
    #[error("staging {}: {reason}", path.display())]
    Staging {
        /// The file, as named on the driver's host.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A checkpoint could not be written, read or verified.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

/// The runtime's result type.
pub type Result<T> = std::result::Result<T, Error>;
