//! STUN (RFC 8489) messages as the rendezvous server and `peer nat-check` use them:
//! Binding requests and responses with the RFC 5780 attributes (CHANGE-REQUEST,
//! OTHER-ADDRESS, RESPONSE-ORIGIN), encoded and decoded by the `stun-rs` crate, plus
//! the framing of STUN over TCP (RFC 8489 §6.2: messages back to back, each sized by
//! its header).
//!
//! Decoding never trusts a length: [`decode`] checks the header (leading zero bits,
//! magic cookie, a length that is a multiple of 4 and matches the bytes at hand)
//! before `stun-rs` looks at the attributes, and [`read_message`] refuses any
//! message longer than [`MAX_STUN_MESSAGE`] before allocating for it.

use std::{io, net::SocketAddr};

use stun_rs::{
    attributes::{
        discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress, ResponseOrigin},
        stun::{ErrorCode, XorMappedAddress},
    },
    methods::BINDING,
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunAttribute, StunMessage,
    StunMessageBuilder, TransactionId,
};
use tokio::io::{AsyncRead, AsyncReadExt};

pub use crate::defaults::MAX_STUN_MESSAGE;

/// Size of the STUN header: type, length, magic cookie, transaction ID.
pub const HEADER_LEN: usize = 20;

/// The magic cookie of RFC 5389 and later (absent from RFC 3489 messages).
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Message type of a Binding request.
pub const BINDING_REQUEST: u16 = 0x0001;

/// A 96-bit transaction ID.
pub type Tid = [u8; 12];

/// What a CHANGE-REQUEST attribute asks for (RFC 5780 §7.2): the response should come
/// from the server's other IP address, other port, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// Answer from the alternate IP address.
    pub ip: bool,
    /// Answer from the alternate port.
    pub port: bool,
}

impl Change {
    /// Neither IP nor port changed.
    pub const NONE: Change = Change {
        ip: false,
        port: false,
    };
    /// Change the port only.
    pub const PORT: Change = Change {
        ip: false,
        port: true,
    };
    /// Change both IP and port.
    pub const BOTH: Change = Change {
        ip: true,
        port: true,
    };

    /// Whether anything is to change.
    pub fn any(self) -> bool {
        self.ip || self.port
    }
}

/// The class of a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request.
    Request,
    /// An indication (never answered).
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// What `peer nat-check` and the server need from one STUN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request, indication or response.
    pub class: Class,
    /// Whether the method is Binding (the only method this project speaks).
    pub binding: bool,
    /// The transaction ID.
    pub tid: Tid,
    /// XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS when there is no XOR variant.
    pub mapped: Option<SocketAddr>,
    /// OTHER-ADDRESS (RFC 5780): the server's alternate address and port.
    pub other: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (RFC 5780): where the response was sent from.
    pub origin: Option<SocketAddr>,
    /// CHANGE-REQUEST (RFC 5780), in a request.
    pub change: Change,
    /// ERROR-CODE: code and reason, in an error response.
    pub error: Option<(u16, String)>,
    /// Comprehension-required attributes this code does not know (a request with any
    /// gets a 420 answer).
    pub unknown_required: Vec<u16>,
}

/// Why bytes are not a STUN message this code accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header.
    #[error("truncated: {0} bytes")]
    Truncated(usize),
    /// The two leading bits are not zero: not STUN at all.
    #[error("not a STUN message")]
    NotStun,
    /// No magic cookie: an RFC 3489 message (or junk).
    #[error("no magic cookie")]
    NoCookie,
    /// The header's length disagrees with the bytes or is not a multiple of 4.
    #[error("bad length {declared} for {actual} bytes")]
    Length {
        /// What the header says (attributes only).
        declared: usize,
        /// Bytes after the header.
        actual: usize,
    },
    /// `stun-rs` rejected the attributes.
    #[error("bad attributes: {0}")]
    Attributes(String),
}

/// Checks the fixed header of `buf`: leading zero bits, a length that is a multiple of
/// 4 and equals the bytes after the header. Returns the message type and whether the
/// magic cookie is there.
pub fn check_header(buf: &[u8]) -> Result<(u16, bool), DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated(buf.len()));
    }
    let msg_type = u16::from_be_bytes([buf[0], buf[1]]);
    if msg_type & 0xc000 != 0 {
        return Err(DecodeError::NotStun);
    }
    let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let actual = buf.len() - HEADER_LEN;
    if declared % 4 != 0 || declared != actual {
        return Err(DecodeError::Length { declared, actual });
    }
    Ok((msg_type, buf[4..8] == MAGIC_COOKIE))
}

