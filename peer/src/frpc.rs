//! Running what a config file lists (`peer -c FILE`), and frp's command-line forms
//! (`peer tcp -s ADDR -P PORT -t TOKEN -l 22 -r 6000 -n ssh`), which make the same
//! [`ClientConfig`] a file would.
//!
//! As in frp, each proxy and visitor starts on its own: one that fails (a port the
//! server refuses, a local listener that cannot be opened) is reported with frp's line
//! `[NAME] start error: ...` and the others keep running; the peer ends only when
//! nothing is left running. Readiness is reported with frp's lines too
//! (`login to server success`, `[NAME] start proxy success`), so that scripts written
//! for frp keep working.

use std::net::SocketAddr;

use common::proto::HttpRoute;
use tokio::task::JoinSet;

use crate::{
    client::ServerConfig,
    config::{ClientConfig, Proxy, ProxyKind, FRP_DEFAULT_PORT},
    expose,
    service::{self, ServiceError},
};

/// Why a config file's run ended.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The file lists nothing to run.
    #[error("the config file lists no proxies or visitors")]
    Empty,
    /// Every proxy and visitor failed; each failure was reported as it happened.
    #[error("every proxy and visitor failed to start (see the start errors above)")]
    AllFailed,
}

fn status(msg: &str) {
    eprintln!("punchline: {msg}");
}

/// Runs every proxy and visitor of `file` until all have ended. `max_streams` is
/// `--max-streams`.
pub async fn run(
    cfg: ServerConfig,
    file: ClientConfig,
    max_streams: usize,
) -> Result<(), RunError> {
    // Each task: its name, and what it ended with.
    let mut tasks: JoinSet<(String, Result<(), ServiceError>)> = JoinSet::new();
    // The name of the task that runs the tcp and http proxies.
    const EXPOSED: &str = "";
    let mut exposed = Vec::new();
    let mut failed = 0usize;
    for p in file.proxies {
        let local = match resolve(&p).await {
            Ok(a) => a,
            Err(why) => {
                status(&format!("[{}] start error: {why}", p.name));
                failed += 1;
                continue;
            }
        };
        match (&p.kind, p.kind.expose_spec()) {
            (_, Some(spec)) => exposed.push(expose::Proxy {
                name: p.name.clone(),
                local,
                spec,
                compress: p.compress,
            }),
            (
                ProxyKind::Xtcp { secret }
                | ProxyKind::Stcp { secret }
                | ProxyKind::Sudp { secret },
                None,
            ) => {
                let svc = service::ServeConfig {
                    name: p.name.clone(),
                    local,
                    secret: secret.clone(),
                    max_links: common::defaults::SERVICE_MAX_LINKS,
                    max_streams,
                    relay_only: matches!(p.kind, ProxyKind::Stcp { .. } | ProxyKind::Sudp { .. }),
                    udp: matches!(p.kind, ProxyKind::Sudp { .. }),
                };
                let cfg = cfg.clone();
                tasks.spawn(async move { (p.name, service::serve(cfg, svc).await) });
            }
            _ => {}
        }
    }
    let exposed_names: Vec<String> = exposed.iter().map(|p| p.name.clone()).collect();
    if !exposed.is_empty() {
        let cfg = cfg.clone();
        // Each refusal is reported by expose::run itself; it fails only when all were.
        tasks.spawn(async move {
            (
                EXPOSED.to_string(),
                expose::run(cfg, exposed, max_streams).await,
            )
        });
    }
    for v in file.visitors {
        let svc = service::ConnectConfig {
            name: v.server_name,
            secret: v.secret,
            listen: v.bind,
            keep_open: v.keep_open,
            max_streams,
            relay_only: v.relay_only,
            udp: v.udp,
        };
        let cfg = cfg.clone();
        tasks.spawn(async move { (v.name, service::connect(cfg, svc).await) });
    }
    if tasks.is_empty() {
        return Err(if failed > 0 {
            RunError::AllFailed
        } else {
            RunError::Empty
        });
    }
    let mut ok_ended = false;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((_, Ok(()))) => ok_ended = true,
            // expose::run has reported each refused proxy already.
            Ok((name, Err(ServiceError::Refused(_)))) if name == EXPOSED => {}
            Ok((name, Err(e))) if name == EXPOSED => {
                for name in &exposed_names {
                    status(&format!("[{name}] start error: {e}"));
                }
            }
            Ok((name, Err(e))) => status(&format!("[{name}] start error: {e}")),
            Err(e) => status(&format!("a task failed: {e}")),
        }
    }
    if ok_ended {
        Ok(())
    } else {
        Err(RunError::AllFailed)
    }
}

