//! The Noise channel: `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` over any byte stream.
//!
//! The PSK is derived from a shared secret (the server token for peer ↔ server, the
//! pairing code or service secret for peer ↔ peer), so only holders of the secret
//! complete the handshake, and every byte after it is encrypted and authenticated.
//!
//! On the wire every Noise message is a frame: a 2-byte big-endian length, then the
//! message (at most 65535 bytes, Noise's own limit). The responder's reply to the
//! first message starts with a status byte: [`REPLY_OK`] and the Noise message, or
//! [`REPLY_REFUSED`] and a plaintext reason, so that a client with a wrong secret is
//! told why instead of seeing a closed socket. After the handshake, [`NoiseStream`]
//! carries bytes as encrypted frames; an encrypted empty frame marks the end of the
//! stream (a half-close), so a connection that ends without it was cut, not finished.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BufMut, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::{
    defaults::MAX_HANDSHAKE_FRAME,
    identity::{Identity, PublicKey},
};

const PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Largest Noise message.
const MAX_NOISE_MSG: usize = 65535;
/// AEAD tag length.
const TAG_LEN: usize = 16;
/// Largest plaintext per frame.
const MAX_PLAIN: usize = MAX_NOISE_MSG - TAG_LEN;
/// Status byte of a handshake reply: a Noise message follows.
pub const REPLY_OK: u8 = 0;
/// Status byte of a handshake reply: a plaintext refusal follows.
pub const REPLY_REFUSED: u8 = 1;

/// A 32-byte pre-shared key.
#[derive(Clone)]
pub struct Psk([u8; 32]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(MASKED)")
    }
}

impl Psk {
    /// Derives a PSK from a purpose label and secret parts. Parts are length-prefixed,
    /// so `("ab", "c")` and `("a", "bc")` give different keys.
    pub fn derive(label: &str, parts: &[&str]) -> Self {
        let mut h = Sha256::new();
        h.update(b"punchline psk v1\0");
        h.update((label.len() as u64).to_be_bytes());
        h.update(label.as_bytes());
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p.as_bytes());
        }
        Psk(h.finalize().into())
    }

    /// A proof that the holder of this key took part in session `nonce` in the given
    /// role: HMAC-SHA256 keyed with the PSK. Peers exchange these through the server
    /// before any address is revealed (see `peer::link::prove`); the server cannot make
    /// or check one, and it reveals nothing of the key but to an offline search of a
    /// guessable secret, which is why the side that proves first is the initiator and
    /// the other answers only a valid proof.
    pub fn proof(&self, nonce: &[u8; 16], initiator: bool) -> [u8; 32] {
        const BLOCK: usize = 64;
        let mut key = [0u8; BLOCK];
        key[..32].copy_from_slice(&self.0);
        let (mut ipad, mut opad) = ([0x36u8; BLOCK], [0x5cu8; BLOCK]);
        for i in 0..BLOCK {
            ipad[i] ^= key[i];
            opad[i] ^= key[i];
        }
        let inner = Sha256::new()
            .chain_update(ipad)
            .chain_update(b"punchline proof v1\0")
            .chain_update(nonce)
            .chain_update([u8::from(initiator)])
            .finalize();
        Sha256::new()
            .chain_update(opad)
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// Whether `proof` is [`Psk::proof`] of this key for `nonce` and role (compared
    /// without stopping at the first difference).
    pub fn verify_proof(&self, nonce: &[u8; 16], initiator: bool, proof: &[u8; 32]) -> bool {
        let expected = self.proof(nonce, initiator);
        expected
            .iter()
            .zip(proof)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// The PSK for peer ↔ server connections, from the server token (empty: none).
    pub fn server(token: Option<&str>) -> Self {
        Self::derive("server", &[token.unwrap_or("")])
    }
}

/// Why a secure channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The underlying connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The other side does not hold the same secret, or is not speaking punchline.
    #[error("authentication failed: the other side does not hold the same secret (or is not a punchline peer)")]
    BadSecret,
    /// The responder refused the connection and said why.
    #[error("refused by the other side: {0}")]
    Refused(String),
    /// A handshake frame was larger than any valid one.
    #[error("handshake frame of {0} bytes is larger than the limit of {MAX_HANDSHAKE_FRAME} (not a punchline peer?)")]
    Oversized(usize),
    /// The reply carried an unknown status byte.
    #[error("malformed handshake reply (status byte {0})")]
    Malformed(u8),
    /// The other side closed the connection during the handshake.
    #[error("connection closed during the handshake")]
    Closed,
}

