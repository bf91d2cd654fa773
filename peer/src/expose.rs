//! `peer expose`: services of this machine reachable through the rendezvous server by
//! ordinary clients (frp's tcp and http proxies).
//!
//! The peer registers every proxy on its control connection (with a random instance
//! id, so that after a reconnect it takes its ports back), then opens one data
//! connection (Noise, then multiplexed streams) on which the server opens a stream per user
//! connection. Each stream names its proxy in the stream header; the peer dials the
//! proxy's local address and splices. Control and data connections come back with
//! backoff when the server goes away.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use common::{
    compress::Carried,
    defaults::UDP_SESSION_IDLE,
    mux::{Mux, MuxConfig, Role},
    proto::{ClientMsg, ConnKind, ExposeSpec, ServerMsg},
};
use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    task::JoinHandle,
};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::{
    client::{self, ServerConfig},
    hub::{Hub, HubEvent},
    service::ServiceError,
};

/// How long the peer waits for a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What an HTTP user gets when the local service cannot be reached: the server's
/// vhost passes it on as the peer's answer (without it, the server could only say
/// that the peer did not answer properly).
fn local_refused_response() -> String {
    let body = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>502 Bad Gateway</title></head>\n\
                <body><h1>502 Bad Gateway</h1>\n<p>The peer is online, but its local service refused \
                the connection (is it running?).</p></body></html>\n";
    format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html; charset=utf-8\r\n\
         Cache-Control: no-store\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Answers an HTTP request whose local service cannot be reached with
/// [`local_refused_response`], as a server would: reads the request head first, and
/// after the answer waits for the server to close (dropping the stream earlier could
/// reset it before the answer is read). Bounded by [`HEADER_TIMEOUT`] each way.
async fn refuse_http(mut s: Carried<common::mux::MuxStream>) {
    let mut buf = vec![0u8; 8192];
    let mut head: Vec<u8> = Vec::new();
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(HEADER_TIMEOUT, read_head).await;
    if s.write_all(local_refused_response().as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let _ = s.shutdown().await;
    let drain = async { while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(HEADER_TIMEOUT, drain).await;
}

/// One exposed service.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Unique per peer; names the streams.
    pub name: String,
    /// The local service.
    pub local: SocketAddr,
    /// How the server exposes it.
    pub spec: ExposeSpec,
    /// Compress its streams between server and peer (frp's
    /// `transport.useCompression`; `common::compress`).
    pub compress: bool,
}

fn status(msg: &str) {
    common::process::status(msg);
}

/// Runs until a fatal error: every exposure refused at the first registration, or a
/// wrong token. A proxy the server refuses while others are exposed is reported
/// (`[NAME] start error: ...`, frp's line) and the others keep running. `max_streams`
/// bounds the user connections carried at once on the data connection
/// (`--max-streams`); past it the peer refuses the server's stream, the server resets
/// the user's connection, and the peer logs a warning.
pub async fn run(
    cfg: ServerConfig,
    proxies: Vec<Proxy>,
    max_streams: usize,
) -> Result<(), ServiceError> {
    let instance: u64 = rand::random();
    let names: Vec<&str> = proxies.iter().map(|p| p.name.as_str()).collect();
    crate::status::book().role(format!("expose {}", names.join(" ")));
    let hello = proxies
        .iter()
        .map(|p| ClientMsg::Expose {
            name: p.name.clone(),
            instance,
            spec: p.spec.clone(),
            compress: p.compress,
        })
        .collect();
    let locals: Arc<HashMap<String, Local>> = Arc::new(
        proxies
            .iter()
            .map(|p| {
                let udp = matches!(p.spec, ExposeSpec::Udp { .. });
                let http = matches!(p.spec, ExposeSpec::Http(_));
                (
                    p.name.clone(),
                    Local {
                        addr: p.local,
                        udp,
                        http,
                        compress: p.compress,
                    },
                )
            })
            .collect(),
    );
    let mut hub = Hub::start(cfg.clone(), hello);
    let mut data: Option<JoinHandle<()>> = None;
    let mut first_round = true;
    // Names refused at the first registration, and whether any proxy was exposed.
    let mut refused: Vec<String> = Vec::new();
    let mut any_exposed = false;
    loop {
        let Some(ev) = hub.events.recv().await else {
            return Ok(());
        };
        match ev {
            HubEvent::Fatal(e) => return Err(e.into()),
            HubEvent::Up => status("login to server success"),
            HubEvent::Down(why) => {
                if let Some(d) = data.take() {
                    d.abort();
                }
                debug!(%why, "server connection down");
                first_round = false;
            }
            HubEvent::Msg(ServerMsg::Exposed {
                name,
                remote_port,
                urls,
            }) => {
                any_exposed = true;
                // Printed on every registration: after a server restart a port the
                // server chose may differ.
                let udp = locals.get(&name).is_some_and(|l| l.udp);
                let remote = match remote_port {
                    Some(p) => {
                        let proto = if udp { "udp" } else { "tcp" };
                        println!("exposed {name} {proto} {p}");
                        format!("{proto} port {p} on the server")
                    }
                    None => {
                        let proto = urls
                            .first()
                            .and_then(|u| u.split_once("://"))
                            .map_or("http", |(scheme, _)| scheme);
                        println!("exposed {name} {proto} {}", urls.join(" "));
                        urls.join(", ")
                    }
                };
                status(&format!("exposed {name}: {remote}"));
                if let Some(local) = locals.get(&name) {
                    crate::status::book().exposed(&name, remote, local.addr);
                }
                status(&format!("[{name}] start proxy success"));
                if data.as_ref().is_none_or(|d| d.is_finished()) {
                    let (cfg, locals) = (cfg.clone(), locals.clone());
                    data = Some(tokio::spawn(
                        data_connection(cfg, instance, locals, max_streams)
                            .instrument(info_span!("data")),
                    ));
                }
            }
            HubEvent::Msg(ServerMsg::Refused(reason)) => {
                // The server names the proxy: "NAME: why".
                let name = proxies
                    .iter()
                    .map(|p| p.name.as_str())
                    .filter(|n| reason.starts_with(&format!("{n}: ")))
                    .max_by_key(|n| n.len());
                let Some(name) = name else {
                    if first_round && !any_exposed {
                        return Err(ServiceError::Refused(reason));
                    }
                    warn!(%reason, "the server refused a request");
                    continue;
                };
                let why = &reason[name.len() + 2..];
                status(&format!("[{name}] start error: {why}"));
                if first_round {
                    if !refused.iter().any(|r| r == name) {
                        refused.push(name.to_string());
                    }
                    if refused.len() == proxies.len() {
                        return Err(ServiceError::Refused(reason));
                    }
                } else {
                    warn!(%reason, "the server refused an exposure after a reconnect");
                }
            }
            HubEvent::Msg(other) => debug!(?other, "ignored"),
        }
    }
}

/// A proxy's local service.
#[derive(Clone, Copy)]
struct Local {
    addr: SocketAddr,
    /// Datagrams (a udp proxy), framed on the stream.
    udp: bool,
    /// An HTTP proxy: a refused local service gets a 502 page that says so.
    http: bool,
    /// Its streams are compressed after the header.
    compress: bool,
}

/// The data connection, for as long as the control connection is up: a data
/// connection that fails or ends is opened again with backoff (the server closes it
/// when the control connection goes, and the hub then ends this task).
async fn data_connection(
    cfg: ServerConfig,
    instance: u64,
    locals: Arc<HashMap<String, Local>>,
    max_streams: usize,
) {
    let mut backoff = common::backoff::Backoff::default();
    loop {
        let up = tokio::time::Instant::now();
        match one_data_connection(&cfg, instance, locals.clone(), max_streams).await {
            Ok(()) => {
                warn!("data connection closed by the server; opening it again");
                backoff.connected(up.elapsed());
            }
            Err(e) => warn!(%e, "data connection failed"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One data connection: accepts the server's streams until it ends.
async fn one_data_connection(
    cfg: &ServerConfig,
    instance: u64,
    locals: Arc<HashMap<String, Local>>,
    max_streams: usize,
) -> Result<(), client::ClientError> {
    let (ch, _) = client::connect(cfg, ConnKind::Data { instance }, None).await?;
    let (noise, _) = ch.into_parts();
    let mux_cfg = MuxConfig {
        max_streams,
        ..MuxConfig::default()
    };
    let (mux, mut inbound) = Mux::start(noise, Role::Server, mux_cfg);
    info!("data connection up");
    while let Some(mut raw) = inbound.recv().await {
        let locals = locals.clone();
        tokio::spawn(async move {
            let name = match common::net::read_stream_header(&mut raw, HEADER_TIMEOUT).await {
                Ok(n) => n,
                Err(e) => return warn!(%e, "bad stream from the server"),
            };
            let Some(&Local {
                addr: local,
                udp,
                http,
                compress,
            }) = locals.get(&name)
            else {
                return warn!(proxy = %name, "stream for an unknown proxy refused");
            };
            let s = Carried::new(raw, compress);
            if udp {
                return udp_session(s, local, &name).await;
            }
            match TcpStream::connect(local).await {
                Ok(conn) => {
                    let _ = conn.set_nodelay(true);
                    let done = common::splice::splice_carried(conn, s).await;
                    match done.error {
                        None => debug!(up = done.up, down = done.down, "stream done"),
                        Some(e) => debug!(up = done.up, down = done.down, %e, "stream reset"),
                    }
                }
                Err(e) => {
                    warn!(proxy = %name, %local, %e, "cannot reach the local service");
                    if http {
                        refuse_http(s).await;
                    }
                }
            }
        });
    }
    drop(mux);
    info!("data connection closed");
    Ok(())
}

/// One user address of a udp proxy: its datagrams, framed on the stream, to the local
/// service from a UDP socket of its own, and the answers back, until
/// [`UDP_SESSION_IDLE`] passes without either.
pub(crate) async fn udp_session<S>(stream: S, local: SocketAddr, name: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let bind: SocketAddr = if local.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return warn!(proxy = %name, %e, "cannot open a udp socket"),
    };
    if let Err(e) = socket.connect(local).await {
        return warn!(proxy = %name, %local, %e, "cannot reach the local service");
    }
    let (r, w) = tokio::io::split(stream);
    let mut from_server = FramedRead::new(r, common::net::datagram_codec());
    let mut to_server = FramedWrite::new(w, common::net::datagram_codec());
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        tokio::select! {
            f = from_server.next() => match f {
                Some(Ok(d)) => { let _ = socket.send(&d).await; }
                _ => break,
            },
            r = socket.recv(&mut buf) => match r {
                Ok(n) => {
                    let d = bytes::Bytes::copy_from_slice(&buf[..n]);
                    if to_server.send(d).await.is_err() { break }
                }
                // An ICMP "port unreachable" from the local service: keep waiting.
                Err(e) => debug!(proxy = %name, %e, "udp receive failed"),
            },
            _ = tokio::time::sleep(UDP_SESSION_IDLE) => break,
        }
    }
}
