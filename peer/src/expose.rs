//! `peer expose`: services of this machine reachable through the rendezvous server by
//! ordinary clients (frp's tcp and http proxies).
//!
//! The peer registers every proxy on its control connection (with a random instance
//! id, so that after a reconnect it takes its ports back), then opens one data
//! connection (Noise, then yamux) on which the server opens a stream per user
//! connection. Each stream names its proxy in the stream header; the peer dials the
//! proxy's local address and splices. Control and data connections come back with
//! backoff when the server goes away.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use common::{
    mux::{Mux, MuxConfig, Role},
    proto::{ClientMsg, ConnKind, ExposeSpec, ServerMsg},
};
use tokio::{net::TcpStream, task::JoinHandle};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::{
    client::{self, ServerConfig},
    hub::{Hub, HubEvent},
    service::ServiceError,
};

/// How long the peer waits for a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One exposed service.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Unique per peer; names the streams.
    pub name: String,
    /// The local service.
    pub local: SocketAddr,
    /// How the server exposes it.
    pub spec: ExposeSpec,
}

fn status(msg: &str) {
    eprintln!("punchline: {msg}");
}

/// Runs until a fatal error: a refused exposure at the first registration, or a
/// wrong token. `max_streams` bounds the user connections carried at once on the
/// data connection (`--max-streams`); past it the peer refuses the server's stream,
/// the server resets the user's connection, and the peer logs a warning.
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
        })
        .collect();
    let locals: Arc<HashMap<String, SocketAddr>> =
        Arc::new(proxies.iter().map(|p| (p.name.clone(), p.local)).collect());
    let mut hub = Hub::start(cfg.clone(), hello);
    let mut data: Option<JoinHandle<()>> = None;
    let mut first_round = true;
    loop {
        let Some(ev) = hub.events.recv().await else {
            return Ok(());
        };
        match ev {
            HubEvent::Fatal(e) => return Err(e.into()),
            HubEvent::Up => {}
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
                // Printed on every registration: after a server restart a port the
                // server chose may differ.
                let remote = match remote_port {
                    Some(p) => {
                        println!("exposed {name} tcp {p}");
                        format!("tcp port {p} on the server")
                    }
                    None => {
                        println!("exposed {name} http {}", urls.join(" "));
                        urls.join(", ")
                    }
                };
                status(&format!("exposed {name}: {remote}"));
                if let Some(local) = locals.get(&name) {
                    crate::status::book().exposed(&name, remote, *local);
                }
                if data.as_ref().is_none_or(|d| d.is_finished()) {
                    let (cfg, locals) = (cfg.clone(), locals.clone());
                    data = Some(tokio::spawn(
                        data_connection(cfg, instance, locals, max_streams)
                            .instrument(info_span!("data")),
                    ));
                }
            }
            HubEvent::Msg(ServerMsg::Refused(reason)) => {
                if first_round {
                    return Err(ServiceError::Refused(reason));
                }
                warn!(%reason, "the server refused an exposure after a reconnect");
            }
            HubEvent::Msg(other) => debug!(?other, "ignored"),
        }
    }
}

/// The data connection, for as long as the control connection is up: a data
/// connection that fails or ends is opened again with backoff (the server closes it
/// when the control connection goes, and the hub then ends this task).
async fn data_connection(
    cfg: ServerConfig,
    instance: u64,
    locals: Arc<HashMap<String, SocketAddr>>,
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
    locals: Arc<HashMap<String, SocketAddr>>,
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
    while let Some(mut s) = inbound.recv().await {
        let locals = locals.clone();
        tokio::spawn(async move {
            let name = match common::net::read_stream_header(&mut s, HEADER_TIMEOUT).await {
                Ok(n) => n,
                Err(e) => return warn!(%e, "bad stream from the server"),
            };
            let Some(&local) = locals.get(&name) else {
                return warn!(proxy = %name, "stream for an unknown proxy refused");
            };
            match TcpStream::connect(local).await {
                Ok(conn) => {
                    let _ = conn.set_nodelay(true);
                    crate::service::splice_both(s, conn).await;
                }
                Err(e) => warn!(proxy = %name, %local, %e, "cannot reach the local service"),
            }
        });
    }
    drop(mux);
    info!("data connection closed");
    Ok(())
}