fn builder(psk: &Psk) -> Result<snow::HandshakeState, HandshakeError> {
    let params = PARAMS.parse().map_err(|_| HandshakeError::BadSecret)?;
    let b = snow::Builder::new(params);
    b.psk(0, &psk.0)
        .and_then(|b| b.prologue(V1_PROLOGUE))
        .and_then(|b| b.build_initiator())
        .map_err(|_| HandshakeError::BadSecret)
}

fn responder_state(psk: &Psk) -> Result<snow::HandshakeState, HandshakeError> {
    let params = PARAMS.parse().map_err(|_| HandshakeError::BadSecret)?;
    snow::Builder::new(params)
        .psk(0, &psk.0)
        .and_then(|b| b.prologue(V1_PROLOGUE))
        .and_then(|b| b.build_responder())
        .map_err(|_| HandshakeError::BadSecret)
}

async fn read_hs_frame<T: AsyncRead + Unpin>(io: &mut T) -> Result<Vec<u8>, HandshakeError> {
    let mut len = [0u8; 2];
    match io.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(HandshakeError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_FRAME {
        return Err(HandshakeError::Oversized(len));
    }
    let mut buf = vec![0u8; len];
    match io.read_exact(&mut buf).await {
        Ok(_) => Ok(buf),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HandshakeError::Closed),
        Err(e) => Err(e.into()),
    }
}

async fn write_hs_frame<T: AsyncWrite + Unpin>(io: &mut T, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = Vec::with_capacity(2 + len);
    buf.extend_from_slice(&(len as u16).to_be_bytes());
    for p in parts {
        buf.extend_from_slice(p);
    }
    io.write_all(&buf).await?;
    io.flush().await
}

/// The initiator's first message and the responder's reply (a Noise message after
/// [`REPLY_OK`], or a plaintext refusal after [`REPLY_REFUSED`]).
async fn first_exchange<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    hs: &mut snow::HandshakeState,
) -> Result<(), HandshakeError> {
    let mut msg = [0u8; 256];
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(|_| HandshakeError::BadSecret)?;
    write_hs_frame(io, &[&msg[..n]]).await?;
    let reply = read_hs_frame(io).await?;
    match reply.split_first() {
        Some((&REPLY_OK, rest)) => {
            let mut out = [0u8; 256];
            hs.read_message(rest, &mut out)
                .map_err(|_| HandshakeError::BadSecret)?;
            Ok(())
        }
        Some((&REPLY_REFUSED, rest)) => Err(HandshakeError::Refused(
            String::from_utf8_lossy(rest).into_owned(),
        )),
        Some((&other, _)) => Err(HandshakeError::Malformed(other)),
        None => Err(HandshakeError::Closed),
    }
}

/// Runs the initiator side of the handshake.
pub async fn initiate<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    psk: &Psk,
) -> Result<NoiseStream<T>, HandshakeError> {
    let mut hs = builder(psk)?;
    first_exchange(&mut io, &mut hs).await?;
    let state = hs
        .into_transport_mode()
        .map_err(|_| HandshakeError::BadSecret)?;
    Ok(NoiseStream::new(io, state))
}

