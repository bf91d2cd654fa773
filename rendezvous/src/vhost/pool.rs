//! Upstream connections to a route's peer: one HTTP/1.1 client connection per
//! stream, kept alive and reused.
//!
//! A request takes the newest idle connection ([`Pool::checkout`]), or opens a
//! stream and starts a client connection on it. The connection goes back to the pool
//! when the response body has been read to its end ([`UpstreamBody`]); a response cut
//! short, a timeout or an upgrade keeps it out, and hyper closes it; so does an
//! answer that came before the request body was all sent (the connection is still
//! busy sending it).

use std::{
    collections::VecDeque,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use common::{compress::Carried, mux::MuxStream};
use futures::{future::BoxFuture, FutureExt};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::debug;

use super::proxy::{BoxError, UpBody};
use crate::limit::ClientSlot;

/// Opens a byte stream to the peer that serves a route, already past the stream
/// header (the server writes it). Returns an error when the peer is offline or its
/// connection cannot take another stream; the request is then answered 502.
///
/// Called for each new upstream connection, not for each request. A server whose
/// peers reconnect should look up the owner's current connection inside the
/// opener, or [`super::Vhosts::add`] the route again with a new one.
pub type Opener = Arc<dyn Fn() -> BoxFuture<'static, io::Result<Carried<MuxStream>>> + Send + Sync>;

/// How long a pooled connection may take to become ready for the next request
/// once its response has ended. It takes microseconds (the connection's task
/// notices the end); one that takes longer is busy with something else and is
/// dropped for a new one.
const READY_WAIT: Duration = Duration::from_secs(1);

/// A client connection to the peer, idle.
struct Idle {
    sender: SendRequest<UpBody>,
    since: Instant,
}

/// The upstream connections of one route.
pub(super) struct Pool {
    opener: Opener,
    /// Newest at the back: taken from the back, expired from the front.
    idle: Mutex<VecDeque<Idle>>,
}

/// Where upstream connection tasks run: the vhost server's tracker, stopped with it.
pub(super) struct Tasks {
    pub(super) tracker: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

/// Why no upstream connection could be had.
pub(super) enum ConnectError {
    /// The opener failed: the peer is offline or refuses streams.
    Open(io::Error),
    /// HTTP/1 setup on the stream failed.
    Handshake(hyper::Error),
}

impl Pool {
    pub(super) fn new(opener: Opener) -> Pool {
        Pool {
            opener,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection ready for a request, if there is one.
    pub(super) async fn checkout(&self, idle_timeout: Duration) -> Option<SendRequest<UpBody>> {
        loop {
            let idle = self.lock().pop_back()?;
            if idle.sender.is_closed() || idle.since.elapsed() >= idle_timeout {
                continue;
            }
            let mut sender = idle.sender;
            // Right after a response ends the connection may need a moment to
            // become ready for the next request; a closed one errors. One that
            // stays busy is given up on.
            let ready = match sender.ready().now_or_never() {
                Some(res) => res.is_ok(),
                None => matches!(
                    tokio::time::timeout(READY_WAIT, sender.ready()).await,
                    Ok(Ok(()))
                ),
            };
            if ready {
                return Some(sender);
            }
        }
    }

    /// Opens a new stream to the peer, for raw bytes (the HTTPS vhost's TLS).
    pub(super) async fn open_raw(&self) -> io::Result<Carried<MuxStream>> {
        (self.opener)().await
    }

    /// Opens a new stream and starts an HTTP/1.1 client connection on it.
    pub(super) async fn connect(&self, tasks: &Tasks) -> Result<SendRequest<UpBody>, ConnectError> {
        let stream = (self.opener)().await.map_err(ConnectError::Open)?;
        let id = stream.get_ref().id();
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let shutdown = tasks.shutdown.clone();
        tasks.tracker.spawn(async move {
            tokio::select! {
                res = conn.with_upgrades() => {
                    if let Err(e) = res {
                        debug!(stream = id, %e, "upstream connection ended");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
        Ok(sender)
    }

    /// Returns a connection whose response has ended; keeps at most `max_idle`.
    pub(super) fn checkin(&self, sender: SendRequest<UpBody>, max_idle: usize) {
        if sender.is_closed() || max_idle == 0 {
            return;
        }
        let mut idle = self.lock();
        while idle.len() >= max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Drops connections idle for `idle_timeout` or closed.
    pub(super) fn expire(&self, idle_timeout: Duration) {
        let mut idle = self.lock();
        idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < idle_timeout);
    }

    /// Drops every idle connection.
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

/// A connection lent to one request, to be returned when its response has ended.
pub(super) struct Lease {
    pub(super) sender: SendRequest<UpBody>,
    pub(super) entry: Arc<super::table::Entry>,
    pub(super) max_idle: usize,
}

/// The body of a response from the peer. Returns the connection to the pool when
/// dropped after the end of the body (hyper drops it once it has written the last
/// byte); dropped earlier, the connection is closed with it.
pub(super) struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
    ended: bool,
    /// Longest silence from the peer within the body.
    idle: Duration,
    /// Armed while the body waits for the peer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The client's request slot, held until the response ends.
    _slot: ClientSlot,
}

impl UpstreamBody {
    pub(super) fn new(
        inner: Incoming,
        lease: Option<Lease>,
        idle: Duration,
        slot: ClientSlot,
    ) -> Self {
        UpstreamBody {
            inner,
            lease,
            ended: false,
            idle,
            timer: None,
            _slot: slot,
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            if self.ended || self.inner.is_end_stream() {
                lease.entry.pool.checkin(lease.sender, lease.max_idle);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = hyper::body::Bytes;
    type Error = BoxError;

    /// The peer's frames; a silence of `idle` while the client waits for more is an
    /// error, which makes hyper cut the client's connection (the body is not whole).
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(res) => {
                self.timer = None;
                if res.is_none() {
                    self.ended = true;
                }
                Poll::Ready(res.map(|r| r.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    debug!(?idle, "response body stalled; cutting the client off");
                    self.lease = None;
                    return Poll::Ready(Some(Err(format!(
                        "the peer sent nothing of the response body for {idle:?}"
                    )
                    .into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
