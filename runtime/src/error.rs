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
    /// A stream ended inside a frame: its length header or its body was
    /// cut short.
    #[error(
        "stream from {peer} ended inside a frame: {got} of its {expected} {part} bytes arrived"
    )]
    FrameTruncated {
        /// The remote address.
        peer: SocketAddr,
        /// Which part was cut short (`header`, `body`).
        part: &'static str,
        /// Bytes of that part that arrived.
        got: u64,
        /// Bytes that part has.
        expected: u64,
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
    /// A lock of shared state was poisoned: a thread panicked while it
    /// held it, so the state may be half-updated.
    #[error("the {lock}'s lock was poisoned by a panic")]
    Poisoned {
        /// Which lock (`job table`, `shuffle store`, `executor cache`).
        lock: &'static str,
    },
    /// The Prometheus metrics could not be built or rendered.
    #[error("the driver's metrics: {reason}")]
    Metrics {
        /// What the metrics registry said.
        reason: String,
    },
    /// The dashboard could not listen where asked.
    #[error("the dashboard cannot listen on {addr}: {source}")]
    DashboardBind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A dashboard bound to an address other than loopback would be open
    /// to the network without a token.
    #[error("the dashboard on {addr} is reachable from other hosts: it needs a UI token (bind to 127.0.0.1 or ::1 to serve without one)")]
    DashboardNeedsToken {
        /// The address asked for.
        addr: std::net::SocketAddr,
    },
    /// The operating system's random generator failed.
    #[error("the system random generator failed while making {what}")]
    NoRandomness {
        /// What was being made.
        what: &'static str,
    },
    /// A UI token too short to guess-proof.
    #[error("the UI token has {len} characters; it needs at least {min}")]
    DashboardTokenTooShort {
        /// Its length.
        len: usize,
        /// The least accepted.
        min: usize,
    },
    /// Work handed to a blocking thread or a spawned task panicked or was
    /// cancelled before it answered.
    #[error("{task}: its background task failed: {source}")]
    BackgroundTask {
        /// What the task was doing.
        task: String,
        /// The join error (a panic or a cancellation).
        source: tokio::task::JoinError,
    },
    /// An actor (an executor's task runner, a parameter actor) could not
    /// be started.
    #[error("{actor} failed to start: {source}")]
    ActorSpawn {
        /// Which actor.
        actor: String,
        /// Why ractor could not start it.
        source: ractor::SpawnErr,
    },
    /// A peer that passed the handshake sent something the protocol does
    /// not allow at that point (a request on the wrong stream, an
    /// unexpected first frame).
    #[error("{peer} broke the protocol: {what}")]
    ProtocolViolation {
        /// The remote address.
        peer: SocketAddr,
        /// What it did (or failed to do).
        what: String,
    },
    /// One block of a checkpoint blob could not be brought from the
    /// executor holding it (wrong length, gone, stream cut short).
    #[error("block {block} of a checkpoint blob from {peer}: {reason}")]
    BlockTransfer {
        /// The holder's peer address.
        peer: SocketAddr,
        /// The block's index within the blob.
        block: u32,
        /// What went wrong.
        reason: String,
    },
    /// An rmp-serde payload inside a message (a function's arguments, a
    /// partition, a task's result) does not decode as the type expected.
    #[error("{what} does not decode: {source}")]
    Payload {
        /// What was decoded, and as which type.
        what: String,
        /// The decoder's error.
        source: rmp_serde::decode::Error,
    },
    /// Bytes meant to hold little-endian `f32` values (weights, gradients,
    /// buffers) are not a whole number of them.
    #[error("{what}: {bytes} bytes is not a whole number of f32")]
    F32Bytes {
        /// Which values.
        what: String,
        /// Their length in bytes.
        bytes: usize,
    },
    /// A vector of parameters, gradients or buffer values has another
    /// length than the model, shard or range it is for.
    #[error("{what}: {found} {unit}, {expected} expected")]
    ParameterCount {
        /// Which vector, and where (trainer, shard, checkpoint).
        what: String,
        /// What is counted (`weights`, `buffer values`, `bytes`).
        unit: &'static str,
        /// The length the model or shard needs.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// A meta entry of a checkpoint record is missing or unreadable (the
    /// checkpoint is not a training checkpoint, or was damaged).
    #[error("checkpoint {checkpoint}, meta entry {key:?}: {reason}")]
    CheckpointMeta {
        /// The checkpoint's id.
        checkpoint: u64,
        /// The meta key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An operation needs a checkpoint store and the run has none.
    #[error("{op} needs a checkpoint directory, and this run has none configured")]
    NoCheckpointStore {
        /// The operation (`resume`, `checkpoint`).
        op: &'static str,
    },
    /// A training step was asked for after the last epoch.
    #[error("training is already complete: all {epochs} epochs ran, no batch is left to train on")]
    TrainingComplete {
        /// The run's epochs.
        epochs: u64,
    },
    /// A setting's value is outside what the runtime accepts.
    #[error("setting {setting} = {value} is out of range: {range}")]
    SettingOutOfRange {
        /// The setting, and where it applies.
        setting: String,
        /// Its value.
        value: String,
        /// What is accepted.
        range: String,
    },
    /// An operation was asked of a part of the runtime set up for
    /// something else (a step of driver-held shards on executor-hosted
    /// ones, asynchronous training with executor-hosted shards).
    #[error("{op} is not possible here: it needs {needs}")]
    Unsupported {
        /// The operation asked for.
        op: String,
        /// What it needs that is not there.
        needs: &'static str,
    },
    /// A sorted-epochs order (SortaGrad) has another number of keys than
    /// the training set has samples.
    #[error("sorted epochs: {found} sort keys for a training set of {expected} samples (the data changed since the keys were computed?)")]
    SortKeys {
        /// Samples in the training set.
        expected: u64,
        /// Keys given.
        found: usize,
    },
    /// A dataset holds no elements where some are needed.
    #[error("the dataset for {purpose} holds no elements")]
    EmptyDataset {
        /// What the dataset was for (`training`).
        purpose: &'static str,
    },
    /// A partition or element index past the end.
    #[error("{what} has no {item} {index} (it has {len})")]
    OutOfBounds {
        /// The container (a dataset, a union, a trainer's partition).
        what: String,
        /// What was indexed (`partition`, `element`).
        item: &'static str,
        /// The index asked for.
        index: u64,
        /// How many there are.
        len: u64,
    },
    /// An input a task or step needs is not where it should be (not
    /// shipped with the task, not fetched, not held by this executor, or
    /// lost by the driver).
    #[error("{input} {reason}")]
    MissingInput {
        /// The input and whose it is (`shuffle 3 blocks for partition 2`).
        input: String,
        /// Why it is missing.
        reason: &'static str,
    },
    /// A task's output is not of the kind its action produces.
    #[error("{task}: the task returned no {expected}")]
    UnexpectedTaskOutput {
        /// The task or what it was for.
        task: String,
        /// The output expected (`data`, `gradients`).
        expected: &'static str,
    },
    /// An executor-hosted parameter shard is at another version than the
    /// run expects.
    #[error("parameter shard {shard} is at version {at}, {expected} expected")]
    ShardVersion {
        /// The shard.
        shard: u32,
        /// Its version.
        at: u64,
        /// The version the run expects.
        expected: u64,
    },
    /// Every executor holding a parameter shard is gone.
    #[error(
        "parameter shard {shard} has no live holder (lost with executor(s) {executors:?}, no replica left); \
         resume from the last checkpoint"
    )]
    ShardLost {
        /// The shard.
        shard: usize,
        /// The holders lost.
        executors: Vec<u64>,
    },
    /// An executor id or index that names no member of the cluster.
    #[error("no executor {id} {context}")]
    UnknownExecutor {
        /// The id (or, in a local cluster, the index) asked for.
        id: u64,
        /// Where it was looked for, and why.
        context: String,
    },
    /// No executor can run work that needs one.
    #[error("{what}: no usable executor {reason}")]
    NoExecutor {
        /// The work (`job 1 stage 2`).
        what: String,
        /// Since when, or why none is usable.
        reason: String,
    },
    /// Fewer executors than asked for registered in time.
    #[error("only {live} of {wanted} executors registered after {waited_ms} ms")]
    TooFewExecutors {
        /// Executors registered.
        live: usize,
        /// Executors asked for.
        wanted: usize,
        /// How long it waited.
        waited_ms: u64,
    },
    /// A queue, limiter or endpoint was closed while still in use (the
    /// node is shutting down).
    #[error("{what} is closed (the node is shutting down)")]
    Shutdown {
        /// What was closed.
        what: &'static str,
    },
    /// A user function registered by name (a source, a map over
    /// partitions) returned an error.
    #[error("{kind} function {name:?} failed: {source}")]
    UserFunction {
        /// The function kind (`source`, `map_partitions`).
        kind: &'static str,
        /// The registered name.
        name: String,
        /// The function's error.
        source: BoxError,
    },
    /// A registered trainer (its factory or its [`crate::GradientWorker`])
    /// failed.
    #[error("trainer {trainer:?}: {op} failed: {source}")]
    Trainer {
        /// The registered trainer name.
        trainer: String,
        /// What it was doing (`building a worker`, `gradients`).
        op: &'static str,
        /// The trainer's error.
        source: BoxError,
    },
    /// The [`crate::ShardOptimizer`] of a parameter shard (or its factory)
    /// failed.
    #[error("the optimizer of parameter shard {shard}: {op} failed: {source}")]
    Optimizer {
        /// The shard.
        shard: usize,
        /// What it was doing (`creation`, `step`, `saving its state`).
        op: &'static str,
        /// The optimizer's error.
        source: BoxError,
    },
    /// The driver answered a client's request with an error that has no
    /// variant of its own on the wire (rendered as text there).
    #[error("the driver could not serve the request: {reason}")]
    DriverAnswer {
        /// The driver's error, as text.
        reason: String,
    },
    /// [`crate::Driver::accept_jobs`] was called twice.
    #[error("this driver already runs submitted jobs (a job runner is installed)")]
    JobRunnerInstalled,
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

/// The error of a plug-in (a registered function, a [`crate::GradientWorker`],
/// a [`crate::ShardOptimizer`], a [`crate::JobRunner`]): any error, its
/// source chain kept. A `String` converts into it (`e.into()`, or `?`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// Whether the peer broke the protocol: an oversized, truncated or
    /// undecodable frame, or a message it may not send at that point. A
    /// link is dropped and counted for these; a timeout, a lost
    /// connection or a local failure is not the peer's protocol fault.
    pub fn breaks_protocol(&self) -> bool {
        matches!(
            self,
            Error::FrameTooLarge { .. }
                | Error::FrameTruncated { .. }
                | Error::Decode { .. }
                | Error::ProtocolViolation { .. }
        )
    }
}

