//! The C demo's compatibility mode: the original C programs (`demos/c/classic_*.c`)
//! and ours (`rendezvous --classic`, `peer --classic`) stand in for each other.
//!
//! Every combination of server and clients runs one exchange on loopback (client2's
//! stdout must be exactly `Hello, world\n` three times, and both clients must exit 0),
//! and both servers' raw bytes are pinned by acting as the clients with plain
//! `TcpStream`s. Ports are all chosen by the kernel (servers print
//! `listening on ...`); every wait is for a condition, bounded by a timeout.
//!
//! What the tests need, and how they get it:
//!
//! * A C compiler: the C programs are compiled at test time with `$CC` (default `cc`)
//!   into a temporary directory per test, with `-Wall -Wextra -Werror`, so a warning
//!   fails the tests as surely as an error. Without a compiler the tests fail and say
//!   so.
//! * Our binaries: the tests run `cargo build -p rendezvous -p peer` once per run,
//!   in the profile and target directory of the test executable itself, and use
//!   `target/<profile>/rendezvous` and `peer`. So `cargo test -p lab` never tests
//!   stale binaries, whatever was built before (an integration test cannot name
//!   another package's binaries with `CARGO_BIN_EXE_*`). The build is a no-op when
//!   they are up to date (after `cargo build --workspace`). To use binaries built
//!   elsewhere instead, without building, set `PUNCHLINE_BIN_DIR` to their directory.

use std::{
    ffi::OsString,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::watch,
    task::JoinHandle,
    time::timeout,
};

/// Messages client1 sends in each exchange.
const COUNT: usize = 3;

/// What client2 prints for each message.
const MESSAGE: &[u8] = b"Hello, world\n";

/// The server's first line.
const FIRST: &[u8] = b"first\n\0";

/// What both clients print (on stderr) once they know they are client1.
const WAITING: &str = "first: waiting for a second client";

/// Bound on each single wait: a server to listen, a client to reach the server, a
/// line to arrive.
const STEP: Duration = Duration::from_secs(15);

/// Bound on a whole exchange: client1 may dial for up to ten seconds, then sends
/// for two.
const EXCHANGE: Duration = Duration::from_secs(45);

/// Which implementation plays a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    /// `demos/c/classic_server.c` or `classic_client.c`.
    C,
    /// `rendezvous --classic` or `peer --classic`.
    Ours,
}

macro_rules! exchanges {
    ($($name:ident: $server:ident, $client1:ident, $client2:ident;)*) => {$(
        #[tokio::test]
        async fn $name() -> Result<()> {
            exchange(Impl::$server, Impl::$client1, Impl::$client2).await
        }
    )*};
}

exchanges! {
    c_server_and_c_clients: C, C, C;
    our_server_and_c_clients: Ours, C, C;
    c_server_and_our_clients: C, Ours, Ours;
    our_server_and_our_clients: Ours, Ours, Ours;
    c_server_c_client1_our_client2: C, C, Ours;
    c_server_our_client1_c_client2: C, Ours, C;
    our_server_c_client1_our_client2: Ours, C, Ours;
    our_server_our_client1_c_client2: Ours, Ours, C;
}

/// One exchange: client1 connects and is told it is first, then client2 connects;
/// client1 sends [`COUNT`] messages to client2, which prints them.
async fn exchange(server: Impl, client1: Impl, client2: Impl) -> Result<()> {
    let tools = Tools::new([server, client1, client2])?;
    let server = tools.server(server).await?;
    let mut first = tools.client(client1, server.port, "client1")?;
    first.wait_stderr(WAITING).await?;
    let second = tools.client(client2, server.port, "client2")?;
    let second = second.finish(EXCHANGE).await?;
    let first = first.finish(EXCHANGE).await?;
    ensure!(second.status.success(), "{second}");
    ensure!(first.status.success(), "{first}");
    ensure!(
        second.stdout == MESSAGE.repeat(COUNT),
        "client2 printed {:?}, not {COUNT} times {:?}\n{second}",
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(MESSAGE)
    );
    ensure!(
        first.stdout.is_empty(),
        "client1 printed something\n{first}"
    );
    server.proc.ensure_running()
}

#[tokio::test]
async fn c_server_sends_the_exact_bytes() -> Result<()> {
    server_sends_the_exact_bytes(Impl::C).await
}

