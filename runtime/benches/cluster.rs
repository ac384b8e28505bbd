//! Runtime benchmarks (run by hand: `cargo bench -p kiln-runtime`; never in
//! tests; `cargo bench -p kiln-runtime --bench cluster -- NAME` runs only the
//! figures whose name contains NAME). Prints one line per figure:
//! * QUIC round trip of a small framed message on loopback (p50, p99) and
//!   sequential messages/s, after the TLS handshake (`quic_rtt_small`);
//! * the same over the in-memory control stream that in-process executors
//!   use (`ExecutorMode::InProcessDirect`: a `tokio::io::duplex` pipe with
//!   the same frame functions) (`mem_rtt_small`);
//! * tasks scheduled per second (2 in-process executors, 2000 tiny tasks)
//!   over QUIC loopback (`tasks_per_s`) and in memory (`tasks_per_s_mem`);
//! * map/filter/count over 10M integers and reduce-by-key over 1M pairs on
//!   2 executors (the jobs of ../shared/anchors/spark_rdd.py).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use kiln_runtime::transport::{self, ClusterIdentity};
use kiln_runtime::{LocalCluster, LocalConfig, Registry};

fn registry() -> Arc<Registry> {
    let mut r = Registry::new();
    r.register_source("range", |&(lo, hi): &(i64, i64), p: u32, n: u32| {
        let len = hi - lo;
        let a = lo + len * p as i64 / n as i64;
        let b = lo + len * (p as i64 + 1) / n as i64;
        Ok((a..b).collect::<Vec<i64>>())
    })
    .register_map("double", |x: i64| x * 2)
    .register_filter("div3", |x: &i64| x % 3 == 0)
    .register_map("key_mod_1000", |x: i64| (x % 1000, x))
    .register_reduce_by_key::<i64, i64>("add", |a, b| a + b);
    Arc::new(r)
}

