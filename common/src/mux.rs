//! Streams over one connection (yamux). Placeholder: being written.
