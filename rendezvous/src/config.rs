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
//! | `subDomainHost` | domain under which `subdomain` proxies live (lowercased) | none |
//! | `auth.method` | `"token"`, the only method | `"token"` |
//! | `auth.token` | the token peers must present (not empty) | none: anyone may connect |
//! | `allowPorts` | ports tcp proxies may ask for: `[{ start = 2000, end = 3000 }, { single = 3001 }]`; `[]` means all | all |
//! | `punchline.altAddr` | second address for STUN behaviour discovery, `IP` or `IP:PORT` as `--alt-addr` (port default: `bindPort` + 1) | none |
//!
//! Every other key frp knows (`webServer.*`, `transport.*`, `log.*`, `kcpBindPort`,
//! `quicBindPort`, `vhostHTTPSPort`, `tcpmuxHTTPConnectPort`, `httpPlugins`,
//! `auth.oidc.*`, ...) is an error that names the key and says punchline does not
//! support it, even when it holds frp's default; a key nobody knows (a typo) is an error
//! that names it and the closest known key. Nothing is silently ignored.
//!
//! Parsing goes in three steps (rathole's `config.rs` is the model): the TOML is parsed
//! and every key and value type checked against a schema, so errors carry the key's
//! path and line (`frps.toml:7: webServer.port: not supported by punchline: ...`);
//! serde (`deny_unknown_fields`) reads the same text into the file's model; its
//! `validate()` checks the values and fills in defaults, giving a [`ServerConfig`].

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use self::schema::{Checker, Node, Schema};

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
}

impl ServerConfig {
    /// A server on `bind` with no token, vhost, alternate address or port limits.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            vhost_http_port: None,
            subdomain_host: None,
            token: None,
            allow_ports: PortRanges::all(),
            alt_addr: None,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("bind", &self.bind)
            .field("vhost_http_port", &self.vhost_http_port)
            .field("subdomain_host", &self.subdomain_host)
            .field("token", &self.token.as_ref().map(|_| Masked))
            .field("allow_ports", &self.allow_ports)
            .field("alt_addr", &self.alt_addr)
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

/// Why a config file was refused. Every variant but `Read` names the file as it was
/// given (`origin`) and the key's path (`proxies[2].type`, `auth.token`); the line when
/// it is known (`frps.toml:12: ...`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{}: {message}", at(origin, *line))]
    Syntax {
        /// The file.
        origin: String,
        /// The line of the error, when known.
        line: Option<usize>,
        /// The TOML parser's message.
        message: String,
    },
    /// A key that neither punchline nor frp has: usually a typo.
    #[error("{}: {key}: unknown key; {hint}", at(origin, *line))]
    UnknownKey {
        /// The file.
        origin: String,
        /// The key's line.
        line: Option<usize>,
        /// The key's path.
        key: String,
        /// The closest known key, or the keys known there.
        hint: String,
    },
    /// A key or value of frp's that punchline does not implement.
    #[error("{}: {key}: {message}", at(origin, *line))]
    Unsupported {
        /// The file.
        origin: String,
        /// The key's line, when known.
        line: Option<usize>,
        /// The key's path.
        key: String,
        /// What is not supported, and what to do instead.
        message: String,
    },
    /// A value that is missing, of the wrong type, out of range or in conflict with
    /// another.
    #[error("{}: {key}: {message}", at(origin, *line))]
    Invalid {
        /// The file.
        origin: String,
        /// The value's line, when known.
        line: Option<usize>,
        /// The key's path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The path of the key the error is about (`proxies[2].type`), if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::Unsupported { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
}

/// `origin` or `origin:line`.
fn at(origin: &str, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{origin}:{line}"),
        None => origin.to_string(),
    }
}

/// Reads and parses a server config file (see the module docs for the keys).
pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses a server config from `text`; `origin` names it in errors (a file name).
pub fn parse(text: &str, origin: &str) -> Result<ServerConfig, ConfigError> {
    let checker = Checker { origin, text };
    let doc = checker.check(SERVER)?;
    let file: FrpsFile = toml::from_str(text).map_err(|e| schema::syntax(origin, text, &e))?;
    file.validate(origin)
        .map_err(|e| checker.add_line(e, doc.get_ref()))
}

