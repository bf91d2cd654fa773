//! Client config files (`peer -c FILE`): frp's `frpc.toml` format (frp v0.52 and
//! later) for the keys that map onto what punchline does.
//!
//! One parser reads both frp's files and punchline's own (`peer.toml`): they have the
//! same keys. `examples/frpc.toml` and `examples/peer.toml` show both.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `serverAddr` | the rendezvous server, host name or IP | `0.0.0.0`, frp's |
//! | `serverPort` | its port | `7000`, frp's (the CLI's is 8877) |
//! | `auth.method` | `"token"`, the only method | `"token"` |
//! | `auth.token` | the server's token (not empty) | none |
//! | `user` | prefixes proxy names: `user.name` (see below) | none |
//! | `transport.protocol` | `"tcp"`, the only one (a no-op) | `"tcp"` |
//! | `start` | names of the proxies and visitors to run | all |
//! | `portmap` | router port mappings: `auto`, `off`, `pcp`, `nat-pmp`, `upnp` (punchline's own; `--portmap` overrides) | `auto` |
//!
//! `[[proxies]]`, each with `name` (unique), `type`, `localIP` (an IP address or a host
//! name, default `127.0.0.1`), `localPort`, and by type:
//!
//! * `tcp` and `udp`: `remotePort` (0 or absent: the server chooses; tcp and udp
//!   proxies share the server's port numbers);
//! * every type but xtcp, stcp and sudp: `transport.useCompression` (snappy between
//!   server and peer);
//! * `http`: `customDomains` (lowercased, `*.example.com` allowed) and/or `subdomain`
//!   (at least one), `locations` (path prefixes, default `/`), `httpUser` and
//!   `httpPassword` (basic auth, both or neither), `hostHeaderRewrite`,
//!   `requestHeaders.set.NAME`, `responseHeaders.set.NAME`, `routeByHTTPUser` (serve
//!   only that basic-auth user's requests);
//! * `https`: `customDomains` and/or `subdomain`, as for http; the server routes TLS
//!   connections by their server name (SNI) and does not terminate TLS;
//! * `tcpmux`: the same keys, and `multiplexer` (`"httpconnect"`, the default and the
//!   only one): reached by HTTP CONNECT on the server's tcpmux port;
//! * `xtcp`, `stcp` (the same, always relayed through the server) and `sudp` (UDP,
//!   relayed like stcp): `secretKey`
//!   (required), `allowUsers` (only `["*"]`: the server does not
//!   know users, so whoever knows `secretKey` may connect; frp's default, visitors of
//!   the same user, cannot be enforced).
//!
//! `enabled = false` skips a proxy or visitor. A key of another type (`remotePort`
//! on an http proxy) is an error.
//!
//! `[[visitors]]` (`type = "xtcp"`, `"stcp"` or `"sudp"`): `name` (unique), `serverName`, `serverUser`,
//! `secretKey` (required), `bindAddr` (an IP address, default `127.0.0.1`), `bindPort`
//! (required; 0: any free port), `keepTunnelOpen` (default `false`).
//!
//! `user` works as in frp: proxies are named `user.name` on the server, and a visitor
//! looks for `serverUser.serverName`, or `user.serverName` when `serverUser` is not
//! set (plain `serverName` when neither is).
//!
//! frp's other keys are in [`FRP_KEYS`]: accepted with no effect (`log.*`,
//! `loginFailExit`, `transport.tls.*`, `transport.useEncryption`, ...; named together
//! in one warning) or refused (plugins, `loadBalancer`, `includes`, ...; named together
//! in one error, with the proxies' own errors). Visitor type `xudp` is
//! refused. A key nobody knows (a typo) is an error naming it
//! and the closest known key. The legacy INI format (`frpc.ini`) is read into the same
//! model.
//!
//! Parsing ([`common::config::read`]) renders `{{ .Envs.NAME }}` templates, reads the
//! TOML or INI text into the serde model below (keys matched ignoring case, as frp
//! does), sorts the keys the model did not read by [`FRP_KEYS`], and `validate()`
//! checks the values and fills in defaults, giving a [`ClientConfig`]. Errors carry
//! the key's path and line (`frpc.toml:31: proxies[2].type: "udp" ("dns") is not
//! supported by punchline (tcp, http, xtcp are)`).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use common::proto::{ExposeSpec, HttpRoute};
use serde::Deserialize;

pub use common::config::ConfigError;
use common::config::{
    self, is_host_name, parse_ip, Effect, Errors, FrpKey, Masked, Side, NO_LOG, NO_TLS,
};

/// frp's default `serverPort`, used when a file has none (punchline's own CLI default,
/// 8877, applies only to the command line): an `frpc.toml` without `serverPort` must
/// still meet an `frps.toml` without `bindPort`.
pub const FRP_DEFAULT_PORT: u16 = 7000;

/// The peer's settings read from a config file.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The rendezvous server, `host:port` (`[v6]:port` for an IPv6 address), for
    /// `common::resolve_server`.
    pub server: String,
    /// The server's token (`auth.token`). Printed as `MASKED` by `Debug`.
    pub token: Option<String>,
    /// The proxies (services of this machine), in file order.
    pub proxies: Vec<Proxy>,
    /// The visitors (services of other peers, reached here), in file order.
    pub visitors: Vec<Visitor>,
    /// Router port mappings (`portmap`); `None`: not set (auto).
    pub portmap: Option<crate::portmap::Mode>,
    /// frp keys of the file accepted with no effect, each with the reason (see
    /// [`FRP_KEYS`]); [`load`] names them in one warning.
    pub no_effect: Vec<(String, &'static str)>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| Masked))
            .field("proxies", &self.proxies)
            .field("visitors", &self.visitors)
            .field("portmap", &self.portmap)
            .field("no_effect", &self.no_effect)
            .finish()
    }
}

/// A service of this machine, offered through the server (`[[proxies]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The proxy's name, with the `user.` prefix when the file has `user`.
    pub name: String,
    /// The local service, `host:port`: `localIP` may be a host name (as in frp, e.g. a
    /// container's), so it is resolved when dialing. See [`Proxy::local_addr`].
    pub local: String,
    /// What kind of proxy, with its settings.
    pub kind: ProxyKind,
    /// `transport.useCompression`: its streams between server and peer are
    /// compressed (tcp, udp, http, https; xtcp and stcp links are not).
    pub compress: bool,
}

impl Proxy {
    /// The local service's address when `localIP` is an IP address (the default);
    /// `None` for a host name, which the caller resolves.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local.parse().ok()
    }
}

/// A proxy's type and its settings.
#[derive(Clone, PartialEq, Eq)]
pub enum ProxyKind {
    /// The server listens on `remote_port` (0: it chooses) and carries each connection
    /// here.
    Tcp {
        /// `remotePort`.
        remote_port: u16,
    },
    /// The server receives datagrams on UDP port `remote_port` (0: it chooses) and
    /// carries each user address's here, to a UDP socket of its own.
    Udp {
        /// `remotePort`.
        remote_port: u16,
    },
    /// The server's HTTP virtual hosts route requests here by Host and path. `Debug`
    /// masks the basic auth password.
    Http(HttpRoute),
    /// The server's HTTPS vhost routes TLS connections here by their server name
    /// (SNI), without terminating TLS: the service here holds the certificate.
    Https {
        /// `customDomains`, lowercased.
        domains: Vec<String>,
        /// `subdomain`, lowercased.
        subdomain: Option<String>,
    },
    /// Offered peer to peer to visitors that know the secret (`peer serve`).
    Xtcp {
        /// `secretKey`. Printed as `MASKED` by `Debug`.
        secret: String,
    },
    /// Offered to visitors that know the secret, always relayed through the server
    /// (`peer serve` without punching; frp's stcp).
    Stcp {
        /// `secretKey`. Printed as `MASKED` by `Debug`.
        secret: String,
    },
    /// Reached through the server's tcpmux port by HTTP CONNECT to one of its names
    /// (frp's tcpmux proxy, multiplexer `httpconnect`).
    TcpMux {
        /// `customDomains`, lowercased.
        domains: Vec<String>,
        /// `subdomain`, lowercased.
        subdomain: Option<String>,
    },
    /// A UDP service offered like stcp: datagrams over a link relayed through the
    /// server (`peer serve --udp`; frp's sudp).
    Sudp {
        /// `secretKey`. Printed as `MASKED` by `Debug`.
        secret: String,
    },
}

