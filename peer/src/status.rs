//! `peer status`: what each running peer process on this machine is doing — its
//! links (to which service, direct or relayed and how they were made, bytes) and its
//! exposures — the per-peer counterpart of the server's admin pages.
//!
//! Every long-running peer (`pipe`, `serve`, `connect`, `expose`, `-c FILE`) keeps a
//! [`Book`] of its links and exposures and answers on a Unix socket,
//! `DIR/peer-PID.sock`: connect, read one JSON document ([`Snapshot`]), done. DIR is
//! `$PUNCHLINE_STATUS_DIR`, else `$XDG_RUNTIME_DIR/punchline`, else
//! `/tmp/punchline-UID`; it is created with mode 0700, so only the same user can ask
//! (and the socket answers nothing but this document). `peer status` reads every
//! socket there, removes those of processes that are gone, and prints a summary
//! (`--json`: the documents as a JSON array).
//!
//! Bytes are counted on the link itself (`common::count`): encrypted bytes including
//! the multiplexer's framing, both directions, live.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard, OnceLock,
    },
    time::Instant,
};

use common::{
    count::Bytes,
    defaults::{ACCEPT_BACKOFF_MAX, PEER_STATUS_MAX_DOCUMENT, PEER_STATUS_TIMEOUT},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use crate::link::{LinkInfo, Path as LinkPath};

/// Environment variable naming the directory of status sockets.
pub const DIR_ENV: &str = "PUNCHLINE_STATUS_DIR";

/// What one peer process reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The process id.
    pub pid: u32,
    /// What it runs (`serve NAME`, `connect NAME`, `pipe`, `expose`).
    pub roles: Vec<String>,
    /// The rendezvous server.
    pub server: String,
    /// This peer's identity fingerprint.
    pub identity: String,
    /// Seconds since the process started its work.
    pub uptime_secs: u64,
    /// Links up now.
    pub links: Vec<LinkStatus>,
    /// Proxies exposed through the server.
    pub exposures: Vec<ExposureStatus>,
}

/// One link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    /// `pipe`, `serve` (we own the service) or `connect` (we visit it).
    pub role: String,
    /// The service name (or the pipe's pairing).
    pub name: String,
    /// `direct` or `relayed`.
    pub path: String,
    /// How it was made: `punched (attempt N)`, `relayed through the server`, or
    /// `relayed, then punched (attempt N)`.
    pub how: String,
    /// The other peer's address (the server's for a relayed link).
    pub remote: String,
    /// Milliseconds from the signal to the authenticated link.
    pub setup_ms: u64,
    /// Seconds since the link came up.
    pub up_secs: u64,
    /// Bytes received on the link.
    pub bytes_in: u64,
    /// Bytes sent on the link.
    pub bytes_out: u64,
}

/// One exposure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExposureStatus {
    /// The proxy's name.
    pub name: String,
    /// Where users reach it (`tcp port P on the server`, or the URLs).
    pub remote: String,
    /// The local service.
    pub local: String,
}

struct LinkEntry {
    role: &'static str,
    name: String,
    info: LinkInfo,
    upgraded: bool,
    since: Instant,
    bytes: Bytes,
}

/// This process's links and exposures.
pub struct Book {
    started: Instant,
    next: AtomicU64,
    roles: Mutex<Vec<String>>,
    links: Mutex<BTreeMap<u64, LinkEntry>>,
    exposures: Mutex<BTreeMap<String, ExposureStatus>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process's book.
pub fn book() -> &'static Book {
    static BOOK: OnceLock<Book> = OnceLock::new();
    BOOK.get_or_init(|| Book {
        started: Instant::now(),
        next: AtomicU64::new(1),
        roles: Mutex::default(),
        links: Mutex::default(),
        exposures: Mutex::default(),
    })
}

/// A link listed in the book until this is dropped.
#[derive(Debug)]
pub struct LinkGuard {
    id: u64,
    bytes: Bytes,
}

impl LinkGuard {
    /// The link's byte counters (wrap its stream in `common::count::Counted`).
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The link moved to a direct connection (`info`).
    pub fn upgraded(&self, info: &LinkInfo) {
        if let Some(e) = lock(&book().links).get_mut(&self.id) {
            e.info = info.clone();
            e.upgraded = true;
        }
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        lock(&book().links).remove(&self.id);
    }
}

