//! The admin listener (`rendezvous --admin ADDR`, frp's `webServer.*`): what an
//! operator looks at.
//!
//! * `/metrics`: every counter and gauge in the Prometheus text format
//!   ([`crate::metrics`]), names prefixed `punchline_`.
//! * `/api/status`: the server's [`Status`] as JSON: peers, users, services,
//!   exposures and their owners' fingerprints, relays, link counts, history.
//! * `/`: a dashboard, one static page embedded in the binary that draws
//!   `/api/status` (and polls it): who is online, what is exposed where, direct vs
//!   relayed links over time.
//!
//! Protection: with a password (`--admin-password`, `webServer.password`) every
//! request must carry it, as HTTP basic auth (user `--admin-user`, default `admin`;
//! what browsers ask for) or as `Authorization: Bearer PASSWORD` (what Prometheus'
//! `authorization` setting sends). Without one the listener must be on a loopback
//! address ([`check`] refuses anything else), and then only answers requests whose
//! Host is an IP address or `localhost`, so that a web page in the operator's browser
//! cannot read it through DNS rebinding.

use std::{convert::Infallible, fmt, net::SocketAddr, sync::Arc};

use base64::Engine;
use bytes::Bytes;
use common::defaults::{ADMIN_HEADER_TIMEOUT, ADMIN_HISTORY_INTERVAL, ADMIN_MAX_CONNECTIONS};
use http_body_util::Full;
use hyper::{
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, Instrument};

use crate::{metrics::Metrics, server::Tasks, status::Status};

/// The user name basic auth expects unless `--admin-user` says otherwise (frp's
/// dashboard has the same default).
pub const DEFAULT_USER: &str = "admin";

/// The dashboard page.
const DASHBOARD: &str = include_str!("admin/dashboard.html");

/// Where the admin listener listens and what it asks for.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// The listener's address.
    pub addr: SocketAddr,
    /// The basic-auth user name.
    pub user: String,
    /// The password (or bearer token); `None`: no protection, loopback only. Printed
    /// as `MASKED` by `Debug`.
    pub password: Option<String>,
}

impl AdminConfig {
    /// Unprotected, on `addr` (which must be a loopback address, see [`check`]).
    pub fn new(addr: SocketAddr) -> Self {
        AdminConfig {
            addr,
            user: DEFAULT_USER.into(),
            password: None,
        }
    }
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "MASKED"))
            .finish()
    }
}

/// Refuses an admin listener that anyone could reach unprotected: on an address that
/// is not loopback, a password is required. The error says what to do.
pub fn check(cfg: &AdminConfig) -> Result<(), String> {
    if cfg.password.as_deref() == Some("") {
        return Err(
            "the admin password is empty: give a real one, or none on a loopback address".into(),
        );
    }
    if !cfg.addr.ip().is_loopback() && cfg.password.is_none() {
        return Err(format!(
            "refusing to serve the admin pages on {}, which is not a loopback address, \
             without a password: give --admin-password (or PUNCHLINE_ADMIN_PASSWORD, or \
             webServer.password), or listen on 127.0.0.1",
            cfg.addr
        ));
    }
    Ok(())
}

/// Produces the server's status on demand.
pub(crate) type StatusFn = Arc<dyn Fn() -> Status + Send + Sync>;

struct Ctx {
    cfg: AdminConfig,
    metrics: Arc<Metrics>,
    status: StatusFn,
}

/// Serves the admin pages on `listener` until the server stops, and records the
/// history samples every [`ADMIN_HISTORY_INTERVAL`].
pub(crate) async fn serve(
    listener: TcpListener,
    cfg: AdminConfig,
    metrics: Arc<Metrics>,
    status: StatusFn,
    tasks: Tasks,
) {
    if let Ok(addr) = listener.local_addr() {
        let protection = if cfg.password.is_some() {
            "password protected"
        } else {
            "no password: loopback only"
        };
        info!(%addr, protection, "admin listening (/, /api/status, /metrics)");
    }
    let sampler = {
        let (metrics, stop) = (metrics.clone(), tasks.stop.clone());
        async move {
            let mut tick = tokio::time::interval(ADMIN_HISTORY_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => metrics.sample(),
                }
            }
        }
    };
    tasks.tracker.spawn(sampler);
    let ctx = Arc::new(Ctx {
        cfg,
        metrics,
        status,
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .keep_alive(true);
    let limit = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    crate::accept::serve(
        "admin",
        &listener,
        limit,
        &tasks.tracker,
        &tasks.stop,
        |tcp, from| {
            let ctx = ctx.clone();
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(answer(&ctx, &req)) }
            });
            let conn = http.serve_connection(TokioIo::new(tcp), svc);
            let stop = tasks.stop.clone();
            Some(
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        r = conn => if let Err(e) = r { debug!(%e, "admin connection ended"); }
                    }
                }
                .instrument(tracing::debug_span!("admin", %from)),
            )
        },
    )
    .await;
}

