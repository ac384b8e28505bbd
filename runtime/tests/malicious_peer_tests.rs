//! Authenticated but malicious peers on the executors' side of a cluster:
//! a test peer passes the handshake with the valid cluster secret, then
//! sends garbage, oversized, truncated and out-of-order frames and
//! messages of the wrong kind
//! * to an executor's peer endpoint (the shuffle block service), while a
//!   shuffle job fetches blocks between the executors;
//! * as a registered executor, on its control stream, while it holds tasks.
//!
//! In each, a job runs while the attacks go on and must give the right
//! result; the dropped links are counted where the operator sees them
//! (`kiln status`: `ClusterStatus::dropped_peer_links` and each
//! executor's, or `dropped_links` and `lost`); and the cluster serves new
//! peers and jobs afterwards. Every wait is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_runtime::transport::{self, quinn, Role};
use kiln_runtime::{ClusterStatus, Driver, LocalCluster, LocalConfig, Registry};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

/// Network timeout of every connection the test makes.
const T: Duration = Duration::from_secs(10);
/// Bound on any one wait of a test.
const WAIT: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {WAIT:?}"))
}

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register_map("slow_double", |x: i64| {
        std::thread::sleep(Duration::from_millis(20));
        x * 2
    })
    .register_map("slow_mod_key", |x: i64| {
        if x % 50 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        (x % 10, x)
    })
    .register_reduce_by_key::<i64, i64>("sum_by_mod", |a, b| a + b);
    Arc::new(r)
}

async fn cluster() -> LocalCluster {
    bounded(
        "cluster start",
        LocalCluster::start(LocalConfig::in_process(2), registry()),
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------
// The runtime's wire types, as the runtime encodes them (same names, field
// and variant order): for messages of the right format sent where they do
// not belong.

#[derive(Serialize)]
struct PeerAddr {
    addr: SocketAddr,
    fingerprint: [u8; 32],
}

#[derive(Serialize)]
#[allow(dead_code)]
enum ToDriver {
    Register {
        name: String,
        cores: u32,
        pid: u32,
        peer: PeerAddr,
    },
    Heartbeat {
        dropped_peer_links: u64,
    },
    Leave,
}

#[derive(Serialize)]
#[allow(dead_code)]
enum ToExecutor {
    Registered {
        executor_id: u64,
        heartbeat_ms: u64,
        timeout_ms: u64,
    },
    Heartbeat,
    Shutdown,
}

#[derive(Serialize)]
struct FetchRequest {
    shuffle: u64,
    map: u32,
    reduce: u32,
}

#[derive(Debug, Serialize, Deserialize)]
enum FetchReply {
    Block(u64),
    Missing,
}

/// `body` behind its u32 length prefix.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn encoded<T: Serialize>(value: &T) -> Vec<u8> {
    framed(&rmp_serde::to_vec(value).unwrap())
}

/// One attack: what it is, the bytes sent, and whether the stream is
/// finished after them (a truncated frame) or left open (the peer stalls).
struct Attack {
    what: &'static str,
    bytes: Vec<u8>,
    finish: bool,
}

fn attack(what: &'static str, bytes: Vec<u8>, finish: bool) -> Attack {
    Attack {
        what,
        bytes,
        finish,
    }
}

/// Whether `reason` is the close of a link dropped for breaking the
/// protocol.
///
/// The close can be lost on a busy loopback: the peer then learns of it by
/// a stateless reset once the other side forgot the connection (the
/// counters the tests check say why it was closed).
fn dropped_for_protocol(reason: &quinn::ConnectionError) -> bool {
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            c.error_code == transport::CLOSE_PROTOCOL.into()
        }
        quinn::ConnectionError::Reset => true,
        _ => false,
    }
}

