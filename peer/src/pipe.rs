//! `peer pipe`: pair with another peer, punch a direct link, and bridge this process's
//! stdin to the other side's stdout, both ways, with half-close passing through.

use std::{io::IsTerminal, time::Duration};

use common::{
    defaults::{NAT_MAPPING_WAIT, PUNCH_ATTEMPTS},
    proto::{ClientMsg, Pairing, ServerMsg},
    secure::Psk,
    splice::{self, Counter},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tracing::info;

use crate::{
    client::{ClientError, Control, ServerConfig},
    link::{self, LinkError, LinkInfo, Path, SessionIo, Strategy},
};

/// Why a pipe failed.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    /// Setting up the link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The server connection failed.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The link broke while data was flowing.
    #[error("link lost after {sent} bytes sent and {received} received: {err}")]
    Transfer {
        /// Bytes sent before the failure.
        sent: u64,
        /// Bytes received before the failure.
        received: u64,
        /// What failed.
        err: std::io::Error,
    },
}

/// What a finished pipe did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The link.
    pub link: LinkInfo,
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
    /// From link up to both directions closed.
    pub elapsed: Duration,
}

/// The link PSK of a pipe: from the code and the server token. Without a code, anyone
/// holding the token (and the server) could derive it: use a code for secrecy.
pub fn pipe_psk(code: Option<&str>, token: Option<&str>) -> Psk {
    Psk::derive("pipe", &[code.unwrap_or(""), token.unwrap_or("")])
}

/// Runs a pipe between `input`/`output` and the paired peer's, relayed through the
/// server if no direct link can be made and `relay` allows it.
pub async fn run<R, W>(
    cfg: &ServerConfig,
    code: Option<String>,
    relay: bool,
    input: R,
    output: W,
) -> Result<Summary, PipeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    crate::status::book().role(match &code {
        Some(_) => "pipe --code".to_string(),
        None => "pipe".to_string(),
    });
    // The NAT mapping measurement runs alongside the connection to the server.
    let (control, mapping) = tokio::join!(
        Control::connect(cfg),
        tokio::time::timeout(NAT_MAPPING_WAIT, crate::natcheck::own_mapping(cfg))
    );
    let mut control = control?;
    if let Ok(Some(mapping)) = mapping {
        control.send(ClientMsg::Nat { mapping }).await?;
    }
    let pairing = match &code {
        Some(c) => Pairing::Code(c.clone()),
        None => Pairing::Any,
    };
    control.send(ClientMsg::Pair(pairing)).await?;
    let (ticket, initiator, direct_hopeless, nonce) = loop {
        match control.recv().await? {
            ServerMsg::Waiting => status("waiting for the other peer"),
            ServerMsg::Paired {
                session,
                initiator,
                direct_hopeless,
                nonce,
            } => break (session, initiator, direct_hopeless, nonce),
            ServerMsg::Refused(r) => return Err(ClientError::Refused(r).into()),
            other => info!(?other, "ignored while waiting"),
        }
    };
    if direct_hopeless {
        status(&format!("paired; relayed: {}", link::SKIPPED_DIRECT));
    } else {
        status("paired; punching a direct connection");
    }
    let psk = pipe_psk(code.as_deref(), cfg.token.as_deref());
    let io = SessionIo {
        tx: &control.tx,
        rx: &mut control.rx,
    };
    // A pipe is one byte stream: it cannot move to a direct link later, so it tries
    // every direct attempt before falling back to the relay.
    let strategy = Strategy {
        attempts: PUNCH_ATTEMPTS,
        relay,
        direct_hopeless,
        nonce,
    };
    let (link, info) = link::establish(cfg, io, ticket, initiator, &psk, strategy).await?;
    match info.path {
        Path::Direct => status(&format!(
            "link up: direct, remote {}, attempt {}, {} ms after signal",
            info.remote,
            info.attempt,
            info.signal_to_link.as_millis()
        )),
        Path::Relayed => status(&format!(
            "link up: relayed through the server {} (end-to-end encrypted), {} ms after the relay request",
            info.remote,
            info.signal_to_link.as_millis()
        )),
    }
    // The link no longer needs the server.
    control.close().await;
    let listed = crate::status::book().link_up(
        "pipe",
        if code.is_some() {
            "(code)"
        } else {
            "(first come)"
        },
        &info,
    );
    let link = common::count::Counted::new(link, listed.bytes());

    let (sent, received) = (Counter::default(), Counter::default());
    let start = Instant::now();
    let progress = std::io::stderr().is_terminal().then(|| {
        let (s, r) = (sent.clone(), received.clone());
        let path = info.path;
        tokio::spawn(async move { show_progress(path, s, r, start).await })
    });
    let (rd, wr) = tokio::io::split(link);
    let result = tokio::try_join!(
        splice::pump(input, wr, &sent),
        splice::pump(rd, output, &received)
    );
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let elapsed = start.elapsed();
    match result {
        Ok(_) => {
            let rate = (sent.get() + received.get()) as f64 / elapsed.as_secs_f64().max(1e-6) / 1e6;
            status(&format!(
                "done: sent {} bytes, received {} bytes in {:.2} s ({rate:.1} MB/s)",
                sent.get(),
                received.get(),
                elapsed.as_secs_f64()
            ));
            Ok(Summary {
                link: info,
                sent: sent.get(),
                received: received.get(),
                elapsed,
            })
        }
        Err(err) => Err(PipeError::Transfer {
            sent: sent.get(),
            received: received.get(),
            err,
        }),
    }
}

fn status(msg: &str) {
    eprintln!("punchline: {msg}");
}

async fn show_progress(path: Path, sent: Counter, received: Counter, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let secs = start.elapsed().as_secs_f64().max(1e-6);
        let (s, r) = (sent.get(), received.get());
        eprint!(
            "\r\x1b[Kpunchline: {path} | sent {:.1} MB | received {:.1} MB | {:.1} MB/s",
            s as f64 / 1e6,
            r as f64 / 1e6,
            (s + r) as f64 / secs / 1e6
        );
    }
}
