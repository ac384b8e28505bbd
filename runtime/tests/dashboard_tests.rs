//! The dashboard's JSON API and its token check, on an in-process cluster:
//! failed attempts, retries, exclusions and lost executors as the API shows
//! them, 404/400/401 answers as JSON, and the unauthorized count.
//! (`tests/dashboard_api.rs` in the root crate covers a training job's
//! curves and checkpoints, and `/metrics` with promtool.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_runtime::dashboard::{Dashboard, DashboardConfig};
use kiln_runtime::monitor::view::{ApiError, ClusterView, JobDetail, JobSummary};
use kiln_runtime::{DriverConfig, LocalCluster, LocalConfig, Registry};

static CALLS: AtomicU64 = AtomicU64::new(0);

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    // Fails its first two calls on element 3, then works: two retries.
    r.register_map("flaky", |x: i64| -> i64 {
        if x == 3 && CALLS.fetch_add(1, Ordering::SeqCst) < 2 {
            panic!("flaky element {x} <b>not yet</b>")
        }
        x
    })
    .register_map("double", |x: i64| x * 2);
    Arc::new(r)
}

fn config(n: usize) -> LocalConfig {
    let mut c = LocalConfig::in_process(n);
    c.driver = DriverConfig {
        heartbeat: Duration::from_millis(100),
        executor_timeout: Duration::from_secs(2),
        max_task_attempts: 4,
        max_executor_failures: 1,
        ..DriverConfig::default()
    };
    c
}

#[path = "../../tests/cluster_support/http.rs"]
mod http;

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let a = http::get(addr, path, headers);
    (a.status, a.head, a.body)
}

async fn get_async(
    addr: SocketAddr,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
) -> (u16, String, String) {
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        get(addr, path, &h)
    })
    .await
    .unwrap()
}