/// The proxy's local service address (`localIP` may be a host name).
async fn resolve(p: &Proxy) -> Result<SocketAddr, String> {
    if let Some(a) = p.local_addr() {
        return Ok(a);
    }
    match tokio::net::lookup_host(&p.local).await {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("no address for {}", p.local)),
        Err(e) => Err(format!("cannot resolve {}: {e}", p.local)),
    }
}

/// frp's `frpc tcp|udp|http` flags (frp's long names with `_` work too).
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// The server's port (frp's `-P`; with -s HOST). [default: 7000, frp's]
    #[arg(short = 'P', long = "server-port", alias = "server_port")]
    pub server_port: Option<u16>,
    /// The proxy's name. [default: the type and the local port, e.g. tcp-22]
    #[arg(short = 'n', long = "proxy-name", alias = "proxy_name")]
    pub name: Option<String>,
    /// The local service's address (an IP address or a host name).
    #[arg(
        short = 'i',
        long = "local-ip",
        alias = "local_ip",
        default_value = "127.0.0.1"
    )]
    pub local_ip: String,
    /// The local service's port.
    #[arg(short = 'l', long = "local-port", alias = "local_port")]
    pub local_port: u16,
    /// tcp, udp: the port on the server (0 or absent: the server chooses).
    #[arg(short = 'r', long = "remote-port", alias = "remote_port")]
    pub remote_port: Option<u16>,
    /// http: a domain to serve (repeat, or comma-separated).
    #[arg(
        short = 'd',
        long = "custom-domain",
        alias = "custom_domain",
        value_delimiter = ','
    )]
    pub custom_domains: Vec<String>,
    /// http: a name under the server's subDomainHost.
    #[arg(long = "sd", alias = "subdomain")]
    pub subdomain: Option<String>,
    /// http: path prefixes to serve (comma-separated).
    #[arg(long = "locations", value_delimiter = ',')]
    pub locations: Vec<String>,
    /// http: basic auth user (with --http-pwd).
    #[arg(long = "http-user", alias = "http_user")]
    pub http_user: Option<String>,
    /// http: basic auth password.
    #[arg(long = "http-pwd", alias = "http_pwd", hide_env_values = true)]
    pub http_pwd: Option<String>,
    /// http: the Host header sent to the local service.
    #[arg(long = "host-header-rewrite", alias = "host_header_rewrite")]
    pub host_header_rewrite: Option<String>,
    /// Prefix the proxy's name with USER. (frp's `user`).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// frp's use_encryption: accepted; traffic is always encrypted.
    #[arg(long = "ue", alias = "use_encryption")]
    pub use_encryption: bool,
    /// frp's use_compression: compress the proxy's streams between server and peer
    /// (snappy).
    #[arg(long = "uc", alias = "use_compression")]
    pub use_compression: bool,
}

/// Which of frp's proxy commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyType {
    /// `peer tcp`.
    Tcp,
    /// `peer udp`.
    Udp,
    /// `peer http`.
    Http,
    /// `peer https`.
    Https,
}

