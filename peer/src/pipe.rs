//! `peer pipe`: pair with another peer, punch a direct link, and bridge this process's
//! stdin to the other side's stdout, both ways, with half-close passing through.

use std::{io::IsTerminal, time::Duration};

use common::{
    defaults::{NAT_MAPPING_WAIT, PUNCH_ATTEMPTS},
    proto::{ClientMsg, Pairing, PunchMode, ServerMsg},
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
    /// This process's own output failed: the program reading it exited (`| head`) or
    /// the disk is full. The link was fine.
    #[error("cannot write to the local output after {received} bytes received: {err}{}", hint(.err))]
    Output {
        /// Bytes received (and written) before the failure.
        received: u64,
        /// What the write said.
        err: std::io::Error,
    },
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
    // The NAT mapping measurement runs alongside the connection to the server, in a
    // task of its own: if it takes longer than the wait, it still finishes (and is
    // cached and logged) for later use.
    let c = cfg.clone();
    let measuring = tokio::spawn(async move { crate::natcheck::own_nat(&c).await });
    let (control, mapping) = tokio::join!(
        Control::connect(cfg),
        tokio::time::timeout(NAT_MAPPING_WAIT, measuring)
    );
    let mut control = control?;
    if let Ok(Ok(Some(nat))) = mapping {
        control.send(nat).await?;
    }
    let pairing = match &code {
        Some(c) => Pairing::Code(c.clone()),
        None => Pairing::Any,
    };
    control.send(ClientMsg::Pair(pairing)).await?;
    let (ticket, initiator, mode, nonce) = loop {
        match control.recv().await? {
            ServerMsg::Waiting => status("waiting for the other peer"),
            ServerMsg::Notice(n) => status(&n),
            ServerMsg::Paired {
                session,
                initiator,
                mode,
                nonce,
            } => break (session, initiator, mode, nonce),
            ServerMsg::Refused(r) => return Err(ClientError::Refused(r).into()),
            other => info!(?other, "ignored while waiting"),
        }
    };
    match mode {
        PunchMode::Relay if !relay => status(&format!("paired; {}", link::SKIPPED_DIRECT)),
        PunchMode::Relay => status(&format!("paired; relayed: {}", link::SKIPPED_DIRECT)),
        PunchMode::BirthdayEasy | PunchMode::BirthdayHard => {
            status("paired; one NAT maps per destination: birthday punch")
        }
        PunchMode::Direct => status("paired; punching a direct connection"),
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
        mode,
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
        splice::pump(rd, LocalOutput(output), &received)
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
        Err(err) => match err
            .get_ref()
            .and_then(|e| e.downcast_ref::<LocalOutputError>())
        {
            Some(_) => {
                let err = err
                    .into_inner()
                    .and_then(|e| e.downcast::<LocalOutputError>().ok())
                    .map_or_else(|| std::io::Error::other("local output failed"), |e| e.0);
                Err(PipeError::Output {
                    received: received.get(),
                    err,
                })
            }
            None => Err(PipeError::Transfer {
                sent: sent.get(),
                received: received.get(),
                err,
            }),
        },
    }
}

fn hint(err: &std::io::Error) -> &'static str {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        " (the program reading this peer's output exited; the link itself was fine)"
    } else {
        ""
    }
}

/// An error of the local output, told apart from the link's (both pumps return
/// `io::Error`).
#[derive(Debug)]
struct LocalOutputError(std::io::Error);

impl std::fmt::Display for LocalOutputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for LocalOutputError {}

/// The local output, with its errors marked as [`LocalOutputError`].
struct LocalOutput<W>(W);

fn mark(r: std::task::Poll<std::io::Result<()>>) -> std::task::Poll<std::io::Result<()>> {
    r.map_err(|e| std::io::Error::new(e.kind(), LocalOutputError(e)))
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LocalOutput<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0)
            .poll_write(cx, buf)
            .map_err(|e| std::io::Error::new(e.kind(), LocalOutputError(e)))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        mark(std::pin::Pin::new(&mut self.0).poll_flush(cx))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        mark(std::pin::Pin::new(&mut self.0).poll_shutdown(cx))
    }
}

fn status(msg: &str) {
    common::process::status(msg);
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
