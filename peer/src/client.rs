//! The peer's connections to the rendezvous server: the long-lived control connection
//! (behind a task that answers pings) and the short probe connections of punch attempts.

use std::{net::SocketAddr, sync::Arc};

use common::{
    defaults::{HANDSHAKE_TIMEOUT, IDLE_TIMEOUT},
    framing::{Channel, FrameError},
    identity::Identity,
    proto::{ClientMsg, ConnKind, ServerMsg, PROTOCOL_VERSION},
    secure::{self, HandshakeError, NoiseStream, Psk},
};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tracing::debug;

/// A message channel to the server.
pub type ServerChannel = Channel<NoiseStream<TcpStream>>;

/// Where the server is and how to authenticate to it.
#[derive(Clone)]
pub struct ServerConfig {
    /// The server's address.
    pub addr: SocketAddr,
    /// The server's token, if it has one.
    pub token: Option<String>,
    /// This peer's identity, proved on every connection to the server: what the
    /// server knows the peer's claims by.
    pub identity: Arc<Identity>,
    /// How long to keep trying to reach the server before it was ever reached (the
    /// reconnecting commands give up then); `None`: for ever.
    pub start_wait: Option<std::time::Duration>,
    /// Port mappings from the router for punch ports (`--portmap`); shared by every
    /// link of the process.
    pub portmap: Arc<crate::portmap::Mapper>,
}

impl ServerConfig {
    /// A config for `addr` with `token` and a new, throw-away identity (tests, demos).
    pub fn ephemeral(addr: SocketAddr, token: Option<String>) -> Self {
        Self {
            addr,
            token,
            identity: Arc::new(Identity::generate()),
            start_wait: None,
            portmap: Arc::new(crate::portmap::Mapper::off()),
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "MASKED"))
            .field("identity", &self.identity.fingerprint())
            .field("start_wait", &self.start_wait)
            .finish()
    }
}

/// Why talking to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect failed.
    #[error("cannot reach the rendezvous server at {addr}: {err}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// What the OS said.
        err: std::io::Error,
    },
    /// The handshake failed (usually a wrong token).
    #[error("rendezvous server {addr}: {err}")]
    Handshake {
        /// The server.
        addr: SocketAddr,
        /// Why.
        err: HandshakeError,
    },
    /// Something answered at the server's address, but not the punchline protocol (a
    /// wrong port, another service).
    #[error("is {addr} a punchline server? It answered something else ({err})")]
    NotPunchline {
        /// The address dialed.
        addr: SocketAddr,
        /// What was wrong with the answer.
        err: HandshakeError,
    },
    /// The server could not be reached within [`ServerConfig::start_wait`] of starting
    /// (`waited`, the configured wait).
    #[error("{last}; gave up after {}s (check --server, or start with --retry-forever to keep trying)", .waited.as_secs())]
    GaveUp {
        /// How long it tried.
        waited: std::time::Duration,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
    /// The server refused a request.
    #[error("rendezvous server refused: {0}")]
    Refused(String),
    /// The connection failed or carried something unexpected.
    #[error("rendezvous server connection: {0}")]
    Frame(#[from] FrameError),
    /// The server sent a message that makes no sense here.
    #[error("rendezvous server sent an unexpected message: {0}")]
    Unexpected(String),
    /// The server did not answer in time.
    #[error("rendezvous server {0} did not complete the handshake within {HANDSHAKE_TIMEOUT:?}")]
    Timeout(SocketAddr),
}

impl ClientError {
    /// Whether trying again cannot help: the server refused our token, or what answers
    /// at its address is not a punchline server.
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Refused(r) => r.contains("token"),
            ClientError::NotPunchline { .. } | ClientError::GaveUp { .. } => true,
            _ => false,
        }
    }
}

