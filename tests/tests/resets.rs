//! How a carried connection ends, through the real binaries on loopback: a client
//! downloading through an exposed TCP port or through `connect` reads a reset
//! (ECONNRESET) when the owner peer is killed (SIGKILL) mid-transfer, never a clean
//! end of file after a truncated transfer; a connection the server refuses (the peer
//! is gone, its port held for it) is reset too, as is one past any `--max-streams`
//! limit (with a warning from the side whose limit it is); a client that resets its
//! connection mid-upload makes the service read a reset; and a complete transfer still
//! delivers every byte (sha256) and then a clean end of file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use support::*;

const T: Duration = Duration::from_secs(30);
/// How long a client waits for the end of a connection after the owner was killed.
const END_WAIT: Duration = Duration::from_secs(20);
/// Bytes the client reads before the owner is killed: the transfer is well under way.
const BEFORE_KILL: usize = 4 << 20;
/// Size of a complete download.
const CLEAN_LEN: usize = 24 << 20;

fn cmd(name: &str) -> Command {
    let mut c = local(name);
    c.env_remove("PUNCHLINE_TOKEN");
    c
}

/// A local service that sends every connection `len` pattern bytes (`None`: without
/// end, until the connection fails), then shuts down its write side and waits for the
/// client's end. Returns its address.
fn download_service(len: Option<usize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let chunk = data(1 << 16, 7);
                let mut left = len.unwrap_or(usize::MAX);
                while left > 0 {
                    let n = left.min(chunk.len());
                    if c.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = c.shutdown(Shutdown::Write);
                let _ = std::io::copy(&mut c, &mut std::io::sink());
            });
        }
    });
    addr
}

/// The first `len` bytes every download carries.
fn expected(len: usize) -> Vec<u8> {
    let chunk = data(1 << 16, 7);
    chunk.iter().copied().cycle().take(len).collect()
}

/// How a download ended.
#[derive(Debug)]
enum End {
    /// A clean end of file.
    Eof,
    /// An error of this kind (the message is for failure output).
    Error(ErrorKind, #[allow(dead_code)] String),
}

/// Reads from `c` until the connection ends (or `limit` passes: a panic), calling
/// `midway` once when `at` bytes have arrived. Returns the bytes and the end.
fn download(
    c: &mut TcpStream,
    limit: Duration,
    at: usize,
    mut midway: impl FnMut(),
) -> (Vec<u8>, End) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut called = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the connection neither ended nor failed within {limit:?} ({} bytes read)",
            got.len()
        );
        c.set_read_timeout(Some(left)).unwrap();
        match c.read(&mut buf) {
            Ok(0) => return (got, End::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return (got, End::Error(e.kind(), e.to_string())),
        }
        if !called && got.len() >= at {
            called = true;
            midway();
        }
    }
}

