//! The machine the lab runs on: can it build namespaces at all ([`require_lab`]),
//! where are the lab's programs ([`find_binary`]), and what did crashed test runs
//! leave behind ([`cleanup_stale_labs`]).

use std::path::PathBuf;
use std::sync::OnceLock;

use super::cmd;
use super::error::{Error, Result};

/// Prefix of every namespace the lab makes: `pl-{pid}-{n}-{role}`.
pub(crate) const NS_PREFIX: &str = "pl-";

/// Whether lab tests can run here; `Err` says why not. Checked once per process: the
/// tools are there (`ip`, `nft`, `ethtool`, `ping`) and a namespace can be made.
pub fn lab_available() -> Result<(), String> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK.get_or_init(check).clone()
}

fn check() -> Result<(), String> {
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
        ("ethtool", "--version", "ethtool"),
        ("ping", "-V", "iputils-ping"),
    ] {
        cmd::tool(tool, &[arg]).map_err(|e| {
            format!("`{tool}` is not usable ({e}); install the `{package}` package")
        })?;
    }
    let probe = format!("{NS_PREFIX}{}-probe", std::process::id());
    cmd::tool("ip", &["netns", "add", &probe])
        .map_err(|e| format!("cannot create a network namespace (root needed): {e}"))?;
    cmd::tool("ip", &["netns", "del", &probe]).map_err(|e| e.to_string())?;
    Ok(())
}

/// Call at the top of every lab test: `if !lab::require_lab() { return; }`.
///
/// Returns true if the lab can run. If it cannot, then with `CI=true` in the
/// environment it panics with the reason (a lab that silently stopped running must fail
/// CI); otherwise it prints `SKIP: <reason>` to stderr and returns false.
pub fn require_lab() -> bool {
    match lab_available() {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("the NAT lab cannot run in CI: {reason}")
        }
        Err(reason) => {
            eprintln!("SKIP: {reason}");
            false
        }
    }
}

/// Finds a program of the workspace (`lab-delay`, `peer`, `rendezvous`, ...) built by
/// cargo next to the running executable: in its own directory, or one up when it runs
/// from `target/<profile>/deps/` (as test executables do). Cargo builds a package's
/// binaries before that package's integration tests run, so `cargo test -p lab` finds
/// `lab-delay`; other packages' binaries must have been built (`cargo build`).
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| Error::Binary {
        name: name.into(),
        reason: format!("no current executable: {e}"),
    })?;
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(Error::Binary {
        name: name.into(),
        reason: format!(
            "not at {}; build it (`cargo build --bin {name}`)",
            tried.join(" or ")
        ),
    })
}

/// Deletes the namespaces of labs whose process is gone (killed before its `Lab` was
/// dropped), after killing whatever still runs in them. Returns how many it deleted.
/// [`crate::Lab::new`] calls it once per process.
pub fn cleanup_stale_labs() -> Result<usize> {
    let list = cmd::tool("ip", &["netns", "list"])?;
    let mut deleted = 0;
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(name);
        if cmd::tool("ip", &["netns", "del", name]).is_ok() {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Kills (SIGKILL) every process running in namespace `ns`. Best effort.
pub(crate) fn kill_all_in(ns: &str) {
    let Ok(pids) = cmd::tool("ip", &["netns", "pids", ns]) else {
        return;
    };
    let pids: Vec<&str> = pids.split_whitespace().collect();
    if pids.is_empty() {
        return;
    }
    let mut args = vec!["-KILL"];
    args.extend(pids);
    // A process may have exited meanwhile; that is fine.
    let _ = cmd::tool("kill", &args);
}
