//! Many independent streams over one connection: a small wrapper around `yamux`.
//!
//! This module owns everything about multiplexing; no other module names `yamux`.
//! [`Mux::start`] takes the connection (in practice a [`crate::secure::NoiseStream`]
//! over TCP), spawns a driver task that owns the `yamux::Connection`, and returns a
//! cheap-to-clone [`Mux`] handle plus a receiver of inbound [`MuxStream`]s. A
//! [`MuxStream`] is a tokio `AsyncRead + AsyncWrite` with half-close: `shutdown()`
//! sends a FIN, the other side reads end of file and can still write back.
//!
//! # Lifetime of the driver
//!
//! The driver stops when
//! * the connection ends: the other side closed it (GoAway), or it was lost (an I/O
//!   or protocol error, or an end of file without a GoAway),
//! * [`Mux::close`] is called (a graceful close: pending frames and a GoAway are
//!   flushed, then the connection is shut down), or
//! * nothing can use the connection any more: every [`Mux`] handle *and* the inbound
//!   receiver are dropped *and* no [`MuxStream`] is left. Then it closes gracefully.
//!
//! So dropping the handles does not cut streams still in use: a proxy may hand its
//! streams to tasks and forget the handle, and the connection lives until the last
//! stream is done. Whoever wants to end the connection now calls [`Mux::close`].
//!
//! # How streams end
//!
//! * `shutdown()` on one side: the other reads end of file (a half-close).
//! * A stream dropped without `shutdown()` while neither side has shut it down, or
//!   refused: reset; the other side's reads and writes fail with
//!   [`io::ErrorKind::ConnectionReset`].
//! * The connection is lost: reads and writes fail with
//!   [`io::ErrorKind::ConnectionAborted`] and the reason ([`MuxError::Lost`]), so a
//!   cut never passes for a complete transfer. Over Noise even a TCP FIN is a loss
//!   unless Noise's end marker came first.
//! * The connection is closed ([`Mux::close`], either side) while the stream is open:
//!   reads return what has arrived, then fail with [`io::ErrorKind::ConnectionAborted`]
//!   on both sides: the stream did not end by its own FIN, so it must not pass for
//!   complete. Writes fail.
//!
//! A reset can only be told apart while neither side has shut the stream down: yamux
//! (0.13) has no reset for a half-closed stream (dropping one that has read the other
//! side's FIN sends a FIN), and a reset that arrives after our own `shutdown()` looks
//! like the other side's FIN. So a stream that dies abnormally *after* a half-close
//! still ends with end of file; a lost or closed connection is an error in any state.
//!
//! Inbound streams are acknowledged as soon as they are first read or written (an
//! empty data frame with the ACK flag), not when the application first sends data:
//! yamux lets an opener have at most 256 streams unacknowledged, so without this a
//! service that answers only after a while (long polls, a backend holding requests)
//! would stall every new stream at 256.
//!
//! # Stream limits
//!
//! [`MuxConfig::max_streams`] caps the streams open at once on a connection, both
//! directions together ([`Mux::active_streams`]). [`Mux::open`] beyond it fails with
//! [`MuxError::TooManyStreams`]; an inbound stream beyond it is refused with a stream
//! reset, which the opener sees as an [`io::ErrorKind::ConnectionReset`] error saying
//! so on its first read or write; other streams are not affected. yamux's own limit
//! is set [`STREAM_HEADROOM`] higher, because yamux kills the *whole connection*
//! when its limit is reached.
//!
//! # Throughput
//!
//! A stream can have at most its receive window in flight, so one stream's
//! throughput is at most `window / RTT`. yamux starts every stream at the
//! specification's [`STREAM_WINDOW`] (256 KiB: ~5 MB/s at 50 ms RTT) and, since
//! 0.13, auto-tunes it: it measures the RTT with a ping (at the start, then every
//! 10 s) and doubles a stream's window whenever the reader consumed half of it in
//! less than two RTTs, up to about twice the bandwidth-delay product. The growth of
//! all streams of a connection together is bounded by [`MuxConfig::window_growth`]
//! ([`DEFAULT_WINDOW_GROWTH`], 64 MiB: one stream up to ~1.3 GB/s at 50 ms RTT).
//! Windows only grow while the reader keeps up, so a slow reader does not make the
//! other side fill memory. Measured through a 50 ms RTT delay line (the `throughput`
//! test): ~4.7 MB/s with windows fixed at 256 KiB, 300-380 MB/s auto-tuned.
//!
//! yamux writes a 12-byte header and the body of each frame as two writes and
//! flushes after every frame. Over Noise each write would become its own encrypted
//! frame, so yamux writes into a buffer ([`IO_BUFFER`] bytes) and data frames are at
//! most [`FRAME_SIZE`] bytes: header and body leave as one Noise frame.
//!
//! yamux runs in one task per connection, and everything it does for every stream of
//! the connection happens there. So that a connection can use more than one core, the
//! connection ([`Transport`]) is split in halves and each gets a task of its own: the
//! reader task reads and decrypts and hands the driver whole decrypted frames; the
//! writer task takes the driver's buffered frames, encrypts them, and writes them,
//! flushing only when it runs out of work (many frames per syscall). Between them
//! bounded queues of [`PIPE_QUEUE`] chunks, so a slow side holds the others back.

use std::{
    fmt, io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use std::future::Future;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf},
    sync::{mpsc, oneshot, Notify},
};
use tokio_util::{
    compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt},
    sync::{CancellationToken, PollSender, WaitForCancellationFutureOwned},
};
use tracing::Instrument;

use crate::secure::{NoiseReader, NoiseStream, NoiseWriter};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Initial receive window of every stream: fixed at 256 KiB by the yamux
/// specification (`yamux::DEFAULT_CREDIT`). Each stream may buffer this much unread
/// data whatever the configuration, so it also prices [`MuxConfig::max_streams`].
pub const STREAM_WINDOW: usize = yamux::DEFAULT_CREDIT as usize;

