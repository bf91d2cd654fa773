//! Server config files (`rendezvous -c FILE`): frp's `frps.toml` format (frp v0.52 and
//! later) for the keys that map onto what punchline does.
//!
//! One parser reads both frp's files and punchline's own (`rendezvous.toml`): they have
//! the same keys, and punchline's few extras live in a `[punchline]` table that frp
//! does not have. `examples/frps.toml` and `examples/rendezvous.toml` show both.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `bindAddr` | IP address to listen on (`"::"` or `"[::]"` for IPv6) | `"0.0.0.0"` |
//! | `bindPort` | TCP port peers connect to (0: any free port) | `7000`, frp's (the CLI's is 8877) |
//! | `vhostHTTPPort` | port of the HTTP virtual hosts; 0 or absent: none | none |
//! | `tcpmuxHTTPConnectPort` | port where HTTP CONNECT requests reach tcpmux proxies; 0 or absent: none | none |
//! | `vhostHTTPSPort` | port of the HTTPS virtual hosts (TLS routed by SNI, not terminated); 0 or absent: none | none |
//! | `subDomainHost` | domain under which `subdomain` proxies live (lowercased) | none |
//! | `auth.method` | `"token"`, the only method | `"token"` |
//! | `auth.token` | the token peers must present (not empty) | none: anyone may connect |
//! | `allowPorts` | ports tcp proxies may ask for: `[{ start = 2000, end = 3000 }, { single = 3001 }]`; `[]` means all | all |
//! | `[[users]]` | users of a shared server: `name`, `token` (their own), `allowPorts` (as above; none if absent), `allowDomains` (`"a.example.com"`, `"*.a.example.com"`, `"*"` for everything including the catch-all; none if absent), `maxExposures` (default 256), `maxStreams` (streams open at once toward each of its peer processes; default: the multiplexer's) | none: `auth.token` is the one user |
//! | `webServer.port` | the admin listener's port: dashboard, `/api/status`, `/metrics` (0 or absent: none) | none |
//! | `webServer.addr` | its address | `"127.0.0.1"` |
//! | `webServer.user`, `webServer.password` | its basic auth (the password also as `Authorization: Bearer`); required on an address that is not loopback | `"admin"`, none |
//! | `enablePrometheus` | accepted (`/metrics` is always on the admin listener) | |
//! | `punchline.altAddr` | second address for STUN behaviour discovery, `IP` or `IP:PORT` as `--alt-addr` (port default: `bindPort` + 1) | none |
//!
//! frp's other keys are in [`FRP_KEYS`]: accepted with no effect (`log.*`,
//! `webServer.pprofEnable`, most of `transport.*`, ...; named together in one warning) or refused
//! (`kcpBindPort`, `tcpmuxHTTPConnectPort`, `httpPlugins`, ...; named together in one error).
//! A key nobody knows (a typo) is an error naming it and the closest known key. The
//! legacy INI format (`frps.ini`) is read into the same model.
//!
//! Parsing ([`common::config::read`]) renders `{{ .Envs.NAME }}` templates, reads the
//! TOML or INI text into the serde model below (keys matched ignoring case, as frp
//! does), sorts the keys the model did not read by [`FRP_KEYS`], and `validate()`
//! checks the values and fills in defaults, giving a [`ServerConfig`]. Errors carry
//! the key's path and line (`frps.toml:7: kcpBindPort: not supported by punchline
//! (...)`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    path::Path,
};

use serde::Deserialize;

pub use common::config::ConfigError;
use common::config::{self, is_host_name, parse_ip, Effect, FrpKey, Masked, Side, NO_LOG, NO_TLS};

/// frp's default `bindPort`, used when a file has none (punchline's own CLI default,
/// 8877, applies only to the command line): an `frpc.toml` without `serverPort` must
/// still meet an `frps.toml` without `bindPort`.
pub const FRP_DEFAULT_PORT: u16 = 7000;

/// The server's settings read from a config file.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where peers connect (`bindAddr`, `bindPort`).
    pub bind: SocketAddr,
    /// The HTTP virtual host port (`vhostHTTPPort`); `None`: no vhost listener.
    pub vhost_http_port: Option<u16>,
    /// The HTTPS virtual host port (`vhostHTTPSPort`): TLS routed by server name
    /// (SNI) to https proxies, not terminated; `None`: no such listener.
    pub vhost_https_port: Option<u16>,
    /// The tcpmux port (`tcpmuxHTTPConnectPort`): HTTP CONNECT requests routed by host
    /// to tcpmux proxies; `None`: no such listener.
    pub tcpmux_http_connect_port: Option<u16>,
    /// Longest wait for a peer's response head to a vhost request, then 504
    /// (`vhostHTTPTimeout`, seconds; default [`crate::vhost::RESPONSE_TIMEOUT`], frp's
    /// 60 s too).
    pub vhost_http_timeout: std::time::Duration,
    /// The domain under which `subdomain` routes live (`subDomainHost`), lowercased.
    pub subdomain_host: Option<String>,
    /// The token peers must present (`auth.token`); `None` accepts anyone. Printed as
    /// `MASKED` by `Debug`.
    pub token: Option<String>,
    /// The ports tcp proxies may ask for (`allowPorts`).
    pub allow_ports: PortRanges,
    /// The alternate address for STUN behaviour discovery (`punchline.altAddr`), with
    /// its port filled in as `--alt-addr` does (`bindPort` + 1; 0 when `bindPort` is 0).
    pub alt_addr: Option<SocketAddr>,
    /// The second port on the bind address when there is no `alt_addr` (`--alt-port`):
    /// by default `bindPort` + 1, so that peers can always tell a NAT that maps per
    /// destination from one that does not.
    pub alt_port: AltPort,
    /// The server's users (`[[users]]`), each with its own token and allowances. Empty:
    /// one user, whose token is [`ServerConfig::token`] and whose allowances are
    /// `allowPorts` and any domain but the catch-all `*`.
    pub users: Vec<UserConfig>,
    /// How long the claims of a peer whose control connection ended stay reserved for
    /// its identity (`--grace`; default [`crate::expose::GRACE`]).
    pub grace: std::time::Duration,
    /// Most streams (user connections to its exposed ports and vhost routes) at once on
    /// the data connection of one peer process (`--max-streams`; default
    /// [`common::mux::DEFAULT_MAX_STREAMS`], the peer's default too). Past it, a new
    /// user connection is reset and the server logs a warning.
    pub max_streams: usize,
    /// The vhost's timeouts and per-client limit (`--vhost-idle-timeout`,
    /// `--max-per-client`; `vhostHTTPTimeout` is [`ServerConfig::vhost_http_timeout`]).
    pub vhost: crate::vhost::VhostConfig,
    /// frp keys of the file accepted with no effect, each with the reason (see
    /// [`FRP_KEYS`]); [`load`] names them in one warning.
    pub no_effect: Vec<(String, &'static str)>,
    /// The admin listener (`--admin`, `webServer.*`); `None`: none.
    pub admin: Option<crate::admin::AdminConfig>,
}

