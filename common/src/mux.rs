//! Many independent streams over one connection: punchline's own multiplexer.
//!
//! [`Mux::start`] takes the connection (in practice a [`crate::secure::NoiseStream`]
//! over TCP) and returns a cheap-to-clone [`Mux`] handle plus a receiver of inbound
//! [`MuxStream`]s. A [`MuxStream`] is a tokio `AsyncRead + AsyncWrite` with half-close:
//! `shutdown()` sends a FIN, the other side reads end of file and can still write back.
//!
//! # Why not yamux
//!
//! Until protocol version 5 this module wrapped `yamux`. yamux runs every stream of a
//! connection through one driver task, copies every frame twice on the way in (into a
//! fresh zeroed buffer per frame, then into the stream's buffer) and once more on the
//! way out, and wakes three tasks per frame; with AES-GCM in place that was most of a
//! tunnel's CPU (issue 10's profiles: wake-ups 20–25%, memcpy 9–15%, AES 9–10%).
//! Here there is no driver task: the reader task decrypts a frame in place and hands
//! the payload (a slice of the buffer it was read into) straight to the stream it
//! belongs to; a stream's writes become frames that the writer task encrypts and
//! writes, many per syscall. A byte is copied once on each side between the socket
//! buffers and the cipher.
//!
//! # Wire format (protocol version 6)
//!
//! Every frame starts with a 10-byte header: type (u8), flags (u8), stream id (u32,
//! big-endian), length or value (u32, big-endian). Over Noise each frame is one Noise
//! message; over a plain byte stream frames follow each other.
//!
//! * `DATA` (0): `length` bytes of payload follow (at most [`FRAME_SIZE`]).
//! * `WINDOW` (1): the sender may send `value` more bytes on the stream.
//! * `PING` (2): `value` is echoed back with the `ACK` flag (round-trip time, and
//!   proof of life on an idle connection).
//! * `GOAWAY` (3): the sender closes the connection.
//!
//! Flags: `SYN` (1) opens a stream (the opener sends a `WINDOW` with `SYN` at once),
//! `FIN` (4) ends the sender's direction, `RST` (8) resets the stream. Stream ids are
//! odd for the side that dialed ([`Role::Client`]), even for the other; never reused.
//!
//! # Lifetime of a connection
//!
//! The connection ends when
//! * the other side closed it (GoAway), or it was lost (an I/O or protocol error, an
//!   end of file without a GoAway, or nothing heard for
//!   [`LINK_IDLE_TIMEOUT`](crate::defaults::LINK_IDLE_TIMEOUT)),
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
//! * A stream dropped before both directions ended cleanly (its own `shutdown()` and
//!   the other side's FIN) is reset: the other side's reads and writes fail with
//!   [`io::ErrorKind::ConnectionReset`]. Unlike yamux, a reset is told apart from a
//!   FIN in every state, also after a half-close: a carried connection whose client
//!   had sent its FIN and whose service then failed ends with a reset, not a FIN.
//! * A refused stream (too many open) is reset the same way, with a reason that says
//!   so.
//! * The connection is lost: reads and writes fail with
//!   [`io::ErrorKind::ConnectionAborted`] and the reason ([`MuxError::Lost`]), so a
//!   cut never passes for a complete transfer. Over Noise even a TCP FIN is a loss
//!   unless Noise's end marker came first.
//! * The connection is closed ([`Mux::close`], either side) while the stream is open:
//!   reads return what has arrived, then fail with [`io::ErrorKind::ConnectionAborted`]
//!   on both sides unless the other side's FIN had arrived. Writes fail.
//!
//! # Stream limits and memory
//!
//! [`MuxConfig::max_streams`] caps the streams open at once on a connection, both
//! directions together ([`Mux::active_streams`]). [`Mux::open`] beyond it fails with
//! [`MuxError::TooManyStreams`]; an inbound stream beyond it is refused with a reset,
//! which the opener sees as an [`io::ErrorKind::ConnectionReset`] error saying so on
//! its next read or write; other streams are not affected.
//!
//! A stream's receiver grants credit ([`STREAM_WINDOW`] at first); a sender never has
//! more than that in flight, and a frame beyond it is a protocol error that loses the
//! connection. So what the other side can make us buffer is bounded by
//! `max_streams * STREAM_WINDOW + window_growth`. Outbound, at most [`OUTBOX_LIMIT`]
//! bytes of data wait for the writer task; a stream that finds it full waits.
//!
//! # Throughput
//!
//! One stream's throughput is at most `window / RTT`. Windows auto-tune as yamux's
//! did: the round-trip time is measured with a ping (at the start, then every
//! [`PING_INTERVAL`]), and a stream's window doubles whenever its reader consumed half
//! of it in less than two RTTs. The growth of all streams of a connection together is
//! bounded by [`MuxConfig::window_growth`] ([`DEFAULT_WINDOW_GROWTH`], 64 MiB: one
//! stream up to ~1.3 GB/s at 50 ms RTT), and given back when a stream ends. Windows
//! only grow while the reader keeps up, so a slow reader does not make the other side
//! fill memory.

use std::{
    collections::{HashMap, VecDeque},
    fmt, io,
    pin::Pin,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf},
    sync::{mpsc, oneshot, Notify},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::defaults::{LINK_IDLE_TIMEOUT, LIVENESS_WAKE};
