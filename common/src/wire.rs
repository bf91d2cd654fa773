//! The one place that knows the message encoding (bincode 2 through serde), so it can
//! be swapped. Decoding is bounded by [`crate::defaults::MAX_FRAME_LEN`]: no input can
//! make it allocate more than that.

use serde::{de::DeserializeOwned, Serialize};

use crate::defaults::MAX_FRAME_LEN;

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Decode(String),
    /// The bytes decode to a message but have bytes left over.
    #[error("malformed message: {0} trailing bytes")]
    Trailing(usize),
    /// The message could not be encoded (too large).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_FRAME_LEN>()
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    bincode::serde::encode_to_vec(msg, config()).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes a message; every byte must be used.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (msg, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(WireError::Trailing(bytes.len() - used));
    }
    Ok(msg)
}