/// The config an frp proxy command stands for. `server` is `-s` (HOST, or HOST:PORT
/// when -P is not given; frp's default HOST is 127.0.0.1, its port 7000).
pub fn proxy_config(
    kind: ProxyType,
    args: &ProxyArgs,
    server: Option<&str>,
    token: Option<String>,
) -> Result<ClientConfig, String> {
    let server = server_addr(server, args.server_port);
    let local = local_addr(&args.local_ip, args.local_port)?;
    let kind = match kind {
        ProxyType::Udp => ProxyKind::Udp {
            remote_port: args.remote_port.unwrap_or(0),
        },
        ProxyType::Tcp => ProxyKind::Tcp {
            remote_port: args.remote_port.unwrap_or(0),
        },
        ProxyType::Https => {
            if args.custom_domains.is_empty() && args.subdomain.is_none() {
                return Err("an https proxy needs -d DOMAIN or --sd SUBDOMAIN".into());
            }
            ProxyKind::Https {
                domains: args
                    .custom_domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                subdomain: args.subdomain.as_ref().map(|s| s.to_ascii_lowercase()),
            }
        }
        ProxyType::Http => {
            if args.custom_domains.is_empty() && args.subdomain.is_none() {
                return Err("an http proxy needs -d DOMAIN or --sd SUBDOMAIN".into());
            }
            let basic_auth = match (&args.http_user, &args.http_pwd) {
                (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                (None, None) => None,
                _ => return Err("--http-user and --http-pwd go together".into()),
            };
            ProxyKind::Http(HttpRoute {
                domains: args
                    .custom_domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect(),
                subdomain: args.subdomain.as_ref().map(|s| s.to_ascii_lowercase()),
                locations: args.locations.clone(),
                host_rewrite: args.host_header_rewrite.clone(),
                basic_auth,
                request_headers: Vec::new(),
                response_headers: Vec::new(),
                route_by_user: None,
            })
        }
    };
    let type_name = match kind {
        ProxyKind::Http(_) => "http",
        ProxyKind::Https { .. } => "https",
        ProxyKind::Udp { .. } => "udp",
        _ => "tcp",
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{type_name}-{}", args.local_port));
    let name = match &args.user {
        Some(u) if !u.is_empty() => format!("{u}.{name}"),
        _ => name,
    };
    Ok(ClientConfig {
        server,
        token,
        proxies: vec![Proxy {
            name,
            local,
            kind,
            compress: args.use_compression,
        }],
        visitors: Vec::new(),
        portmap: None,
        no_effect: Vec::new(),
    })
}

/// frp's `frpc stcp|sudp|xtcp` (a secret service) and their `visitor` subcommand
/// (`peer stcp visitor -s HOST -P 7000 -t TOKEN --server-name NAME --sk KEY
/// --bind-port 6000`). frp's long names with `_` work too.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SecretArgs {
    /// `visitor`: reach such a service through a local listener.
    #[command(subcommand)]
    pub visitor: Option<SecretSub>,
    /// The server's port (frp's `-P`; with -s HOST). [default: 7000, frp's]
    #[arg(short = 'P', long = "server-port", alias = "server_port")]
    pub server_port: Option<u16>,
    /// The proxy's name. [default: the type and the local port, e.g. stcp-22]
    #[arg(short = 'n', long = "proxy-name", alias = "proxy_name")]
    pub name: Option<String>,
    /// The local service's address (an IP address or a host name).
    #[arg(
        short = 'i',
        long = "local-ip",
        alias = "local_ip",
        default_value = "127.0.0.1"
    )]
    pub local_ip: String,
    /// The local service's port.
    #[arg(
        short = 'l',
        long = "local-port",
        alias = "local_port",
        required = true
    )]
    pub local_port: Option<u16>,
    /// The secret visitors must know.
    #[arg(
        long = "sk",
        alias = "secret_key",
        required = true,
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// Prefix the proxy's name with USER. (frp's `user`).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// frp's use_encryption: accepted; traffic is always encrypted.
    #[arg(long = "ue", alias = "use_encryption")]
    pub use_encryption: bool,
}

/// The subcommand of [`SecretArgs`].
#[derive(clap::Subcommand, Debug, Clone)]
pub enum SecretSub {
    /// frp's `frpc stcp|sudp|xtcp visitor`.
    Visitor(VisitorArgs),
}

/// frp's visitor flags.
#[derive(clap::Args, Debug, Clone)]
pub struct VisitorArgs {
    /// The server's port (frp's `-P`; with -s HOST). [default: 7000, frp's]
    #[arg(short = 'P', long = "server-port", alias = "server_port")]
    pub server_port: Option<u16>,
    /// The visitor's name, for logs. [default: the service's name]
    #[arg(short = 'n', long = "visitor-name", alias = "visitor_name")]
    pub name: Option<String>,
    /// The service (proxy) to reach.
    #[arg(long = "server-name", alias = "server_name")]
    pub server_name: String,
    /// Its secret.
    #[arg(long = "sk", alias = "secret_key", hide_env_values = true)]
    pub secret: String,
    /// The local listener's address.
    #[arg(long = "bind-addr", alias = "bind_addr", default_value = "127.0.0.1")]
    pub bind_addr: std::net::IpAddr,
    /// The local listener's port (0: any free port, printed).
    #[arg(long = "bind-port", alias = "bind_port", default_value_t = 0)]
    pub bind_port: u16,
    /// The owner's `user` (frp's `-u`): the service is `USER.NAME` on the server.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// frp's use_encryption: accepted; traffic is always encrypted.
    #[arg(long = "ue", alias = "use_encryption")]
    pub use_encryption: bool,
}

/// Which secret service: frp's stcp, sudp or xtcp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretType {
    /// `peer stcp`: relayed through the server.
    Stcp,
    /// `peer sudp`: UDP, relayed through the server.
    Sudp,
    /// `peer xtcp`: punched when it can be.
    Xtcp,
}

