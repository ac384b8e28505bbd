//! The UI token check: every request on a dashboard with a token must
//! carry it, as `Authorization: Bearer TOKEN`, as the `kiln_ui_token`
//! cookie, or as `?token=TOKEN` (the link `kiln` prints; the answer then
//! sets the cookie, so the page's own requests carry it). Anything else
//! is a 401 with a JSON body, counted by the monitor.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::error_response;
use crate::monitor::Monitor;

/// The cookie the token is kept in.
pub(super) const COOKIE: &str = "kiln_ui_token";

/// What the middleware needs.
#[derive(Clone)]
pub(super) struct Guard {
    pub(super) token: Option<Arc<str>>,
    pub(super) monitor: Monitor,
}

/// Equal without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the request carries a token, which one it is.
fn presented(req: &Request) -> (Option<String>, bool) {
    let headers = req.headers();
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return (Some(v.trim().to_string()), false);
    }
    for cookies in headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else {
            continue;
        };
        for c in cookies.split(';') {
            if let Some(v) = c
                .trim()
                .strip_prefix(COOKIE)
                .and_then(|r| r.strip_prefix('='))
            {
                return (Some(v.to_string()), false);
            }
        }
    }
    let query = req.uri().query().unwrap_or("");
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("token=") {
            return (Some(v.to_string()), true);
        }
    }
    (None, false)
}

/// Whether the request's `Host` names this machine by a loopback name
/// (`localhost`, `127.x.x.x`, `[::1]`, with or without a port). A
/// dashboard without a token serves only such requests: a web page
/// elsewhere that rebinds its own name to 127.0.0.1 (DNS rebinding)
/// sends its own name and is refused.
fn loopback_host(req: &Request) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The middleware: passes requests with the token; without a token (a
/// loopback bind), requests that name the host by a loopback name.
pub(super) async fn require_token(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let Some(token) = g.token.as_deref() else {
        if loopback_host(&req) {
            return next.run(req).await;
        }
        g.monitor.unauthorized();
        return error_response(
            StatusCode::FORBIDDEN,
            "this dashboard has no token and answers only requests to a loopback name (localhost, 127.0.0.1, [::1]); bind it elsewhere with a UI token to reach it by another name".into(),
        );
    };
    let (given, from_query) = presented(&req);
    match given {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => {
            let mut res = next.run(req).await;
            if from_query {
                let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict");
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    res.headers_mut().insert(header::SET_COOKIE, v);
                }
            }
            res
        }
        given => {
            g.monitor.unauthorized();
            let what = if given.is_some() {
                "the UI token given is wrong"
            } else {
                "this dashboard needs its UI token (printed when it started): open the link with ?token=, or send Authorization: Bearer TOKEN"
            };
            let mut res = error_response(StatusCode::UNAUTHORIZED, what.to_string());
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kiln\""),
            );
            res.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> Request {
        Request::builder()
            .uri("/api/cluster")
            .header(header::HOST, host)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[test]
    fn only_loopback_names_pass_without_a_token() {
        for ok in [
            "127.0.0.1:8080",
            "localhost:1",
            "LOCALHOST",
            "[::1]:80",
            "127.3.4.5",
        ] {
            assert!(loopback_host(&with_host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "10.0.0.1:80",
            "[::2]:80",
            "localhost.evil.example",
            "",
        ] {
            assert!(!loopback_host(&with_host(bad)), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdef", b"abcdef"));
        assert!(!same(b"abcdef", b"abcdeg"));
        assert!(!same(b"abcdef", b"abcde"));
        assert!(!same(b"", b"a"));
    }
}