use crate::secure::{NoiseReader, NoiseStream, NoiseWriter};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Initial receive window of every stream (256 KiB, yamux's too). Each stream may
/// buffer this much unread data whatever the configuration, so it also prices
/// [`MuxConfig::max_streams`].
pub const STREAM_WINDOW: usize = 256 * KIB;

/// Default for [`MuxConfig::max_streams`]: 65,536 streams (carried TCP connections)
/// on one connection.
///
/// Each stream is a TCP connection at both ends, so file descriptors bound the count
/// first on most systems; this is the backstop. What a stream costs: its pump buffers
/// (see [`crate::splice`]: 8 KiB while idle, up to 128 KiB when busy) plus about 1 KiB
/// of multiplexer, task and socket state, and, if its reader stalls, up to its receive
/// window. So the most a peer could make us buffer on one connection if no stream
/// were read at all is `max_streams * STREAM_WINDOW + window_growth` (16.1 GiB at
/// this default; the kernel's buffers for that many stalled TCP connections would hold
/// as much). A stream is read slowly only while the TCP connection it is spliced to
/// is, so the memory follows the slow clients, not this number; lower it
/// (`--max-streams`) on a small machine.
pub const DEFAULT_MAX_STREAMS: usize = 65_536;

/// Default for [`MuxConfig::window_growth`]: 64 MiB. Auto-tuning grows a fast
/// stream's window to about twice the bandwidth-delay product; 64 MiB covers one
/// stream at 5 Gbit/s over 50 ms (BDP 31 MiB), or several streams at hundreds of
/// Mbit/s over 100 ms, while keeping the memory a connection can pin bounded.
pub const DEFAULT_WINDOW_GROWTH: usize = 64 * MIB;

/// Largest data frame payload: the 10-byte header plus the payload fit one Noise
/// message (65519 bytes of plaintext), and a frame delays other streams' frames by at
/// most ~5 ms at 100 Mbit/s.
pub const FRAME_SIZE: usize = 63 * KIB;

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 10;

/// Unused bytes at the start of every frame buffer, for the transport's own framing
/// (Noise's 2-byte length), so that a frame is encrypted where it lies.
pub const FRAME_HEADROOM: usize = 2;

/// Spare capacity at the end of every frame buffer, for the transport's own trailer
/// (the AEAD tag).
pub const FRAME_TAILROOM: usize = 16;

/// A frame's bytes before the payload: headroom and header.
const PREFIX: usize = FRAME_HEADROOM + HEADER_LEN;

/// Full-size frame buffers, reused: a busy connection would otherwise allocate and
/// free a 63 KiB buffer per frame, and with glibc handing freed heap back to the
/// kernel every new buffer costs page faults and zeroed pages (measured on the
/// server during an 8-stream upload: 10-12% of its CPU in `exc_page_fault`,
/// `clear_page` and `unmap_page_range`).
///
/// [`MuxStream::frame_buffer`] takes a buffer from here when the payload may be
/// [`POOL_MIN`] or more; the writers give a frame's buffer back once it is written
/// ([`FrameQueue`]). At most [`POOL_KEEP`] buffers are kept (2 MiB), so an idle
/// process holds little.
mod pool {
    use std::sync::Mutex;

    use bytes::{Bytes, BytesMut};

    use super::{lock, FRAME_SIZE, FRAME_TAILROOM, PREFIX};

    /// Capacity of a pooled buffer: a full frame with its headroom and tailroom.
    pub(super) const POOLED: usize = PREFIX + FRAME_SIZE + FRAME_TAILROOM;

    /// Payload size from which a frame buffer comes from the pool.
    pub(super) const POOL_MIN: usize = 16 * 1024;

    /// Buffers the pool keeps at most.
    pub(super) const POOL_KEEP: usize = 32;

    static FREE: Mutex<Vec<BytesMut>> = Mutex::new(Vec::new());

    /// An empty buffer of [`POOLED`] capacity.
    pub(super) fn take() -> BytesMut {
        lock(&FREE)
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(POOLED))
    }

    /// Gives back the buffer under `bytes` if nothing else refers to it and it is a
    /// pooled one (a frame's view may start past the buffer's start: clearing it and
    /// reserving the full size reclaims the whole buffer without copying).
    pub(super) fn give(bytes: Bytes) {
        if let Some(b) = reclaim(bytes) {
            let mut free = lock(&FREE);
            if free.len() < POOL_KEEP {
                free.push(b);
            }
        }
    }

    /// The whole pooled buffer under `bytes`, emptied, if `bytes` is its only user;
    /// `None` for a shared or small buffer (reclaiming never allocates).
    pub(super) fn reclaim(bytes: Bytes) -> Option<BytesMut> {
        if bytes.len() + PREFIX < POOL_MIN {
            return None;
        }
        let mut b = bytes.try_into_mut().ok()?;
        b.clear();
        (b.try_reclaim(POOLED) && b.capacity() == POOLED).then_some(b)
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]
        use bytes::{Buf, BufMut};

        use super::*;

        #[test]
        fn a_written_frame_gives_its_whole_buffer_back() {
            // Sealed in place (length in the headroom, tag appended), then written in
            // two parts: the view starts past the buffer's start.
            for (payload, written) in [(super::super::FRAME_SIZE, 30_000), (POOL_MIN, 2)] {
                let mut frame = take();
                let base = frame.as_ptr();
                frame.put_bytes(7, PREFIX + payload + FRAME_TAILROOM);
                let mut bytes = frame.freeze();
                bytes.advance(written);
                let back = reclaim(bytes).expect("reclaimed");
                assert_eq!(
                    (back.as_ptr(), back.len(), back.capacity()),
                    (base, 0, POOLED)
                );
            }
        }

        #[test]
        fn shared_and_small_buffers_stay_out() {
            let mut frame = take();
            frame.put_bytes(1, POOLED);
            let bytes = frame.freeze();
            let other = bytes.clone();
            assert!(reclaim(bytes).is_none(), "a buffer still referred to");
            drop(other);
            let mut small = BytesMut::with_capacity(100);
            small.put_bytes(1, 100);
            assert!(reclaim(small.freeze()).is_none());
            let mut odd = BytesMut::with_capacity(POOLED + 4096);
            odd.put_bytes(1, POOLED);
            assert!(
                reclaim(odd.freeze()).is_none(),
                "not a pooled buffer's size"
            );
        }
    }
}

/// Frame bytes a writer collects before it writes them out (without a flush): many
/// frames per syscall, little enough to start writing early in a burst.
pub const WRITE_BATCH: usize = 256 * KIB;

/// A writer holding fewer bytes than this when its outbox runs dry waits one scheduler
/// round before writing them (see `write_loop`): small messages of many streams
/// (HTTP requests, interactive traffic) then share a syscall and a TCP segment. Bulk
/// frames (63 KiB) are written at once: for them the extra round costs more than it
/// saves.
pub const COALESCE_BELOW: usize = 16 * KIB;

/// How much a plain (unencrypted) transport reads at once.
pub const IO_BUFFER: usize = 64 * KIB;

/// How long a graceful close may take to flush pending frames and the GoAway before
/// the connection is dropped anyway (a peer that stopped reading must not hold a
/// closing connection forever).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`MuxConfig::max_streams`] is capped at this (about a million): it sizes a queue.
pub const MAX_STREAMS_CAP: usize = 1 << 20;

/// Data bytes that may wait for the writer task, over all streams of a connection:
/// enough to keep the writer busy while streams refill it (eight full frames), little
/// enough that memory follows the connection's speed.
pub const OUTBOX_LIMIT: usize = 8 * 64 * KIB;

/// How often a ping measures the round-trip time. It also keeps an idle connection
/// heard from: each side answers the other's pings, so a live peer is heard from at
/// least every `PING_INTERVAL` plus a round trip, well within
/// [`LINK_IDLE_TIMEOUT`](crate::defaults::LINK_IDLE_TIMEOUT).
pub const PING_INTERVAL: Duration = Duration::from_secs(10);

