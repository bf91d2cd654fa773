//! `rendezvous`: the punchline server. Parses arguments, sets up logging, runs, and
//! shuts down on Ctrl-C.

use std::{net::IpAddr, net::SocketAddr, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The punchline rendezvous server: pairs peers behind NATs and times their punches.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// TCP port to listen on (0: any free port, printed at start).
    #[arg(long, short, default_value_t = common::defaults::SERVER_PORT)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Shared token peers must present. Without one, anyone may use the server.
    #[arg(long, env = "PUNCHLINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A second address for STUN NAT behaviour discovery (RFC 5780), IP[:PORT]. PORT
    /// defaults to the TCP port + 1 (any free port with --port 0). With another IP than
    /// --bind (which must then be an address, not 0.0.0.0), clients can test both IP and
    /// port changes; with the same IP, or a wildcard --bind, only port changes.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_alt)]
    alt_addr: Option<AltAddr>,
    /// Ports peers may expose with `peer expose tcp`, e.g. `2000-3000,3389`. Default:
    /// any port.
    #[arg(long, value_name = "RANGES", value_parser = rendezvous::expose::AllowPorts::parse)]
    allow_ports: Option<rendezvous::expose::AllowPorts>,
    /// Speak the original C demo's text protocol instead (unencrypted).
    #[arg(long)]
    classic: bool,
    /// More logging (-v debug); RUST_LOG overrides. Default: info.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// `--alt-addr`: an IP and maybe a port.
#[derive(Debug, Clone, Copy)]
struct AltAddr {
    ip: IpAddr,
    port: Option<u16>,
}

fn parse_alt(s: &str) -> Result<AltAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(AltAddr {
            ip: a.ip(),
            port: Some(a.port()),
        });
    }
    s.trim_matches(['[', ']'])
        .parse::<IpAddr>()
        .map(|ip| AltAddr { ip, port: None })
        .map_err(|_| format!("{s:?} is not IP or IP:PORT"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if args.verbose > 0 { "debug" } else { "info" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rendezvous: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rendezvous: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bind = SocketAddr::new(args.bind, args.port);
    if args.classic {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        println!("listening on {} (classic)", listener.local_addr()?);
        let token = CancellationToken::new();
        let stop = token.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        return rendezvous::classic::serve(listener, token)
            .await
            .context("classic server");
    }
    if args.token.is_none() {
        warn!("no --token given: ANY peer may use this server (traffic is still encrypted)");
    }
    let alt_addr = args.alt_addr.map(|a| {
        let port = a
            .port
            .unwrap_or(if args.port == 0 { 0 } else { args.port.wrapping_add(1) });
        SocketAddr::new(a.ip, port)
    });
    let handle = rendezvous::spawn(rendezvous::Config {
        bind,
        token: args.token,
        alt_addr,
        allow_ports: args.allow_ports.unwrap_or_default(),
    })
    .await
    .with_context(|| format!("cannot listen on {bind}"))?;
    println!("listening on {}", handle.local_addr());
    if let Some(alt) = handle.alt_addr() {
        println!("stun alternate {alt}");
    }
    let _ = tokio::signal::ctrl_c().await;
    handle.shutdown();
    handle.join().await;
    Ok(())
}
