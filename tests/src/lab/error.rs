//! The lab's error type: which command failed, and what it said.

/// Why building, changing or reading the lab failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command ran and exited non-zero.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its stderr (trimmed), or stdout if stderr was empty.
        stderr: String,
    },
    /// A command could not be started (not installed, not executable).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// What `exec` said.
        #[source]
        source: std::io::Error,
    },
    /// A command's output was not what the lab expected.
    #[error("unexpected output of `{command}`: {output}")]
    Parse {
        /// The command line.
        command: String,
        /// The output.
        output: String,
    },
    /// A helper program (`lab-delay`) could not be found.
    #[error("cannot find the `{name}` program: {reason}")]
    Binary {
        /// The program's name.
        name: String,
        /// Where it was looked for, and how to provide it.
        reason: String,
    },
    /// The lab did not become usable in time (a delay program that did not start,
    /// a path that carried no traffic).
    #[error("lab not ready: {0}")]
    NotReady(String),
    /// The request does not fit the lab's spec (e.g. a host the lab does not have).
    #[error("not in this lab: {0}")]
    NotInLab(String),
}

/// The lab's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