impl ProxyKind {
    /// What to ask the server to expose: `Some` for tcp and http proxies, `None` for
    /// xtcp, which is served peer to peer.
    pub fn expose_spec(&self) -> Option<ExposeSpec> {
        match self {
            ProxyKind::Tcp { remote_port } => Some(ExposeSpec::Tcp {
                remote_port: *remote_port,
            }),
            ProxyKind::Udp { remote_port } => Some(ExposeSpec::Udp {
                remote_port: *remote_port,
            }),
            ProxyKind::Http(route) => Some(ExposeSpec::Http(route.clone())),
            ProxyKind::Https { domains, subdomain } => Some(ExposeSpec::Https {
                domains: domains.clone(),
                subdomain: subdomain.clone(),
            }),
            ProxyKind::TcpMux { domains, subdomain } => Some(ExposeSpec::TcpMux {
                domains: domains.clone(),
                subdomain: subdomain.clone(),
            }),
            ProxyKind::Xtcp { .. } | ProxyKind::Stcp { .. } | ProxyKind::Sudp { .. } => None,
        }
    }
}

impl fmt::Debug for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyKind::Tcp { remote_port } => f
                .debug_struct("Tcp")
                .field("remote_port", remote_port)
                .finish(),
            ProxyKind::Udp { remote_port } => f
                .debug_struct("Udp")
                .field("remote_port", remote_port)
                .finish(),
            ProxyKind::Http(route) => {
                let mut shown = route.clone();
                if let Some((_, password)) = &mut shown.basic_auth {
                    *password = "MASKED".into();
                }
                f.debug_tuple("Http").field(&shown).finish()
            }
            ProxyKind::TcpMux { domains, subdomain } => f
                .debug_struct("TcpMux")
                .field("domains", domains)
                .field("subdomain", subdomain)
                .finish(),
            ProxyKind::Https { domains, subdomain } => f
                .debug_struct("Https")
                .field("domains", domains)
                .field("subdomain", subdomain)
                .finish(),
            ProxyKind::Xtcp { .. } => f.debug_struct("Xtcp").field("secret", &Masked).finish(),
            ProxyKind::Stcp { .. } => f.debug_struct("Stcp").field("secret", &Masked).finish(),
            ProxyKind::Sudp { .. } => f.debug_struct("Sudp").field("secret", &Masked).finish(),
        }
    }
}

/// A service of another peer, reached through a local listener (`[[visitors]]`, frp's
/// xtcp visitor; `peer connect`).
#[derive(Clone, PartialEq, Eq)]
pub struct Visitor {
    /// The visitor's own name (`name`), for logs.
    pub name: String,
    /// The service to reach, with its owner's `user.` prefix (see the module docs).
    pub server_name: String,
    /// `secretKey`, the service's secret. Printed as `MASKED` by `Debug`.
    pub secret: String,
    /// The local listener (`bindAddr`, `bindPort`; port 0: any free port).
    pub bind: SocketAddr,
    /// Bring the link up at start and keep it up (`keepTunnelOpen`).
    pub keep_open: bool,
    /// frp's stcp and sudp visitors: the link is always relayed, never punched.
    pub relay_only: bool,
    /// frp's sudp visitor: the local listener is a UDP socket, datagrams are carried.
    pub udp: bool,
}

impl fmt::Debug for Visitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Visitor")
            .field("name", &self.name)
            .field("server_name", &self.server_name)
            .field("secret", &Masked)
            .field("bind", &self.bind)
            .field("keep_open", &self.keep_open)
            .field("relay_only", &self.relay_only)
            .field("udp", &self.udp)
            .finish()
    }
}

/// Reads and parses a client config file (see the module docs for the keys).
pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
    config::load::<FrpcFile>(path)
}

/// Parses a client config from `text`; `origin` names it in errors (a file name).
pub fn parse(text: &str, origin: &str) -> Result<ClientConfig, ConfigError> {
    config::parse::<FrpcFile>(text, origin)
}

impl config::Model for FrpcFile {
    type Config = ClientConfig;
    const SIDE: Side = Side::Client;
    const KEYS: &'static [FrpKey] = FRP_KEYS;
    fn validate(self, origin: &str) -> Result<ClientConfig, ConfigError> {
        FrpcFile::validate(self, origin)
    }
    fn no_effect(cfg: &mut ClientConfig) -> &mut Vec<(String, &'static str)> {
        &mut cfg.no_effect
    }
}

// ---- The file's shape -------------------------------------------------------------

const NO_ADMIN: &str = "there is no admin API or web UI";
const NO_TRANSPORT: &str = "the connection to the server is TCP with Noise encryption and \
                            multiplexed streams, whose settings are punchline's own";
const ENCRYPTED: &str = "traffic is always encrypted";
const OWN_SCHEDULE: &str = "punch attempts and retries follow punchline's own schedule";
const RELAY: &str = "a link that cannot go direct is relayed through the server by itself";
/// Why `allowUsers` can only be `["*"]`.
const NO_USERS: &str =
    "the server does not know users: any visitor that knows secretKey may connect";

/// frp's client keys that the model below does not read: accepted with no effect, or
/// refused. The README's table of frp keys lists these and the model's own.
#[rustfmt::skip]
pub const FRP_KEYS: &[FrpKey] = &[
    FrpKey { key: "log", effect: Effect::NoEffect, why: NO_LOG },
    FrpKey { key: "loginFailExit", effect: Effect::NoEffect, why: "a wrong token ends the peer; a lost server is retried" },
    FrpKey { key: "webServer", effect: Effect::NoEffect, why: NO_ADMIN },
    FrpKey { key: "store", effect: Effect::NoEffect, why: NO_ADMIN },
    FrpKey { key: "clientID", effect: Effect::NoEffect, why: "peers are told apart by their identity keys" },
    FrpKey { key: "natHoleStunServer", effect: Effect::NoEffect, why: "peers learn their NAT mappings from the rendezvous server" },
    FrpKey { key: "dnsServer", effect: Effect::NoEffect, why: "the system's resolver is used" },
    FrpKey { key: "udpPacketSize", effect: Effect::NoEffect, why: "datagrams of any size up to 65,535 bytes are carried" },
    FrpKey { key: "metadatas", effect: Effect::NoEffect, why: "there is no metadata" },
    FrpKey { key: "featureGates", effect: Effect::NoEffect, why: "there are no feature gates" },
    FrpKey { key: "auth.additionalScopes", effect: Effect::NoEffect, why: "every connection is authenticated by the token" },
    FrpKey { key: "transport.tls", effect: Effect::NoEffect, why: NO_TLS },
    FrpKey { key: "transport.heartbeatInterval", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.heartbeatTimeout", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.poolCount", effect: Effect::NoEffect, why: "streams are opened on demand over one connection" },
    FrpKey { key: "transport.tcpMux", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.tcpMuxKeepaliveInterval", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.dialServerTimeout", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.dialServerKeepalive", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.wireProtocol", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.quic", effect: Effect::NoEffect, why: NO_TRANSPORT },
    FrpKey { key: "transport.connectServerLocalIP", effect: Effect::Refused, why: "the connection to the server leaves from the address the system picks" },
    FrpKey { key: "transport.proxyURL", effect: Effect::Refused, why: "the server is reached directly, not through a proxy" },
    FrpKey { key: "auth.oidc", effect: Effect::Refused, why: "the only auth.method is \"token\"" },
    FrpKey { key: "auth.tokenSource", effect: Effect::Refused, why: "put the token in auth.token, or in a {{ .Envs.NAME }} template" },
    FrpKey { key: "includes", effect: Effect::Refused, why: "put every proxy in the one file" },
    FrpKey { key: "virtualNet", effect: Effect::Refused, why: "there is no virtual network" },
    FrpKey { key: "proxies[].transport.useEncryption", effect: Effect::NoEffect, why: ENCRYPTED },
    FrpKey { key: "proxies[].transport.bandwidthLimit", effect: Effect::Refused, why: "there are no bandwidth limits" },
    FrpKey { key: "proxies[].transport.bandwidthLimitMode", effect: Effect::Refused, why: "there are no bandwidth limits" },
    FrpKey { key: "proxies[].transport.proxyProtocolVersion", effect: Effect::Refused, why: "there is no PROXY protocol header" },
    FrpKey { key: "proxies[].metadatas", effect: Effect::NoEffect, why: "there is no metadata" },
    FrpKey { key: "proxies[].annotations", effect: Effect::NoEffect, why: NO_ADMIN },
    FrpKey { key: "proxies[].healthCheck", effect: Effect::NoEffect, why: "there are no health checks: the proxy stays registered" },
    FrpKey { key: "proxies[].loadBalancer", effect: Effect::Refused, why: "there are no load balancing groups" },
    FrpKey { key: "proxies[].plugin", effect: Effect::Refused, why: "there are no plugins; point localIP and localPort at a service" },
    FrpKey { key: "range", effect: Effect::Refused, why: "INI [range:NAME] sections are not read; give each port a proxy of its own" },
    FrpKey { key: "visitors[].transport.useEncryption", effect: Effect::NoEffect, why: ENCRYPTED },
    FrpKey { key: "visitors[].transport.useCompression", effect: Effect::NoEffect, why: "data is not compressed" },
    FrpKey { key: "visitors[].protocol", effect: Effect::NoEffect, why: "links are punched TCP connections, or relayed" },
    FrpKey { key: "visitors[].maxRetriesAnHour", effect: Effect::NoEffect, why: OWN_SCHEDULE },
    FrpKey { key: "visitors[].minRetryInterval", effect: Effect::NoEffect, why: OWN_SCHEDULE },
    FrpKey { key: "visitors[].natTraversal", effect: Effect::NoEffect, why: OWN_SCHEDULE },
    FrpKey { key: "visitors[].fallbackTo", effect: Effect::NoEffect, why: RELAY },
    FrpKey { key: "visitors[].fallbackTimeoutMs", effect: Effect::NoEffect, why: RELAY },
    FrpKey { key: "visitors[].plugin", effect: Effect::Refused, why: "there are no visitor plugins" },
];

/// The file's model: every key punchline reads. Names match ignoring case.
#[derive(Deserialize)]
struct FrpcFile {
    #[serde(rename = "serverAddr")]
    server_addr: Option<String>,
    #[serde(rename = "serverPort")]
    server_port: Option<i64>,
    user: Option<String>,
    /// frp's `start`: run only the proxies and visitors named here.
    start: Option<Vec<String>>,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    transport: TransportFile,
    #[serde(default)]
    proxies: Vec<ProxyFile>,
    #[serde(default)]
    visitors: Vec<VisitorFile>,
    /// punchline's own: router port mappings (`auto`, `off`, `pcp`, `nat-pmp`, `upnp`).
    portmap: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthFile {
    method: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize, Default)]
struct TransportFile {
    protocol: Option<String>,
}

#[derive(Deserialize)]
struct ProxyFile {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "localIP")]
    local_ip: Option<String>,
    #[serde(rename = "localPort")]
    local_port: Option<i64>,
    #[serde(rename = "remotePort")]
    remote_port: Option<i64>,
    #[serde(rename = "customDomains")]
    custom_domains: Option<Vec<String>>,
    subdomain: Option<String>,
    locations: Option<Vec<String>>,
    #[serde(rename = "httpUser")]
    http_user: Option<String>,
    #[serde(rename = "httpPassword")]
    http_password: Option<String>,
    #[serde(rename = "hostHeaderRewrite")]
    host_header_rewrite: Option<String>,
    #[serde(rename = "routeByHTTPUser")]
    route_by_http_user: Option<String>,
    multiplexer: Option<String>,
    #[serde(rename = "requestHeaders")]
    request_headers: Option<HeadersFile>,
    #[serde(rename = "responseHeaders")]
    response_headers: Option<HeadersFile>,
    #[serde(rename = "secretKey")]
    secret_key: Option<String>,
    #[serde(rename = "allowUsers")]
    allow_users: Option<Vec<String>>,
    /// `false`: the proxy is skipped.
    enabled: Option<bool>,
    #[serde(default)]
    transport: ProxyTransportFile,
}