/// Default for [`MuxConfig::max_streams`]: 65,536 streams (carried TCP connections)
/// on one connection.
///
/// Each stream is a TCP connection at both ends, so file descriptors bound the count
/// first on most systems; this is the backstop. What a stream costs: its pump buffers
/// (see [`crate::splice`]: 8 KiB while idle, up to 128 KiB when busy) plus about 3 KiB
/// of yamux, task and socket state (measured: ~110 MiB of RSS in the server and in the
/// peer with 10,000 connections through an exposed port, `tests/tests/capacity.rs`),
/// and, if its reader stalls, up to its receive window. That window is fixed at
/// [`STREAM_WINDOW`] by the yamux specification, so the most a peer could make us
/// buffer on one connection if no stream were read at all is `(max_streams +
/// STREAM_HEADROOM) * STREAM_WINDOW + window_growth` (16.1 GiB at this default; the
/// kernel's buffers for that many stalled TCP connections would hold as much). A
/// stream is read slowly only while the TCP connection it is spliced to is, so the
/// memory follows the slow clients, not this number; lower it (`--max-streams`) on a
/// small machine.
///
/// Why not more: yamux scans all streams of a connection on every open (its
/// acknowledgement backlog), ~35 ns per open stream: 0.14 ms per open with 4,000
/// open, 1.4 ms near this limit (the `open_cost` measurement).
pub const DEFAULT_MAX_STREAMS: usize = 65_536;

/// Default for [`MuxConfig::window_growth`]: 64 MiB. Auto-tuning grows a fast
/// stream's window to about twice the bandwidth-delay product; 64 MiB covers one
/// stream at 5 Gbit/s over 50 ms (BDP 31 MiB), or several streams at hundreds of
/// Mbit/s over 100 ms, while keeping the memory a connection can pin bounded.
pub const DEFAULT_WINDOW_GROWTH: usize = 64 * MIB;

/// yamux's stream limit is [`MuxConfig::max_streams`] plus this. yamux counts a stream
/// until the driver has collected it (a refused or dropped stream lingers briefly),
/// and on reaching its limit it kills the whole connection. 256 is yamux's cap on
/// streams an opener may have unacknowledged, so a peer can never outrun it with
/// streams we refuse.
pub const STREAM_HEADROOM: usize = 256;

/// Largest data frame payload. Larger than yamux's 16 KiB default to halve the
/// per-frame work (a Noise frame, an AEAD call and a syscall each) at high
/// throughput; small enough that the 12-byte header plus the payload fit one Noise
/// frame (65519 bytes of plaintext), and that a frame delays other streams' frames by
/// at most ~5 ms at 100 Mbit/s.
pub const FRAME_SIZE: usize = 63 * KIB;

/// Write buffer between yamux and the connection: one whole frame (header and
/// [`FRAME_SIZE`] payload), so that each frame reaches the connection as one write.
pub const IO_BUFFER: usize = 64 * KIB;

/// How long a graceful close may take to flush pending frames and the GoAway before
/// the connection is dropped anyway (a peer that stopped reading must not hold a
/// closing connection forever).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`MuxConfig::max_streams`] is capped at this (about a million): it sizes a queue,
/// and yamux computes `streams * STREAM_WINDOW` without overflow checks.
pub const MAX_STREAMS_CAP: usize = 1 << 20;

/// Queue of [`Mux::open`] requests waiting for the driver.
const OPEN_QUEUE: usize = 32;

/// Chunks (each up to a Noise frame, ~64 KiB) queued between the driver and each of
/// the reader and writer tasks: enough to keep both busy while the driver works,
/// little enough (~512 KiB each way) that memory follows the connections.
const PIPE_QUEUE: usize = 8;

/// Which side of the connection this is. yamux needs one of each: they allocate
/// stream ids from different halves of the id space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that initiated the connection (dialed, or initiated the handshake).
    Client,
    /// The side that accepted it.
    Server,
}

/// Settings of one multiplexed connection.
#[derive(Debug, Clone)]
pub struct MuxConfig {
    /// Most streams open at once, both directions together; see the module docs.
    pub max_streams: usize,
    /// How much, in total, the receive windows of this connection's streams may grow
    /// beyond their initial [`STREAM_WINDOW`] by auto-tuning. The bound on the memory a
    /// peer can make us hold is `(max_streams + STREAM_HEADROOM) * STREAM_WINDOW +
    /// window_growth`.
    pub window_growth: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            max_streams: DEFAULT_MAX_STREAMS,
            window_growth: DEFAULT_WINDOW_GROWTH,
        }
    }
}

impl MuxConfig {
    fn to_yamux(&self) -> yamux::Config {
        let streams = self.max_streams.min(MAX_STREAMS_CAP) + STREAM_HEADROOM;
        let window = streams
            .saturating_mul(STREAM_WINDOW)
            .saturating_add(self.window_growth);
        let mut c = yamux::Config::default();
        // Both setters assert `window >= streams * STREAM_WINDOW` against the current
        // value of the other: lift the window limit, set the streams, then the window.
        c.set_max_connection_receive_window(None);
        c.set_max_num_streams(streams);
        c.set_max_connection_receive_window(Some(window));
        c.set_split_send_size(FRAME_SIZE);
        c
    }
}

/// Why a [`Mux`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The connection was closed in an orderly way: by [`Mux::close`] on either side,
    /// or by a driver nothing used any more.
    #[error("the multiplexed connection is closed")]
    Closed,
    /// The connection failed: an I/O error, the other side broke the protocol, or it
    /// hung up without closing the connection first.
    #[error("the multiplexed connection was lost: {0}")]
    Lost(String),
    /// [`MuxConfig::max_streams`] streams are already open on this connection.
    #[error("too many streams open on this connection (limit {0})")]
    TooManyStreams(usize),
}