/// Runs the responder side of the handshake. On a wrong secret the initiator is sent
/// `refusal` as a plaintext reason before the error is returned.
pub async fn respond<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    psk: &Psk,
    refusal: &str,
) -> Result<NoiseStream<T>, HandshakeError> {
    let mut hs = responder_state(psk)?;
    let first = read_hs_frame(&mut io).await?;
    let mut out = [0u8; MAX_HANDSHAKE_FRAME];
    if hs.read_message(&first, &mut out).is_err() {
        // Best effort: the reason helps a misconfigured user; a scanner ignores it.
        let _ = write_hs_frame(&mut io, &[&[REPLY_REFUSED], refusal.as_bytes()]).await;
        return Err(HandshakeError::BadSecret);
    }
    let mut msg = [0u8; 128];
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(|_| HandshakeError::BadSecret)?;
    write_hs_frame(&mut io, &[&[REPLY_OK], &msg[..n]]).await?;
    let state = hs
        .into_transport_mode()
        .map_err(|_| HandshakeError::BadSecret)?;
    Ok(NoiseStream::new(io, state))
}

/// The handshake of every connection to the rendezvous server: the PSK comes from a
/// user's token (so only token holders get in, and only the holder of a token can
/// play the server to its users), and the initiator's static key is its identity,
/// sent encrypted in the third message and proved by the `se` DH.
const SERVER_PARAMS: &str = "Noise_XNpsk0_25519_ChaChaPoly_BLAKE2s";
const SERVER_PROLOGUE: &[u8] = b"punchline server/2";
/// What peers of protocol version 1 (anonymous `NNpsk0` with the token) used.
const V1_PROLOGUE: &[u8] = b"punchline/1";

fn server_state(
    psk: &Psk,
    initiator: Option<&Identity>,
) -> Result<snow::HandshakeState, HandshakeError> {
    let params = SERVER_PARAMS
        .parse()
        .map_err(|_| HandshakeError::BadSecret)?;
    let b = snow::Builder::new(params)
        .psk(0, &psk.0)
        .and_then(|b| b.prologue(SERVER_PROLOGUE))
        .map_err(|_| HandshakeError::BadSecret)?;
    match initiator {
        Some(id) => b
            .local_private_key(id.private())
            .and_then(|b| b.build_initiator()),
        None => b.build_responder(),
    }
    .map_err(|_| HandshakeError::BadSecret)
}

/// The initiator side of the server handshake (see [`respond_server`]): proves
/// `identity` to a server that knows `psk`.
pub async fn initiate_server<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    psk: &Psk,
    identity: &Identity,
) -> Result<NoiseStream<T>, HandshakeError> {
    let mut hs = server_state(psk, Some(identity))?;
    first_exchange(&mut io, &mut hs).await?;
    let mut msg = [0u8; 256];
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(|_| HandshakeError::BadSecret)?;
    write_hs_frame(&mut io, &[&msg[..n]]).await?;
    let state = hs
        .into_transport_mode()
        .map_err(|_| HandshakeError::BadSecret)?;
    Ok(NoiseStream::new(io, state))
}

/// Who completed a server handshake.
#[derive(Debug, Clone, Copy)]
pub struct ServerPeer {
    /// Which of the PSKs given to [`respond_server`] the peer holds.
    pub psk_index: usize,
    /// The identity the peer proved.
    pub identity: PublicKey,
}

