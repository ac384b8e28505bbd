//! Distributed training on an in-process cluster with a tiny linear model:
//! the same updates on 1, 2 and 3 executors, bit-exact resume from a
//! checkpoint (also of executor-hosted shards, whose blobs the driver
//! pulls into its store), and a corrupt newest checkpoint skipped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_runtime::checkpoint::{dir_state, CheckpointStore, DirState, StoreClaim};
use kiln_runtime::train::{
    BatchStats, CheckpointPolicy, GradientWorker, OptimizerFactory, OptimizerSpec, ShardOptimizer,
    ShardPlacement, SortedEpochs,
};
use kiln_runtime::{
    BoxError, DistributedTrainer, DriverConfig, LocalCluster, LocalConfig, Registry, TrainSpec,
};

/// y = w·x + b with squared loss; samples are `(x0, x1, y)`.
struct Linear;

impl GradientWorker<(f32, f32, f32)> for Linear {
    fn num_params(&self) -> usize {
        3
    }
    fn gradients(
        &mut self,
        p: &[f32],
        samples: &[&(f32, f32, f32)],
        _seed: u64,
        g: &mut [f32],
    ) -> Result<BatchStats, BoxError> {
        let mut loss = 0.0;
        for (x0, x1, y) in samples.iter().copied() {
            let e = p[0] * x0 + p[1] * x1 + p[2] - y;
            loss += 0.5 * (e * e) as f64;
            g[0] += e * x0;
            g[1] += e * x1;
            g[2] += e;
        }
        Ok(BatchStats {
            loss_sum: loss,
            samples: samples.len() as u64,
            correct: 0,
        })
    }
    fn evaluate(&mut self, p: &[f32], s: &[&(f32, f32, f32)]) -> Result<BatchStats, BoxError> {
        let mut g = [0.0; 3];
        self.gradients(p, s, 0, &mut g)
    }
}

/// SGD with momentum 0.9: has state, so resume must restore it.
struct Momentum {
    buf: Vec<f32>,
}