/// A server and a peer exposing `service` on a server-chosen port; returns both and
/// the port's address.
fn exposed(service: SocketAddr) -> (Proc, Proc, SocketAddr) {
    let (srv, addr) = rendezvous(cmd("rendezvous"), &["--bind", "127.0.0.1"]);
    let mut c = cmd("peer");
    c.args(["--server", &addr.to_string(), "expose", "tcp"])
        .args(["--local", &service.to_string(), "--remote-port", "0"])
        .args(["--name", "dl"]);
    let peer = Proc::spawn("peer", c);
    let line = peer.stdout.wait_for("exposed dl tcp", T);
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    (srv, peer, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A server, an owner serving `service`, and a visitor with its link up; returns
/// them and the visitor's listener.
fn linked(service: SocketAddr) -> (Proc, Proc, Proc, SocketAddr) {
    let (srv, addr) = rendezvous(cmd("rendezvous"), &["--bind", "127.0.0.1"]);
    let server = addr.to_string();
    let mut c = cmd("peer");
    c.args(["--server", &server, "serve", "dl", "--secret", "s3cret"])
        .args(["--local", &service.to_string()]);
    let owner = Proc::spawn("owner", c);
    owner.stderr.wait_for("registered", T);
    let mut c = cmd("peer");
    c.args(["--server", &server, "connect", "dl", "--secret", "s3cret"])
        .args(["--listen", "127.0.0.1:0", "--keep-open"]);
    let visitor = Proc::spawn("visitor", c);
    let line = visitor.stdout.wait_for("listening on", T);
    let listen = line.rsplit(' ').next().unwrap().parse().unwrap();
    visitor.stderr.wait_for("link up", T);
    (srv, owner, visitor, listen)
}

/// Downloads from `addr` without end, kills `owner` (SIGKILL) once the transfer is
/// under way, and checks that the client reads a reset, not an end of file.
fn killed_mid_download(addr: SocketAddr, owner: &mut Proc, path: &str) {
    let mut c = TcpStream::connect(addr).unwrap();
    let (got, end) = download(&mut c, T + END_WAIT, BEFORE_KILL, || {
        owner.child.kill().unwrap();
        owner.child.wait().unwrap();
    });
    assert!(got.len() >= BEFORE_KILL);
    assert_eq!(
        got[..BEFORE_KILL],
        expected(BEFORE_KILL)[..],
        "{path}: data before the kill"
    );
    match end {
        End::Error(ErrorKind::ConnectionReset, _) => {}
        other => panic!(
            "{path}: after {} bytes the client saw {other:?}, not a reset: a truncated \
             download must not look complete",
            got.len()
        ),
    }
    println!(
        "{path}: reset after {} MiB, the owner killed at {} MiB",
        got.len() >> 20,
        BEFORE_KILL >> 20
    );
}

/// Downloads CLEAN_LEN bytes from `addr` and checks every byte and the clean end.
fn clean_download(addr: SocketAddr, path: &str) {
    let mut c = TcpStream::connect(addr).unwrap();
    let (got, end) = download(&mut c, T, usize::MAX, || {});
    assert!(
        matches!(end, End::Eof),
        "{path}: a complete transfer ended with {end:?} after {} bytes",
        got.len()
    );
    assert_eq!(got.len(), CLEAN_LEN, "{path}: length");
    assert_eq!(
        sha256(&got),
        sha256(&expected(CLEAN_LEN)),
        "{path}: sha256 of the download"
    );
}

/// A local service that reads each connection to its end and sends how it ended on
/// the returned channel: `Ok(bytes)` for an end of file, the error kind otherwise.
fn upload_service() -> (
    SocketAddr,
    std::sync::mpsc::Receiver<Result<usize, ErrorKind>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0;
                let end = loop {
                    match c.read(&mut buf) {
                        Ok(0) => break Ok(total),
                        Ok(n) => total += n,
                        Err(e) => break Err(e.kind()),
                    }
                };
                let _ = tx.send(end);
            });
        }
    });
    (addr, rx)
}

/// Uploads to `addr` until `BEFORE_KILL` bytes are sent, then resets the connection
/// (`SO_LINGER` 0): the service behind must read a reset too, not an end of file
/// that would pass the partial upload off as complete.
fn client_reset_mid_upload(
    addr: SocketAddr,
    service: &std::sync::mpsc::Receiver<Result<usize, ErrorKind>>,
    path: &str,
) {
    let mut c = TcpStream::connect(addr).unwrap();
    let chunk = data(1 << 16, 9);
    let mut sent = 0;
    while sent < BEFORE_KILL {
        c.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let end = service
        .recv_timeout(END_WAIT)
        .expect("the service's connection ends");
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "{path}: the service's connection ended with {end:?} after the client reset its own"
    );
}

#[test]
fn a_client_reset_reaches_the_service() {
    let (service, ends) = upload_service();
    let (_srv, _peer, public) = exposed(service);
    client_reset_mid_upload(public, &ends, "exposed tcp port");
    let (_srv2, _owner, _visitor, listen) = linked(service);
    client_reset_mid_upload(listen, &ends, "serve/connect link");
}

