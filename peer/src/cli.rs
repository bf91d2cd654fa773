//! The `peer` command line: the arguments (clap), and [`run`], which turns them (and a
//! config file) into the library's calls. `main.rs` only parses, sets up logging and
//! the runtime, calls [`run`] and maps the result to an exit code. Errors here are
//! `anyhow`, as in a binary: they end the process with a message.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::{
    defaults::{SERVER_PORT, SERVICE_MAX_LINKS, START_WAIT, STUN_PORT},
    identity::Identity,
    process::LogFormat,
    proto::{ExposeSpec, HttpRoute},
};

use crate::client::ServerConfig;

/// Connect to another machine behind NAT through a punchline rendezvous server.
///
/// With only --server, pairs with the next peer that does the same and bridges
/// stdin/stdout between the two (`pipe` without a code, the original C demo's pairing).
#[derive(Parser, Debug)]
#[command(name = "peer", version, about, long_about)]
pub struct Args {
    /// Config file: punchline's or frp's `frpc.toml` or `frpc.ini` (serverAddr,
    /// serverPort, auth.token, [[proxies]] of type tcp, udp, http, xtcp and stcp,
    /// [[visitors]] of type xtcp and stcp; see the README's table of frp keys).
    /// Without a command, runs everything the file lists. --server and --token override.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The rendezvous server, HOST[:PORT] (default port 8877).
    #[arg(
        long,
        short,
        value_name = "HOST[:PORT]",
        env = "PUNCHLINE_SERVER",
        hide_env_values = true,
        global = true
    )]
    pub server: Option<String>,
    /// The server's token (must match the server's --token, or a user's token).
    #[arg(
        long,
        short = 't',
        env = "PUNCHLINE_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// This peer's identity file (created on first use, mode 0600). The server knows
    /// the peer's ports, domains and service names by it. Default:
    /// $XDG_CONFIG_HOME/punchline/identity, else ~/.config/punchline/identity.
    #[arg(
        long,
        value_name = "FILE",
        env = "PUNCHLINE_IDENTITY",
        hide_env_values = true,
        global = true
    )]
    pub identity: Option<PathBuf>,
    /// Behave like the original C demo's client (text protocol, no encryption).
    #[arg(long)]
    pub classic: bool,
    /// With --classic: stop after sending this many messages (client1).
    #[arg(long, requires = "classic")]
    pub count: Option<u32>,
    /// Worker threads [default: one per core]. Fewer cost less CPU per request where
    /// the tunnel shares its cores with its load (see the README's performance
    /// section).
    #[arg(long, value_name = "N", env = "PUNCHLINE_THREADS", hide_env_values = true,
          value_parser = clap::value_parser!(u16).range(1..=1024), global = true)]
    pub threads: Option<u16>,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log format on stderr: `text` (coloured only on a terminal) or `json` (one object
    /// per line).
    #[arg(long, value_name = "FORMAT", default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Keep trying to reach the server for ever at start (`serve`, `connect`,
    /// `expose`, a config file). Without it, a server that cannot be reached (or is not
    /// a punchline server) within 10 s of starting is an error (exit 1). Once connected,
    /// a lost server is always retried.
    #[arg(long, global = true)]
    pub retry_forever: bool,
    /// Most carried connections (streams) at once on one multiplexed connection: per
    /// link for `serve` and `connect` (give both sides the same value), on the data
    /// connection to the server for `expose` (the server's own `--max-streams` has the
    /// same default). Past it, a new connection is reset and a warning logged.
    #[arg(long, value_name = "N", global = true,
          default_value_t = common::mux::DEFAULT_MAX_STREAMS, value_parser = parse_max_streams)]
    pub max_streams: usize,
    /// Router port mappings for punch ports: `auto` (PCP, NAT-PMP or UPnP IGD,
    /// whichever the default gateway answers), `off`, or only `pcp`, `nat-pmp`,
    /// `upnp`. A mapped port takes connections from anyone, so a symmetric NAT with
    /// UPnP still gets direct links. Requests go to the default gateway only. Config
    /// key `portmap`.
    #[arg(
        long,
        value_name = "MODE",
        global = true,
        conflicts_with = "no_portmap"
    )]
    pub portmap: Option<crate::portmap::Mode>,
    /// Ask the router for no port mapping (`--portmap off`).
    #[arg(long, global = true)]
    pub no_portmap: bool,
    /// The lease asked for on each port mapping, in seconds (renewed at half of it
    /// while the link lives; deleted when it ends or the peer exits).
    #[arg(long, value_name = "SECS", global = true, value_parser = parse_lease)]
    pub portmap_lease: Option<std::time::Duration>,
    /// What to do (default: `pipe` without a code, or everything -c FILE lists).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print this peer's identity fingerprint (creating the identity if there is none).
    ///
    /// The server names the holder of a port, domain or service by this fingerprint.
    Id,
    /// Pair with another peer and bridge stdin/stdout over a direct, encrypted link.
    ///
    /// Run it on two machines: `tar c dir | peer -s HOST pipe --code X` on one and
    /// `peer -s HOST pipe --code X | tar x` on the other. Without --code, the first two
    /// peers to arrive pair up (like the C demo). Stdin is read unless it is a terminal
    /// while stdout is not (a receiver typed at a terminal ends when the other side's
    /// data ends); with both on a terminal it is a chat.
    Pipe {
        /// Pair only with a peer using the same code; the link key derives from it.
        #[arg(long, env = "PUNCHLINE_CODE", hide_env_values = true)]
        code: Option<String>,
        /// Fail instead of relaying through the server when no direct link can be made.
        #[arg(long)]
        no_relay: bool,
    },
    /// Offer a local TCP service to visitors under NAME (frp's xtcp).
    ///
    /// Visitors run `peer connect NAME --secret S --listen ADDR`; each of their
    /// connections reaches --local on this machine, over a direct link when punching
    /// works, relayed through the server (end-to-end encrypted) when not.
    Serve {
        /// The service's name, unique on the server.
        name: String,
        /// The local service, HOST:PORT (a name like localhost is resolved at
        /// start).
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
        local: String,
        /// The shared secret visitors must know (the link key derives from it).
        #[arg(long, env = "PUNCHLINE_SECRET", hide_env_values = true)]
        secret: String,
        /// Most visitors (links) at once.
        #[arg(long, default_value_t = SERVICE_MAX_LINKS)]
        max_links: usize,
        /// A UDP service: visitors' datagrams are carried to --local over UDP (each
        /// client address a session of its own; frp's sudp).
        #[arg(long)]
        udp: bool,
    },
    /// Reach the service NAME of another peer through a local listener.
    ///
    /// Every connection to --listen becomes a stream on one link to the owner. The
    /// first connection brings the link up (or --keep-open does at once).
    Connect {
        /// The service's name.
        name: String,
        /// The shared secret (must match the owner's).
        #[arg(long, env = "PUNCHLINE_SECRET", hide_env_values = true)]
        secret: String,
        /// Local listener, ADDR:PORT (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Bring the link up at once and keep it up (fail now if it cannot be made).
        #[arg(long)]
        keep_open: bool,
        /// Listen on UDP: each client address's datagrams become a session on the link
        /// to a `serve --udp` service (frp's sudp visitor).
        #[arg(long)]
        udp: bool,
    },
    /// Expose a local service through the server to ordinary clients (frp's tcp and
    /// http proxies): a TCP port on the server, or an HTTP virtual host.
    Expose {
        /// The kind of exposure.
        #[command(subcommand)]
        kind: ExposeKind,
    },
    /// Show what the peers running on this machine (as this user) are doing: their
    /// links (to which service, direct or relayed and how they were made, bytes) and
    /// their exposures.
    ///
    /// Every running peer answers on a socket in $PUNCHLINE_STATUS_DIR (default
    /// $XDG_RUNTIME_DIR/punchline, else /tmp/punchline-UID).
    Status {
        /// Print the peers' status documents as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Find out what the NAT in front of this machine does, over TCP and UDP, and
    /// whether direct links will work.
    ///
    /// Asks the rendezvous server (--server; start it with --alt-addr for the full
    /// picture) or any standard STUN server (--stun). Reports the public address,
    /// whether the local port is kept, mapping and filtering behaviour, hairpinning,
    /// and a verdict. Takes about 3 seconds.
    NatCheck {
        /// Use this STUN server instead of the rendezvous server, HOST[:PORT] (default
        /// port 3478). An RFC 5780 server (e.g. coturn with two addresses) gives mapping
        /// and filtering.
        #[arg(long, value_name = "HOST[:PORT]")]
        stun: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file (-c FILE) and exit: "syntax is ok", or what to fix.
    Verify,
    /// frp's `frpc tcp`: expose a local TCP service on a port of the server
    /// (`peer tcp -s HOST -P 7000 -t TOKEN -l 22 -r 6000 -n ssh`).
    Tcp(crate::frpc::ProxyArgs),
    /// frp's `frpc udp`: carry datagrams from a UDP port of the server to a local UDP
    /// service (`peer udp -s HOST -P 7000 -t TOKEN -l 53 -r 6053 -n dns`).
    Udp(crate::frpc::ProxyArgs),
    /// frp's `frpc http`: serve a local HTTP service under -d DOMAIN on the server's
    /// vhost port.
    Http(crate::frpc::ProxyArgs),
    /// frp's `frpc stcp`: a secret service reached through visitors, relayed by the
    /// server (`peer stcp -l 22 --sk KEY -n ssh`); `peer stcp visitor --server-name
    /// ssh --sk KEY --bind-port 6000` reaches it.
    Stcp(crate::frpc::SecretArgs),
    /// frp's `frpc sudp`: the same for a UDP service (and `peer sudp visitor`).
    Sudp(crate::frpc::SecretArgs),
    /// frp's `frpc xtcp`: the same, punched peer to peer when it can be (and `peer
    /// xtcp visitor`).
    Xtcp(crate::frpc::SecretArgs),
    /// frp's `frpc https`: TLS connections for -d DOMAIN on the server's HTTPS vhost
    /// port, routed by server name (SNI) to the local TLS service, not terminated.
    Https(crate::frpc::ProxyArgs),
}

/// `peer expose tcp|http`.
#[derive(Subcommand, Debug)]
pub enum ExposeKind {
    /// The server listens on --remote-port and carries each connection to --local.
    Tcp {
        /// The local service, HOST:PORT (a name like localhost is resolved at
        /// start).
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
        local: String,
        /// The port on the server (must be inside the server's --allow-ports; 0: the
        /// server chooses and the port is printed).
        #[arg(long)]
        remote_port: u16,
        /// The proxy's name (default: tcp-PORT of --local).
        #[arg(long)]
        name: Option<String>,
    },
    /// The server's vhost port routes requests for --domain (or --subdomain) here.
    Http {
        /// The local HTTP service, HOST:PORT (a name like localhost is resolved at
        /// start).
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
        local: String,
        /// Host names to serve (repeat; wildcards like *.example.com allowed).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// A name under the server's --subdomain-host.
        #[arg(long)]
        subdomain: Option<String>,
        /// Path prefixes to serve (repeat; default /). The longest match wins.
        #[arg(long = "location")]
        locations: Vec<String>,
        /// Require HTTP basic auth, USER:PASSWORD.
        #[arg(long, env = "PUNCHLINE_HTTP_AUTH", hide_env_values = true)]
        basic_auth: Option<String>,
        /// Replace the Host header sent to the local service.
        #[arg(long)]
        host_rewrite: Option<String>,
        /// Set a request header, NAME=VALUE (repeat).
        #[arg(long = "request-header", value_parser = parse_header)]
        request_headers: Vec<(String, String)>,
        /// Set a response header, NAME=VALUE (repeat).
        #[arg(long = "response-header", value_parser = parse_header)]
        response_headers: Vec<(String, String)>,
        /// The proxy's name (default: http-PORT of --local).
        #[arg(long)]
        name: Option<String>,
    },
}

fn parse_max_streams(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if (1..=common::mux::MAX_STREAMS_CAP).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be 1 to {}", common::mux::MAX_STREAMS_CAP))
    }
}

