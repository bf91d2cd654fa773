//! Client config files (`peer -c FILE`): frp's `frpc.toml` format (frp v0.52 and
//! later) for the keys that map onto what punchline does.
//!
//! One parser reads both frp's files and punchline's own (`peer.toml`): they have the
//! same keys. `examples/frpc.toml` and `examples/peer.toml` show both.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `serverAddr` | the rendezvous server, host name or IP | required |
//! | `serverPort` | its port | `7000`, frp's (the CLI's is 8877) |
//! | `auth.method` | `"token"`, the only method | `"token"` |
//! | `auth.token` | the server's token (not empty) | none |
//! | `user` | prefixes proxy names: `user.name` (see below) | none |
//! | `transport.protocol` | `"tcp"`, the only one (a no-op) | `"tcp"` |
//! | `transport.tls.enable` | `true` only: the connection is always encrypted (with Noise, not TLS; a no-op) | `true` |
//!
//! `[[proxies]]`, each with `name` (unique), `type`, `localIP` (an IP address or a host
//! name, default `127.0.0.1`), `localPort`, and by type:
//!
//! * `tcp`: `remotePort` (0 or absent: the server chooses);
//! * `http`: `customDomains` (lowercased, `*.example.com` allowed) and/or `subdomain`
//!   (at least one), `locations` (path prefixes, default `/`), `httpUser` and
//!   `httpPassword` (basic auth, both or neither), `hostHeaderRewrite`,
//!   `requestHeaders.set.NAME`, `responseHeaders.set.NAME`;
//! * `xtcp`: `secretKey` (required), `allowUsers` (only `["*"]`: the server does not
//!   know users, so whoever knows `secretKey` may connect; frp's default, visitors of
//!   the same user, cannot be enforced).
//!
//! `transport.useEncryption = true` is accepted as a no-op on proxies and visitors:
//! punchline always encrypts. A key of another type (`remotePort` on an http proxy) is
//! an error.
//!
//! `[[visitors]]` (`type = "xtcp"`): `name` (unique), `serverName`, `serverUser`,
//! `secretKey` (required), `bindAddr` (an IP address, default `127.0.0.1`), `bindPort`
//! (required; 0: any free port), `keepTunnelOpen` (default `false`).
//!
//! `user` works as in frp: proxies are named `user.name` on the server, and a visitor
//! looks for `serverUser.serverName`, or `user.serverName` when `serverUser` is not
//! set (plain `serverName` when neither is).
//!
//! Every other key frp knows (proxy types `udp`, `https`, `stcp`, `sudp`, `tcpmux`;
//! plugins, `healthCheck`, `loadBalancer`, `webServer`, `log`, most of `transport`,
//! ...) is an error that names the key and says punchline does not support it, even
//! when it holds frp's default; a key nobody knows (a typo) is an error that names it
//! and the closest known key. Nothing is silently ignored.
//!
//! Parsing goes in three steps (rathole's `config.rs` is the model): the TOML is parsed
//! and every key and value type checked against a schema, so errors carry the key's
//! path and line (`frpc.toml:31: proxies[2].type: "udp" ("dns") is not supported by
//! punchline (tcp, http, xtcp are)`); serde (`deny_unknown_fields`) reads the same text
//! into the file's model; its `validate()` checks the values and fills in defaults,
//! giving a [`ClientConfig`].

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use common::proto::{ExposeSpec, HttpRoute};
use serde::Deserialize;

use common::config::schema::{self, Checker, Node, Schema};
pub use common::config::ConfigError;
use common::config::{is_host_name, parse_ip};

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
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| Masked))
            .field("proxies", &self.proxies)
            .field("visitors", &self.visitors)
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
    /// The server's HTTP virtual hosts route requests here by Host and path. `Debug`
    /// masks the basic auth password.
    Http(HttpRoute),
    /// Offered peer to peer to visitors that know the secret (`peer serve`).
    Xtcp {
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
            ProxyKind::Http(route) => Some(ExposeSpec::Http(route.clone())),
            ProxyKind::Xtcp { .. } => None,
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
            ProxyKind::Http(route) => {
                let mut shown = route.clone();
                if let Some((_, password)) = &mut shown.basic_auth {
                    *password = "MASKED".into();
                }
                f.debug_tuple("Http").field(&shown).finish()
            }
            ProxyKind::Xtcp { .. } => f.debug_struct("Xtcp").field("secret", &Masked).finish(),
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
}

