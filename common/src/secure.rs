//! The Noise channel: `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` (links) or
//! `Noise_XNpsk0_25519_ChaChaPoly_BLAKE2s` (peer ↔ server) over any byte stream.
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
//!
//! # Cipher negotiation and versions (protocol version 5 and later)
//!
//! The handshake messages use ChaChaPoly as their names say; the transport cipher is
//! negotiated inside them. The initiator's first payload holds its
//! [`PROTOCOL_VERSION`] and its [`Cipher`]s, best first ([`local_ciphers`]: AES-256-GCM
//! first where the CPU has AES instructions); the responder answers with its version
//! and the choice (AES-GCM when both sides put it first, else ChaChaPoly). The
//! payloads are encrypted and authenticated by the handshake, so nobody in the middle
//! can downgrade the choice. After the handshake each direction's key is Noise's
//! `Split()` output, used as Noise's transport `CipherState` with the agreed cipher
//! (ring's AEADs, encrypting in place: about 3.8 GB/s for AES-256-GCM against 0.6 GB/s
//! for the ChaChaPoly that snow used, on the project's Xeon).
//!
//! A peer of version 2 sends an empty payload: the responder refuses it with a
//! sentence saying which versions met, and a version-5 initiator that gets an empty
//! payload back says the same, instead of exchanging garbage.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

use crate::{
    defaults::MAX_HANDSHAKE_FRAME,
    identity::{Identity, PublicKey},
    proto::PROTOCOL_VERSION,
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
    /// The two sides speak different protocol versions (or share no cipher).
    #[error("{0}")]
    Version(String),
}

/// A transport cipher (the `CipherState` of Noise's transport phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// ChaCha20-Poly1305: fast in software; for CPUs without AES instructions.
    ChaChaPoly,
    /// AES-256-GCM: several times faster where the CPU has AES and carry-less
    /// multiplication instructions (x86 AES-NI + PCLMULQDQ, ARMv8 AES + PMULL).
    AesGcm,
}

impl Cipher {
    fn id(self) -> u8 {
        match self {
            Cipher::ChaChaPoly => 1,
            Cipher::AesGcm => 2,
        }
    }

    fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Cipher::ChaChaPoly),
            2 => Some(Cipher::AesGcm),
            _ => None,
        }
    }

    /// Noise's name of the cipher.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaChaPoly => "ChaChaPoly",
            Cipher::AesGcm => "AESGCM",
        }
    }

    fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Cipher::ChaChaPoly => &ring::aead::CHACHA20_POLY1305,
            Cipher::AesGcm => &ring::aead::AES_256_GCM,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether this CPU has the instructions that make AES-GCM fast.
fn hardware_aes() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The transport ciphers this process offers, best first: AES-256-GCM first where
/// the CPU has AES instructions, else ChaChaPoly. The environment variable
/// `PUNCHLINE_CIPHER` (`aesgcm` or `chachapoly`) puts one first whatever the CPU (for
/// benchmarks and tests); both are always offered, so any two peers agree on one.
pub fn local_ciphers() -> &'static [Cipher] {
    static PREFS: std::sync::OnceLock<[Cipher; 2]> = std::sync::OnceLock::new();
    PREFS.get_or_init(|| {
        let aes_first = match std::env::var("PUNCHLINE_CIPHER")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "aesgcm" | "aes" => true,
            "chachapoly" | "chacha" => false,
            _ => hardware_aes(),
        };
        if aes_first {
            [Cipher::AesGcm, Cipher::ChaChaPoly]
        } else {
            [Cipher::ChaChaPoly, Cipher::AesGcm]
        }
    })
}

/// The responder's choice: both sides' first choice when they agree (AES-GCM when
/// both have AES instructions); on a disagreement ChaChaPoly, which is fast on either
/// kind of CPU, while AES-GCM in software is slow; otherwise the first cipher of ours
/// that the initiator offers.
fn choose(offer: &[Cipher], ours: &[Cipher]) -> Option<Cipher> {
    match (offer.first(), ours.first()) {
        (Some(a), Some(b)) if a == b => Some(*a),
        _ if offer.contains(&Cipher::ChaChaPoly) && ours.contains(&Cipher::ChaChaPoly) => {
            Some(Cipher::ChaChaPoly)
        }
        _ => ours.iter().copied().find(|c| offer.contains(c)),
    }
}

/// The initiator's handshake payload: its protocol version and its ciphers, best
/// first. Encrypted and authenticated by the handshake (a change by an attacker fails
/// it), so the choice cannot be downgraded.
fn offer_payload(ciphers: &[Cipher]) -> Vec<u8> {
    let mut v = PROTOCOL_VERSION.to_be_bytes().to_vec();
    v.push(ciphers.len() as u8);
    v.extend(ciphers.iter().map(|c| c.id()));
    v
}