/// `HOST:PORT` with a host name or an IP address (`[v6]:PORT` for IPv6); the name is
/// resolved at start ([`resolve_local`]), as in config files.
pub fn parse_host_port(s: &str) -> Result<String, String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(s.to_string());
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?} has no port: use HOST:PORT, e.g. 127.0.0.1:8080"
        ));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{port:?} is not a port number (HOST:PORT)"));
    }
    let ok_host = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !ok_host {
        return Err(format!(
            "{host:?} is not a host name or IP address (HOST:PORT; IPv6 as [ADDR]:PORT)"
        ));
    }
    Ok(s.to_string())
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("bad header name {k:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The port of `HOST:PORT` (for default proxy names).
fn port_of(local: &str) -> &str {
    local.rsplit_once(':').map_or(local, |(_, p)| p)
}

/// Resolves `--local HOST:PORT` (a name like localhost, or an address).
pub async fn resolve_local(local: &str) -> anyhow::Result<std::net::SocketAddr> {
    tokio::net::lookup_host(local)
        .await
        .with_context(|| format!("--local {local}: cannot resolve"))?
        .next()
        .with_context(|| format!("--local {local}: no address"))
}

/// The proxy `peer expose tcp|http` describes.
pub async fn expose_proxy(kind: ExposeKind) -> anyhow::Result<crate::expose::Proxy> {
    Ok(match kind {
        ExposeKind::Tcp {
            local,
            remote_port,
            name,
        } => crate::expose::Proxy {
            name: name.unwrap_or_else(|| format!("tcp-{}", port_of(&local))),
            local: resolve_local(&local).await?,
            spec: ExposeSpec::Tcp { remote_port },
            compress: false,
        },
        ExposeKind::Http {
            local,
            domains,
            subdomain,
            locations,
            basic_auth,
            host_rewrite,
            request_headers,
            response_headers,
            name,
        } => {
            if domains.is_empty() && subdomain.is_none() {
                anyhow::bail!("expose http needs --domain or --subdomain");
            }
            let basic_auth = match basic_auth {
                Some(s) => {
                    let (u, p) = s
                        .split_once(':')
                        .ok_or_else(|| anyhow::anyhow!("--basic-auth wants USER:PASSWORD"))?;
                    Some((u.to_string(), p.to_string()))
                }
                None => None,
            };
            crate::expose::Proxy {
                name: name.unwrap_or_else(|| format!("http-{}", port_of(&local))),
                local: resolve_local(&local).await?,
                spec: ExposeSpec::Http(HttpRoute {
                    domains,
                    subdomain,
                    locations,
                    host_rewrite,
                    basic_auth,
                    request_headers,
                    response_headers,
                    route_by_user: None,
                }),
                compress: false,
            }
        }
    })
}

/// The log level without `RUST_LOG`: warnings, `-v` info, `-vv` debug.
pub fn default_log_level(verbose: u8) -> &'static str {
    match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    }
}