impl Book {
    /// This process runs `role` (e.g. `serve web`).
    pub fn role(&self, role: String) {
        lock(&self.roles).push(role);
    }

    /// A link of `role` (`pipe`, `serve`, `connect`) for `name` came up.
    pub fn link_up(&self, role: &'static str, name: &str, info: &LinkInfo) -> LinkGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let bytes = Bytes::default();
        lock(&self.links).insert(
            id,
            LinkEntry {
                role,
                name: name.to_string(),
                info: info.clone(),
                upgraded: false,
                since: Instant::now(),
                bytes: bytes.clone(),
            },
        );
        LinkGuard { id, bytes }
    }

    /// The server confirmed proxy `name`: users reach it at `remote`.
    pub fn exposed(&self, name: &str, remote: String, local: SocketAddr) {
        lock(&self.exposures).insert(
            name.to_string(),
            ExposureStatus {
                name: name.to_string(),
                remote,
                local: local.to_string(),
            },
        );
    }

    /// What the process is doing now.
    pub fn snapshot(&self, server: &str, identity: &str) -> Snapshot {
        let links = lock(&self.links)
            .values()
            .map(|e| {
                let (bytes_in, bytes_out) = e.bytes.get();
                let how = match (e.info.path, e.upgraded) {
                    (LinkPath::Relayed, _) => "relayed through the server".to_string(),
                    (LinkPath::Direct, false) => format!("punched (attempt {})", e.info.attempt),
                    (LinkPath::Direct, true) => {
                        format!("relayed, then punched (attempt {})", e.info.attempt)
                    }
                };
                LinkStatus {
                    role: e.role.to_string(),
                    name: e.name.clone(),
                    path: e.info.path.to_string(),
                    how,
                    remote: e.info.remote.to_string(),
                    setup_ms: e.info.signal_to_link.as_millis() as u64,
                    up_secs: e.since.elapsed().as_secs(),
                    bytes_in,
                    bytes_out,
                }
            })
            .collect();
        Snapshot {
            pid: std::process::id(),
            roles: lock(&self.roles).clone(),
            server: server.to_string(),
            identity: identity.to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            links,
            exposures: lock(&self.exposures).values().cloned().collect(),
        }
    }
}

/// The directory of status sockets (see the module docs).
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("punchline");
    }
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    std::env::temp_dir().join(format!("punchline-{uid}"))
}

/// Answers on this process's status socket until dropped (then removes it).
#[derive(Debug)]
pub struct Published {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Published {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts answering `peer status` for this process (server `server`, identity
/// `identity`). A failure is logged, not fatal: the peer works without it.
pub fn publish(server: SocketAddr, identity: String) -> Option<Published> {
    let dir = dir();
    match bind(&dir) {
        Ok((listener, path)) => {
            debug!(path = %path.display(), "status socket");
            let server = server.to_string();
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = listener.accept().await else {
                        // Out of descriptors, typically: wait instead of spinning.
                        tokio::time::sleep(ACCEPT_BACKOFF_MAX).await;
                        continue;
                    };
                    let doc = serde_json::to_vec(&book().snapshot(&server, &identity));
                    if let Ok(doc) = doc {
                        tokio::spawn(async move {
                            let _ =
                                tokio::time::timeout(PEER_STATUS_TIMEOUT, s.write_all(&doc)).await;
                        });
                    }
                }
            });
            Some(Published { path, task })
        }
        Err(e) => {
            warn!(dir = %dir.display(), %e, "no status socket: `peer status` will not show this peer");
            None
        }
    }
}