impl fmt::Debug for Visitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Visitor")
            .field("name", &self.name)
            .field("server_name", &self.server_name)
            .field("secret", &Masked)
            .field("bind", &self.bind)
            .field("keep_open", &self.keep_open)
            .finish()
    }
}

/// Prints `MASKED` in place of a secret.
struct Masked;

impl fmt::Debug for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// Reads and parses a client config file (see the module docs for the keys).
pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_path_buf(),
        err,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses a client config from `text`; `origin` names it in errors (a file name).
pub fn parse(text: &str, origin: &str) -> Result<ClientConfig, ConfigError> {
    let checker = Checker { origin, text };
    let doc = checker.check(CLIENT)?;
    let file: FrpcFile = toml::from_str(text).map_err(|e| schema::syntax(origin, text, &e))?;
    file.validate(origin)
        .map_err(|e| checker.add_line(e, doc.get_ref()))
}

// ---- The file's shape -------------------------------------------------------------

const NO_LOG: &str = "logs go to stderr; set the level with -v or RUST_LOG";
const NO_ADMIN: &str = "there is no admin API or web UI";
const INI: &str = "this is frp's old INI format ([common]); only the TOML format of frp v0.52 \
                   and later is read";
/// Why `useEncryption` and `tls.enable` can only be `true`.
const ENCRYPTED: &str = "traffic is always encrypted; remove the key or set it to true";
const NO_TRANSPORT: &str = "the connection to the server is TCP with Noise encryption and \
                            yamux, which take no settings";
const OWN_SCHEDULE: &str = "punch attempts and retries follow punchline's own schedule";
const RELAY: &str = "a link that cannot go direct is relayed through the server by itself";
/// Why `allowUsers` can only be `["*"]`.
const NO_USERS: &str =
    "the server does not know users: any visitor that knows secretKey may connect";

// One key per line: the tables read best unwrapped.

/// The keys of `frpc.toml`.
#[rustfmt::skip]
const CLIENT: Schema = &[
    ("serverAddr", Node::Str),
    ("serverPort", Node::Int),
    ("user", Node::Str),
    ("auth", Node::Table(AUTH)),
    ("transport", Node::Table(TRANSPORT)),
    ("proxies", Node::Tables(PROXY)),
    ("visitors", Node::Tables(VISITOR)),
    ("clientID", Node::Unsupported("peers are told apart by their connections")),
    ("natHoleStunServer", Node::Unsupported("peers learn their NAT mappings from the server itself")),
    ("dnsServer", Node::Unsupported("the system's resolver is used")),
    ("loginFailExit", Node::Unsupported("a wrong token ends the peer; a lost server is retried")),
    ("start", Node::Unsupported("list only the proxies to run")),
    ("log", Node::Unsupported(NO_LOG)),
    ("webServer", Node::Unsupported(NO_ADMIN)),
    ("virtualNet", Node::Unsupported("there is no virtual network")),
    ("featureGates", Node::Unsupported("there are no feature gates")),
    ("udpPacketSize", Node::Unsupported("no UDP proxies")),
    ("metadatas", Node::Unsupported("there is no metadata")),
    ("includes", Node::Unsupported("put every proxy in the one file")),
    ("store", Node::Unsupported(NO_ADMIN)),
    ("common", Node::Unsupported(INI)),
];