/// What the responder makes of the initiator's payload: the cipher, or a refusal.
fn answer_offer(payload: &[u8], ours: &[Cipher]) -> Result<Cipher, String> {
    let Some((version, rest)) = payload.split_first_chunk::<2>() else {
        return Err(format!(
            "this side speaks protocol version {PROTOCOL_VERSION}; the other side speaks \
             an older version (2 or before): upgrade it"
        ));
    };
    let version = u16::from_be_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "this side speaks protocol version {PROTOCOL_VERSION}; the other side speaks \
             version {version}: run the same version on both"
        ));
    }
    let offer: Vec<Cipher> = match rest.split_first() {
        Some((&n, ids)) if ids.len() == n as usize => {
            ids.iter().filter_map(|&id| Cipher::from_id(id)).collect()
        }
        _ => return Err("malformed cipher offer".into()),
    };
    choose(&offer, ours).ok_or_else(|| "no transport cipher in common".into())
}

/// The responder's handshake payload: its version and the chosen cipher.
fn choice_payload(cipher: Cipher) -> Vec<u8> {
    let mut v = PROTOCOL_VERSION.to_be_bytes().to_vec();
    v.push(cipher.id());
    v
}

/// What the initiator makes of the responder's payload.
fn read_choice(payload: &[u8], offered: &[Cipher]) -> Result<Cipher, HandshakeError> {
    match payload {
        [hi, lo, id] if u16::from_be_bytes([*hi, *lo]) == PROTOCOL_VERSION => Cipher::from_id(*id)
            .filter(|c| offered.contains(c))
            .ok_or(HandshakeError::Malformed(*id)),
        [hi, lo, ..] => Err(HandshakeError::Version(format!(
            "this side speaks protocol version {PROTOCOL_VERSION}; the other side speaks \
             version {}: run the same version on both",
            u16::from_be_bytes([*hi, *lo])
        ))),
        _ => Err(HandshakeError::Version(format!(
            "this side speaks protocol version {PROTOCOL_VERSION}; the other side speaks an \
             older version (2 or before): upgrade it"
        ))),
    }
}

fn link_state(psk: &Psk, initiator: bool) -> Result<snow::HandshakeState, HandshakeError> {
    let params = PARAMS.parse().map_err(|_| HandshakeError::BadSecret)?;
    let b = snow::Builder::new(params)
        .psk(0, &psk.0)
        .and_then(|b| b.prologue(V1_PROLOGUE))
        .map_err(|_| HandshakeError::BadSecret)?;
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
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

/// The initiator's first message (with its cipher offer) and the responder's reply
/// (a Noise message with the choice after [`REPLY_OK`], or a plaintext refusal after
/// [`REPLY_REFUSED`]). Returns the chosen cipher.
async fn first_exchange<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    hs: &mut snow::HandshakeState,
    ciphers: &[Cipher],
) -> Result<Cipher, HandshakeError> {
    let mut msg = [0u8; 256];
    let n = hs
        .write_message(&offer_payload(ciphers), &mut msg)
        .map_err(|_| HandshakeError::BadSecret)?;
    write_hs_frame(io, &[&msg[..n]]).await?;
    let reply = read_hs_frame(io).await?;
    match reply.split_first() {
        Some((&REPLY_OK, rest)) => {
            let mut out = [0u8; 256];
            let n = hs
                .read_message(rest, &mut out)
                .map_err(|_| HandshakeError::BadSecret)?;
            read_choice(&out[..n], ciphers)
        }
        Some((&REPLY_REFUSED, rest)) => Err(HandshakeError::Refused(
            String::from_utf8_lossy(rest).into_owned(),
        )),
        Some((&other, _)) => Err(HandshakeError::Malformed(other)),
        None => Err(HandshakeError::Closed),
    }
}

/// Leaves the handshake: the two directions' keys, as Noise's `Split()`.
fn into_stream<T>(
    io: T,
    mut hs: snow::HandshakeState,
    cipher: Cipher,
    initiator: bool,
) -> Result<NoiseStream<T>, HandshakeError> {
    if !hs.is_handshake_finished() {
        return Err(HandshakeError::BadSecret);
    }
    tracing::debug!(%cipher, initiator, "secure channel up");
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    Ok(NoiseStream::new(
        io,
        Key::new(cipher, &send)?,
        Key::new(cipher, &recv)?,
    ))
}