/// Holds `n` connections to `addr` open, each proven carried by an echo.
fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(T)).unwrap();
            c.write_all(&[i as u8]).unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8);
            c
        })
        .collect()
}

/// One connection more than a limit allows: it is reset (not accepted and closed).
/// The client only reads: a write racing the reset could take the error (a socket
/// reports a reset once), leaving the read an end of file.
fn refused(addr: SocketAddr, path: &str) {
    let mut c = TcpStream::connect(addr).unwrap();
    let (got, end) = download(&mut c, END_WAIT, usize::MAX, || {});
    assert!(
        matches!(end, End::Error(ErrorKind::ConnectionReset, _)),
        "{path}: a connection past the limit ended with {end:?} after {} bytes",
        got.len()
    );
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

/// Every `--max-streams` limit on the way resets the connection past it, and the side
/// whose limit it is logs a warning: the server's (per peer process), the exposing
/// peer's, the owner's and the visitor's.
#[test]
fn limits_reset_the_connection_past_them_and_warn() {
    let echo = echo_service();

    // The server's limit on one peer process's user connections.
    let (srv, addr) = rendezvous(
        cmd("rendezvous"),
        &["--bind", "127.0.0.1", "--max-streams", "2"],
    );
    let mut c = cmd("peer");
    c.args(["--server", &addr.to_string(), "expose", "tcp"])
        .args(["--local", &echo.to_string(), "--remote-port", "0"])
        .args(["--name", "e"]);
    let peer = Proc::spawn("peer", c);
    let line = peer.stdout.wait_for("exposed e tcp", T);
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let public = SocketAddr::from(([127, 0, 0, 1], port));
    let held = hold(public, 2);
    refused(public, "the server's limit");
    srv.stderr.wait_for("at its stream limit (--max-streams", T);
    drop((held, peer, srv));

    // The exposing peer's own limit.
    let (srv, addr) = rendezvous(cmd("rendezvous"), &["--bind", "127.0.0.1"]);
    let mut c = cmd("peer");
    c.args([
        "--server",
        &addr.to_string(),
        "--max-streams",
        "2",
        "expose",
        "tcp",
    ])
    .args(["--local", &echo.to_string(), "--remote-port", "0"])
    .args(["--name", "e"]);
    let peer = Proc::spawn("peer", c);
    let line = peer.stdout.wait_for("exposed e tcp", T);
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let public = SocketAddr::from(([127, 0, 0, 1], port));
    let held = hold(public, 2);
    refused(public, "the exposing peer's limit");
    peer.stderr.wait_for("too many streams open", T);
    drop((held, peer, srv));

    // The owner's limit on a link (the visitor keeps its default).
    let (srv, addr) = rendezvous(cmd("rendezvous"), &["--bind", "127.0.0.1"]);
    let server = addr.to_string();
    let mut c = cmd("peer");
    c.args(["--server", &server, "serve", "svc", "--secret", "s3cret"])
        .args(["--local", &echo.to_string(), "--max-streams", "2"]);
    let owner = Proc::spawn("owner", c);
    owner.stderr.wait_for("registered", T);
    let mut c = cmd("peer");
    c.args(["--server", &server, "connect", "svc", "--secret", "s3cret"])
        .args(["--listen", "127.0.0.1:0", "--keep-open"]);
    let visitor = Proc::spawn("visitor", c);
    let line = visitor.stdout.wait_for("listening on", T);
    let listen: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let held = hold(listen, 2);
    refused(listen, "the owner's limit");
    owner.stderr.wait_for("too many streams open", T);
    drop((held, visitor));

    // The visitor's own limit.
    let mut c = cmd("peer");
    c.args(["--server", &server, "connect", "svc", "--secret", "s3cret"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--keep-open",
            "--max-streams",
            "1",
        ]);
    let visitor = Proc::spawn("visitor", c);
    let line = visitor.stdout.wait_for("listening on", T);
    let listen: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let held = hold(listen, 1);
    refused(listen, "the visitor's limit");
    visitor.stderr.wait_for("--max-streams limit", T);
    drop((held, owner, srv));
}

#[test]
fn owner_killed_mid_download_resets_the_client_of_an_exposed_port() {
    let service = download_service(None);
    let (srv, mut peer, public) = exposed(service);
    killed_mid_download(public, &mut peer, "exposed tcp port");
    // The port stays held for the peer (the grace period), but with the peer gone a
    // new user connection is refused with a reset, not accepted and closed.
    let mut c = TcpStream::connect(public).unwrap();
    let (got, end) = download(&mut c, END_WAIT, usize::MAX, || {});
    assert!(
        matches!(end, End::Error(ErrorKind::ConnectionReset, _)),
        "a refused connection ended with {end:?} after {} bytes",
        got.len()
    );
    assert!(!srv.stderr.contains("panicked"), "{}", srv.stderr.text());
}

#[test]
fn owner_killed_mid_download_resets_the_client_of_connect() {
    let service = download_service(None);
    let (srv, mut owner, visitor, listen) = linked(service);
    killed_mid_download(listen, &mut owner, "serve/connect link");
    for p in [&srv, &visitor] {
        assert!(!p.stderr.contains("panicked"), "{}", p.stderr.text());
    }
}

#[test]
fn complete_downloads_end_cleanly_with_every_byte() {
    let service = download_service(Some(CLEAN_LEN));
    let (_srv, _peer, public) = exposed(service);
    clean_download(public, "exposed tcp port");
    let (_srv2, _owner, _visitor, listen) = linked(service);
    clean_download(listen, "serve/connect link");
}

/// One client address cannot take an exposed port: past `--max-per-client`
/// connections from 127.0.0.1 are reset (and the server warns), while a client at
/// 127.0.0.2 still downloads; when one of the first ones ends, its address is served
/// again.
#[test]
fn one_address_past_its_limit_is_reset_and_others_are_served() {
    let service = download_service(None);
    let (srv, addr) = rendezvous(
        cmd("rendezvous"),
        &["--bind", "127.0.0.1", "--max-per-client", "3"],
    );
    let mut c = cmd("peer");
    c.args(["--server", &addr.to_string(), "expose", "tcp"])
        .args(["--local", &service.to_string(), "--remote-port", "0"])
        .args(["--name", "dl"]);
    let peer = Proc::spawn("peer", c);
    let line = peer.stdout.wait_for("exposed dl tcp", T);
    let port: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let exposed = SocketAddr::from(([127, 0, 0, 1], port));

    let read_some = |c: &mut TcpStream| -> std::io::Result<usize> {
        c.set_read_timeout(Some(T)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < 1 << 20 {
            match c.read(&mut buf)? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    };
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(exposed).unwrap();
            assert!(read_some(&mut c).unwrap() >= 1 << 20);
            c
        })
        .collect();
    let mut fourth = TcpStream::connect(exposed).unwrap();
    let err = read_some(&mut fourth).expect_err("a fourth connection was carried");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    srv.stderr
        .wait_for("at its limit of connections in flight", T);

    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    other.connect(&exposed.into()).unwrap();
    let mut other: TcpStream = other.into();
    assert!(read_some(&mut other).unwrap() >= 1 << 20);

    drop(held.pop());
    // The slot comes back when the server notices the end: retry, bounded.
    let mut served = false;
    for _ in 0..100 {
        let mut c = TcpStream::connect(exposed).unwrap();
        if read_some(&mut c).is_ok_and(|n| n >= 1 << 20) {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        served,
        "127.0.0.1 was not served again after one of its connections ended"
    );
}
