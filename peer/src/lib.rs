//! The peer: keeps a control connection to the rendezvous server, punches direct
//! links to other peers, and runs `pipe` (and, in `--classic` mode, the C demo's
//! client) over them; `nat-check` tells what the local NAT allows.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod classic;
pub mod cli;
pub mod client;
pub mod config;
pub mod expose;
pub mod frpc;
pub mod hub;
pub mod link;
pub mod natcheck;
pub mod pipe;
pub mod portmap;
pub mod service;
pub mod status;