/// Loads (or creates) the identity at `path`, or the default one.
pub fn load_identity(path: Option<&Path>) -> anyhow::Result<Arc<Identity>> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => Identity::default_path()?,
    };
    let (id, created) = Identity::load_or_create(&path)?;
    if created {
        common::process::status(&format!(
            "created identity {} in {}",
            id.fingerprint(),
            path.display()
        ));
    }
    Ok(Arc::new(id))
}

/// `--portmap-lease`: whole seconds, at least [`PORTMAP_MIN_LEASE`].
///
/// [`PORTMAP_MIN_LEASE`]: common::defaults::PORTMAP_MIN_LEASE
fn parse_lease(s: &str) -> Result<std::time::Duration, String> {
    let min = common::defaults::PORTMAP_MIN_LEASE;
    let secs: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    let d = std::time::Duration::from_secs(u64::from(secs));
    if d < min {
        return Err(format!("at least {} s", min.as_secs()));
    }
    Ok(d)
}

/// The port mapping mode: `--no-portmap`, `--portmap`, the file's `portmap`, auto.
///
/// With no choice made, a server on this host's loopback gets no port mappings: no NAT
/// lies on the way to it, and nothing should be asked of the router on the way out
/// (the tests run peers against a loopback server).
fn portmap_mode(
    args: &Args,
    file: Option<&crate::config::ClientConfig>,
    server: std::net::SocketAddr,
) -> crate::portmap::Mode {
    if args.no_portmap {
        return crate::portmap::Mode::Off;
    }
    args.portmap
        .or_else(|| file.and_then(|f| f.portmap))
        .unwrap_or(if server.ip().is_loopback() {
            crate::portmap::Mode::Off
        } else {
            crate::portmap::Mode::Auto
        })
}

