//! `hello`: the C demo's hello world, played by punchline's library in one process.
//!
//! A classic rendezvous server ([`rendezvous::classic::serve`]) on a free loopback
//! port, and two classic clients ([`peer::classic::run`]) started together: whichever
//! reaches the server first is client1 and sends `Hello, world` three times, once a
//! second, to the other, which prints them. Then a summary line, and exit 0 if all
//! three arrived.
//!
//! `cargo run --release -p demos --bin hello` (release: reuses the demo's build);
//! `RUST_LOG=debug` shows every step on stderr.

use std::time::Instant;

use anyhow::{ensure, Context};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;

/// How many messages client1 sends.
const COUNT: u32 = 3;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::process::init_logging("info", common::process::LogFormat::Text);

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let server = listener.local_addr()?;
    println!("classic rendezvous server on {server}");
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(rendezvous::classic::serve(listener, shutdown.clone()));

    // Each client writes what it receives into a pipe that we read and print, so the
    // exchange shows as it happens. Only client2 ever writes there.
    let started = Instant::now();
    let (out_a, in_a) = tokio::io::duplex(1024);
    let (out_b, in_b) = tokio::io::duplex(1024);
    let show_a = tokio::spawn(show("peer A", in_a));
    let show_b = tokio::spawn(show("peer B", in_b));
    let (a, b) = tokio::join!(
        peer::classic::run(server, Some(COUNT), out_a),
        peer::classic::run(server, Some(COUNT), out_b),
    );
    a.context("peer A")?;
    b.context("peer B")?;
    let received = show_a.await?? + show_b.await??;

    shutdown.cancel();
    serving.await?.context("classic server")?;
    println!(
        "hello: {received} of {COUNT} messages went from client1 to client2 through {server} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        received == COUNT,
        "expected {COUNT} messages, got {received}"
    );
    Ok(())
}

/// Prints each line a client received, until the client is done; returns how many.
async fn show(name: &str, received: impl AsyncRead + Unpin) -> std::io::Result<u32> {
    let mut lines = BufReader::new(received).lines();
    let mut count = 0;
    while let Some(line) = lines.next_line().await? {
        count += 1;
        println!("{name} (client2) received: {line}");
    }
    Ok(count)
}
