//! A new user's first hour, through the real binaries: `peer --server HOST` alone,
//! `pipe` at a terminal (a pseudo-terminal from `script`), a server that cannot be
//! reached or is not a punchline server, log formats, and the error messages a
//! first-time user meets (each asserted word for word where it matters).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

const T: Duration = Duration::from_secs(30);

fn peer_cmd(addr: SocketAddr) -> Command {
    let mut cmd = local("peer");
    cmd.args(["--server", &addr.to_string()])
        .env_remove("PUNCHLINE_TOKEN")
        .env_remove("PUNCHLINE_CODE")
        .env_remove("PUNCHLINE_SERVER");
    cmd
}

fn server() -> (Proc, SocketAddr) {
    rendezvous(local("rendezvous"), &["--bind", "127.0.0.1"])
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Runs `shell` under `script` (a pseudo-terminal on its stdin, stdout and stderr),
/// with `script`'s own stdin a pipe the caller holds open (so the terminal never
/// sees an end of input unless the caller writes Ctrl-D). Returns the process and
/// the pipe.
fn in_terminal(name: &str, shell: &str) -> (Proc, std::process::ChildStdin) {
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", shell, "/dev/null"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("script (util-linux, Debian package bsdutils)");
    let stdin = child.stdin.take().unwrap();
    let (stdout, stderr) = (Log::default(), Log::default());
    follow(&stdout, child.stdout.take().unwrap());
    follow(&stderr, child.stderr.take().unwrap());
    (
        Proc {
            child,
            stdout,
            stderr,
            name: name.into(),
        },
        stdin,
    )
}

fn follow(log: &Log, r: impl Read + Send + 'static) {
    log.clone().follow(r);
}

/// A shell-quoted command line for `script -c`.
fn shell_line(cmd: &Command) -> String {
    let mut parts = vec![quote(cmd.get_program().to_str().unwrap())];
    parts.extend(cmd.get_args().map(|a| quote(a.to_str().unwrap())));
    let envs: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, quote(v?.to_str()?))))
        .collect();
    format!(
        "env -u PUNCHLINE_TOKEN {} {}",
        envs.join(" "),
        parts.join(" ")
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn server_alone_pairs_like_the_c_demo() {
    let (_srv, addr) = server();
    let (a_in, b_in) = (data(3 << 20, 11), data(1 << 20, 12));
    let (mut a, a_out) = Proc::spawn_piped("peer A", peer_cmd(addr), Input::Bytes(a_in.clone()));
    a.stderr.wait_for("waiting for the other peer", T);
    let (mut b, b_out) = Proc::spawn_piped("peer B", peer_cmd(addr), Input::Bytes(b_in.clone()));
    assert!(a.wait_exit(T).success(), "{}", a.stderr.text());
    assert!(b.wait_exit(T).success(), "{}", b.stderr.text());
    assert_eq!(sha256(&b_out.join().unwrap()), sha256(&a_in));
    assert_eq!(sha256(&a_out.join().unwrap()), sha256(&b_in));
    assert!(b.stderr.contains("link up: direct"), "{}", b.stderr.text());
}

/// The README's receive command typed at a terminal (`peer ... pipe --code X > file`,
/// stdin a terminal that never ends): it ends when the sender's data ends, and says it
/// only receives.
#[test]
fn a_receiver_at_a_terminal_ends_with_the_senders_data() {
    let (_srv, addr) = server();
    let dir = std::env::temp_dir().join(format!("punchline-first-use-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("received");
    let mut cmd = peer_cmd(addr);
    cmd.args(["pipe", "--code", "tty-receiver"]);
    let line = format!("{} > {}", shell_line(&cmd), quote(out.to_str().unwrap()));
    let (mut rx, _keep_open) = in_terminal("receiver", &line);
    let sent = data(2 << 20, 21);
    let mut tx_cmd = peer_cmd(addr);
    tx_cmd.args(["pipe", "--code", "tty-receiver"]);
    let (mut tx, _) = Proc::spawn_piped("sender", tx_cmd, Input::Bytes(sent.clone()));
    assert!(tx.wait_exit(T).success(), "{}", tx.stderr.text());
    let st = rx.wait_exit(T);
    assert!(st.success(), "receiver: {}", rx.stdout.text());
    assert!(
        rx.stdout
            .contains("receiving only (stdin is a terminal and stdout is not)"),
        "{}",
        rx.stdout.text()
    );
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&sent));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With stdin and stdout both on a terminal, `pipe` is a chat: what is typed is sent.
#[test]
fn a_terminal_on_both_sides_is_a_chat() {
    let (_srv, addr) = server();
    let mut cmd = peer_cmd(addr);
    cmd.args(["pipe", "--code", "chat"]);
    let (mut chat, mut keyboard) = in_terminal("chatter", &shell_line(&cmd));
    let mut other_cmd = peer_cmd(addr);
    other_cmd.args(["pipe", "--code", "chat"]);
    let (mut other, other_out) = Proc::spawn_piped(
        "other",
        other_cmd,
        Input::Bytes(b"hi from the pipe\n".to_vec()),
    );
    chat.stdout.wait_for("hi from the pipe", T);
    keyboard.write_all(b"typed at the terminal\n").unwrap();
    // Ctrl-D at the start of a line: the terminal's end of input.
    keyboard.write_all(&[4]).unwrap();
    keyboard.flush().unwrap();
    assert!(other.wait_exit(T).success(), "{}", other.stderr.text());
    assert!(chat.wait_exit(T).success(), "{}", chat.stdout.text());
    assert_eq!(other_out.join().unwrap(), b"typed at the terminal\n");
    assert!(!chat.stdout.contains("receiving only"));
}

/// `peer pipe | head`: the reader exits; the peer says that, not "link lost".
#[test]
fn a_closed_local_output_is_not_a_lost_link() {
    let (_srv, addr) = server();
    let mut tx_cmd = peer_cmd(addr);
    tx_cmd.args(["pipe", "--code", "head"]);
    let (tx, _) = Proc::spawn_piped("sender", tx_cmd, Input::Endless);
    let mut rx_cmd = peer_cmd(addr);
    rx_cmd
        .args(["pipe", "--code", "head"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = rx_cmd.spawn().unwrap();
    let stderr = Log::default();
    follow(&stderr, child.stderr.take().unwrap());
    let mut out = child.stdout.take().unwrap();
    // Read the first 100 kB on a thread, so that a link that never comes fails the
    // test with both peers' logs instead of hanging it.
    let (got, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = vec![0u8; 100_000];
        let _ = got.send(out.read_exact(&mut first).map(|()| out));
    });
    let out = match read.recv_timeout(T) {
        Ok(Ok(out)) => out,
        other => panic!(
            "no 100 kB through the link ({other:?});\nsender:\n{}\nreceiver:\n{}",
            tx.stderr.text(),
            stderr.text()
        ),
    };
    drop(out);
    let mut rx = Proc {
        child,
        stdout: Log::default(),
        stderr,
        name: "receiver".into(),
    };
    let st = rx.wait_exit(T);
    assert!(!st.success());
    let err = rx.stderr.text();
    assert!(
        err.contains("cannot write to the local output after")
            && err.contains(
                "the program reading this peer's output exited; the link itself was fine"
            ),
        "{err}"
    );
    assert!(!err.contains("link lost"), "{err}");
}

#[test]
fn a_third_peer_with_a_used_code_is_told() {
    let (_srv, addr) = server();
    let cmd = |n| {
        let mut c = peer_cmd(addr);
        c.args(["pipe", "--code", "only-two"]);
        Proc::spawn_piped(n, c, Input::Bytes(vec![1, 2, 3]))
    };
    let (mut a, _) = cmd("A");
    let (mut b, _) = cmd("B");
    assert!(a.wait_exit(T).success(), "{}", a.stderr.text());
    assert!(b.wait_exit(T).success(), "{}", b.stderr.text());
    let (c, _) = cmd("C");
    let line = c.stderr.wait_for("already paired two other peers", T);
    assert!(
        line.contains("the code \"only-two\" already paired two other peers")
            && line.contains("use a new code for a new transfer"),
        "{line}"
    );
}

/// Something that is not a punchline server at --server (here a fake HTTP server, as
/// on a wrong port): every command says so at once and exits 1.
#[test]
fn a_wrong_port_asks_whether_it_is_a_punchline_server() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            std::thread::spawn(move || {
                let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
                let mut buf = [0u8; 1024];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let want = format!("is {addr} a punchline server? It answered something else");
    let cases: [&[&str]; 3] = [
        &["pipe", "--code", "x"],
        &["serve", "svc", "--local", "127.0.0.1:1", "--secret", "s"],
        &[
            "expose",
            "tcp",
            "--local",
            "127.0.0.1:1",
            "--remote-port",
            "0",
        ],
    ];
    for args in cases {
        let mut cmd = peer_cmd(addr);
        cmd.args(args);
        let started = Instant::now();
        let mut p = Proc::spawn("peer", cmd);
        let st = p.wait_exit(T);
        let err = p.stderr.text();
        assert_eq!(st.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: {err}");
        // Fatal at once, without the start wait.
        assert!(
            started.elapsed() < common::defaults::START_WAIT,
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

/// A server that cannot be reached at start: serve, connect and expose say so and exit
/// 1 after START_WAIT; with --retry-forever they wait and connect once it comes up.
#[test]
fn an_unreachable_server_is_an_error_after_the_start_wait() {
    let addr = closed_port();
    let cases: [&[&str]; 3] = [
        &["serve", "svc", "--local", "127.0.0.1:1", "--secret", "s"],
        &["connect", "svc", "--secret", "s", "--listen", "127.0.0.1:0"],
        &[
            "expose",
            "tcp",
            "--local",
            "127.0.0.1:1",
            "--remote-port",
            "0",
        ],
    ];
    let started = Instant::now();
    let mut procs: Vec<Proc> = cases
        .iter()
        .map(|args| {
            let mut cmd = peer_cmd(addr);
            cmd.args(*args);
            Proc::spawn(args[0], cmd)
        })
        .collect();
    let mut patient = peer_cmd(addr);
    patient.args([
        "--retry-forever",
        "-v",
        "serve",
        "patient",
        "--local",
        "127.0.0.1:1",
        "--secret",
        "s",
    ]);
    let patient = Proc::spawn("patient", patient);
    let wait = common::defaults::START_WAIT;
    for p in &mut procs {
        let st = p.wait_exit(wait + T);
        let err = p.stderr.text();
        assert_eq!(st.code(), Some(1), "{}: {err}", p.name);
        assert!(
            err.contains(&format!("cannot reach the rendezvous server at {addr}"))
                && err.contains(&format!(
                    "gave up after {}s (check --server, or start with --retry-forever to keep trying)",
                    wait.as_secs()
                )),
            "{}: {err}",
            p.name
        );
    }
    let took = started.elapsed();
    assert!(took >= wait, "gave up after {took:?}, before {wait:?}");
    println!("FIRST-USE unreachable server: serve/connect/expose exit 1 after {took:?}");
    // The patient one is still trying; bring the server up on that port.
    assert!(patient
        .stderr
        .contains("cannot reach the rendezvous server"));
    let (_srv, _) = rendezvous(
        local("rendezvous"),
        &["--bind", "127.0.0.1", "--port", &addr.port().to_string()],
    );
    patient.stderr.wait_for("service \"patient\" registered", T);
}

/// `--local` takes a host name, as config files do.
#[test]
fn local_takes_a_host_name() {
    let (_srv, addr) = server();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in backend.incoming() {
            let Ok(mut c) = c else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut cmd = peer_cmd(addr);
    cmd.args([
        "expose",
        "tcp",
        "--local",
        &format!("localhost:{port}"),
        "--remote-port",
        "0",
    ]);
    let p = Proc::spawn("expose", cmd);
    let line = p.stdout.wait_for("exposed", T);
    assert!(
        line.starts_with(&format!("exposed tcp-{port} tcp ")),
        "{line}"
    );
    let remote: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", remote)).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    c.write_all(b"through localhost").unwrap();
    let mut got = [0u8; 17];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"through localhost");
    // Bad forms are clap errors that name the problem.
    let mut bad = peer_cmd(addr);
    bad.args([
        "expose",
        "tcp",
        "--local",
        "localhost",
        "--remote-port",
        "0",
    ]);
    let out = bad.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"localhost\" has no port: use HOST:PORT"),
        "{err}"
    );
}

/// The vhost's 502 for a peer whose local service is down says so.
#[test]
fn a_refused_local_http_service_is_named_in_the_502() {
    let (srv_p, srv) = rendezvous(
        local("rendezvous"),
        &["--bind", "127.0.0.1", "--vhost-http-port", "0"],
    );
    let line = srv_p.stdout.wait_for("http vhost on", T);
    let vhost: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let down = closed_port();
    let mut cmd = peer_cmd(srv);
    cmd.args([
        "expose",
        "http",
        "--local",
        &down.to_string(),
        "--domain",
        "down.example",
    ]);
    let p = Proc::spawn("expose", cmd);
    p.stdout.wait_for("exposed", T);
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "20", "-H", "Host: down.example"])
        .arg(format!("http://{vhost}/"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(
        text.contains(
            "The peer is online, but its local service refused the connection (is it running?)."
        ),
        "{text}"
    );
}

#[test]
fn a_missing_config_file_is_reported_once() {
    for bin_name in ["peer", "rendezvous"] {
        let out = local(bin_name)
            .args(["-c", "/nonexistent/punchline.toml"])
            .env_remove("PUNCHLINE_SERVER")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.matches("No such file or directory").count(),
            1,
            "{bin_name}: {err}"
        );
        assert!(
            err.contains("/nonexistent/punchline.toml: cannot read: No such file or directory"),
            "{bin_name}: {err}"
        );
    }
}

#[test]
fn help_shows_no_empty_env_defaults() {
    let runs: [(&str, &[&str]); 5] = [
        ("peer", &["--help"]),
        ("peer", &["pipe", "--help"]),
        ("peer", &["serve", "--help"]),
        ("peer", &["expose", "http", "--help"]),
        ("rendezvous", &["--help"]),
    ];
    for (b, args) in runs {
        let out = local(b)
            .args(args)
            .env_remove("PUNCHLINE_SERVER")
            .env_remove("PUNCHLINE_TOKEN")
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(!help.contains("=]"), "{b} {args:?}:\n{help}");
        if b == "peer" && args == ["--help"] {
            assert!(help.contains("[env: PUNCHLINE_SERVER]"), "{help}");
            assert!(help.contains("--log-format"), "{help}");
            assert!(help.contains("--retry-forever"), "{help}");
        }
    }
}

/// Text logs have no colour off a terminal and colour on one; `--log-format json`
/// writes one JSON object per line; the same for both binaries.
#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    // Plain: the server's no-token warning, stderr a pipe, NO_COLOR unset.
    let mut cmd = local("rendezvous");
    cmd.env_remove("NO_COLOR")
        .env_remove("PUNCHLINE_TOKEN")
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.contains("WARN") && line.contains("no --token given"),
        "{line:?}"
    );
    assert!(!line.contains('\x1b'), "colour in a pipe: {line:?}");

    // JSON, both binaries.
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_TOKEN")
        .args(["--log-format", "json", "--bind", "127.0.0.1"]);
    let (srv, addr) = rendezvous(cmd, &[]);
    let l = srv.stderr.wait_for("no --token given", T);
    let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON line");
    assert_eq!(v["level"], "WARN", "{l}");
    assert!(v["fields"]["message"]
        .as_str()
        .unwrap()
        .contains("no --token given"));
    let mut cmd = peer_cmd(addr);
    cmd.args(["--log-format", "json", "-v", "pipe", "--code", "json-logs"]);
    let (p, _) = Proc::spawn_piped("peer", cmd, Input::Bytes(Vec::new()));
    let l = p.stderr.wait_for("own TCP mapping measured", T);
    let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON line");
    assert_eq!(v["level"], "INFO", "{l}");
    // Status lines too (without -v): stderr is all JSON.
    let mut cmd = peer_cmd(addr);
    cmd.args(["--log-format", "json", "pipe", "--code", "json-status"]);
    let (p2, _) = Proc::spawn_piped("peer", cmd, Input::Bytes(Vec::new()));
    let l = p2.stderr.wait_for("waiting for the other peer", T);
    let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON line");
    assert_eq!(v["fields"]["message"], "waiting for the other peer", "{l}");
    for l in p.stderr.text().lines().chain(p2.stderr.text().lines()) {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
    }
    // The final error too.
    let out = local("peer")
        .args(["--log-format", "json", "-s", "127.0.0.1:1", "pipe"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).expect("a JSON line");
    assert_eq!(v["level"], "ERROR", "{err}");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the rendezvous server at 127.0.0.1:1"),
        "{err}"
    );

    // Coloured on a terminal.
    let mut cmd = local("rendezvous");
    cmd.args(["--bind", "127.0.0.1", "--port", "0"]);
    let (mut tty, _keep) = in_terminal(
        "rendezvous",
        &shell_line(&cmd).replace("env ", "env -u NO_COLOR "),
    );
    let l = tty.stdout.wait_for("no --token given", T);
    assert!(l.contains("\x1b["), "no colour on a terminal: {l:?}");
    let _ = tty.child.kill();
    // And a bad value is clap's error.
    let out = local("peer")
        .args(["--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a log format: use text or json"));
}

/// nat-check against a server on loopback says what that means, in words that read.
#[test]
fn nat_check_on_loopback_reads_well() {
    let (_srv, addr) = server();
    let out = peer_cmd(addr).arg("nat-check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("the server is on this machine (loopback): this says nothing about the NATs"),
        "{text}"
    );
    assert!(!text.contains("expect relay with nobody"), "{text}");
    assert!(!text.contains("nothing conclusive"), "{text}");
    assert!(text.contains("no peer should need the relay"), "{text}");
}

/// A domain another peer holds: the error names the holder by its fingerprint (what
/// `peer id` prints there) and its proxy, and nothing random.
#[test]
fn a_duplicate_domain_names_the_holder() {
    let (srv_p, srv) = rendezvous(
        local("rendezvous"),
        &["--bind", "127.0.0.1", "--vhost-http-port", "0"],
    );
    srv_p.stdout.wait_for("http vhost on", T);
    let args = [
        "expose",
        "http",
        "--local",
        "127.0.0.1:1",
        "--domain",
        "dup.example",
    ];
    let mut first = peer_cmd(srv);
    first.args(args).args(["--name", "web"]);
    let identity = first
        .get_envs()
        .find(|(k, _)| *k == "PUNCHLINE_IDENTITY")
        .and_then(|(_, v)| v)
        .unwrap()
        .to_owned();
    let holder = Proc::spawn("first", first);
    holder.stdout.wait_for("exposed web http", T);
    let id = Command::new(bin("peer"))
        .arg("id")
        .env("PUNCHLINE_IDENTITY", &identity)
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&id.stdout).trim().to_string();
    assert!(fingerprint.starts_with("pl1:"), "{fingerprint}");
    let mut second = peer_cmd(srv);
    second.args(args);
    let mut p = Proc::spawn("second", second);
    assert_eq!(p.wait_exit(T).code(), Some(1));
    let err = p.stderr.text();
    assert!(
        err.contains(&format!(
            "rendezvous server refused: http-1: host dup.example is held by peer {fingerprint} (proxy 'web')"
        )),
        "{err}"
    );
    assert!(!err.contains("instance"), "{err}");
}

/// Worker threads of a running process, counted from outside (`/proc`): tokio names
/// its workers `tokio-rt-worker` (its blocking threads are named otherwise).
fn workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "tokio-rt-worker")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits until `pid` runs `want` worker threads; fails with the count it saw.
fn expect_workers(pid: u32, want: usize, what: &str) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let n = workers(pid);
        if n == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {n} worker threads, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--threads` / `PUNCHLINE_THREADS` set both binaries' worker threads; without them
/// it is one per core; 0 is refused by name.
#[test]
fn threads_sets_the_worker_threads() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_THREADS");
    let (default, addr) = rendezvous(cmd, &["--bind", "127.0.0.1"]);
    expect_workers(default.child.id(), cores, "rendezvous by default");
    let mut cmd = local("rendezvous");
    cmd.env_remove("PUNCHLINE_THREADS");
    let (three, _) = rendezvous(cmd, &["--bind", "127.0.0.1", "--threads", "3"]);
    expect_workers(three.child.id(), 3, "rendezvous --threads 3");

    let mut cmd = peer_cmd(addr);
    cmd.env("PUNCHLINE_THREADS", "2")
        .args(["pipe", "--code", "threads-test"]);
    let peer = Proc::spawn("peer", cmd);
    expect_workers(peer.child.id(), 2, "peer with PUNCHLINE_THREADS=2");

    for bin in ["peer", "rendezvous"] {
        let out = local(bin)
            .env_remove("PUNCHLINE_THREADS")
            .args(["--threads", "0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bin} --threads 0");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("'--threads <N>': 0 is not in 1..=1024"),
            "{err}"
        );
    }
}
