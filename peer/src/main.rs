//! `peer`: the punchline client. Parses arguments, sets up logging, runs
//! ([`peer::cli::run`]), and exits; Ctrl-C ends it.

use std::process::ExitCode;

use clap::Parser;
use peer::cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    common::process::init_logging(peer::cli::default_log_level(args.verbose), args.log_format);
    common::process::raise_fd_limit();
    common::net::keep_freed_heap();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("peer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        common::process::spawn_heap_trimmer();
        tokio::select! {
            r = peer::cli::run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
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
