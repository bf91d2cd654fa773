//! `peer`: the punchline client. Parses arguments, sets up logging, runs
//! ([`peer::cli::run`]), and exits; Ctrl-C or SIGTERM ends it (deleting the router
//! port mappings it holds).

use std::process::ExitCode;

use clap::Parser;
use peer::cli::Args;

/// SIGTERM (systemd's stop, `kill`): a clean stop, like the end of the work.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    common::process::init_logging(peer::cli::default_log_level(args.verbose), args.log_format);
    common::process::raise_fd_limit();
    common::net::keep_freed_heap();
    let rt = match common::process::runtime(args.threads.map(usize::from)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("peer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        common::process::spawn_heap_trimmer();
        let result = tokio::select! {
            r = peer::cli::run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = terminated() => Ok(()),
        };
        // A clean exit deletes the router port mappings still held.
        peer::portmap::release_all().await;
        result
    });
    // Do not wait for a blocked stdin reader.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            common::process::fatal("punchline", &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
