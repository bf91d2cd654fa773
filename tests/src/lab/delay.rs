//! Starting the `lab-delay` program on a site's link, and knowing when the link works.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::cmd;
use super::env::find_binary;
use super::error::{Error, Result};

/// How long `lab-delay` may take to bind its sockets and print `ready`. It does nothing
/// slow; seconds mean a machine under heavy load, not a slow start.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a freshly built path may take to carry its first ping (ARP included).
pub(crate) const PATH_TIMEOUT: Duration = Duration::from_secs(10);

/// Wait per ping while polling a path: several RTTs of the slowest default link, so a
/// working path answers the first ping, while a dead one is retried soon.
const PING_WAIT_SECS: &str = "0.3";

/// The `lab-delay` program to use: the spec's, else `$LAB_DELAY_BIN`, else the one next
/// to the running executable.
pub(crate) fn delay_binary(configured: Option<&Path>) -> Result<PathBuf> {
    let path = match (configured, std::env::var_os("LAB_DELAY_BIN")) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(path)) => PathBuf::from(path),
        (None, None) => return find_binary("lab-delay"),
    };
    if !path.is_file() {
        return Err(Error::Binary {
            name: "lab-delay".into(),
            reason: format!("{} is not a file", path.display()),
        });
    }
    Ok(path)
}

/// Starts `lab-delay` in namespace `ns`, forwarding between interfaces `a` and `b` with
/// `delay_ms` one way, and waits for it to say `ready`. Its stderr goes to ours.
pub(crate) fn spawn(bin: &Path, ns: &str, a: &str, b: &str, delay_ms: u32) -> Result<Child> {
    let mut command = cmd::in_ns(ns, bin);
    command
        .args(["--a", a, "--b", b, "--delay-ms", &delay_ms.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let line = cmd::describe(&command);
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        command: line.clone(),
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
    }
    let outcome = rx.recv_timeout(START_TIMEOUT);
    if outcome
        .as_deref()
        .is_ok_and(|first| first.trim() == "ready")
    {
        return Ok(child);
    }
    let _ = child.kill();
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    Err(Error::NotReady(match outcome {
        Ok(first) if first.is_empty() => format!("`{line}` exited before it was ready ({status})"),
        Ok(first) => format!("`{line}` said {first:?} instead of ready ({status})"),
        Err(_) => format!("`{line}` did not report ready within {START_TIMEOUT:?}"),
    }))
}

/// Pings `to` from namespace `ns` until it answers, for at most [`PATH_TIMEOUT`].
pub(crate) fn wait_for_path(ns: &str, to: std::net::Ipv4Addr) -> Result<()> {
    let deadline = Instant::now() + PATH_TIMEOUT;
    let to = to.to_string();
    loop {
        let last = match cmd::exec(ns, "ping", &["-c1", "-q", "-W", PING_WAIT_SECS, &to]) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Error::NotReady(format!(
                "no ping from {ns} to {to} got through within {PATH_TIMEOUT:?}: {last}"
            )));
        }
    }
}
