//! Running the system tools the lab is made with (`ip`, `nft`, `sysctl`, `ethtool`):
//! every exit status is checked and a failure carries the command line and its stderr.

use std::io::Write;
use std::process::{Command, Stdio};

use super::error::{Error, Result};

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion (stdin closed, or fed with `input`) and returns its stdout;
/// a non-zero exit is an [`Error::Command`] with the stderr.
pub(crate) fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Result<String> {
    let command = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(Error::Command {
            command,
            status: out.status,
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion and returns its stdout; see [`run_with_input`].
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    run_with_input(cmd, None)
}

/// `program args...`, checked.
pub(crate) fn tool(program: &str, args: &[&str]) -> Result<String> {
    run(Command::new(program).args(args))
}

/// `ip -n NS args...`, checked.
pub(crate) fn ip(ns: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// `ip netns exec NS program args...` (not yet run).
pub(crate) fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program.as_ref());
    crate::give_identity(&mut cmd, program.as_ref());
    cmd
}

/// `ip netns exec NS program args...`, checked.
pub(crate) fn exec(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    run(in_ns(ns, program).args(args))
}

/// One `nft` command (`add rule ...`) in `ns`, checked.
pub(crate) fn nft(ns: &str, command: &str) -> Result<String> {
    exec(ns, "nft", &[command])
}

/// Several `nft` commands in `ns` as one atomic transaction (`nft -f`): all apply or
/// none does.
pub(crate) fn nft_batch(ns: &str, commands: &[String]) -> Result<String> {
    let mut script = commands.join("\n");
    script.push('\n');
    run_with_input(in_ns(ns, "nft").args(["-f", "/dev/stdin"]), Some(&script))
}