// ---- The file's shape -------------------------------------------------------------

// Reasons shared by several refused keys.
const NO_TRANSPORT: &str = "peers connect over TCP with Noise encryption and yamux, which \
                            take no settings";
const NO_LOG: &str = "logs go to stderr; set the level with -v or RUST_LOG";
const NO_DASHBOARD: &str = "there is no dashboard or admin API";
const NO_HTTPS: &str = "there is no HTTPS virtual host; terminate TLS in front of vhostHTTPPort, \
                        or expose port 443 with a tcp proxy";
const INI: &str = "this is frp's old INI format ([common]); only the TOML format of frp v0.52 \
                   and later is read";

// One key per line: the tables read best unwrapped.

/// The keys of `frps.toml`.
#[rustfmt::skip]
const SERVER: Schema = &[
    ("bindAddr", Node::Str),
    ("bindPort", Node::Int),
    ("vhostHTTPPort", Node::Int),
    ("subDomainHost", Node::Str),
    ("auth", Node::Table(AUTH)),
    ("allowPorts", Node::Tables(PORTS)),
    ("punchline", Node::Table(PUNCHLINE)),
    ("kcpBindPort", Node::Unsupported("TCP only, no KCP")),
    ("quicBindPort", Node::Unsupported("TCP only, no QUIC")),
    ("proxyBindAddr", Node::Unsupported("proxies listen on bindAddr")),
    ("vhostHTTPSPort", Node::Unsupported(NO_HTTPS)),
    ("vhostHTTPTimeout", Node::Unsupported("the vhost's timeouts are fixed")),
    ("tcpmuxHTTPConnectPort", Node::Unsupported("there is no tcpmux (use tcp or xtcp proxies)")),
    ("tcpmuxPassthrough", Node::Unsupported("there is no tcpmux (use tcp or xtcp proxies)")),
    ("custom404Page", Node::Unsupported("the vhost's 404 page is built in")),
    ("sshTunnelGateway", Node::Unsupported("there is no SSH tunnel gateway")),
    ("webServer", Node::Unsupported(NO_DASHBOARD)),
    ("enablePrometheus", Node::Unsupported(NO_DASHBOARD)),
    ("log", Node::Unsupported(NO_LOG)),
    ("transport", Node::Unsupported(NO_TRANSPORT)),
    ("detailedErrorsToClient", Node::Unsupported("peers always get the reason of a refusal")),
    ("maxPortsPerClient", Node::Unsupported("there is no per-peer port limit")),
    ("userConnTimeout", Node::Unsupported("the timeouts are fixed")),
    ("udpPacketSize", Node::Unsupported("no UDP proxies")),
    ("natholeAnalysisDataReserveHours", Node::Unsupported("no NAT analysis data is kept")),
    ("allowedClientIPs", Node::Unsupported("filter peer addresses with a firewall")),
    ("httpPlugins", Node::Unsupported("there are no server plugins")),
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

/// One entry of `allowPorts`.
const PORTS: Schema = &[
    ("start", Node::Int),
    ("end", Node::Int),
    ("single", Node::Int),
];

/// `[punchline]`: punchline's own keys, which frp does not have.
const PUNCHLINE: Schema = &[("altAddr", Node::Str)];

/// The file's model (`deny_unknown_fields`: the key check has run, so serde meets only
/// the keys above; unsupported ones have been refused already).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FrpsFile {
    #[serde(rename = "bindAddr")]
    bind_addr: Option<String>,
    #[serde(rename = "bindPort")]
    bind_port: Option<i64>,
    #[serde(rename = "vhostHTTPPort")]
    vhost_http_port: Option<i64>,
    #[serde(rename = "subDomainHost")]
    subdomain_host: Option<String>,
    #[serde(default)]
    auth: AuthFile,
    #[serde(rename = "allowPorts")]
    allow_ports: Option<Vec<PortsFile>>,
    #[serde(default)]
    punchline: PunchlineFile,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    method: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortsFile {
    start: Option<i64>,
    end: Option<i64>,
    single: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PunchlineFile {
    #[serde(rename = "altAddr")]
    alt_addr: Option<String>,
}

impl FrpsFile {
    /// Checks the values and fills in defaults.
    fn validate(self, origin: &str) -> Result<ServerConfig, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            line: None,
            key: key.to_string(),
            message,
        };
        let port = |key: &str, value: i64, zero_ok: bool| match u16::try_from(value) {
            Ok(0) if !zero_ok => Err(invalid(key, "0 is not allowed here (1-65535)".into())),
            Ok(p) => Ok(p),
            Err(_) => Err(invalid(key, format!("{value} is not a port (0-65535)"))),
        };

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
            // The key check let only "token" through; a second look costs nothing.
            if method != "token" {
                return Err(invalid(
                    "auth.method",
                    format!("{method:?}: only \"token\" is supported"),
                ));
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

        let allow_ports = match self.allow_ports {
            None => PortRanges::all(),
            Some(entries) if entries.is_empty() => PortRanges::all(),
            Some(entries) => {
                let mut ranges = Vec::with_capacity(entries.len());
                for (i, e) in entries.iter().enumerate() {
                    let key = format!("allowPorts[{i}]");
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
                PortRanges::from_ranges(ranges)
            }
        };

        let alt_addr = match &self.punchline.alt_addr {
            None => None,
            Some(s) => Some(parse_alt(s, bind_port).ok_or_else(|| {
                invalid(
                    "punchline.altAddr",
                    format!("{s:?} is not IP or IP:PORT (like \"203.0.113.7\" or \"[2001:db8::7]:7001\")"),
                )
            })?),
        };

        Ok(ServerConfig {
            bind: SocketAddr::new(ip, bind_port),
            vhost_http_port,
            subdomain_host,
            token,
            allow_ports,
            alt_addr,
        })
    }
}

/// An IP address, IPv6 with or without brackets (frp writes `bindAddr = "::"`).
fn parse_ip(s: &str) -> Option<IpAddr> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    inner.parse().ok()
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

/// A DNS name: dot-separated labels of letters, digits and `-`, none empty.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

// ---- The key check ----------------------------------------------------------------
//
// The same engine is in peer/src/config.rs (the two crates share no config code yet;
// a test there keeps the copies equal); change both together.

mod schema {
    use std::ops::Range;

    use toml::de::{DeTable, DeValue};
    use toml::Spanned;

    use super::ConfigError;

    /// The keys of one table: each key's name and what it may hold.
    pub(super) type Schema = &'static [(&'static str, Node)];

    /// What a key may hold.
    #[derive(Clone, Copy)]
    #[allow(dead_code)] // the engine is shared with peer's config; not every kind is used here
    pub(super) enum Node {
        /// A string.
        Str,
        /// An integer (range checks come later, in `validate()`).
        Int,
        /// `true` or `false`.
        Bool,
        /// A list of strings.
        StrList,
        /// A table of strings under any keys (`requestHeaders.set`).
        StrMap,
        /// A table with these keys.
        Table(Schema),
        /// A list of tables with these keys (`[[proxies]]`, `allowPorts`).
        Tables(Schema),
        /// A string naming a kind of thing: one of `ok`, or one of frp's kinds that
        /// punchline does not implement (`frp`). Checked before the table's other keys,
        /// so that an unsupported proxy type is the error reported, not its keys.
        Kind {
            /// Supported values.
            ok: &'static [&'static str],
            /// frp's other values.
            frp: &'static [&'static str],
        },
        /// A boolean that must be `true` (punchline always does it: a no-op); `false`
        /// is refused with this reason.
        True(&'static str),
        /// A key frp has and punchline does not; the reason, or what to do instead.
        Unsupported(&'static str),
    }

    /// Runs the check over one document.
    pub(super) struct Checker<'a> {
        /// Names the document in errors.
        pub(super) origin: &'a str,
        /// The document.
        pub(super) text: &'a str,
    }

    /// A syntax error from the TOML parser (or from serde, which after the key check
    /// only fails if the schema and the model disagree).
    pub(super) fn syntax(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| line_of(text, &s));
        let mut message = e.message().trim().replace('\n', "; ");
        // The parser's message does not quote the line ("duplicate key"): add it.
        let source = line.and_then(|n| text.lines().nth(n - 1)).map(str::trim);
        if let Some(source) = source.filter(|s| !s.is_empty() && s.len() <= 100) {
            message = format!("{message}: `{source}`");
        }
        ConfigError::Syntax {
            origin: origin.to_string(),
            line,
            message,
        }
    }

    /// The 1-based line of a byte offset.
    fn line_of(text: &str, span: &Range<usize>) -> usize {
        let end = span.start.min(text.len());
        text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn join(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    }

    fn lookup(schema: Schema, key: &str) -> Option<Node> {
        schema.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
    }

    fn describe(v: &DeValue<'_>) -> &'static str {
        match v {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date",
            DeValue::Array(_) => "a list",
            DeValue::Table(_) => "a table",
        }
    }

    impl<'a> Checker<'a> {
        /// Parses the document and checks it against `schema`.
        pub(super) fn check(&self, schema: Schema) -> Result<Spanned<DeTable<'a>>, ConfigError> {
            let doc = DeTable::parse(self.text).map_err(|e| syntax(self.origin, self.text, &e))?;
            self.table(doc.get_ref(), schema, "")?;
            Ok(doc)
        }

        /// Adds the line of its key (or of the nearest enclosing one that is in the
        /// file) to an error from `validate()`, which works without spans.
        pub(super) fn add_line(&self, mut e: ConfigError, doc: &DeTable<'_>) -> ConfigError {
            if let ConfigError::Invalid { key, line, .. }
            | ConfigError::Unsupported { key, line, .. } = &mut e
            {
                if line.is_none() {
                    *line = self.locate(doc, key);
                }
            }
            e
        }

        /// The line of a key path such as `proxies[2].localPort`, or of the deepest
        /// part of it present in the file.
        fn locate(&self, doc: &DeTable<'_>, path: &str) -> Option<usize> {
            let mut table = doc;
            let mut found = None;
            for segment in path.split('.') {
                let (name, index) = match segment.strip_suffix(']').and_then(|s| s.split_once('['))
                {
                    Some((name, i)) => match i.parse::<usize>() {
                        Ok(i) => (name, Some(i)),
                        Err(_) => break,
                    },
                    None => (segment, None),
                };
                let Some((k, mut v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)
                else {
                    break;
                };
                found = Some(k.span());
                if let Some(i) = index {
                    let DeValue::Array(items) = v.get_ref() else {
                        break;
                    };
                    let Some(item) = items.get(i) else { break };
                    found = Some(item.span());
                    v = item;
                }
                match v.get_ref() {
                    DeValue::Table(t) => table = t,
                    _ => break,
                }
            }
            found.and_then(|span| self.line(&span))
        }

        fn line(&self, span: &Range<usize>) -> Option<usize> {
            Some(line_of(self.text, span))
        }

        fn invalid(&self, key: String, span: &Range<usize>, message: String) -> ConfigError {
            ConfigError::Invalid {
                origin: self.origin.to_string(),
                line: self.line(span),
                key,
                message,
            }
        }

        fn table(
            &self,
            table: &DeTable<'_>,
            schema: Schema,
            path: &str,
        ) -> Result<(), ConfigError> {
            let mut entries: Vec<_> = table.iter().collect();
            entries.sort_by_key(|(k, _)| k.span().start);
            let name = entries
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == "name")
                .and_then(|(_, v)| match v.get_ref() {
                    DeValue::String(s) => Some(s.as_ref()),
                    _ => None,
                });
            for (k, v) in &entries {
                let key: &str = k.get_ref().as_ref();
                if let Some(Node::Kind { ok, frp }) = lookup(schema, key) {
                    self.kind(v, ok, frp, &join(path, key), name)?;
                }
            }
            for (k, v) in &entries {
                let key: &str = k.get_ref().as_ref();
                let at = join(path, key);
                match lookup(schema, key) {
                    None => {
                        return Err(ConfigError::UnknownKey {
                            origin: self.origin.to_string(),
                            line: self.line(&k.span()),
                            key: at,
                            hint: hint(key, schema),
                        })
                    }
                    Some(Node::Kind { .. }) => {}
                    Some(Node::Unsupported(why)) => {
                        let (key, span) = first_leaf(at, k.span(), v);
                        return Err(ConfigError::Unsupported {
                            origin: self.origin.to_string(),
                            line: self.line(&span),
                            key,
                            message: format!("not supported by punchline ({why})"),
                        });
                    }
                    Some(node) => self.value(v, node, at)?,
                }
            }
            Ok(())
        }

        fn kind(
            &self,
            v: &Spanned<DeValue<'_>>,
            ok: &[&str],
            frp: &[&str],
            path: &str,
            name: Option<&str>,
        ) -> Result<(), ConfigError> {
            let DeValue::String(s) = v.get_ref() else {
                return Err(self.invalid(
                    path.to_string(),
                    &v.span(),
                    format!("expected a string, found {}", describe(v.get_ref())),
                ));
            };
            let s: &str = s.as_ref();
            if ok.contains(&s) {
                return Ok(());
            }
            let named = name.map(|n| format!(" ({n:?})")).unwrap_or_default();
            let supported = ok.join(", ");
            let verb = if ok.len() == 1 { "is" } else { "are" };
            if frp.contains(&s) {
                Err(ConfigError::Unsupported {
                    origin: self.origin.to_string(),
                    line: self.line(&v.span()),
                    key: path.to_string(),
                    message: format!(
                        "{s:?}{named} is not supported by punchline ({supported} {verb})"
                    ),
                })
            } else {
                Err(self.invalid(
                    path.to_string(),
                    &v.span(),
                    format!("{s:?}{named} is unknown (punchline supports {supported})"),
                ))
            }
        }

        fn value(
            &self,
            v: &Spanned<DeValue<'_>>,
            node: Node,
            path: String,
        ) -> Result<(), ConfigError> {
            let span = v.span();
            let wrong = |expected: &str, path: String, found: &DeValue<'_>| {
                Err(self.invalid(
                    path,
                    &span,
                    format!("expected {expected}, found {}", describe(found)),
                ))
            };
            match (node, v.get_ref()) {
                (Node::Str, DeValue::String(_)) | (Node::Bool, DeValue::Boolean(_)) => Ok(()),
                (Node::Str, found) => wrong("a string", path, found),
                (Node::Bool, found) => wrong("true or false", path, found),
                (Node::Int, DeValue::Integer(i)) => {
                    match i64::from_str_radix(i.as_str(), i.radix()) {
                        Ok(_) => Ok(()),
                        Err(_) => Err(self.invalid(path, &span, "is out of range".into())),
                    }
                }
                (Node::Int, found) => wrong("an integer", path, found),
                (Node::StrList, DeValue::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if !matches!(item.get_ref(), DeValue::String(_)) {
                            return wrong("a string", format!("{path}[{i}]"), item.get_ref());
                        }
                    }
                    Ok(())
                }
                (Node::StrList, found) => wrong("a list of strings", path, found),
                (Node::StrMap, DeValue::Table(t)) => {
                    for (k, item) in t.iter() {
                        if !matches!(item.get_ref(), DeValue::String(_)) {
                            return wrong("a string", join(&path, k.get_ref()), item.get_ref());
                        }
                    }
                    Ok(())
                }
                (Node::StrMap, found) => wrong("a table of strings", path, found),
                (Node::Table(schema), DeValue::Table(t)) => self.table(t, schema, &path),
                (Node::Table(_), found) => wrong("a table", path, found),
                (Node::Tables(schema), DeValue::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("{path}[{i}]");
                        match item.get_ref() {
                            DeValue::Table(t) => self.table(t, schema, &at)?,
                            found => return wrong("a table", at, found),
                        }
                    }
                    Ok(())
                }
                (Node::Tables(_), found) => wrong("a list of tables", path, found),
                (Node::True(_), DeValue::Boolean(true)) => Ok(()),
                (Node::True(why), DeValue::Boolean(false)) => Err(ConfigError::Unsupported {
                    origin: self.origin.to_string(),
                    line: self.line(&span),
                    key: path,
                    message: format!("false is not supported by punchline ({why})"),
                }),
                (Node::True(_), found) => wrong("true", path, found),
                // Handled by the callers.
                (Node::Kind { .. } | Node::Unsupported(_), _) => Ok(()),
            }
        }
    }

    /// The path and span of the first key inside an unsupported table, so that the
    /// error names `transport.tls.force`, not just `transport`.
    fn first_leaf(
        path: String,
        span: Range<usize>,
        v: &Spanned<DeValue<'_>>,
    ) -> (String, Range<usize>) {
        match v.get_ref() {
            DeValue::Table(t) => match t.iter().min_by_key(|(k, _)| k.span().start) {
                Some((k, inner)) => first_leaf(join(&path, k.get_ref()), k.span(), inner),
                None => (path, span),
            },
            _ => (path, span),
        }
    }

    /// "did you mean `bindPort`?" when a supported key is close (case, `_`/`-`, or two
    /// edits away), else the list of supported keys.
    fn hint(key: &str, schema: Schema) -> String {
        let norm = |s: &str| -> String {
            s.chars()
                .filter(|c| *c != '_' && *c != '-')
                .flat_map(char::to_lowercase)
                .collect()
        };
        let supported: Vec<&str> = schema
            .iter()
            .filter(|(_, n)| !matches!(n, Node::Unsupported(_)))
            .map(|(k, _)| *k)
            .collect();
        let wanted = norm(key);
        let close = supported.iter().find(|k| norm(k) == wanted).or_else(|| {
            supported
                .iter()
                .map(|k| (edit_distance(&norm(k), &wanted), k))
                .filter(|(d, k)| *d <= 2 && *d < k.len() / 2)
                .min_by_key(|(d, _)| *d)
                .map(|(_, k)| k)
        });
        match close {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("the keys punchline reads here are {}", supported.join(", ")),
        }
    }

    /// Levenshtein distance (the keys are short).
    fn edit_distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let above = row[j + 1];
                row[j + 1] = (above + 1)
                    .min(row[j] + 1)
                    .min(diagonal + usize::from(ca != *cb));
                diagonal = above;
            }
        }
        row[b.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The example configs shipped in `examples/`, by kind (from the file name).
    fn examples() -> (Vec<PathBuf>, Vec<PathBuf>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let (mut servers, mut clients) = (Vec::new(), Vec::new());
        for entry in std::fs::read_dir(&dir).expect("examples/") {
            let path = entry.expect("examples/ entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
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
            // frp keys punchline does not implement, even at frp's defaults.
            (
                "kcpBindPort = 7000",
                "kcpBindPort",
                "not supported by punchline",
            ),
            ("quicBindPort = 7002", "quicBindPort", "not supported"),
            ("vhostHTTPSPort = 443", "vhostHTTPSPort", "not supported"),
            (
                "tcpmuxHTTPConnectPort = 1337",
                "tcpmuxHTTPConnectPort",
                "not supported",
            ),
            ("webServer.port = 7500", "webServer.port", "dashboard"),
            (
                "[webServer]\naddr = \"127.0.0.1\"\nport = 7500",
                "webServer.addr",
                "dashboard",
            ),
            (
                "transport.tls.force = false",
                "transport.tls.force",
                "not supported",
            ),
            ("log.level = \"info\"", "log.level", "RUST_LOG"),
            (
                "enablePrometheus = true",
                "enablePrometheus",
                "not supported",
            ),
            (
                "maxPortsPerClient = 0",
                "maxPortsPerClient",
                "not supported",
            ),
            (
                "[[httpPlugins]]\nname = \"x\"",
                "httpPlugins",
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
            ("[common]\nbind_port = 7000", "common.bind_port", "INI"),
            // Typos.
            ("bindport = 7000", "bindport", "did you mean `bindPort`?"),
            ("bind_port = 7000", "bind_port", "did you mean `bindPort`?"),
            (
                "vhostHttpPort = 80",
                "vhostHttpPort",
                "did you mean `vhostHTTPPort`?",
            ),
            ("auth.tokn = \"x\"", "auth.tokn", "did you mean `token`?"),
            (
                "allowPorts = [{ singel = 3001 }]",
                "allowPorts[0].singel",
                "did you mean `single`?",
            ),
            ("[punchline]\nfoo = 1", "punchline.foo", "altAddr"),
            // Wrong types and values.
            (
                "bindPort = \"7000\"",
                "bindPort",
                "expected an integer, found a string",
            ),
            ("bindPort = 70000", "bindPort", "not a port"),
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
                "expected a list of tables",
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
        let e = err("bindPort = 7000\n\n# the dashboard\nwebServer.port = 7500\n");
        assert!(
            matches!(e, ConfigError::Unsupported { line: Some(4), .. }),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("frps.toml:4: webServer.port: "),
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
