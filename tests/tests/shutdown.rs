//! Shutdown owns every task: a server spawned as a library (`rendezvous::spawn`) with
//! a port exposed through a real peer and a user connection in flight stops
//! completely on `shutdown()` + `join()`: its ports refuse connections and no task of
//! it is left (its own count, and the runtime's).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use support::*;

const T: Duration = Duration::from_secs(30);

fn refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_join_leave_no_listener_and_no_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let mut cfg = rendezvous::Config::new("127.0.0.1:0".parse().unwrap());
    cfg.vhost_http_port = Some(0);
    let handle = rendezvous::spawn(cfg).await.unwrap();
    let (control, vhost) = (handle.local_addr(), handle.vhost_addr().unwrap());

    let mut echo_cmd = std::process::Command::new(bin("stream-check"));
    echo_cmd.args(["echo", "0"]);
    let echo = Proc::spawn("echo", echo_cmd);
    let line = echo.stdout.wait_for("listening on", T);
    let echo_port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
    let mut cmd = local("peer");
    cmd.env_remove("PUNCHLINE_TOKEN").args([
        "--server",
        &control.to_string(),
        "expose",
        "tcp",
        "--local",
        &format!("127.0.0.1:{echo_port}"),
        "--remote-port",
        "0",
    ]);
    let peer = Proc::spawn("peer", cmd);
    let line = peer.stdout.wait_for("exposed", T);
    let port: u16 = line.split_whitespace().last().unwrap().parse().unwrap();
    let exposed = SocketAddr::from(([127, 0, 0, 1], port));

    // A user connection through the port, kept open (a splice in flight).
    let user = std::thread::spawn(move || {
        let deadline = Instant::now() + T;
        loop {
            let mut c = TcpStream::connect(exposed).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 5];
            if c.write_all(b"hello").is_ok() && c.read_exact(&mut buf).is_ok() {
                assert_eq!(&buf, b"hello");
                return c;
            }
            assert!(Instant::now() < deadline, "the exposed port never worked");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .join()
    .unwrap();
    assert!(handle.tasks() > 0);

    handle.shutdown();
    tokio::time::timeout(T, handle.join())
        .await
        .expect("join returned");
    assert_eq!(handle.tasks(), 0, "tasks left after join");
    for addr in [exposed, control, vhost] {
        assert!(refused(addr), "{addr} still accepts connections");
    }
    // The user's connection was ended, not left hanging.
    let mut user = user;
    user.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    assert!(!matches!(user.read(&mut buf), Ok(n) if n > 0));
    // Nothing of the server is left in the runtime either (multiplexer drivers
    // included): allow a moment for dropped tasks to be reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.num_alive_tasks() > tasks_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        tasks_before,
        "tasks of the server still alive in the runtime"
    );
    drop(peer);
}
