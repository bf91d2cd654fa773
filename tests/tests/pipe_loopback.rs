//! `peer pipe` on loopback (no NAT: the lab tests cover punching). Data both ways
//! intact with half-close, and a peer killed mid-transfer makes the other fail fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(30);

fn pipe_cmd(addr: std::net::SocketAddr, code: &str) -> std::process::Command {
    let mut cmd = local("peer");
    cmd.args(["--server", &addr.to_string(), "pipe", "--code", code])
        .env_remove("PUNCHLINE_TOKEN");
    cmd
}

#[test]
fn both_directions_arrive_intact_and_both_exit_zero() {
    let (_srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let (a_in, b_in) = (data(30 << 20, 1), data(20 << 20, 2));
    let (mut a, a_out) =
        Proc::spawn_piped("peer A", pipe_cmd(addr, "both"), Input::Bytes(a_in.clone()));
    let (mut b, b_out) =
        Proc::spawn_piped("peer B", pipe_cmd(addr, "both"), Input::Bytes(b_in.clone()));
    assert!(a.wait_exit(T).success(), "{}", a.stderr.text());
    assert!(b.wait_exit(T).success(), "{}", b.stderr.text());
    assert_eq!(sha256(&b_out.join().unwrap()), sha256(&a_in));
    assert_eq!(sha256(&a_out.join().unwrap()), sha256(&b_in));
    assert!(a.stderr.contains("link up: direct"), "{}", a.stderr.text());
}

#[test]
fn different_codes_do_not_pair() {
    let (srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
    let (a, _) = Proc::spawn_piped("peer A", pipe_cmd(addr, "one"), Input::Bytes(vec![1]));
    let (b, _) = Proc::spawn_piped("peer B", pipe_cmd(addr, "two"), Input::Bytes(vec![2]));
    a.stderr.wait_for("waiting for the other peer", T);
    b.stderr.wait_for("waiting for the other peer", T);
    // A third peer with code "one" pairs with A, not B.
    let (mut c, c_out) = Proc::spawn_piped("peer C", pipe_cmd(addr, "one"), Input::Bytes(vec![3]));
    assert!(c.wait_exit(T).success(), "{}", c.stderr.text());
    assert_eq!(c_out.join().unwrap(), vec![1]);
    assert!(!b.stderr.contains("paired"), "{}", b.stderr.text());
    assert!(srv.stderr.contains("paired"));
}

#[test]
fn a_killed_peer_makes_the_other_fail_instead_of_hanging() {
    for kill_sender in [false, true] {
        let (_srv, addr) = rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"]);
        let code = format!("kill-{kill_sender}");
        let (mut tx, _) = Proc::spawn_piped("sender", pipe_cmd(addr, &code), Input::Endless);
        let (mut rx, _rx_out) =
            Proc::spawn_piped("receiver", pipe_cmd(addr, &code), Input::Bytes(Vec::new()));
        tx.stderr.wait_for("link up: direct", T);
        rx.stderr.wait_for("link up: direct", T);
        let (victim, survivor) = if kill_sender {
            (&mut tx, &mut rx)
        } else {
            (&mut rx, &mut tx)
        };
        victim.child.kill().unwrap();
        let st = survivor.wait_exit(T);
        assert!(!st.success(), "the survivor must fail when its peer dies");
        let err = survivor.stderr.text();
        assert!(err.contains("link lost after"), "{err}");
    }
}
