//! `--ui ADDR` (and `--ui-token-file FILE`): the driver's web dashboard and
//! `/metrics`, on `kiln driver`, `kiln local` and every command that starts
//! a local cluster. Off by default. Bound to loopback it needs no token;
//! bound to anything else it needs one: read from the file given, or made
//! fresh and printed once (on the `UI` line), never logged.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kiln_runtime::dashboard::{generate_token, Dashboard, DashboardConfig};
use kiln_runtime::Driver;

/// The dashboard's flags.
#[derive(Args, Debug, Clone, Default)]
pub struct UiArgs {
    /// Serve the web dashboard and Prometheus /metrics on this TCP
    /// address, e.g. 127.0.0.1:8080 (port 0: any free port). Off by
    /// default. Any address but loopback needs a UI token.
    #[arg(long, value_name = "ADDR")]
    pub ui: Option<SocketAddr>,
    /// A file whose first line is the UI token (at least 16 characters)
    /// every dashboard request must carry. Without it, a dashboard off
    /// loopback gets a fresh random token, printed once.
    #[arg(long, value_name = "FILE", requires = "ui")]
    pub ui_token_file: Option<PathBuf>,
}

impl UiArgs {
    /// The dashboard's settings, checked before anything starts; `None`
    /// without `--ui`.
    pub fn config(&self) -> anyhow::Result<Option<DashboardConfig>> {
        let Some(listen) = self.ui else {
            return Ok(None);
        };
        let token = match &self.ui_token_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--ui-token-file {}", file.display()))?;
                let first = text.lines().next().unwrap_or("").trim().to_string();
                Some(first)
            }
            None if listen.ip().is_loopback() => None,
            None => Some(generate_token()?),
        };
        let config = DashboardConfig { listen, token };
        config
            .validate()
            .with_context(|| match &self.ui_token_file {
                Some(f) => format!("--ui {listen} with --ui-token-file {}", f.display()),
                None => format!("--ui {listen}"),
            })?;
        Ok(Some(config))
    }
}

/// Starts the dashboard of `driver` (inside its runtime) and prints where
/// it is: `UI <url>` (the token in the link when there is one, said once).
pub async fn start(
    driver: &Driver,
    config: Option<DashboardConfig>,
) -> anyhow::Result<Option<Dashboard>> {
    let Some(config) = config else {
        return Ok(None);
    };
    let with_token = config.token.is_some();
    let dashboard = Dashboard::serve(driver.monitor().clone(), config).await?;
    super::out_line(&format!("UI {}", dashboard.url()));
    if with_token {
        super::out_line(
            "UI every request needs the token in that link (kept in a cookie after the first visit; \
             Prometheus and scripts send Authorization: Bearer TOKEN)",
        );
    }
    Ok(Some(dashboard))
}