/// The server's second port on its own address (`--alt-port`), which answers STUN
/// over UDP and TCP: a peer that sees the same public port from both of the server's
/// ports is behind a NAT that maps endpoint-independently, one that sees two is behind
/// a symmetric NAT. Without it, `peer nat-check` and pairing cannot tell the two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AltPort {
    /// The bind port + 1 (with bind port 0: the port the server gets, + 1). If that
    /// port is taken, the server starts without it and logs a warning.
    #[default]
    Next,
    /// This port (0: any free port); the server does not start if it is taken.
    Port(u16),
    /// No second port.
    Off,
}

impl AltPort {
    /// The port to open beside `bind_port`, or `None` for no second port.
    pub fn resolve(self, bind_port: u16) -> Option<u16> {
        match self {
            AltPort::Off => None,
            AltPort::Port(p) => Some(p),
            AltPort::Next => Some(bind_port.checked_add(1).unwrap_or(0)),
        }
    }

    /// `--alt-port`'s syntax: a port number or `off`.
    pub fn parse_cli(s: &str) -> Result<AltPort, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(AltPort::Off);
        }
        s.parse::<u16>()
            .map(AltPort::Port)
            .map_err(|_| format!("{s:?} is not a port number or \"off\""))
    }
}

/// Default for `maxExposures`: proxies and services one user may hold at once.
/// Generous for a person's or a team's services; it stops one token from taking
/// thousands of ports or names (and their file descriptors) on a shared server.
pub const MAX_EXPOSURES: usize = 256;

/// One user of a shared server (`[[users]]`).
#[derive(Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// A name for logs and errors.
    pub name: String,
    /// The user's token (printed as MASKED).
    pub token: String,
    /// Ports its tcp proxies may listen on (`allowPorts`; default: none).
    pub allow_ports: Option<PortRanges>,
    /// Host names its http proxies may claim (`allowDomains`; default: none).
    pub allow_domains: DomainAllow,
    /// Most proxies and services at once (`maxExposures`).
    pub max_exposures: usize,
    /// Most streams open at once toward each of its peer processes (`maxStreams`):
    /// every user connection to an exposed port, and every pooled HTTP connection to
    /// it, is one. `None`: the multiplexer's default.
    pub max_streams: Option<usize>,
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("token", &Masked)
            .field("allow_ports", &self.allow_ports)
            .field("allow_domains", &self.allow_domains)
            .field("max_exposures", &self.max_exposures)
            .field("max_streams", &self.max_streams)
            .finish()
    }
}

impl ServerConfig {
    /// A server on `bind` with no token, vhost, alternate address or port limits.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            vhost_http_port: None,
            vhost_https_port: None,
            tcpmux_http_connect_port: None,
            vhost_http_timeout: crate::vhost::RESPONSE_TIMEOUT,
            subdomain_host: None,
            token: None,
            allow_ports: PortRanges::all(),
            alt_addr: None,
            alt_port: AltPort::Next,
            users: Vec::new(),
            grace: crate::expose::GRACE,
            max_streams: common::mux::DEFAULT_MAX_STREAMS,
            vhost: Default::default(),
            no_effect: Vec::new(),
            admin: None,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("bind", &self.bind)
            .field("vhost_http_port", &self.vhost_http_port)
            .field("vhost_https_port", &self.vhost_https_port)
            .field("tcpmux_http_connect_port", &self.tcpmux_http_connect_port)
            .field("vhost_http_timeout", &self.vhost_http_timeout)
            .field("subdomain_host", &self.subdomain_host)
            .field("token", &self.token.as_ref().map(|_| Masked))
            .field("allow_ports", &self.allow_ports)
            .field("alt_addr", &self.alt_addr)
            .field("alt_port", &self.alt_port)
            .field("users", &self.users)
            .field("grace", &self.grace)
            .field("max_streams", &self.max_streams)
            .field("vhost", &self.vhost)
            .field("no_effect", &self.no_effect)
            .field("admin", &self.admin)
            .finish()
    }
}

/// A set of TCP ports (`allowPorts`, `--allow-ports`): sorted, merged, inclusive
/// ranges. Port 0 is never in it: a proxy asking for port 0 lets the server choose one
/// from the set.
#[derive(Clone, PartialEq, Eq)]
pub struct PortRanges(Vec<RangeInclusive<u16>>);

impl PortRanges {
    /// Every port, 1 to 65535 (no `allowPorts`).
    pub fn all() -> Self {
        PortRanges(vec![1..=u16::MAX])
    }

    /// No port at all (a user without `allowPorts`).
    pub fn none() -> Self {
        PortRanges(Vec::new())
    }

