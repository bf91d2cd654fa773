//! The rendezvous server: learns each peer's NAT mapping, pairs peers, times the
//! punch signal, answers STUN (RFC 8489, RFC 5780 with an alternate address), and (in
//! `--classic` mode) speaks the original C demo's protocol.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod accept;
pub mod admin;
pub mod classic;
pub mod cli;
pub mod config;
pub mod expose;
mod limit;
pub mod metrics;
pub mod registry;
mod relay;
pub mod server;
pub mod status;
mod stun;
pub mod vhost;

pub use server::{spawn, Config, Handle};
