//! Shared by the integration tests: finding the real binaries, running them with
//! their output captured, and waiting for what they print (never a fixed sleep).
//!
//! The binaries are the workspace's own `rendezvous` and `peer`, found next to the
//! test executable's profile directory (`target/<profile>/`). The README's test
//! command builds them first (`cargo build --workspace --release`).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

/// Path of a workspace binary built in the same profile as this test.
pub fn bin(name: &str) -> PathBuf {
    lab::find_binary(name).unwrap_or_else(|e| {
        panic!("{e}: build the workspace first (`cargo build --workspace --release`, as the README's test command does)")
    })
}

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    closed: bool,
}

/// Lines a process printed on one stream, with a way to wait for a pattern.
#[derive(Clone, Default)]
pub struct Log(Arc<(Mutex<Lines>, Condvar)>);

impl Log {
    /// Collects the lines of `stream` (by a thread) until it ends.
    pub fn follow(self, stream: impl Read + Send + 'static) {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*self.0;
                m.lock().unwrap().lines.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*self.0;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
    }

    /// Waits until a line contains `pat`; returns it. Panics with the log on timeout.
    pub fn wait_for(&self, pat: &str, limit: Duration) -> String {
        let (m, cv) = &*self.0;
        let deadline = Instant::now() + limit;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.lines.iter().find(|l| l.contains(pat)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline || g.closed {
                panic!(
                    "no line containing {pat:?} within {limit:?}; output was:\n{}",
                    g.lines.join("\n")
                );
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Everything so far.
    pub fn text(&self) -> String {
        self.0 .0.lock().unwrap().lines.join("\n")
    }

    /// Whether some line contains `pat`.
    pub fn contains(&self, pat: &str) -> bool {
        self.0
             .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .any(|l| l.contains(pat))
    }
}

/// A child process killed on drop, with stderr (and optionally stdout) captured.
pub struct Proc {
    pub child: Child,
    pub stdout: Log,
    pub stderr: Log,
    pub name: String,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr captured line by line and stdin null.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env("NO_COLOR", "1").env("RUST_LOG_STYLE", "never");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (stdout, stderr) = (Log::default(), Log::default());
        stdout.clone().follow(child.stdout.take().unwrap());
        stderr.clone().follow(child.stderr.take().unwrap());
        Proc {
            child,
            stdout,
            stderr,
            name: name.to_string(),
        }
    }

    /// Starts `cmd` with stdin fed from `input` by a thread (closed at its end, so the
    /// child sees EOF), and stdout collected in full (returned by [`Proc::output`]).
    pub fn spawn_piped(
        name: &str,
        mut cmd: Command,
        input: Input,
    ) -> (Proc, std::thread::JoinHandle<Vec<u8>>) {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env("NO_COLOR", "1").env("RUST_LOG_STYLE", "never");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            match input {
                Input::Bytes(b) => {
                    let _ = stdin.write_all(&b);
                }
                Input::Endless => {
                    let chunk = data(1 << 16, 3);
                    while stdin.write_all(&chunk).is_ok() {}
                }
            }
        });
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let stderr = Log::default();
        stderr.clone().follow(child.stderr.take().unwrap());
        (
            Proc {
                child,
                stdout: Log::default(),
                stderr,
                name: name.to_string(),
            },
            reader,
        )
    }

    /// Waits for the exit with a bound; kills and panics on timeout.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {limit:?}; stderr:\n{}",
                    self.name,
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a piped child reads on stdin.
pub enum Input {
    /// These bytes, then EOF.
    Bytes(Vec<u8>),
    /// Data until the child stops reading.
    Endless,
}

/// Starts the rendezvous server with `args` (plus `--port 0` unless given) and waits
/// until it listens; returns it and its address.
pub fn rendezvous(mut cmd: Command, args: &[&str]) -> (Proc, std::net::SocketAddr) {
    cmd.args(args);
    if !args.contains(&"--port") {
        cmd.args(["--port", "0"]);
    }
    let p = Proc::spawn("rendezvous", cmd);
    let line = p.stdout.wait_for("listening on", Duration::from_secs(10));
    let addr = line
        .split_whitespace()
        .nth(2)
        .expect("address")
        .parse()
        .expect("socket address");
    (p, addr)
}

/// A command for a workspace binary on this host.
pub fn local(name: &str) -> Command {
    let path = bin(name);
    let mut cmd = Command::new(&path);
    lab::give_identity(&mut cmd, path.as_os_str());
    cmd
}

/// sha256 of bytes, hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic pseudo-random bytes (fast; no need for crypto quality).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    lab::pattern(len, seed)
}

/// Resident memory of process `pid` in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
