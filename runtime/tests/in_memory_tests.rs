//! In-process executors over in-memory connections
//! (`ExecutorMode::InProcessDirect`): the same jobs, retries and failures
//! as over QUIC, without a socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_runtime::{DriverConfig, Error, LocalCluster, LocalConfig, Registry};

static FAILED_ONCE: AtomicBool = AtomicBool::new(false);

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register_flat_map("words", |line: String| {
        line.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    })
    .register_map("pair_one", |w: String| (w, 1u64))
    .register_reduce_by_key::<String, u64>("sum_counts", |a, b| a + b)
    .register_reduce("sum_i64", |a: i64, b: i64| a + b)
    // Fails the first attempt that meets 7, succeeds on the retry.
    .register_map("flaky", |x: i64| -> i64 {
        if x == 7 && !FAILED_ONCE.swap(true, Ordering::SeqCst) {
            panic!("first attempt fails")
        }
        x
    })
    .register_map("boom", |x: i64| -> i64 {
        if x == 7 {
            panic!("seven is unlucky")
        }
        x
    });
    Arc::new(r)
}

fn config(n: usize) -> LocalConfig {
    let mut c = LocalConfig::in_process_direct(n);
    c.driver = DriverConfig {
        heartbeat: Duration::from_millis(100),
        executor_timeout: Duration::from_secs(2),
        max_task_attempts: 3,
        ..DriverConfig::default()
    };
    c
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test step timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_and_reduce_over_in_memory_connections() {
    bounded(async {
        let cluster = LocalCluster::start(config(3), registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let st = d.status().await.unwrap();
        assert_eq!(st.executors.len(), 3);
        assert!(
            st.executors
                .iter()
                .all(|e| e.addr.starts_with("in-process")),
            "{:?}",
            st.executors
        );
        let lines: Vec<String> = (0..200)
            .map(|i| format!("kiln task {} shuffle w{}", i % 7, i % 13))
            .collect();
        let mut want: HashMap<String, u64> = HashMap::new();
        for l in &lines {
            for w in l.split_whitespace() {
                *want.entry(w.to_owned()).or_insert(0) += 1;
            }
        }
        let counts: HashMap<String, u64> = d
            .parallelize(lines, 6)
            .unwrap()
            .flat_map::<String>("words")
            .unwrap()
            .map::<(String, u64)>("pair_one")
            .unwrap()
            .reduce_by_key("sum_counts", 4)
            .unwrap()
            .collect()
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(counts, want);
        let sum = d
            .parallelize((1..=1000i64).collect(), 8)
            .unwrap()
            .reduce("sum_i64")
            .await
            .unwrap();
        assert_eq!(sum, Some(500_500));
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tasks_are_retried_over_in_memory_connections() {
    bounded(async {
        let cluster = LocalCluster::start(config(2), registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let ds = d.parallelize((0..40i64).collect(), 4).unwrap();
        // One failed attempt, retried elsewhere: the job succeeds.
        FAILED_ONCE.store(false, Ordering::SeqCst);
        let out: Vec<i64> = ds.map::<i64>("flaky").unwrap().collect().await.unwrap();
        assert_eq!(out, (0..40).collect::<Vec<_>>());
        assert!(FAILED_ONCE.load(Ordering::SeqCst));
        let st = d.status().await.unwrap();
        assert_eq!(
            st.executors.iter().map(|e| e.failed).sum::<u64>(),
            1,
            "{st:?}"
        );
        // A task failing every attempt fails its job with the cause, and
        // the driver keeps serving.
        let err = ds.map::<i64>("boom").unwrap().count().await.unwrap_err();
        assert!(matches!(err, Error::JobFailed { attempts: 3, .. }), "{err}");
        assert!(err.to_string().contains("seven is unlucky"), "{err}");
        assert_eq!(ds.count().await.unwrap(), 40);
        assert_eq!(d.status().await.unwrap().lost, 0);
        cluster.shutdown().await;
    })
    .await
}

/// Shuffle blocks go executor to executor over QUIC peer endpoints even
/// when the executors reach the driver in memory; an in-memory executor
/// killed between the map and reduce stages is lost through its link
/// actor's supervision event, which also forgets its map outputs, and
/// they are recomputed from lineage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_executor_lost_after_the_map_stage_changes_nothing() {
    bounded(async {
        let mut cluster = LocalCluster::start(config(3), registry()).await.unwrap();
        let (counts, want) = {
            let d = cluster.driver().unwrap();
            let st = d.status().await.unwrap();
            // Each executor registered a QUIC peer endpoint on loopback.
            assert!(
                st.executors.iter().all(
                    |e| e.peer_addr.starts_with("127.0.0.1:") && e.peer_fingerprint.len() == 64
                ),
                "{:?}",
                st.executors
            );
            let lines: Vec<String> = (0..300)
                .map(|i| format!("w{} w{} w{}", i % 11, i % 17, i % 5))
                .collect();
            let mut want: HashMap<String, u64> = HashMap::new();
            for l in &lines {
                for w in l.split_whitespace() {
                    *want.entry(w.to_owned()).or_insert(0) += 1;
                }
            }
            let counts = d
                .parallelize(lines, 6)
                .unwrap()
                .flat_map::<String>("words")
                .unwrap()
                .map::<(String, u64)>("pair_one")
                .unwrap()
                .reduce_by_key("sum_counts", 4)
                .unwrap();
            // Materializes the map outputs on the executors.
            assert_eq!(counts.count().await.unwrap(), want.len() as u64);
            (counts, want)
        };
        cluster.kill_executor(1).unwrap();
        let d = cluster.driver().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let st = d.status().await.unwrap();
            if st.lost == 1 && st.executors.len() == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got: HashMap<String, u64> = counts.collect().await.unwrap().into_iter().collect();
        assert_eq!(got, want);
        assert_eq!(d.status().await.unwrap().live_shuffles, 1);
        drop(counts);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while d.status().await.unwrap().live_shuffles != 0 {
            assert!(std::time::Instant::now() < deadline, "shuffle never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster.shutdown().await;
    })
    .await
}
