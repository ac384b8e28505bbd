//! In-process cluster tests: executors run as tokio tasks but talk to the
//! driver over real QUIC on loopback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_runtime::{transport, Driver, DriverConfig, Error, LocalCluster, LocalConfig, Registry};

static SIDE_EFFECTS: AtomicU64 = AtomicU64::new(0);

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register_map("double", |x: i64| x * 2)
        .register_map_with("add", |k: &i64, x: i64| x + k)
        .register_filter("even", |x: &i64| x % 2 == 0)
        .register_flat_map("words", |line: String| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .register_map("pair_one", |w: String| (w, 1u64))
        .register_reduce_by_key::<String, u64>("sum_counts", |a, b| a + b)
        .register_group_by_key::<String, u64>("group_counts")
        .register_repartition::<i64>("repart_i64")
        .register_reduce("sum_i64", |a: i64, b: i64| a + b)
        .register_map_partitions("part_sum", |v: Vec<i64>| Ok(vec![v.iter().sum::<i64>()]))
        .register_map("boom", |x: i64| -> i64 {
            if x == 7 {
                panic!("seven is unlucky")
            }
            x
        })
        .register_foreach("tick", |_: &i64| {
            SIDE_EFFECTS.fetch_add(1, Ordering::Relaxed);
        })
        .register_map("mod_key", |x: i64| (x % 10, x))
        .register_reduce_by_key::<i64, i64>("sum_by_mod", |a, b| a + b)
        .register_zip::<i64, i64>()
        .register_zip::<i64, String>()
        .register_map("show", |x: i64| x.to_string())
        .register_map("pair_sum", |(a, b): (i64, i64)| a + b);
    Arc::new(r)
}

fn fast_config(n: usize) -> LocalConfig {
    let mut c = LocalConfig::in_process(n);
    c.driver = DriverConfig {
        heartbeat: Duration::from_millis(100),
        executor_timeout: Duration::from_secs(2),
        max_task_attempts: 3,
        ..DriverConfig::default()
    };
    c
}