/// Decodes one complete STUN message (exactly `buf`, no trailing bytes).
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let (_, cookie) = check_header(buf)?;
    if !cookie {
        return Err(DecodeError::NoCookie);
    }
    let decoder = MessageDecoderBuilder::default().build();
    let (msg, _) = decoder
        .decode(buf)
        .map_err(|e| DecodeError::Attributes(e.to_string()))?;
    let mut tid = [0u8; 12];
    tid.copy_from_slice(msg.transaction_id().as_bytes());
    let class = match msg.class() {
        MessageClass::Request => Class::Request,
        MessageClass::Indication => Class::Indication,
        MessageClass::SuccessResponse => Class::Success,
        MessageClass::ErrorResponse => Class::Error,
    };
    let mut out = Message {
        class,
        binding: msg.method() == BINDING,
        tid,
        mapped: None,
        other: None,
        origin: None,
        change: Change::NONE,
        error: None,
        unknown_required: Vec::new(),
    };
    let mut plain_mapped = None;
    for attr in msg.attributes() {
        match attr {
            StunAttribute::XorMappedAddress(a) => {
                out.mapped.get_or_insert(*a.socket_address());
            }
            StunAttribute::MappedAddress(a) => {
                plain_mapped.get_or_insert(*a.socket_address());
            }
            StunAttribute::OtherAddress(a) => {
                out.other.get_or_insert(*a.socket_address());
            }
            StunAttribute::ResponseOrigin(a) => {
                out.origin.get_or_insert(*a.socket_address());
            }
            StunAttribute::ChangeRequest(c) => {
                let flags = c.flags();
                out.change = Change {
                    ip: flags.contains(ChangeRequestFlags::ChangeIp),
                    port: flags.contains(ChangeRequestFlags::ChangePort),
                };
            }
            StunAttribute::ErrorCode(e) => {
                let code = e.error_code();
                out.error = Some((code.error_code(), code.reason().to_string()));
            }
            StunAttribute::Unknown(u) => {
                let t = u.attribute_type();
                if t.is_comprehension_required() {
                    out.unknown_required.push(t.as_u16());
                }
            }
            _ => {}
        }
    }
    if out.mapped.is_none() {
        out.mapped = plain_mapped;
    }
    Ok(out)
}

/// Why a message could not be encoded (never for the messages this crate builds;
/// kept as an error rather than a panic).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a STUN message: {0}")]
pub struct EncodeError(String);

/// Encodes a message built with `stun-rs`.
pub fn encode(msg: &StunMessage) -> Result<Vec<u8>, EncodeError> {
    let mut buf = vec![0u8; MAX_STUN_MESSAGE];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, msg)
        .map_err(|e| EncodeError(e.to_string()))?;
    buf.truncate(n);
    Ok(buf)
}

/// A Binding request with transaction ID `tid`, and a CHANGE-REQUEST if `change`
/// asks for anything.
pub fn binding_request(tid: Tid, change: Change) -> Result<Vec<u8>, EncodeError> {
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(TransactionId::from(tid));
    if change.any() {
        let flags = match (change.ip, change.port) {
            (true, true) => ChangeRequestFlags::ChangeIp | ChangeRequestFlags::ChangePort,
            (true, false) => ChangeRequestFlags::ChangeIp.into(),
            _ => ChangeRequestFlags::ChangePort.into(),
        };
        b = b.with_attribute(ChangeRequest::new(Some(flags)));
    }
    encode(&b.build())
}

/// What a Binding success response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The requester's address as the server saw it (XOR-MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// OTHER-ADDRESS, if the server has an alternate address.
    pub other: Option<SocketAddr>,
    /// RESPONSE-ORIGIN, if the server knows where it answers from.
    pub origin: Option<SocketAddr>,
}

/// A Binding success response to `tid`, optionally with FINGERPRINT.
pub fn binding_success(tid: Tid, reply: &Reply, fingerprint: bool) -> Result<Vec<u8>, EncodeError> {
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(TransactionId::from(tid))
        .with_attribute(XorMappedAddress::from(reply.mapped));
    if let Some(o) = reply.other {
        b = b.with_attribute(OtherAddress::from(o));
    }
    if let Some(o) = reply.origin {
        b = b.with_attribute(ResponseOrigin::from(o));
    }
    if fingerprint {
        b = b.with_attribute(stun_rs::attributes::stun::Fingerprint::default());
    }
    encode(&b.build())
}