// Frame types and flags (see the module docs).
const DATA: u8 = 0;
const WINDOW: u8 = 1;
const PING: u8 = 2;
const GOAWAY: u8 = 3;
const SYN: u8 = 1;
const ACK: u8 = 2;
const FIN: u8 = 4;
const RST: u8 = 8;

/// Payloads at least this big are handed to their stream without a copy (see
/// `on_frame`).
const ZERO_COPY_MIN: usize = 16 * KIB;

const RESET_REASON: &str = "stream reset by the other side: it refused the stream (too many \
                            streams open) or dropped it before finishing";

/// Which side of the connection this is: they allocate stream ids from different
/// halves of the id space.
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
    /// peer can make us hold is `max_streams * STREAM_WINDOW + window_growth`.
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

/// Why a [`Mux`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The connection was closed in an orderly way: by [`Mux::close`] on either side,
    /// or because nothing used it any more.
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

/// How the connection ended (set once).
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A frame header (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: u8,
    flags: u8,
    id: u32,
    len: u32,
}

impl Header {
    fn put_slice(&self, out: &mut &mut [u8]) {
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.id);
        out.put_u32(self.len);
    }

    fn put(&self, out: &mut BytesMut) {
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.id);
        out.put_u32(self.len);
    }

    fn parse(b: &[u8]) -> Result<Self, String> {
        let h = Header {
            kind: b[0],
            flags: b[1],
            id: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
            len: u32::from_be_bytes([b[6], b[7], b[8], b[9]]),
        };
        if h.kind > GOAWAY {
            return Err(format!("protocol error: unknown frame type {}", h.kind));
        }
        if h.kind == DATA && h.len as usize > FRAME_SIZE {
            return Err(format!(
                "protocol error: a data frame of {} bytes (at most {FRAME_SIZE})",
                h.len
            ));
        }
        Ok(h)
    }

    /// Bytes of payload after the header.
    fn payload(&self) -> usize {
        if self.kind == DATA {
            self.len as usize
        } else {
            0
        }
    }
}

fn control(kind: u8, flags: u8, id: u32, len: u32) -> BytesMut {
    let mut b = BytesMut::with_capacity(PREFIX + FRAME_TAILROOM);
    b.put_bytes(0, FRAME_HEADROOM);
    Header {
        kind,
        flags,
        id,
        len,
    }
    .put(&mut b);
    b
}

/// Payload bytes of a frame (as queued, with its headroom) that count against
/// [`OUTBOX_LIMIT`].
fn data_len(frame: &[u8]) -> usize {
    if frame[FRAME_HEADROOM] == DATA {
        frame.len() - PREFIX
    } else {
        0
    }
}

/// Cuts frames out of the chunks a [`ChunkRead`] hands over: without a copy when a
/// chunk holds whole frames (always, over Noise), else by collecting the pieces.
#[derive(Default)]
struct Deframer {
    chunk: Bytes,
    partial: BytesMut,
}

impl Deframer {
    fn push(&mut self, chunk: Bytes) {
        debug_assert!(self.chunk.is_empty());
        self.chunk = chunk;
    }

    fn next(&mut self) -> Result<Option<(Header, Bytes)>, String> {
        loop {
            if self.partial.is_empty() {
                if self.chunk.len() < HEADER_LEN {
                    if !self.chunk.is_empty() {
                        self.partial.extend_from_slice(&self.chunk);
                        self.chunk.clear();
                    }
                    return Ok(None);
                }
                let h = Header::parse(&self.chunk[..HEADER_LEN])?;
                let total = HEADER_LEN + h.payload();
                if self.chunk.len() >= total {
                    let mut frame = self.chunk.split_to(total);
                    frame.advance(HEADER_LEN);
                    return Ok(Some((h, frame)));
                }
                self.partial.extend_from_slice(&self.chunk);
                self.chunk.clear();
                return Ok(None);
            }
            let need = if self.partial.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                HEADER_LEN + Header::parse(&self.partial[..HEADER_LEN])?.payload()
            };
            if self.partial.len() < need {
                if self.chunk.is_empty() {
                    return Ok(None);
                }
                let take = (need - self.partial.len()).min(self.chunk.len());
                self.partial.extend_from_slice(&self.chunk.split_to(take));
                continue;
            }
            let h = Header::parse(&self.partial[..HEADER_LEN])?;
            let mut frame = self.partial.split().freeze();
            frame.advance(HEADER_LEN);
            return Ok(Some((h, frame)));
        }
    }
}

/// What the writer task should do next.
enum Take {
    Frames,
    Shutdown,
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    Open,
    /// Write what is queued, then shut the connection down.
    Closing,
    /// Drop the connection unflushed (it was lost).
    Aborted,
}

struct OutInner {
    frames: VecDeque<BytesMut>,
    data_bytes: usize,
    writer: Option<Waker>,
    waiting: Vec<Waker>,
    state: OutState,
}

/// Frames waiting for the writer task, in the order they were queued.
struct Outbox(Mutex<OutInner>);

impl Outbox {
    fn new() -> Self {
        Self(Mutex::new(OutInner {
            frames: VecDeque::new(),
            data_bytes: 0,
            writer: None,
            waiting: Vec::new(),
            state: OutState::Open,
        }))
    }