/// `auth.*`.
#[rustfmt::skip]
const AUTH: Schema = &[
    ("method", Node::Kind { ok: &["token"], frp: &["oidc"] }),
    ("token", Node::Str),
    ("additionalScopes", Node::Unsupported("the token is checked by each connection's handshake")),
    ("tokenSource", Node::Unsupported("put the token in auth.token or in PUNCHLINE_TOKEN")),
    ("oidc", Node::Unsupported("the only auth.method is \"token\"")),
];

/// `transport.*` of the client as a whole.
#[rustfmt::skip]
const TRANSPORT: Schema = &[
    ("protocol", Node::Kind { ok: &["tcp"], frp: &["kcp", "quic", "websocket", "wss"] }),
    ("tls", Node::Table(TLS)),
    ("wireProtocol", Node::Unsupported(NO_TRANSPORT)),
    ("dialServerTimeout", Node::Unsupported(NO_TRANSPORT)),
    ("dialServerKeepalive", Node::Unsupported(NO_TRANSPORT)),
    ("connectServerLocalIP", Node::Unsupported(NO_TRANSPORT)),
    ("connectServerInterface", Node::Unsupported(NO_TRANSPORT)),
    ("proxyURL", Node::Unsupported("the server is reached directly, not through a proxy")),
    ("poolCount", Node::Unsupported("streams are opened on demand over one connection")),
    ("tcpMux", Node::Unsupported(NO_TRANSPORT)),
    ("tcpMuxKeepaliveInterval", Node::Unsupported(NO_TRANSPORT)),
    ("quic", Node::Unsupported(NO_TRANSPORT)),
    ("heartbeatInterval", Node::Unsupported(NO_TRANSPORT)),
    ("heartbeatTimeout", Node::Unsupported(NO_TRANSPORT)),
    ("auto", Node::Unsupported(NO_TRANSPORT)),
];

/// `transport.tls.*`.
#[rustfmt::skip]
const TLS: Schema = &[
    ("enable", Node::True("the connection to the server is always encrypted, with Noise rather than TLS")),
    ("disableCustomTLSFirstByte", Node::Unsupported(NO_TRANSPORT)),
    ("certFile", Node::Unsupported(NO_TRANSPORT)),
    ("keyFile", Node::Unsupported(NO_TRANSPORT)),
    ("trustedCaFile", Node::Unsupported(NO_TRANSPORT)),
    ("serverName", Node::Unsupported(NO_TRANSPORT)),
];

/// One `[[proxies]]` entry; which keys go with which type is checked in `validate()`.
#[rustfmt::skip]
const PROXY: Schema = &[
    ("name", Node::Str),
    ("type", Node::Kind { ok: &["tcp", "http", "xtcp"], frp: &["udp", "https", "stcp", "sudp", "tcpmux"] }),
    ("localIP", Node::Str),
    ("localPort", Node::Int),
    ("remotePort", Node::Int),
    ("customDomains", Node::StrList),
    ("subdomain", Node::Str),
    ("locations", Node::StrList),
    ("httpUser", Node::Str),
    ("httpPassword", Node::Str),
    ("hostHeaderRewrite", Node::Str),
    ("requestHeaders", Node::Table(HEADERS)),
    ("responseHeaders", Node::Table(HEADERS)),
    ("secretKey", Node::Str),
    ("allowUsers", Node::StrList),
    ("transport", Node::Table(PROXY_TRANSPORT)),
    ("enabled", Node::Unsupported("remove or comment out the proxy instead")),
    ("metadatas", Node::Unsupported("there is no metadata")),
    ("annotations", Node::Unsupported(NO_ADMIN)),
    ("loadBalancer", Node::Unsupported("there are no load balancing groups")),
    ("healthCheck", Node::Unsupported("there are no health checks")),
    ("plugin", Node::Unsupported("there are no plugins; point localIP and localPort at a service")),
    ("routeByHTTPUser", Node::Unsupported("http routes go by Host and path only")),
    ("multiplexer", Node::Unsupported("there is no tcpmux")),
];

