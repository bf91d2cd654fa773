//! The relay under concurrency: many pairs whose two relay halves reach the real
//! server at the same moment. Every half must find its partner (none refused with
//! "already has a relay" or "did not arrive"), and every relayed link must carry its
//! data intact both ways. The peers are the library (`peer::client`, `peer::link`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{sync::Arc, time::Duration};

use common::proto::{ClientMsg, Pairing, ServerMsg};
use peer::client::{Control, ServerConfig};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Barrier,
};

/// Pairs relayed at once.
const PAIRS: usize = 200;
/// Bytes each side sends through its relay.
const BYTES: usize = 64 * 1024;

/// Pairs two fresh control connections by `code`; returns each side's config, ticket
/// and initiator flag, and keeps the controls alive in the result.
async fn paired(
    addr: std::net::SocketAddr,
    code: String,
) -> Vec<(ServerConfig, Control, u64, bool)> {
    let mut sides = Vec::new();
    for _ in 0..2 {
        let cfg = ServerConfig::ephemeral(addr, None);
        let c = Control::connect(&cfg).await.expect("control connection");
        c.send(ClientMsg::Pair(Pairing::Code(code.clone())))
            .await
            .unwrap();
        sides.push((cfg, c));
    }
    let mut out = Vec::new();
    for (cfg, mut c) in sides {
        let (ticket, initiator) = loop {
            match tokio::time::timeout(Duration::from_secs(30), c.recv())
                .await
                .expect("paired in time")
                .expect("control connection up")
            {
                ServerMsg::Paired {
                    session, initiator, ..
                } => break (session, initiator),
                ServerMsg::Waiting => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        out.push((cfg, c, ticket, initiator));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_relay_halves_always_find_each_other() {
    let (srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let mut sessions = Vec::new();
    for i in 0..PAIRS {
        sessions.push(paired(addr, format!("race-{i}")).await);
    }
    let barrier = Arc::new(Barrier::new(2 * PAIRS));
    let mut tasks = tokio::task::JoinSet::new();
    let mut controls = Vec::new();
    for (i, pair) in sessions.into_iter().enumerate() {
        for (cfg, control, ticket, initiator) in pair {
            controls.push(control);
            let barrier = barrier.clone();
            tasks.spawn(async move {
                let psk = common::secure::Psk::derive("relay-race", &[&i.to_string()]);
                barrier.wait().await;
                let (mut link, info) = peer::link::relay(&cfg, ticket, initiator, &psk)
                    .await
                    .map_err(|e| format!("pair {i}: {e}"))?;
                assert_eq!(info.path, peer::link::Path::Relayed);
                // Each side sends its own pattern, then reads the other's.
                let mine = data(BYTES, (2 * i + usize::from(initiator)) as u64);
                let theirs = data(BYTES, (2 * i + usize::from(!initiator)) as u64);
                link.write_all(&mine).await.map_err(|e| e.to_string())?;
                link.flush().await.map_err(|e| e.to_string())?;
                let mut got = vec![0; BYTES];
                link.read_exact(&mut got).await.map_err(|e| e.to_string())?;
                if got != theirs {
                    return Err(format!("pair {i}: data differs"));
                }
                Ok::<_, String>(())
            });
        }
    }
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.unwrap() {
            failures.push(e);
        }
    }
    let log = srv.stderr.text();
    assert!(
        failures.is_empty(),
        "{} of {} halves failed: {:?}\nserver log:\n{}",
        failures.len(),
        2 * PAIRS,
        &failures[..failures.len().min(10)],
        log.lines()
            .filter(|l| l.contains("relay"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!log.contains("already has a relay"), "{log}");
    drop(controls);
}
