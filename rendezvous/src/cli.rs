//! The `rendezvous` command line: the arguments (clap) and [`run`], which applies them
//! over a config file and runs the server until Ctrl-C. `main.rs` only parses, sets up
//! logging and the runtime, and calls [`run`]. Errors here are `anyhow`, as in a
//! binary: they end the process with a message.

use std::{net::IpAddr, net::SocketAddr};

use anyhow::Context;
use clap::Parser;
use common::process::LogFormat;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The punchline rendezvous server: pairs peers behind NATs and times their punches.
#[derive(Parser, Debug)]
#[command(name = "rendezvous", version, about, long_about = None)]
pub struct Args {
    /// Config file: punchline's or frp's `frps.toml` or `frps.ini` (bindAddr, bindPort,
    /// vhostHTTPPort, subDomainHost, auth.token, allowPorts; see the README's table of
    /// frp keys). Flags given too override it.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<std::path::PathBuf>,
    /// TCP port to listen on (0: any free port, printed at start). [default: 8877]
    #[arg(long, short, alias = "bind_port")]
    pub port: Option<u16>,
    /// Address to listen on. [default: 0.0.0.0]
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Serve HTTP virtual hosts on this port (`peer expose http`); 0: any free port.
    #[arg(long, value_name = "PORT", alias = "vhost_http_port")]
    pub vhost_http_port: Option<u16>,
    /// Route TLS connections on this port by their server name (SNI) to `peer
    /// https` / `type = "https"` proxies, without terminating TLS; 0: any free port.
    #[arg(long, value_name = "PORT", alias = "vhost_https_port")]
    pub vhost_https_port: Option<u16>,
    /// Answer HTTP CONNECT requests on this port for `type = "tcpmux"` proxies (frp's
    /// tcpmuxHTTPConnectPort), routed by the requested host; 0: any free port.
    #[arg(long, value_name = "PORT", alias = "tcpmux_http_connect_port")]
    pub tcpmux_http_connect_port: Option<u16>,
    /// Seconds the vhost waits for a peer's response head before answering 504.
    /// [default: 60]
    #[arg(long, value_name = "SECS", alias = "vhost_http_timeout",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub vhost_http_timeout: Option<u64>,
    /// The domain under which `peer expose http --subdomain NAME` lives
    /// (NAME.DOMAIN).
    #[arg(long, value_name = "DOMAIN", alias = "subdomain_host")]
    pub subdomain_host: Option<String>,
    /// Shared token peers must present. Without one, anyone may use the server.
    #[arg(long, short = 't', env = "PUNCHLINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A second address for STUN NAT behaviour discovery (RFC 5780), IP[:PORT]. PORT
    /// defaults to the TCP port + 1 (any free port with --port 0). With another IP than
    /// --bind (which must then be an address, not 0.0.0.0), clients can test both IP and
    /// port changes; with the same IP, or a wildcard --bind, only port changes.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_alt)]
    pub alt_addr: Option<AltAddr>,
    /// A second port on the same address, answering STUN over UDP and TCP, from which
    /// peers tell a NAT that maps per destination (symmetric) from one that does not
    /// (`peer nat-check`, and pairing's choice of direct, birthday punch or relay).
    /// PORT, 0 for any free port, or `off`. [default: --port + 1; if that port is
    /// taken, the server starts without it and warns]
    #[arg(long, value_name = "PORT|off", value_parser = crate::config::AltPort::parse_cli, conflicts_with = "alt_addr")]
    pub alt_port: Option<crate::config::AltPort>,
    /// Ports peers may expose with `peer expose tcp`, e.g. `2000-3000,3389`. Default:
    /// any port.
    #[arg(long, value_name = "RANGES", value_parser = crate::config::PortRanges::parse_cli)]
    pub allow_ports: Option<crate::config::PortRanges>,
    /// How long, in seconds, the ports, domains and service names of a peer that went
    /// away stay reserved for it (its identity takes them back at once; everyone else
    /// is refused meanwhile). [default: 60]
    #[arg(long, value_name = "SECS")]
    pub grace: Option<u64>,
    /// Most user connections at once through the exposed ports and vhost routes of one
    /// peer process (streams on its data connection); past it, new ones are reset and a
    /// warning is logged. The peer's own limit (`peer expose --max-streams`) has the
    /// same default. [default: 65536]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=common::mux::MAX_STREAMS_CAP as u64))]
    pub max_streams: Option<u64>,
    /// Serve the admin pages on ADDR (IP:PORT, e.g. 127.0.0.1:7500): a dashboard at /,
    /// /api/status (JSON) and /metrics (Prometheus). On an address other than loopback
    /// --admin-password is required.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// User name for the admin pages' basic auth. [default: admin]
    #[arg(long, value_name = "NAME")]
    pub admin_user: Option<String>,
    /// Password for the admin pages (basic auth, or `Authorization: Bearer PASSWORD`).
    #[arg(long, env = "PUNCHLINE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// The HTTP vhost ends a request whose body (from the client, or the response's
    /// from the peer) makes no progress for this many seconds: 408, or the client's
    /// connection cut. [default: 60]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub vhost_idle_timeout: Option<u64>,
    /// Most connections at once from one client address to one exposed TCP port (past
    /// it, reset), and HTTP requests in flight from one address through the vhost
    /// (past it, 429); a warning is logged. [default: 16384]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_per_client: Option<u64>,
    /// Speak the original C demo's text protocol instead (unencrypted).
    #[arg(long)]
    pub classic: bool,
    /// Worker threads [default: one per core]. Fewer cost less CPU per request where
    /// the tunnel shares its cores with its load (see the README's performance
    /// section).
    #[arg(long, value_name = "N", env = "PUNCHLINE_THREADS", hide_env_values = true,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// More logging (-v debug); RUST_LOG overrides. Default: info.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr: `text` (coloured only on a terminal) or `json` (one object
    /// per line).
    #[arg(long, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do (default: run the server).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Check a config file (-c FILE) and exit: "syntax is ok", or what to fix.
    Verify,
}