impl From<MuxError> for io::Error {
    fn from(e: MuxError) -> Self {
        let kind = match e {
            MuxError::Closed | MuxError::Lost(_) => io::ErrorKind::ConnectionAborted,
            MuxError::TooManyStreams(_) => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// How the connection ended (set once by the driver).
#[derive(Debug, Clone)]
enum End {
    Closed,
    Lost(String),
}

impl End {
    fn error(&self) -> MuxError {
        match self {
            End::Closed => MuxError::Closed,
            End::Lost(reason) => MuxError::Lost(reason.clone()),
        }
    }
}

/// State shared by the driver, the handles and the streams.
struct Shared {
    max_streams: usize,
    /// Streams alive (a [`MuxStream`] exists, or an open is in progress).
    active: AtomicUsize,
    /// Notified when `active` drops to zero.
    idle: Notify,
    /// [`Mux::close`] was called.
    close_requested: CancellationToken,
    /// The driver has stopped; `end` is set before this is cancelled.
    ended: CancellationToken,
    end: OnceLock<End>,
    /// Held by the driver while it polls yamux, and until it has recorded `end` if the
    /// connection ended in that poll. A stream that saw yamux close it takes the lock
    /// once to learn whether the connection ended or only the stream was reset.
    polling: Mutex<()>,
    /// The connection returned end of file: without a GoAway before it, the other side
    /// went away rather than closed.
    hung_up: AtomicBool,
}

impl Shared {
    /// The error for an operation on an ended or closing connection, if it is.
    fn closed_error(&self) -> Option<MuxError> {
        match self.end.get() {
            Some(end) => Some(end.error()),
            None if self.close_requested.is_cancelled() => Some(MuxError::Closed),
            None => None,
        }
    }

    /// How the connection ended, after waiting for a poll of the driver in progress.
    fn end_after_poll(&self) -> Option<&End> {
        drop(self.polling.lock().unwrap_or_else(PoisonError::into_inner));
        self.end.get()
    }

    fn finish(&self, end: End) {
        match &end {
            End::Closed => tracing::debug!("connection closed"),
            End::Lost(reason) => tracing::debug!(%reason, "connection lost"),
        }
        let _ = self.end.set(end);
        self.ended.cancel();
    }
}

/// One counted stream: taken before a stream exists, released when it is dropped.
struct Slot(Arc<Shared>);

impl Slot {
    fn reserve(shared: &Arc<Shared>) -> Option<Self> {
        shared
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.max_streams).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// What the handles ask of the driver.
enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, MuxError>>),
}

/// A handle to a multiplexed connection; clones share the connection.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

impl fmt::Debug for Mux {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mux")
            .field("active_streams", &self.active_streams())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Mux {
    /// Starts driving `io` in a task; returns the handle and a receiver of inbound
    /// streams. The two ends of a connection must have different roles.
    ///
    /// Inbound streams that arrive while the receiver is dropped are refused.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start<T: Transport>(
        io: T,
        role: Role,
        cfg: MuxConfig,
    ) -> (Mux, mpsc::Receiver<MuxStream>) {
        let shared = Arc::new(Shared {
            max_streams: cfg.max_streams.min(MAX_STREAMS_CAP),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            close_requested: CancellationToken::new(),
            ended: CancellationToken::new(),
            end: OnceLock::new(),
            polling: Mutex::new(()),
            hung_up: AtomicBool::new(false),
        });
        let mode = match role {
            Role::Client => yamux::Mode::Client,
            Role::Server => yamux::Mode::Server,
        };
        let span = tracing::debug_span!("mux", ?role);
        let io = Piped::start(io, &span);
        // A silent peer (paused, gone without a FIN) loses the connection.
        let io = crate::liveness::Liveness::new(
            io,
            crate::defaults::LINK_IDLE_TIMEOUT,
            crate::defaults::LIVENESS_WAKE,
        );
        let io = Watched {
            io,
            shared: shared.clone(),
        }
        .compat();
        let conn = yamux::Connection::new(io, cfg.to_yamux(), mode);
        let (commands, command_rx) = mpsc::channel(OPEN_QUEUE);
        // Every stream holds a slot, so at most `max_streams` can wait in the queue:
        // handing one over never blocks the driver.
        let (inbound_tx, inbound_rx) = mpsc::channel(cfg.max_streams.clamp(1, MAX_STREAMS_CAP));
        let driver = Driver {
            conn,
            shared: shared.clone(),
            commands: command_rx,
            inbound: inbound_tx,
        };
        tokio::spawn(driver.run().instrument(span));
        (Mux { shared, commands }, inbound_rx)
    }

    /// Opens a new outbound stream. The other side learns of it with the first data
    /// or window update, so a stream the other side refuses fails on its first read
    /// or write, not here.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        if let Some(e) = self.shared.closed_error() {
            return Err(e);
        }
        let slot =
            Slot::reserve(&self.shared).ok_or(MuxError::TooManyStreams(self.shared.max_streams))?;
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Open(tx)).await.is_err() {
            return Err(self.ended_error());
        }
        match rx.await {
            Ok(Ok(stream)) => Ok(MuxStream::new(stream, slot, false)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.ended_error()),
        }
    }

    /// The error for a driver that stopped (it records why before stopping).
    fn ended_error(&self) -> MuxError {
        self.shared.closed_error().unwrap_or(MuxError::Closed)
    }

    /// Whether the connection has ended (the driver stopped).
    pub fn is_closed(&self) -> bool {
        self.shared.ended.is_cancelled()
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.shared.ended.cancelled().await
    }

    /// Closes the connection gracefully: pending frames and a GoAway are sent, then the
    /// connection is shut down. Streams still open on either side end with it (reads
    /// and writes fail); to let them finish, wait for [`Mux::active_streams`] to reach
    /// zero first. [`Mux::open`] fails from now on.
    pub fn close(&self) {
        self.shared.close_requested.cancel();
    }

    /// Streams open right now, both directions (a stream counts until its
    /// [`MuxStream`] is dropped, including inbound streams not yet received).
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }
}

/// What woke the driver.
enum Event {
    CloseRequested,
    Command(Option<Command>),
    Inbound(yamux::Stream),
    Outbound(yamux::Stream),
    Ended(End),
    /// The inbound receiver was dropped or the last stream ended: check whether the
    /// connection is still of use.
    Recheck,
}

/// The task that owns the yamux connection (see the module docs for its lifetime).
struct Driver {
    conn: yamux::Connection<Compat<Watched>>,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<MuxStream>,
}