/// Runs the initiator side of the handshake.
pub async fn initiate<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    psk: &Psk,
) -> Result<NoiseStream<T>, HandshakeError> {
    initiate_with(io, psk, local_ciphers()).await
}

async fn initiate_with<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    psk: &Psk,
    ciphers: &[Cipher],
) -> Result<NoiseStream<T>, HandshakeError> {
    let mut hs = link_state(psk, true)?;
    let cipher = first_exchange(&mut io, &mut hs, ciphers).await?;
    into_stream(io, hs, cipher, true)
}

/// Runs the responder side of the handshake. On a wrong secret the initiator is sent
/// `refusal` as a plaintext reason before the error is returned; a peer of another
/// protocol version is told so.
pub async fn respond<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    psk: &Psk,
    refusal: &str,
) -> Result<NoiseStream<T>, HandshakeError> {
    respond_with(io, psk, refusal, local_ciphers()).await
}

async fn respond_with<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    psk: &Psk,
    refusal: &str,
    ciphers: &[Cipher],
) -> Result<NoiseStream<T>, HandshakeError> {
    let mut hs = link_state(psk, false)?;
    let first = read_hs_frame(&mut io).await?;
    let mut out = [0u8; MAX_HANDSHAKE_FRAME];
    let Ok(n) = hs.read_message(&first, &mut out) else {
        // Best effort: the reason helps a misconfigured user; a scanner ignores it.
        let _ = write_hs_frame(&mut io, &[&[REPLY_REFUSED], refusal.as_bytes()]).await;
        return Err(HandshakeError::BadSecret);
    };
    let cipher = match answer_offer(&out[..n], ciphers) {
        Ok(c) => c,
        Err(reason) => {
            let _ = write_hs_frame(&mut io, &[&[REPLY_REFUSED], reason.as_bytes()]).await;
            return Err(HandshakeError::Version(reason));
        }
    };
    let mut msg = [0u8; 128];
    let n = hs
        .write_message(&choice_payload(cipher), &mut msg)
        .map_err(|_| HandshakeError::BadSecret)?;
    write_hs_frame(&mut io, &[&[REPLY_OK], &msg[..n]]).await?;
    into_stream(io, hs, cipher, false)
}

/// The handshake of every connection to the rendezvous server: the PSK comes from a
/// user's token (so only token holders get in, and only the holder of a token can
/// play the server to its users), and the initiator's static key is its identity,
/// sent encrypted in the third message and proved by the `se` DH.
const SERVER_PARAMS: &str = "Noise_XNpsk0_25519_ChaChaPoly_BLAKE2s";
const SERVER_PROLOGUE: &[u8] = b"punchline server/2";
/// What peers of protocol version 1 (anonymous `NNpsk0` with the token) used, and
/// links use still (with the cipher offer in the payloads since version 5).
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
    io: T,
    psk: &Psk,
    identity: &Identity,
) -> Result<NoiseStream<T>, HandshakeError> {
    initiate_server_with(io, psk, identity, local_ciphers()).await
}

async fn initiate_server_with<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    psk: &Psk,
    identity: &Identity,
    ciphers: &[Cipher],
) -> Result<NoiseStream<T>, HandshakeError> {
    let mut hs = server_state(psk, Some(identity))?;
    let cipher = first_exchange(&mut io, &mut hs, ciphers).await?;
    let mut msg = [0u8; 256];
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(|_| HandshakeError::BadSecret)?;
    write_hs_frame(&mut io, &[&msg[..n]]).await?;
    into_stream(io, hs, cipher, true)
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
/// the wire in clear). A peer holding none is sent `refusal`; a peer of another
/// protocol version is told to upgrade.
pub async fn respond_server<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    psks: &[Psk],
    refusal: &str,
) -> Result<(NoiseStream<T>, ServerPeer), HandshakeError> {
    respond_server_with(io, psks, refusal, local_ciphers()).await
}