impl ShardOptimizer for Momentum {
    fn step(&mut self, p: &mut [f32], g: &[f32], lr: f64) -> Result<(), BoxError> {
        if self.buf.len() != p.len() {
            self.buf = vec![0.0; p.len()];
        }
        for ((p, g), b) in p.iter_mut().zip(g).zip(&mut self.buf) {
            *b = 0.9 * *b + g;
            *p -= lr as f32 * *b;
        }
        Ok(())
    }
    fn state(&self) -> Result<Vec<u8>, BoxError> {
        Ok(self.buf.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn load_state(&mut self, b: &[u8]) -> Result<(), BoxError> {
        self.buf = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(())
    }
}

/// `Linear` on `x0` centred by a running mean `m` of `x0` (a buffer, kept
/// like batch norm's running statistics: `m ← 0.9·m + 0.1·mean(x0)` per
/// pass). Evaluation reports `m` as its loss, so the test sees which
/// buffers the executors were sent.
struct Centred {
    m: f32,
}

impl GradientWorker<(f32, f32, f32)> for Centred {
    fn num_params(&self) -> usize {
        3
    }
    fn gradients(
        &mut self,
        p: &[f32],
        samples: &[&(f32, f32, f32)],
        _seed: u64,
        g: &mut [f32],
    ) -> Result<BatchStats, BoxError> {
        let mean = samples.iter().map(|s| s.0).sum::<f32>() / samples.len().max(1) as f32;
        self.m = 0.9 * self.m + 0.1 * mean;
        let shifted: Vec<(f32, f32, f32)> =
            samples.iter().map(|s| (s.0 - self.m, s.1, s.2)).collect();
        let refs: Vec<&(f32, f32, f32)> = shifted.iter().collect();
        Linear.gradients(p, &refs, 0, g)
    }
    fn evaluate(&mut self, _p: &[f32], s: &[&(f32, f32, f32)]) -> Result<BatchStats, BoxError> {
        Ok(BatchStats {
            loss_sum: self.m as f64 * s.len() as f64,
            samples: s.len() as u64,
            correct: 0,
        })
    }
    fn num_buffers(&self) -> usize {
        1
    }
    fn buffers(&self) -> Vec<f32> {
        vec![self.m]
    }
    fn set_buffers(&mut self, b: &[f32]) -> Result<(), BoxError> {
        self.m = b[0];
        Ok(())
    }
}

/// Training-task batches computed by [`Counted`] (only one test uses it).
static COUNTED_BATCHES: AtomicU64 = AtomicU64::new(0);

/// [`Linear`], counting the batches it computes gradients for.
struct Counted;

impl GradientWorker<(f32, f32, f32)> for Counted {
    fn num_params(&self) -> usize {
        3
    }
    fn gradients(
        &mut self,
        p: &[f32],
        samples: &[&(f32, f32, f32)],
        seed: u64,
        g: &mut [f32],
    ) -> Result<BatchStats, BoxError> {
        COUNTED_BATCHES.fetch_add(1, Ordering::SeqCst);
        Linear.gradients(p, samples, seed, g)
    }
    fn evaluate(&mut self, p: &[f32], s: &[&(f32, f32, f32)]) -> Result<BatchStats, BoxError> {
        Linear.evaluate(p, s)
    }
}

/// Reports the sum of the samples' `x0` as its loss and leaves the
/// weights alone: the test sees which samples each batch held.
struct SumX0;

impl GradientWorker<(f32, f32, f32)> for SumX0 {
    fn num_params(&self) -> usize {
        3
    }
    fn gradients(
        &mut self,
        _p: &[f32],
        samples: &[&(f32, f32, f32)],
        _seed: u64,
        _g: &mut [f32],
    ) -> Result<BatchStats, BoxError> {
        Ok(BatchStats {
            loss_sum: samples.iter().map(|s| s.0 as f64).sum(),
            samples: samples.len() as u64,
            correct: 0,
        })
    }
    fn evaluate(&mut self, p: &[f32], s: &[&(f32, f32, f32)]) -> Result<BatchStats, BoxError> {
        self.gradients(p, s, 0, &mut [])
    }
}

/// A new run where `dir` holds no store yet, else the run continued.
fn claim_for(dir: &std::path::Path) -> StoreClaim {
    let kind = "test".to_string();
    match dir_state(dir).unwrap() {
        DirState::Free => StoreClaim::NewRun { kind },
        _ => StoreClaim::Continue { kind },
    }
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register_trainer("linear", |_: &()| Ok(Linear))
        .register_trainer("counted", |_: &()| Ok(Counted))
        .register_trainer("centred", |_: &()| Ok(Centred { m: 0.0 }))
        .register_trainer("sum_x0", |_: &()| Ok(SumX0))
        .register_optimizer("momentum", |_: &(), _| {
            Ok(Box::new(Momentum { buf: Vec::new() }) as Box<dyn ShardOptimizer>)
        })
        .register_source("points", |n: &u64, p: u32, parts: u32| {
            Ok((0..*n)
                .filter(|i| i % parts as u64 == p as u64)
                .map(|i| {
                    let x0 = (i % 17) as f32 / 17.0;
                    let x1 = (i % 5) as f32 / 5.0 - 0.5;
                    (x0, x1, 2.0 * x0 - 3.0 * x1 + 0.5)
                })
                .collect::<Vec<(f32, f32, f32)>>())
        });
    Arc::new(r)
}

fn optimizer() -> OptimizerFactory {
    Arc::new(|_| Ok(Box::new(Momentum { buf: Vec::new() }) as Box<dyn ShardOptimizer>))
}

fn config(n: usize) -> LocalConfig {
    let mut c = LocalConfig::in_process(n);
    c.driver = DriverConfig {
        heartbeat: Duration::from_millis(100),
        executor_timeout: Duration::from_secs(3),
        ..DriverConfig::default()
    };
    c
}

fn spec(epochs: u64) -> TrainSpec {
    let mut s = TrainSpec::new("linear", &(), 16, epochs, 9, 0.1).unwrap();
    s.shards = 2;
    s
}

/// The momentum optimizer on the executors, `replicas` copies per shard.
fn hosted(replicas: usize) -> ShardPlacement {
    ShardPlacement::Executors {
        replicas,
        optimizer: OptimizerSpec {
            name: "momentum".into(),
            config: rmp_serde::to_vec(&()).unwrap(),
        },
    }
}

/// Trains for `epochs` on `executors`, returns the weights and the
/// per-iteration losses.
async fn train(executors: usize, epochs: u64) -> (Vec<f32>, Vec<f64>) {
    train_placed(executors, epochs, ShardPlacement::Driver).await
}

async fn train_placed(
    executors: usize,
    epochs: u64,
    placement: ShardPlacement,
) -> (Vec<f32>, Vec<f64>) {
    let cluster = LocalCluster::start(config(executors), registry())
        .await
        .unwrap();
    let d = cluster.driver().unwrap();
    let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
    let mut s = spec(epochs);
    s.placement = placement;
    let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer())
        .await
        .unwrap();
    let mut losses = Vec::new();
    while !t.is_done() {
        losses.push(t.step().await.unwrap().stats.mean_loss());
    }
    let eval = t.evaluate(&data).await.unwrap();
    assert_eq!(eval.samples, 200);
    let params = t.finish().await.unwrap();
    cluster.shutdown().await;
    (params, losses)
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_two_and_three_executors_give_identical_updates() {
    bounded(async {
        let (p1, l1) = train(1, 3).await;
        let (p2, l2) = train(2, 3).await;
        let (p3, l3) = train(3, 3).await;
        assert_eq!(l1.len(), 3 * 13);
        assert!(
            l1.last().unwrap() < &(l1[0] * 0.2),
            "loss did not fall: {l1:?}"
        );
        assert_eq!(p1, p2);
        assert_eq!(p1, p3);
        assert_eq!(l1, l2);
        assert_eq!(l1, l3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_bit_exact_and_skips_a_corrupt_checkpoint() {
    bounded(async {
        let (uninterrupted, _) = train(2, 4).await;
        let dir = tempfile::tempdir().unwrap();
        let with_ckpt = |epochs| {
            let mut s = spec(epochs);
            s.checkpoint = Some(CheckpointPolicy {
                every_iterations: Some(5),
                ..CheckpointPolicy::every_epoch(dir.path(), claim_for(dir.path()))
            });
            s
        };
        // First run: stops after 2 of 4 epochs (checkpoints every 5
        // iterations and every epoch), as if the driver had died there.
        let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
        let mut t = DistributedTrainer::start(&data, with_ckpt(4), vec![0.0; 3], optimizer())
            .await
            .unwrap();
        let mut last = None;
        while t.position().epoch < 2 {
            let it = t.step().await.unwrap();
            // The checkpoint's time is reported as part of its iteration.
            match it.checkpoint {
                Some(id) => {
                    last = Some(id);
                    assert!(it.checkpoint_seconds > 0.0 && it.checkpoint_seconds <= it.seconds);
                }
                None => assert_eq!(it.checkpoint_seconds, 0.0),
            }
        }
        // One more checkpoint mid-epoch 3, then corrupt it.
        for _ in 0..5 {
            t.step().await.unwrap();
        }
        let newest = t.checkpoint().await.unwrap();
        assert!(Some(newest) > last);
        t.finish().await.unwrap();
        cluster.shutdown().await;
        let shard = dir
            .path()
            .join(format!("blobs/{newest:020}/params.shard.1"));
        let mut bytes = std::fs::read(&shard).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0x40;
        std::fs::write(&shard, bytes).unwrap();

        // Second run: resume picks the previous good checkpoint and goes on.
        let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
        let mut t = DistributedTrainer::start(&data, with_ckpt(4), vec![0.0; 3], optimizer())
            .await
            .unwrap();
        let info = t
            .resume()
            .await
            .unwrap()
            .expect("a checkpoint to resume from");
        assert_eq!(info.skipped.len(), 1, "{:?}", info.skipped);
        assert_eq!(info.skipped[0].id, newest);
        assert!(
            info.skipped[0].reason.contains("params.shard.1"),
            "{:?}",
            info.skipped
        );
        assert!(info.position.epoch >= 2, "{:?}", info.position);
        while !t.is_done() {
            t.step().await.unwrap();
        }
        let resumed = t.finish().await.unwrap();
        cluster.shutdown().await;
        assert_eq!(resumed, uninterrupted);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_training_with_a_staleness_bound_converges() {
    bounded(async {
        let (bsp, _) = train(2, 3).await;
        let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
        // Staleness 0 is BSP, bit for bit.
        let mut s0 = spec(3);
        s0.staleness = Some(0);
        let mut t = DistributedTrainer::start(&data, s0, vec![0.0; 3], optimizer())
            .await
            .unwrap();
        while !t.is_done() {
            t.step().await.unwrap();
        }
        assert_eq!(t.finish().await.unwrap(), bsp);
        // Staleness 2: three batches in flight, still converging (with a
        // smaller step, as stale gradients need).
        let mut s2 = TrainSpec::new("linear", &(), 16, 6, 9, 0.02).unwrap();
        s2.staleness = Some(2);
        let mut t = DistributedTrainer::start(&data, s2, vec![0.0; 3], optimizer())
            .await
            .unwrap();
        let mut losses = Vec::new();
        while !t.is_done() {
            losses.push(t.step().await.unwrap().stats.mean_loss());
        }
        assert_eq!(losses.len(), 6 * 13);
        let eval = t.evaluate(&data).await.unwrap();
        assert!(
            eval.mean_loss() < losses[0] * 0.1,
            "async training did not converge: {} vs first batch {}",
            eval.mean_loss(),
            losses[0]
        );
        t.finish().await.unwrap();
        cluster.shutdown().await;
    })
    .await
}

/// Trains the buffered model; returns weights, buffers and the buffer
/// value the executors evaluated with.
async fn train_centred(
    executors: usize,
    epochs: u64,
    ckpt: Option<&std::path::Path>,
) -> (Vec<f32>, Vec<f32>, f64) {
    let cluster = LocalCluster::start(config(executors), registry())
        .await
        .unwrap();
    let d = cluster.driver().unwrap();
    let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
    let mut s = TrainSpec::new("centred", &(), 16, epochs, 9, 0.1).unwrap();
    s.init_buffers = vec![0.0];
    s.checkpoint = ckpt.map(|d| CheckpointPolicy::every_epoch(d, claim_for(d)));
    let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer())
        .await
        .unwrap();
    if ckpt.is_some() {
        t.resume().await.unwrap();
    }
    while !t.is_done() {
        t.step().await.unwrap();
    }
    let eval = t.evaluate(&data).await.unwrap().mean_loss();
    let buffers = t.buffers().to_vec();
    let params = t.finish().await.unwrap();
    cluster.shutdown().await;
    (params, buffers, eval)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_are_averaged_checkpointed_and_sent_for_evaluation() {
    bounded(async {
        let (p1, b1, e1) = train_centred(1, 3, None).await;
        let (p3, b3, e3) = train_centred(3, 3, None).await;
        assert_eq!((&p1, &b1), (&p3, &b3));
        // The shares' running means average to the EMA of batch means,
        // which settles near the mean of x0 (0.468 over these points).
        assert!((b1[0] - 0.468).abs() < 0.08, "{b1:?}");
        assert!(
            (e1 - b1[0] as f64).abs() < 1e-6,
            "evaluated with {e1}, buffers {b1:?}"
        );
        assert_eq!(e1, e3);
        // Two epochs with a checkpoint, then a fresh process resumes
        // for the third: the buffers come back from the checkpoint.
        let dir = tempfile::tempdir().unwrap();
        train_centred(2, 2, Some(dir.path())).await;
        let (pr, br, _) = train_centred(2, 3, Some(dir.path())).await;
        assert_eq!((pr, br), (p1, b1));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_hosted_shards_match_driver_held_ones_bit_for_bit() {
    bounded(async {
        let (p, l) = train(2, 3).await;
        for (executors, replicas) in [(1, 1), (2, 2), (3, 2), (3, 3)] {
            let (ph, lh) = train_placed(executors, 3, hosted(replicas)).await;
            assert_eq!(ph, p, "{executors} executors, {replicas} replicas");
            assert_eq!(lh, l, "{executors} executors, {replicas} replicas");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_iterations_whose_batch_skips_an_executor_stay_consistent() {
    // Batches of 2 of 200 points in 4 partitions often fall on one
    // executor's partitions only: the other holder runs no task of the
    // round and must still apply the pending step.
    bounded(async {
        let mut results = Vec::new();
        for placement in [ShardPlacement::Driver, hosted(2)] {
            let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
            let d = cluster.driver().unwrap();
            let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
            let mut s = TrainSpec::new("linear", &(), 2, 1, 5, 0.05).unwrap();
            s.shards = 2;
            s.placement = placement;
            let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer())
                .await
                .unwrap();
            while !t.is_done() {
                t.step().await.unwrap();
            }
            results.push(t.finish().await.unwrap());
            cluster.shutdown().await;
        }
        assert_eq!(results[0], results[1], "driver-held vs executor-hosted");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_hosted_training_computes_each_batch_once() {
    // A batch launched with the driver's weights used to run beside the
    // first executor-hosted iteration, its gradients never used: hosted
    // training must compute exactly the tasks driver-held training does.
    bounded(async {
        let mut counts = Vec::new();
        for placement in [ShardPlacement::Driver, hosted(2)] {
            let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
            let d = cluster.driver().unwrap();
            let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
            let mut s = TrainSpec::new("counted", &(), 16, 2, 9, 0.1).unwrap();
            s.shards = 2;
            s.placement = placement;
            let before = COUNTED_BATCHES.load(Ordering::SeqCst);
            let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer())
                .await
                .unwrap();
            let mut iterations = 0;
            while !t.is_done() {
                t.step().await.unwrap();
                iterations += 1;
            }
            t.finish().await.unwrap();
            cluster.shutdown().await;
            counts.push(COUNTED_BATCHES.load(Ordering::SeqCst) - before);
            assert_eq!(iterations, 2 * 13, "2 epochs of 13 batches of 16 of 200");
        }
        assert!(
            counts[0] >= 26,
            "every iteration computes at least one task"
        );
        assert_eq!(counts[0], counts[1], "driver-held vs executor-hosted tasks");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_shard_holder_mid_training_loses_no_state() {
    bounded(async {
        let (uninterrupted, _) = train(2, 3).await;
        let mut cluster = LocalCluster::start(config(3), registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
        let mut s = spec(3);
        s.placement = hosted(2);
        // 4 shards over 3 executors: every executor holds some.
        s.shards = 4;
        let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer())
            .await
            .unwrap();
        for _ in 0..7 {
            t.step().await.unwrap();
        }
        cluster.kill_executor(1).unwrap();
        // An evaluation right after the loss drops the lost holders and
        // reads the weights from the replicas.
        let eval = t.evaluate(&data).await.unwrap();
        assert_eq!(eval.samples, 200);
        let mut redone = 0;
        for _ in 0..3 {
            redone += t.step().await.unwrap().redone;
        }
        // The evaluation already moved to the replicas: the iterations
        // after it need no redo.
        assert_eq!(redone, 0);
        let status = cluster.driver().unwrap().status().await.unwrap();
        assert_eq!(status.executors.len(), 2, "{status:?}");
        // The shards were re-replicated on the two survivors: losing one
        // of them too still loses no state (the iteration in flight is
        // redone on the last one).
        cluster.kill_executor(2).unwrap();
        while !t.is_done() {
            t.step().await.unwrap();
        }
        let status = cluster.driver().unwrap().status().await.unwrap();
        assert_eq!(status.executors.len(), 1, "{status:?}");
        let params = t.finish().await.unwrap();
        assert_eq!(params, uninterrupted);
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_an_executor_with_a_step_pending_redoes_that_iteration_too() {
    // 2 executors holding both copies of every shard (the `kiln local`
    // default) run one task round per iteration: each iteration's step is
    // applied by the next iteration's training tasks. The gradients of a
    // pending step die with a lost executor, so its iteration is redone as
    // well, and the weights still equal an uninterrupted run's.
    bounded(async {
        let (uninterrupted, _) = train(2, 3).await;
        let mut cluster = LocalCluster::start(config(2), registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
        let mut s = spec(3);
        s.placement = hosted(2);
        let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer())
            .await
            .unwrap();
        for _ in 0..5 {
            assert_eq!(t.step().await.unwrap().redone, 0);
        }
        cluster.kill_executor(0).unwrap();
        let mut redone = 0;
        while !t.is_done() {
            redone += t.step().await.unwrap().redone;
        }
        assert!(redone >= 1, "the iteration after the loss was redone");
        let params = t.finish().await.unwrap();
        assert_eq!(params, uninterrupted);
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_replicas_is_reported_lost() {
    bounded(async {
        let mut cluster = LocalCluster::start(config(2), registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
        let mut s = spec(3);
        s.placement = hosted(1);
        let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer())
            .await
            .unwrap();
        t.step().await.unwrap();
        cluster.kill_executor(0).unwrap();
        let err = loop {
            match t.step().await {
                Ok(_) => continue,
                Err(e) => break e.to_string(),
            }
        };
        assert!(
            err.contains("parameter shard") && err.contains("resume from the last checkpoint"),
            "{err}"
        );
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_hosted_checkpoints_resume_bit_exact() {
    bounded(async {
        let (uninterrupted, _) = train(2, 4).await;
        let dir = tempfile::tempdir().unwrap();
        let run = |epochs, stop_at: u64| {
            let dir = dir.path().to_path_buf();
            async move {
                let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
                let d = cluster.driver().unwrap();
                let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
                let mut s = spec(epochs);
                s.placement = hosted(2);
                s.checkpoint = Some(CheckpointPolicy::every_epoch(&dir, claim_for(&dir)));
                let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer())
                    .await
                    .unwrap();
                t.resume().await.unwrap();
                while !t.is_done() && t.position().epoch < stop_at {
                    t.step().await.unwrap();
                }
                let p = t.finish().await.unwrap();
                cluster.shutdown().await;
                p
            }
        };
        // Stops after 2 of 4 epochs; a new cluster resumes from the
        // checkpoint the driver pulled from the executors.
        run(4, 2).await;
        let store = CheckpointStore::open_for_reading(dir.path()).unwrap();
        let (record, skipped) = store.latest_valid().unwrap();
        assert!(skipped.is_empty());
        assert_eq!(record.epoch, 2);
        for i in 0..2 {
            for name in [format!("params.shard.{i}"), format!("optim.shard.{i}")] {
                assert!(record.blob(&name).is_some(), "{name} missing");
            }
        }
        drop(store);
        // Only finished blobs: no transfer left a temporary file.
        let blobs = dir.path().join("blobs");
        for d in std::fs::read_dir(&blobs).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                let name = f.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!name.ends_with(".tmp"), "{name} left behind");
            }
        }
        let resumed = run(4, 4).await;
        assert_eq!(resumed, uninterrupted);
    })
    .await
}

/// A run that diverges stops at the first iteration whose loss is not
/// finite, naming it, with either placement; no checkpoint holds weights
/// from that step or after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_finite_loss_stops_training_naming_the_iteration_and_nothing_bad_is_checkpointed() {
    bounded(async {
        for placement in [ShardPlacement::Driver, hosted(2)] {
            let dir = tempfile::tempdir().unwrap();
            let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
            let d = cluster.driver().unwrap();
            let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
            // A learning rate that makes the weights grow without bound.
            let mut s = TrainSpec::new("linear", &(), 16, 50, 9, 1e3).unwrap();
            s.shards = 2;
            s.placement = placement.clone();
            s.checkpoint = Some(CheckpointPolicy {
                every_iterations: Some(1),
                keep_last: 0,
                ..CheckpointPolicy::every_epoch(dir.path(), claim_for(dir.path()))
            });
            let mut t = DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer())
                .await
                .unwrap();
            let mut last_ok = 0;
            let err = loop {
                match t.step().await {
                    Ok(it) => {
                        assert!(it.stats.loss_sum.is_finite());
                        last_ok = it.position.iteration;
                    }
                    Err(e) => break e,
                }
            };
            let _ = t.finish().await;
            cluster.shutdown().await;
            match &err {
                kiln_runtime::Error::NonFiniteLoss { iteration, .. } => {
                    assert_eq!(*iteration, last_ok + 1, "{err}")
                }
                other => panic!("{placement:?}: {other}"),
            }
            assert!(
                err.to_string()
                    .contains(&format!("iteration {}", last_ok + 1)),
                "{err}"
            );
            let store = CheckpointStore::open_for_reading(dir.path()).unwrap();
            let ids = store.ids().unwrap();
            assert_eq!(ids.len() as u64, last_ok, "{placement:?}");
            for id in ids {
                let r = store.verify(id).unwrap();
                assert!(r.iteration <= last_ok);
                for b in r.blobs.iter().filter(|b| b.name.starts_with("params")) {
                    let v =
                        kiln_runtime::train::bytes_to_f32(&store.read(&r, &b.name).unwrap(), "p")
                            .unwrap();
                    assert!(v.iter().all(|x| x.is_finite()), "checkpoint {id}: {v:?}");
                }
            }
        }
    })
    .await
}

/// `x0` of each of the "points" source's `n` samples in `parts`
/// partitions, by global index (partition by partition).
fn x0_by_global_index(n: u64, parts: u64) -> Vec<f32> {
    (0..parts)
        .flat_map(|p| (0..n).filter(move |i| i % parts == p))
        .map(|i| (i % 17) as f32 / 17.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sorted_epochs_go_from_the_smallest_key_up_then_shuffle() {
    bounded(async {
        let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let data = d.source::<u64, (f32, f32, f32)>("points", &200, 4).unwrap();
        let x0 = x0_by_global_index(200, 4);
        let mut s = TrainSpec::new("sum_x0", &(), 16, 2, 9, 0.1).unwrap();
        s.shards = 2;
        s.sorted_epochs = Some(SortedEpochs {
            keys: x0.iter().map(|x| (x * 1000.0) as u64).collect(),
            epochs: 1,
        });
        let mut t = DistributedTrainer::start(&data, s.clone(), vec![0.0; 3], optimizer())
            .await
            .unwrap();
        let mut means = Vec::new();
        while !t.is_done() {
            means.push(t.step().await.unwrap().stats.mean_loss());
        }
        t.finish().await.unwrap();
        // 13 batches per epoch: the first epoch's means rise, the
        // second's do not.
        let (first, second) = means.split_at(13);
        assert!(first.windows(2).all(|w| w[0] <= w[1]), "{first:?}");
        assert!(first[0] < 0.1 && first[12] > 0.8, "{first:?}");
        assert!(!second.windows(2).all(|w| w[0] <= w[1]), "{second:?}");
        // Keys that do not number the samples are refused before training.
        s.sorted_epochs = Some(SortedEpochs {
            keys: vec![0; 199],
            epochs: 1,
        });
        let err = match DistributedTrainer::start(&data, s, vec![0.0; 3], optimizer()).await {
            Ok(_) => panic!("199 keys for 200 samples were accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("199 sort keys for a training set of 200"),
            "{err}"
        );
        cluster.shutdown().await;
    })
    .await
}