/// The proxy's `transport` table: only `useCompression` is read (the others are in
/// [`FRP_KEYS`]).
#[derive(Deserialize, Default)]
struct ProxyTransportFile {
    #[serde(rename = "useCompression")]
    use_compression: Option<bool>,
}

#[derive(Deserialize)]
struct HeadersFile {
    #[serde(default)]
    set: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct VisitorFile {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "serverName")]
    server_name: Option<String>,
    #[serde(rename = "serverUser")]
    server_user: Option<String>,
    #[serde(rename = "secretKey")]
    secret_key: Option<String>,
    #[serde(rename = "bindAddr")]
    bind_addr: Option<String>,
    #[serde(rename = "bindPort")]
    bind_port: Option<i64>,
    #[serde(rename = "keepTunnelOpen")]
    keep_tunnel_open: Option<bool>,
    /// `false`: the visitor is skipped.
    enabled: Option<bool>,
}

impl FrpcFile {
    /// Checks the values and fills in defaults.
    fn validate(self, origin: &str) -> Result<ClientConfig, ConfigError> {
        let e = Errors { origin };

        if let Some(m) = self.auth.method.as_deref().filter(|m| *m != "token") {
            return Err(e.unsupported(
                "auth.method",
                format!("{m:?} is not supported by punchline (token is)"),
            ));
        }
        if let Some(p) = self.transport.protocol.as_deref().filter(|p| *p != "tcp") {
            let known = ["kcp", "quic", "websocket", "wss"].contains(&p);
            let message = if known {
                format!("{p:?} is not supported by punchline (tcp is)")
            } else {
                format!("{p:?} is unknown (punchline supports tcp)")
            };
            return Err(if known {
                e.unsupported("transport.protocol", message)
            } else {
                e.invalid("transport.protocol", message)
            });
        }

        // frp's default: a server on this machine.
        let addr = self.server_addr.unwrap_or_else(|| "0.0.0.0".to_string());
        let port = match self.server_port {
            None => FRP_DEFAULT_PORT,
            Some(p) => e.port("serverPort", p, false)?,
        };
        let server = match host_port(&addr, port) {
            Some(s) => s,
            None if addr.contains("://") => {
                return Err(e.invalid(
                    "serverAddr",
                    format!("{addr:?}: a host name or IP address, without a scheme"),
                ))
            }
            None if addr
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
            {
                return Err(e.invalid(
                    "serverAddr",
                    format!("{addr:?}: put the port in serverPort"),
                ))
            }
            None => {
                return Err(e.invalid(
                    "serverAddr",
                    format!("{addr:?} is not a host name or IP address"),
                ))
            }
        };

        let portmap = match self.portmap.as_deref().map(str::parse) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(why)) => return Err(e.invalid("portmap", why)),
        };

        let token = match self.auth.token {
            Some(t) if t.is_empty() => {
                return Err(e.invalid(
                    "auth.token",
                    "is empty; remove the key if the server has no token",
                ))
            }
            t => t,
        };

        let user = match self.user {
            Some(u) if u.is_empty() => None,
            Some(u) => {
                e.name("user", &u)?;
                Some(u)
            }
            None => None,
        };

        // Each entry is checked on its own, so that one run names every entry to fix.
        let mut errors = Vec::new();
        let mut proxies = Vec::with_capacity(self.proxies.len());
        for (i, p) in self.proxies.into_iter().enumerate() {
            if p.enabled == Some(false) {
                continue;
            }
            match p.validate(&e, i, user.as_deref()) {
                Ok(p) => proxies.push(p),
                Err(err) => errors.push(err),
            }
        }
        let mut visitors = Vec::with_capacity(self.visitors.len());
        for (i, v) in self.visitors.into_iter().enumerate() {
            if v.enabled == Some(false) {
                continue;
            }
            match v.validate(&e, i, user.as_deref()) {
                Ok(v) => visitors.push(v),
                Err(err) => errors.push(err),
            }
        }
        if let Some(err) = ConfigError::from_list(origin, errors) {
            return Err(err);
        }
        check_proxies(&e, &proxies)?;
        if let Some(start) = &self.start {
            // frp's `start`: only these proxies and visitors run (names without the
            // user prefix, as written in the file).
            let unprefixed = |n: &str| -> String {
                match user.as_deref() {
                    Some(u) => n.strip_prefix(&format!("{u}.")).unwrap_or(n).to_string(),
                    None => n.to_string(),
                }
            };
            for (j, s) in start.iter().enumerate() {
                let known = proxies.iter().any(|p| unprefixed(&p.name) == *s)
                    || visitors.iter().any(|v| v.name == *s);
                if !known {
                    return Err(e.invalid(
                        format!("start[{j}]"),
                        format!("{s:?} is not the name of a proxy or visitor of this file"),
                    ));
                }
            }
            proxies.retain(|p| start.contains(&unprefixed(&p.name)));
            visitors.retain(|v| start.contains(&v.name));
        }
        let mut names = HashMap::new();
        let mut binds = HashMap::new();
        for (i, v) in visitors.iter().enumerate() {
            if let Some(first) = names.insert(v.name.as_str(), i) {
                return Err(e.invalid(
                    format!("visitors[{i}].name"),
                    format!("{:?} is the name of visitors[{first}] too", v.name),
                ));
            }
            if v.bind.port() != 0 {
                if let Some(first) = binds.insert(v.bind, i) {
                    return Err(e.invalid(
                        format!("visitors[{i}].bindPort"),
                        format!("visitors[{first}] listens on {} too", v.bind),
                    ));
                }
            }
        }

        Ok(ClientConfig {
            server,
            token,
            proxies,
            visitors,
            portmap,
            no_effect: Vec::new(),
        })
    }
}