    /// Whether `port` is in the set (never true for 0).
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }

    /// Whether the set holds every port.
    pub fn is_all(&self) -> bool {
        *self == Self::all()
    }

    /// The ranges, sorted and not overlapping.
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.0
    }

    /// Parses a command-line list such as `2000-3000,3001` (what [`Display`](fmt::Display)
    /// prints); the error is a sentence for clap to show.
    pub fn parse_cli(s: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim) {
            let number = |n: &str| match n.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!(
                    "{item:?} is not a port or a range of ports (1-65535)"
                )),
                Ok(p) => Ok(p),
            };
            let range = match item.split_once('-') {
                Some((a, b)) => number(a)?..=number(b)?,
                None => {
                    let p = number(item)?;
                    p..=p
                }
            };
            if range.is_empty() {
                return Err(format!("{item:?}: the range ends before it starts"));
            }
            ranges.push(range);
        }
        Ok(Self::from_ranges(ranges))
    }

    /// Sorts and merges; `ranges` must hold no empty range and no port 0.
    fn from_ranges(mut ranges: Vec<RangeInclusive<u16>>) -> Self {
        ranges.sort_by_key(|r| *r.start());
        let mut merged: Vec<RangeInclusive<u16>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(*r.start()) <= u32::from(*last.end()) + 1 => {
                    *last = *last.start()..=*last.end().max(r.end());
                }
                _ => merged.push(r),
            }
        }
        PortRanges(merged)
    }
}

impl Default for PortRanges {
    fn default() -> Self {
        Self::all()
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortRanges({self})")
    }
}

/// The host names a user's http proxies may claim (`allowDomains` of `[[users]]`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum DomainAllow {
    /// Any name and wildcard, but not the catch-all `*` (the single-token default).
    AnyButCatchAll,
    /// Names matching these patterns: `example.com` (that name), `*.example.com`
    /// (names and wildcards under it), `*` (everything, the catch-all included).
    Patterns(Vec<String>),
}

impl DomainAllow {
    /// Parses `allowDomains` entries (lowercased); the error says which is malformed.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(patterns.len());
        for p in patterns {
            let p = p.as_ref().trim().trim_end_matches('.').to_ascii_lowercase();
            let name = p.strip_prefix("*.").unwrap_or(&p);
            if p != "*" && !is_host_name(name) {
                return Err(format!(
                    "{p:?} is not a domain pattern (like \"example.com\", \"*.example.com\" or \"*\")"
                ));
            }
            out.push(p);
        }
        Ok(DomainAllow::Patterns(out))
    }

    /// Whether `host` (normalised: lowercase, `*.suffix` or `*`) may be claimed.
    pub fn allows(&self, host: &str) -> bool {
        match self {
            DomainAllow::AnyButCatchAll => host != "*",
            DomainAllow::Patterns(ps) => ps.iter().any(|p| {
                p == "*"
                    || p == host
                    || p.strip_prefix('*')
                        .is_some_and(|dot_suffix| host != "*" && host.ends_with(dot_suffix))
            }),
        }
    }
}

impl fmt::Display for DomainAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainAllow::AnyButCatchAll => f.write_str("any domain but the catch-all *"),
            DomainAllow::Patterns(ps) if ps.is_empty() => f.write_str("no domains"),
            DomainAllow::Patterns(ps) => f.write_str(&ps.join(", ")),
        }
    }
}

/// Reads and parses a server config file (see the module docs for the keys).
pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
    config::load::<FrpsFile>(path)
}

/// Parses a server config from `text`; `origin` names it in errors (a file name).
pub fn parse(text: &str, origin: &str) -> Result<ServerConfig, ConfigError> {
    config::parse::<FrpsFile>(text, origin)
}

impl config::Model for FrpsFile {
    type Config = ServerConfig;
    const SIDE: Side = Side::Server;
    const KEYS: &'static [FrpKey] = FRP_KEYS;
    fn validate(self, origin: &str) -> Result<ServerConfig, ConfigError> {
        FrpsFile::validate(self, origin)
    }
    fn no_effect(cfg: &mut ServerConfig) -> &mut Vec<(String, &'static str)> {
        &mut cfg.no_effect
    }
}

// ---- The file's shape -------------------------------------------------------------

// Reasons shared by several keys.
const NO_TRANSPORT: &str = "peers connect over TCP with Noise encryption and multiplexed streams, \
                            whose settings are punchline's own";