async fn with_timeout<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test step timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transformations_and_actions() {
    with_timeout(async {
        let cluster = LocalCluster::start(fast_config(3), registry())
            .await
            .unwrap();
        let d: &Driver = cluster.driver().unwrap();
        let data: Vec<i64> = (0..1000).collect();
        let ds = d.parallelize(data.clone(), 7).unwrap();
        assert_eq!(ds.partitions(), 7);
        assert_eq!(ds.count().await.unwrap(), 1000);
        let doubled = ds.map::<i64>("double").unwrap();
        assert_eq!(
            doubled.collect().await.unwrap(),
            data.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
        let evens = ds.filter("even").unwrap();
        assert_eq!(evens.count().await.unwrap(), 500);
        assert_eq!(ds.take(5).await.unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(ds.reduce("sum_i64").await.unwrap(), Some(499_500));
        assert_eq!(ds.fold("sum_i64", 0).await.unwrap(), 499_500);
        let added = ds.map_with::<i64, i64>("add", &5).unwrap();
        assert_eq!(added.take(2).await.unwrap(), vec![5, 6]);
        let sums = ds.map_partitions::<i64>("part_sum").unwrap();
        assert_eq!(sums.count().await.unwrap(), 7);
        assert_eq!(sums.reduce("sum_i64").await.unwrap(), Some(499_500));
        let u = ds.union(&doubled);
        assert_eq!(u.partitions(), 14);
        assert_eq!(u.count().await.unwrap(), 2000);
        let s = ds.sample(0.5, 42);
        let n = s.count().await.unwrap();
        assert!(n > 350 && n < 650, "sample size {n}");
        assert_eq!(s.collect().await.unwrap(), s.collect().await.unwrap());
        let r = ds.repartition("repart_i64", 3).unwrap();
        assert_eq!(r.partitions(), 3);
        let mut got = r.collect().await.unwrap();
        got.sort();
        assert_eq!(got, data);
        SIDE_EFFECTS.store(0, Ordering::Relaxed);
        ds.foreach("tick").await.unwrap();
        assert_eq!(SIDE_EFFECTS.load(Ordering::Relaxed), 1000);
        let empty = d.parallelize(Vec::<i64>::new(), 3).unwrap();
        assert_eq!(empty.reduce("sum_i64").await.unwrap(), None);
        // Type checks happen when the transformation is built.
        let strings = d.parallelize(vec!["a".to_string()], 1).unwrap();
        assert!(matches!(
            strings.map::<i64>("double"),
            Err(Error::TypeMismatch { .. })
        ));
        assert!(matches!(
            ds.map::<i64>("nope"),
            Err(Error::UnknownFunction { .. })
        ));
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_and_shuffles_are_exact() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let mut expected: HashMap<String, u64> = HashMap::new();
        for f in 0..5 {
            let mut text = String::new();
            for l in 0..200 {
                let line: Vec<String> = (0..(l % 7 + 1))
                    .map(|w| format!("w{}", (f * 31 + l * 7 + w) % 53))
                    .collect();
                for w in &line {
                    *expected.entry(w.clone()).or_default() += 1;
                }
                text.push_str(&line.join(" "));
                text.push('\n');
            }
            std::fs::write(dir.path().join(format!("f{f}.txt")), text).unwrap();
        }
        let cluster = LocalCluster::start(fast_config(3), registry())
            .await
            .unwrap();
        let d = cluster.driver().unwrap();
        let lines = d.text_files(dir.path().to_str().unwrap(), 3).unwrap();
        assert_eq!(lines.count().await.unwrap(), 1000);
        let counts = lines
            .flat_map::<String>("words")
            .unwrap()
            .map::<(String, u64)>("pair_one")
            .unwrap()
            .reduce_by_key("sum_counts", 4)
            .unwrap();
        let got: HashMap<String, u64> = counts.collect().await.unwrap().into_iter().collect();
        assert_eq!(got, expected);
        let grouped = lines
            .flat_map::<String>("words")
            .unwrap()
            .map::<(String, u64)>("pair_one")
            .unwrap()
            .group_by_key("group_counts", 2)
            .unwrap();
        let g: HashMap<String, u64> = grouped
            .collect()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.len() as u64))
            .collect();
        assert_eq!(g, expected);
        let files = d.list_dir(dir.path().to_str().unwrap(), 2).unwrap();
        assert_eq!(files.count().await.unwrap(), 5);
        // reduce_by_key over ints, then more work after the shuffle.
        let nums = d.parallelize((0..10_000i64).collect(), 6).unwrap();
        let by_mod = nums
            .map::<(i64, i64)>("mod_key")
            .unwrap()
            .reduce_by_key("sum_by_mod", 3)
            .unwrap();
        let mut m = by_mod.collect().await.unwrap();
        m.sort();
        let want: Vec<(i64, i64)> = (0..10)
            .map(|k| (k, (0..10_000i64).filter(|x| x % 10 == k).sum()))
            .collect();
        assert_eq!(m, want);
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_task_fails_job_with_clear_error_and_driver_survives() {
    with_timeout(async {
        let cluster = LocalCluster::start(fast_config(2), registry())
            .await
            .unwrap();
        let d = cluster.driver().unwrap();
        let ds = d.parallelize((0..20i64).collect(), 4).unwrap();
        let err = ds.map::<i64>("boom").unwrap().count().await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::JobFailed { attempts: 3, .. }), "{msg}");
        assert!(msg.contains("partition 1"), "{msg}");
        assert!(msg.contains("seven is unlucky"), "{msg}");
        // The driver keeps serving.
        assert_eq!(ds.count().await.unwrap(), 20);
        let st = d.status().await.unwrap();
        assert!(st.executors.iter().map(|e| e.failed).sum::<u64>() >= 3);
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_everywhere_does_not_exclude_every_executor() {
    with_timeout(async {
        // Exclude after a single failure: every executor sees one, yet the
        // cluster must stay usable once the failing job is over.
        let mut config = fast_config(2);
        config.driver.max_executor_failures = 1;
        let cluster = LocalCluster::start(config, registry()).await.unwrap();
        let d = cluster.driver().unwrap();
        let ds = d.parallelize(vec![7i64; 8], 4).unwrap();
        let err = ds.map::<i64>("boom").unwrap().count().await.unwrap_err();
        assert!(matches!(err, Error::JobFailed { .. }), "{err}");
        let st = d.status().await.unwrap();
        assert!(
            st.executors.iter().all(|e| !e.excluded),
            "executors stay excluded after the task was blamed: {:?}",
            st.executors
        );
        assert_eq!(ds.count().await.unwrap(), 8);
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_partitions_are_reused() {
    with_timeout(async {
        let cluster = LocalCluster::start(fast_config(2), registry())
            .await
            .unwrap();
        let d = cluster.driver().unwrap();
        SIDE_EFFECTS.store(0, Ordering::Relaxed);
        let ds = d
            .parallelize((0..100i64).collect(), 4)
            .unwrap()
            .map::<i64>("double")
            .unwrap()
            .cache();
        assert_eq!(ds.count().await.unwrap(), 100);
        assert_eq!(ds.reduce("sum_i64").await.unwrap(), Some(9900));
        assert_eq!(ds.filter("even").unwrap().count().await.unwrap(), 100);
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_no_executor_fails_after_the_timeout_instead_of_hanging() {
    with_timeout(async {
        let config = DriverConfig {
            heartbeat: Duration::from_millis(50),
            no_executor_timeout: Duration::from_millis(500),
            ..DriverConfig::default()
        };
        let d = Driver::start(config, registry()).await.unwrap();
        let ds = d.parallelize((0..10i64).collect(), 2).unwrap();
        let err = ds.count().await.unwrap_err().to_string();
        assert!(err.contains("no usable executor"), "{err}");
        d.shutdown().await;
    })
    .await
}

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// A word count computed by hand, and the dataset computing it.
fn words_and_expected(d: &Driver) -> (kiln_runtime::Dataset<String>, HashMap<String, u64>) {
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut lines = Vec::new();
    for l in 0..600u64 {
        let line: Vec<String> = (0..(l % 5 + 1))
            .map(|w| format!("w{}", (l * 7 + w * 13) % 41))
            .collect();
        for w in &line {
            *expected.entry(w.clone()).or_default() += 1;
        }
        lines.push(line.join(" "));
    }
    (d.parallelize(lines, 6).unwrap(), expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_pairs_partitions_and_reports_mismatches() {
    with_timeout(async {
        let cluster = LocalCluster::start(fast_config(2), registry())
            .await
            .unwrap();
        let d = cluster.driver().unwrap();
        let ds = d.parallelize((0..100i64).collect(), 4).unwrap();
        let doubled = ds.map::<i64>("double").unwrap();
        let z = ds.zip(&doubled).unwrap();
        assert_eq!(z.partitions(), 4);
        let want: Vec<(i64, i64)> = (0..100).map(|x| (x, 2 * x)).collect();
        assert_eq!(z.collect().await.unwrap(), want);
        // Zipped datasets go on through the lineage: map, cache, recompute.
        let cached = z.map::<i64>("pair_sum").unwrap().cache();
        assert_eq!(cached.reduce("sum_i64").await.unwrap(), Some(3 * 4950));
        assert_eq!(cached.reduce("sum_i64").await.unwrap(), Some(3 * 4950));
        // Other element types, and a dataset zipped with itself.
        let shown = ds.zip(&ds.map::<String>("show").unwrap()).unwrap();
        assert_eq!(
            shown.take(2).await.unwrap(),
            vec![(0, "0".into()), (1, "1".into())]
        );
        assert_eq!(ds.zip(&ds).unwrap().count().await.unwrap(), 100);
        // Zip after a shuffle, reading the same shuffle on both sides.
        let r = ds.repartition("repart_i64", 3).unwrap();
        let rz = r.zip(&r.map::<i64>("double").unwrap()).unwrap();
        let mut got = rz.collect().await.unwrap();
        got.sort();
        assert_eq!(got, want);
        // Different partition counts: refused when built.
        let three = d.parallelize((0..100i64).collect(), 3).unwrap();
        assert!(matches!(
            ds.zip(&three),
            Err(Error::ZipPartitions { left: 4, right: 3 })
        ));
        // Different element counts: the job fails, naming partition and counts.
        let evens = ds.filter("even").unwrap();
        let err = ds.zip(&evens).unwrap().count().await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::JobFailed { .. }), "{msg}");
        // Whichever partition fails first: 25 elements left, 13 or 12 evens.
        let named = (0..4).any(|p| {
            let right = if p % 2 == 0 { 13 } else { 12 };
            msg.contains(&format!(
                "zip: partition {p} has 25 elements on the left but {right} on the right"
            ))
        });
        assert!(named, "{msg}");
        // A pair type nobody registered.
        let strings = d.parallelize(vec!["a".to_string()], 4).unwrap();
        assert!(matches!(
            strings.zip(&ds),
            Err(Error::UnknownFunction { .. })
        ));
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduce_by_key_across_three_executors_equals_a_single_threaded_count() {
    with_timeout(async {
        let cluster = LocalCluster::start(fast_config(3), registry())
            .await
            .unwrap();
        let d = cluster.driver().unwrap();
        let (lines, expected) = words_and_expected(d);
        let counts = lines
            .flat_map::<String>("words")
            .unwrap()
            .map::<(String, u64)>("pair_one")
            .unwrap()
            .reduce_by_key("sum_counts", 5)
            .unwrap();
        let got: HashMap<String, u64> = counts.collect().await.unwrap().into_iter().collect();
        assert_eq!(got, expected);
        // Every executor ran map tasks, so blocks crossed between peers.
        let st = d.status().await.unwrap();
        assert_eq!(st.executors.len(), 3);
        assert!(
            st.executors.iter().all(|e| e.completed > 0),
            "{:?}",
            st.executors
        );
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartition_preserves_the_multiset() {
    with_timeout(async {
        let cluster = LocalCluster::start(fast_config(3), registry())
            .await
            .unwrap();
        let d = cluster.driver().unwrap();
        let data: Vec<i64> = (0..3000i64).map(|x| (x * 7919) % 97).collect();
        let ds = d.parallelize(data.clone(), 5).unwrap();
        for n in [1, 4, 9] {
            let r = ds.repartition("repart_i64", n).unwrap();
            assert_eq!(r.partitions(), n);
            let mut got = r.collect().await.unwrap();
            got.sort();
            let mut want = data.clone();
            want.sort();
            assert_eq!(got, want, "repartition into {n}");
        }
        // Chained shuffles: repartition, then reduce_by_key.
        let chained = ds
            .repartition("repart_i64", 4)
            .unwrap()
            .map::<(i64, i64)>("mod_key")
            .unwrap()
            .reduce_by_key("sum_by_mod", 2)
            .unwrap();
        let mut m = chained.collect().await.unwrap();
        m.sort();
        let want: Vec<(i64, i64)> = (0..10)
            .map(|k| (k, data.iter().filter(|x| *x % 10 == k).sum()))
            .collect();
        assert_eq!(m, want);
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_lost_between_map_and_reduce_stages_changes_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("kiln_runtime=info")
        .with_test_writer()
        .try_init();
    with_timeout(async {
        let mut cluster = LocalCluster::start(fast_config(3), registry())
            .await
            .unwrap();
        let (counts, expected) = {
            let d = cluster.driver().unwrap();
            let (lines, expected) = words_and_expected(d);
            let counts = lines
                .flat_map::<String>("words")
                .unwrap()
                .map::<(String, u64)>("pair_one")
                .unwrap()
                .reduce_by_key("sum_counts", 4)
                .unwrap();
            // Materializes the map outputs on all three executors.
            assert_eq!(counts.count().await.unwrap(), expected.len() as u64);
            (counts, expected)
        };
        // Lose one: its map outputs go with it. The next job reuses the
        // surviving outputs and recomputes the lost ones from lineage.
        cluster.kill_executor(1).unwrap();
        let got: HashMap<String, u64> = counts.collect().await.unwrap().into_iter().collect();
        assert_eq!(got, expected);
        let d = cluster.driver().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let st = d.status().await.unwrap();
            if st.lost == 1 && st.executors.len() == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{st:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And once more, from the recomputed outputs.
        let again: HashMap<String, u64> = counts.collect().await.unwrap().into_iter().collect();
        assert_eq!(again, expected);
        // The last handle reading the shuffle gone, the driver frees it.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_connection_needs_the_cluster_secret_and_the_pinned_certificate() {
    with_timeout(async {
        let cluster = LocalCluster::start(fast_config(2), registry())
            .await
            .unwrap();
        let d = cluster.driver().unwrap();
        let st = d.status().await.unwrap();
        let e = &st.executors[0];
        let addr: std::net::SocketAddr = e.peer_addr.parse().unwrap();
        let fp = hex32(&e.peer_fingerprint);
        let secret = d.token().secret;
        let t = Duration::from_secs(5);
        // Wrong secret: refused at the preamble, before anything is decoded.
        let mut wrong = secret;
        wrong[0] ^= 1;
        match transport::connect_peer(addr, &fp, &wrong, t).await {
            Err(Error::Refused { reason, .. }) => {
                assert!(reason.contains("invalid join token"), "{reason}")
            }
            other => panic!("a wrong secret was not refused: {:?}", other.map(|_| ())),
        }
        // A certificate other than the announced one: TLS fails.
        let mut other_fp = fp;
        other_fp[31] ^= 1;
        assert!(transport::connect_peer(addr, &other_fp, &secret, t)
            .await
            .is_err());
        // Both right: accepted.
        let conn = transport::connect_peer(addr, &fp, &secret, t)
            .await
            .unwrap();
        conn.close(0u32.into(), b"done");
        cluster.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_zip_over_a_shuffle_survives_the_loss_of_an_executor() {
    with_timeout(async {
        let mut cluster = LocalCluster::start(fast_config(3), registry())
            .await
            .unwrap();
        let want: Vec<(i64, i64)> = (0..600).map(|x| (x, 2 * x)).collect();
        let zipped = {
            let d = cluster.driver().unwrap();
            let r = d
                .parallelize((0..600i64).collect(), 6)
                .unwrap()
                .repartition("repart_i64", 6)
                .unwrap();
            let z = r.zip(&r.map::<i64>("double").unwrap()).unwrap().cache();
            let mut got = z.collect().await.unwrap();
            got.sort();
            assert_eq!(got, want);
            z
        };
        // Cached partitions and map outputs of executor 2 are gone: both
        // are recomputed from lineage.
        cluster.kill_executor(2).unwrap();
        let mut got = zipped.collect().await.unwrap();
        got.sort();
        assert_eq!(got, want);
        drop(zipped);
        cluster.shutdown().await;
    })
    .await
}
