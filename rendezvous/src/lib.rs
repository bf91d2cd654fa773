//! The rendezvous server: learns each peer's NAT mapping, pairs peers, times the
//! punch signal, and (in `--classic` mode) speaks the original C demo's protocol.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod classic;
pub mod server;

pub use server::{spawn, Config, Handle};