async fn respond_server_with<T: AsyncRead + AsyncWrite + Unpin>(
    mut io: T,
    psks: &[Psk],
    refusal: &str,
    ciphers: &[Cipher],
) -> Result<(NoiseStream<T>, ServerPeer), HandshakeError> {
    let first = read_hs_frame(&mut io).await?;
    let mut out = [0u8; MAX_HANDSHAKE_FRAME];
    let mut found = None;
    for (i, psk) in psks.iter().enumerate() {
        let mut hs = server_state(psk, None)?;
        if let Ok(n) = hs.read_message(&first, &mut out) {
            found = Some((i, hs, n));
            break;
        }
    }
    let Some((psk_index, mut hs, n)) = found else {
        let old = psks.iter().any(|psk| {
            link_state(psk, false).is_ok_and(|mut hs| hs.read_message(&first, &mut out).is_ok())
        });
        if old {
            let _ = write_hs_frame(&mut io, &[&[REPLY_REFUSED], UPGRADE.as_bytes()]).await;
            return Err(HandshakeError::Refused(UPGRADE.into()));
        }
        let _ = write_hs_frame(&mut io, &[&[REPLY_REFUSED], refusal.as_bytes()]).await;
        return Err(HandshakeError::BadSecret);
    };
    let cipher = match answer_offer(&out[..n], ciphers) {
        Ok(c) => c,
        Err(reason) => {
            let reason = if n == 0 {
                UPGRADE_FROM_2.to_string()
            } else {
                reason
            };
            let _ = write_hs_frame(&mut io, &[&[REPLY_REFUSED], reason.as_bytes()]).await;
            return Err(HandshakeError::Version(reason));
        }
    };
    let mut msg = [0u8; 256];
    let n = hs
        .write_message(&choice_payload(cipher), &mut msg)
        .map_err(|_| HandshakeError::BadSecret)?;
    write_hs_frame(&mut io, &[&[REPLY_OK], &msg[..n]]).await?;
    let third = read_hs_frame(&mut io).await?;
    hs.read_message(&third, &mut out)
        .map_err(|_| HandshakeError::BadSecret)?;
    let identity = hs
        .get_remote_static()
        .and_then(PublicKey::from_slice)
        .ok_or(HandshakeError::BadSecret)?;
    Ok((
        into_stream(io, hs, cipher, false)?,
        ServerPeer {
            psk_index,
            identity,
        },
    ))
}

/// What a server tells a peer of protocol version 1.
pub const UPGRADE: &str = "this rendezvous server speaks protocol version 6 (peers prove an \
                            identity, ciphers are negotiated); this peer speaks version 1: \
                            upgrade the peer";

/// What a server tells a peer of protocol version 2 (no cipher offer).
pub const UPGRADE_FROM_2: &str = "this rendezvous server speaks protocol version 6 (ciphers are \
                                  negotiated); this peer speaks version 2: upgrade the peer";

/// Sends a plaintext refusal in place of a handshake reply (after reading the first
/// handshake message), e.g. when a server is full.
pub async fn refuse<T: AsyncWrite + Unpin>(io: &mut T, reason: &str) -> io::Result<()> {
    write_hs_frame(io, &[&[REPLY_REFUSED], reason.as_bytes()]).await
}

/// One direction's key and nonce: Noise's `CipherState` in the transport phase (the
/// nonce is 32 zero bits and the 64-bit counter, little-endian for ChaChaPoly and
/// big-endian for AESGCM, no associated data, no rekeying), with ring's AEADs, which
/// encrypt in place.
struct Key {
    key: ring::aead::LessSafeKey,
    cipher: Cipher,
    nonce: u64,
}

impl Key {
    fn new(cipher: Cipher, raw: &[u8; 32]) -> Result<Self, HandshakeError> {
        let key = ring::aead::UnboundKey::new(cipher.algorithm(), raw)
            .map_err(|_| HandshakeError::BadSecret)?;
        Ok(Self {
            key: ring::aead::LessSafeKey::new(key),
            cipher,
            nonce: 0,
        })
    }

    /// Encrypts `buf` in place with the next nonce; returns the tag to append.
    fn seal(&mut self, buf: &mut [u8]) -> io::Result<ring::aead::Tag> {
        let nonce = self.next_nonce()?;
        self.key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), buf)
            .map_err(|_| io::Error::other("encryption failed"))
    }

    fn next_nonce(&mut self) -> io::Result<ring::aead::Nonce> {
        // Noise reserves 2^64-1; a connection never gets near it (2^64 frames).
        if self.nonce == u64::MAX {
            return Err(io::Error::other("nonce exhausted"));
        }
        let mut n = [0u8; 12];
        match self.cipher {
            Cipher::ChaChaPoly => n[4..].copy_from_slice(&self.nonce.to_le_bytes()),
            Cipher::AesGcm => n[4..].copy_from_slice(&self.nonce.to_be_bytes()),
        }
        self.nonce += 1;
        Ok(ring::aead::Nonce::assume_unique_for_key(n))
    }
}

/// The receiving half's state: raw bytes in, decrypted frames out.
struct RecvState {
    key: Key,
    /// Raw bytes read, not yet a whole frame.
    rbuf: BytesMut,
    /// Decrypted bytes not yet handed out.
    plain: Bytes,
    eof: bool,
    /// How much to read at once: small until the first full-size frame (an idle
    /// control connection should not cost 64 KiB), then [`READ_CHUNK`].
    read_size: usize,
}