/// Runs what `args` say until it ends (or fails).
pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Id) = &args.command {
        println!("{}", load_identity(args.identity.as_deref())?.fingerprint());
        return Ok(());
    }
    if let Some(Command::Status { json }) = &args.command {
        let all = crate::status::query_all().await;
        if *json {
            // The documents on stdout; a peer that did not answer is named on stderr
            // (the text form shows it in line).
            let mut docs = Vec::new();
            for one in all {
                match one {
                    Ok(doc) => docs.push(doc),
                    Err(e) => eprintln!("peer status: {e}"),
                }
            }
            println!("{}", serde_json::to_string_pretty(&docs)?);
        } else {
            print!("{}", crate::status::render(&all));
        }
        return Ok(());
    }
    if let Some(Command::NatCheck { stun, json }) = &args.command {
        return nat_check(&args, stun.as_deref(), *json).await;
    }
    if let Some(Command::Verify) = &args.command {
        let path = args.config.as_ref().context("verify needs -c FILE")?;
        crate::config::load(path)?;
        println!(
            "peer: the configuration file {} syntax is ok",
            path.display()
        );
        return Ok(());
    }
    // frp's proxy commands make the config a file would.
    let (frp_form, file) = match &args.command {
        Some(Command::Tcp(a)) => (true, Some(frp_form(crate::frpc::ProxyType::Tcp, a, &args)?)),
        Some(Command::Udp(a)) => (true, Some(frp_form(crate::frpc::ProxyType::Udp, a, &args)?)),
        Some(Command::Http(a)) => (
            true,
            Some(frp_form(crate::frpc::ProxyType::Http, a, &args)?),
        ),
        Some(Command::Https(a)) => (
            true,
            Some(frp_form(crate::frpc::ProxyType::Https, a, &args)?),
        ),
        Some(Command::Stcp(a)) => (
            true,
            Some(secret_form(crate::frpc::SecretType::Stcp, a, &args)?),
        ),
        Some(Command::Sudp(a)) => (
            true,
            Some(secret_form(crate::frpc::SecretType::Sudp, a, &args)?),
        ),
        Some(Command::Xtcp(a)) => (
            true,
            Some(secret_form(crate::frpc::SecretType::Xtcp, a, &args)?),
        ),
        _ => (
            false,
            args.config
                .as_deref()
                .map(crate::config::load)
                .transpose()?,
        ),
    };
    let server = match (&file, frp_form) {
        (Some(f), true) => Some(f.server.clone()),
        _ => args
            .server
            .clone()
            .or_else(|| file.as_ref().map(|f| f.server.clone())),
    };
    let Some(server) = server else {
        anyhow::bail!("no rendezvous server given: use --server HOST[:PORT] (or PUNCHLINE_SERVER, or -c FILE)");
    };
    let addr = common::resolve_server(&server, SERVER_PORT)
        .await
        .with_context(|| format!("cannot resolve server {server:?}"))?;
    if args.classic {
        return crate::classic::run(addr, args.count, tokio::io::stdout())
            .await
            .map_err(Into::into);
    }
    let portmap = Arc::new(crate::portmap::Mapper::new(
        portmap_mode(&args, file.as_ref(), addr),
        args.portmap_lease
            .unwrap_or(common::defaults::PORTMAP_LEASE),
    ));
    let cfg = ServerConfig {
        addr,
        identity: load_identity(args.identity.as_deref())?,
        token: args
            .token
            .or_else(|| file.as_ref().and_then(|f| f.token.clone())),
        start_wait: (!args.retry_forever).then_some(START_WAIT),
        portmap,
    };
    let max_streams = args.max_streams;
    // Answers `peer status` while this process runs.
    let _published = crate::status::publish(addr, cfg.identity.fingerprint().to_string());
    let command = match (args.command, file) {
        (None, Some(file)) => return Ok(crate::frpc::run(cfg, file, max_streams).await?),
        (_, Some(file)) if frp_form => return Ok(crate::frpc::run(cfg, file, max_streams).await?),
        (command, _) => command,
    };
    match command {
        // `peer --server HOST` alone: the C demo's pairing, stdin/stdout bridged.
        None => pipe(&cfg, None, true).await,
        Some(Command::Pipe { code, no_relay }) => pipe(&cfg, code, !no_relay).await,
        Some(Command::Serve {
            name,
            local,
            secret,
            max_links,
            udp,
        }) => {
            let svc = crate::service::ServeConfig {
                name,
                local: resolve_local(&local).await?,
                secret,
                max_links,
                max_streams,
                relay_only: false,
                udp,
            };
            crate::service::serve(cfg, svc).await?;
            Ok(())
        }
        Some(Command::Connect {
            name,
            secret,
            listen,
            keep_open,
            udp,
        }) => {
            let svc = crate::service::ConnectConfig {
                name,
                secret,
                listen,
                keep_open,
                max_streams,
                relay_only: false,
                udp,
            };
            crate::service::connect(cfg, svc).await?;
            Ok(())
        }
        Some(Command::Expose { kind }) => {
            crate::expose::run(cfg, vec![expose_proxy(kind).await?], max_streams).await?;
            Ok(())
        }
        Some(Command::NatCheck { .. } | Command::Id | Command::Verify | Command::Status { .. }) => {
            anyhow::bail!("internal: handled above")
        }
        Some(
            Command::Tcp(_)
            | Command::Udp(_)
            | Command::Http(_)
            | Command::Https(_)
            | Command::Stcp(_)
            | Command::Sudp(_)
            | Command::Xtcp(_),
        ) => {
            anyhow::bail!("internal: run as a file above")
        }
    }
}