impl Driver {
    async fn run(mut self) {
        // An open request waiting for yamux (it holds back outbound streams while 256
        // are unacknowledged); later ones wait in the command queue.
        let mut pending: Option<oneshot::Sender<Result<yamux::Stream, MuxError>>> = None;
        let mut handles_gone = false;
        let mut receiver_gone = false;
        let end = loop {
            if handles_gone
                && self.inbound.is_closed()
                && self.shared.active.load(Ordering::Acquire) == 0
            {
                tracing::debug!("no handle, receiver or stream left: closing");
                break self.close().await;
            }
            let want_outbound = pending.is_some();
            let conn = std::future::poll_fn(|cx| {
                poll_conn(&mut self.conn, &self.shared, want_outbound, cx)
            });
            let event = tokio::select! {
                biased;
                () = self.shared.close_requested.cancelled() => Event::CloseRequested,
                cmd = self.commands.recv(), if !want_outbound && !handles_gone => {
                    Event::Command(cmd)
                }
                event = conn => event,
                () = self.inbound.closed(), if !receiver_gone => {
                    receiver_gone = true;
                    Event::Recheck
                }
                () = self.shared.idle.notified(), if handles_gone => Event::Recheck,
            };
            match event {
                Event::CloseRequested => break self.close().await,
                Event::Command(Some(Command::Open(reply))) => pending = Some(reply),
                Event::Command(None) => handles_gone = true,
                Event::Outbound(stream) => {
                    if let Some(reply) = pending.take() {
                        // A caller that gave up drops the stream, which resets it.
                        let _ = reply.send(Ok(stream));
                    }
                }
                Event::Inbound(stream) => self.accept(stream),
                Event::Ended(end) => break end,
                Event::Recheck => {}
            }
        };
        if let Some(reply) = pending {
            let _ = reply.send(Err(end.error()));
        }
        self.shared.finish(end);
    }

    /// Hands an inbound stream to the receiver, or refuses it (dropping a yamux stream
    /// that is still open resets it).
    fn accept(&mut self, stream: yamux::Stream) {
        let Some(slot) = Slot::reserve(&self.shared) else {
            tracing::warn!(
                max_streams = self.shared.max_streams,
                "refusing an inbound stream: too many streams open"
            );
            return;
        };
        if self
            .inbound
            .try_send(MuxStream::new(stream, slot, true))
            .is_err()
        {
            tracing::debug!("refusing an inbound stream: nobody accepts streams");
        }
    }

    async fn close(&mut self) -> End {
        let close = std::future::poll_fn(|cx| self.conn.poll_close(cx));
        match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
            Ok(Ok(())) => End::Closed,
            Ok(Err(e)) => End::Lost(format!("while closing: {e}")),
            Err(_) => End::Lost(format!(
                "the other side did not take the close within {CLOSE_TIMEOUT:?}"
            )),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Normally `run` has recorded the end already. If the task is dropped (the
        // runtime shuts down), record it before `conn` is dropped and resets the streams.
        if self.shared.end.get().is_none() {
            self.shared
                .finish(End::Lost("the connection's task was stopped".into()));
        }
    }
}

/// Polls yamux for an inbound stream or the connection's end and, when `outbound`
/// is set, for a new outbound stream.
fn poll_conn<T: futures::AsyncRead + futures::AsyncWrite + Unpin>(
    conn: &mut yamux::Connection<T>,
    shared: &Shared,
    outbound: bool,
    cx: &mut Context<'_>,
) -> Poll<Event> {
    let _polling = shared
        .polling
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let end = match conn.poll_next_inbound(cx) {
        Poll::Ready(Some(Ok(stream))) => return Poll::Ready(Event::Inbound(stream)),
        Poll::Ready(Some(Err(e))) => End::Lost(e.to_string()),
        // yamux reports the other side's GoAway and a plain end of file alike.
        Poll::Ready(None) if shared.hung_up.load(Ordering::Acquire) => {
            End::Lost("the other side hung up without closing the multiplexed connection".into())
        }
        Poll::Ready(None) => End::Closed,
        Poll::Pending if !outbound => return Poll::Pending,
        // yamux fails to open only when the connection is done for (it moves to
        // cleanup, and will report nothing more).
        Poll::Pending => match conn.poll_new_outbound(cx) {
            Poll::Ready(Ok(stream)) => return Poll::Ready(Event::Outbound(stream)),
            Poll::Ready(Err(e)) => End::Lost(format!("while opening a stream: {e}")),
            Poll::Pending => return Poll::Pending,
        },
    };
    // Record it while still holding the lock (see `Shared::polling`).
    let _ = shared.end.set(end.clone());
    Poll::Ready(Event::Ended(end))
}

/// The connection under yamux ([`Piped`] under [`crate::liveness::Liveness`]), and a
/// note in [`Shared::hung_up`] when it reads end of file.
struct Watched {
    io: crate::liveness::Liveness<Piped>,
    shared: Arc<Shared>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0
        {
            this.shared.hung_up.store(true, Ordering::Release);
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection a [`Mux`] can run on. It is split in two halves, each driven by a task
/// of its own beside the yamux driver: one reads (and, for Noise, decrypts), one
/// writes (and encrypts), so one connection's work spreads over three tasks, and so
/// over the cores.
pub trait Transport: Send + 'static {
    /// The reading half.
    type Reader: ChunkRead;
    /// The writing half. It may hold written bytes until a flush: the writer task
    /// flushes whenever it runs out of queued data.
    type Writer: AsyncWrite + Unpin + Send + 'static;
    /// Splits the connection into its halves.
    fn split_transport(self) -> (Self::Reader, Self::Writer);
}

/// A reading half that hands out what it read as owned chunks (a decrypted Noise
/// frame is handed on as it is, without a copy).
pub trait ChunkRead: Send + Unpin + 'static {
    /// The next chunk (never empty), or `None` at a clean end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>>;
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for NoiseStream<T> {
    type Reader = NoiseReader<ReadHalf<T>>;
    type Writer = NoiseWriter<WriteHalf<T>>;
    fn split_transport(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> ChunkRead for NoiseReader<R> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_frame(cx)
    }
}

/// Any unencrypted byte stream as a [`Transport`] (tests, benchmarks, a connection
/// encrypted below this layer).
#[derive(Debug)]
pub struct Plain<T>(pub T);

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for Plain<T> {
    type Reader = PlainReader<ReadHalf<T>>;
    type Writer = WriteHalf<T>;
    fn split_transport(self) -> (Self::Reader, Self::Writer) {
        let (r, w) = tokio::io::split(self.0);
        (
            PlainReader {
                io: r,
                buf: BytesMut::new(),
            },
            w,
        )
    }
}

impl Transport for tokio::net::TcpStream {
    type Reader = PlainReader<tokio::net::tcp::OwnedReadHalf>;
    type Writer = tokio::net::tcp::OwnedWriteHalf;
    fn split_transport(self) -> (Self::Reader, Self::Writer) {
        let (r, w) = self.into_split();
        (
            PlainReader {
                io: r,
                buf: BytesMut::new(),
            },
            w,
        )
    }
}

impl Transport for tokio::io::DuplexStream {
    type Reader = PlainReader<ReadHalf<Self>>;
    type Writer = WriteHalf<Self>;
    fn split_transport(self) -> (Self::Reader, Self::Writer) {
        Plain(self).split_transport()
    }
}

/// The reading half of an unencrypted [`Transport`].
#[derive(Debug)]
pub struct PlainReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin + Send + 'static> ChunkRead for PlainReader<R> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        self.buf.reserve(IO_BUFFER);
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == 0 {
            return Poll::Ready(Ok(None));
        }
        Poll::Ready(Ok(Some(self.buf.split().freeze())))
    }
}

