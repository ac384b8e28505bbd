//! The cost of the dashboard to training (issue 24): the LeNet-5 digits
//! job (28x28, batch 128, SGD, 2 executor processes) with the dashboard
//! serving and a page open against without it, in alternating runs (the
//! order flips every pair, so a drift of the machine's speed hits both).
//!
//! "A page open" is what the dashboard's script does, from another
//! thread: the cluster page's and the training page's requests every
//! second (`/api/cluster`, `/api/jobs`, `/api/jobs/1/training?since=N`:
//! the iterations since the last poll, after a first full fetch, as the
//! page asks), plus a Prometheus scrape
//! of `/metrics` every 5 s; a browser's own drawing runs on the viewer's
//! machine, not the driver's. The monitor that folds the driver's events
//! runs in both arms: it is part of every driver.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::digits::DigitsModel;
use kiln::runtime::dashboard::{Dashboard, DashboardConfig};
use kiln::runtime::monitor::view::TrainingView;

#[path = "../../tests/cluster_support/http.rs"]
mod http;

use super::{cluster_config, digits, field, job_cluster, median, run_job, Opts};

/// Polls `addr` as an open dashboard page does until `stop`; counts the
/// requests answered.
fn open_page(addr: SocketAddr, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) {
    let get = |path: &str| {
        if http::get(addr, path, &[]).status == 200 {
            answered.fetch_add(1, Ordering::Relaxed);
        }
    };
    for path in ["/", "/assets/app.js", "/assets/style.css"] {
        get(path);
    }
    let mut tick = 0u64;
    let mut since = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        for path in ["/api/cluster", "/api/jobs"] {
            get(path);
        }
        let t = http::get(addr, &format!("/api/jobs/1/training?since={since}"), &[]);
        if t.status == 200 {
            answered.fetch_add(1, Ordering::Relaxed);
            since = serde_json::from_str::<TrainingView>(&t.body)
                .ok()
                .and_then(|v| v.iterations.last().map(|p| p.iteration))
                .unwrap_or(since);
        }
        if tick % 5 == 0 {
            get("/metrics");
        }
        tick += 1;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    }
}

/// One run of the job; its samples/s without the per-epoch evaluations,
/// and the dashboard requests answered meanwhile.
async fn run(o: &Opts, with_ui: bool, epochs: u64) -> anyhow::Result<(f64, u64)> {
    let (cluster, _work) = job_cluster(cluster_config(o, 2)).await?;
    let d = cluster.driver()?;
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut page = None;
    let dashboard = if with_ui {
        let dash = Dashboard::serve(
            d.monitor().clone(),
            DashboardConfig {
                listen: "127.0.0.1:0".parse()?,
                token: None,
            },
        )
        .await?;
        let (addr, stop, answered) = (dash.addr(), stop.clone(), answered.clone());
        page = Some(std::thread::spawn(move || open_page(addr, stop, answered)));
        Some(dash)
    } else {
        None
    };
    let settings = digits(DigitsModel::Lenet5, epochs, 128, 0.1, 2, 2, None)?;
    let lines = run_job(d, "digits", &settings).await;
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = page {
        let _ = tokio::task::spawn_blocking(move || p.join()).await;
    }
    if let Some(dash) = dashboard {
        dash.stop().await;
    }
    cluster.shutdown().await;
    let samples_per_s = field(&lines?, "TIMES", "iteration_samples_per_s")?;
    Ok((samples_per_s, answered.load(Ordering::Relaxed)))
}

/// `--only ui`: `pairs` alternating pairs of runs of `epochs` epochs.
pub(super) async fn ui_cost(o: &Opts, pairs: usize, epochs: u64) -> anyhow::Result<()> {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_ui in order {
            let (sps, answered) = run(o, with_ui, epochs).await?;
            println!(
                "{{\"bench\":\"ui_cost_run\",\"pair\":{pair},\"ui\":{with_ui},\"epochs\":{epochs},\"iteration_samples_per_s\":{sps:.1},\"dashboard_requests\":{answered}}}"
            );
            if with_ui {
                with.push(sps);
            } else {
                without.push(sps);
            }
        }
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (hi - lo) / median(v.to_vec()) * 100.0
    };
    let (m_with, m_without) = (median(with.clone()), median(without.clone()));
    println!(
        "{{\"bench\":\"ui_cost\",\"model\":\"Lenet5\",\"pairs\":{pairs},\"epochs\":{epochs},\"with_ui_samples_per_s\":{m_with:.1},\"without_samples_per_s\":{m_without:.1},\"cost_pct\":{:.2},\"spread_without_pct\":{:.1},\"spread_with_pct\":{:.1}}}",
        (m_without - m_with) / m_without * 100.0,
        spread(&without),
        spread(&with)
    );
    Ok(())
}