/// The config an frp `stcp|sudp|xtcp [visitor]` command stands for (`server` as in
/// [`proxy_config`]).
pub fn secret_config(
    kind: SecretType,
    args: &SecretArgs,
    server: Option<&str>,
    token: Option<String>,
) -> Result<ClientConfig, String> {
    let server_port = match &args.visitor {
        Some(SecretSub::Visitor(v)) => v.server_port,
        None => args.server_port,
    };
    let server = server_addr(server, server_port);
    let type_name = match kind {
        SecretType::Stcp => "stcp",
        SecretType::Sudp => "sudp",
        SecretType::Xtcp => "xtcp",
    };
    if let Some(SecretSub::Visitor(v)) = &args.visitor {
        let server_name = match &v.user {
            Some(u) if !u.is_empty() => format!("{u}.{}", v.server_name),
            _ => v.server_name.clone(),
        };
        return Ok(ClientConfig {
            server,
            token,
            proxies: Vec::new(),
            visitors: vec![crate::config::Visitor {
                name: v.name.clone().unwrap_or_else(|| v.server_name.clone()),
                server_name,
                secret: v.secret.clone(),
                bind: SocketAddr::new(v.bind_addr, v.bind_port),
                keep_open: false,
                relay_only: kind != SecretType::Xtcp,
                udp: kind == SecretType::Sudp,
            }],
            no_effect: Vec::new(),
            portmap: None,
        });
    }
    let (Some(local_port), Some(secret)) = (args.local_port, args.secret.clone()) else {
        return Err(format!(
            "an {type_name} proxy needs -l LOCAL_PORT and --sk SECRET"
        ));
    };
    let local = local_addr(&args.local_ip, local_port)?;
    let kind = match kind {
        SecretType::Stcp => ProxyKind::Stcp { secret },
        SecretType::Sudp => ProxyKind::Sudp { secret },
        SecretType::Xtcp => ProxyKind::Xtcp { secret },
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("{type_name}-{local_port}"));
    let name = match &args.user {
        Some(u) if !u.is_empty() => format!("{u}.{name}"),
        _ => name,
    };
    Ok(ClientConfig {
        server,
        token,
        proxies: vec![Proxy {
            name,
            local,
            kind,
            compress: false,
        }],
        visitors: Vec::new(),
        no_effect: Vec::new(),
        portmap: None,
    })
}

/// The server of an frp command: `-s` (HOST, or HOST:PORT when -P is not given;
/// frp's default HOST is 127.0.0.1) and `-P` (default 7000, frp's).
fn server_addr(server: Option<&str>, port: Option<u16>) -> String {
    let host = server.unwrap_or("127.0.0.1");
    match port {
        Some(p) => format!("{}:{p}", host_only(host)),
        None if has_port(host) => host.to_string(),
        None => format!("{}:{FRP_DEFAULT_PORT}", host_only(host)),
    }
}

/// The local service of an frp command: `-i` (an IP address or a host name) and `-l`.
fn local_addr(ip: &str, port: u16) -> Result<String, String> {
    match common::config::parse_ip(ip) {
        Some(ip) => Ok(SocketAddr::new(ip, port).to_string()),
        None if common::config::is_host_name(ip) => Ok(format!("{ip}:{port}")),
        None => Err(format!("{ip:?} is not an IP address or a host name")),
    }
}

fn has_port(host: &str) -> bool {
    if host.starts_with('[') {
        return host.contains("]:");
    }
    host.matches(':').count() == 1
}

fn host_only(host: &str) -> &str {
    if has_port(host) {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(local_port: u16) -> ProxyArgs {
        ProxyArgs {
            server_port: None,
            name: None,
            local_ip: "127.0.0.1".into(),
            local_port,
            remote_port: None,
            custom_domains: Vec::new(),
            subdomain: None,
            locations: Vec::new(),
            http_user: None,
            http_pwd: None,
            host_header_rewrite: None,
            user: None,
            use_encryption: false,
            use_compression: false,
        }
    }

    #[test]
    fn frp_command_lines() {
        let mut a = args(22);
        a.remote_port = Some(6000);
        a.server_port = Some(7100);
        let c = proxy_config(ProxyType::Tcp, &a, Some("frps.example.com"), None).unwrap();
        assert_eq!(c.server, "frps.example.com:7100");
        assert_eq!(c.proxies[0].name, "tcp-22");
        assert_eq!(c.proxies[0].kind, ProxyKind::Tcp { remote_port: 6000 });
        let c = proxy_config(ProxyType::Tcp, &args(22), None, None).unwrap();
        assert_eq!(c.server, "127.0.0.1:7000");
        let c = proxy_config(ProxyType::Tcp, &args(22), Some("h:7001"), None).unwrap();
        assert_eq!(c.server, "h:7001");
        let e = proxy_config(ProxyType::Http, &args(80), None, None).unwrap_err();
        assert!(e.contains("-d DOMAIN"), "{e}");
        let c = proxy_config(ProxyType::Udp, &args(53), None, None).unwrap();
        assert_eq!(c.proxies[0].name, "udp-53");
        assert_eq!(c.proxies[0].kind, ProxyKind::Udp { remote_port: 0 });
    }
}