#[tokio::test]
async fn our_server_sends_the_exact_bytes() -> Result<()> {
    server_sends_the_exact_bytes(Impl::Ours).await
}

/// Two pairs in a row, each client played by a raw `TcpStream`: `first\n\0`, then
/// `<ip1> <port1> <port2>\n\0` to client2 and `<ip2> <port2>\n\0` to client1, then
/// EOF on both.
async fn server_sends_the_exact_bytes(server: Impl) -> Result<()> {
    let tools = Tools::new([server])?;
    let server = tools.server(server).await?;
    for _ in 0..2 {
        let mut a = server.connect().await?;
        expect_bytes(&mut a, FIRST).await?;
        let mut b = server.connect().await?;
        let (pa, pb) = (local_port(&a)?, local_port(&b)?);
        expect_all(&mut b, format!("127.0.0.1 {pa} {pb}\n\0").as_bytes()).await?;
        expect_all(&mut a, format!("127.0.0.1 {pb}\n\0").as_bytes()).await?;
    }
    server.proc.ensure_running()
}

/// Our server (unlike the C one) checks the waiting client when a second arrives:
/// one that left, or that talks (no classic client does), is replaced by the
/// newcomer instead of being paired with it.
#[tokio::test]
async fn our_server_replaces_a_departed_or_talking_first() -> Result<()> {
    let tools = Tools::new([Impl::Ours])?;
    let server = tools.server(Impl::Ours).await?;

    // Each time, the next client connects only once the server's kernel has
    // acknowledged what the previous one did (its FIN, its bytes): the server's
    // check must find it then, however the scheduler orders the two connections.
    let mut gone = server.connect().await?;
    expect_bytes(&mut gone, FIRST).await?;
    let gone_port = local_port(&gone)?;
    drop(gone);
    wait_tcp(gone_port, server.port, "its FIN acknowledged", |tcp| {
        matches!(tcp.state, TCP_FIN_WAIT2 | TCP_TIME_WAIT)
    })
    .await?;
    let mut talker = server.connect().await?;
    expect_bytes(&mut talker, FIRST).await?;
    talker.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    wait_tcp(
        local_port(&talker)?,
        server.port,
        "its bytes acknowledged",
        |tcp| tcp.unacked == 0,
    )
    .await?;

    let mut a = server.connect().await?;
    expect_bytes(&mut a, FIRST).await?;
    let mut b = server.connect().await?;
    let (pa, pb) = (local_port(&a)?, local_port(&b)?);
    expect_all(&mut b, format!("127.0.0.1 {pa} {pb}\n\0").as_bytes()).await?;
    expect_all(&mut a, format!("127.0.0.1 {pb}\n\0").as_bytes()).await?;
    server.proc.ensure_running()
}

/// Our client rejects what the protocol does not allow, with a message that says why.
#[tokio::test]
async fn our_client_rejects_bad_server_lines() -> Result<()> {
    let tools = Tools::new([Impl::Ours])?;
    let long = vec![b'7'; 300];
    // What the fake server sends, whether it then closes, and what the error says.
    let cases: [(&[u8], bool, &str); 5] = [
        (
            b"hello there\n\0",
            false,
            r#"malformed line: "hello there\n""#,
        ),
        (b"127.0.0.1 70000 5\n\0", false, "malformed line"),
        (
            b"first\n\x00127.0.0.1 5 6\n\0",
            false,
            r#"malformed line: "127.0.0.1 5 6\n""#,
        ),
        (&long, false, "longer than 256 bytes"),
        (
            b"first\n",
            true,
            "closed the connection in the middle of a line",
        ),
    ];
    for (sent, then_close, expected) in cases {
        let (port, fake) = fake_server(sent.to_vec(), then_close).await?;
        let done = tools
            .client(Impl::Ours, port, "client")?
            .finish(STEP)
            .await?;
        fake.abort();
        ensure!(
            !done.status.success() && done.stderr.contains(expected),
            "after {:?} expected a failure saying {expected:?}\n{done}",
            String::from_utf8_lossy(sent)
        );
    }
    Ok(())
}

/// A one-connection server that sends `bytes`, and then closes the connection or
/// keeps it open until the client closes it (or the task is aborted).
async fn fake_server(bytes: Vec<u8>, then_close: bool) -> Result<(u16, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        if conn.write_all(&bytes).await.is_err() || then_close {
            return;
        }
        let mut sink = [0u8; 64];
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    Ok((port, task))
}