/// `requestHeaders` and `responseHeaders`.
const HEADERS: Schema = &[("set", Node::StrMap)];

/// `transport.*` of a proxy.
#[rustfmt::skip]
const PROXY_TRANSPORT: Schema = &[
    ("useEncryption", Node::True(ENCRYPTED)),
    ("useCompression", Node::Unsupported("there is no compression")),
    ("bandwidthLimit", Node::Unsupported("there are no bandwidth limits")),
    ("bandwidthLimitMode", Node::Unsupported("there are no bandwidth limits")),
    ("proxyProtocolVersion", Node::Unsupported("there is no PROXY protocol header")),
];

/// One `[[visitors]]` entry.
#[rustfmt::skip]
const VISITOR: Schema = &[
    ("name", Node::Str),
    ("type", Node::Kind { ok: &["xtcp"], frp: &["stcp", "sudp", "xudp", "stcp+sudp", "xtcp+xudp"] }),
    ("serverName", Node::Str),
    ("serverUser", Node::Str),
    ("secretKey", Node::Str),
    ("bindAddr", Node::Str),
    ("bindPort", Node::Int),
    ("keepTunnelOpen", Node::Bool),
    ("transport", Node::Table(VISITOR_TRANSPORT)),
    ("enabled", Node::Unsupported("remove or comment out the visitor instead")),
    ("protocol", Node::Unsupported("links are punched TCP connections, not QUIC or KCP")),
    ("maxRetriesAnHour", Node::Unsupported(OWN_SCHEDULE)),
    ("minRetryInterval", Node::Unsupported(OWN_SCHEDULE)),
    ("fallbackTo", Node::Unsupported(RELAY)),
    ("fallbackTimeoutMs", Node::Unsupported(RELAY)),
    ("natTraversal", Node::Unsupported(OWN_SCHEDULE)),
    ("plugin", Node::Unsupported("there are no visitor plugins")),
];

/// `transport.*` of a visitor.
#[rustfmt::skip]
const VISITOR_TRANSPORT: Schema = &[
    ("useEncryption", Node::True(ENCRYPTED)),
    ("useCompression", Node::Unsupported("there is no compression")),
];

/// The file's model (`deny_unknown_fields`: the key check has run, so serde meets only
/// the keys above; unsupported ones have been refused already).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrpcFile {
    #[serde(rename = "serverAddr")]
    server_addr: Option<String>,
    #[serde(rename = "serverPort")]
    server_port: Option<i64>,
    user: Option<String>,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    transport: TransportFile,
    #[serde(default)]
    proxies: Vec<ProxyFile>,
    #[serde(default)]
    visitors: Vec<VisitorFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    method: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransportFile {
    protocol: Option<String>,
    #[serde(default)]
    tls: TlsFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    enable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    #[serde(rename = "requestHeaders")]
    request_headers: Option<HeadersFile>,
    #[serde(rename = "responseHeaders")]
    response_headers: Option<HeadersFile>,
    #[serde(rename = "secretKey")]
    secret_key: Option<String>,
    #[serde(rename = "allowUsers")]
    allow_users: Option<Vec<String>>,
    #[serde(default)]
    transport: EntryTransportFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadersFile {
    #[serde(default)]
    set: BTreeMap<String, String>,
}

/// `transport` of a proxy or a visitor.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EntryTransportFile {
    #[serde(rename = "useEncryption")]
    use_encryption: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    #[serde(default)]
    transport: EntryTransportFile,
}

/// Builds errors for one file.
struct Errors<'a> {
    origin: &'a str,
}