/// What the driver hands the writer task.
enum Out {
    Data(BytesMut),
    /// Write what is queued, then shut the connection down (a graceful close).
    Shutdown,
}

/// yamux's end of the pipeline: reads come from the reader task, writes collect into a
/// buffer that goes to the writer task on a flush (yamux flushes after each frame) or
/// when [`IO_BUFFER`] bytes are waiting.
struct Piped {
    inbound: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    outbound: PollSender<Out>,
    pending: BytesMut,
    /// Why the writer task stopped, if it failed.
    writer_failed: Arc<OnceLock<(io::ErrorKind, String)>>,
    /// The writer task's result after [`Out::Shutdown`].
    shut: Option<oneshot::Receiver<io::Result<()>>>,
}

impl Piped {
    fn start<T: Transport>(io: T, span: &tracing::Span) -> Self {
        let (reader, writer) = io.split_transport();
        let (in_tx, inbound) = mpsc::channel(PIPE_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(PIPE_QUEUE);
        let (shut_tx, shut) = oneshot::channel();
        let writer_failed = Arc::new(OnceLock::new());
        tokio::spawn(read_loop(reader, in_tx).instrument(span.clone()));
        tokio::spawn(
            write_loop(writer, out_rx, writer_failed.clone(), shut_tx).instrument(span.clone()),
        );
        Self {
            inbound,
            current: Bytes::new(),
            outbound: PollSender::new(out_tx),
            pending: BytesMut::new(),
            writer_failed,
            shut: Some(shut),
        }
    }

    fn writer_error(&self) -> io::Error {
        match self.writer_failed.get() {
            Some((kind, msg)) => io::Error::new(*kind, msg.clone()),
            None => io::Error::new(io::ErrorKind::BrokenPipe, "the connection's writer stopped"),
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        item: impl FnOnce(&mut Self) -> Out,
    ) -> Poll<io::Result<()>> {
        if std::task::ready!(self.outbound.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(self.writer_error()));
        }
        let item = item(self);
        if self.outbound.send_item(item).is_err() {
            return Poll::Ready(Err(self.writer_error()));
        }
        Poll::Ready(Ok(()))
    }

    /// Hands what is pending to the writer task.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.poll_send(cx, |this| Out::Data(this.pending.split()))
    }
}

impl AsyncRead for Piped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.inbound.poll_recv(cx)) {
                Some(Ok(chunk)) => this.current = chunk,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for Piped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.len() >= IO_BUFFER {
            std::task::ready!(this.poll_push(cx))?;
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_push(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_push(cx))?;
        if !this.outbound.is_closed() {
            std::task::ready!(this.poll_send(cx, |_| Out::Shutdown))?;
            this.outbound.close();
        }
        let Some(shut) = this.shut.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let res = match std::task::ready!(Pin::new(shut).poll(cx)) {
            Ok(res) => res,
            Err(_) => Err(this.writer_error()),
        };
        this.shut = None;
        Poll::Ready(res)
    }
}