async fn json<T: serde::de::DeserializeOwned>(addr: SocketAddr, path: &'static str) -> T {
    let (status, _, body) = get_async(addr, path, vec![]).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Waits (at most 10 s) for the monitor's view to satisfy `ok`.
async fn until<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    addr: SocketAddr,
    path: &'static str,
    ok: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: T = json(addr, path).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retries_exclusions_and_losses_show_in_the_api() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut cluster = LocalCluster::start(config(3), registry()).await.unwrap();
        let driver = cluster.driver().unwrap().clone();
        let dashboard = Dashboard::serve(
            driver.monitor().clone(),
            DashboardConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                token: None,
            },
        )
        .await
        .unwrap();
        let addr = dashboard.addr();
        let c: ClusterView = until(addr, "/api/cluster", |c: &ClusterView| {
            c.executors.len() == 3
        })
        .await;
        assert!(c
            .executors
            .iter()
            .all(|e| e.state == "live" && e.cores == 1));
        assert!(
            c.executors
                .iter()
                .all(|e| e.bytes_sent > 0 && e.bytes_received > 0),
            "{c:?}"
        );

        // Work outside a submitted job is job 0's.
        let ds = driver.parallelize((0..8i64).collect(), 4).unwrap();
        assert_eq!(ds.map::<i64>("flaky").unwrap().count().await.unwrap(), 8);
        let d: JobDetail = until(addr, "/api/jobs/0", |d: &JobDetail| {
            d.activity.recent.len() == 1 && !d.activity.exclusions.is_empty()
        })
        .await;
        let a = &d.activity;
        assert_eq!(d.info.kind, "embedded");
        assert_eq!(
            (a.stages, a.stages_failed, a.task_failures, a.retries),
            (1, 0, 2, 2),
            "{a:?}"
        );
        assert_eq!(a.tasks, 6, "4 partitions, one of them three times: {a:?}");
        let stage = &a.recent[0];
        assert_eq!((stage.state.as_str(), stage.done), ("succeeded", 4));
        let flaky = &stage.tasks[1];
        assert_eq!((flaky.attempts, flaky.state.as_str()), (3, "succeeded"));
        assert!(
            flaky.error.as_deref().unwrap().contains("flaky element 3"),
            "{flaky:?}"
        );
        let f = &a.failures[0];
        assert_eq!((f.partition, f.kind.as_str()), (1, "failed"));
        assert!(
            f.error.contains("<b>not yet</b>"),
            "error text kept as is: {f:?}"
        );
        assert!(c.executors.iter().any(|e| e.id == f.executor));
        assert!(a
            .exclusions
            .iter()
            .any(|x| x.executor == f.executor && x.failures == 1));
        let jobs: Vec<JobSummary> = json(addr, "/api/jobs").await;
        assert_eq!((jobs[0].info.id, jobs[0].task_failures), (0, 2));

        // A lost executor is listed as departed, with why.
        cluster.kill_executor(2).unwrap();
        let c: ClusterView = until(addr, "/api/cluster", |c: &ClusterView| c.lost == 1).await;
        assert_eq!(c.executors.len(), 2);
        assert_eq!(c.departed[0].state, "lost");
        assert!(!c.departed[0].reason.is_empty());
        assert!(c.wire["executor"].sent > 0);

        // Unknown things: JSON 404s and 400s naming them.
        for (path, status, says) in [
            ("/api/jobs/42", 404, "job 42 does not exist"),
            ("/api/jobs/42/training", 404, "job 42 does not exist"),
            ("/api/jobs/42/checkpoints", 404, "job 42 does not exist"),
            ("/api/executors/99", 404, "executor 99 does not exist"),
            ("/api/jobs/seven", 400, "job id \"seven\" is not a number"),
            (
                "/api/jobs/0/training?since=x",
                400,
                "since=\"x\" is not an iteration number",
            ),
            (
                "/api/jobs/0/training?limit=3",
                400,
                "unknown query parameter \"limit=3\"",
            ),
            (
                "/api/nothing",
                404,
                "/api/nothing is not a page or API route",
            ),
            ("/assets/evil.js", 404, "asset \"evil.js\" does not exist"),
        ] {
            let (got, head, body) = get_async(addr, path, vec![]).await;
            assert_eq!(got, status, "{path}: {body}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("content-type: application/json"),
                "{head}"
            );
            let e: ApiError = serde_json::from_str(&body).unwrap();
            assert_eq!(e.status, status);
            assert!(e.error.contains(says), "{path}: {}", e.error);
        }
        // Without a token, only requests to a loopback name are served: a
        // page that rebinds its own name to 127.0.0.1 is refused.
        let (got, _, body) = get_async(
            addr,
            "/api/cluster",
            vec![("Host", "evil.example:80".into())],
        )
        .await;
        assert_eq!(got, 403, "{body}");
        assert!(body.contains("loopback name"), "{body}");
        let (got, _, _) = get_async(
            addr,
            "/api/cluster",
            vec![("Host", format!("localhost:{}", addr.port()))],
        )
        .await;
        assert_eq!(got, 200);
        let live = c.executors[0].id;
        let (got, _, body) = get_async(
            addr,
            Box::leak(format!("/api/executors/{live}").into_boxed_str()),
            vec![],
        )
        .await;
        assert_eq!(got, 200, "{body}");
        dashboard.stop().await;
        cluster.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_with_a_token_refuses_and_counts_requests_without_it() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let cluster = LocalCluster::start(config(1), registry()).await.unwrap();
        let driver = cluster.driver().unwrap().clone();
        let token = kiln_runtime::dashboard::generate_token().unwrap();
        let dashboard = Dashboard::serve(
            driver.monitor().clone(),
            DashboardConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                token: Some(token.clone()),
            },
        )
        .await
        .unwrap();
        let addr = dashboard.addr();
        assert_eq!(dashboard.url(), format!("http://{addr}/?token={token}"));
        // A second dashboard on the same address: an error naming it.
        let taken = Dashboard::serve(
            driver.monitor().clone(),
            DashboardConfig {
                listen: addr,
                token: None,
            },
        )
        .await
        .err()
        .expect("the address is taken");
        assert!(
            taken
                .to_string()
                .contains(&format!("cannot listen on {addr}")),
            "{taken}"
        );
        let wrong = "0".repeat(64);
        let refused = [
            ("/", vec![]),
            ("/api/cluster", vec![]),
            ("/metrics", vec![]),
            (
                "/api/jobs",
                vec![("Authorization", format!("Bearer {wrong}"))],
            ),
            (
                "/api/jobs",
                vec![("Cookie", format!("kiln_ui_token={wrong}"))],
            ),
            ("/api/jobs", vec![("Authorization", token.clone())]),
        ];
        for (path, headers) in refused.iter().cloned() {
            let (status, head, body) = get_async(addr, path, headers).await;
            assert_eq!(status, 401, "{path}: {body}");
            assert!(head.contains("www-authenticate"), "{head}");
            let e: ApiError = serde_json::from_str(&body).unwrap();
            assert!(e.error.contains("token"), "{}", e.error);
        }
        let bearer = vec![("Authorization", format!("Bearer {token}"))];
        let (status, _, body) = get_async(addr, "/api/cluster", bearer.clone()).await;
        assert_eq!(status, 200, "{body}");
        let c: ClusterView = serde_json::from_str(&body).unwrap();
        assert_eq!(c.unauthorized_requests, refused.len() as u64);
        let (_, _, metrics) = get_async(addr, "/metrics", bearer).await;
        assert!(
            metrics.contains(&format!(
                "kiln_ui_unauthorized_requests_total {}",
                refused.len()
            )),
            "{metrics}"
        );
        // The link's ?token= sets the cookie the page's own requests carry.
        let path: &'static str = Box::leak(format!("/?token={token}").into_boxed_str());
        let (status, head, body) = get_async(addr, path, vec![]).await;
        assert_eq!(status, 200);
        assert!(body.contains("/assets/app.js"), "{body}");
        let cookie = format!("kiln_ui_token={token}");
        assert!(
            head.contains(&cookie) && head.contains("HttpOnly"),
            "{head}"
        );
        let (status, _, _) = get_async(
            addr,
            "/api/jobs",
            vec![("Cookie", format!("theme=dark; {cookie}"))],
        )
        .await;
        assert_eq!(status, 200);
        dashboard.stop().await;
        cluster.shutdown().await;
    })
    .await
    .expect("test timed out");
}