impl Errors<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    fn unsupported(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Unsupported {
            origin: self.origin.to_string(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A port; 0 only where `zero_ok`.
    fn port(&self, key: &str, value: i64, zero_ok: bool) -> Result<u16, ConfigError> {
        match u16::try_from(value) {
            Ok(0) if !zero_ok => Err(self.invalid(key, "0 is not allowed here (1-65535)")),
            Ok(p) => Ok(p),
            Err(_) => Err(self.invalid(key, format!("{value} is not a port (0-65535)"))),
        }
    }

    /// A required value.
    fn required<T>(&self, value: Option<T>, key: &str, what: &str) -> Result<T, ConfigError> {
        value.ok_or_else(|| self.invalid(key, format!("missing: {what}")))
    }

    /// A secret: present and not empty.
    fn secret(&self, value: Option<String>, key: &str) -> Result<String, ConfigError> {
        match value {
            None => Err(self.invalid(key, "missing: the shared secret")),
            Some(s) if s.is_empty() => Err(self.invalid(key, "is empty")),
            Some(s) => Ok(s),
        }
    }

    /// A proxy, visitor or service name: not empty, no spaces or control characters,
    /// short enough for the server.
    fn name(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        if name.is_empty() {
            return Err(self.invalid(key, "is empty"));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(key, format!("{name:?} has spaces or control characters")));
        }
        if name.len() > common::defaults::MAX_NAME_LEN {
            return Err(self.invalid(
                key,
                format!("is longer than {} bytes", common::defaults::MAX_NAME_LEN),
            ));
        }
        Ok(())
    }

    /// A `transport.useEncryption` that the key check let through (only `true` can be
    /// here; a second look costs nothing).
    fn no_op_encryption(&self, at: &str, t: &EntryTransportFile) -> Result<(), ConfigError> {
        if t.use_encryption == Some(false) {
            return Err(self.unsupported(
                format!("{at}.transport.useEncryption"),
                format!("false is not supported by punchline ({ENCRYPTED})"),
            ));
        }
        Ok(())
    }
}

impl FrpcFile {
    /// Checks the values and fills in defaults.
    fn validate(self, origin: &str) -> Result<ClientConfig, ConfigError> {
        let e = Errors { origin };

        if self.auth.method.as_deref().is_some_and(|m| m != "token") {
            return Err(e.unsupported("auth.method", "only \"token\" is supported"));
        }
        if self
            .transport
            .protocol
            .as_deref()
            .is_some_and(|p| p != "tcp")
        {
            return Err(e.unsupported("transport.protocol", "only \"tcp\" is supported"));
        }
        if self.transport.tls.enable == Some(false) {
            return Err(e.unsupported(
                "transport.tls.enable",
                "false is not supported by punchline (the connection is always encrypted)",
            ));
        }

        let addr = e.required(
            self.server_addr,
            "serverAddr",
            "the rendezvous server's address",
        )?;
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

        let mut proxies = Vec::with_capacity(self.proxies.len());
        for (i, p) in self.proxies.into_iter().enumerate() {
            proxies.push(p.validate(&e, i, user.as_deref())?);
        }
        check_proxies(&e, &proxies)?;

        let mut visitors = Vec::with_capacity(self.visitors.len());
        for (i, v) in self.visitors.into_iter().enumerate() {
            visitors.push(v.validate(&e, i, user.as_deref())?);
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
            ProxyKind::Tcp { remote_port } if *remote_port != 0 => {
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
                        if let Some(first) = routes.insert((host.clone(), location.clone()), i) {
                            return Err(e.invalid(
                                format!("proxies[{i}]"),
                                format!("proxies[{first}] serves {host}{location} too"),
                            ));
                        }
                    }
                }
            }
            ProxyKind::Tcp { .. } | ProxyKind::Xtcp { .. } => {}
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
        e.no_op_encryption(&entry, &self.transport)?;

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
            ("secretKey", self.secret_key.is_some(), "xtcp"),
            ("allowUsers", self.allow_users.is_some(), "xtcp"),
        ];
        if let Some((key, _, owner)) = typed.iter().find(|(_, set, owner)| *set && *owner != kind) {
            return Err(e.invalid(
                at(key),
                format!("is for {owner} proxies, and {name:?} is of type {kind}"),
            ));
        }

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
            "http" => {
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
                        format!("http proxy {name:?} needs customDomains or subdomain"),
                    ));
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
                })
            }
            "xtcp" => {
                if let Some(users) = &self.allow_users {
                    if users != &["*"] {
                        return Err(e.unsupported(
                            at("allowUsers"),
                            format!("only [\"*\"] is supported by punchline ({NO_USERS})"),
                        ));
                    }
                }
                ProxyKind::Xtcp {
                    secret: e.secret(self.secret_key, &at("secretKey"))?,
                }
            }
            // The key check let only the three types through.
            other => {
                return Err(e.unsupported(
                    at("type"),
                    format!("{other:?} is not supported by punchline (tcp, http, xtcp are)"),
                ))
            }
        };

        let name = match user {
            Some(u) => format!("{u}.{name}"),
            None => name,
        };
        e.name(&at("name"), &name)?;
        Ok(Proxy { name, local, kind })
    }
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
        if kind != "xtcp" {
            // The key check let only xtcp through.
            return Err(e.unsupported(
                at("type"),
                format!("{kind:?} is not supported by punchline (xtcp is)"),
            ));
        }
        e.no_op_encryption(&entry, &self.transport)?;
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
        let mut n = 0;
        for entry in std::fs::read_dir(example("")).expect("examples/") {
            let path = entry.expect("examples/ entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".toml") && (name.starts_with("frpc") || name.starts_with("peer")) {
                if let Err(e) = load(&path) {
                    panic!("{e}");
                }
                n += 1;
            }
        }
        assert!(n >= 2, "expected frpc.toml and peer.toml");
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
            (proxy("udp", ""), "proxies[1].type", "\"udp\" (\"p\") is not supported by punchline (tcp, http, xtcp are)"),
            (proxy("https", ""), "proxies[1].type", "not supported"),
            (proxy("stcp", "secretKey = \"k\""), "proxies[1].type", "not supported"),
            (proxy("sudp", ""), "proxies[1].type", "not supported"),
            (proxy("tcpmux", "multiplexer = \"httpconnect\""), "proxies[1].type", "not supported"),
            (proxy("tpc", ""), "proxies[1].type", "unknown"),
            (proxy("tcp", "type = \"http\""), "", "duplicate key: `type = \"http\"`"),
            (visitor("type = \"stcp\""), "", "duplicate key"),
            ("serverAddr = \"s\"\n[[visitors]]\nname = \"v\"\ntype = \"stcp\"".into(), "visitors[0].type", "(xtcp is)"),
            ("serverAddr = \"s\"\n[[visitors]]\nname = \"v\"\ntype = \"sudp\"".into(), "visitors[0].type", "not supported"),
            // frp keys punchline does not implement.
            (proxy("tcp", "transport.useCompression = true"), "proxies[1].transport.useCompression", "not supported"),
            (proxy("tcp", "transport.useEncryption = false"), "proxies[1].transport.useEncryption", "always encrypted"),
            (proxy("tcp", "transport.bandwidthLimit = \"1MB\""), "proxies[1].transport.bandwidthLimit", "not supported"),
            (proxy("tcp", "healthCheck.type = \"tcp\""), "proxies[1].healthCheck.type", "not supported"),
            (proxy("tcp", "loadBalancer.group = \"g\""), "proxies[1].loadBalancer.group", "not supported"),
            (proxy("tcp", "[proxies.plugin]\ntype = \"socks5\""), "proxies[1].plugin.type", "plugins"),
            (proxy("tcp", "[proxies.annotations]\nk = \"v\""), "proxies[1].annotations.k", "not supported"),
            (proxy("http", "routeByHTTPUser = \"u\""), "proxies[1].routeByHTTPUser", "not supported"),
            (proxy("xtcp", "secretKey = \"k\"\nallowUsers = [\"bob\"]"), "proxies[1].allowUsers", "[\"*\"]"),
            (visitor(&format!("{VISITOR_OK}\nprotocol = \"quic\"")), "visitors[0].protocol", "not supported"),
            (visitor(&format!("{VISITOR_OK}\nmaxRetriesAnHour = 8")), "visitors[0].maxRetriesAnHour", "not supported"),
            (visitor(&format!("{VISITOR_OK}\nfallbackTo = \"x\"")), "visitors[0].fallbackTo", "relayed"),
            (visitor("serverName = \"svc\"\nsecretKey = \"k\"\nbindPort = -1"), "visitors[0].bindPort", "not supported"),
            (visitor(&format!("{VISITOR_OK}\ntransport.useCompression = true")), "visitors[0].transport.useCompression", "not supported"),
            ("serverAddr = \"s\"\nwebServer.port = 7400".into(), "webServer.port", "not supported by punchline"),
            ("serverAddr = \"s\"\nlog.to = \"./frpc.log\"".into(), "log.to", "RUST_LOG"),
            ("serverAddr = \"s\"\nloginFailExit = true".into(), "loginFailExit", "not supported"),
            ("serverAddr = \"s\"\nnatHoleStunServer = \"stun.example:3478\"".into(), "natHoleStunServer", "not supported"),
            ("serverAddr = \"s\"\ntransport.poolCount = 5".into(), "transport.poolCount", "not supported"),
            ("serverAddr = \"s\"\ntransport.protocol = \"kcp\"".into(), "transport.protocol", "\"kcp\" is not supported by punchline (tcp is)"),
            ("serverAddr = \"s\"\ntransport.tls.enable = false".into(), "transport.tls.enable", "always encrypted"),
            ("serverAddr = \"s\"\ntransport.tls.certFile = \"c\"".into(), "transport.tls.certFile", "not supported"),
            ("serverAddr = \"s\"\nauth.method = \"oidc\"".into(), "auth.method", "not supported"),
            ("serverAddr = \"s\"\nincludes = [\"./confd/*.toml\"]".into(), "includes", "not supported"),
            ("[common]\nserver_addr = \"s\"".into(), "common.server_addr", "INI"),
            // Typos.
            ("serverAdr = \"s\"".into(), "serverAdr", "did you mean `serverAddr`?"),
            ("serverAddr = \"s\"\nserver_port = 7000".into(), "server_port", "did you mean `serverPort`?"),
            (proxy("tcp", "remotPort = 6000"), "proxies[1].remotPort", "did you mean `remotePort`?"),
            (proxy("tcp", "localIp = \"127.0.0.1\""), "proxies[1].localIp", "did you mean `localIP`?"),
            (proxy("http", "custom_domains = [\"a\"]"), "proxies[1].custom_domains", "did you mean `customDomains`?"),
            (proxy("http", "requestHeaders.add.x = \"y\""), "proxies[1].requestHeaders.add", "set"),
            (visitor(&format!("{VISITOR_OK}\nkeepTunelOpen = true")), "visitors[0].keepTunelOpen", "did you mean `keepTunnelOpen`?"),
            // Missing, wrong and conflicting values.
            ("serverPort = 7000".into(), "serverAddr", "missing"),
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
            (proxy("http", "customDomains = \"a.example\""), "proxies[1].customDomains", "expected a list of strings"),
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
                assert_eq!(e.key(), Some(*key), "{text:?}: {shown}");
                assert!(shown.contains(&format!(": {key}: ")), "{text:?}: {shown}");
            }
        }
    }

    #[test]
    fn errors_carry_the_line() {
        let text =
            "serverAddr = \"s\"\n\n[[proxies]]\nname = \"ssh\"\ntype = \"tcp\"\nlocalPort = 22\n\n\
                    [[proxies]]\nname = \"dns\"\ntype = \"udp\"\nlocalPort = 53\n";
        let e = err(text);
        assert_eq!(
            e.to_string(),
            "frpc.toml:10: proxies[1].type: \"udp\" (\"dns\") is not supported by punchline (tcp, http, xtcp are)"
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