/// Read size of a connection that carries small messages.
const READ_SMALL: usize = 4 * 1024;
/// Read size once a connection carries full-size frames: several frames per syscall.
const READ_CHUNK: usize = 256 * 1024;
/// Encrypted bytes a writer collects before it writes them out without a flush.
const WRITE_BATCH: usize = 256 * 1024;

impl RecvState {
    fn new(key: Key) -> Self {
        Self {
            key,
            rbuf: BytesMut::new(),
            plain: Bytes::new(),
            eof: false,
            read_size: READ_SMALL,
        }
    }

    /// The next decrypted frame (never empty), or `None` after the end marker.
    fn poll_frame<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            if self.eof {
                return Poll::Ready(Ok(None));
            }
            let mut want = 2;
            if self.rbuf.len() >= 2 {
                let len = u16::from_be_bytes([self.rbuf[0], self.rbuf[1]]) as usize;
                want = 2 + len;
                if self.rbuf.len() >= want {
                    let mut frame = self.rbuf.split_to(want);
                    frame.advance(2);
                    let nonce = self.key.next_nonce()?;
                    let n = self
                        .key
                        .key
                        .open_in_place(nonce, ring::aead::Aad::empty(), &mut frame)
                        .map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                "decryption failed: the stream was tampered with or corrupted",
                            )
                        })?
                        .len();
                    if len >= MAX_NOISE_MSG / 2 {
                        self.read_size = READ_CHUNK;
                    }
                    if n == 0 {
                        self.eof = true;
                        return Poll::Ready(Ok(None));
                    }
                    frame.truncate(n);
                    return Poll::Ready(Ok(Some(frame.freeze())));
                }
            }
            self.rbuf
                .reserve((want - self.rbuf.len()).max(self.read_size));
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *io),
                cx,
                &mut self.rbuf
            ))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed without an end-of-stream marker (the other side was cut off)",
                )));
            }
        }
    }

    fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.plain.is_empty() {
            match ready!(self.poll_frame(io, cx))? {
                Some(frame) => self.plain = frame,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.plain.len().min(buf.remaining());
        buf.put_slice(&self.plain[..n]);
        self.plain.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// The sending half's state: plaintext in, encrypted frames out.
struct SendState {
    key: Key,
    /// Encrypted frames waiting to be written.
    wbuf: BytesMut,
    marker_sent: bool,
}

impl SendState {
    fn new(key: Key) -> Self {
        Self {
            key,
            wbuf: BytesMut::new(),
            marker_sent: false,
        }
    }

    /// Appends `plain` as one encrypted frame (at most [`MAX_PLAIN`] bytes; empty is
    /// the end marker), encrypting in place in the write buffer.
    fn seal(&mut self, plain: &[u8]) -> io::Result<()> {
        debug_assert!(plain.len() <= MAX_PLAIN);
        self.wbuf.reserve(2 + plain.len() + TAG_LEN);
        self.wbuf.put_u16((plain.len() + TAG_LEN) as u16);
        let start = self.wbuf.len();
        self.wbuf.extend_from_slice(plain);
        let tag = self.key.seal(&mut self.wbuf[start..])?;
        self.wbuf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        if self.wbuf.capacity() > 4 * WRITE_BATCH {
            // A burst is over: do not keep its buffer.
            self.wbuf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Takes up to one frame's worth of `buf`. With `eager`, starts writing at once;
    /// otherwise only once [`WRITE_BATCH`] bytes are waiting (the rest goes out on
    /// flush).
    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        buf: &[u8],
        eager: bool,
    ) -> Poll<io::Result<usize>> {
        if self.marker_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if eager || self.wbuf.len() >= WRITE_BATCH {
            ready!(self.poll_drain(io, cx))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_PLAIN);
        self.seal(&buf[..n])?;
        if eager {
            // Start sending right away; what does not fit now goes out on the next call.
            if let Poll::Ready(Err(e)) = self.poll_drain(io, cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(io, cx))?;
        Pin::new(io).poll_flush(cx)
    }

    fn poll_shutdown<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.marker_sent {
            ready!(self.poll_drain(io, cx))?;
            self.seal(&[])?;
            self.marker_sent = true;
        }
        ready!(self.poll_drain(io, cx))?;
        ready!(Pin::new(&mut *io).poll_flush(cx))?;
        Pin::new(io).poll_shutdown(cx)
    }
}

/// An encrypted, authenticated byte stream over `T` (see the module docs).
///
/// `poll_shutdown` sends the end-of-stream marker and then shuts down `T`'s write
/// side, so half-close passes through. Reading after the other side's marker returns
/// end of file; an end of `T` without the marker is an `UnexpectedEof` error.
pub struct NoiseStream<T> {
    io: T,
    recv: RecvState,
    send: SendState,
}

impl<T> std::fmt::Debug for NoiseStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStream")
            .field("cipher", &self.send.key.cipher)
            .finish_non_exhaustive()
    }
}

impl<T> NoiseStream<T> {
    fn new(io: T, send: Key, recv: Key) -> Self {
        Self {
            io,
            recv: RecvState::new(recv),
            send: SendState::new(send),
        }
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The transport cipher the two sides agreed on.
    pub fn cipher(&self) -> Cipher {
        self.send.key.cipher
    }

    /// Leaves the encrypted channel: returns the transport and the raw bytes already
    /// read from it but not yet decrypted (to be handled as raw data). Fails if
    /// decrypted bytes are still unread or encrypted bytes unsent, which would be lost.
    pub fn into_raw(self) -> io::Result<(T, BytesMut)> {
        if !self.recv.plain.is_empty() || !self.send.wbuf.is_empty() {
            return Err(io::Error::other(
                "cannot leave the encrypted channel with data still buffered",
            ));
        }
        Ok((self.io, self.recv.rbuf))
    }
}

impl<T: AsyncRead + AsyncWrite + Send + 'static> NoiseStream<T> {
    /// Splits into a reading and a writing half that can be driven by different tasks
    /// (on different cores): each half has its own key, and they share only `T`.
    pub fn into_split(self) -> (NoiseReader<ReadHalf<T>>, NoiseWriter<WriteHalf<T>>) {
        let (r, w) = tokio::io::split(self.io);
        (
            NoiseReader {
                io: r,
                recv: self.recv,
            },
            NoiseWriter {
                io: w,
                send: self.send,
                frames: crate::mux::FrameQueue::default(),
            },
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for NoiseStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.recv.poll_read(&mut this.io, cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NoiseStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.send.poll_write(&mut this.io, cx, buf, true)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.send.poll_flush(&mut this.io, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.send.poll_shutdown(&mut this.io, cx)
    }
}

/// The reading half of a [`NoiseStream`] ([`NoiseStream::into_split`]).
pub struct NoiseReader<R> {
    io: R,
    recv: RecvState,
}

impl<R> std::fmt::Debug for NoiseReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseReader").finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> NoiseReader<R> {
    /// The next decrypted frame as it arrived (no copy), or `None` at the end marker.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.recv.plain.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.recv.plain))));
        }
        self.recv.poll_frame(&mut self.io, cx)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for NoiseReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.recv.poll_read(&mut this.io, cx, buf)
    }
}

/// The writing half of a [`NoiseStream`] ([`NoiseStream::into_split`]). Unlike the
/// whole stream it collects frames until [`WRITE_BATCH`] bytes or a flush, so that a
/// writer task that flushes when it runs out of work writes many frames per syscall.
pub struct NoiseWriter<W> {
    io: W,
    send: SendState,
    /// Frames sealed in place ([`crate::mux::FrameWrite`]), to be written.
    frames: crate::mux::FrameQueue,
}

impl<W> std::fmt::Debug for NoiseWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseWriter").finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for NoiseWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.send.poll_write(&mut this.io, cx, buf, false)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.send.poll_flush(&mut this.io, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.send.poll_shutdown(&mut this.io, cx)
    }
}

