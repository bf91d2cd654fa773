//! Hostile and broken input to the real `rendezvous` binary: wrong tokens, a wrong
//! protocol version, random bytes, an oversized frame, a silent connection. Each is
//! refused or timed out with a clear log line, and meanwhile two honest peers pair and
//! move data through a pipe: the server keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::{
    framing::Channel,
    identity::Identity,
    proto::{ClientMsg, ConnKind, ServerMsg},
    secure::{self, Psk},
};
use support::*;
use tokio::io::AsyncWriteExt;

const T: Duration = Duration::from_secs(20);

fn peer_pipe(addr: std::net::SocketAddr, token: Option<&str>, code: &str) -> Proc {
    let mut cmd = local("peer");
    cmd.args(["--server", &addr.to_string(), "pipe", "--code", code]);
    cmd.env_remove("PUNCHLINE_TOKEN");
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    Proc::spawn("peer", cmd)
}

#[test]
fn wrong_or_missing_token_is_refused_with_a_reason_on_both_sides() {
    let (srv, addr) = rendezvous(
        local("rendezvous"),
        &["--bind", "127.0.0.1", "--token", "right"],
    );
    for token in [Some("wrong"), None] {
        let mut p = peer_pipe(addr, token, "c");
        let st = p.wait_exit(T);
        assert!(!st.success(), "a peer with token {token:?} must fail");
        let err = p.stderr.text();
        assert!(err.contains("wrong or missing token"), "peer stderr: {err}");
    }
    srv.stderr.wait_for("refused: wrong or missing token", T);
    // With the right token the same server pairs two peers.
    let mut a = peer_pipe(addr, Some("right"), "ok");
    let mut b = peer_pipe(addr, Some("right"), "ok");
    assert!(a.wait_exit(T).success(), "{}", a.stderr.text());
    assert!(b.wait_exit(T).success(), "{}", b.stderr.text());
}

#[test]
fn a_server_without_token_warns_at_start() {
    let (srv, _addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    srv.stderr
        .wait_for("no --token given: ANY peer may use this server", T);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_others_keep_working() {
    let (srv, addr) = rendezvous(
        local("rendezvous"),
        &["--bind", "127.0.0.1", "--token", "tk"],
    );
    let psk = Psk::server(Some("tk"));

    // 1. A connection that sends nothing, held open the whole time.
    let mut silent = TcpStream::connect(addr).unwrap();

    // 2. A wrong protocol version gets a clear refusal.
    let me = Identity::generate();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut ch = Channel::new(secure::initiate_server(tcp, &psk, &me).await.unwrap());
    ch.send(&ClientMsg::Hello {
        version: 99,
        kind: ConnKind::Control,
    })
    .await
    .unwrap();
    match ch.recv::<ServerMsg>().await.unwrap() {
        ServerMsg::Refused(r) => assert!(r.contains("protocol version 99 is not supported"), "{r}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    srv.stderr
        .wait_for("protocol version 99 is not supported", T);

    // 2b. A peer of protocol version 1 (anonymous NNpsk0 handshake, no identity) is
    // told to upgrade, in words.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    match secure::initiate(tcp, &psk).await {
        Err(secure::HandshakeError::Refused(r)) => {
            assert!(
                r.contains(&format!(
                    "protocol version {}",
                    common::proto::PROTOCOL_VERSION
                )) && r.contains("this peer speaks version 1")
                    && r.contains("upgrade the peer"),
                "{r}"
            )
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    srv.stderr.wait_for("upgrade the peer", T);

    // 3. Random bytes: refused, connection closed, no panic.
    let mut junk = TcpStream::connect(addr).unwrap();
    junk.write_all(&data(4096, 7)).unwrap();
    junk.set_read_timeout(Some(T)).unwrap();
    let mut buf = Vec::new();
    let _ = junk.read_to_end(&mut buf); // EOF or reset: closed either way
    srv.stderr.wait_for("refused: bad handshake", T);

    // 4. Valid handshake, then a frame header announcing 4 GiB.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut noise = secure::initiate_server(tcp, &psk, &me).await.unwrap();
    let hello = common::wire::encode(&ClientMsg::Hello {
        version: common::proto::PROTOCOL_VERSION,
        kind: ConnKind::Control,
    })
    .unwrap();
    noise
        .write_all(&(hello.len() as u32).to_be_bytes())
        .await
        .unwrap();
    noise.write_all(&hello).await.unwrap();
    noise.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    noise.flush().await.unwrap();
    srv.stderr.wait_for("frame size too big", T);

    // 5. Meanwhile honest peers pair and pipe data.
    let (mut a, mut b) = (
        peer_pipe(addr, Some("tk"), "honest"),
        peer_pipe(addr, Some("tk"), "honest"),
    );
    assert!(a.wait_exit(T).success(), "{}", a.stderr.text());
    assert!(b.wait_exit(T).success(), "{}", b.stderr.text());

    // 6. The silent connection is cut after the handshake timeout, with a log line.
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = silent.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "the server must close a silent connection");
    srv.stderr.wait_for("refused: no handshake within", T);
    assert!(!srv.stderr.contains("panicked"), "{}", srv.stderr.text());
}