// ---------------------------------------------------------------------------------
// Programs under test.

/// The programs one test needs: the C ones (compiled for this test) and ours.
struct Tools {
    c: Option<CPrograms>,
    ours: Option<&'static OurBinaries>,
}

impl Tools {
    fn new<const N: usize>(parts: [Impl; N]) -> Result<Tools> {
        let c = if parts.contains(&Impl::C) {
            Some(CPrograms::compile()?)
        } else {
            None
        };
        let ours = if parts.contains(&Impl::Ours) {
            Some(our_binaries()?)
        } else {
            None
        };
        Ok(Tools { c, ours })
    }

    fn c(&self) -> Result<&CPrograms> {
        self.c
            .as_ref()
            .context("C programs not compiled for this test")
    }

    fn ours(&self) -> Result<&'static OurBinaries> {
        self.ours.context("our binaries not built for this test")
    }

    /// Starts a server on a free port and waits until it listens.
    async fn server(&self, kind: Impl) -> Result<Server> {
        let (name, cmd) = match kind {
            Impl::C => {
                let mut cmd = Command::new(&self.c()?.server);
                cmd.arg("0");
                ("classic_server", cmd)
            }
            Impl::Ours => {
                let mut cmd = Command::new(&self.ours()?.rendezvous);
                cmd.args(["--classic", "--port", "0", "--bind", "127.0.0.1"]);
                ("rendezvous --classic", cmd)
            }
        };
        let mut proc = Proc::spawn(name, cmd)?;
        let line = proc.wait_stdout_line("listening on ").await?;
        let port = listening_port(&line)
            .with_context(|| format!("{name} printed {line:?}: no port in it"))?;
        Ok(Server { proc, port })
    }

    /// Starts a client of the server on `port`; client1 sends [`COUNT`] messages.
    fn client(&self, kind: Impl, port: u16, role: &str) -> Result<Proc> {
        let count = COUNT.to_string();
        let (name, cmd) = match kind {
            Impl::C => {
                let mut cmd = Command::new(&self.c()?.client);
                cmd.args(["127.0.0.1", &port.to_string()])
                    .env("CLASSIC_COUNT", &count);
                (format!("{role} (classic_client)"), cmd)
            }
            Impl::Ours => {
                let mut cmd = Command::new(&self.ours()?.peer);
                cmd.args(["--classic", "--server", &format!("127.0.0.1:{port}")])
                    .args(["--count", &count])
                    .env("RUST_LOG", "info")
                    .env("NO_COLOR", "1");
                (format!("{role} (peer --classic)"), cmd)
            }
        };
        Proc::spawn(&name, cmd)
    }
}

/// A running server and its port.
struct Server {
    proc: Proc,
    port: u16,
}

impl Server {
    async fn connect(&self) -> Result<TcpStream> {
        timeout(STEP, TcpStream::connect(("127.0.0.1", self.port)))
            .await
            .context("connecting to the server timed out")?
            .context("cannot connect to the server")
    }
}

/// The port in a `listening on PORT` (C) or `listening on ADDR ...` (ours) line.
fn listening_port(line: &str) -> Option<u16> {
    let token = line
        .strip_prefix("listening on ")?
        .split_whitespace()
        .next()?;
    match token.parse::<SocketAddr>() {
        Ok(addr) => Some(addr.port()),
        Err(_) => token.parse().ok(),
    }
}

/// The C programs, compiled into a temporary directory that goes with them.
struct CPrograms {
    server: PathBuf,
    client: PathBuf,
    _dir: TempDir,
}

