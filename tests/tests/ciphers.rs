//! The transport cipher is negotiated per connection between the real binaries
//! (`common::secure`): a side that puts ChaChaPoly first (`PUNCHLINE_CIPHER=chachapoly`,
//! as a CPU without AES instructions does) gets ChaChaPoly from one that prefers
//! AES-256-GCM, two that prefer AES-256-GCM get it; either way data passes both ways
//! (8 MB echoed, sha256) through an exposed port and through a serve/connect link, and
//! each side logs the cipher it agreed on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use support::*;

const T: Duration = Duration::from_secs(30);
const LEN: usize = 8 << 20;

fn cmd(name: &str, cipher: &str) -> Command {
    let mut c = local(name);
    c.env_remove("PUNCHLINE_TOKEN")
        .env("PUNCHLINE_CIPHER", cipher)
        .env("RUST_LOG", "info,common::secure=debug");
    c
}

/// A local echo service (a thread per connection).
fn echo_service() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let _ = std::io::copy(&mut c, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Sends [`LEN`] bytes through `addr` to the echo service and checks what comes back.
fn echo_through(addr: SocketAddr, what: &str) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let sent = data(LEN, 11);
    let mut w = c.try_clone().unwrap();
    let expect = sha256(&sent);
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(LEN);
    c.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), LEN, "{what}: bytes echoed");
    assert_eq!(sha256(&got), expect, "{what}: sha256 of the echo");
}

#[test]
fn ciphers_are_negotiated_per_connection_and_carry_data_both_ways() {
    let echo = echo_service();
    let (srv, addr) = rendezvous(cmd("rendezvous", "aesgcm"), &["--bind", "127.0.0.1"]);
    let server = addr.to_string();

    // Exposed ports: one peer prefers ChaChaPoly, one AES-256-GCM, as the server does.
    let mut ports = Vec::new();
    for (name, cipher, agreed) in [
        ("cha", "chachapoly", "cipher=ChaChaPoly"),
        ("aes", "aesgcm", "cipher=AESGCM"),
    ] {
        let mut c = cmd("peer", cipher);
        c.args(["--server", &server, "expose", "tcp", "--name", name])
            .args(["--local", &echo.to_string(), "--remote-port", "0"]);
        let peer = Proc::spawn(name, c);
        let line = peer.stdout.wait_for(&format!("exposed {name} tcp"), T);
        let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
        peer.stderr.wait_for(agreed, T);
        ports.push((peer, SocketAddr::from(([127, 0, 0, 1], port))));
    }
    for (peer, port) in &ports {
        echo_through(*port, &peer.name);
    }
    srv.stderr.wait_for("cipher=ChaChaPoly", T);
    srv.stderr.wait_for("cipher=AESGCM", T);

    // A link between an owner that prefers AES-256-GCM and a visitor that prefers
    // ChaChaPoly: ChaChaPoly on the link, AES-256-GCM between the owner and the server.
    let mut c = cmd("peer", "aesgcm");
    c.args(["--server", &server, "serve", "echo", "--secret", "s3cret"])
        .args(["--local", &echo.to_string()]);
    let owner = Proc::spawn("owner", c);
    owner.stderr.wait_for("registered", T);
    let mut c = cmd("peer", "chachapoly");
    c.args(["--server", &server, "connect", "echo", "--secret", "s3cret"])
        .args(["--listen", "127.0.0.1:0", "--keep-open"]);
    let visitor = Proc::spawn("visitor", c);
    let line = visitor.stdout.wait_for("listening on", T);
    let listen: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    visitor.stderr.wait_for("link up", T);
    echo_through(listen, "serve/connect link");
    owner.stderr.wait_for("cipher=AESGCM", T);
    owner.stderr.wait_for("cipher=ChaChaPoly", T);
    assert!(
        !visitor.stderr.contains("cipher=AESGCM"),
        "the visitor agreed on AES-GCM somewhere:\n{}",
        visitor.stderr.text()
    );
}
