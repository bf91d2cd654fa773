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
    // Not common::net::keep_freed_heap(): a shared server must hand memory back when
    // peers leave (tests/tests/memory.rs: with it, RSS grew 12.7 -> 24.5 MB over five
    // rounds of 1,000 peers; without, it stays within 10%). The periodic trim is not
    // enough once glibc serves 1 MiB blocks from its arenas.
    let rt = match common::process::runtime(args.threads.map(usize::from)) {
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