fn answer<B>(ctx: &Ctx, req: &Request<B>) -> Response<Full<Bytes>> {
    if let Err(resp) = authorize(&ctx.cfg, req) {
        return resp;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD),
        "/api/status" => match serde_json::to_string(&(ctx.status)()) {
            Ok(json) => respond(StatusCode::OK, "application/json", json),
            Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/metrics" => {
            let text = ctx.metrics.render(&(ctx.status)());
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: the admin listener serves /, /api/status and /metrics\n",
        ),
    }
}

/// `Ok` if the request may be answered; else the response that says why not.
#[allow(clippy::result_large_err)]
fn authorize<B>(cfg: &AdminConfig, req: &Request<B>) -> Result<(), Response<Full<Bytes>>> {
    let Some(password) = &cfg.password else {
        // Unprotected, so on loopback: only for clients that named it by address.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        return if local_host(host) {
            Ok(())
        } else {
            Err(plain(
                StatusCode::FORBIDDEN,
                "without a password, the admin pages answer only requests for an IP address or localhost\n",
            ))
        };
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let ok = if let Some(b64) = given.strip_prefix("Basic ") {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| ct_eq(u, &cfg.user) & ct_eq(p, password))
            })
            .unwrap_or(false)
    } else if let Some(token) = given.strip_prefix("Bearer ") {
        ct_eq(token.trim(), password)
    } else {
        false
    };
    if ok {
        return Ok(());
    }
    let mut resp = plain(
        StatusCode::UNAUTHORIZED,
        "the admin pages need the admin password (basic auth, or Authorization: Bearer)\n",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"punchline admin\", charset=\"UTF-8\""),
    );
    Err(resp)
}

/// Whether a Host header names this machine by address or as `localhost`.
fn local_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:80`, `127.0.0.1:80`, `localhost:80`; a bare IPv6 address has colons
        // but no brackets.
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Compares secrets in time that depends only on their lengths.
fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; frame-ancestors 'none'",
        ),
    );
    resp
}

fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cfg(addr: &str, password: Option<&str>) -> AdminConfig {
        AdminConfig {
            addr: addr.parse().unwrap(),
            user: "admin".into(),
            password: password.map(Into::into),
        }
    }

    #[test]
    fn non_loopback_needs_a_password() {
        assert!(check(&cfg("127.0.0.1:0", None)).is_ok());
        assert!(check(&cfg("[::1]:0", None)).is_ok());
        let e = check(&cfg("0.0.0.0:7500", None)).unwrap_err();
        assert!(e.contains("--admin-password"), "{e}");
        assert!(check(&cfg("0.0.0.0:7500", Some("s3cret"))).is_ok());
        assert!(check(&cfg("127.0.0.1:0", Some(""))).is_err());
    }

    fn req(host: &str, auth: Option<&str>) -> Request<()> {
        let mut b = Request::get("/api/status").header(header::HOST, host);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn basic_and_bearer_pass_anything_else_is_401() {
        let c = cfg("0.0.0.0:1", Some("pw"));
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(authorize(&c, &req("x", Some(&basic("admin:pw")))).is_ok());
        assert!(authorize(&c, &req("x", Some("Bearer pw"))).is_ok());
        for bad in [
            None,
            Some(basic("admin:pW")),
            Some(basic("root:pw")),
            Some("Bearer p".into()),
            Some("pw".into()),
        ] {
            let r = authorize(&c, &req("x", bad.as_deref())).unwrap_err();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        }
    }

    #[test]
    fn unprotected_answers_only_local_names() {
        let c = cfg("127.0.0.1:1", None);
        for ok in [
            "127.0.0.1:7500",
            "localhost:7500",
            "LOCALHOST",
            "[::1]:7500",
            "::1",
        ] {
            assert!(authorize(&c, &req(ok, None)).is_ok(), "{ok}");
        }
        for bad in [
            "evil.example:7500",
            "evil.example",
            "127.0.0.1.evil.example",
        ] {
            assert_eq!(
                authorize(&c, &req(bad, None)).unwrap_err().status(),
                StatusCode::FORBIDDEN,
                "{bad}"
            );
        }
    }
}