async fn rtt() -> kiln_runtime::Result<()> {
    let id = ClusterIdentity::generate()?;
    let ep = transport::server_endpoint(&id, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = ep.local_addr().map_err(|e| kiln_runtime::Error::Io {
        path: "the benchmark endpoint's local address".into(),
        source: e,
    })?;
    let server = tokio::spawn(async move {
        if let Some(inc) = ep.accept().await {
            if let Ok(conn) = inc.await {
                if let Ok((mut s, mut r)) = conn.accept_bi().await {
                    while let Ok(Some(v)) =
                        transport::read_frame::<(u64, String)>(&mut r, addr, 1 << 20).await
                    {
                        if transport::write_frame(&mut s, addr, &v, 1 << 20)
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        }
    });
    let conn = transport::connect_tls(addr, id.token(), Duration::from_secs(5)).await?;
    let (mut s, mut r) = conn
        .open_bi()
        .await
        .map_err(|e| kiln_runtime::Error::Connection {
            peer: addr,
            reason: format!("opening a stream: {e}"),
        })?;
    ping_pong("quic_rtt_small", &mut s, &mut r, addr).await?;
    conn.close(0u32.into(), b"done");
    server.abort();
    Ok(())
}

/// 12,000 sequential small frames echoed back; prints p50/p99 of the last
/// 10,000 round trips.
async fn ping_pong(
    name: &str,
    s: &mut (impl AsyncWrite + Unpin),
    r: &mut (impl AsyncRead + Unpin),
    addr: SocketAddr,
) -> kiln_runtime::Result<()> {
    let msg = "ping".to_string();
    let mut lat = Vec::new();
    for i in 0..12_000u64 {
        let t = Instant::now();
        transport::write_frame(s, addr, &(i, &msg), 1 << 20).await?;
        let _: Option<(u64, String)> = transport::read_frame(r, addr, 1 << 20).await?;
        if i >= 2000 {
            lat.push(t.elapsed());
        }
    }
    let total: Duration = lat.iter().sum();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    println!(
        "{name}  p50_us={:.1} p99_us={:.1} msgs_per_s={:.0}",
        p(0.5),
        p(0.99),
        lat.len() as f64 / total.as_secs_f64()
    );
    Ok(())
}

/// The in-memory control stream: a duplex pipe, an echo task on the far
/// end, the same frame functions.
async fn mem_rtt() -> kiln_runtime::Result<()> {
    let addr = SocketAddr::from(([0, 0, 0, 0], 0));
    let (near, far) = tokio::io::duplex(256 << 10);
    let server = tokio::spawn(async move {
        let (mut r, mut s) = tokio::io::split(far);
        while let Ok(Some(v)) = transport::read_frame::<(u64, String)>(&mut r, addr, 1 << 20).await
        {
            if transport::write_frame(&mut s, addr, &v, 1 << 20)
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (mut r, mut s) = tokio::io::split(near);
    ping_pong("mem_rtt_small", &mut s, &mut r, addr).await?;
    server.abort();
    Ok(())
}

/// Tasks per second on 2 in-process executors over in-memory connections.
async fn tasks_mem() -> kiln_runtime::Result<()> {
    let cluster = LocalCluster::start(LocalConfig::in_process_direct(2), registry()).await?;
    let d = cluster.driver()?;
    let tiny = d.parallelize(vec![1i64; 2000], 2000)?;
    tiny.count().await?;
    let t = Instant::now();
    let n = 3;
    for _ in 0..n {
        tiny.count().await?;
    }
    println!(
        "tasks_per_s_mem  {:.0}",
        (2000 * n) as f64 / t.elapsed().as_secs_f64()
    );
    cluster.shutdown().await;
    Ok(())
}

async fn jobs() -> kiln_runtime::Result<()> {
    let mut config = LocalConfig::in_process(2);
    config.cores_per_executor = 1;
    let cluster = LocalCluster::start(config, registry()).await?;
    let d = cluster.driver()?;
    // Tasks per second.
    let tiny = d.parallelize(vec![1i64; 2000], 2000)?;
    tiny.count().await?;
    let t = Instant::now();
    let n = 3;
    for _ in 0..n {
        tiny.count().await?;
    }
    println!(
        "tasks_per_s  {:.0}",
        (2000 * n) as f64 / t.elapsed().as_secs_f64()
    );
    for run in 0..3 {
        let t = Instant::now();
        let c = d
            .source::<_, i64>("range", &(0i64, 10_000_000i64), 8)?
            .map::<i64>("double")?
            .filter("div3")?
            .count()
            .await?;
        assert_eq!(c, 3_333_334);
        println!(
            "map_filter_count_10M  run={run} s={:.3}",
            t.elapsed().as_secs_f64()
        );
    }
    for run in 0..3 {
        let t = Instant::now();
        let kv = d
            .source::<_, i64>("range", &(0i64, 1_000_000i64), 8)?
            .map::<(i64, i64)>("key_mod_1000")?
            .reduce_by_key("add", 8)?
            .collect()
            .await?;
        assert_eq!(kv.len(), 1000);
        assert_eq!(
            kv.iter().map(|(_, v)| v).sum::<i64>(),
            1_000_000 * 999_999 / 2
        );
        println!(
            "reduce_by_key_1M  run={run} s={:.3}",
            t.elapsed().as_secs_f64()
        );
    }
    cluster.shutdown().await;
    Ok(())
}

fn main() -> kiln_runtime::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| kiln_runtime::Error::Io {
            path: "the benchmark's tokio runtime".into(),
            source: e,
        })?;
    // `cargo bench -- NAME` passes NAME (and `--bench`): run the figures
    // whose name contains it.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |names: &[&str]| {
        filter
            .as_deref()
            .is_none_or(|f| names.iter().any(|n| n.contains(f)))
    };
    rt.block_on(async {
        if want(&["quic_rtt_small"]) {
            rtt().await?;
        }
        if want(&["mem_rtt_small"]) {
            mem_rtt().await?;
        }
        if want(&["tasks_per_s_mem"]) {
            tasks_mem().await?;
        }
        if want(&["tasks_per_s", "map_filter_count_10M", "reduce_by_key_1M"]) {
            jobs().await?;
        }
        Ok(())
    })
}
