//! `peer`: the punchline client. Parses arguments, sets up logging, runs, exits.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use peer::client::ServerConfig;

/// Connect to another machine behind NAT through a punchline rendezvous server.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Config file: punchline's or frp's `frpc.toml` or `frpc.ini` (serverAddr,
    /// serverPort, auth.token, [[proxies]] of type tcp, udp, http, xtcp and stcp,
    /// [[visitors]] of type xtcp and stcp; see the README's table of frp keys).
    /// Without a command, runs everything the file lists. --server and --token override.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<std::path::PathBuf>,
    /// The rendezvous server, HOST[:PORT] (default port 8877).
    #[arg(long, short, env = "PUNCHLINE_SERVER", global = true)]
    server: Option<String>,
    /// The server's token (must match the server's --token, or a user's token).
    #[arg(
        long,
        short = 't',
        env = "PUNCHLINE_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// This peer's identity file (created on first use, mode 0600). The server knows
    /// the peer's ports, domains and service names by it. Default:
    /// $XDG_CONFIG_HOME/punchline/identity, else ~/.config/punchline/identity.
    #[arg(long, value_name = "FILE", env = "PUNCHLINE_IDENTITY", global = true)]
    identity: Option<std::path::PathBuf>,
    /// Behave like the original C demo's client (text protocol, no encryption).
    #[arg(long)]
    classic: bool,
    /// With --classic: stop after sending this many messages (client1).
    #[arg(long, requires = "classic")]
    count: Option<u32>,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Most carried connections (streams) at once on one multiplexed connection: per
    /// link for `serve` and `connect` (give both sides the same value), on the data
    /// connection to the server for `expose` (the server's own `--max-streams` has the
    /// same default). Past it, a new connection is reset and a warning logged.
    #[arg(long, value_name = "N", global = true,
          default_value_t = common::mux::DEFAULT_MAX_STREAMS, value_parser = parse_max_streams)]
    max_streams: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print this peer's identity fingerprint (creating the identity if there is none).
    ///
    /// The server names the holder of a port, domain or service by this fingerprint.
    Id,
    /// Pair with another peer and bridge stdin/stdout over a direct, encrypted link.
    ///
    /// Run it on two machines: `tar c dir | peer -s HOST pipe --code X` on one and
    /// `peer -s HOST pipe --code X | tar x` on the other. Without --code, the first two
    /// peers to arrive pair up (like the C demo).
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
        /// The local service, ADDR:PORT.
        #[arg(long)]
        local: std::net::SocketAddr,
        /// The shared secret visitors must know (the link key derives from it).
        #[arg(long, env = "PUNCHLINE_SECRET", hide_env_values = true)]
        secret: String,
        /// Most visitors (links) at once.
        #[arg(long, default_value_t = 64)]
        max_links: usize,
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
    },
    /// Expose a local service through the server to ordinary clients (frp's tcp and
    /// http proxies): a TCP port on the server, or an HTTP virtual host.
    Expose {
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
        #[arg(long, value_name = "HOST:PORT")]
        stun: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file (-c FILE) and exit: "syntax is ok", or what to fix.
    Verify,
    /// frp's `frpc tcp`: expose a local TCP service on a port of the server
    /// (`peer tcp -s HOST -P 7000 -t TOKEN -l 22 -r 6000 -n ssh`).
    Tcp(peer::frpc::ProxyArgs),
    /// frp's `frpc udp`: carry datagrams from a UDP port of the server to a local UDP
    /// service (`peer udp -s HOST -P 7000 -t TOKEN -l 53 -r 6053 -n dns`).
    Udp(peer::frpc::ProxyArgs),
    /// frp's `frpc http`: serve a local HTTP service under -d DOMAIN on the server's
    /// vhost port.
    Http(peer::frpc::ProxyArgs),
}