    /// Ready when a data frame may be queued (or the connection is ending).
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut o = lock(&self.0);
        if o.data_bytes < OUTBOX_LIMIT || o.state != OutState::Open {
            return Poll::Ready(());
        }
        o.waiting.push(cx.waker().clone());
        Poll::Pending
    }

    /// Queues a frame; false once the connection is ending.
    fn push(&self, frame: BytesMut) -> bool {
        let waker = {
            let mut o = lock(&self.0);
            if o.state != OutState::Open {
                return false;
            }
            o.data_bytes += data_len(&frame);
            o.frames.push_back(frame);
            o.writer.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    fn poll_take(&self, cx: &mut Context<'_>, batch: &mut VecDeque<BytesMut>) -> Poll<Take> {
        let mut o = lock(&self.0);
        match o.state {
            OutState::Aborted => return Poll::Ready(Take::Abort),
            _ if !o.frames.is_empty() => {
                std::mem::swap(&mut o.frames, batch);
                return Poll::Ready(Take::Frames);
            }
            OutState::Closing => return Poll::Ready(Take::Shutdown),
            OutState::Open => {}
        }
        if !o.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            o.writer = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The writer wrote `data` bytes of data frames: wakes streams waiting for room.
    fn release(&self, data: usize) {
        let waiting = {
            let mut o = lock(&self.0);
            o.data_bytes -= data;
            if o.data_bytes >= OUTBOX_LIMIT {
                return;
            }
            std::mem::take(&mut o.waiting)
        };
        waiting.into_iter().for_each(Waker::wake);
    }

    fn is_empty(&self) -> bool {
        lock(&self.0).frames.is_empty()
    }

    fn set_state(&self, state: OutState) {
        let (writer, waiting) = {
            let mut o = lock(&self.0);
            if o.state == OutState::Aborted || o.state == state {
                return;
            }
            o.state = state;
            (o.writer.take(), std::mem::take(&mut o.waiting))
        };
        writer.into_iter().chain(waiting).for_each(Waker::wake);
    }
}

/// One stream's state, shared by its [`MuxStream`] and the reader task.
struct StreamInner {
    /// Received payloads not yet read.
    recv: VecDeque<Bytes>,
    /// Bytes the other side may still send before it gets more credit.
    recv_allowed: u64,
    /// The receive window: credit is topped up to this.
    window: u64,
    /// Bytes read since the last window update.
    consumed: u64,
    last_update: Instant,
    remote_fin: bool,
    reset: bool,
    /// Our side shut down (sent its FIN).
    local_fin: bool,
    /// Bytes we may still send.
    send_credit: u64,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

struct StreamShared {
    id: u32,
    inner: Mutex<StreamInner>,
}

impl StreamShared {
    fn new(id: u32) -> Arc<Self> {
        Arc::new(Self {
            id,
            inner: Mutex::new(StreamInner {
                recv: VecDeque::new(),
                recv_allowed: STREAM_WINDOW as u64,
                window: STREAM_WINDOW as u64,
                consumed: 0,
                last_update: Instant::now(),
                remote_fin: false,
                reset: false,
                local_fin: false,
                send_credit: STREAM_WINDOW as u64,
                read_waker: None,
                write_waker: None,
            }),
        })
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// State shared by the tasks, the handles and the streams.
struct Shared {
    role: Role,
    max_streams: usize,
    /// Streams alive (a [`MuxStream`] exists).
    active: AtomicUsize,
    /// Notified when `active` drops to zero.
    idle: Notify,
    /// [`Mux::close`] was called (or the connection is closing because unused).
    close_requested: CancellationToken,
    /// The connection has ended; `end` is set before this is cancelled.
    ended: CancellationToken,
    end: OnceLock<End>,
    streams: Mutex<HashMap<u32, Arc<StreamShared>>>,
    next_id: AtomicU32,
    out: Outbox,
    /// Window growth still available to this connection's streams.
    growth_left: AtomicUsize,
    /// Last measured round-trip time in microseconds (0: not yet measured).
    rtt_us: AtomicU64,
    /// Milliseconds after `epoch` when something last arrived.
    last_heard: AtomicU64,
    epoch: Instant,
    /// The ping in flight: its value and when it left.
    ping: Mutex<Option<(u32, Instant)>>,
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

    fn finish(&self, end: End) {
        if self.end.set(end.clone()).is_err() {
            return;
        }
        match &end {
            End::Closed => {
                tracing::debug!("connection closed");
                self.out.set_state(OutState::Closing);
            }
            End::Lost(reason) => {
                tracing::debug!(%reason, "connection lost");
                self.out.set_state(OutState::Aborted);
            }
        }
        self.ended.cancel();
        self.wake_all();
    }

    /// Wakes every stream, so that it sees the connection's state.
    fn wake_all(&self) {
        let streams: Vec<_> = lock(&self.streams).values().cloned().collect();
        for s in streams {
            let (r, w) = {
                let mut i = lock(&s.inner);
                (i.read_waker.take(), i.write_waker.take())
            };
            r.into_iter().chain(w).for_each(Waker::wake);
        }
        let waiting = std::mem::take(&mut lock(&self.out.0).waiting);
        waiting.into_iter().for_each(Waker::wake);
    }

    fn heard(&self) {
        self.last_heard
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_heard.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn send_ping(&self) {
        let value = rand::random::<u32>();
        *lock(&self.ping) = Some((value, Instant::now()));
        self.out.push(control(PING, 0, 0, value));
    }

    fn is_remote_id(&self, id: u32) -> bool {
        let odd = id % 2 == 1;
        match self.role {
            Role::Client => !odd,
            Role::Server => odd,
        }
    }

    /// Takes up to `want` bytes of window growth.
    fn take_growth(&self, want: usize) -> usize {
        let mut got = 0;
        let _ = self
            .growth_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                got = left.min(want);
                Some(left - got)
            });
        got
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

/// A handle to a multiplexed connection; clones share the connection.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
    /// Never sent on: the supervisor notices when every handle is gone.
    _handle: mpsc::Sender<()>,
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
    /// Starts the connection's reader, writer and supervisor tasks; returns the handle
    /// and a receiver of inbound streams. The two ends must have different roles.
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
        let max_streams = cfg.max_streams.clamp(1, MAX_STREAMS_CAP);
        let shared = Arc::new(Shared {
            role,
            max_streams: cfg.max_streams.min(MAX_STREAMS_CAP),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            close_requested: CancellationToken::new(),
            ended: CancellationToken::new(),
            end: OnceLock::new(),
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(match role {
                Role::Client => 1,
                Role::Server => 2,
            }),
            out: Outbox::new(),
            growth_left: AtomicUsize::new(cfg.window_growth),
            rtt_us: AtomicU64::new(0),
            last_heard: AtomicU64::new(0),
            epoch: Instant::now(),
            ping: Mutex::new(None),
        });
        let span = tracing::debug_span!("mux", ?role);
        let (reader, writer) = io.split_transport();
        // Every stream holds a slot, so at most `max_streams` can wait in the queue:
        // handing one over never blocks the reader.
        let (inbound_tx, inbound_rx) = mpsc::channel(max_streams);
        let (handle, handles) = mpsc::channel(1);
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(
            read_loop(reader, shared.clone(), inbound_tx.clone()).instrument(span.clone()),
        );
        tokio::spawn(write_loop(writer, shared.clone(), done_tx).instrument(span.clone()));
        tokio::spawn(supervise(shared.clone(), handles, inbound_tx, done_rx).instrument(span));
        (
            Mux {
                shared,
                _handle: handle,
            },
            inbound_rx,
        )
    }

    /// Opens a new outbound stream. The other side learns of it at once, but a stream
    /// it refuses fails on a later read or write, not here.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        self.open_now()
    }

    fn open_now(&self) -> Result<MuxStream, MuxError> {
        let shared = &self.shared;
        if let Some(e) = shared.closed_error() {
            return Err(e);
        }
        let slot = Slot::reserve(shared).ok_or(MuxError::TooManyStreams(shared.max_streams))?;
        let id = shared
            .next_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |id| id.checked_add(2))
            .map_err(|_| MuxError::Lost("stream ids exhausted on this connection".into()))?;
        let stream = StreamShared::new(id);
        lock(&shared.streams).insert(id, stream.clone());
        let s = MuxStream::new(stream, slot);
        if !shared.out.push(control(WINDOW, SYN, id, 0)) {
            return Err(shared.closed_error().unwrap_or(MuxError::Closed));
        }
        Ok(s)
    }

    /// Whether the connection has ended.
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
        self.shared.wake_all();
    }

    /// Streams open right now, both directions (a stream counts until its
    /// [`MuxStream`] is dropped, including inbound streams not yet received).
    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }
}