/// Checks across proxies: names, tcp ports and http routes used twice.
fn check_proxies(e: &Errors<'_>, proxies: &[Proxy]) -> Result<(), ConfigError> {
    let mut names = HashMap::new();
    let mut ports = HashMap::new();
    let mut routes = HashMap::new();
    for (i, p) in proxies.iter().enumerate() {
        if let Some(first) = names.insert(p.name.as_str(), i) {
            return Err(e.invalid(
                format!("proxies[{i}].name"),
                format!("{:?} is the name of proxies[{first}] too", p.name),
            ));
        }
        match &p.kind {
            ProxyKind::Tcp { remote_port } | ProxyKind::Udp { remote_port }
                if *remote_port != 0 =>
            {
                if let Some(first) = ports.insert(*remote_port, i) {
                    return Err(e.invalid(
                        format!("proxies[{i}].remotePort"),
                        format!("proxies[{first}] asks for port {remote_port} too"),
                    ));
                }
            }
            ProxyKind::Http(route) => {
                let hosts = route.domains.iter().cloned().chain(
                    route
                        .subdomain
                        .iter()
                        .map(|s| format!("{s}.<subDomainHost>")),
                );
                for host in hosts {
                    let root = ["/".to_string()];
                    let locations = if route.locations.is_empty() {
                        &root[..]
                    } else {
                        &route.locations[..]
                    };
                    for location in locations {
                        let key = match &route.route_by_user {
                            Some(u) => format!("{location} (user {u})"),
                            None => location.clone(),
                        };
                        if let Some(first) = routes.insert((host.clone(), key.clone()), i) {
                            return Err(e.invalid(
                                format!("proxies[{i}]"),
                                format!("proxies[{first}] serves {host}{key} too"),
                            ));
                        }
                    }
                }
            }
            ProxyKind::Https { domains, subdomain } => {
                let hosts = domains
                    .iter()
                    .cloned()
                    .chain(subdomain.iter().map(|s| format!("{s}.<subDomainHost>")));
                for host in hosts {
                    if let Some(first) = routes.insert((host.clone(), "https".into()), i) {
                        return Err(e.invalid(
                            format!("proxies[{i}]"),
                            format!("proxies[{first}] serves https://{host} too"),
                        ));
                    }
                }
            }
            ProxyKind::Tcp { .. }
            | ProxyKind::Udp { .. }
            | ProxyKind::Xtcp { .. }
            | ProxyKind::Stcp { .. }
            | ProxyKind::Sudp { .. }
            | ProxyKind::TcpMux { .. } => {}
        }
    }
    Ok(())
}

impl ProxyFile {
    fn validate(self, e: &Errors<'_>, i: usize, user: Option<&str>) -> Result<Proxy, ConfigError> {
        let entry = format!("proxies[{i}]");
        let at = |key: &str| format!("{entry}.{key}");
        let name = e.required(self.name, &at("name"), "the proxy's name")?;
        e.name(&at("name"), &name)?;
        let kind = e.required(
            self.kind,
            &at("type"),
            "the proxy's type (tcp, http or xtcp)",
        )?;
        e.kind(
            &at("type"),
            &kind,
            &name,
            &[
                "tcp", "udp", "http", "https", "xtcp", "stcp", "sudp", "tcpmux",
            ],
            &[],
        )?;

        // Keys that belong to another type of proxy.
        let typed = [
            ("remotePort", self.remote_port.is_some(), "tcp"),
            ("customDomains", self.custom_domains.is_some(), "http"),
            ("subdomain", self.subdomain.is_some(), "http"),
            ("locations", self.locations.is_some(), "http"),
            ("httpUser", self.http_user.is_some(), "http"),
            ("httpPassword", self.http_password.is_some(), "http"),
            (
                "hostHeaderRewrite",
                self.host_header_rewrite.is_some(),
                "http",
            ),
            ("requestHeaders", self.request_headers.is_some(), "http"),
            ("responseHeaders", self.response_headers.is_some(), "http"),
            ("routeByHTTPUser", self.route_by_http_user.is_some(), "http"),
            ("secretKey", self.secret_key.is_some(), "xtcp"),
            ("allowUsers", self.allow_users.is_some(), "xtcp"),
        ];
        // stcp takes xtcp's keys, udp tcp's, https http's domains.
        let family = match kind.as_str() {
            "stcp" | "sudp" => "xtcp",
            "udp" => "tcp",
            k => k,
        };
        let https_key = |key: &str| {
            matches!(kind.as_str(), "https" | "tcpmux")
                && matches!(key, "customDomains" | "subdomain")
        };
        if let Some(m) = &self.multiplexer {
            if kind != "tcpmux" {
                return Err(e.invalid(
                    at("multiplexer"),
                    format!("is for tcpmux proxies, and {name:?} is of type {kind}"),
                ));
            }
            if m != "httpconnect" {
                return Err(e.unsupported(
                    at("multiplexer"),
                    format!("{m:?} is not supported by punchline (httpconnect is)"),
                ));
            }
        }
        if let Some((key, _, owner)) = typed
            .iter()
            .find(|(key, set, owner)| *set && *owner != family && !https_key(key))
        {
            return Err(e.invalid(
                at(key),
                format!("is for {owner} proxies, and {name:?} is of type {kind}"),
            ));
        }

        let compress = self.transport.use_compression.unwrap_or(false);
        let ip = self.local_ip.unwrap_or_else(|| "127.0.0.1".to_string());
        let local_port = e.required(
            self.local_port,
            &at("localPort"),
            "the local service's port",
        )?;
        let local_port = e.port(&at("localPort"), local_port, false)?;
        let local = host_port(&ip, local_port).ok_or_else(|| {
            e.invalid(
                at("localIP"),
                format!("{ip:?} is not an IP address or a host name"),
            )
        })?;

        let kind = match kind.as_str() {
            "tcp" => ProxyKind::Tcp {
                remote_port: e.port(&at("remotePort"), self.remote_port.unwrap_or(0), true)?,
            },
            "udp" => ProxyKind::Udp {
                remote_port: e.port(&at("remotePort"), self.remote_port.unwrap_or(0), true)?,
            },
            "http" | "https" | "tcpmux" => {
                let mut domains = Vec::new();
                for (j, d) in self
                    .custom_domains
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                {
                    let d = d.to_ascii_lowercase();
                    if !is_host_name(d.strip_prefix("*.").unwrap_or(&d)) {
                        return Err(e.invalid(
                            at(&format!("customDomains[{j}]")),
                            format!("{d:?} is not a domain name (like \"www.example.com\" or \"*.example.com\")"),
                        ));
                    }
                    domains.push(d);
                }
                let subdomain = match self.subdomain {
                    None => None,
                    Some(s) => {
                        let s = s.to_ascii_lowercase();
                        if s.contains('.') || !is_host_name(&s) {
                            return Err(e.invalid(
                                at("subdomain"),
                                format!("{s:?} is not one label of a domain name (like \"web\")"),
                            ));
                        }
                        Some(s)
                    }
                };
                if domains.is_empty() && subdomain.is_none() {
                    return Err(e.invalid(
                        entry.clone(),
                        format!("{kind} proxy {name:?} needs customDomains or subdomain"),
                    ));
                }
                if kind == "https" || kind == "tcpmux" {
                    // Only the domains: the bytes pass through untouched.
                    let kind = if kind == "https" {
                        ProxyKind::Https { domains, subdomain }
                    } else {
                        ProxyKind::TcpMux { domains, subdomain }
                    };
                    return Ok(Proxy {
                        name: prefixed(e, &at("name"), user, name)?,
                        local,
                        kind,
                        compress,
                    });
                }
                let mut locations = Vec::new();
                for (j, l) in self.locations.unwrap_or_default().into_iter().enumerate() {
                    // frp's default is [""], the same as "/".
                    let l = if l.is_empty() { "/".to_string() } else { l };
                    if !l.starts_with('/') || l.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(e.invalid(
                            at(&format!("locations[{j}]")),
                            format!("{l:?} is not a path prefix (like \"/\" or \"/static\")"),
                        ));
                    }
                    locations.push(l);
                }
                let basic_auth = match (self.http_user, self.http_password) {
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(e.invalid(at("httpPassword"), "missing (httpUser is set)"))
                    }
                    (None, Some(_)) => {
                        return Err(e.invalid(at("httpUser"), "missing (httpPassword is set)"))
                    }
                    (Some(u), Some(p)) => {
                        if u.is_empty() || u.contains(':') || u.chars().any(char::is_control) {
                            return Err(e.invalid(
                                at("httpUser"),
                                "is empty or has ':' or control characters",
                            ));
                        }
                        if p.is_empty() {
                            return Err(e.invalid(at("httpPassword"), "is empty"));
                        }
                        Some((u, p))
                    }
                };
                let route_by_user = match self.route_by_http_user {
                    Some(u) if u.is_empty() => None,
                    Some(u) if u.contains(':') || u.chars().any(char::is_control) => {
                        return Err(e.invalid(
                            at("routeByHTTPUser"),
                            "has ':' or control characters (it is a basic-auth user name)",
                        ))
                    }
                    u => u,
                };
                let host_rewrite = match self.host_header_rewrite {
                    Some(h)
                        if h.is_empty()
                            || h.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                    {
                        return Err(
                            e.invalid(at("hostHeaderRewrite"), format!("{h:?} is not a host"))
                        )
                    }
                    h => h,
                };
                ProxyKind::Http(HttpRoute {
                    domains,
                    subdomain,
                    locations,
                    host_rewrite,
                    basic_auth,
                    request_headers: headers(e, &at("requestHeaders"), self.request_headers)?,
                    response_headers: headers(e, &at("responseHeaders"), self.response_headers)?,
                    route_by_user,
                })
            }
            "xtcp" | "stcp" | "sudp" => {
                if let Some(users) = &self.allow_users {
                    if users != &["*"] {
                        return Err(e.unsupported(
                            at("allowUsers"),
                            format!("only [\"*\"] is supported by punchline ({NO_USERS})"),
                        ));
                    }
                }
                let secret = e.secret(self.secret_key, &at("secretKey"))?;
                if kind == "stcp" {
                    ProxyKind::Stcp { secret }
                } else if kind == "sudp" {
                    ProxyKind::Sudp { secret }
                } else {
                    ProxyKind::Xtcp { secret }
                }
            }
            // e.kind() above let only the four types through.
            other => {
                return Err(e.unsupported(
                    at("type"),
                    format!(
                        "{other:?} is not supported by punchline (tcp, udp, http, https, xtcp, stcp, sudp are)"
                    ),
                ))
            }
        };

        let name = prefixed(e, &at("name"), user, name)?;
        Ok(Proxy {
            name,
            local,
            kind,
            compress,
        })
    }
}