/// `--alt-addr`: an IP and maybe a port.
#[derive(Debug, Clone, Copy)]
pub struct AltAddr {
    /// The address.
    pub ip: IpAddr,
    /// The port, if given.
    pub port: Option<u16>,
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

/// Runs the server `args` describe until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Verify) = &args.command {
        let path = args.config.as_ref().context("verify needs -c FILE")?;
        crate::config::load(path)?;
        println!(
            "rendezvous: the configuration file {} syntax is ok",
            path.display()
        );
        return Ok(());
    }
    let mut cfg = match &args.config {
        Some(path) => crate::config::load(path)?,
        None => crate::Config::new(SocketAddr::from((
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
        return crate::classic::serve(listener, token)
            .await
            .context("classic server");
    }
    if args.token.is_some() {
        cfg.token = args.token;
    }
    if args.vhost_http_port.is_some() {
        cfg.vhost_http_port = args.vhost_http_port;
    }
    if args.vhost_https_port.is_some() {
        cfg.vhost_https_port = args.vhost_https_port;
    }
    if args.tcpmux_http_connect_port.is_some() {
        cfg.tcpmux_http_connect_port = args.tcpmux_http_connect_port;
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
    if let Some(n) = args.max_per_client {
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
    if let Some(p) = args.alt_port {
        cfg.alt_port = p;
    }
    if let Some(addr) = args.admin {
        cfg.admin = Some(crate::admin::AdminConfig::new(addr));
    }
    if let Some(admin) = &mut cfg.admin {
        if let Some(user) = args.admin_user {
            admin.user = user;
        }
        if args.admin_password.is_some() {
            admin.password = args.admin_password;
        }
        crate::admin::check(admin).map_err(anyhow::Error::msg)?;
    } else if args.admin_user.is_some() || args.admin_password.is_some() {
        anyhow::bail!("--admin-user and --admin-password need --admin ADDR (or webServer.port in the config file)");
    }
    if cfg.token.is_none() {
        warn!("no --token given: ANY peer may use this server (traffic is still encrypted)");
    }
    let handle = crate::spawn(cfg)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    println!("listening on {}", handle.local_addr());
    if let Some(alt) = handle.alt_addr() {
        println!("stun alternate {alt}");
    }
    if let Some(vhost) = handle.vhost_addr() {
        println!("http vhost on {vhost}");
    }
    if let Some(https) = handle.https_addr() {
        println!("https vhost on {https}");
    }
    if let Some(mux) = handle.tcpmux_addr() {
        println!("tcpmux on {mux}");
    }
    if let Some(admin) = handle.admin_addr() {
        println!("admin on http://{admin}/");
    }
    common::process::spawn_heap_trimmer();
    let _ = tokio::signal::ctrl_c().await;
    handle.shutdown();
    handle.join().await;
    Ok(())
}

/// The log level without `RUST_LOG`: info, `-v` debug.
pub fn default_log_level(verbose: u8) -> &'static str {
    if verbose > 0 {
        "debug"
    } else {
        "info"
    }
}