impl CPrograms {
    fn compile() -> Result<CPrograms> {
        let cc = std::env::var_os("CC").unwrap_or_else(|| OsString::from("cc"));
        let dir = TempDir::new("classic-c")?;
        let sources = workspace_root().join("demos").join("c");
        let mut built = Vec::new();
        for name in ["classic_server", "classic_client"] {
            let source = sources.join(format!("{name}.c"));
            let binary = dir.0.join(name);
            let output = std::process::Command::new(&cc)
                .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
                .arg(&binary)
                .arg(&source)
                .output()
                .map_err(|err| {
                    anyhow!(
                        "cannot run the C compiler {cc:?} ({err}): these tests compile \
                         demos/c/*.c; install one (e.g. `apt-get install gcc`) or set CC"
                    )
                })?;
            ensure!(
                output.status.success(),
                "{cc:?} failed on {}:\n{}",
                source.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            built.push(binary);
        }
        let client = built.pop().context("no client built")?;
        let server = built.pop().context("no server built")?;
        Ok(CPrograms {
            server,
            client,
            _dir: dir,
        })
    }
}

/// Our two binaries.
struct OurBinaries {
    rendezvous: PathBuf,
    peer: PathBuf,
}

/// Builds our binaries once per test run (see the module documentation).
fn our_binaries() -> Result<&'static OurBinaries> {
    static BINARIES: OnceLock<Result<OurBinaries, String>> = OnceLock::new();
    BINARIES
        .get_or_init(|| build_our_binaries().map_err(|err| format!("{err:#}")))
        .as_ref()
        .map_err(|err| anyhow!("{err}"))
}

fn build_our_binaries() -> Result<OurBinaries> {
    if let Some(dir) = std::env::var_os("PUNCHLINE_BIN_DIR") {
        return OurBinaries::in_dir(Path::new(&dir));
    }
    // The test runs as target/<profile>/deps/classic-<hash>.
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not in target/<profile>/deps", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .context("the profile directory has no parent")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => bail!("strange profile directory {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut build = std::process::Command::new(&cargo);
    // Cargo describes this test's package to it in the environment. Passed on, that
    // description would look like a change to build scripts that watch such variables
    // (ring's watches CARGO_MANIFEST_DIR), and rebuild half the tree every time.
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("CARGO_PKG_") || SET_FOR_TESTS.contains(&key_text.as_ref()) {
            build.env_remove(&key);
        }
    }
    let output = build
        .args(["build", "--quiet", "-p", "rendezvous", "-p", "peer"])
        .args(["--profile", profile, "--target-dir"])
        .arg(target_dir)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cargo:?}"))?;
    ensure!(
        output.status.success(),
        "`cargo build -p rendezvous -p peer --profile {profile}` failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    OurBinaries::in_dir(profile_dir)
}

/// Variables that cargo sets for a test run (besides `CARGO_PKG_*`), and that a nested
/// `cargo build` must not inherit.
const SET_FOR_TESTS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

impl OurBinaries {
    fn in_dir(dir: &Path) -> Result<OurBinaries> {
        let find = |name: &str| {
            let path = dir.join(name);
            ensure!(path.is_file(), "{} is missing", path.display());
            Ok(path)
        };
        Ok(OurBinaries {
            rendezvous: find("rendezvous")?,
            peer: find("peer")?,
        })
    }
}

fn workspace_root() -> PathBuf {
    // This crate lives in <workspace>/tests.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "punchline-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------
// Processes and sockets.

/// A child process with its stdout and stderr collected as they come.
struct Proc {
    name: String,
    child: Child,
    stdout: Output,
    stderr: Output,
}

/// Everything one stream of a process printed so far.
struct Output {
    seen: watch::Receiver<Vec<u8>>,
    reader: JoinHandle<()>,
}

impl Output {
    fn follow(mut stream: impl AsyncRead + Unpin + Send + 'static) -> Output {
        let (tx, seen) = watch::channel(Vec::new());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tx.send_modify(|all| all.extend_from_slice(&buf[..n]));
            }
        });
        Output { seen, reader }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.borrow()).into_owned()
    }
}

