//! The dashboard in a real browser: `kiln local --ui` runs a digits job,
//! headless Chromium (driven through chromedriver, the Debian packages
//! chromium and chromium-driver) opens the dashboard and must show both
//! executors, the running job and a loss curve with at least two points;
//! screenshots go to `target/dashboard.png` and
//! `target/dashboard-training.png`. Skipped with a message where chromium
//! or chromedriver is missing (CI installs them: .ci/run).

#[path = "cluster_support/helpers.rs"]
mod helpers;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use helpers::{kiln, root, Guard};

/// The first of `names` on the PATH.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a free loopback port, once it accepts connections.
fn start_chromedriver(bin: &Path) -> (Guard, u16) {
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let guard = Guard::of(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, port)
}

/// Polls `check` (at most `within`) until it gives a value.
async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "the page never showed {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    c.find(Locator::Css(css))
        .await
        .ok()?
        .attr(name)
        .await
        .ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_executors_the_running_job_and_its_loss_curve() {
    let (Some(chromium), Some(chromedriver)) = (
        which(&["chromium", "chromium-browser", "google-chrome"]),
        which(&["chromedriver"]),
    ) else {
        eprintln!("SKIPPED the browser test: chromium and chromedriver are not both installed (apt-get install chromium chromium-driver)");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let mut local = kiln(&[
        "local",
        "--executors",
        "2",
        "--ui",
        "127.0.0.1:0",
        "digits",
        "--epochs",
        "400",
        "--no-progress",
    ]);
    let url = local.wait_for("UI ", Duration::from_secs(60))["UI ".len()..]
        .trim()
        .to_string();
    local.wait_for("TRAINING ", Duration::from_secs(60));
    let (mut driver_process, port) = start_chromedriver(&chromedriver);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1300,1000", format!("--user-data-dir={}", profile.path().display())],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a chromedriver session");
    let within = Duration::from_secs(60);
    let checked = async {
        client.goto(&url).await.unwrap();
        eventually("two executors", within, async || {
            (count(&client, "table.executors tr.executor").await == 2).then_some(())
        })
        .await;
        let job = eventually("the running job", within, async || {
            attr(&client, "#running-job", "data-id").await
        })
        .await;
        assert_eq!(job, "1");
        let points = eventually("a loss curve of two points", within, async || {
            let n: usize = attr(&client, "svg#chart-loss", "data-points")
                .await?
                .parse()
                .ok()?;
            (n >= 2).then_some(n)
        })
        .await;
        assert!(count(&client, "svg#chart-loss polyline").await >= 1);
        let shots = root().join("target");
        std::fs::create_dir_all(&shots).unwrap();
        std::fs::write(
            shots.join("dashboard.png"),
            client.screenshot().await.unwrap(),
        )
        .unwrap();
        // The training page: its charts and the split of an iteration.
        client.goto(&format!("{url}#/training")).await.unwrap();
        eventually("the training charts", within, async || {
            let n: usize = attr(&client, "svg#chart-split", "data-points")
                .await?
                .parse()
                .ok()?;
            (n >= 2 && count(&client, "#iteration-split div").await == 4).then_some(())
        })
        .await;
        std::fs::write(
            shots.join("dashboard-training.png"),
            client.screenshot().await.unwrap(),
        )
        .unwrap();
        points
    };
    let points = tokio::time::timeout(Duration::from_secs(180), checked)
        .await
        .expect("the browser checks took over 3 minutes");
    eprintln!("the loss curve showed {points} points; screenshots in target/");
    let _ = tokio::time::timeout(Duration::from_secs(20), client.close()).await;
    driver_process.kill9();
    local.kill9();
}