/// `pipe` on this process's stdin/stdout. Stdin is read unless it is a terminal while
/// stdout is not: `peer pipe | tar x` typed at a terminal receives only, and ends when
/// the other side's data ends, instead of waiting for a Ctrl-D nobody knows to type.
/// With both on a terminal it is a chat; with stdin redirected it is sent.
async fn pipe(cfg: &ServerConfig, code: Option<String>, relay: bool) -> anyhow::Result<()> {
    let read_stdin = !std::io::stdin().is_terminal() || std::io::stdout().is_terminal();
    let input = if read_stdin {
        tokio_util::either::Either::Left(tokio::io::stdin())
    } else {
        common::process::status(
            "receiving only (stdin is a terminal and stdout is not); this side sends nothing",
        );
        tokio_util::either::Either::Right(tokio::io::empty())
    };
    crate::pipe::run(cfg, code, relay, input, tokio::io::stdout()).await?;
    Ok(())
}

/// The config of one of frp's proxy commands (`peer tcp ...`).
fn frp_form(
    kind: crate::frpc::ProxyType,
    a: &crate::frpc::ProxyArgs,
    args: &Args,
) -> anyhow::Result<crate::config::ClientConfig> {
    crate::frpc::proxy_config(kind, a, args.server.as_deref(), args.token.clone())
        .map_err(anyhow::Error::msg)
}