/// A proxy's name on the server: `user.name` when the file sets `user`, checked.
fn prefixed(
    e: &Errors<'_>,
    key: &str,
    user: Option<&str>,
    name: String,
) -> Result<String, ConfigError> {
    let name = match user {
        Some(u) => format!("{u}.{name}"),
        None => name,
    };
    e.name(key, &name)?;
    Ok(name)
}

/// `requestHeaders.set` / `responseHeaders.set` as a list, names checked (RFC 9110
/// tokens) and values free of line breaks.
fn headers(
    e: &Errors<'_>,
    key: &str,
    file: Option<HeadersFile>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(file) = file else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(file.set.len());
    for (name, value) in file.set {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(e.invalid(
                format!("{key}.set"),
                format!("{name:?} is not a header name"),
            ));
        }
        if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
            return Err(e.invalid(format!("{key}.set.{name}"), "has a line break"));
        }
        out.push((name, value));
    }
    Ok(out)
}

impl VisitorFile {
    fn validate(
        self,
        e: &Errors<'_>,
        i: usize,
        user: Option<&str>,
    ) -> Result<Visitor, ConfigError> {
        let entry = format!("visitors[{i}]");
        let at = |key: &str| format!("{entry}.{key}");
        let name = e.required(self.name, &at("name"), "the visitor's name")?;
        e.name(&at("name"), &name)?;
        let kind = e.required(self.kind, &at("type"), "the visitor's type (xtcp)")?;
        e.kind(
            &at("type"),
            &kind,
            &name,
            &["xtcp", "stcp", "sudp"],
            &["xudp", "stcp+sudp", "xtcp+xudp"],
        )?;
        let service = e.required(
            self.server_name,
            &at("serverName"),
            "the name of the xtcp proxy to reach",
        )?;
        e.name(&at("serverName"), &service)?;
        let owner = match self.server_user.as_deref() {
            Some("") | None => user,
            Some(u) => {
                e.name(&at("serverUser"), u)?;
                Some(u)
            }
        };
        let server_name = match owner {
            Some(u) => format!("{u}.{service}"),
            None => service,
        };
        e.name(&at("serverName"), &server_name)?;
        let secret = e.secret(self.secret_key, &at("secretKey"))?;
        let ip = match &self.bind_addr {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(s) => parse_ip(s)
                .ok_or_else(|| e.invalid(at("bindAddr"), format!("{s:?} is not an IP address")))?,
        };
        let port = e.required(
            self.bind_port,
            &at("bindPort"),
            "the local port to listen on",
        )?;
        if port < 0 {
            return Err(e.unsupported(
                at("bindPort"),
                format!(
                    "{port} (no listener, for frp's fallbackTo) is not supported by punchline \
                     (a visitor listens; 0 picks a free port)"
                ),
            ));
        }
        let port = e.port(&at("bindPort"), port, true)?;
        Ok(Visitor {
            name,
            server_name,
            secret,
            bind: SocketAddr::new(ip, port),
            keep_open: self.keep_tunnel_open.unwrap_or(false),
            relay_only: kind == "stcp" || kind == "sudp",
            udp: kind == "sudp",
        })
    }
}