/// frp's server keys that the model below does not read: accepted with no effect, or
/// refused. The README's table of frp keys lists these and the model's own.
#[rustfmt::skip]
pub const FRP_KEYS: &[FrpKey] = &[
    FrpKey { key: "log", effect: Effect::NoEffect, why: NO_LOG },
    FrpKey { key: "webServer.pprofEnable", effect: Effect::NoEffect, why: "there are no profiling endpoints" },
    FrpKey { key: "webServer.assetsDir", effect: Effect::NoEffect, why: "the dashboard is built into the binary" },
    FrpKey { key: "webServer.tls", effect: Effect::Refused, why: "the admin listener speaks plain HTTP; put a TLS proxy in front of it" },
    FrpKey { key: "transport.tls", effect: Effect::NoEffect, why: NO_TLS },
    FrpKey { key: "transport.maxPoolCount", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.heartbeatTimeout", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.tcpMux", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.tcpMuxKeepaliveInterval", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.tcpKeepalive", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.quic", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "auth.additionalScopes", effect: Effect::NoEffect, why: "every connection is authenticated by the token" },
    FrpKey { key: "detailedErrorsToClient", effect: Effect::NoEffect, why: "peers always get the reason of a refusal" },
    FrpKey { key: "userConnTimeout", effect: Effect::NoEffect, why: "the timeouts are punchline's own" },
    FrpKey { key: "custom404Page", effect: Effect::NoEffect, why: "the vhost's 404 page is built in" },
    FrpKey { key: "udpPacketSize", effect: Effect::NoEffect, why: "datagrams of any size up to 65,535 bytes are carried" },
    FrpKey { key: "natholeAnalysisDataReserveHours", effect: Effect::NoEffect, why: "no NAT analysis data is kept" },
    FrpKey { key: "bindUdpPort", effect: Effect::NoEffect, why: "xtcp punching needs no UDP port" },
    FrpKey { key: "kcpBindPort", effect: Effect::Refused, why: "peers connect over TCP only, not KCP" },
    FrpKey { key: "quicBindPort", effect: Effect::Refused, why: "peers connect over TCP only, not QUIC" },
    FrpKey { key: "proxyBindAddr", effect: Effect::Refused, why: "tcp proxies listen on bindAddr" },
    FrpKey { key: "tcpmuxPassthrough", effect: Effect::Refused, why: "the server answers the CONNECT request itself; the service gets the bytes after it" },
    FrpKey { key: "sshTunnelGateway", effect: Effect::Refused, why: "there is no SSH tunnel gateway" },
    FrpKey { key: "maxPortsPerClient", effect: Effect::Refused, why: "limit peers with [[users]] maxExposures" },
    FrpKey { key: "allowedClientIPs", effect: Effect::Refused, why: "filter peer addresses with a firewall" },
    FrpKey { key: "httpPlugins", effect: Effect::Refused, why: "there are no server plugins" },
    FrpKey { key: "auth.oidc", effect: Effect::Refused, why: "the only auth.method is \"token\"" },
    FrpKey { key: "auth.tokenSource", effect: Effect::Refused, why: "put the token in auth.token, or in a {{ .Envs.NAME }} template" },
];

/// The file's model: every key punchline reads. Names match ignoring case.
#[derive(Deserialize)]
struct FrpsFile {
    #[serde(rename = "bindAddr")]
    bind_addr: Option<String>,
    #[serde(rename = "bindPort")]
    bind_port: Option<i64>,
    #[serde(rename = "vhostHTTPPort")]
    vhost_http_port: Option<i64>,
    #[serde(rename = "vhostHTTPSPort")]
    vhost_https_port: Option<i64>,
    #[serde(rename = "tcpmuxHTTPConnectPort")]
    tcpmux_http_connect_port: Option<i64>,
    #[serde(rename = "vhostHTTPTimeout")]
    vhost_http_timeout: Option<i64>,
    #[serde(rename = "subDomainHost")]
    subdomain_host: Option<String>,
    #[serde(default)]
    auth: AuthFile,
    #[serde(rename = "allowPorts")]
    allow_ports: Option<Vec<PortsFile>>,
    #[serde(default)]
    punchline: PunchlineFile,
    #[serde(default)]
    users: Vec<UserFile>,
    #[serde(rename = "webServer", default)]
    web_server: WebServerFile,
    /// Accepted: `/metrics` is always on the admin listener.
    #[serde(rename = "enablePrometheus")]
    #[allow(dead_code)]
    enable_prometheus: Option<bool>,
}

#[derive(Deserialize, Default)]
struct WebServerFile {
    addr: Option<String>,
    port: Option<i64>,
    user: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
struct UserFile {
    name: Option<String>,
    token: Option<String>,
    #[serde(rename = "allowPorts")]
    allow_ports: Option<Vec<PortsFile>>,
    #[serde(rename = "allowDomains")]
    allow_domains: Option<Vec<String>>,
    #[serde(rename = "maxExposures")]
    max_exposures: Option<i64>,
    #[serde(rename = "maxStreams")]
    max_streams: Option<i64>,
}

#[derive(Deserialize, Default)]
struct AuthFile {
    method: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
struct PortsFile {
    start: Option<i64>,
    end: Option<i64>,
    single: Option<i64>,
}

#[derive(Deserialize, Default)]
struct PunchlineFile {
    #[serde(rename = "altAddr")]
    alt_addr: Option<String>,
}

impl FrpsFile {
    /// Checks the values and fills in defaults.
    fn validate(self, origin: &str) -> Result<ServerConfig, ConfigError> {
        let e = config::Errors { origin };
        let invalid = |key: &str, message: String| e.invalid(key, message);
        let port = |key: &str, value: i64, zero_ok: bool| e.port(key, value, zero_ok);

        let ip = match &self.bind_addr {
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(s) => parse_ip(s)
                .ok_or_else(|| invalid("bindAddr", format!("{s:?} is not an IP address")))?,
        };
        let bind_port = match self.bind_port {
            None => FRP_DEFAULT_PORT,
            Some(p) => port("bindPort", p, true)?,
        };
        let vhost_http_port = match self.vhost_http_port {
            None | Some(0) => None,
            Some(p) => Some(port("vhostHTTPPort", p, false)?),
        };
        let vhost_https_port = match self.vhost_https_port {
            None | Some(0) => None,
            Some(p) => Some(port("vhostHTTPSPort", p, false)?),
        };
        if vhost_https_port.is_some()
            && (vhost_https_port == Some(bind_port) || vhost_https_port == vhost_http_port)
        {
            return Err(invalid(
                "vhostHTTPSPort",
                format!(
                    "{} is bindPort or vhostHTTPPort too; each needs a port of its own",
                    vhost_https_port.unwrap_or(0)
                ),
            ));
        }
        let tcpmux_http_connect_port = match self.tcpmux_http_connect_port {
            None | Some(0) => None,
            Some(p) => Some(port("tcpmuxHTTPConnectPort", p, false)?),
        };
        let vhost_http_timeout = match self.vhost_http_timeout {
            None => crate::vhost::RESPONSE_TIMEOUT,
            Some(n) if n >= 1 => std::time::Duration::from_secs(n.unsigned_abs()),
            Some(n) => {
                return Err(invalid(
                    "vhostHTTPTimeout",
                    format!("{n} is not a number of seconds (1 or more)"),
                ))
            }
        };
        if vhost_http_port.is_some() && vhost_http_port == Some(bind_port) {
            return Err(invalid(
                "vhostHTTPPort",
                format!("{bind_port} is bindPort too; punchline needs two ports"),
            ));
        }

        let subdomain_host = match self.subdomain_host {
            None => None,
            Some(host) => {
                let host = host.to_ascii_lowercase();
                if !is_host_name(&host) {
                    return Err(invalid(
                        "subDomainHost",
                        format!("{host:?} is not a domain name (like \"example.com\")"),
                    ));
                }
                Some(host)
            }
        };

        if let Some(method) = &self.auth.method {
            if method != "token" {
                return Err(ConfigError::Unsupported {
                    origin: origin.to_string(),
                    line: None,
                    key: "auth.method".into(),
                    message: format!("{method:?} is not supported by punchline (token is)"),
                });
            }
        }
        let token = match self.auth.token {
            Some(t) if t.is_empty() => {
                return Err(invalid(
                    "auth.token",
                    "is empty; remove the key to run without a token".into(),
                ))
            }
            t => t,
        };

        let ranges_of = |prefix: &str, entries: &[PortsFile]| -> Result<PortRanges, ConfigError> {
            if entries.is_empty() {
                return Ok(PortRanges::all());
            }
            {
                let mut ranges = Vec::with_capacity(entries.len());
                for (i, e) in entries.iter().enumerate() {
                    let key = format!("{prefix}allowPorts[{i}]");
                    let range = match (e.start, e.end, e.single) {
                        (Some(a), Some(b), None) => {
                            let a = port(&format!("{key}.start"), a, false)?;
                            let b = port(&format!("{key}.end"), b, false)?;
                            if a > b {
                                return Err(invalid(&key, format!("start {a} is after end {b}")));
                            }
                            a..=b
                        }
                        (None, None, Some(p)) => {
                            let p = port(&format!("{key}.single"), p, false)?;
                            p..=p
                        }
                        _ => {
                            return Err(invalid(
                                &key,
                                "expected { start = N, end = M } or { single = N }".into(),
                            ))
                        }
                    };
                    ranges.push(range);
                }
                Ok(PortRanges::from_ranges(ranges))
            }
        };
        let allow_ports = match &self.allow_ports {
            None => PortRanges::all(),
            Some(entries) => ranges_of("", entries)?,
        };

        let server_token = token.clone();
        let mut users = Vec::with_capacity(self.users.len());
        for (i, u) in self.users.iter().enumerate() {
            let key = |k: &str| format!("users[{i}].{k}");
            let name = match &u.name {
                Some(n) if !n.trim().is_empty() => n.trim().to_string(),
                _ => return Err(invalid(&key("name"), "every user needs a name".into())),
            };
            let token = match &u.token {
                Some(t) if !t.is_empty() => t.clone(),
                _ => {
                    return Err(invalid(
                        &key("token"),
                        format!("user {name:?} needs a token that is not empty"),
                    ))
                }
            };
            if users.iter().any(|x: &UserConfig| x.name == name) {
                return Err(invalid(&key("name"), format!("{name:?} is given twice")));
            }
            if users.iter().any(|x: &UserConfig| x.token == token)
                || token_clash(&token, server_token.as_deref())
            {
                return Err(invalid(
                    &key("token"),
                    format!("user {name:?} has the same token as another user (tokens must tell users apart)"),
                ));
            }
            let allow_ports = match &u.allow_ports {
                None => None,
                Some(entries) => Some(ranges_of(&format!("users[{i}]."), entries)?),
            };
            let allow_domains = DomainAllow::parse(u.allow_domains.as_deref().unwrap_or(&[]))
                .map_err(|m| invalid(&key("allowDomains"), m))?;
            let max_exposures = match u.max_exposures {
                None => MAX_EXPOSURES,
                Some(n) => usize::try_from(n).map_err(|_| {
                    invalid(
                        &key("maxExposures"),
                        format!("{n} is not a count (0 or more)"),
                    )
                })?,
            };
            let max_streams = match u.max_streams {
                None => None,
                Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                Some(n) => {
                    return Err(invalid(
                        &key("maxStreams"),
                        format!("{n} is not a count of streams (1 or more)"),
                    ))
                }
            };
            users.push(UserConfig {
                name,
                token,
                allow_ports,
                allow_domains,
                max_exposures,
                max_streams,
            });
        }

        let alt_addr = match &self.punchline.alt_addr {
            None => None,
            Some(s) => Some(parse_alt(s, bind_port).ok_or_else(|| {
                invalid(
                    "punchline.altAddr",
                    format!("{s:?} is not IP or IP:PORT (like \"203.0.113.7\" or \"[2001:db8::7]:7001\")"),
                )
            })?),
        };

        let admin = match self.web_server.port {
            None | Some(0) => None,
            Some(p) => {
                let port = port("webServer.port", p, false)?;
                let ip = match &self.web_server.addr {
                    None => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Some(s) => parse_ip(s).ok_or_else(|| {
                        invalid("webServer.addr", format!("{s:?} is not an IP address"))
                    })?,
                };
                let admin = crate::admin::AdminConfig {
                    addr: SocketAddr::new(ip, port),
                    user: self
                        .web_server
                        .user
                        .unwrap_or_else(|| crate::admin::DEFAULT_USER.into()),
                    password: self.web_server.password,
                };
                crate::admin::check(&admin).map_err(|m| invalid("webServer.password", m))?;
                Some(admin)
            }
        };

        Ok(ServerConfig {
            bind: SocketAddr::new(ip, bind_port),
            vhost_http_port,
            vhost_https_port,
            tcpmux_http_connect_port,
            vhost_http_timeout,
            subdomain_host,
            token,
            allow_ports,
            alt_addr,
            alt_port: AltPort::Next,
            users,
            grace: crate::expose::GRACE,
            max_streams: common::mux::DEFAULT_MAX_STREAMS,
            vhost: Default::default(),
            no_effect: Vec::new(),
            admin,
        })
    }
}

fn token_clash(user_token: &str, server_token: Option<&str>) -> bool {
    server_token == Some(user_token)
}

/// `IP` or `IP:PORT`; without a port, `bind_port` + 1 (0, any free port, when
/// `bind_port` is 0), as the `--alt-addr` flag does.
fn parse_alt(s: &str, bind_port: u16) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = parse_ip(s)?;
    let port = if bind_port == 0 {
        0
    } else {
        bind_port.wrapping_add(1)
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ok(text: &str) -> ServerConfig {
        match parse(text, "frps.toml") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(text: &str) -> ConfigError {
        match parse(text, "frps.toml") {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn users_parse_with_their_allowances() {
        let c = ok(r#"
            auth.token = "shared"
            [[users]]
            name = "alice"
            token = "a"
            allowPorts = [{ start = 6000, end = 6009 }]
            allowDomains = ["*.Alice.example.com"]
            [[users]]
            name = "ops"
            token = "o"
            allowDomains = ["*"]
            maxExposures = 3
        "#);
        assert_eq!(c.users.len(), 2);
        let a = &c.users[0];
        assert_eq!(
            a.allow_ports.as_ref().map(|p| p.to_string()),
            Some("6000-6009".into())
        );
        assert!(a.allow_domains.allows("www.alice.example.com"));
        assert!(!a.allow_domains.allows("*"));
        assert_eq!(a.max_exposures, MAX_EXPOSURES);
        assert!(c.users[1].allow_domains.allows("*"));
        assert_eq!(c.users[1].allow_ports, None);
        assert_eq!(c.users[1].max_exposures, 3);
        assert!(!format!("{c:?}").contains("\"a\""), "tokens are masked");
    }

    #[test]
    fn users_need_names_and_tokens_of_their_own() {
        for (text, key) in [
            ("[[users]]\ntoken = \"a\"", "users[0].name"),
            ("[[users]]\nname = \"a\"", "users[0].token"),
            (
                "[[users]]\nname = \"a\"\ntoken = \"t\"\n[[users]]\nname = \"b\"\ntoken = \"t\"",
                "users[1].token",
            ),
            (
                "auth.token = \"t\"\n[[users]]\nname = \"a\"\ntoken = \"t\"",
                "users[0].token",
            ),
            (
                "[[users]]\nname = \"a\"\ntoken = \"t\"\n[[users]]\nname = \"a\"\ntoken = \"u\"",
                "users[1].name",
            ),
            (
                "[[users]]\nname = \"a\"\ntoken = \"t\"\nallowDomains = [\"a b\"]",
                "users[0].allowDomains",
            ),
        ] {
            let e = err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    /// The example configs shipped in `examples/`, by kind (from the file name).
    fn examples() -> (Vec<PathBuf>, Vec<PathBuf>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let (mut servers, mut clients) = (Vec::new(), Vec::new());
        for entry in std::fs::read_dir(&dir).expect("examples/") {
            let path = entry.expect("examples/ entry").path();
            if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("toml" | "ini")
            ) {
                continue;
            }
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("frps") || name.starts_with("rendezvous") {
                servers.push(path);
            } else if name.starts_with("frpc") || name.starts_with("peer") {
                clients.push(path);
            } else {
                panic!(
                    "{}: name examples frps*.toml or rendezvous*.toml (server), frpc*.toml or \
                     peer*.toml (client), so that a test parses them",
                    path.display()
                );
            }
        }
        (servers, clients)
    }

    #[test]
    fn every_server_example_parses() {
        // The INI examples take the token from the environment, as frp's do.
        std::env::set_var("FRP_AUTH_TOKEN", "example-token");
        let (servers, _) = examples();
        assert!(
            servers.len() >= 2,
            "expected frps.toml and rendezvous.toml: {servers:?}"
        );
        for path in servers {
            if let Err(e) = load(&path) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn frps_example_values() {
        let c = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/frps.toml"))
            .expect("frps.toml");
        assert_eq!(c.bind, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(c.vhost_http_port, Some(8080));
        assert_eq!(c.subdomain_host.as_deref(), Some("frps.example.com"));
        assert!(c.token.as_deref().is_some_and(|t| !t.is_empty()));
        assert_eq!(c.allow_ports.to_string(), "6000-6100,7001");
        assert_eq!(c.alt_addr, None);
        assert_eq!(
            c.admin.map(|a| a.addr),
            Some("127.0.0.1:7500".parse().unwrap())
        );
    }

    #[test]
    fn web_server_is_the_admin_listener() {
        assert_eq!(ok("bindPort = 7000").admin, None);
        assert_eq!(ok("webServer.port = 0").admin, None);
        let a = ok("webServer.port = 7500\nenablePrometheus = true")
            .admin
            .unwrap();
        assert_eq!(a.addr, "127.0.0.1:7500".parse().unwrap());
        assert_eq!((a.user.as_str(), a.password), ("admin", None));
        let a =
            ok("[webServer]\naddr = \"0.0.0.0\"\nport = 7500\nuser = \"ops\"\npassword = \"pw\"")
                .admin
                .unwrap();
        assert_eq!(a.addr, "0.0.0.0:7500".parse().unwrap());
        assert_eq!(
            (a.user.as_str(), a.password.as_deref()),
            ("ops", Some("pw"))
        );
        assert!(!format!("{a:?}").contains("pw\""), "{a:?}");
        let e = err("[webServer]\naddr = \"0.0.0.0\"\nport = 7500").to_string();
        assert!(
            e.contains("webServer.password") && e.contains("not a loopback address"),
            "{e}"
        );
        let e = err("webServer.port = 70000").to_string();
        assert!(e.contains("webServer.port"), "{e}");
        let e = err("webServer.tls.certFile = \"x\"").to_string();
        assert!(
            e.contains("webServer.tls") && e.contains("TLS proxy"),
            "{e}"
        );
    }

    #[test]
    fn every_key_round_trips() {
        let c = ok(r#"
            bindAddr = "::"
            bindPort = 7100
            vhostHTTPPort = 80
            subDomainHost = "Tunnels.Example.COM"
            auth.method = "token"
            auth.token = "s3cret-token"
            allowPorts = [
              { start = 4000, end = 4999 },
              { single = 3001 },
              { start = 5000, end = 5100 },
            ]
            [punchline]
            altAddr = "192.0.2.8"
        "#);
        assert_eq!(c.bind, "[::]:7100".parse().unwrap());
        assert_eq!(c.vhost_http_port, Some(80));
        assert_eq!(c.subdomain_host.as_deref(), Some("tunnels.example.com"));
        assert_eq!(c.token.as_deref(), Some("s3cret-token"));
        assert_eq!(c.allow_ports.to_string(), "3001,4000-5100");
        assert!(c.allow_ports.contains(4500) && c.allow_ports.contains(3001));
        assert!(!c.allow_ports.contains(3002) && !c.allow_ports.contains(0));
        assert_eq!(c.alt_addr, Some("192.0.2.8:7101".parse().unwrap()));
    }

    #[test]
    fn defaults() {
        let c = ok("");
        assert_eq!(c.bind, SocketAddr::from(([0, 0, 0, 0], FRP_DEFAULT_PORT)));
        assert_eq!(c.vhost_http_port, None);
        assert_eq!(c.subdomain_host, None);
        assert_eq!(c.token, None);
        assert!(c.allow_ports.is_all());
        assert_eq!(ok("allowPorts = []").allow_ports, PortRanges::all());
        assert_eq!(ok("vhostHTTPPort = 0").vhost_http_port, None);
        assert_eq!(
            ok("bindAddr = \"[::1]\"").bind,
            "[::1]:7000".parse().unwrap()
        );
        let c = ok("bindPort = 0\npunchline.altAddr = \"127.0.0.2\"");
        assert_eq!(c.alt_addr, Some("127.0.0.2:0".parse().unwrap()));
        let c = ok("punchline.altAddr = \"[::1]:9000\"");
        assert_eq!(c.alt_addr, Some("[::1]:9000".parse().unwrap()));
    }

    #[test]
    fn token_is_masked_in_debug() {
        let c = ok("auth.token = \"hunter2-very-secret\"");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("MASKED"), "{shown}");
        assert!(format!("{:?}", ok("")).contains("token: None"));
    }

    /// Each refused file, the key its error must name, and a word of the message.
    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            // frp keys punchline cannot honour.
            (
                "kcpBindPort = 7000",
                "kcpBindPort",
                "not supported by punchline",
            ),
            ("quicBindPort = 7002", "quicBindPort", "not supported"),
            ("vhostHTTPSPort = 7000", "vhostHTTPSPort", "port of its own"),
            (
                "tcpmuxHTTPConnectPort = 70000",
                "tcpmuxHTTPConnectPort",
                "not a port",
            ),
            ("maxPortsPerClient = 0", "maxPortsPerClient", "maxExposures"),
            (
                "[[httpPlugins]]\nname = \"x\"",
                "httpPlugins[0].name",
                "not supported",
            ),
            (
                "auth.method = \"oidc\"",
                "auth.method",
                "\"oidc\" is not supported by punchline (token is)",
            ),
            (
                "auth.oidc.issuer = \"\"",
                "auth.oidc.issuer",
                "not supported",
            ),
            (
                "auth.tokenSource.type = \"file\"",
                "auth.tokenSource.type",
                "not supported",
            ),
            // Typos.
            ("bind_port = 7000", "bind_port", "did you mean `bindPort`?"),
            ("bindPrt = 7000", "bindPrt", "did you mean `bindPort`?"),
            ("auth.tokn = \"x\"", "auth.tokn", "did you mean `token`?"),
            (
                "allowPorts = [{ singel = 3001 }]",
                "allowPorts[0].singel",
                "did you mean `single`?",
            ),
            ("[punchline]\nfoo = 1", "punchline.foo", "altAddr"),
            (
                "transport.heartbeatTimout = 90",
                "transport.heartbeatTimout",
                "unknown key",
            ),
            // Wrong types and values.
            (
                "bindPort = \"7000\"",
                "bindPort",
                "expected an integer, found a string",
            ),
            ("bindPort = 70000", "bindPort", "not a port"),
            (
                "vhostHTTPTimeout = 0",
                "vhostHTTPTimeout",
                "seconds (1 or more)",
            ),
            ("bindPort = -1", "bindPort", "not a port"),
            ("vhostHTTPPort = 7000", "vhostHTTPPort", "bindPort too"),
            ("bindAddr = \"localhost\"", "bindAddr", "not an IP address"),
            (
                "subDomainHost = \"*.example.com\"",
                "subDomainHost",
                "not a domain name",
            ),
            ("auth.token = \"\"", "auth.token", "empty"),
            ("auth.token = 12345678", "auth.token", "expected a string"),
            (
                "allowPorts = [{ start = 3000, end = 2000 }]",
                "allowPorts[0]",
                "after end",
            ),
            (
                "allowPorts = [{ start = 3000 }]",
                "allowPorts[0]",
                "expected { start",
            ),
            (
                "allowPorts = [{ single = 3001, start = 1, end = 2 }]",
                "allowPorts[0]",
                "expected",
            ),
            (
                "allowPorts = [{ single = 0 }]",
                "allowPorts[0].single",
                "0 is not allowed",
            ),
            ("allowPorts = [3001]", "allowPorts[0]", "expected a table"),
            (
                "allowPorts = \"2000-3000\"",
                "allowPorts",
                "expected a list, found a string",
            ),
            (
                "punchline.altAddr = \"nowhere\"",
                "punchline.altAddr",
                "not IP or IP:PORT",
            ),
        ];
        for (text, key, words) in cases {
            let e = err(text);
            let shown = e.to_string();
            assert_eq!(e.key(), Some(*key), "{text:?}: {shown}");
            assert!(shown.starts_with("frps.toml"), "{shown}");
            assert!(shown.contains(&format!(": {key}: ")), "{text:?}: {shown}");
            assert!(
                shown.contains(words),
                "{text:?}: {shown} (wanted {words:?})"
            );
        }
    }

    #[test]
    fn errors_carry_the_line() {
        let e = err("bindPort = 7000\n\n# KCP\nkcpBindPort = 7000\n");
        assert!(
            matches!(e, ConfigError::Unsupported { line: Some(4), .. }),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("frps.toml:4: kcpBindPort: "),
            "{e}"
        );
        // validate() errors too.
        let e =
            err("bindPort = 7000\n\nallowPorts = [\n  { single = 3001 },\n  { single = 0 },\n]\n");
        assert!(
            e.to_string()
                .starts_with("frps.toml:5: allowPorts[1].single: "),
            "{e}"
        );
        let e = err(
            "bindPort = 7000\n\nallowPorts = [\n  { single = 3001 },\n  { start = 4000 },\n]\n",
        );
        assert!(
            e.to_string().starts_with("frps.toml:5: allowPorts[1]: "),
            "{e}"
        );
        let e = err("bindPort = 7000\nbindPort = 7001\n");
        assert!(
            matches!(e, ConfigError::Syntax { line: Some(2), .. }),
            "{e:?}"
        );
        let e = err("bindPort = \n");
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    }

    /// A file as frp's own test framework writes it.
    #[test]
    fn frp_files_work_as_written() {
        let c = ok(r#"
            bindAddr = "0.0.0.0"
            bindPort = 7000
            log.level = "trace"
            log.to = "console"
            subdomainHost = "Example.com"
            vhostHTTPPort = 8080
            transport.tls.force = false
            transport.heartbeatTimeout = 90
            webServer.port = 7500
            detailedErrorsToClient = true
        "#);
        assert_eq!(c.subdomain_host.as_deref(), Some("example.com"));
        assert_eq!(c.vhost_http_port, Some(8080));
        assert_eq!(c.vhost_http_timeout, crate::vhost::RESPONSE_TIMEOUT);
        assert_eq!(
            ok("vhostHTTPTimeout = 5").vhost_http_timeout,
            std::time::Duration::from_secs(5)
        );
        let keys: Vec<&str> = c.no_effect.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "log.level",
                "log.to",
                "transport.tls.force",
                "transport.heartbeatTimeout",
                "detailedErrorsToClient"
            ]
        );
        // The dashboard's port is the admin listener's (on loopback by default).
        assert_eq!(
            c.admin.map(|a| a.addr),
            Some("127.0.0.1:7500".parse().unwrap())
        );
        let e = err("subdomainHost = \"a.example\"\nsubDomainHost = \"b.example\"");
        assert_eq!(e.key(), Some("subDomainHost"), "{e}");
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn ini_files_read_as_toml_ones() {
        let c = ok("[common]\n\
            bind_addr = 0.0.0.0\n\
            bind_port = 7100\n\
            vhost_http_port = 8080\n\
            subdomain_host = frps.example.com\n\
            token = s3cret\n\
            allow_ports = 2000-3000,3001,3003,4000-50000\n\
            dashboard_port = 7500\n\
            log_file = ./frps.log\n\
            max_pool_count = 5\n");
        assert_eq!(c.bind, "0.0.0.0:7100".parse().unwrap());
        assert_eq!(c.vhost_http_port, Some(8080));
        assert_eq!(c.subdomain_host.as_deref(), Some("frps.example.com"));
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        assert_eq!(c.allow_ports.to_string(), "2000-3001,3003,4000-50000");
        let keys: Vec<&str> = c.no_effect.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["log.to", "transport.maxPoolCount"]);
        assert_eq!(
            c.admin.map(|a| a.addr),
            Some("127.0.0.1:7500".parse().unwrap())
        );
        let e = err("[common]\nbind_port = 7000\nkcp_bind_port = 7000\n[plugin.user-manager]\naddr = 127.0.0.1:9000\n");
        let keys: Vec<_> = e.all().iter().filter_map(|e| e.key()).collect();
        assert_eq!(
            keys,
            ["kcpBindPort", "httpPlugins[0].name", "httpPlugins[0].addr"]
        );
    }

    /// The README's table of frp keys is the model's keys (those a file with every
    /// table reaches) and [`FRP_KEYS`], each with its status: nothing more, nothing less.
    #[test]
    fn readme_lists_every_key() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .expect("README.md");
        let mut rows = config::readme_rows(&readme, "frps");
        let full = r#"bindAddr = "0.0.0.0"
bindPort = 7000
vhostHTTPPort = 80
vhostHTTPSPort = 443
tcpmuxHTTPConnectPort = 1337
subDomainHost = "example.com"
auth.method = "token"
auth.token = "t"
allowPorts = [{ start = 1, end = 2 }]
punchline.altAddr = "127.0.0.2"
enablePrometheus = true
webServer.addr = "127.0.0.1"
webServer.port = 7500
webServer.user = "admin"
webServer.password = "pw"
[[users]]
name = "u"
token = "v"
allowPorts = [{ single = 3 }]
allowDomains = ["*"]
maxExposures = 1
maxStreams = 1
"#;
        let want = config::key_statuses::<FrpsFile>(full, "frps.toml").expect("the full file");
        rows.sort();
        assert_eq!(rows, want);
    }

    #[test]
    fn read_errors_name_the_file() {
        let e = load(Path::new("/nonexistent/frps.toml")).expect_err("no such file");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/frps.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn port_ranges_from_the_command_line() {
        let r = PortRanges::parse_cli("2000-3000,3001").unwrap();
        assert_eq!(r.to_string(), "2000-3001");
        let r = PortRanges::parse_cli(" 3003 , 2000-3000,4000-50000,3001").unwrap();
        assert_eq!(r.to_string(), "2000-3001,3003,4000-50000");
        assert_eq!(r.ranges().len(), 3);
        assert!(r.contains(2000) && r.contains(50000) && r.contains(3003));
        assert!(!r.contains(3002) && !r.contains(1999) && !r.contains(50001));
        assert_eq!(PortRanges::parse_cli("1-65535").unwrap(), PortRanges::all());
        assert_eq!(
            PortRanges::parse_cli(&PortRanges::all().to_string()).unwrap(),
            PortRanges::all()
        );
        assert_eq!(PortRanges::default(), PortRanges::all());
        for bad in [
            "",
            "0",
            "3000-2000",
            "1-",
            "a",
            "1,,2",
            "70000",
            "0-10",
            "1-2-3",
        ] {
            assert!(PortRanges::parse_cli(bad).is_err(), "{bad:?} accepted");
        }
    }
}