/// The responder side of the server handshake. The peer may hold any of `psks` (one
/// per user); the first message tells which (trial decryption: no user name crosses
/// the wire in clear). A peer holding none is sent `refusal`; a peer of protocol
/// version 1 is told to upgrade.
pub async fn respond_server<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    psks: &[Psk],
    refusal: &str,
) -> Result<(NoiseStream<T>, ServerPeer), HandshakeError> {
    let first = read_hs_frame(&mut io).await?;
    let mut out = [0u8; MAX_HANDSHAKE_FRAME];
    let mut found = None;
    for (i, psk) in psks.iter().enumerate() {
        let mut hs = server_state(psk, None)?;
        if hs.read_message(&first, &mut out).is_ok() {
            found = Some((i, hs));
            break;
        }
    }
    let Some((psk_index, mut hs)) = found else {
        let old = psks.iter().any(|psk| {
            let b = snow::Builder::new(match PARAMS.parse() {
                Ok(p) => p,
                Err(_) => return false,
            });
            b.psk(0, &psk.0)
                .and_then(|b| b.prologue(V1_PROLOGUE))
                .and_then(|b| b.build_responder())
                .is_ok_and(|mut hs| hs.read_message(&first, &mut out).is_ok())
        });
        if old {
            let _ = write_hs_frame(&mut io, &[&[REPLY_REFUSED], UPGRADE.as_bytes()]).await;
            return Err(HandshakeError::Refused(UPGRADE.into()));
        }
        let _ = write_hs_frame(&mut io, &[&[REPLY_REFUSED], refusal.as_bytes()]).await;
        return Err(HandshakeError::BadSecret);
    };
    let mut msg = [0u8; 256];
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(|_| HandshakeError::BadSecret)?;
    write_hs_frame(&mut io, &[&[REPLY_OK], &msg[..n]]).await?;
    let third = read_hs_frame(&mut io).await?;
    hs.read_message(&third, &mut out)
        .map_err(|_| HandshakeError::BadSecret)?;
    let identity = hs
        .get_remote_static()
        .and_then(PublicKey::from_slice)
        .ok_or(HandshakeError::BadSecret)?;
    let state = hs
        .into_transport_mode()
        .map_err(|_| HandshakeError::BadSecret)?;
    Ok((
        NoiseStream::new(io, state),
        ServerPeer {
            psk_index,
            identity,
        },
    ))
}

/// What a server tells a peer of protocol version 1.
pub const UPGRADE: &str = "this rendezvous server speaks protocol version 2 (peers prove an \
                            identity); this peer speaks version 1: upgrade the peer";

/// Sends a plaintext refusal in place of a handshake reply (after reading the first
/// handshake message), e.g. when a server is full.
pub async fn refuse<T: AsyncWrite + Unpin>(io: &mut T, reason: &str) -> io::Result<()> {
    write_hs_frame(io, &[&[REPLY_REFUSED], reason.as_bytes()]).await
}

/// An encrypted, authenticated byte stream over `T` (see the module docs).
///
/// `poll_shutdown` sends the end-of-stream marker and then shuts down `T`'s write
/// side, so half-close passes through. Reading after the other side's marker returns
/// end of file; an end of `T` without the marker is an `UnexpectedEof` error.
pub struct NoiseStream<T> {
    io: T,
    state: Box<snow::TransportState>,
    /// Raw bytes read from `io`, not yet a whole frame.
    rbuf: BytesMut,
    /// Decrypted bytes not yet handed out.
    plain: BytesMut,
    read_eof: bool,
    /// Encrypted bytes waiting to be written to `io`.
    wbuf: BytesMut,
    marker_sent: bool,
    scratch: Vec<u8>,
}

impl<T> std::fmt::Debug for NoiseStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStream").finish_non_exhaustive()
    }
}