/// The multiplexer's frames, each sealed where it lies: its length goes into the
/// frame's headroom and the tag into its tailroom, so a frame is never copied.
impl<W: AsyncWrite + Unpin + Send + 'static> crate::mux::FrameWrite for NoiseWriter<W> {
    fn queue(&mut self, mut frame: BytesMut) -> io::Result<()> {
        use crate::mux::FRAME_HEADROOM;
        if self.send.marker_sent {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            ));
        }
        let plain = frame.len() - FRAME_HEADROOM;
        if plain == 0 || plain > MAX_PLAIN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame of the wrong size for a Noise message",
            ));
        }
        frame[..FRAME_HEADROOM].copy_from_slice(&((plain + TAG_LEN) as u16).to_be_bytes());
        let tag = self.send.key.seal(&mut frame[FRAME_HEADROOM..])?;
        frame.extend_from_slice(tag.as_ref());
        self.frames.push(frame.freeze());
        Ok(())
    }

    fn queued(&self) -> usize {
        self.frames.len() + self.send.wbuf.len()
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Bytes written through `AsyncWrite` went before the frames.
        ready!(self.send.poll_drain(&mut self.io, cx))?;
        ready!(self.frames.poll_write_to(&mut self.io, cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(crate::mux::FrameWrite::poll_write_out(self, cx))?;
        self.send.poll_shutdown(&mut self.io, cx)
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

    /// Writes `len` generated bytes and shuts down; returns their hash.
    async fn send_all<W: AsyncWrite + Unpin>(w: &mut W, len: usize, seed: u8) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut left = len;
        let mut x = seed as u64 + 1;
        let mut buf = vec![0u8; 100_000];
        while left > 0 {
            let n = left.min(buf.len());
            for b in &mut buf[..n] {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                *b = (x >> 56) as u8;
            }
            h.update(&buf[..n]);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
        h.finalize().into()
    }

    /// Reads to the end marker; returns the length and hash.
    async fn recv_all<R: AsyncRead + Unpin>(r: &mut R) -> (usize, [u8; 32]) {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 70_000];
        let mut total = 0;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return (total, h.finalize().into());
            }
            h.update(&buf[..n]);
            total += n;
        }
    }

    /// 3 MB each way at once, hash-checked, over a pair of streams.
    async fn both_ways<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        a: NoiseStream<T>,
        b: NoiseStream<T>,
    ) {
        const LEN: usize = 3_000_000;
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let ((sent_a, got_b), (sent_b, got_a)) = tokio::join!(
            async { tokio::join!(send_all(&mut aw, LEN, 1), recv_all(&mut br)) },
            async { tokio::join!(send_all(&mut bw, LEN, 2), recv_all(&mut ar)) },
        );
        assert_eq!(got_b, (LEN, sent_a), "initiator → responder");
        assert_eq!(got_a, (LEN, sent_b), "responder → initiator");
    }

    use Cipher::{AesGcm as Aes, ChaChaPoly as Cha};

    /// (initiator's offer, responder's preference, the cipher both must agree on)
    const CASES: &[(&[Cipher], &[Cipher], Cipher)] = &[
        (&[Aes, Cha], &[Aes, Cha], Aes),
        (&[Aes, Cha], &[Cha, Aes], Cha),
        (&[Cha, Aes], &[Aes, Cha], Cha),
        (&[Cha, Aes], &[Cha, Aes], Cha),
        (&[Aes], &[Cha, Aes], Aes),
        (&[Cha], &[Aes, Cha], Cha),
    ];

    #[tokio::test]
    async fn the_link_handshake_negotiates_a_cipher_that_works_both_ways() {
        let psk = Psk::derive("service", &["a", "s"]);
        for &(offer, ours, expected) in CASES {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let (i, r) = tokio::join!(
                initiate_with(a, &psk, offer),
                respond_with(b, &psk, "no", ours)
            );
            let (i, r) = (i.unwrap(), r.unwrap());
            assert_eq!(
                (i.cipher(), r.cipher()),
                (expected, expected),
                "{offer:?} {ours:?}"
            );
            both_ways(i, r).await;
        }
    }

    #[tokio::test]
    async fn the_server_handshake_negotiates_a_cipher_that_works_both_ways() {
        let id = Identity::generate();
        let psk = Psk::server(Some("t"));
        for &(offer, ours, expected) in CASES {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let psks = vec![psk.clone()];
            let (i, r) = tokio::join!(
                initiate_server_with(a, &psk, &id, offer),
                respond_server_with(b, &psks, "no", ours)
            );
            let (i, (r, who)) = (i.unwrap(), r.unwrap());
            assert_eq!(who.identity, id.public());
            assert_eq!(
                (i.cipher(), r.cipher()),
                (expected, expected),
                "{offer:?} {ours:?}"
            );
            both_ways(i, r).await;
        }
    }

    #[tokio::test]
    async fn split_halves_carry_data_and_the_end_marker() {
        let psk = Psk::derive("service", &["a", "s"]);
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (i, r) = tokio::join!(initiate(a, &psk), respond(b, &psk, "no"));
        let (mut ir, mut iw) = i.unwrap().into_split();
        let (mut rr, mut rw) = r.unwrap().into_split();
        let ((sent_i, got_r), (sent_r, got_i)) = tokio::join!(
            async { tokio::join!(send_all(&mut iw, 1_000_000, 3), recv_all(&mut rr)) },
            async { tokio::join!(send_all(&mut rw, 1_000_000, 4), recv_all(&mut ir)) },
        );
        assert_eq!(got_r, (1_000_000, sent_i));
        assert_eq!(got_i, (1_000_000, sent_r));
    }

    /// Our ChaChaPoly transport is Noise's: snow's own transport reads it and is read.
    #[tokio::test]
    async fn the_chachapoly_transport_is_noises() {
        let psk = Psk::derive("service", &["a", "s"]);
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        let responder = tokio::spawn(async move { respond_with(b, &psk, "no", &[Cha]).await });
        let psk = Psk::derive("service", &["a", "s"]);
        let mut hs = link_state(&psk, true).unwrap();
        let mut msg = [0u8; 256];
        let n = hs.write_message(&offer_payload(&[Cha]), &mut msg).unwrap();
        write_hs_frame(&mut a, &[&msg[..n]]).await.unwrap();
        let reply = read_hs_frame(&mut a).await.unwrap();
        assert_eq!(reply[0], REPLY_OK);
        let mut out = [0u8; 256];
        let n = hs.read_message(&reply[1..], &mut out).unwrap();
        assert_eq!(read_choice(&out[..n], &[Cha]).unwrap(), Cha);
        let mut snow_side = hs.into_transport_mode().unwrap();
        let mut ours = responder.await.unwrap().unwrap();
        // snow → ours
        let mut frame = [0u8; 64];
        let n = snow_side.write_message(b"from snow", &mut frame).unwrap();
        a.write_all(&(n as u16).to_be_bytes()).await.unwrap();
        a.write_all(&frame[..n]).await.unwrap();
        let mut got = [0u8; 9];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from snow");
        // ours → snow
        ours.write_all(b"from ours").await.unwrap();
        ours.flush().await.unwrap();
        let mut len = [0u8; 2];
        a.read_exact(&mut len).await.unwrap();
        let mut frame = vec![0u8; u16::from_be_bytes(len) as usize];
        a.read_exact(&mut frame).await.unwrap();
        let mut plain = [0u8; 64];
        let n = snow_side.read_message(&frame, &mut plain).unwrap();
        assert_eq!(&plain[..n], b"from ours");
    }

    /// The first message of a version-2 initiator: the same handshake, no payload.
    async fn old_first_message<T: AsyncRead + AsyncWrite + Unpin>(
        io: &mut T,
        mut hs: snow::HandshakeState,
    ) -> String {
        let mut msg = [0u8; 256];
        let n = hs.write_message(&[], &mut msg).unwrap();
        write_hs_frame(io, &[&msg[..n]]).await.unwrap();
        let reply = read_hs_frame(io).await.unwrap();
        assert_eq!(reply[0], REPLY_REFUSED, "a version-2 peer must be refused");
        String::from_utf8_lossy(&reply[1..]).into_owned()
    }

    #[tokio::test]
    async fn a_version_2_peer_is_refused_in_words() {
        // On a link.
        let psk = Psk::derive("service", &["a", "s"]);
        let (mut a, b) = tokio::io::duplex(4096);
        let p = psk.clone();
        let responder = tokio::spawn(async move { respond(b, &p, "no").await });
        let told = old_first_message(&mut a, link_state(&psk, true).unwrap()).await;
        assert!(
            told.contains(&format!("protocol version {PROTOCOL_VERSION}"))
                && told.contains("older version"),
            "{told}"
        );
        assert!(matches!(
            responder.await.unwrap(),
            Err(HandshakeError::Version(_))
        ));
        // At the server.
        let psk = Psk::server(Some("t"));
        let id = Identity::generate();
        let (mut a, b) = tokio::io::duplex(4096);
        let psks = vec![psk.clone()];
        let server = tokio::spawn(async move { respond_server(b, &psks, "no").await });
        let told = old_first_message(&mut a, server_state(&psk, Some(&id)).unwrap()).await;
        assert_eq!(told, UPGRADE_FROM_2);
        assert!(matches!(
            server.await.unwrap(),
            Err(HandshakeError::Version(_))
        ));
    }

    #[tokio::test]
    async fn a_version_2_responder_is_reported_as_old() {
        let psk = Psk::derive("service", &["a", "s"]);
        let (a, mut b) = tokio::io::duplex(4096);
        let p = psk.clone();
        // A version-2 responder: reads the first message (ignoring its payload) and
        // answers with an empty one.
        let old = tokio::spawn(async move {
            let mut hs = link_state(&p, false).unwrap();
            let first = read_hs_frame(&mut b).await.unwrap();
            let mut out = [0u8; 256];
            hs.read_message(&first, &mut out).unwrap();
            let mut msg = [0u8; 128];
            let n = hs.write_message(&[], &mut msg).unwrap();
            write_hs_frame(&mut b, &[&[REPLY_OK], &msg[..n]])
                .await
                .unwrap();
            b
        });
        match initiate(a, &psk).await {
            Err(HandshakeError::Version(v)) => {
                assert!(v.contains("older version"), "{v}")
            }
            other => panic!("expected a version error, got {:?}", other.map(|_| ())),
        }
        drop(old.await.unwrap());
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