/// `host:port`, bracketing an IPv6 address; `None` if `host` is neither an IP address
/// nor a host name.
fn host_port(host: &str, port: u16) -> Option<String> {
    match parse_ip(host) {
        Some(ip) => Some(SocketAddr::new(ip, port).to_string()),
        None if is_host_name(host) => Some(format!("{host}:{port}")),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ok(text: &str) -> ClientConfig {
        match parse(text, "frpc.toml") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(text: &str) -> ConfigError {
        match parse(text, "frpc.toml") {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name)
    }

    /// Every client example in `examples/` (`frpc*.toml`, `peer*.toml`; the server's
    /// tests take `frps*` and `rendezvous*` and refuse any other name).
    #[test]
    fn every_client_example_parses() {
        // The INI examples take the token from the environment, as frp's do.
        std::env::set_var("FRP_AUTH_TOKEN", "example-token");
        let mut n = 0;
        for entry in std::fs::read_dir(example("")).expect("examples/") {
            let path = entry.expect("examples/ entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let kind = name.ends_with(".toml") || name.ends_with(".ini");
            if kind && (name.starts_with("frpc") || name.starts_with("peer")) {
                if let Err(e) = load(&path) {
                    panic!("{e}");
                }
                n += 1;
            }
        }
        assert!(n >= 3, "expected frpc.toml, frpc.ini and peer.toml");
    }

    #[test]
    fn frpc_example_values() {
        let c = load(&example("frpc.toml")).expect("frpc.toml");
        assert_eq!(c.server, "frps.example.com:7000");
        assert!(c.token.as_deref().is_some_and(|t| !t.is_empty()));
        let names: Vec<&str> = c.proxies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ssh", "web", "p2p_ssh"]);

        assert_eq!(c.proxies[0].local, "127.0.0.1:22");
        assert_eq!(
            c.proxies[0].local_addr(),
            Some("127.0.0.1:22".parse().unwrap())
        );
        assert_eq!(c.proxies[0].kind, ProxyKind::Tcp { remote_port: 6000 });
        assert_eq!(
            c.proxies[0].kind.expose_spec(),
            Some(ExposeSpec::Tcp { remote_port: 6000 })
        );

        assert_eq!(c.proxies[1].local, "127.0.0.1:8000");
        let ProxyKind::Http(route) = &c.proxies[1].kind else {
            panic!("{:?}", c.proxies[1])
        };
        assert_eq!(route.domains, ["www.example.com"]);
        assert_eq!(route.subdomain.as_deref(), Some("web"));
        assert_eq!(route.locations, ["/", "/static"]);
        assert_eq!(
            route.basic_auth,
            Some(("admin".into(), "change-me-too".into()))
        );
        assert_eq!(route.host_rewrite.as_deref(), Some("localhost"));
        assert_eq!(
            route.request_headers,
            [("x-from-where".into(), "frp".into())]
        );
        assert_eq!(
            route.response_headers,
            [("x-served-by".into(), "frp".into())]
        );

        let ProxyKind::Xtcp { secret } = &c.proxies[2].kind else {
            panic!("{:?}", c.proxies[2])
        };
        assert_eq!(secret, "another-long-random-string");
        assert_eq!(c.proxies[2].kind.expose_spec(), None);

        assert_eq!(
            c.visitors,
            [Visitor {
                name: "p2p_desktop_visitor".into(),
                server_name: "p2p_desktop".into(),
                secret: "the-desktop-machines-secret".into(),
                bind: "127.0.0.1:6001".parse().unwrap(),
                keep_open: false,
                relay_only: false,
                udp: false,
            }]
        );
    }

    #[test]
    fn user_prefixes_names() {
        let c = load(&example("peer.toml")).expect("peer.toml");
        assert_eq!(c.server, "rendezvous.example.com:8877");
        let names: Vec<&str> = c.proxies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["alice.files", "alice.blog"]);
        assert_eq!(c.visitors[0].server_name, "bob.ssh");
        assert!(c.visitors[0].keep_open);

        let c = ok(r#"
            serverAddr = "s"
            user = "alice"
            [[visitors]]
            name = "v"
            type = "xtcp"
            serverName = "svc"
            secretKey = "k"
            bindPort = 0
        "#);
        assert_eq!(c.visitors[0].server_name, "alice.svc");
        let c = ok(r#"
            serverAddr = "s"
            user = ""
            [[visitors]]
            name = "v"
            type = "xtcp"
            serverName = "svc"
            serverUser = ""
            secretKey = "k"
            bindPort = 0
            transport.useEncryption = true
        "#);
        assert_eq!(c.visitors[0].server_name, "svc");
        assert_eq!(c.visitors[0].bind, "127.0.0.1:0".parse().unwrap());
    }

    #[test]
    fn defaults_and_addresses() {
        let c = ok("serverAddr = \"203.0.113.5\"");
        assert_eq!(c.server, "203.0.113.5:7000");
        assert_eq!(c.token, None);
        assert!(c.proxies.is_empty() && c.visitors.is_empty());
        assert_eq!(
            ok("serverAddr = \"::1\"\nserverPort = 8877").server,
            "[::1]:8877"
        );
        assert_eq!(
            ok("serverAddr = \"[2001:db8::1]\"").server,
            "[2001:db8::1]:7000"
        );
        let c = ok(r#"
            serverAddr = "s"
            transport.protocol = "tcp"
            transport.tls.enable = true
            auth.method = "token"
            [[proxies]]
            name = "db"
            type = "tcp"
            localIP = "postgres"
            localPort = 5432
            transport.useEncryption = true
            [[proxies]]
            name = "v6"
            type = "tcp"
            localIP = "::1"
            localPort = 80
            remotePort = 8080
            [[proxies]]
            name = "site"
            type = "http"
            localPort = 80
            customDomains = ["*.Example.org"]
            locations = [""]
        "#);
        assert_eq!(c.proxies[0].local, "postgres:5432");
        assert_eq!(c.proxies[0].local_addr(), None);
        assert_eq!(c.proxies[0].kind, ProxyKind::Tcp { remote_port: 0 });
        assert_eq!(c.proxies[1].local, "[::1]:80");
        let ProxyKind::Http(route) = &c.proxies[2].kind else {
            panic!()
        };
        assert_eq!(route.domains, ["*.example.org"]);
        assert_eq!(route.locations, ["/"]);
        assert_eq!(route.basic_auth, None);
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let c = load(&example("frpc.toml")).expect("frpc.toml");
        let shown = format!("{c:?}");
        for secret in [
            "change-me-to-a-long-random-string",
            "change-me-too",
            "another-long-random-string",
            "the-desktop-machines-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("MASKED"), "{shown}");
        assert!(
            shown.contains("admin"),
            "the user name is not secret: {shown}"
        );
        assert!(format!("{:?}", ok("serverAddr = \"s\"")).contains("token: None"));
    }

    /// A proxy entry of `type` with `extra` lines, after a valid first proxy.
    fn proxy(kind: &str, extra: &str) -> String {
        format!(
            "serverAddr = \"s\"\n[[proxies]]\nname = \"ok\"\ntype = \"tcp\"\nlocalPort = 1\n\
             [[proxies]]\nname = \"p\"\ntype = \"{kind}\"\nlocalPort = 2\n{extra}\n"
        )
    }

    fn visitor(extra: &str) -> String {
        format!("serverAddr = \"s\"\n[[visitors]]\nname = \"v\"\ntype = \"xtcp\"\n{extra}\n")
    }

    const HTTP: &str = "customDomains = [\"a.example\"]";
    const VISITOR_OK: &str = "serverName = \"svc\"\nsecretKey = \"k\"\nbindPort = 9000";

    /// Each refused file, the key its error must name, and a word of the message.
    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(String, &str, &str)> = vec![
            // Proxy and visitor types frp has and punchline does not.
            (proxy("kcp", ""), "proxies[1].type", "\"kcp\" (\"p\") is unknown (punchline supports tcp, udp, http, https, xtcp, stcp, sudp, tcpmux)"),
            (proxy("tcpmux", "customDomains = [\"a.example\"]\nmultiplexer = \"other\""), "proxies[1].multiplexer", "httpconnect"),
            (proxy("sudp", ""), "proxies[1].secretKey", "missing"),
            (proxy("https", "locations = [\"/\"]"), "proxies[1].locations", "is for http proxies"),
            (proxy("https", ""), "proxies[1]", "https proxy \"p\" needs customDomains or subdomain"),
            (proxy("tpc", ""), "proxies[1].type", "unknown"),
            (proxy("tcp", "type = \"http\""), "", "duplicate key: `type = \"http\"`"),
            (visitor("type = \"stcp\""), "", "duplicate key"),
            ("serverAddr = \"s\"\n[[visitors]]\nname = \"v\"\ntype = \"xudp\"".into(), "visitors[0].type", "(xtcp, stcp, sudp are)"),
            ("serverAddr = \"s\"\n[[visitors]]\nname = \"v\"\ntype = \"xudp\"".into(), "visitors[0].type", "not supported"),
            // frp keys punchline does not implement.
            (proxy("tcp", "transport.bandwidthLimit = \"1MB\""), "proxies[1].transport.bandwidthLimit", "not supported"),
            (proxy("tcp", "loadBalancer.group = \"g\""), "proxies[1].loadBalancer.group", "not supported"),
            (proxy("tcp", "[proxies.plugin]\ntype = \"socks5\""), "proxies[1].plugin.type", "plugins"),
            (proxy("xtcp", "secretKey = \"k\"\nallowUsers = [\"bob\"]"), "proxies[1].allowUsers", "[\"*\"]"),
            (visitor("serverName = \"svc\"\nsecretKey = \"k\"\nbindPort = -1"), "visitors[0].bindPort", "not supported"),
            ("serverAddr = \"s\"\ntransport.protocol = \"kcp\"".into(), "transport.protocol", "\"kcp\" is not supported by punchline (tcp is)"),
            ("serverAddr = \"s\"\nauth.method = \"oidc\"".into(), "auth.method", "not supported"),
            ("serverAddr = \"s\"\nincludes = [\"./confd/*.toml\"]".into(), "includes", "not supported"),
            // Typos.
            ("serverAdr = \"s\"".into(), "serverAdr", "did you mean `serverAddr`?"),
            ("serverAddr = \"s\"\nserver_port = 7000".into(), "server_port", "did you mean `serverPort`?"),
            (proxy("tcp", "remotPort = 6000"), "proxies[1].remotPort", "did you mean `remotePort`?"),
            (proxy("tcp", "local_ip = \"127.0.0.1\""), "proxies[1].local_ip", "did you mean `localIP`?"),
            (proxy("http", "custom_domains = [\"a\"]"), "proxies[1].custom_domains", "did you mean `customDomains`?"),
            (proxy("http", "requestHeaders.add.x = \"y\""), "proxies[1].requestHeaders.add", "set"),
            (visitor(&format!("{VISITOR_OK}\nkeepTunelOpen = true")), "visitors[0].keepTunelOpen", "did you mean `keepTunnelOpen`?"),
            // Missing, wrong and conflicting values.
            ("serverAddr = \"http://frps.example.com\"".into(), "serverAddr", "without a scheme"),
            ("serverAddr = \"frps.example.com:7000\"".into(), "serverAddr", "serverPort"),
            ("serverAddr = \"s\"\nserverPort = 0".into(), "serverPort", "0 is not allowed"),
            ("serverAddr = \"s\"\nserverPort = \"7000\"".into(), "serverPort", "expected an integer, found a string"),
            ("serverAddr = \"s\"\nauth.token = \"\"".into(), "auth.token", "empty"),
            ("serverAddr = \"s\"\nuser = \"a b\"".into(), "user", "spaces"),
            ("serverAddr = \"s\"\n[[proxies]]\ntype = \"tcp\"\nlocalPort = 22".into(), "proxies[0].name", "missing"),
            ("serverAddr = \"s\"\n[[proxies]]\nname = \"p\"\nlocalPort = 22".into(), "proxies[0].type", "missing"),
            (proxy("tcp", "name = \"x\""), "", "duplicate key"),
            ("serverAddr = \"s\"\n[[proxies]]\nname = \"p\"\ntype = \"tcp\"".into(), "proxies[0].localPort", "missing"),
            (proxy("tcp", "localIP = \"not an ip\""), "proxies[1].localIP", "not an IP address or a host name"),
            (proxy("tcp", "remotePort = 65536"), "proxies[1].remotePort", "not a port"),
            (proxy("tcp", "customDomains = [\"a.example\"]"), "proxies[1].customDomains", "is for http proxies"),
            (proxy("http", &format!("{HTTP}\nremotePort = 80")), "proxies[1].remotePort", "is for tcp proxies"),
            (proxy("xtcp", "secretKey = \"k\"\nsubdomain = \"x\""), "proxies[1].subdomain", "is for http proxies"),
            (proxy("tcp", "secretKey = \"k\""), "proxies[1].secretKey", "is for xtcp proxies"),
            (proxy("http", ""), "proxies[1]", "needs customDomains or subdomain"),
            (proxy("http", "customDomains = []"), "proxies[1]", "needs customDomains or subdomain"),
            (proxy("http", "customDomains = [\"a b\"]"), "proxies[1].customDomains[0]", "not a domain name"),
            (proxy("http", "customDomains = [42]"), "proxies[1].customDomains[0]", "expected a string"),
            (proxy("http", "customDomains = \"a.example\""), "proxies[1].customDomains", "expected a list, found a string"),
            (proxy("http", "subdomain = \"a.b\""), "proxies[1].subdomain", "one label"),
            (proxy("http", &format!("{HTTP}\nlocations = [\"static\"]")), "proxies[1].locations[0]", "path prefix"),
            (proxy("http", &format!("{HTTP}\nhttpUser = \"u\"")), "proxies[1].httpPassword", "missing"),
            (proxy("http", &format!("{HTTP}\nhttpPassword = \"p\"")), "proxies[1].httpUser", "missing"),
            (proxy("http", &format!("{HTTP}\nhttpUser = \"u\"\nhttpPassword = \"\"")), "proxies[1].httpPassword", "empty"),
            (proxy("http", &format!("{HTTP}\nhttpUser = \"u:v\"\nhttpPassword = \"p\"")), "proxies[1].httpUser", "':'"),
            (proxy("http", &format!("{HTTP}\nrequestHeaders.set.\"bad name\" = \"v\"")), "proxies[1].requestHeaders.set", "header name"),
            (proxy("http", &format!("{HTTP}\nresponseHeaders.set.x = \"a\\r\\nb: c\"")), "proxies[1].responseHeaders.set.x", "line break"),
            (proxy("http", &format!("{HTTP}\nrequestHeaders.set.x = 1")), "proxies[1].requestHeaders.set.x", "expected a string"),
            (proxy("xtcp", ""), "proxies[1].secretKey", "missing"),
            (proxy("xtcp", "secretKey = \"\""), "proxies[1].secretKey", "empty"),
            ("serverAddr = \"s\"\n[[proxies]]\nname = \"a\"\ntype = \"tcp\"\nlocalPort = 1\n[[proxies]]\nname = \"a\"\ntype = \"xtcp\"\nlocalPort = 2\nsecretKey = \"k\"".into(), "proxies[1].name", "proxies[0] too"),
            (proxy("tcp", "remotePort = 6000").replace("localPort = 1", "localPort = 1\nremotePort = 6000"), "proxies[1].remotePort", "port 6000 too"),
            (format!("{}\n[[proxies]]\nname = \"q\"\ntype = \"http\"\nlocalPort = 3\ncustomDomains = [\"A.example\"]", proxy("http", HTTP)), "proxies[2]", "a.example/ too"),
            (visitor("secretKey = \"k\"\nbindPort = 1"), "visitors[0].serverName", "missing"),
            (visitor("serverName = \"svc\"\nbindPort = 1"), "visitors[0].secretKey", "missing"),
            (visitor("serverName = \"svc\"\nsecretKey = \"\"\nbindPort = 1"), "visitors[0].secretKey", "empty"),
            (visitor("serverName = \"svc\"\nsecretKey = \"k\""), "visitors[0].bindPort", "missing"),
            (visitor("serverName = \"svc\"\nsecretKey = \"k\"\nbindPort = 70000"), "visitors[0].bindPort", "not a port"),
            (visitor(&format!("{VISITOR_OK}\nbindAddr = \"localhost\"")), "visitors[0].bindAddr", "not an IP address"),
            (visitor(&format!("{VISITOR_OK}\nkeepTunnelOpen = \"yes\"")), "visitors[0].keepTunnelOpen", "true or false"),
            (format!("{}\n[[visitors]]\nname = \"w\"\ntype = \"xtcp\"\n{VISITOR_OK}", visitor(VISITOR_OK)), "visitors[1].bindPort", "listens on 127.0.0.1:9000 too"),
            (format!("{}\n[[visitors]]\nname = \"v\"\ntype = \"xtcp\"\nserverName = \"o\"\nsecretKey = \"k\"\nbindPort = 9001", visitor(VISITOR_OK)), "visitors[1].name", "visitors[0] too"),
        ];
        for (text, key, words) in &cases {
            let e = err(text);
            let shown = e.to_string();
            assert!(shown.starts_with("frpc.toml"), "{shown}");
            assert!(
                shown.contains(words),
                "{text:?}: {shown} (wanted {words:?})"
            );
            if key.is_empty() {
                assert!(matches!(e, ConfigError::Syntax { .. }), "{text:?}: {e:?}");
            } else {
                assert!(
                    e.all().iter().any(|x| x.key() == Some(*key)),
                    "{text:?}: {shown}"
                );
                assert!(shown.contains(&format!(": {key}: ")), "{text:?}: {shown}");
            }
        }
    }

    #[test]
    fn errors_carry_the_line() {
        let text =
            "serverAddr = \"s\"\n\n[[proxies]]\nname = \"ssh\"\ntype = \"tcp\"\nlocalPort = 22\n\n\
                    [[proxies]]\nname = \"mux\"\ntype = \"tcpmuxx\"\nlocalPort = 53\n";
        let e = err(text);
        assert_eq!(
            e.to_string(),
            "frpc.toml:10: proxies[1].type: \"tcpmuxx\" (\"mux\") is unknown (punchline supports tcp, udp, http, https, xtcp, stcp, sudp, tcpmux)"
        );
        // From validate(), which has no spans: the line is looked up afterwards.
        let e = err("serverAddr = \"s\"\n[[proxies]]\nname = \"p\"\ntype = \"tcp\"\nlocalPort = 22\nremotePort = 99999\n");
        assert!(
            e.to_string()
                .starts_with("frpc.toml:6: proxies[0].remotePort: "),
            "{e}"
        );
        let e = err("serverAddr = \"s\"\n[[proxies]]\nname = \"p\"\ntype = \"tcp\"\n");
        assert!(
            e.to_string()
                .starts_with("frpc.toml:2: proxies[0].localPort: missing"),
            "{e}"
        );
    }

    /// A file as frp's own test framework writes it: log and login keys, TLS, a key in
    /// another case, all accepted; the keys with no effect in one list.
    #[test]
    fn frp_files_work_as_written() {
        let c = ok(r#"
            serverAddr = "127.0.0.1"
            serverPort = 7000
            loginFailExit = false
            log.level = "trace"
            log.to = "console"
            transport.tls.enable = true
            transport.poolCount = 5
            auth.Token = "t"
            [[proxies]]
            name = "tcp"
            type = "tcp"
            localport = 22
            remotePort = 6000
            transport.useEncryption = true
            transport.useCompression = true
            [[proxies]]
            name = "off"
            type = "tcp"
            localPort = 23
            enabled = false
        "#);
        assert_eq!(c.token.as_deref(), Some("t"));
        assert_eq!(c.proxies.len(), 1);
        assert_eq!(c.proxies[0].local, "127.0.0.1:22");
        assert!(c.proxies[0].compress);
        let keys: Vec<&str> = c.no_effect.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "loginFailExit",
                "log.level",
                "log.to",
                "transport.tls.enable",
                "transport.poolCount",
                "proxies[0].transport.useEncryption"
            ]
        );
        let w = config::no_effect_warning("frpc.toml", &c.no_effect).expect("a warning");
        assert!(w.starts_with("frpc.toml: these keys have no effect"), "{w}");
        assert!(w.contains("log.level, log.to (logs go to stderr"), "{w}");
        // frp's defaults: a server on this machine.
        assert_eq!(ok("").server, "0.0.0.0:7000");
    }

    #[test]
    fn every_refused_and_unknown_key_in_one_error() {
        let e = err(r#"
            serverAddr = "s"
            includes = ["./conf.d/*.toml"]
            [[proxies]]
            name = "a"
            type = "tcp"
            localPort = 1
            loadBalancer.group = "g"
            [proxies.plugin]
            type = "socks5"
            [[proxies]]
            name = "b"
            type = "tcp"
            localPort = 2
            remotPort = 7
        "#);
        let keys: Vec<_> = e.all().iter().filter_map(|e| e.key()).collect();
        assert_eq!(
            keys,
            [
                "includes",
                "proxies[0].loadBalancer.group",
                "proxies[0].plugin.type",
                "proxies[1].remotPort"
            ]
        );
        let shown = e.to_string();
        assert!(shown.starts_with("frpc.toml: 4 problems:"), "{shown}");
        assert!(shown.contains("did you mean `remotePort`?"), "{shown}");
    }

    #[test]
    fn templates_read_the_environment() {
        std::env::set_var("PUNCHLINE_TEST_FRPC_TOKEN", "from-env");
        let c = ok("serverAddr = \"s\"\nauth.token = \"{{ .Envs.PUNCHLINE_TEST_FRPC_TOKEN }}\"");
        assert_eq!(c.token.as_deref(), Some("from-env"));
        let e = err("serverAddr = \"s\"\n\nauth.token = \"{{ .Envs.PUNCHLINE_TEST_UNSET_VAR }}\"");
        assert_eq!(
            e.to_string(),
            "frpc.toml:3: template `{{ .Envs.PUNCHLINE_TEST_UNSET_VAR }}`: the environment \
             variable PUNCHLINE_TEST_UNSET_VAR is not set"
        );
    }

    #[test]
    fn start_picks_proxies() {
        let c = ok(r#"
            user = "u"
            start = ["b", "v"]
            [[proxies]]
            name = "a"
            type = "tcp"
            localPort = 1
            [[proxies]]
            name = "b"
            type = "tcp"
            localPort = 2
            [[visitors]]
            name = "v"
            type = "xtcp"
            serverName = "s"
            secretKey = "k"
            bindPort = 0
        "#);
        assert_eq!(c.proxies.len(), 1);
        assert_eq!(c.proxies[0].name, "u.b");
        assert_eq!(c.visitors.len(), 1);
        let e = err("start = [\"nope\"]");
        assert_eq!(e.key(), Some("start[0]"));
    }

    /// frp's legacy INI format, as its documentation writes it.
    #[test]
    fn yaml_and_json_files_read_as_toml_ones() {
        let toml = r#"serverAddr = "203.0.113.9"
serverPort = 7001
auth.token = "s3cret"
log.level = "info"

[[proxies]]
name = "ssh"
type = "tcp"
localPort = 22
remotePort = 6000
transport.useCompression = true

[[proxies]]
name = "web"
type = "http"
localPort = 80
customDomains = ["www.example.com", "example.com"]
locations = ["/", "/static"]

[[visitors]]
name = "v"
type = "stcp"
serverName = "secret"
secretKey = "k"
bindPort = 6001
"#;
        let yaml = r#"# frpc.yaml
serverAddr: 203.0.113.9
serverPort: 7001
auth:
  token: s3cret
log:
  level: info
proxies:
  - name: ssh
    type: tcp
    localPort: 22
    remotePort: 6000
    transport:
      useCompression: true
  - name: web
    type: http
    localPort: 80
    customDomains: [www.example.com, example.com]
    locations:
      - /
      - /static
    subdomain:
visitors:
  - name: v
    type: stcp
    serverName: secret
    secretKey: k
    bindPort: 6001
"#;
        let json = r#"{"serverAddr": "203.0.113.9", "serverPort": 7001,
  "auth": {"token": "s3cret"}, "log": {"level": "info"},
  "proxies": [
    {"name": "ssh", "type": "tcp", "localPort": 22, "remotePort": 6000,
     "transport": {"useCompression": true}},
    {"name": "web", "type": "http", "localPort": 80,
     "customDomains": ["www.example.com", "example.com"], "locations": ["/", "/static"]}],
  "visitors": [{"name": "v", "type": "stcp", "serverName": "secret", "secretKey": "k",
     "bindPort": 6001}]}"#;
        let want = parse(toml, "frpc.toml").expect("toml");
        assert_eq!(parse(yaml, "frpc.yaml").expect("yaml"), want);
        assert_eq!(parse(yaml, "frpc.YML").expect("yml"), want);
        assert_eq!(parse(json, "frpc.json").expect("json"), want);
        assert_eq!(want.no_effect.len(), 1);
        // Errors name the key (and a syntax error its line).
        let e = parse("serverPort: seven\n", "frpc.yaml").expect_err("a string port");
        assert!(e.to_string().contains("serverPort"), "{e}");
        let e = parse("proxies:\n  - name: a\n   type: [\n", "frpc.yaml").expect_err("syntax");
        assert!(e.to_string().starts_with("frpc.yaml:"), "{e}");
        let e =
            parse("{\"serverPort\": 1,\n \"serverAdr\": \"x\"}", "frpc.json").expect_err("typo");
        assert!(e.to_string().contains("did you mean `serverAddr`?"), "{e}");
        let e = parse("[1, 2]", "frpc.json").expect_err("not an object");
        assert!(e.to_string().contains("not an object"), "{e}");
    }

    #[test]
    fn ini_files_read_as_toml_ones() {
        let c = ok("# frpc.ini\n\
            [common]\n\
            server_addr = 203.0.113.9\n\
            server_port = 7001\n\
            token = s3cret\n\
            log_level = info\n\
            login_fail_exit = false\n\
            \n\
            [ssh]\n\
            type = tcp\n\
            local_ip = 127.0.0.1\n\
            local_port = 22\n\
            remote_port = 6000\n\
            use_encryption = true\n\
            \n\
            [web]\n\
            type = http\n\
            local_port = 80\n\
            custom_domains = www.example.com, example.com\n\
            locations = /,/static\n\
            http_user = admin\n\
            http_pwd = admin-pw\n\
            header_X-From-Where = frp\n\
            \n\
            [secret_ssh]\n\
            type = xtcp\n\
            sk = abcdefg\n\
            local_port = 22\n\
            \n\
            [secret_ssh_visitor]\n\
            role = visitor\n\
            type = xtcp\n\
            server_name = secret_ssh\n\
            sk = abcdefg\n\
            bind_addr = 127.0.0.1\n\
            bind_port = 6002\n");
        assert_eq!(c.server, "203.0.113.9:7001");
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        let names: Vec<&str> = c.proxies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ssh", "web", "secret_ssh"]);
        assert_eq!(c.proxies[0].kind, ProxyKind::Tcp { remote_port: 6000 });
        let ProxyKind::Http(route) = &c.proxies[1].kind else {
            panic!("{:?}", c.proxies[1])
        };
        assert_eq!(route.domains, ["www.example.com", "example.com"]);
        assert_eq!(route.locations, ["/", "/static"]);
        assert_eq!(route.basic_auth, Some(("admin".into(), "admin-pw".into())));
        assert_eq!(
            route.request_headers,
            [("X-From-Where".into(), "frp".into())]
        );
        assert_eq!(c.visitors[0].server_name, "secret_ssh");
        assert_eq!(c.visitors[0].bind, "127.0.0.1:6002".parse().unwrap());
        let keys: Vec<&str> = c.no_effect.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "log.level",
                "loginFailExit",
                "proxies[0].transport.useEncryption"
            ]
        );

        // Errors name the TOML key and the INI line.
        let e = err("[common]\nserver_addr = s\n[ssh]\ntype = tcp\nlocal_port = 22x\n");
        assert_eq!(
            e.to_string(),
            "frpc.toml:5: proxies[0].localPort: \"22x\" is not an integer"
        );
        let e = err("[common]\n[ssh]\ntype = tcp\nlocal_port = 22\nplugin = socks5\ngroup = g\n");
        let keys: Vec<_> = e.all().iter().filter_map(|e| e.key()).collect();
        assert_eq!(
            keys,
            ["proxies[0].plugin.type", "proxies[0].loadBalancer.group"]
        );
        let e = err("[common]\n[range:web]\ntype = tcp\nlocal_port = 6000-6005\n");
        assert_eq!(e.key(), Some("range[0].name"), "{e}");
    }

    /// The README's table of frp keys is the model's keys (those a file with every
    /// table reaches) and [`FRP_KEYS`], each with its status: nothing more, nothing less.
    #[test]
    fn readme_lists_every_key() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .expect("README.md");
        let mut rows = config::readme_rows(&readme, "frpc");
        let full = r#"serverAddr = "s"
serverPort = 7000
user = "u"
start = ["p"]
auth.method = "token"
auth.token = "t"
transport.protocol = "tcp"
[[proxies]]
name = "p"
type = "http"
localIP = "127.0.0.1"
localPort = 1
remotePort = 1
customDomains = ["a"]
subdomain = "b"
locations = ["/"]
httpUser = "u"
httpPassword = "p"
hostHeaderRewrite = "h"
routeByHTTPUser = "u"
multiplexer = "httpconnect"
requestHeaders.set.a = "b"
responseHeaders.set.a = "b"
secretKey = "k"
allowUsers = ["*"]
enabled = true
transport.useCompression = true
[[visitors]]
name = "v"
type = "xtcp"
serverName = "s"
serverUser = "u"
secretKey = "k"
bindAddr = "127.0.0.1"
bindPort = 1
keepTunnelOpen = true
enabled = true
"#;
        let want = config::key_statuses::<FrpcFile>(full, "frpc.toml").expect("the full file");
        rows.sort();
        assert_eq!(rows, want);
    }

    #[test]
    fn read_errors_name_the_file() {
        let e = load(Path::new("/nonexistent/frpc.toml")).expect_err("no such file");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/frpc.toml: cannot read"),
            "{e}"
        );
    }
}