/// How a process ended, and what it printed.
struct Finished {
    name: String,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} exited with {}\n--- stdout:\n{}--- stderr:\n{}---",
            self.name,
            self.status,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stdout: Output::follow(stdout),
            stderr: Output::follow(stderr),
        })
    }

    /// Waits until stderr contains `needle`.
    async fn wait_stderr(&mut self, needle: &str) -> Result<()> {
        let seen = &mut self.stderr.seen;
        let found = timeout(
            STEP,
            seen.wait_for(|seen| String::from_utf8_lossy(seen).contains(needle)),
        )
        .await
        .is_ok_and(|found| found.is_ok());
        ensure!(
            found,
            "{} did not print {needle:?}\n{}",
            self.name,
            self.so_far()
        );
        Ok(())
    }

    /// Waits for a whole stdout line that starts with `prefix`; returns it.
    async fn wait_stdout_line(&mut self, prefix: &str) -> Result<String> {
        let find = |seen: &[u8]| {
            let text = String::from_utf8_lossy(seen);
            text.split_inclusive('\n')
                .find(|line| line.starts_with(prefix) && line.ends_with('\n'))
                .map(|line| line.trim_end().to_string())
        };
        let seen = &mut self.stdout.seen;
        let line = match timeout(STEP, seen.wait_for(|seen| find(seen).is_some())).await {
            Ok(Ok(seen)) => find(&seen),
            _ => None,
        };
        line.with_context(|| format!("{} did not print {prefix:?}\n{}", self.name, self.so_far()))
    }

    /// Fails if the process has exited.
    fn ensure_running(mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited with {status}\n{}", self.name, self.so_far()),
        }
    }

    /// Waits for the process to exit (killing it after `limit`) and for its output.
    async fn finish(mut self, limit: Duration) -> Result<Finished> {
        let status = match timeout(limit, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                let _ = self.child.kill().await;
                bail!(
                    "{} still running after {limit:?}\n{}",
                    self.name,
                    self.so_far()
                );
            }
        };
        // The pipes close when the process exits (none of these programs forks).
        for output in [&mut self.stdout, &mut self.stderr] {
            timeout(STEP, &mut output.reader)
                .await
                .context("output still open after exit")??;
        }
        let stdout = self.stdout.seen.borrow().clone();
        Ok(Finished {
            name: self.name,
            status,
            stdout,
            stderr: self.stderr.text(),
        })
    }

    fn so_far(&self) -> String {
        format!(
            "--- stdout:\n{}--- stderr:\n{}---",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

fn local_port(stream: &TcpStream) -> Result<u16> {
    Ok(stream.local_addr()?.port())
}

/// Reads exactly `expected.len()` bytes and compares them.
async fn expect_bytes(stream: &mut TcpStream, expected: &[u8]) -> Result<()> {
    let mut got = vec![0u8; expected.len()];
    timeout(STEP, stream.read_exact(&mut got))
        .await
        .context("timed out reading from the server")?
        .context("reading from the server")?;
    ensure!(
        got == expected,
        "server sent {:?}, expected {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
    Ok(())
}

/// Reads until EOF (at most 1 KiB) and compares with `expected`.
async fn expect_all(stream: &mut TcpStream, expected: &[u8]) -> Result<()> {
    let mut got = Vec::new();
    timeout(STEP, stream.take(1024).read_to_end(&mut got))
        .await
        .context("timed out waiting for the server to close")?
        .context("reading from the server")?;
    ensure!(
        got == expected,
        "server sent {:?} then closed; expected {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
    Ok(())
}

/// `FIN_WAIT2` in `/proc/net/tcp`: our FIN was acknowledged, the other side has not
/// closed yet.
const TCP_FIN_WAIT2: u8 = 0x05;
/// `TIME_WAIT` in `/proc/net/tcp`: both sides have closed.
const TCP_TIME_WAIT: u8 = 0x06;

/// One loopback TCP socket as `/proc/net/tcp` shows it.
struct TcpEntry {
    state: u8,
    /// Bytes sent but not yet acknowledged (`tx_queue`).
    unacked: u64,
}

/// Polls `/proc/net/tcp` until the socket from `local_port` to `remote_port`
/// satisfies `done`. What the kernel says there is the only way to know, without a
/// fixed sleep, that the other end's kernel has processed what this one sent.
async fn wait_tcp(
    local_port: u16,
    remote_port: u16,
    what: &str,
    done: impl Fn(&TcpEntry) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let table = tokio::fs::read_to_string("/proc/net/tcp").await?;
        if find_tcp(&table, local_port, remote_port).is_some_and(|tcp| done(&tcp)) {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the socket from port {local_port} to {remote_port} never had {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn find_tcp(table: &str, local_port: u16, remote_port: u16) -> Option<TcpEntry> {
    let port = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state, queues) = (
            fields.get(1)?,
            fields.get(2)?,
            fields.get(3)?,
            fields.get(4)?,
        );
        if port(local)? != local_port || port(remote)? != remote_port {
            return None;
        }
        Some(TcpEntry {
            state: u8::from_str_radix(state, 16).ok()?,
            unacked: u64::from_str_radix(queues.split_once(':')?.0, 16).ok()?,
        })
    })
}