/// The reader task: hands chunks to the driver until the end, an error, or the driver
/// is gone.
async fn read_loop<R: ChunkRead>(mut reader: R, tx: mpsc::Sender<io::Result<Bytes>>) {
    loop {
        let item = tokio::select! {
            item = std::future::poll_fn(|cx| reader.poll_chunk(cx)) => item,
            () = tx.closed() => return,
        };
        match item {
            Ok(Some(chunk)) => {
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// The writer task: writes what the driver hands over, flushing whenever the queue is
/// empty (so frames that arrive together leave in one syscall). If the driver goes
/// away without [`Out::Shutdown`], the connection is dropped unflushed, as a lost
/// connection should be.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Out>,
    failed: Arc<OnceLock<(io::ErrorKind, String)>>,
    shut: oneshot::Sender<io::Result<()>>,
) {
    let res = async {
        while let Some(item) = rx.recv().await {
            match item {
                Out::Data(chunk) => writer.write_all(&chunk).await?,
                Out::Shutdown => {
                    writer.shutdown().await?;
                    return Ok(true);
                }
            }
            if rx.is_empty() {
                writer.flush().await?;
            }
        }
        Ok::<_, io::Error>(false)
    }
    .await;
    match res {
        Ok(true) => {
            let _ = shut.send(Ok(()));
        }
        Ok(false) => {}
        Err(e) => {
            let _ = failed.set((e.kind(), e.to_string()));
            let _ = shut.send(Err(e));
        }
    }
}

/// One stream of a [`Mux`]: a tokio `AsyncRead + AsyncWrite`.
///
/// `shutdown()` half-closes: the other side reads end of file, and can still write
/// back until it shuts down too. Drop a stream once done both ways: dropped before
/// `shutdown()` it is reset (the other side's reads and writes fail), and dropped
/// after `shutdown()` but before the other side's end of file, whatever the other
/// side still writes is discarded. Errors are described in the module docs.
pub struct MuxStream {
    // Field order matters: the stream must go before its slot.
    inner: Compat<yamux::Stream>,
    /// Resolves when the connection's driver stops: some yamux paths (our own graceful
    /// close) do not wake waiting streams.
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    write_closed: bool,
    /// An inbound stream not yet acknowledged to the opener (see the module docs).
    ack_pending: bool,
    slot: Slot,
}

impl fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxStream")
            .field("id", &self.id())
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

impl MuxStream {
    fn new(stream: yamux::Stream, slot: Slot, inbound: bool) -> Self {
        Self {
            inner: stream.compat(),
            ended: Box::pin(slot.0.ended.clone().cancelled_owned()),
            write_closed: false,
            ack_pending: inbound,
            slot,
        }
    }

    /// Acknowledges an inbound stream with an empty data frame (yamux sets the ACK
    /// flag on a stream's first frame), so that its opener's backlog of
    /// unacknowledged streams shrinks now rather than when data first flows back.
    /// Retried on the next poll while yamux's command queue is full; a stream that
    /// cannot be written any more needs no acknowledgement.
    fn poll_ack(&mut self, cx: &mut Context<'_>) {
        if self.ack_pending {
            let inner = Pin::new(self.inner.get_mut());
            if futures::AsyncWrite::poll_write(inner, cx, &[]).is_ready() {
                self.ack_pending = false;
            }
        }
    }

    /// The stream's id on its connection (for logs).
    pub fn id(&self) -> u32 {
        self.inner.get_ref().id().val()
    }

    fn shared(&self) -> &Shared {
        &self.slot.0
    }

    /// The error for a stream yamux reports closed (or failed): the connection's end
    /// if it ended, else a reset by the other side.
    fn closed_error(&self) -> io::Error {
        match self.shared().end_after_poll() {
            Some(end) => end.error().into(),
            None if self.shared().close_requested.is_cancelled() => MuxError::Closed.into(),
            None => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset by the other side: it refused the stream (too many streams \
                 open) or dropped it without shutting it down",
            ),
        }
    }

    /// Turns `Pending` into an error if the connection has ended meanwhile.
    fn poll_ended<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if self.shared().ended.is_cancelled()
            || std::future::Future::poll(self.ended.as_mut(), cx).is_ready()
        {
            let e = self.shared().closed_error().unwrap_or(MuxError::Closed);
            return Poll::Ready(Err(e.into()));
        }
        Poll::Pending
    }

    /// Maps an error from yamux, which only says "connection is closed".
    fn stream_error(&self, e: io::Error) -> io::Error {
        if self.inner.get_ref().is_closed() || self.shared().closed_error().is_some() {
            self.closed_error()
        } else {
            e
        }
    }

    fn write_error(&self, e: io::Error) -> io::Error {
        if self.write_closed {
            io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown")
        } else {
            self.stream_error(e)
        }
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.poll_ack(cx);
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // End of file from yamux: the other side's FIN, a reset, or the end of
                // the connection. Only the first is a clean end on its own.
                if !this.inner.get_ref().is_closed() {
                    return Poll::Ready(Ok(()));
                }
                match this.shared().end_after_poll() {
                    // We had shut down: the other side's FIN or the close ended it;
                    // yamux does not tell which (see the module docs).
                    Some(End::Closed) if this.write_closed => Poll::Ready(Ok(())),
                    Some(End::Closed) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the multiplexed connection was closed before the stream ended",
                    ))),
                    Some(end) => Poll::Ready(Err(end.error().into())),
                    // Closed both ways while the connection is up: either we shut down
                    // and then got the FIN (clean), or the stream was reset.
                    None if this.write_closed => Poll::Ready(Ok(())),
                    None => Poll::Ready(Err(this.closed_error())),
                }
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.stream_error(e))),
            Poll::Pending => this.poll_ended(cx),
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.poll_ack(cx);
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.write_error(e))),
            Poll::Pending => this.poll_ended(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.write_error(e))),
            Poll::Pending => this.poll_ended(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Ready(Ok(())) => {
                this.write_closed = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.write_error(e))),
            Poll::Pending => this.poll_ended(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use sha2::{Digest, Sha256};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt, DuplexStream},
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::secure::{self, NoiseStream, Psk};

    const MB: usize = 1 << 20;

    type Side = (Mux, mpsc::Receiver<MuxStream>);

    fn duplex() -> (DuplexStream, DuplexStream) {
        tokio::io::duplex(MB)
    }

    async fn tcp() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, server) = (client.unwrap(), server.unwrap().0);
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        (client, server)
    }

    async fn noise() -> (NoiseStream<TcpStream>, NoiseStream<TcpStream>) {
        let (c, s) = tcp().await;
        let psk = Psk::derive("mux test", &["secret"]);
        let (c, s) = tokio::join!(secure::initiate(c, &psk), secure::respond(s, &psk, "no"));
        (c.unwrap(), s.unwrap())
    }

    fn start<T>(client: T, server: T, server_cfg: MuxConfig) -> (Side, Side)
    where
        T: Transport,
    {
        (
            Mux::start(client, Role::Client, MuxConfig::default()),
            Mux::start(server, Role::Server, server_cfg),
        )
    }

    /// Fills `buf` from a deterministic generator (an LCG), so both ends can agree on
    /// the data without storing it.
    fn fill(buf: &mut [u8], state: &mut u64) {
        for chunk in buf.chunks_mut(8) {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
    }

    /// Writes `len` generated bytes, shuts down, and returns their SHA-256.
    async fn send<W: AsyncWrite + Unpin>(w: &mut W, len: usize, seed: u64) -> [u8; 32] {
        let mut state = seed;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            fill(&mut buf[..n], &mut state);
            hash.update(&buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        hash.finalize().into()
    }

    /// Reads to end of file; returns the length and SHA-256.
    async fn recv<R: AsyncRead + Unpin>(r: &mut R) -> (usize, [u8; 32]) {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return (total, hash.finalize().into());
            }
            hash.update(&buf[..n]);
            total += n;
        }
    }

    /// Sends `len` bytes each way on one stream at once and compares hashes.
    async fn both_ways<T>((client, server): (T, T), len: usize)
    where
        T: Transport,
    {
        let ((client, _), (_server, mut accept)) = start(client, server, MuxConfig::default());
        let server_task = tokio::spawn(async move {
            let stream = accept.recv().await.unwrap();
            let (mut r, mut w) = tokio::io::split(stream);
            tokio::join!(recv(&mut r), send(&mut w, len, 2))
        });
        let stream = client.open().await.unwrap();
        let (mut r, mut w) = tokio::io::split(stream);
        let (sent, got) = tokio::join!(send(&mut w, len, 1), recv(&mut r));
        let (server_got, server_sent) = server_task.await.unwrap();
        assert_eq!(server_got, (len, sent), "client → server");
        assert_eq!(got, (len, server_sent), "server → client");
        assert_ne!(sent, server_sent);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_stream_64mb_both_ways_duplex() {
        both_ways(duplex(), 64 * MB).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_stream_64mb_both_ways_tcp() {
        both_ways(tcp().await, 64 * MB).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_stream_8mb_both_ways_noise() {
        both_ways(noise().await, 8 * MB).await;
    }

    /// Opens `n` streams at once; the server echoes each; every stream checks its echo.
    async fn many_streams<T>((client, server): (T, T), n: usize, len: usize)
    where
        T: Transport,
    {
        let ((client, _), (_server, mut accept)) = start(client, server, MuxConfig::default());
        tokio::spawn(async move {
            while let Some(stream) = accept.recv().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(stream);
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                });
            }
        });
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let client = client.clone();
            tasks.spawn(async move {
                let stream = client.open().await.unwrap();
                let (mut r, mut w) = tokio::io::split(stream);
                let (sent, got) = tokio::join!(send(&mut w, len, i as u64), recv(&mut r));
                assert_eq!(got, (len, sent), "stream {i}");
            });
        }
        assert!(client.active_streams() <= n);
        while let Some(res) = tasks.join_next().await {
            res.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hundred_streams_duplex() {
        many_streams(duplex(), 100, MB).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hundred_streams_tcp() {
        many_streams(tcp().await, 100, MB).await;
    }

    /// The client sends a question and shuts down; the server reads to end of file,
    /// then answers on the same stream; then the client closes the connection.
    async fn half_close<T>((client, server): (T, T))
    where
        T: Transport,
    {
        let ((client, _), (server, mut accept)) = start(client, server, MuxConfig::default());
        let server_task = tokio::spawn(async move {
            let mut stream = accept.recv().await.unwrap();
            let mut question = String::new();
            stream.read_to_string(&mut question).await.unwrap();
            assert_eq!(question, "what is the answer?");
            stream.write_all(b"42").await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let mut stream = client.open().await.unwrap();
        stream.write_all(b"what is the answer?").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "42");
        server_task.await.unwrap();
        client.close();
        server.closed().await;
        client.closed().await;
        assert!(matches!(client.open().await, Err(MuxError::Closed)));
        assert!(matches!(server.open().await, Err(MuxError::Closed)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_close_duplex() {
        half_close(duplex()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_close_tcp() {
        half_close(tcp().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_close_noise() {
        half_close(noise().await).await;
    }

    /// Waits (bounded) until `cond` holds.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Writes `msg` and reads the echo back (the stream stays open).
    async fn ping(stream: &mut MuxStream, msg: &[u8]) {
        stream.write_all(msg).await.unwrap();
        let mut back = vec![0; msg.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }

    async fn refuses_over_max<T>((client, server): (T, T))
    where
        T: Transport,
    {
        let cfg = MuxConfig {
            max_streams: 2,
            ..MuxConfig::default()
        };
        let ((client, _), (server, mut accept)) = start(client, server, cfg);
        tokio::spawn(async move {
            while let Some(stream) = accept.recv().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(stream);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        let mut a = client.open().await.unwrap();
        let mut b = client.open().await.unwrap();
        ping(&mut a, b"a").await;
        ping(&mut b, b"b").await;
        assert_eq!(server.active_streams(), 2);

        // The third is refused: its first read fails and says why.
        let mut c = client.open().await.unwrap();
        c.write_all(b"c").await.unwrap();
        let err = c.read(&mut [0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        assert!(err.to_string().contains("too many streams"), "{err}");
        let err = c.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        drop(c);

        // The others still work, and the server's own open is refused locally.
        ping(&mut a, b"still a").await;
        ping(&mut b, b"still b").await;
        assert!(matches!(
            server.open().await,
            Err(MuxError::TooManyStreams(2))
        ));

        // Once a stream is done there is room again.
        a.shutdown().await.unwrap();
        assert_eq!(a.read(&mut [0; 1]).await.unwrap(), 0);
        drop(a);
        until("the server to drop stream a", || {
            server.active_streams() == 1
        })
        .await;
        let mut d = client.open().await.unwrap();
        ping(&mut d, b"d").await;
        ping(&mut b, b"b again").await;
        assert!(!client.is_closed() && !server.is_closed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_over_max_duplex() {
        refuses_over_max(duplex()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_over_max_tcp() {
        refuses_over_max(tcp().await).await;
    }

    /// A service that holds every stream without answering (a long poll) does not
    /// stall new streams: inbound streams are acknowledged when first read, so the
    /// opener's backlog of unacknowledged streams (256 in yamux) never fills.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_streams_do_not_stall_opens() {
        let (a, b) = duplex();
        let ((client, _), (_server, mut accept)) = start(a, b, MuxConfig::default());
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(mut s) = accept.recv().await {
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte).await.unwrap();
                held.push(s);
                if held.len() == 1000 {
                    return held;
                }
            }
            panic!("the connection ended");
        });
        let mut streams = Vec::new();
        for i in 0..1000 {
            let mut s = tokio::time::timeout(Duration::from_secs(10), client.open())
                .await
                .unwrap_or_else(|_| panic!("open {i} stalled"))
                .unwrap();
            s.write_all(b"x").await.unwrap();
            streams.push(s);
        }
        let held = tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect("every stream arrives")
            .unwrap();
        assert_eq!(held.len(), 1000);
    }

    /// A connection closed while a stream is open ends the stream with an error on
    /// both sides, never with a clean end of file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_mid_stream_is_an_error_on_both_sides() {
        let (a, b) = duplex();
        let ((client, _), (server, mut accept)) = start(a, b, MuxConfig::default());
        let mut ours = client.open().await.unwrap();
        ours.write_all(b"partial").await.unwrap();
        let mut theirs = accept.recv().await.unwrap();
        let mut buf = [0u8; 7];
        theirs.read_exact(&mut buf).await.unwrap();
        theirs.write_all(b"half").await.unwrap();
        server.close();
        let mut got = Vec::new();
        let err = ours.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
        assert_eq!(got, b"half");
        let err = theirs.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
    }

    /// What opening costs as streams pile up on one connection (yamux scans every
    /// stream on each open): opens `MuxConfig::default().max_streams` streams that all
    /// stay open, and prints the time per open in batches. Run with
    /// `cargo test --release -p common mux::tests::open_cost -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check: prints microseconds per open"]
    async fn open_cost() {
        let (a, b) = duplex();
        let ((client, _), (_server, mut accept)) = start(a, b, MuxConfig::default());
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(mut s) = accept.recv().await {
                let mut byte = [0u8; 1];
                if s.read_exact(&mut byte).await.is_err() {
                    break;
                }
                held.push(s);
            }
            held.len()
        });
        let total = MuxConfig::default().max_streams;
        let batch = total / 8;
        let mut streams = Vec::with_capacity(total);
        for b in 0..8 {
            let start = Instant::now();
            for _ in 0..batch {
                let mut s = client.open().await.unwrap();
                s.write_all(b"x").await.unwrap();
                streams.push(s);
            }
            println!(
                "streams {:>6}..{:>6}: {:.1} us per open",
                b * batch,
                (b + 1) * batch,
                start.elapsed().as_secs_f64() * 1e6 / batch as f64
            );
        }
        assert!(client.open().await.is_err(), "the limit holds");
        drop(streams);
        client.close();
        let _ = held.await;
    }

    /// The server's end of the connection disappears (no GoAway, no Noise end
    /// marker): the client's open fails, closed() resolves, and a stream that was
    /// waiting for data fails instead of reading a clean end of file.
    async fn connection_dropped<T>((client, server): (T, T), expect: &[&str])
    where
        T: Transport,
    {
        let (client, mut accept) = Mux::start(client, Role::Client, MuxConfig::default());
        let mut server = Some(server);
        let mut stream = client.open().await.unwrap();
        stream.write_all(b"hello?").await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await
        });
        tokio::task::yield_now().await;
        drop(server.take());
        tokio::time::timeout(Duration::from_secs(10), client.closed())
            .await
            .expect("closed() resolves");
        assert!(client.is_closed());
        let err = client.open().await.unwrap_err();
        assert!(matches!(err, MuxError::Lost(_)), "{err:?}");
        assert!(expect.iter().any(|e| err.to_string().contains(e)), "{err}");
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
        assert!(accept.recv().await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_dropped_duplex() {
        // Whichever the driver notices first: the end of file, or a write failing.
        connection_dropped(duplex(), &["hung up without closing", "broken pipe"]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_dropped_tcp() {
        // Unread data makes the kernel answer with a reset rather than a FIN.
        connection_dropped(tcp().await, &["hung up without closing", "reset by peer"]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connection_dropped_noise() {
        // A TCP connection that ends without Noise's end marker was cut.
        connection_dropped(noise().await, &["i/o error"]).await;
    }

    /// Dropping the handle and the receiver keeps the connection while a stream is in
    /// use; the driver closes it once the last stream is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_outlive_handles() {
        let (a, b) = duplex();
        let ((client, client_accept), (server, mut accept)) = start(a, b, MuxConfig::default());
        let mut stream = client.open().await.unwrap();
        drop((client, client_accept));
        stream.write_all(b"ping").await.unwrap();
        let mut theirs = accept.recv().await.unwrap();
        let mut buf = [0; 4];
        theirs.read_exact(&mut buf).await.unwrap();
        theirs.write_all(b"pong").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert!(!server.is_closed());
        drop(stream);
        tokio::time::timeout(Duration::from_secs(10), server.closed())
            .await
            .expect("the connection closes after its last stream");
        assert!(matches!(server.open().await, Err(MuxError::Closed)));
    }

    /// Sends `len` bytes one way on one stream; returns MB/s.
    async fn throughput_mux<T>((client, server): (T, T), len: usize, cfg: MuxConfig) -> f64
    where
        T: Transport,
    {
        let (client, _) = Mux::start(client, Role::Client, cfg.clone());
        let (_server, mut accept) = Mux::start(server, Role::Server, cfg);
        let stream = client.open().await.unwrap();
        throughput_raw(stream, async move { accept.recv().await.unwrap() }, len).await
    }

    /// Writes `len` bytes to `w` and reads them from what `r` gives; returns MB/s.
    async fn throughput_raw<W, R>(
        mut w: W,
        r: impl std::future::Future<Output = R> + Send + 'static,
        len: usize,
    ) -> f64
    where
        W: AsyncWrite + Unpin,
        R: AsyncRead + Unpin + Send + 'static,
    {
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            let mut r = r.await;
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0;
            loop {
                match r.read(&mut buf).await.unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        let buf = vec![7u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len());
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), len);
        len as f64 / MB as f64 / start.elapsed().as_secs_f64()
    }

    /// A TCP pair through a user-space delay line: every chunk is held `one_way`
    /// before it is passed on. The line buffers without limit, so only end-to-end
    /// flow control (yamux's windows) limits a stream.
    async fn delayed_tcp(one_way: Duration) -> (TcpStream, TcpStream) {
        let (client, near) = tcp().await;
        let (far, server) = tcp().await;
        let (near_r, near_w) = near.into_split();
        let (far_r, far_w) = far.into_split();
        tokio::spawn(delay(near_r, far_w, one_way));
        tokio::spawn(delay(far_r, near_w, one_way));
        (client, server)
    }

    async fn delay<R, W>(mut r: R, mut w: W, one_way: Duration)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let due = tokio::time::Instant::now() + one_way;
                        if tx.send((due, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    }

    /// Single-stream throughput on loopback: raw TCP against yamux over TCP, and raw
    /// Noise against yamux over Noise; then yamux through a 50 ms RTT delay line, with
    /// and without window auto-tuning. Run with
    /// `cargo test --release -p common mux::tests::throughput -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check: prints MB/s"]
    async fn throughput() {
        let len = 2048 * MB;
        let (c, s) = tcp().await;
        let raw = throughput_raw(c, async move { s }, len).await;
        let mux = throughput_mux(tcp().await, len, MuxConfig::default()).await;
        println!(
            "loopback TCP, one stream, {} MB: raw TCP {raw:.0} MB/s, yamux {mux:.0} MB/s",
            len / MB
        );

        let len = 512 * MB;
        let (c, s) = noise().await;
        let raw = throughput_raw(c, async move { s }, len).await;
        let mux = throughput_mux(noise().await, len, MuxConfig::default()).await;
        println!(
            "loopback Noise, one stream, {} MB: raw Noise {raw:.0} MB/s, \
             yamux over Noise {mux:.0} MB/s",
            len / MB
        );

        let one_way = Duration::from_millis(25);
        let fixed = MuxConfig {
            window_growth: 0,
            ..MuxConfig::default()
        };
        let len = 32 * MB;
        let fixed = throughput_mux(delayed_tcp(one_way).await, len, fixed).await;
        println!(
            "50 ms RTT, {} MB, fixed 256 KiB windows (no growth): yamux {fixed:.1} MB/s",
            len / MB
        );
        let len = 512 * MB;
        let tuned = throughput_mux(delayed_tcp(one_way).await, len, MuxConfig::default()).await;
        println!(
            "50 ms RTT, {} MB, auto-tuned windows (default): yamux {tuned:.1} MB/s",
            len / MB
        );
    }
}
