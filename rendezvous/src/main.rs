//! `rendezvous`: the punchline server. Parses arguments, sets up logging, runs
//! ([`rendezvous::cli::run`]) and shuts down on Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use rendezvous::cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    common::process::init_logging(
        rendezvous::cli::default_log_level(args.verbose),
        args.log_format,
    );
    common::process::raise_fd_limit();
    common::net::keep_freed_heap();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rendezvous: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(rendezvous::cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            common::process::fatal("rendezvous", &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
