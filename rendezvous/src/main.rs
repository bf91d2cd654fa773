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
    /// Config file: punchline's or frp's `frps.toml` or `frps.ini` (bindAddr, bindPort,
    /// vhostHTTPPort, subDomainHost, auth.token, allowPorts; see the README's table of
    /// frp keys). Flags given too override it.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<std::path::PathBuf>,
    /// TCP port to listen on (0: any free port, printed at start). [default: 8877]
    #[arg(long, short, alias = "bind_port")]
    port: Option<u16>,
    /// Address to listen on. [default: 0.0.0.0]
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Serve HTTP virtual hosts on this port (`peer expose http`); 0: any free port.
    #[arg(long, value_name = "PORT", alias = "vhost_http_port")]
    vhost_http_port: Option<u16>,
    /// Seconds the vhost waits for a peer's response head before answering 504.
    /// [default: 60]
    #[arg(long, value_name = "SECS", alias = "vhost_http_timeout",
          value_parser = clap::value_parser!(u64).range(1..))]
    vhost_http_timeout: Option<u64>,
    /// The domain under which `peer expose http --subdomain NAME` lives
    /// (NAME.DOMAIN).
    #[arg(long, value_name = "DOMAIN", alias = "subdomain_host")]
    subdomain_host: Option<String>,
    /// Shared token peers must present. Without one, anyone may use the server.
    #[arg(long, short = 't', env = "PUNCHLINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A second address for STUN NAT behaviour discovery (RFC 5780), IP[:PORT]. PORT
    /// defaults to the TCP port + 1 (any free port with --port 0). With another IP than
    /// --bind (which must then be an address, not 0.0.0.0), clients can test both IP and
    /// port changes; with the same IP, or a wildcard --bind, only port changes.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_alt)]
    alt_addr: Option<AltAddr>,
    /// Ports peers may expose with `peer expose tcp`, e.g. `2000-3000,3389`. Default:
    /// any port.
    #[arg(long, value_name = "RANGES", value_parser = rendezvous::config::PortRanges::parse_cli)]
    allow_ports: Option<rendezvous::config::PortRanges>,
    /// How long, in seconds, the ports, domains and service names of a peer that went
    /// away stay reserved for it (its identity takes them back at once; everyone else
    /// is refused meanwhile). [default: 60]
    #[arg(long, value_name = "SECS")]
    grace: Option<u64>,
    /// Most user connections at once through the exposed ports and vhost routes of one
    /// peer process (streams on its data connection); past it, new ones are reset and a
    /// warning is logged. The peer's own limit (`peer expose --max-streams`) has the
    /// same default. [default: 65536]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=common::mux::MAX_STREAMS_CAP as u64))]
    max_streams: Option<u64>,
    /// Serve the admin pages on ADDR (IP:PORT, e.g. 127.0.0.1:7500): a dashboard at /,
    /// /api/status (JSON) and /metrics (Prometheus). On an address other than loopback
    /// --admin-password is required.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// User name for the admin pages' basic auth. [default: admin]
    #[arg(long, value_name = "NAME")]
    admin_user: Option<String>,
    /// Password for the admin pages (basic auth, or `Authorization: Bearer PASSWORD`).
    #[arg(long, env = "PUNCHLINE_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// The HTTP vhost ends a request whose body (from the client, or the response's
    /// from the peer) makes no progress for this many seconds: 408, or the client's
    /// connection cut. [default: 60]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    vhost_idle_timeout: Option<u64>,
    /// Most HTTP requests in flight at once from one client address through the vhost;
    /// past it, 429 and a warning. [default: 256]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    vhost_max_per_client: Option<u64>,
    /// Speak the original C demo's text protocol instead (unencrypted).
    #[arg(long)]
    classic: bool,
    /// More logging (-v debug); RUST_LOG overrides. Default: info.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Check a config file (-c FILE) and exit: "syntax is ok", or what to fix.
    Verify,
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
    raise_fd_limit();
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
    if let Some(Command::Verify) = &args.command {
        let path = args.config.as_ref().context("verify needs -c FILE")?;
        rendezvous::config::load(path)?;
        println!(
            "rendezvous: the configuration file {} syntax is ok",
            path.display()
        );
        return Ok(());
    }
    let mut cfg = match &args.config {
        Some(path) => rendezvous::config::load(path)?,
        None => rendezvous::Config::new(SocketAddr::from((
            [0, 0, 0, 0],
            common::defaults::SERVER_PORT,
        ))),
    };
    if let Some(ip) = args.bind {
        cfg.bind.set_ip(ip);
    }
    if let Some(port) = args.port {
        cfg.bind.set_port(port);
    }
    let bind = cfg.bind;
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
    if args.token.is_some() {
        cfg.token = args.token;
    }
    if args.vhost_http_port.is_some() {
        cfg.vhost_http_port = args.vhost_http_port;
    }
    if let Some(secs) = args.vhost_http_timeout {
        cfg.vhost_http_timeout = std::time::Duration::from_secs(secs);
    }
    if args.subdomain_host.is_some() {
        cfg.subdomain_host = args.subdomain_host.map(|d| d.to_ascii_lowercase());
    }
    if let Some(ports) = args.allow_ports {
        cfg.allow_ports = ports;
    }
    if let Some(n) = args.max_streams {
        cfg.max_streams = n as usize;
    }
    if let Some(secs) = args.vhost_idle_timeout {
        cfg.vhost.idle_timeout = std::time::Duration::from_secs(secs);
    }
    if let Some(n) = args.vhost_max_per_client {
        cfg.vhost.max_per_client = n as usize;
    }
    if let Some(secs) = args.grace {
        cfg.grace = std::time::Duration::from_secs(secs);
    }
    if let Some(a) = args.alt_addr {
        let port = a.port.unwrap_or(if bind.port() == 0 {
            0
        } else {
            bind.port().wrapping_add(1)
        });
        cfg.alt_addr = Some(SocketAddr::new(a.ip, port));
    }
    if let Some(addr) = args.admin {
        cfg.admin = Some(rendezvous::admin::AdminConfig::new(addr));
    }
    if let Some(admin) = &mut cfg.admin {
        if let Some(user) = args.admin_user {
            admin.user = user;
        }
        if args.admin_password.is_some() {
            admin.password = args.admin_password;
        }
        rendezvous::admin::check(admin).map_err(anyhow::Error::msg)?;
    } else if args.admin_user.is_some() || args.admin_password.is_some() {
        anyhow::bail!("--admin-user and --admin-password need --admin ADDR (or webServer.port in the config file)");
    }
    if cfg.token.is_none() {
        warn!("no --token given: ANY peer may use this server (traffic is still encrypted)");
    }
    let handle = rendezvous::spawn(cfg)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    println!("listening on {}", handle.local_addr());
    if let Some(alt) = handle.alt_addr() {
        println!("stun alternate {alt}");
    }
    if let Some(vhost) = handle.vhost_addr() {
        println!("http vhost on {vhost}");
    }
    if let Some(admin) = handle.admin_addr() {
        println!("admin on http://{admin}/");
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(common::defaults::MALLOC_TRIM_INTERVAL);
        loop {
            tick.tick().await;
            trim_heap();
        }
    });
    let _ = tokio::signal::ctrl_c().await;
    handle.shutdown();
    handle.join().await;
    Ok(())
}

/// Raises the open-files limit to the hard limit: every user connection and peer
/// costs descriptors (see `common::net::raise_fd_limit`).
fn raise_fd_limit() {
    match common::net::raise_fd_limit() {
        Ok(l) if l.after > l.before => {
            tracing::debug!(from = l.before, to = l.after, "raised the open-files limit")
        }
        Ok(l) => tracing::debug!(limit = l.after, "open-files limit"),
        Err(e) => warn!(%e, "cannot raise the open-files limit"),
    }
}

/// Hands heap memory that is free back to the system. glibc keeps what departed
/// connections freed in its arenas (see [`common::defaults::MALLOC_TRIM_INTERVAL`]);
/// other allocators return it by themselves.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists,
    // under the allocator's locks, so it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}