/// The reader task: cuts frames out of what arrives and hands each to its stream.
async fn read_loop<R: ChunkRead>(
    mut reader: R,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<MuxStream>,
) {
    let ended = shared.ended.clone();
    let ended = ended.cancelled();
    tokio::pin!(ended);
    let mut frames = Deframer::default();
    let end = 'read: loop {
        let chunk = tokio::select! {
            biased;
            () = &mut ended => return,
            chunk = std::future::poll_fn(|cx| reader.poll_chunk(cx)) => chunk,
        };
        match chunk {
            Ok(Some(chunk)) => {
                shared.heard();
                frames.push(chunk);
                loop {
                    match frames.next() {
                        Ok(Some((h, payload))) => {
                            if let Some(end) = on_frame(&shared, &inbound, h, payload) {
                                break 'read end;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => break 'read End::Lost(e),
                    }
                }
            }
            // Our GoAway crossed the other side's end: a close either way.
            Ok(None) if shared.close_requested.is_cancelled() => break End::Closed,
            Ok(None) => {
                break End::Lost(
                    "the other side hung up without closing the multiplexed connection".into(),
                )
            }
            Err(e) => break End::Lost(format!("i/o error: {e}")),
        }
    };
    shared.finish(end);
}

/// Handles one frame; `Some` when the connection ends with it.
fn on_frame(
    shared: &Arc<Shared>,
    inbound: &mpsc::Sender<MuxStream>,
    h: Header,
    payload: Bytes,
) -> Option<End> {
    match h.kind {
        PING if h.flags & ACK == 0 => {
            shared.out.push(control(PING, ACK, 0, h.len));
            return None;
        }
        PING => {
            let mut ping = lock(&shared.ping);
            if let Some((value, sent)) = *ping {
                if value == h.len {
                    let us = sent.elapsed().as_micros().max(1) as u64;
                    shared.rtt_us.store(us, Ordering::Relaxed);
                    *ping = None;
                }
            }
            return None;
        }
        GOAWAY => return Some(End::Closed),
        _ => {}
    }
    if h.id == 0 {
        return Some(End::Lost(
            "protocol error: a stream frame for stream 0".into(),
        ));
    }
    let stream = if h.flags & SYN != 0 {
        if !shared.is_remote_id(h.id) {
            return Some(End::Lost(format!(
                "protocol error: the other side opened stream {} with an id of ours",
                h.id
            )));
        }
        if lock(&shared.streams).contains_key(&h.id) {
            return Some(End::Lost(format!(
                "protocol error: stream {} opened twice",
                h.id
            )));
        }
        let Some(slot) = Slot::reserve(shared) else {
            tracing::warn!(
                max_streams = shared.max_streams,
                "refusing an inbound stream: too many streams open"
            );
            shared.out.push(control(WINDOW, RST, h.id, 0));
            return None;
        };
        let stream = StreamShared::new(h.id);
        lock(&shared.streams).insert(h.id, stream.clone());
        if let Err(e) = inbound.try_send(MuxStream::new(stream.clone(), slot)) {
            tracing::debug!("refusing an inbound stream: nobody accepts streams");
            // Dropping it resets it and forgets it.
            drop(e);
            return None;
        }
        stream
    } else {
        match lock(&shared.streams).get(&h.id) {
            Some(s) => s.clone(),
            // A stream we dropped (and reset or finished): whatever still comes is
            // discarded.
            None => return None,
        }
    };
    let (r, w) = {
        let mut i = lock(&stream.inner);
        let mut wake_read = false;
        let mut wake_write = false;
        if h.kind == DATA && !payload.is_empty() {
            let n = payload.len() as u64;
            if n > i.recv_allowed {
                return Some(End::Lost(format!(
                    "protocol error: stream {} sent beyond its window",
                    h.id
                )));
            }
            i.recv_allowed -= n;
            // A payload is a slice of the buffer it was read into (256 KiB over Noise):
            // handed on as it is while the stream's reader keeps up, copied when it is
            // small or queues behind others, so a slow stream pins only its own bytes.
            if payload.len() >= ZERO_COPY_MIN && i.recv.is_empty() {
                i.recv.push_back(payload);
            } else {
                i.recv.push_back(Bytes::copy_from_slice(&payload));
            }
            wake_read = true;
        }
        if h.kind == WINDOW && h.len > 0 {
            i.send_credit += u64::from(h.len);
            wake_write = true;
        }
        if h.flags & FIN != 0 {
            i.remote_fin = true;
            wake_read = true;
        }
        if h.flags & RST != 0 {
            i.reset = true;
            wake_read = true;
            wake_write = true;
        }
        (
            if wake_read { i.read_waker.take() } else { None },
            if wake_write {
                i.write_waker.take()
            } else {
                None
            },
        )
    };
    r.into_iter().chain(w).for_each(Waker::wake);
    None
}

/// The writer task: writes queued frames, flushing whenever the queue is empty (so
/// frames that arrive together leave in one syscall). On a lost connection it stops
/// without flushing.
async fn write_loop<W: FrameWrite>(mut writer: W, shared: Arc<Shared>, done: oneshot::Sender<()>) {
    let mut batch = VecDeque::new();
    let res = async {
        // Whether the frames now queued have waited one scheduler round already.
        let mut yielded = false;
        loop {
            match std::future::poll_fn(|cx| shared.out.poll_take(cx, &mut batch)).await {
                Take::Frames => {
                    let mut data = 0;
                    while let Some(frame) = batch.pop_front() {
                        data += data_len(&frame);
                        writer.queue(frame)?;
                        if writer.queued() >= WRITE_BATCH {
                            std::future::poll_fn(|cx| writer.poll_write_out(cx)).await?;
                        }
                    }
                    shared.out.release(data);
                    if shared.out.is_empty() {
                        // A short batch waits one scheduler round (the runtime polls
                        // the sockets and runs the tasks that became ready), so that
                        // streams with something to send in the same moment share one
                        // syscall and one TCP segment instead of one each.
                        if !yielded && writer.queued() < COALESCE_BELOW {
                            yielded = true;
                            tokio::task::yield_now().await;
                            if !shared.out.is_empty() {
                                continue;
                            }
                        }
                        std::future::poll_fn(|cx| writer.poll_write_out(cx)).await?;
                        yielded = false;
                    }
                }
                Take::Shutdown => {
                    std::future::poll_fn(|cx| writer.poll_finish(cx)).await?;
                    return Ok::<(), io::Error>(());
                }
                Take::Abort => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = res {
        shared.finish(End::Lost(format!("i/o error: {e}")));
    }
    let _ = done.send(());
}

/// The supervisor task: pings, notices silence, and closes the connection when asked
/// or when nothing can use it any more.
async fn supervise(
    shared: Arc<Shared>,
    mut handles: mpsc::Receiver<()>,
    inbound: mpsc::Sender<MuxStream>,
    writer_done: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(LIVENESS_WAKE);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_ping = Instant::now();
    let mut handles_gone = false;
    let mut receiver_gone = false;
    loop {
        if handles_gone && receiver_gone && shared.active.load(Ordering::Acquire) == 0 {
            tracing::debug!("no handle, receiver or stream left: closing");
            break;
        }
        tokio::select! {
            biased;
            () = shared.ended.cancelled() => return,
            () = shared.close_requested.cancelled() => break,
            _ = handles.recv(), if !handles_gone => handles_gone = true,
            () = inbound.closed(), if !receiver_gone => receiver_gone = true,
            () = shared.idle.notified(), if handles_gone && receiver_gone => {}
            _ = tick.tick() => {
                if shared.silent_for() >= LINK_IDLE_TIMEOUT {
                    shared.finish(End::Lost(format!(
                        "i/o error: nothing heard from the other side for {LINK_IDLE_TIMEOUT:?}: \
                         it is paused, gone, or cut off"
                    )));
                    return;
                }
                if Instant::now() >= next_ping {
                    shared.send_ping();
                    next_ping = Instant::now() + PING_INTERVAL;
                }
            }
        }
    }
    // A graceful close.
    shared.close_requested.cancel();
    shared.wake_all();
    shared.out.push(control(GOAWAY, 0, 0, 0));
    shared.out.set_state(OutState::Closing);
    let end = match tokio::time::timeout(CLOSE_TIMEOUT, writer_done).await {
        Ok(_) => End::Closed,
        Err(_) => End::Lost(format!(
            "the other side did not take the close within {CLOSE_TIMEOUT:?}"
        )),
    };
    shared.finish(end);
}

/// A connection a [`Mux`] can run on. It is split in two halves, each driven by a task
/// of its own: one reads (and, for Noise, decrypts), one writes (and encrypts), so one
/// connection's work spreads over the cores.
pub trait Transport: Send + 'static {
    /// The reading half.
    type Reader: ChunkRead;
    /// The writing half.
    type Writer: FrameWrite;
    /// Splits the connection into its halves.
    fn split_transport(self) -> (Self::Reader, Self::Writer);
}

/// A writing half that takes whole frames and writes them out in batches.
///
/// A frame comes as a buffer with [`FRAME_HEADROOM`] unused bytes before the frame's
/// header and at least [`FRAME_TAILROOM`] bytes of spare capacity after it, so that an
/// encrypting writer seals it where it lies (its length in the headroom, the tag in
/// the tailroom) and nothing is copied.
pub trait FrameWrite: Send + Unpin + 'static {
    /// Takes one frame (encrypting it, for Noise); nothing is written yet.
    fn queue(&mut self, frame: BytesMut) -> io::Result<()>;
    /// Bytes taken and not yet written.
    fn queued(&self) -> usize;
    /// Writes out everything taken (several frames per syscall) and flushes.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Writes out everything taken, ends the stream cleanly (for Noise, its end
    /// marker) and shuts the connection's write side down.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Frames written out with vectored writes: the shared part of every [`FrameWrite`].
#[derive(Debug, Default)]
pub struct FrameQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

/// Slices per vectored write (Linux takes up to 1024; 64 frames is ~4 MiB).
const MAX_IOVECS: usize = 64;

impl FrameQueue {
    /// Adds bytes to write.
    pub fn push(&mut self, bytes: Bytes) {
        self.bytes += bytes.len();
        self.frames.push_back(bytes);
    }

    /// Bytes not yet written.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether everything was written.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Writes everything out to `w` (not flushed).
    pub fn poll_write_to<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.frames.is_empty() {
            let n = if w.is_write_vectored() && self.frames.len() > 1 {
                let slices: Vec<io::IoSlice<'_>> = self
                    .frames
                    .iter()
                    .take(MAX_IOVECS)
                    .map(|b| io::IoSlice::new(b))
                    .collect();
                std::task::ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices))?
            } else {
                std::task::ready!(Pin::new(&mut *w).poll_write(cx, &self.frames[0]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.bytes -= n;
            let mut left = n;
            while left > 0 {
                let front = &mut self.frames[0];
                if front.len() <= left {
                    left -= front.len();
                    if let Some(written) = self.frames.pop_front() {
                        pool::give(written);
                    }
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// An unencrypted writer as a [`FrameWrite`].
#[derive(Debug)]
pub struct PlainWriter<W> {
    io: W,
    queue: FrameQueue,
}

impl<W> PlainWriter<W> {
    /// Wraps `io`.
    pub fn new(io: W) -> Self {
        Self {
            io,
            queue: FrameQueue::default(),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> FrameWrite for PlainWriter<W> {
    fn queue(&mut self, mut frame: BytesMut) -> io::Result<()> {
        frame.advance(FRAME_HEADROOM);
        self.queue.push(frame.freeze());
        Ok(())
    }

    fn queued(&self) -> usize {
        self.queue.len()
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.queue.poll_write_to(&mut self.io, cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
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
    type Writer = PlainWriter<WriteHalf<T>>;
    fn split_transport(self) -> (Self::Reader, Self::Writer) {
        let (r, w) = tokio::io::split(self.0);
        (
            PlainReader {
                io: r,
                buf: BytesMut::new(),
            },
            PlainWriter::new(w),
        )
    }
}

impl Transport for tokio::net::TcpStream {
    type Reader = PlainReader<tokio::net::tcp::OwnedReadHalf>;
    type Writer = PlainWriter<tokio::net::tcp::OwnedWriteHalf>;
    fn split_transport(self) -> (Self::Reader, Self::Writer) {
        let (r, w) = self.into_split();
        (
            PlainReader {
                io: r,
                buf: BytesMut::new(),
            },
            PlainWriter::new(w),
        )
    }
}

impl Transport for tokio::io::DuplexStream {
    type Reader = PlainReader<ReadHalf<Self>>;
    type Writer = PlainWriter<WriteHalf<Self>>;
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

/// One stream of a [`Mux`]: a tokio `AsyncRead + AsyncWrite`.
///
/// `shutdown()` half-closes: the other side reads end of file, and can still write
/// back until it shuts down too. Drop a stream once done both ways: dropped earlier it
/// is reset (the other side's reads and writes fail). Errors are described in the
/// module docs.
pub struct MuxStream {
    stream: Arc<StreamShared>,
    // Last: the stream is forgotten before its slot is given back.
    slot: Slot,
}

impl fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id()).finish()
    }
}

impl MuxStream {
    fn new(stream: Arc<StreamShared>, slot: Slot) -> Self {
        Self { stream, slot }
    }

    /// The stream's id on its connection (for logs).
    pub fn id(&self) -> u32 {
        self.stream.id
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.slot.0
    }

    fn reset_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, RESET_REASON)
    }

    /// The window update to send after a read, if one is due (auto-tuning the window;
    /// see the module docs).
    fn window_update(&self, i: &mut StreamInner) -> Option<u32> {
        if i.remote_fin || i.reset || i.consumed < i.window / 2 {
            return None;
        }
        let now = Instant::now();
        let mut delta = i.consumed;
        if let Some(rtt) = self.shared().rtt() {
            if now.duration_since(i.last_update) < rtt * 2 && i.window < u64::from(u32::MAX) / 4 {
                let grown = self.shared().take_growth(i.window as usize) as u64;
                i.window += grown;
                delta += grown;
            }
        }
        i.last_update = now;
        i.consumed = 0;
        i.recv_allowed += delta;
        Some(delta as u32)
    }
}

impl MuxStream {
    /// What a read gets when nothing is buffered: end of file, an error, or `None`
    /// (wait).
    fn no_data(&self, i: &StreamInner) -> Option<io::Result<()>> {
        if i.remote_fin {
            return Some(Ok(()));
        }
        if i.reset {
            return Some(Err(Self::reset_error()));
        }
        match self.shared().end.get() {
            Some(End::Closed) => Some(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the multiplexed connection was closed before the stream ended",
            ))),
            Some(end) => Some(Err(end.error().into())),
            None if self.shared().close_requested.is_cancelled() => {
                Some(Err(MuxError::Closed.into()))
            }
            None => None,
        }
    }

    /// Counts `n` bytes read and sends the window update that is due, if any.
    fn consumed(&self, mut i: MutexGuard<'_, StreamInner>, n: usize) {
        i.consumed += n as u64;
        let update = self.window_update(&mut i);
        drop(i);
        if let Some(delta) = update {
            self.shared()
                .out
                .push(control(WINDOW, 0, self.stream.id, delta));
        }
    }

    /// The next piece of received data as it arrived (without a copy), or `None` at
    /// the other side's FIN. Errors as for reads.
    pub fn poll_recv_chunk(&self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let mut i = lock(&self.stream.inner);
        if let Some(chunk) = i.recv.pop_front() {
            self.consumed(i, chunk.len());
            return Poll::Ready(Ok(Some(chunk)));
        }
        match self.no_data(&i) {
            Some(Ok(())) => Poll::Ready(Ok(None)),
            Some(Err(e)) => Poll::Ready(Err(e)),
            None => {
                set_waker(&mut i.read_waker, cx);
                Poll::Pending
            }
        }
    }

    /// Why nothing can be sent, if so.
    fn send_error(&self, i: &StreamInner) -> Option<io::Error> {
        if i.local_fin {
            return Some(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            ));
        }
        if i.reset {
            return Some(Self::reset_error());
        }
        self.shared().closed_error().map(io::Error::from)
    }

    /// Waits until data may be sent: the other side granted credit and the
    /// connection's outbox has room. Returns how many bytes the next frame may carry
    /// (at most [`FRAME_SIZE`]).
    pub fn poll_send_capacity(&self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if let Some(e) = self.send_error(&lock(&self.stream.inner)) {
            return Poll::Ready(Err(e));
        }
        std::task::ready!(self.shared().out.poll_room(cx));
        let mut i = lock(&self.stream.inner);
        if let Some(e) = self.send_error(&i) {
            return Poll::Ready(Err(e));
        }
        if i.send_credit == 0 {
            set_waker(&mut i.write_waker, cx);
            return Poll::Pending;
        }
        Poll::Ready(Ok(i.send_credit.min(FRAME_SIZE as u64) as usize))
    }

    /// An empty frame with room for `capacity` bytes of payload: put the payload in
    /// with `BufMut` (or a read into it), then [`MuxStream::send_frame`].
    pub fn frame_buffer(capacity: usize) -> BytesMut {
        let mut frame = if (pool::POOL_MIN..=FRAME_SIZE).contains(&capacity) {
            pool::take()
        } else {
            BytesMut::with_capacity(PREFIX + capacity + FRAME_TAILROOM)
        };
        frame.put_bytes(0, PREFIX);
        frame
    }

    /// Sends a frame from [`MuxStream::frame_buffer`] whose payload is at most what
    /// [`MuxStream::poll_send_capacity`] last allowed. The payload is not copied.
    pub fn send_frame(&self, mut frame: BytesMut) -> io::Result<()> {
        let n = frame.len() - PREFIX;
        if n == 0 {
            return Ok(());
        }
        {
            let mut i = lock(&self.stream.inner);
            if let Some(e) = self.send_error(&i) {
                return Err(e);
            }
            if n as u64 > i.send_credit || n > FRAME_SIZE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a frame larger than the send capacity",
                ));
            }
            i.send_credit -= n as u64;
        }
        let mut header = &mut frame[FRAME_HEADROOM..PREFIX];
        Header {
            kind: DATA,
            flags: 0,
            id: self.stream.id,
            len: n as u32,
        }
        .put_slice(&mut header);
        if !self.shared().out.push(frame) {
            return Err(self.ended_error());
        }
        Ok(())
    }

    /// The error for a frame the ending connection no longer takes.
    fn ended_error(&self) -> io::Error {
        self.shared()
            .closed_error()
            .unwrap_or(MuxError::Closed)
            .into()
    }

    /// Ends our direction (sends the FIN); the other side reads end of file.
    pub fn finish(&self) -> io::Result<()> {
        {
            let mut i = lock(&self.stream.inner);
            if i.local_fin {
                return Ok(());
            }
            if i.reset {
                return Err(Self::reset_error());
            }
            if let Some(e) = self.shared().closed_error() {
                return Err(e.into());
            }
            i.local_fin = true;
        }
        if !self
            .shared()
            .out
            .push(control(DATA, FIN, self.stream.id, 0))
        {
            return Err(self.ended_error());
        }
        Ok(())
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut i = lock(&this.stream.inner);
        if !i.recv.is_empty() {
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = i.recv.front_mut() else {
                    break;
                };
                let k = front.len().min(buf.remaining());
                buf.put_slice(&front[..k]);
                front.advance(k);
                if front.is_empty() {
                    i.recv.pop_front();
                }
                n += k;
            }
            this.consumed(i, n);
            return Poll::Ready(Ok(()));
        }
        match this.no_data(&i) {
            Some(res) => Poll::Ready(res),
            None => {
                set_waker(&mut i.read_waker, cx);
                Poll::Pending
            }
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
        if buf.is_empty() {
            if let Some(e) = this.send_error(&lock(&this.stream.inner)) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(0));
        }
        let cap = std::task::ready!(this.poll_send_capacity(cx))?;
        let n = buf.len().min(cap);
        let mut frame = Self::frame_buffer(n);
        frame.extend_from_slice(&buf[..n]);
        this.send_frame(frame)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer task flushes whenever it runs out of frames.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let shared = self.slot.0.clone();
        lock(&shared.streams).remove(&self.stream.id);
        let flag = {
            let i = lock(&self.stream.inner);
            let grown = i.window - STREAM_WINDOW as u64;
            if grown > 0 {
                shared
                    .growth_left
                    .fetch_add(grown as usize, Ordering::AcqRel);
            }
            if i.reset
                || shared.end.get().is_some()
                || shared.close_requested.is_cancelled()
                || (i.local_fin && i.remote_fin)
            {
                None
            } else {
                Some(RST)
            }
        };
        if let Some(flag) = flag {
            shared.out.push(control(WINDOW, flag, self.stream.id, 0));
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

        // The third is refused: its reads and writes fail and say why (a write fails
        // only once the reset has arrived).
        let mut c = client.open().await.unwrap();
        if let Err(err) = c.write_all(b"c").await {
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        }
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
        // Unread data makes the kernel answer with a reset rather than a FIN; or a
        // write (a ping) notices first.
        connection_dropped(
            tcp().await,
            &["hung up without closing", "reset by peer", "Broken pipe"],
        )
        .await;
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

    /// The frame header is the protocol: a change here breaks old peers.
    #[test]
    fn frame_header_is_pinned() {
        assert_eq!(
            &control(WINDOW, SYN, 5, 7)[FRAME_HEADROOM..],
            [1, 1, 0, 0, 0, 5, 0, 0, 0, 7]
        );
        assert_eq!(
            &control(DATA, FIN, 258, 0)[FRAME_HEADROOM..],
            [0, 4, 0, 0, 1, 2, 0, 0, 0, 0]
        );
        assert_eq!(
            &control(GOAWAY, 0, 0, 0)[FRAME_HEADROOM..],
            [3, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    /// A stream dropped after its own shutdown but before the other side finished is
    /// a reset for the other side (yamux could not tell this from a FIN).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reset_after_a_half_close_is_told_apart() {
        let (a, b) = duplex();
        let ((client, _c), (_server, mut accept)) = start(a, b, MuxConfig::default());
        let mut ours = client.open().await.unwrap();
        ours.write_all(b"request").await.unwrap();
        ours.shutdown().await.unwrap();
        let mut theirs = accept.recv().await.unwrap();
        let mut request = Vec::new();
        theirs.read_to_end(&mut request).await.unwrap();
        assert_eq!(request, b"request");
        // The asking side goes away without reading the answer.
        drop(ours);
        let err = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Err(e) = theirs.write_all(&[0u8; 1024]).await {
                    return e;
                }
            }
        })
        .await
        .expect("the answer's writes fail once the reset arrives");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    /// What the other side sends that breaks the protocol loses the connection with a
    /// reason; nothing panics.
    async fn broken_by(raw: Vec<u8>, expect: &str) {
        let (a, mut b) = duplex();
        let (mux, _inbound) = Mux::start(a, Role::Server, MuxConfig::default());
        b.write_all(&raw).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), mux.closed())
            .await
            .expect("the connection is given up");
        let err = mux.open().await.unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn protocol_errors_lose_the_connection() {
        broken_by(vec![9, 0, 0, 0, 0, 1, 0, 0, 0, 0], "unknown frame type 9").await;
        broken_by(
            vec![0, 0, 0, 0, 0, 1, 0, 1, 0, 0],
            "a data frame of 65536 bytes",
        )
        .await;
        // A stream of ours (even ids belong to the server side here).
        broken_by(vec![1, SYN, 0, 0, 0, 2, 0, 0, 0, 0], "an id of ours").await;
        // More than the window allows: 5 frames of 63 KiB on a 256 KiB window.
        let mut raw = control(WINDOW, SYN, 1, 0)[FRAME_HEADROOM..].to_vec();
        for _ in 0..5 {
            let mut f = BytesMut::new();
            Header {
                kind: DATA,
                flags: 0,
                id: 1,
                len: FRAME_SIZE as u32,
            }
            .put(&mut f);
            f.put_bytes(7, FRAME_SIZE);
            raw.extend_from_slice(&f);
        }
        broken_by(raw, "beyond its window").await;
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
            "loopback TCP, one stream, {} MB: raw TCP {raw:.0} MB/s, mux {mux:.0} MB/s",
            len / MB
        );

        let len = 512 * MB;
        let (c, s) = noise().await;
        let raw = throughput_raw(c, async move { s }, len).await;
        let mux = throughput_mux(noise().await, len, MuxConfig::default()).await;
        println!(
            "loopback Noise, one stream, {} MB: raw Noise {raw:.0} MB/s, \
             mux over Noise {mux:.0} MB/s",
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
            "50 ms RTT, {} MB, fixed 256 KiB windows (no growth): mux {fixed:.1} MB/s",
            len / MB
        );
        let len = 512 * MB;
        let tuned = throughput_mux(delayed_tcp(one_way).await, len, MuxConfig::default()).await;
        println!(
            "50 ms RTT, {} MB, auto-tuned windows (default): mux {tuned:.1} MB/s",
            len / MB
        );
    }
}
