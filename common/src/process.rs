//! What both binaries do to their process at start: logging to stderr (one format for
//! every subcommand of both), the open-files limit, and handing freed heap back to
//! the system. The binaries call these; libraries never install a subscriber.

use std::{io::IsTerminal, str::FromStr, sync::OnceLock};

/// The format [`init_logging`] chose, for [`status`] and [`fatal`].
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The tracing target of [`status`] lines in JSON mode; always enabled at INFO.
const STATUS_TARGET: &str = "punchline::status";

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colour only when stderr is a terminal, so a file or
    /// journald gets plain text.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`, `spans`),
    /// for log collectors. Never coloured.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("{s:?} is not a log format: use text or json")),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Installs the global tracing subscriber: `RUST_LOG` if set, else `default_level`
/// (`"warn"`, `"info"`, `"debug"`), written to stderr in `format`. Call once, first
/// thing in `main`.
pub fn init_logging(default_level: &str, format: LogFormat) {
    let _ = FORMAT.set(format);
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Status lines are for people as much as the log: never filtered out.
    if let Ok(d) = format!("{STATUS_TARGET}=info").parse() {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// A status line for the user (`link up: ...`, `waiting for the other peer`): on
/// stderr as `punchline: MSG`, or with `--log-format json` as a JSON log line at INFO
/// (target `punchline::status`), so that stderr is all JSON.
pub fn status(msg: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::info!(target: STATUS_TARGET, "{msg}"),
        _ => eprintln!("punchline: {msg}"),
    }
}

/// The error that ends the process: `PROGRAM: error: MSG` on stderr, or a JSON log
/// line at ERROR with `--log-format json`.
pub fn fatal(program: &str, msg: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => tracing::error!(target: STATUS_TARGET, "{msg}"),
        _ => eprintln!("{program}: error: {msg}"),
    }
}

/// Whether text logs are coloured: only on a terminal, and not when `NO_COLOR` is set
/// (<https://no-color.org>).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Raises the open-files limit to the hard limit (every carried connection costs
/// descriptors, see [`crate::net::raise_fd_limit`]) and logs what happened.
pub fn raise_fd_limit() {
    match crate::net::raise_fd_limit() {
        Ok(l) if l.after > l.before => {
            tracing::debug!(from = l.before, to = l.after, "raised the open-files limit")
        }
        Ok(l) => tracing::debug!(limit = l.after, "open-files limit"),
        Err(e) => tracing::warn!(%e, "cannot raise the open-files limit"),
    }
}

/// Worker threads when `--threads` is not given: one per core (tokio's default).
///
/// Fewer cost less CPU per request where the tunnel shares its cores with its load:
/// on a 2-core machine, HTTP keep-alive through an exposed port cost 13.4 µs of server
/// CPU per request with 2 workers and 10.3 with 1, the vhost 25 and 16 µs (tokio wakes
/// idle workers to share out each small burst of work, and those wake-ups cost more
/// than the work). One worker is not the default because it slows the birthday
/// punch's spray on a loaded machine: with two busy loops on the 2 cores, the
/// sequential-NAT prediction hit within 32 SYNs in 5 of 10 runs with 1 worker and
/// 5 of 5 with 2 (`lab_birthday::sequential_nat_is_predicted`).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The multi-threaded runtime both binaries run on, with `threads` workers
/// ([`default_threads`] when `None`; `TOKIO_WORKER_THREADS` is not read).
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.unwrap_or_else(default_threads).max(1))
        .enable_all()
        .build()
}

/// Hands freed heap back to the system every
/// [`MALLOC_TRIM_INTERVAL`](crate::defaults::MALLOC_TRIM_INTERVAL), for as long as the
/// runtime runs: a process that carried thousands of connections shrinks again when
/// they end. Call inside a tokio runtime.
pub fn spawn_heap_trimmer() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(crate::defaults::MALLOC_TRIM_INTERVAL);
        loop {
            tick.tick().await;
            trim_heap();
        }
    });
}

/// Hands heap memory that is free back to the system. glibc keeps what departed
/// connections freed in its arenas; other allocators return it by themselves.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists,
    // under the allocator's locks, so it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hands heap memory that is free back to the system (nothing to do here).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("TEXT".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