/// Connects to the server (from `socket` if given, e.g. one bound to a shareable
/// port), runs the handshake and `Hello`, and returns the channel and the address the
/// server sees.
pub async fn connect(
    cfg: &ServerConfig,
    kind: ConnKind,
    socket: Option<TcpSocket>,
) -> Result<(ServerChannel, SocketAddr), ClientError> {
    let addr = cfg.addr;
    let fut = async {
        let stream = match socket {
            Some(s) => s.connect(addr).await,
            None => TcpStream::connect(addr).await,
        }
        .map_err(|err| ClientError::Connect { addr, err })?;
        let _ = stream.set_nodelay(true);
        let psk = Psk::server(cfg.token.as_deref());
        let noise = secure::initiate_server(stream, &psk, &cfg.identity)
            .await
            .map_err(|err| match err {
                HandshakeError::Refused(r) => ClientError::Refused(r),
                err @ (HandshakeError::Oversized(_)
                | HandshakeError::Malformed(_)
                | HandshakeError::BadSecret) => ClientError::NotPunchline { addr, err },
                err => ClientError::Handshake { addr, err },
            })?;
        let mut ch = Channel::new(noise);
        ch.send(&ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            kind,
        })
        .await?;
        match ch.recv::<ServerMsg>().await {
            Ok(ServerMsg::Welcome { observed, .. }) => Ok((ch, observed)),
            Ok(ServerMsg::Refused(r)) => Err(ClientError::Refused(r)),
            Ok(other) => Err(ClientError::Unexpected(format!("{other:?}"))),
            // A wrong token shows up here when the server's refusal raced the close.
            Err(FrameError::Closed) => Err(ClientError::Refused(
                "connection closed during the handshake (wrong token?)".into(),
            )),
            Err(e) => Err(e.into()),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| ClientError::Timeout(addr))?
}

/// The control connection, run by a task that answers pings. Send requests through
/// `tx`; everything else the server says arrives on `rx`. When the connection ends,
/// `rx` yields `None` and [`Control::closed`] says why.
#[derive(Debug)]
pub struct Control {
    /// Requests to the server.
    pub tx: mpsc::Sender<ClientMsg>,
    /// Messages from the server (pings are answered by the task).
    pub rx: mpsc::Receiver<ServerMsg>,
    /// This connection's address as the server sees it.
    pub observed: SocketAddr,
    task: JoinHandle<Result<(), FrameError>>,
}

impl Control {
    /// Connects and starts the task.
    pub async fn connect(cfg: &ServerConfig) -> Result<Self, ClientError> {
        let (mut ch, observed) = connect(cfg, ConnKind::Control, None).await?;
        let (tx, mut out_rx) = mpsc::channel::<ClientMsg>(16);
        let (in_tx, rx) = mpsc::channel::<ServerMsg>(16);
        let task = tokio::spawn(async move {
            // The server pings every PING_INTERVAL: silence for IDLE_TIMEOUT means it is
            // paused or gone (while its kernel, or a NAT, still keeps the TCP connection).
            let mut heard = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    msg = ch.recv::<ServerMsg>() => {
                        heard = tokio::time::Instant::now();
                        match msg {
                            Ok(ServerMsg::Ping(n)) => ch.send(&ClientMsg::Pong(n)).await?,
                            Ok(m) => { if in_tx.send(m).await.is_err() { return Ok(()); } }
                            Err(FrameError::Closed) => return Ok(()),
                            Err(e) => return Err(e),
                        }
                    },
                    _ = tokio::time::sleep_until(heard + IDLE_TIMEOUT) => {
                        return Err(FrameError::Timeout(IDLE_TIMEOUT));
                    },
                    out = out_rx.recv() => match out {
                        Some(m) => ch.send(&m).await?,
                        None => return ch.close().await,
                    },
                }
            }
        });
        debug!(%observed, "control connection up");
        Ok(Self {
            tx,
            rx,
            observed,
            task,
        })
    }

    /// Sends a request.
    pub async fn send(&self, msg: ClientMsg) -> Result<(), ClientError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| ClientError::Frame(FrameError::Closed))
    }

    /// Receives the next message; an error if the connection ended.
    pub async fn recv(&mut self) -> Result<ServerMsg, ClientError> {
        match self.rx.recv().await {
            Some(m) => Ok(m),
            None => Err(self.closed().await),
        }
    }

    /// Closes the connection cleanly (bounded by a short timeout).
    pub async fn close(self) {
        let Control { tx, rx, task, .. } = self;
        drop((tx, rx));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), task).await;
    }

    /// Why the control connection ended.
    async fn closed(&mut self) -> ClientError {
        match (&mut self.task).await {
            Ok(Err(e)) => ClientError::Frame(e),
            _ => ClientError::Frame(FrameError::Closed),
        }
    }
}
