//! The dashboard's routes: the pages' assets, the JSON API and
//! `/metrics`. Every error answer is JSON ([`ApiError`]): an unknown job
//! or executor is a 404 naming it, an id that is not a number a 400.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::assets;
use super::auth::{require_token, Guard};
use crate::monitor::view::ApiError;
use crate::monitor::Monitor;

/// A JSON error answer.
pub(super) fn error_response(status: StatusCode, error: String) -> Response {
    let body = ApiError {
        status: status.as_u16(),
        error,
    };
    (status, no_store(), Json(body)).into_response()
}

fn no_store() -> [(header::HeaderName, &'static str); 1] {
    [(header::CACHE_CONTROL, "no-store")]
}

fn ok<T: Serialize>(value: T) -> Response {
    (no_store(), Json(value)).into_response()
}

fn internal(e: crate::Error) -> Response {
    error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The answer for `found`, or a 404 naming `what`.
fn found_or_404<T: Serialize>(found: crate::Result<Option<T>>, what: String) -> Response {
    match found {
        Ok(Some(v)) => ok(v),
        Ok(None) => error_response(StatusCode::NOT_FOUND, format!("{what} does not exist")),
        Err(e) => internal(e),
    }
}

/// Parses an id from the path, or the 400 answer saying why not.
fn id_of(kind: &str, raw: &str) -> Result<u64, Response> {
    raw.parse().map_err(|_| {
        error_response(
            StatusCode::BAD_REQUEST,
            format!("{kind} id {raw:?} is not a number"),
        )
    })
}

/// Every route, behind the token check.
pub(super) fn router(monitor: Monitor, token: Option<String>) -> Router {
    let guard = Guard {
        token: token.map(Arc::from),
        monitor: monitor.clone(),
    };
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::file))
        .route("/api", get(api_index))
        .route("/api/cluster", get(cluster))
        .route("/api/executors/{id}", get(executor))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/training", get(training))
        .route("/api/jobs/{id}/checkpoints", get(checkpoints))
        .route(
            "/api/jobs/{id}/checkpoints/{checkpoint}/verify",
            axum::routing::post(verify_checkpoint),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(guard, require_token))
        .with_state(monitor)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("{} is not a page or API route (see /api)", uri.path()),
    )
}

/// `GET /api`: the routes, for discovery.
async fn api_index() -> Response {
    ok(serde_json::json!({
        "routes": {
            "/api/cluster": "executors, departed executors and cluster counters",
            "/api/executors/{id}": "one live executor",
            "/api/jobs": "every submitted job with its counters",
            "/api/jobs/{id}": "a job with its stages, tasks, failures and exclusions",
            "/api/jobs/{id}/training?since=N": "a training job's iterations (after iteration N) and epochs",
            "/api/jobs/{id}/checkpoints": "a training job's checkpoints",
            "POST /api/jobs/{id}/checkpoints/{checkpoint}/verify": "read a kept checkpoint's blobs again and verify them",
            "/metrics": "Prometheus metrics (text exposition format)"
        },
        "docs": "docs/dashboard.md"
    }))
}

async fn cluster(State(m): State<Monitor>) -> Response {
    match m.cluster() {
        Ok(v) => ok(v),
        Err(e) => internal(e),
    }
}

async fn executor(State(m): State<Monitor>, Path(raw): Path<String>) -> Response {
    match id_of("executor", &raw) {
        Ok(id) => found_or_404(m.executor(id), format!("executor {id}")),
        Err(r) => r,
    }
}

async fn jobs(State(m): State<Monitor>) -> Response {
    match m.jobs() {
        Ok(v) => ok(v),
        Err(e) => internal(e),
    }
}

async fn job(State(m): State<Monitor>, Path(raw): Path<String>) -> Response {
    match id_of("job", &raw) {
        Ok(id) => found_or_404(m.job(id), format!("job {id}")),
        Err(r) => r,
    }
}

/// The `since` of `?since=N` (iterations after N only; 0 without it), or
/// the 400 answer for any other query.
fn since_of(query: Option<&str>) -> Result<u64, Response> {
    let mut since = 0;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", v)) => {
                since = v.parse().map_err(|_| {
                    error_response(
                        StatusCode::BAD_REQUEST,
                        format!("since={v:?} is not an iteration number"),
                    )
                })?;
            }
            // The UI token may ride along on any request.
            Some(("token", _)) => {}
            _ => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {pair:?} (the training API takes since=N)"),
                ))
            }
        }
    }
    Ok(since)
}

async fn training(
    State(m): State<Monitor>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let (id, since) = match (id_of("job", &raw), since_of(query.as_deref())) {
        (Ok(id), Ok(since)) => (id, since),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    found_or_404(m.training(id, since), format!("job {id}"))
}

async fn checkpoints(State(m): State<Monitor>, Path(raw): Path<String>) -> Response {
    match id_of("job", &raw) {
        Ok(id) => found_or_404(m.checkpoints(id), format!("job {id}")),
        Err(r) => r,
    }
}

async fn verify_checkpoint(
    State(m): State<Monitor>,
    Path((raw_job, raw_checkpoint)): Path<(String, String)>,
) -> Response {
    let (job, checkpoint) = match (id_of("job", &raw_job), id_of("checkpoint", &raw_checkpoint)) {
        (Ok(j), Ok(c)) => (j, c),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    match m.job(job) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return error_response(StatusCode::NOT_FOUND, format!("job {job} does not exist"))
        }
        Err(e) => return internal(e),
    }
    found_or_404(
        m.verify_checkpoint(job, checkpoint).await,
        format!("checkpoint {checkpoint} of job {job} (kept by its store)"),
    )
}

async fn metrics(State(m): State<Monitor>) -> Response {
    match m.metrics_text() {
        Ok(text) => (
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                ),
                (header::CACHE_CONTROL, "no-store"),
            ],
            text,
        )
            .into_response(),
        Err(e) => internal(e),
    }
}