fn unhex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// Polls the driver's status until `done` holds (bounded).
async fn wait_status(
    driver: &Driver,
    what: &str,
    done: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = driver.status().await.unwrap();
        if done(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sums by `x % 10` of `0..n`.
fn sums_by_mod(n: i64) -> Vec<(i64, i64)> {
    let mut sums = vec![0i64; 10];
    for x in 0..n {
        sums[(x % 10) as usize] += x;
    }
    (0..10).zip(sums).collect()
}

async fn shuffle_job(driver: &Driver, n: i64) -> Vec<(i64, i64)> {
    let ds = driver.parallelize((0..n).collect(), 12).unwrap();
    let mut out = ds
        .map::<(i64, i64)>("slow_mod_key")
        .unwrap()
        .reduce_by_key("sum_by_mod", 6)
        .unwrap()
        .collect()
        .await
        .unwrap();
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// 1. An executor's peer endpoint.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_breaking_the_protocol_at_an_executors_peer_endpoint_are_dropped_and_counted() {
    let cluster = cluster().await;
    let driver = cluster.driver().unwrap();
    let secret = driver.token().secret;
    let st = driver.status().await.unwrap();
    let targets: Vec<(SocketAddr, [u8; 32])> = st
        .executors
        .iter()
        .map(|e| (e.peer_addr.parse().unwrap(), unhex(&e.peer_fingerprint)))
        .collect();
    assert_eq!(targets.len(), 2);
    let preamble = transport::preamble(transport::PROTOCOL_VERSION, &secret, Role::Executor);
    let attacks = || {
        vec![
            attack("garbage", framed(&[0xc1; 9]), true),
            attack("oversized", u32::MAX.to_be_bytes().to_vec(), false),
            attack("truncated header", vec![0, 0], true),
            attack("truncated body", vec![0, 0, 0, 64, 1, 2, 3], true),
            attack("a reply as request", encoded(&FetchReply::Block(3)), true),
            attack("a second preamble", preamble.to_vec(), true),
            attack("stalled request", vec![0], false),
        ]
    };
    let per_executor = attacks().len() as u64;

    // The attacks, on both executors, while a shuffle job runs.
    let job = shuffle_job(driver, 3000);
    let mut runs = JoinSet::new();
    for &(addr, fingerprint) in &targets {
        for a in attacks() {
            runs.spawn(async move {
                let conn = transport::connect_peer(addr, &fingerprint, &secret, T)
                    .await
                    .unwrap_or_else(|e| panic!("{}: the handshake failed: {e}", a.what));
                let (mut send, _recv) = conn.open_bi().await.unwrap();
                send.write_all(&a.bytes).await.unwrap();
                if a.finish {
                    send.finish().unwrap();
                }
                (a.what, conn.closed().await)
            });
        }
    }
    let attacked = async {
        while let Some(done) = runs.join_next().await {
            let (what, reason) = done.unwrap();
            assert!(dropped_for_protocol(&reason), "{what}: {reason:?}");
        }
    };
    let (out, ()) = bounded("job and attacks", async { tokio::join!(job, attacked) }).await;
    assert_eq!(out, sums_by_mod(3000));

    // Each executor counted its drops; the driver shows them with the next
    // heartbeats.
    let st = wait_status(driver, "the drops did not reach the driver", |st| {
        st.dropped_peer_links == 2 * per_executor
    })
    .await;
    for e in &st.executors {
        assert_eq!(e.dropped_peer_links, per_executor, "{st:?}");
    }
    assert_eq!(st.executors.len(), 2, "{st:?}");
    assert_eq!(st.lost, 0, "{st:?}");
    assert_eq!(st.dropped_links, 0, "the driver saw none of it: {st:?}");

    // A new peer is served: a valid request for a block nobody holds.
    for &(addr, fingerprint) in &targets {
        let conn = bounded(
            "honest peer",
            transport::connect_peer(addr, &fingerprint, &secret, T),
        )
        .await
        .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let req = FetchRequest {
            shuffle: 9999,
            map: 0,
            reduce: 0,
        };
        send.write_all(&encoded(&req)).await.unwrap();
        send.finish().unwrap();
        let reply: Option<FetchReply> = bounded(
            "block reply",
            transport::read_frame(&mut recv, addr, 1 << 20),
        )
        .await
        .unwrap();
        assert!(matches!(reply, Some(FetchReply::Missing)), "{reply:?}");
        conn.close(transport::CLOSE_NORMAL.into(), b"done");
    }
    // And a later shuffle job runs.
    assert_eq!(
        bounded("second job", shuffle_job(driver, 500)).await,
        sums_by_mod(500)
    );
    let st = driver.status().await.unwrap();
    assert_eq!(st.dropped_peer_links, 2 * per_executor, "{st:?}");
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. A registered executor's control stream.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_executor_breaking_the_protocol_is_dropped_counted_and_its_tasks_rerun() {
    let cluster = cluster().await;
    let driver = cluster.driver().unwrap();
    let (addr, token) = (driver.addr(), driver.token().clone());
    let register = |name: &str| ToDriver::Register {
        name: name.into(),
        cores: 4,
        pid: 0,
        peer: PeerAddr {
            addr,
            fingerprint: [0; 32],
        },
    };
    let attacks = vec![
        attack("garbage", framed(&[0xc1; 9]), false),
        attack("oversized", u32::MAX.to_be_bytes().to_vec(), false),
        attack("truncated body", vec![0, 0, 0, 64, 1, 2, 3], true),
        attack("a second Register", encoded(&register("again")), false),
        attack("a driver's frame", encoded(&ToExecutor::Shutdown), false),
    ];
    let n = attacks.len();

    // Fake executors: valid token and Register, then they wait for a task.
    let mut fakes = Vec::new();
    for a in &attacks {
        let (conn, mut send, mut recv) = bounded(
            a.what,
            transport::connect_and_handshake(addr, &token, Role::Executor, T),
        )
        .await
        .unwrap();
        send.write_all(&encoded(&register(a.what))).await.unwrap();
        let registered: Option<serde::de::IgnoredAny> =
            bounded(a.what, transport::read_frame(&mut recv, addr, 1 << 20))
                .await
                .unwrap();
        assert!(registered.is_some(), "{}: not registered", a.what);
        fakes.push((conn, send, recv));
    }
    bounded("registrations", driver.wait_for_executors(2 + n, T))
        .await
        .unwrap();

    // A job over every executor; each fake breaks the protocol once it
    // holds a task.
    let ds = driver.parallelize((0..96i64).collect(), 32).unwrap();
    let job = async { ds.map::<i64>("slow_double").unwrap().collect().await };
    let mut runs = JoinSet::new();
    for (a, (conn, mut send, recv)) in attacks.into_iter().zip(fakes) {
        runs.spawn(async move {
            let _recv = recv;
            let _task = conn
                .accept_uni()
                .await
                .unwrap_or_else(|e| panic!("{}: no task: {e}", a.what));
            send.write_all(&a.bytes).await.unwrap();
            if a.finish {
                send.finish().unwrap();
            }
            (a.what, conn.closed().await)
        });
    }
    let attacked = async {
        while let Some(done) = runs.join_next().await {
            let (what, reason) = done.unwrap();
            assert!(dropped_for_protocol(&reason), "{what}: {reason:?}");
        }
    };
    let (out, ()) = bounded("job and attacks", async { tokio::join!(job, attacked) }).await;
    assert_eq!(
        out.unwrap(),
        (0..96).map(|x| x * 2).collect::<Vec<i64>>(),
        "the fakes' tasks ran elsewhere"
    );

    let st = wait_status(driver, "the fakes were not all dropped", |st| {
        st.dropped_links == n as u64 && st.lost == n as u64
    })
    .await;
    assert_eq!(st.executors.len(), 2, "only the fakes were lost: {st:?}");
    assert_eq!(st.refused_connections, 0, "{st:?}");
    // The driver serves a new job on the executors left.
    let ds = driver.parallelize((0..10i64).collect(), 4).unwrap();
    let again = bounded("second job", async {
        ds.map::<i64>("slow_double").unwrap().collect().await
    })
    .await
    .unwrap();
    assert_eq!(again, (0..10).map(|x| x * 2).collect::<Vec<i64>>());
    cluster.shutdown().await;
}