/// `e` and its sources, joined with `": "`: the text an error becomes
/// where it crosses the wire (the wire carries strings). A source whose
/// text the message already holds (a variant that prints its source) is
/// not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let part = s.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a cause, as a plug-in might return.
    #[derive(Debug, thiserror::Error)]
    #[error("reading the manifest")]
    struct Outer {
        #[source]
        cause: std::io::Error,
    }

    #[test]
    fn the_chain_keeps_every_source_once() {
        let plugin: BoxError = Box::new(Outer {
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
        let e = Error::UserFunction {
            kind: "source",
            name: "points".into(),
            source: plugin,
        };
        // Display names the function and its error, not the cause.
        assert_eq!(
            e.to_string(),
            "source function \"points\" failed: reading the manifest"
        );
        // The wire text holds the whole chain, the printed source once.
        assert_eq!(
            error_chain(&e),
            "source function \"points\" failed: reading the manifest: no such file"
        );
    }

    #[test]
    fn a_string_error_converts_and_renders_as_itself() {
        let e = Error::Trainer {
            trainer: "linear".into(),
            op: "computing gradients",
            source: "the buffer is short".into(),
        };
        assert_eq!(
            error_chain(&e),
            "trainer \"linear\": computing gradients failed: the buffer is short"
        );
    }
}