#[derive(Subcommand, Debug)]
enum ExposeKind {
    /// The server listens on --remote-port and carries each connection to --local.
    Tcp {
        /// The local service, ADDR:PORT.
        #[arg(long)]
        local: std::net::SocketAddr,
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
        /// The local HTTP service, ADDR:PORT.
        #[arg(long)]
        local: std::net::SocketAddr,
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

fn expose_proxy(kind: ExposeKind) -> anyhow::Result<peer::expose::Proxy> {
    use common::proto::{ExposeSpec, HttpRoute};
    Ok(match kind {
        ExposeKind::Tcp {
            local,
            remote_port,
            name,
        } => peer::expose::Proxy {
            name: name.unwrap_or_else(|| format!("tcp-{}", local.port())),
            local,
            spec: ExposeSpec::Tcp { remote_port },
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
            peer::expose::Proxy {
                name: name.unwrap_or_else(|| format!("http-{}", local.port())),
                local,
                spec: ExposeSpec::Http(HttpRoute {
                    domains,
                    subdomain,
                    locations,
                    host_rewrite,
                    basic_auth,
                    request_headers,
                    response_headers,
                }),
            }
        }
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.verbose);
    raise_fd_limit();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("peer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Freed heap back to the system now and then (see MALLOC_TRIM_INTERVAL): a peer
        // that carried thousands of connections should shrink again when they end.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(common::defaults::MALLOC_TRIM_INTERVAL);
            loop {
                tick.tick().await;
                trim_heap();
            }
        });
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Do not wait for a blocked stdin reader.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("punchline: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads (or creates) the identity `--identity` names, or the default one.
fn identity(args: &Args) -> anyhow::Result<std::sync::Arc<common::identity::Identity>> {
    use common::identity::Identity;
    let path = match &args.identity {
        Some(p) => p.clone(),
        None => Identity::default_path()?,
    };
    let (id, created) = Identity::load_or_create(&path)?;
    if created {
        eprintln!(
            "punchline: created identity {} in {}",
            id.fingerprint(),
            path.display()
        );
    }
    Ok(std::sync::Arc::new(id))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Id) = &args.command {
        println!("{}", identity(&args)?.fingerprint());
        return Ok(());
    }
    if let Some(Command::Status { json }) = &args.command {
        let all = peer::status::query_all().await;
        if *json {
            let docs: Vec<_> = all.into_iter().filter_map(Result::ok).collect();
            println!("{}", serde_json::to_string_pretty(&docs)?);
        } else {
            print!("{}", peer::status::render(&all));
        }
        return Ok(());
    }
    if let Some(Command::NatCheck { stun, json }) = &args.command {
        return nat_check(&args, stun.as_deref(), *json).await;
    }
    if let Some(Command::Verify) = &args.command {
        let path = args.config.as_ref().context("verify needs -c FILE")?;
        peer::config::load(path)?;
        println!(
            "peer: the configuration file {} syntax is ok",
            path.display()
        );
        return Ok(());
    }
    // frp's proxy commands make the config a file would.
    let (frp_form, file) = match &args.command {
        Some(Command::Tcp(a)) => (true, Some(frp_form(peer::frpc::ProxyType::Tcp, a, &args)?)),
        Some(Command::Udp(a)) => (true, Some(frp_form(peer::frpc::ProxyType::Udp, a, &args)?)),
        Some(Command::Http(a)) => (true, Some(frp_form(peer::frpc::ProxyType::Http, a, &args)?)),
        _ => (
            false,
            args.config.as_deref().map(peer::config::load).transpose()?,
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
    let addr = common::resolve_server(&server, common::defaults::SERVER_PORT)
        .await
        .with_context(|| format!("cannot resolve server {server:?}"))?;
    if args.classic {
        return peer::classic::run(addr, args.count, tokio::io::stdout())
            .await
            .map_err(Into::into);
    }
    let cfg = ServerConfig {
        addr,
        identity: identity(&args)?,
        token: args
            .token
            .or_else(|| file.as_ref().and_then(|f| f.token.clone())),
    };
    let max_streams = args.max_streams;
    // Answers `peer status` while this process runs.
    let _published = peer::status::publish(addr, cfg.identity.fingerprint().to_string());
    let command = match (args.command, file) {
        (None, Some(file)) => return Ok(peer::frpc::run(cfg, file, max_streams).await?),
        (_, Some(file)) if frp_form => return Ok(peer::frpc::run(cfg, file, max_streams).await?),
        (command, _) => command,
    };
    match command {
        Some(Command::Pipe { code, no_relay }) => {
            peer::pipe::run(
                &cfg,
                code,
                !no_relay,
                tokio::io::stdin(),
                tokio::io::stdout(),
            )
            .await?;
            Ok(())
        }
        Some(Command::Serve {
            name,
            local,
            secret,
            max_links,
        }) => {
            let svc = peer::service::ServeConfig {
                name,
                local,
                secret,
                max_links,
                max_streams,
                relay_only: false,
            };
            peer::service::serve(cfg, svc).await?;
            Ok(())
        }
        Some(Command::Connect {
            name,
            secret,
            listen,
            keep_open,
        }) => {
            let svc = peer::service::ConnectConfig {
                name,
                secret,
                listen,
                keep_open,
                max_streams,
                relay_only: false,
            };
            peer::service::connect(cfg, svc).await?;
            Ok(())
        }
        Some(Command::Expose { kind }) => {
            peer::expose::run(cfg, vec![expose_proxy(kind)?], max_streams).await?;
            Ok(())
        }
        Some(Command::NatCheck { .. } | Command::Id | Command::Verify | Command::Status { .. }) => {
            unreachable!("handled above")
        }
        Some(Command::Tcp(_) | Command::Udp(_) | Command::Http(_)) => {
            unreachable!("run as a file above")
        }
        None => anyhow::bail!("no command given: try `peer --server HOST pipe` or `peer --help`"),
    }
}

/// The config of one of frp's proxy commands (`peer tcp ...`).
fn frp_form(
    kind: peer::frpc::ProxyType,
    a: &peer::frpc::ProxyArgs,
    args: &Args,
) -> anyhow::Result<peer::config::ClientConfig> {
    peer::frpc::proxy_config(kind, a, args.server.as_deref(), args.token.clone())
        .map_err(anyhow::Error::msg)
}

/// `peer nat-check`: runs the checks and prints the report (JSON with `--json`).
async fn nat_check(args: &Args, stun: Option<&str>, json: bool) -> anyhow::Result<()> {
    use peer::natcheck::{self, Target};
    let target = match (stun, &args.server) {
        (Some(stun), _) => Target::Stun(
            common::resolve_server(stun, 3478)
                .await
                .with_context(|| format!("cannot resolve STUN server {stun:?}"))?,
        ),
        (None, Some(server)) => Target::Rendezvous(ServerConfig {
            addr: common::resolve_server(server, common::defaults::SERVER_PORT)
                .await
                .with_context(|| format!("cannot resolve server {server:?}"))?,
            token: args.token.clone(),
            identity: identity(args)?,
        }),
        (None, None) => anyhow::bail!(
            "no server given: use --server HOST[:PORT] (or PUNCHLINE_SERVER), or --stun HOST[:PORT]"
        ),
    };
    let report = natcheck::run(&target).await?;
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

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Hands heap memory that is free back to the system (glibc keeps it otherwise).
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

/// Raises the open-files limit to the hard limit: every carried connection costs
/// descriptors (see `common::net::raise_fd_limit`).
fn raise_fd_limit() {
    match common::net::raise_fd_limit() {
        Ok(l) if l.after > l.before => {
            tracing::debug!(from = l.before, to = l.after, "raised the open-files limit")
        }
        Ok(l) => tracing::debug!(limit = l.after, "open-files limit"),
        Err(e) => tracing::warn!(%e, "cannot raise the open-files limit"),
    }
}