/// A Binding error response to `tid` (`code` as in RFC 8489 §14.8), listing
/// `unknown` attribute types for a 420.
pub fn binding_error(
    tid: Tid,
    code: u16,
    reason: &str,
    unknown: &[u16],
) -> Result<Vec<u8>, EncodeError> {
    let ec = stun_rs::ErrorCode::new(code, reason).map_err(|e| EncodeError(e.to_string()))?;
    let mut b = StunMessageBuilder::new(BINDING, MessageClass::ErrorResponse)
        .with_transaction_id(TransactionId::from(tid))
        .with_attribute(ErrorCode::from(ec));
    if !unknown.is_empty() {
        b = b.with_attribute(stun_rs::attributes::stun::UnknownAttributes::from(unknown));
    }
    encode(&b.build())
}

/// Reads one STUN message from a stream (STUN over TCP, RFC 8489 §6.2): the header,
/// then as many bytes as it announces, at most [`MAX_STUN_MESSAGE`] in all. A header
/// that is not STUN (leading bits, cookie, length) is an `InvalidData` error before
/// anything else is read.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await?;
    let msg_type = u16::from_be_bytes([head[0], head[1]]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    if msg_type & 0xc000 != 0 || head[4..8] != MAGIC_COOKIE {
        return Err(bad("not a STUN message"));
    }
    if len % 4 != 0 || HEADER_LEN + len > MAX_STUN_MESSAGE {
        return Err(bad("STUN message length out of bounds"));
    }
    let mut buf = vec![0u8; HEADER_LEN + len];
    buf[..HEADER_LEN].copy_from_slice(&head);
    r.read_exact(&mut buf[HEADER_LEN..]).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_round_trips_with_change_flags() {
        for change in [Change::NONE, Change::PORT, Change::BOTH] {
            let tid = [7u8; 12];
            let bytes = binding_request(tid, change).unwrap();
            let m = decode(&bytes).unwrap();
            assert_eq!(m.class, Class::Request);
            assert!(m.binding);
            assert_eq!(m.tid, tid);
            assert_eq!(m.change, change);
        }
        // The plain request is the bare 20-byte header.
        assert_eq!(binding_request([0; 12], Change::NONE).unwrap().len(), 20);
    }

    #[test]
    fn success_round_trips() {
        let reply = Reply {
            mapped: "198.51.100.7:40000".parse().unwrap(),
            other: Some("203.0.113.11:3479".parse().unwrap()),
            origin: Some("203.0.113.10:3478".parse().unwrap()),
        };
        let bytes = binding_success([1; 12], &reply, true).unwrap();
        assert_eq!(bytes.len(), 20 + 12 * 3 + 8);
        let m = decode(&bytes).unwrap();
        assert_eq!(m.class, Class::Success);
        assert_eq!(m.mapped, Some(reply.mapped));
        assert_eq!(m.other, reply.other);
        assert_eq!(m.origin, reply.origin);
    }

    #[test]
    fn error_round_trips() {
        let bytes = binding_error([3; 12], 420, "Unknown Attribute", &[0x0003]).unwrap();
        let m = decode(&bytes).unwrap();
        assert_eq!(m.class, Class::Error);
        assert_eq!(m.error, Some((420, "Unknown Attribute".into())));
    }

    #[test]
    fn header_checks() {
        let good = binding_request([0; 12], Change::PORT).unwrap();
        assert!(decode(&good).is_ok());
        assert_eq!(decode(&good[..19]), Err(DecodeError::Truncated(19)));
        assert!(matches!(
            decode(&good[..24]),
            Err(DecodeError::Length { .. })
        ));
        let mut no_cookie = good.clone();
        no_cookie[4] = 0;
        assert_eq!(decode(&no_cookie), Err(DecodeError::NoCookie));
        let mut not_stun = good.clone();
        not_stun[0] = 0x80;
        assert_eq!(decode(&not_stun), Err(DecodeError::NotStun));
        // An attribute claiming more bytes than the message holds.
        let mut huge = good;
        huge[22] = 0xff;
        huge[23] = 0xff;
        assert!(matches!(decode(&huge), Err(DecodeError::Attributes(_))));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for i in 0..20_000usize {
            let len = 20 + (i % 64);
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            // Make most of them pass the header check so the attribute parser runs.
            buf[0] = 0;
            buf[1] = 1;
            let body = (len - 20) / 4 * 4;
            buf.truncate(20 + body);
            buf[2..4].copy_from_slice(&(body as u16).to_be_bytes());
            buf[4..8].copy_from_slice(&MAGIC_COOKIE);
            let _ = decode(&buf);
        }
    }
}