fn bind(dir: &Path) -> std::io::Result<(UnixListener, PathBuf)> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(std::io::Error::other(format!(
            "{} is open to other users (mode {:o}); it must be 0700",
            dir.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    let path = dir.join(format!("peer-{}.sock", std::process::id()));
    // A socket left by an earlier process with the same pid.
    let _ = std::fs::remove_file(&path);
    Ok((UnixListener::bind(&path)?, path))
}

/// Asks every peer process of this user for its status. Sockets whose process is gone
/// are removed; a process that does not answer in time is reported as an error.
pub async fn query_all() -> Vec<Result<Snapshot, String>> {
    let dir = dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("peer-") && n.ends_with(".sock"))
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        match query(&path).await {
            Ok(s) => out.push(Ok(s)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // Its process is gone.
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => out.push(Err(format!("{}: {e}", path.display()))),
        }
    }
    out
}

async fn query(path: &Path) -> std::io::Result<Snapshot> {
    let ask = async {
        let s = UnixStream::connect(path).await?;
        let mut doc = Vec::new();
        s.take(PEER_STATUS_MAX_DOCUMENT)
            .read_to_end(&mut doc)
            .await?;
        serde_json::from_slice(&doc).map_err(std::io::Error::other)
    };
    tokio::time::timeout(PEER_STATUS_TIMEOUT, ask)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {PEER_STATUS_TIMEOUT:?}"),
            )
        })?
}

/// The human-readable summary `peer status` prints.
pub fn render(all: &[Result<Snapshot, String>]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if all.is_empty() {
        let _ = writeln!(
            out,
            "no peer is running for this user (status sockets in {})",
            dir().display()
        );
        return out;
    }
    for s in all {
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(out, "? {e}\n");
                continue;
            }
        };
        let _ = writeln!(
            out,
            "peer {} ({}): server {}, identity {}, up {}",
            s.pid,
            if s.roles.is_empty() {
                "starting".to_string()
            } else {
                s.roles.join(", ")
            },
            s.server,
            s.identity,
            duration(s.uptime_secs)
        );
        if s.links.is_empty() && s.exposures.is_empty() {
            let _ = writeln!(out, "  no links or exposures yet");
        }
        for l in &s.links {
            let _ = writeln!(
                out,
                "  link {} {:?}: {}, remote {}, set up in {} ms, up {}, {} in / {} out",
                l.role,
                l.name,
                l.how,
                l.remote,
                l.setup_ms,
                duration(l.up_secs),
                size(l.bytes_in),
                size(l.bytes_out)
            );
        }
        for e in &s.exposures {
            let _ = writeln!(
                out,
                "  exposure {:?}: {} -> local {}",
                e.name, e.remote, e.local
            );
        }
        out.push('\n');
    }
    out
}

fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

fn size(b: u64) -> String {
    match b {
        0..10_000 => format!("{b} B"),
        10_000..10_000_000 => format!("{:.1} kB", b as f64 / 1e3),
        _ => format!("{:.1} MB", b as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_published_book_is_read_back_and_a_dead_socket_removed() {
        let dir =
            std::env::temp_dir().join(format!("punchline-status-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::env::set_var(DIR_ENV, &dir);
        let info = LinkInfo {
            path: LinkPath::Relayed,
            remote: "203.0.113.10:8877".parse().unwrap(),
            attempt: 0,
            signal_to_link: std::time::Duration::from_millis(42),
            portmap: None,
        };
        let guard = book().link_up("connect", "svc", &info);
        guard.bytes().read.fetch_add(1234, Ordering::Relaxed);
        book().exposed(
            "web",
            "tcp port 6000 on the server".into(),
            "127.0.0.1:80".parse().unwrap(),
        );
        let published = publish("203.0.113.10:8877".parse().unwrap(), "pl1:test".into()).unwrap();
        // A socket nobody answers on (its process is gone).
        let stale = dir.join("peer-999999999.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let all = query_all().await;
        assert_eq!(all.len(), 1, "{all:?}");
        let s = all[0].as_ref().unwrap();
        assert_eq!(s.pid, std::process::id());
        assert_eq!(s.links[0].how, "relayed through the server");
        assert_eq!((s.links[0].bytes_in, s.links[0].setup_ms), (1234, 42));
        assert_eq!(s.exposures[0].name, "web");
        assert!(!stale.exists());
        guard.upgraded(&LinkInfo {
            path: LinkPath::Direct,
            attempt: 4,
            ..info
        });
        let text = render(&query_all().await);
        assert!(
            text.contains(": relayed, then punched (attempt 4), remote"),
            "{text}"
        );
        drop(published);
        drop(guard);
        assert!(query_all().await.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
