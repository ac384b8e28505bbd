//! The driver's web dashboard: pages for the cluster, jobs, training and
//! checkpoints, the JSON API they are drawn from (`/api/...`, documented
//! in `docs/dashboard.md`) and Prometheus metrics (`/metrics`). Off by
//! default; `kiln driver --ui ADDR` and `kiln local --ui ADDR` turn it on.
//!
//! **Why axum and not actix-web** (the design card's name): the driver
//! already runs one tokio runtime, and axum serves on it as one more task
//! set (hyper under it, tower for the middleware). actix-web runs its own
//! actor system with a single-threaded runtime per worker thread: a second
//! set of threads beside the driver's, which ARCHITECTURE.md's "two actor
//! systems buy nothing" rules out, and its current release needs a newer
//! compiler than this workspace's `rust-version` (1.89 against 1.85).
//!
//! Security: a dashboard bound to anything but loopback needs a UI token
//! ([`DashboardConfig::token`]); every request must then carry it (an
//! `Authorization: Bearer` header, the `kiln_ui_token` cookie the first
//! page visit with `?token=` sets, or that query parameter). A request
//! without it is answered 401 and counted
//! (`kiln_ui_unauthorized_requests_total`). All assets are compiled into
//! the binary: nothing is fetched from elsewhere.
//!
//! The handlers only read the [`Monitor`]'s copy of the driver's state;
//! see [`crate::monitor`] for why that never slows scheduling.

mod api;
mod assets;
mod auth;

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::monitor::Monitor;

/// The shortest UI token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// Where and how the dashboard serves.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// The TCP address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The UI token every request must carry; required unless `listen`
    /// is a loopback address. See [`generate_token`].
    pub token: Option<String>,
}

impl DashboardConfig {
    /// Checks the settings before anything binds: a token of at least
    /// [`MIN_TOKEN_LEN`] characters, and one at all off loopback.
    pub fn validate(&self) -> Result<()> {
        match &self.token {
            Some(t) if t.chars().count() < MIN_TOKEN_LEN => Err(Error::DashboardTokenTooShort {
                len: t.chars().count(),
                min: MIN_TOKEN_LEN,
            }),
            None if !self.listen.ip().is_loopback() => {
                Err(Error::DashboardNeedsToken { addr: self.listen })
            }
            _ => Ok(()),
        }
    }
}

/// A fresh random UI token: 32 bytes from the operating system's
/// generator, as 64 hex digits.
pub fn generate_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::NoRandomness { what: "a UI token" })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A running dashboard; [`Dashboard::stop`] ends it (dropping it leaves
/// it serving until the runtime ends).
pub struct Dashboard {
    addr: SocketAddr,
    token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Dashboard {
    /// Validates `config`, binds and starts serving `monitor` (inside a
    /// tokio runtime).
    pub async fn serve(monitor: Monitor, config: DashboardConfig) -> Result<Dashboard> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::DashboardBind {
                addr: config.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::DashboardBind {
                addr: config.listen,
                source,
            })?;
        let app = api::router(monitor, config.token.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                warn!(%addr, error = %e, "the dashboard stopped serving");
            }
        });
        info!(%addr, token = config.token.is_some(), "dashboard serving");
        Ok(Dashboard {
            addr,
            token: config.token,
            stop: Some(tx),
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address to open in a browser (with the token, if any, for the
    /// first visit; the page then keeps it in a cookie).
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("http://{}/?token={t}", self.addr),
            None => format!("http://{}/", self.addr),
        }
    }

    /// Stops serving and waits (at most five seconds) for open requests.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str, token: Option<&str>) -> DashboardConfig {
        DashboardConfig {
            listen: listen.parse().unwrap(),
            token: token.map(String::from),
        }
    }

    #[test]
    fn a_bind_off_loopback_needs_a_token_of_sixteen_characters() {
        assert!(config("127.0.0.1:0", None).validate().is_ok());
        assert!(config("[::1]:0", None).validate().is_ok());
        let e = config("0.0.0.0:8080", None).validate().unwrap_err();
        assert!(e.to_string().contains("needs a UI token"), "{e}");
        let e = config("10.0.0.1:8080", Some("short"))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        assert!(config("0.0.0.0:8080", Some(&generate_token().unwrap()))
            .validate()
            .is_ok());
        assert_eq!(generate_token().unwrap().len(), 64);
        assert_ne!(generate_token().unwrap(), generate_token().unwrap());
    }
}