fn secret_form(
    kind: crate::frpc::SecretType,
    a: &crate::frpc::SecretArgs,
    args: &Args,
) -> anyhow::Result<crate::config::ClientConfig> {
    crate::frpc::secret_config(kind, a, args.server.as_deref(), args.token.clone())
        .map_err(anyhow::Error::msg)
}

/// `peer nat-check`: runs the checks and prints the report (JSON with `--json`).
async fn nat_check(args: &Args, stun: Option<&str>, json: bool) -> anyhow::Result<()> {
    use crate::natcheck::{self, Target};
    let target = match (stun, &args.server) {
        (Some(stun), _) => Target::Stun(
            common::resolve_server(stun, STUN_PORT)
                .await
                .with_context(|| format!("cannot resolve STUN server {stun:?}"))?,
        ),
        (None, Some(server)) => {
            let addr = common::resolve_server(server, SERVER_PORT)
                .await
                .with_context(|| format!("cannot resolve server {server:?}"))?;
            Target::Rendezvous(ServerConfig {
                addr,
                token: args.token.clone(),
                identity: load_identity(args.identity.as_deref())?,
                start_wait: None,
                portmap: Arc::new(crate::portmap::Mapper::new(
                    portmap_mode(args, None, addr),
                    common::defaults::PORTMAP_LEASE,
                )),
            })
        }
        (None, None) => anyhow::bail!(
            "no server given: use --server HOST[:PORT] (or PUNCHLINE_SERVER), or --stun HOST[:PORT]"
        ),
    };
    // The rendezvous target's own mapper, or one for the STUN server.
    let mapper = match &target {
        Target::Rendezvous(cfg) => cfg.portmap.clone(),
        Target::Stun(a) => Arc::new(crate::portmap::Mapper::new(
            portmap_mode(args, None, *a),
            common::defaults::PORTMAP_LEASE,
        )),
    };
    let report = natcheck::run(&target, &mapper).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", natcheck::render(&report));
    }
    if !report.reached_server() {
        anyhow::bail!("the server answered neither over TCP nor over UDP");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        for ok in [
            "127.0.0.1:80",
            "localhost:6379",
            "[::1]:22",
            "db.internal:5432",
        ] {
            assert_eq!(parse_host_port(ok).as_deref(), Ok(ok));
        }
        for bad in ["localhost", "localhost:x", ":80", "a b:80", "host:70000"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }
}