impl<T> NoiseStream<T> {
    fn new(io: T, state: snow::TransportState) -> Self {
        Self {
            io,
            state: Box::new(state),
            rbuf: BytesMut::with_capacity(2 + MAX_NOISE_MSG),
            plain: BytesMut::new(),
            read_eof: false,
            wbuf: BytesMut::with_capacity(2 + MAX_NOISE_MSG),
            marker_sent: false,
            // Grown on first use to the largest message seen: a control connection's
            // messages are small, and an idle connection should not cost 64 KiB.
            scratch: Vec::new(),
        }
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Leaves the encrypted channel: returns the transport and the raw bytes already
    /// read from it but not yet decrypted (to be handled as raw data). Fails if
    /// decrypted bytes are still unread or encrypted bytes unsent, which would be lost.
    pub fn into_raw(self) -> io::Result<(T, BytesMut)> {
        if !self.plain.is_empty() || !self.wbuf.is_empty() {
            return Err(io::Error::other(
                "cannot leave the encrypted channel with data still buffered",
            ));
        }
        Ok((self.io, self.rbuf))
    }

    fn encrypt_frame(&mut self, plain: &[u8]) -> io::Result<()> {
        grow(&mut self.scratch, plain.len() + TAG_LEN);
        let n = self
            .state
            .write_message(plain, &mut self.scratch)
            .map_err(|e| io::Error::other(format!("encrypt: {e}")))?;
        self.wbuf.put_u16(n as u16);
        self.wbuf.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }
}

/// Makes `buf` at least `len` bytes long (at most a Noise message).
fn grow(buf: &mut Vec<u8>, len: usize) {
    let len = len.min(MAX_NOISE_MSG);
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

impl<T: AsyncWrite + Unpin> NoiseStream<T> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for NoiseStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            if this.rbuf.len() >= 2 {
                let len = u16::from_be_bytes([this.rbuf[0], this.rbuf[1]]) as usize;
                if this.rbuf.len() >= 2 + len {
                    this.rbuf.advance(2);
                    let frame = this.rbuf.split_to(len);
                    grow(&mut this.scratch, len);
                    let n = this
                        .state
                        .read_message(&frame, &mut this.scratch)
                        .map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                "decryption failed: the stream was tampered with or corrupted",
                            )
                        })?;
                    if n == 0 {
                        this.read_eof = true;
                    } else {
                        this.plain.extend_from_slice(&this.scratch[..n]);
                    }
                    continue;
                }
                this.rbuf.reserve(2 + len - this.rbuf.len());
            } else {
                this.rbuf.reserve(2 + MAX_NOISE_MSG);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.rbuf
            ))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed without an end-of-stream marker (the other side was cut off)",
                )));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NoiseStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.marker_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_PLAIN);
        this.encrypt_frame(&buf[..n])?;
        // Start sending right away; what does not fit now goes out on the next call.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.marker_sent {
            ready!(this.poll_drain(cx))?;
            this.encrypt_frame(&[])?;
            this.marker_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn server_pair(
        client_psk: Psk,
        server_psks: Vec<Psk>,
        id: Identity,
    ) -> (
        Result<NoiseStream<tokio::io::DuplexStream>, HandshakeError>,
        Result<(NoiseStream<tokio::io::DuplexStream>, ServerPeer), HandshakeError>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move { respond_server(b, &server_psks, "no").await });
        let client = initiate_server(a, &client_psk, &id).await;
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn the_server_learns_the_proved_identity_and_the_user() {
        let id = Identity::generate();
        let psks = vec![Psk::server(Some("alice")), Psk::server(Some("bob"))];
        let (client, server) = server_pair(Psk::server(Some("bob")), psks, id.clone()).await;
        let (mut s, who) = server.unwrap();
        assert_eq!(who.identity, id.public());
        assert_eq!(who.psk_index, 1);
        let mut c = client.unwrap();
        c.write_all(b"hello").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_with_the_reason() {
        let (client, server) = server_pair(
            Psk::server(Some("mallory")),
            vec![Psk::server(Some("alice"))],
            Identity::generate(),
        )
        .await;
        assert!(matches!(server, Err(HandshakeError::BadSecret)));
        assert!(matches!(client, Err(HandshakeError::Refused(r)) if r == "no"));
    }

    #[tokio::test]
    async fn a_version_1_peer_is_told_to_upgrade() {
        let (a, b) = tokio::io::duplex(4096);
        let psks = vec![Psk::server(Some("t"))];
        let server = tokio::spawn(async move { respond_server(b, &psks, "no").await });
        let client = initiate(a, &Psk::server(Some("t"))).await;
        assert!(matches!(client, Err(HandshakeError::Refused(r)) if r == UPGRADE));
        assert!(matches!(
            server.await.unwrap(),
            Err(HandshakeError::Refused(_))
        ));
    }

    #[test]
    fn proofs_are_bound_to_key_nonce_and_role() {
        let (k, other) = (
            Psk::derive("service", &["a", "s"]),
            Psk::derive("service", &["a", "t"]),
        );
        let n = [7u8; 16];
        let p = k.proof(&n, true);
        assert!(k.verify_proof(&n, true, &p));
        assert!(!k.verify_proof(&n, false, &p), "role");
        assert!(!k.verify_proof(&[8u8; 16], true, &p), "nonce");
        assert!(!other.verify_proof(&n, true, &p), "key");
    }
}
