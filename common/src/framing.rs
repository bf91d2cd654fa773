//! Length-delimited frames (4-byte big-endian length, at most
//! [`MAX_FRAME_LEN`](crate::defaults::MAX_FRAME_LEN)) carrying one encoded message each.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::{defaults::MAX_FRAME_LEN, wire};

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed, or a frame exceeded the size limit.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A frame did not hold a valid message.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// No frame arrived in time.
    #[error("timed out after {0:?} waiting for a message")]
    Timeout(Duration),
    /// The other side closed the connection.
    #[error("connection closed")]
    Closed,
}

/// A connection that carries whole messages.
#[derive(Debug)]
pub struct Channel<S> {
    framed: Framed<S, LengthDelimitedCodec>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    /// Wraps a byte stream.
    pub fn new(io: S) -> Self {
        let codec = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .max_frame_length(MAX_FRAME_LEN)
            .new_codec();
        Self {
            framed: Framed::new(io, codec),
        }
    }

    /// Sends one message.
    pub async fn send<M: Serialize>(&mut self, msg: &M) -> Result<(), FrameError> {
        let bytes = wire::encode(msg)?;
        self.framed.send(bytes::Bytes::from(bytes)).await?;
        Ok(())
    }

    /// Receives one message; `Err(Closed)` at a clean end of the connection.
    pub async fn recv<M: DeserializeOwned>(&mut self) -> Result<M, FrameError> {
        match self.framed.next().await {
            Some(Ok(frame)) => Ok(wire::decode(&frame)?),
            Some(Err(e)) => Err(e.into()),
            None => Err(FrameError::Closed),
        }
    }

    /// Receives one message within `limit`.
    pub async fn recv_timeout<M: DeserializeOwned>(
        &mut self,
        limit: Duration,
    ) -> Result<M, FrameError> {
        tokio::time::timeout(limit, self.recv())
            .await
            .map_err(|_| FrameError::Timeout(limit))?
    }

    /// Flushes and closes the connection cleanly (for a `NoiseStream`, sends the
    /// end-of-stream marker).
    pub async fn close(&mut self) -> Result<(), FrameError> {
        SinkExt::<bytes::Bytes>::close(&mut self.framed).await?;
        Ok(())
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        self.framed.get_ref()
    }

    /// Gives back the stream and any bytes read past the last frame, for a connection
    /// that switches to raw bytes.
    pub fn into_parts(self) -> (S, bytes::BytesMut) {
        let parts = self.framed.into_parts();
        (parts.io, parts.read_buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ClientMsg, ConnKind, Pairing, ServerMsg, PROTOCOL_VERSION};
    use tokio::io::AsyncWriteExt;

    #[test]
    fn pinned_bytes() {
        // These bytes are the protocol: a change here breaks old peers.
        let hello = ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            kind: ConnKind::Control,
        };
        assert_eq!(
            wire::encode(&hello).unwrap(),
            [0, 0, 0, 0, 0, 6, 0, 0, 0, 0]
        );
        let pair = ClientMsg::Pair(Pairing::Code("ab".into()));
        assert_eq!(
            wire::encode(&pair).unwrap(),
            [0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, b'a', b'b']
        );
        assert_eq!(
            wire::encode(&ClientMsg::Pong(7)).unwrap(),
            [0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        assert_eq!(wire::encode(&ServerMsg::Waiting).unwrap(), [0, 0, 0, 3]);
        // New variants go at the end: EndSession is ClientMsg's 12th (index 11).
        assert_eq!(
            wire::encode(&ClientMsg::EndSession { session: 1 }).unwrap(),
            [0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0, 1]
        );
    }

    #[test]
    fn round_trips() {
        let addr: std::net::SocketAddr = "203.0.113.5:4000".parse().unwrap();
        let v6: std::net::SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let client = [
            ClientMsg::Hello {
                version: 9,
                kind: ConnKind::Probe {
                    session: u64::MAX,
                    attempt: 3,
                    local: v6,
                    mapped: Some(addr),
                },
            },
            ClientMsg::Pair(Pairing::Any),
            ClientMsg::Hello {
                version: 1,
                kind: ConnKind::Relay { session: 3 },
            },
            ClientMsg::Register { name: "ssh".into() },
            ClientMsg::Connect {
                name: "ssh".into(),
                relay_first: true,
            },
            ClientMsg::Repunch { session: 4 },
            ClientMsg::Prove {
                session: 3,
                proof: [1; 32],
            },
            ClientMsg::Verified {
                session: 3,
                ok: true,
            },
            ClientMsg::Nat {
                mapping: Some(crate::proto::NatBehaviour::AddressAndPortDependent),
                portmap: true,
            },
            ClientMsg::EndSession { session: 5 },
            ClientMsg::Report {
                session: 1,
                outcome: crate::proto::Outcome::Direct {
                    attempt: 1,
                    millis: 70,
                },
            },
            ClientMsg::Report {
                session: 1,
                outcome: crate::proto::Outcome::GaveUp {
                    reason: "x".repeat(300),
                },
            },
        ];
        for m in client {
            assert_eq!(
                wire::decode::<ClientMsg>(&wire::encode(&m).unwrap()).unwrap(),
                m
            );
        }
        let server = [
            ServerMsg::Welcome {
                version: 1,
                observed: addr,
            },
            ServerMsg::Refused("no".into()),
            ServerMsg::Ping(1),
            ServerMsg::Paired {
                session: 5,
                initiator: true,
                mode: crate::proto::PunchMode::Relay,
                nonce: [7; 16],
            },
            ServerMsg::PeerProof {
                session: 5,
                proof: [9; 32],
            },
            ServerMsg::Punch {
                peer_public: addr,
                peer_local: v6,
                own_public: addr,
            },
            ServerMsg::PeerGone {
                session: 5,
                reason: "bye".into(),
            },
        ];
        for m in server {
            assert_eq!(
                wire::decode::<ServerMsg>(&wire::encode(&m).unwrap()).unwrap(),
                m
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = wire::decode::<ClientMsg>(&bytes);
            let _ = wire::decode::<ServerMsg>(&bytes);
        }
        // A string length of 4 GiB must not allocate.
        let huge = [
            0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(wire::decode::<ClientMsg>(&huge).is_err());
        // Trailing bytes are refused.
        assert!(wire::decode::<ServerMsg>(&[0, 0, 0, 4, 0]).is_err());
    }

    #[tokio::test]
    async fn oversized_frame_disconnects() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut ch = Channel::new(a);
        b.write_all(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let err = ch.recv::<ClientMsg>().await.unwrap_err();
        assert!(matches!(err, FrameError::Io(_)), "{err}");
    }

    #[tokio::test]
    async fn channel_round_trip_and_close() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut a, mut b) = (Channel::new(a), Channel::new(b));
        a.send(&ServerMsg::Ping(42)).await.unwrap();
        assert_eq!(b.recv::<ServerMsg>().await.unwrap(), ServerMsg::Ping(42));
        drop(a);
        assert!(matches!(
            b.recv::<ServerMsg>().await,
            Err(FrameError::Closed)
        ));
    }
}
