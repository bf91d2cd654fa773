//! The routing table: which route serves a Host and path, and who may claim what.
//!
//! Writers ([`Vhosts::add`], [`Vhosts::remove`]) are rare: they rebuild an immutable
//! [`Table`] from the list of routes under a mutex and swap it in. Readers (every
//! request) take a read lock just long enough to find the route and clone its `Arc`.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError, RwLock,
    },
};

use base64::Engine as _;
use common::proto::HttpRoute;
use hyper::header::{HeaderName, HeaderValue};

use super::{
    pool::{Opener, Pool},
    MAX_ROUTE_DOMAINS, MAX_ROUTE_HEADERS, MAX_ROUTE_LOCATIONS,
};

/// One HTTP proxy of one peer, as the server registers it.
pub struct Route {
    /// The proxy's name, unique per owner (frp's `[[proxies]] name`).
    pub proxy: String,
    /// Where it is served and how requests and responses are changed.
    pub http: HttpRoute,
    /// Opens a stream to the peer for this proxy (see [`Opener`]).
    pub opener: Opener,
    /// The peer process's instance id: routes are claimed per owner.
    pub owner: u64,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("proxy", &self.proxy)
            .field("owner", &self.owner)
            .field("domains", &self.http.domains)
            .field("subdomain", &self.http.subdomain)
            .field("locations", &self.http.locations)
            .field(
                "basic_auth",
                &self.http.basic_auth.as_ref().map(|_| "MASKED"),
            )
            .finish_non_exhaustive()
    }
}

/// A registered route, ready for serving: names and headers parsed once.
pub(super) struct Entry {
    pub(super) proxy: String,
    pub(super) owner: u64,
    /// Normalized host names: lowercase, `*.suffix` or `*` for wildcards.
    hosts: Vec<String>,
    /// Locations, each normalized by [`normalize_location`]: starting with `/`, no
    /// dot segments, no `//`.
    locations: Vec<String>,
    /// The basic-auth user whose requests this route serves (frp's
    /// `routeByHTTPUser`); `None`: everyone's that no route of theirs takes.
    route_user: Option<Box<str>>,
    /// `Basic` credentials expected, as the decoded `user:password` bytes.
    pub(super) auth: Option<Vec<u8>>,
    pub(super) host_rewrite: Option<HeaderValue>,
    pub(super) request_headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) response_headers: Vec<(HeaderName, HeaderValue)>,
    online: AtomicBool,
    pub(super) pool: Pool,
}

impl Entry {
    pub(super) fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    fn owned_by(&self, owner: u64, proxy: &str) -> bool {
        self.owner == owner && self.proxy == proxy
    }

    /// Whether both routes claim some host and location for the same users.
    fn overlaps(&self, other: &Entry) -> bool {
        self.route_user == other.route_user
            && self.hosts.iter().any(|h| other.hosts.contains(h))
            && self.locations.iter().any(|l| other.locations.contains(l))
    }

    /// The location keys the server's registry files this route's claims under: the
    /// locations, each with ` (user NAME)` for a route by user (locations hold no
    /// spaces, so the two never collide).
    fn claim_keys(&self) -> Vec<String> {
        match &self.route_user {
            None => self.locations.clone(),
            Some(u) => self
                .locations
                .iter()
                .map(|l| format!("{l} (user {u})"))
                .collect(),
        }
    }
}

/// A route's claim on a location (a path prefix, in whole segments) of a host.
struct Loc {
    /// As [`normalize_location`] gives it.
    prefix: Box<str>,
    /// The route's `routeByHTTPUser`.
    user: Option<Box<str>>,
    entry: Arc<Entry>,
}

/// The immutable lookup structure (rebuilt on every change).
#[derive(Default)]
struct Table {
    /// Exact host names (custom domains and subdomains), each with its locations,
    /// longest prefix first.
    exact: HashMap<Box<str>, Vec<Loc>>,
    /// Wildcards by the suffix after `*.`; `*` alone is the empty suffix.
    wildcard: HashMap<Box<str>, Vec<Loc>>,
}

impl Table {
    fn build(entries: &[Arc<Entry>]) -> Table {
        let mut t = Table::default();
        for e in entries {
            for host in &e.hosts {
                let (map, key) = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut t.wildcard, suffix),
                    None if host == "*" => (&mut t.wildcard, ""),
                    None => (&mut t.exact, host.as_str()),
                };
                let locs = map.entry(key.into()).or_default();
                for prefix in &e.locations {
                    locs.push(Loc {
                        prefix: prefix.as_str().into(),
                        user: e.route_user.clone(),
                        entry: e.clone(),
                    });
                }
            }
        }
        for locs in t.exact.values_mut().chain(t.wildcard.values_mut()) {
            locs.sort_by_key(|l| std::cmp::Reverse(l.prefix.len()));
        }
        t
    }

    /// The route for `host` (normalized) and `path` (normalized by
    /// [`normalize_path`]): exact names first, then wildcards from the most specific
    /// suffix to `*`; within a name, the longest location that matches the path
    /// ([`location_matches`]), among the routes of the request's basic-auth `user`
    /// first, then among those for everyone (frp's `routeByHTTPUser`). A name whose
    /// locations all miss falls through to the wildcards, as in frp.
    fn find(&self, host: &str, path: &str, user: Option<&str>) -> Option<&Arc<Entry>> {
        let key = route_key(path);
        let longest = |locs| longest(locs, &key, user);
        if let Some(e) = longest(self.exact.get(host)) {
            return Some(e);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(e) = longest(self.wildcard.get(rest)) {
                return Some(e);
            }
        }
        longest(self.wildcard.get(""))
    }
}

/// The entry of the longest location that matches `key` (a [`route_key`]; `locs` is
/// sorted, longest first).
fn longest<'t>(
    locs: Option<&'t Vec<Loc>>,
    key: &str,
    user: Option<&str>,
) -> Option<&'t Arc<Entry>> {
    let locs = locs?;
    let of = |u: Option<&str>| {
        locs.iter()
            .find(|l| l.user.as_deref() == u && location_matches(&l.prefix, key))
    };
    user.and_then(|u| of(Some(u)))
        .or_else(|| of(None))
        .map(|l| &l.entry)
}

/// Whether location `loc` (normalized) matches a path's [`route_key`], in whole
/// segments: `/public` matches `/public`, `/public/` and `/public/x`, not
/// `/publicadmin`; `/api/` matches `/api/` and below, not `/api`; `/` matches every
/// path (but not the `*` of `OPTIONS *`).
fn location_matches(loc: &str, key: &str) -> bool {
    key.strip_prefix(loc)
        .is_some_and(|rest| loc.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
}

/// What locations are matched against: a normalized path with its empty segments
/// (`//`) and each segment's `;parameters` left out, a trailing `/` kept.
/// `//admin` and `/admin;jsessionid=1` are matched as `/admin`, since many servers
/// read them so (nginx merges slashes, Java servers drop path parameters): routing
/// must not put them under a shorter location than the service will. The request
/// itself is forwarded unchanged by this. Borrows when there is nothing to leave
/// out (the common case).
fn route_key(path: &str) -> Cow<'_, str> {
    if !path.starts_with('/') || (!path.contains("//") && !path.contains(';')) {
        return Cow::Borrowed(path);
    }
    let mut key = String::with_capacity(path.len());
    let mut trailing = false;
    for segment in path.split('/').skip(1) {
        let name = segment.split(';').next().unwrap_or(segment);
        trailing = name.is_empty();
        if !trailing {
            key.push('/');
            key.push_str(name);
        }
    }
    if trailing || key.is_empty() {
        key.push('/');
    }
    Cow::Owned(key)
}

/// The vhost routing table, shared (in an `Arc`) by whoever registers routes and
/// [`super::serve`].
pub struct Vhosts {
    /// Names under which `subdomain` routes live (frp's `subDomainHost`).
    subdomain_host: Option<String>,
    /// The public port of the vhost listener, for the URLs [`Vhosts::add`] reports.
    http_port: u16,
    /// `http`, or `https` for the table of the HTTPS (SNI) vhost: URLs and errors.
    scheme: &'static str,
    /// Every route; the source the table is built from. Held while a change is made.
    entries: Mutex<Vec<Arc<Entry>>>,
    table: RwLock<Arc<Table>>,
    /// Where answered requests are counted, by status code.
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl fmt::Debug for Vhosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vhosts")
            .field("subdomain_host", &self.subdomain_host)
            .field("routes", &self.lock_entries().len())
            .finish_non_exhaustive()
    }
}

impl Vhosts {
    /// An empty table. `subdomain_host` (frp's `subDomainHost`, e.g. `example.com`)
    /// enables routes by `subdomain`; without it they are refused.
    pub fn new(subdomain_host: Option<String>) -> Self {
        Vhosts {
            subdomain_host: subdomain_host
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty()),
            http_port: 80,
            scheme: "http",
            entries: Mutex::new(Vec::new()),
            table: RwLock::new(Arc::new(Table::default())),
            metrics: None,
        }
    }

    /// Sets the public port of the vhost listener, so that the URLs returned by
    /// [`Vhosts::add`] carry it (80, the default, is left out).
    pub fn with_http_port(mut self, port: u16) -> Self {
        self.http_port = port;
        self
    }

    /// Makes this the table of the HTTPS (SNI) vhost on public port `port`: URLs are
    /// `https://` (443 left out), errors name https proxies.
    pub fn with_https_port(mut self, port: u16) -> Self {
        self.http_port = port;
        self.scheme = "https";
        self
    }

    /// Makes this the table of the tcpmux (HTTP CONNECT) port `port`: URLs are
    /// `tcpmux://HOST:PORT/`, errors name tcpmux proxies.
    pub fn with_tcpmux_port(mut self, port: u16) -> Self {
        self.http_port = port;
        self.scheme = "tcpmux";
        self
    }

    /// Counts every answered request in `metrics` (by status code).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A request was answered with `status`.
    pub(crate) fn answered(&self, status: u16) {
        if let Some(m) = &self.metrics {
            m.vhost_response(status);
        }
    }

    /// Registers a route, online, and returns the URLs it serves.
    ///
    /// The same owner adding the same proxy again replaces it (a reconnecting peer
    /// takes its route back). Fails, changing nothing, when the route is invalid
    /// (no domain nor subdomain, a malformed name, location or header, a subdomain
    /// without the server's subdomain host) or when one of its host + location pairs
    /// is already claimed by another proxy; the error names the host, the location
    /// and both claimants.
    pub fn add(&self, route: Route) -> Result<Vec<String>, String> {
        let entry = Arc::new(self.entry(route)?);
        let mut entries = self.lock_entries();
        let mut claimed = HashMap::new();
        for e in entries.iter() {
            // An offline owner (its peer is gone, within the server's grace period)
            // gives way to a new claim; its route is dropped below.
            if e.owned_by(entry.owner, &entry.proxy) || !e.is_online() {
                continue;
            }
            for h in &e.hosts {
                for l in &e.locations {
                    claimed.insert((h.as_str(), l.as_str(), e.route_user.as_deref()), e);
                }
            }
        }
        for h in &entry.hosts {
            for l in &entry.locations {
                let user = entry.route_user.as_deref();
                if let Some(other) = claimed.get(&(h.as_str(), l.as_str(), user)) {
                    let whose = user.map_or(String::new(), |u| format!(" for user {u}"));
                    return Err(format!(
                        "host {h} location {l}{whose} is already served by proxy '{}' of \
                         another connection; proxy '{}' cannot claim it too",
                        other.proxy, entry.proxy
                    ));
                }
            }
        }
        let urls = self.urls(&entry);
        entries.retain(|e| {
            !e.owned_by(entry.owner, &entry.proxy) && (e.is_online() || !e.overlaps(&entry))
        });
        entries.push(entry);
        self.publish(&entries);
        Ok(urls)
    }

    /// The host names (normalised: lowercase, `*.suffix`, `*`) and locations `http`
    /// claims, checked as [`Vhosts::add`] checks them: what the server's registry
    /// decides ownership on.
    pub fn claims(&self, http: &HttpRoute) -> Result<(Vec<String>, Vec<String>), String> {
        let opener: Opener = Arc::new(|| {
            Box::pin(async { Err(std::io::Error::other("a route only being checked")) })
        });
        let e = self.entry(Route {
            proxy: "-".into(),
            http: http.clone(),
            opener,
            owner: 0,
        })?;
        Ok((e.hosts.clone(), e.claim_keys()))
    }

    /// Marks every route of `owner` online or offline. Requests for an offline
    /// route are answered 502 at once; its idle upstream connections are dropped.
    /// The route stays claimed until [`Vhosts::remove`].
    pub fn set_online(&self, owner: u64, online: bool) {
        for e in self.lock_entries().iter().filter(|e| e.owner == owner) {
            e.online.store(online, Ordering::Release);
            if !online {
                e.pool.clear();
            }
        }
    }

    /// Removes `owner`'s route `proxy` (no-op if there is none). Requests in flight
    /// finish; new ones no longer find it.
    pub fn remove(&self, owner: u64, proxy: &str) {
        let mut entries = self.lock_entries();
        let before = entries.len();
        entries.retain(|e| !e.owned_by(owner, proxy));
        if entries.len() != before {
            self.publish(&entries);
        }
    }

    /// Removes every route of `owner`.
    pub fn remove_owner(&self, owner: u64) {
        let mut entries = self.lock_entries();
        let before = entries.len();
        entries.retain(|e| e.owner != owner);
        if entries.len() != before {
            self.publish(&entries);
        }
    }

    /// The route for a request: `host` normalized by [`normalize_host`], `user` the
    /// request's basic-auth user (see [`basic_auth_user`]).
    pub(super) fn find(&self, host: &str, path: &str, user: Option<&str>) -> Option<Arc<Entry>> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .find(host, path, user)
            .cloned()
    }

    /// Drops idle upstream connections that have been idle too long, in every route.
    pub(super) fn sweep(&self, idle_timeout: std::time::Duration) {
        let entries: Vec<_> = self.lock_entries().clone();
        for e in entries {
            e.pool.expire(idle_timeout);
        }
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, entries: &[Arc<Entry>]) {
        let table = Arc::new(Table::build(entries));
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table;
    }

    fn urls(&self, e: &Entry) -> Vec<String> {
        let scheme = self.scheme;
        let port = match (scheme, self.http_port) {
            ("http", 80) | ("https", 443) => String::new(),
            (_, p) => format!(":{p}"),
        };
        let mut urls = Vec::new();
        for h in &e.hosts {
            for l in &e.locations {
                urls.push(format!("{scheme}://{h}{port}{l}"));
            }
        }
        urls
    }

    /// Validates and parses a route.
    fn entry(&self, route: Route) -> Result<Entry, String> {
        let Route {
            proxy,
            http,
            opener,
            owner,
        } = route;
        let what = format!("{} proxy '{proxy}'", self.scheme);
        if http.domains.len() > MAX_ROUTE_DOMAINS
            || http.locations.len() > MAX_ROUTE_LOCATIONS
            || http.request_headers.len() > MAX_ROUTE_HEADERS
            || http.response_headers.len() > MAX_ROUTE_HEADERS
        {
            return Err(format!(
                "{what}: at most {MAX_ROUTE_DOMAINS} domains, {MAX_ROUTE_LOCATIONS} locations \
                 and {MAX_ROUTE_HEADERS} request and response headers each"
            ));
        }
        let mut hosts = Vec::new();
        for d in &http.domains {
            hosts.push(normalize_domain(d).map_err(|e| format!("{what}: domain {d:?}: {e}"))?);
        }
        if let Some(sub) = &http.subdomain {
            let Some(base) = &self.subdomain_host else {
                return Err(format!(
                    "{what}: subdomain {sub:?} needs the server's subdomain host \
                     (subDomainHost), which is not set"
                ));
            };
            let label = sub.trim().to_ascii_lowercase();
            if label.is_empty()
                || label.contains('.')
                || label.contains('*')
                || normalize_domain(&label).is_err()
            {
                return Err(format!(
                    "{what}: subdomain {sub:?} is not a single DNS label"
                ));
            }
            hosts.push(format!("{label}.{base}"));
        }
        if hosts.is_empty() {
            return Err(format!("{what}: needs at least one domain or a subdomain"));
        }
        dedup(&mut hosts);
        let mut locations = Vec::new();
        for l in &http.locations {
            let l = l.trim();
            let l = if l.is_empty() { "/" } else { l };
            let l = normalize_location(l).map_err(|e| format!("{what}: location {l:?} {e}"))?;
            locations.push(l);
        }
        if locations.is_empty() {
            locations.push("/".to_string());
        }
        dedup(&mut locations);
        let host_rewrite = http
            .host_rewrite
            .as_deref()
            .map(|h| HeaderValue::from_str(h.trim()))
            .transpose()
            .map_err(|_| {
                format!(
                    "{what}: host rewrite {:?} is not a valid Host",
                    http.host_rewrite
                )
            })?;
        let headers = |list: &[(String, String)], kind: &str| {
            list.iter()
                .map(|(n, v)| {
                    let name = HeaderName::from_bytes(n.trim().as_bytes());
                    let value = HeaderValue::from_str(v);
                    match (name, value) {
                        (Ok(n), Ok(v)) => Ok((n, v)),
                        _ => Err(format!(
                            "{what}: {kind} header {n:?}: {v:?} is not a valid header"
                        )),
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let request_headers = headers(&http.request_headers, "request")?;
        let response_headers = headers(&http.response_headers, "response")?;
        let route_user = match http.route_by_user.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) if u.contains(':') || u.len() > 255 || u.chars().any(char::is_control) => {
                return Err(format!(
                    "{what}: routeByHTTPUser {u:?} is not a basic-auth user name"
                ))
            }
            Some(u) => Some(u.into()),
        };
        let auth = http.basic_auth.as_ref().map(|(user, password)| {
            let mut creds = user.as_bytes().to_vec();
            creds.push(b':');
            creds.extend_from_slice(password.as_bytes());
            creds
        });
        Ok(Entry {
            proxy,
            owner,
            hosts,
            locations,
            route_user,
            auth,
            host_rewrite,
            request_headers,
            response_headers,
            online: AtomicBool::new(true),
            pool: Pool::new(opener),
        })
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
}

/// Checks a configured host name and puts it in the form the table uses: lowercase,
/// no trailing dot; `*` or a leading `*.` label for wildcards; letters, digits, `-`
/// and `_` in dot-separated labels (IPv4 literals included).
fn normalize_domain(d: &str) -> Result<String, &'static str> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    if d == "*" {
        return Ok(d);
    }
    if d.is_empty() || d.len() > 253 {
        return Err("must be a host name of 1 to 253 characters");
    }
    let name = d.strip_prefix("*.").unwrap_or(&d);
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return Err(
            "must be a host name (letters, digits, '-', '_' in dot-separated labels), \
                    optionally starting with '*.', without port",
        );
    }
    Ok(d)
}

/// The host of a request, as the table stores names: the port stripped, lowercase,
/// no trailing dot. Borrows when nothing needs changing (the common case).
pub(super) fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

/// Why a request path is refused (400): it could mean one path to the router and
/// another to the service behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadPath {
    /// `%2F` or `%5C`: some servers decode them into separators, some do not.
    EncodedSlash,
    /// A raw `\`: some servers (IIS, anything on Windows) read it as `/`.
    Backslash,
    /// `%00`: some servers cut the path there.
    Nul,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A `.` or `..` segment with parameters (`/..;/`): Java servers drop the
    /// parameters, then remove the dot segment.
    DotParams,
}

impl BadPath {
    /// One sentence for the error page.
    pub(super) fn detail(self) -> &'static str {
        match self {
            BadPath::EncodedSlash => "The request path contains an encoded slash or backslash.",
            BadPath::Backslash => "The request path contains a backslash.",
            BadPath::Nul => "The request path contains an encoded NUL.",
            BadPath::BadEscape => "The request path contains a malformed %-escape.",
            BadPath::DotParams => "The request path contains a dot segment with parameters.",
        }
    }
}

/// The path a request is routed by and forwarded with (`path` from an origin- or
/// absolute-form target; anything not starting with `/`, such as `*`, is left as
/// it is):
///
/// 1. percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2: `%2E` is
///    `.`, `%61` is `a`), the hex digits of other escapes in uppercase (§6.2.2.1);
/// 2. dot segments removed (§5.2.4): `/a/./b` is `/a/b`, `/public/../admin` is
///    `/admin`, `..` above the root stays at the root; a trailing `.` or `..`
///    leaves a trailing `/`.
///
/// Nothing else changes (`//` and `;parameters` stay; [`route_key`] deals with them
/// for matching). Refused ([`BadPath`]): `%2F`, `%5C`, `%00`, a raw `\`, a
/// malformed escape, and `.`/`..` segments with parameters. Borrows when nothing
/// changes (the common case).
pub(super) fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    if let Some(removed) = remove_dot_segments(&decoded)? {
        return Ok(Cow::Owned(removed));
    }
    Ok(decoded)
}

/// Step 1 of [`normalize_path`], with its refusals.
fn decode_unreserved(path: &str) -> Result<Cow<'_, str>, BadPath> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Err(BadPath::Backslash);
    }
    let Some(first) = bytes.iter().position(|&b| b == b'%') else {
        return Ok(Cow::Borrowed(path));
    };
    let hex = |i: usize| bytes.get(i).and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    let mut i = first;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(BadPath::BadEscape);
        };
        // Two hex digits: at most 0xff.
        let c = (hi * 16 + lo) as u8;
        let unreserved = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        match c {
            b'/' | b'\\' => return Err(BadPath::EncodedSlash),
            0 => return Err(BadPath::Nul),
            _ if unreserved => out.push(c),
            _ => {
                let (hi, lo) = (HEX[usize::from(c >> 4)], HEX[usize::from(c & 15)]);
                out.extend_from_slice(&[b'%', hi, lo]);
            }
        }
        i += 3;
    }
    // Only ASCII was replaced by ASCII: still UTF-8.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| BadPath::BadEscape)
}

/// Step 2 of [`normalize_path`] (`path` starts with `/`): the path without its dot
/// segments, or `None` if it has none.
fn remove_dot_segments(path: &str) -> Result<Option<String>, BadPath> {
    let mut dots = false;
    for segment in path.split('/') {
        match segment {
            "." | ".." => dots = true,
            _ if matches!(segment.split(';').next(), Some("." | "..")) => {
                return Err(BadPath::DotParams)
            }
            _ => {}
        }
    }
    if !dots {
        return Ok(None);
    }
    let mut kept: Vec<&str> = Vec::new();
    for segment in path.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if matches!(path.rsplit('/').next(), Some("." | "..")) || out.is_empty() {
        out.push('/');
    }
    Ok(Some(out))
}

/// Checks a configured location and puts it in the form the table matches: a path
/// starting with `/`, normalized as requests are ([`normalize_path`]) and with `//`
/// merged ([`route_key`]). Refuses what could never match a request: a query,
/// fragment or `;parameters`, dot segments, and what [`normalize_path`] refuses.
fn normalize_location(l: &str) -> Result<String, &'static str> {
    if !l.starts_with('/') || l.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a path starting with /");
    }
    if l.contains(['?', '#', ';']) {
        return Err("must be a path without ?, # or ;");
    }
    let decoded = decode_unreserved(l)
        .map_err(|_| "must not contain %2F, %5C, %00, a backslash or a malformed %-escape")?;
    if decoded.split('/').any(|s| s == "." || s == "..") {
        return Err("must not contain . or .. segments");
    }
    Ok(route_key(&decoded).into_owned())
}

/// Whether an `Authorization` header carries the expected `Basic` credentials
/// (`user:password` bytes). The comparison does not stop at the first difference.
/// The user name of `Authorization: Basic ...`, if the header is one (frp routes by
/// it whether or not the password is right; the route's own basic auth checks that).
pub(super) fn basic_auth_user(header: Option<&HeaderValue>) -> Option<String> {
    let value = header?.to_str().ok()?;
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let given = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let user = given.split(|b| *b == b':').next()?;
    String::from_utf8(user.to_vec()).ok()
}

pub(super) fn basic_auth_ok(header: Option<&HeaderValue>, expected: &[u8]) -> bool {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, b64)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert!(matches!(
            normalize_host("a.b"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            normalize_domain(" WWW.Example.com. ").as_deref(),
            Ok("www.example.com")
        );
        assert_eq!(
            normalize_domain("*.example.com").as_deref(),
            Ok("*.example.com")
        );
        assert!(normalize_domain("a.*.com").is_err());
        assert!(normalize_domain("example.com:80").is_err());
        assert!(normalize_domain("").is_err());
    }

    #[test]
    fn paths_are_normalized() {
        use BadPath::*;
        let cases: &[(&str, Result<&str, BadPath>)] = &[
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/b/", Ok("/a/b/")),
            ("/a/./b", Ok("/a/b")),
            ("/./", Ok("/")),
            ("/.", Ok("/")),
            ("/..", Ok("/")),
            ("/../a", Ok("/a")),
            ("/a/.", Ok("/a/")),
            ("/a/..", Ok("/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/../../..", Ok("/")),
            ("/a/b/c/./../../g", Ok("/a/g")),
            ("/public/../admin", Ok("/admin")),
            ("/public/%2e%2e/admin", Ok("/admin")),
            ("/public/%2E%2e/admin", Ok("/admin")),
            ("/public/.%2E/admin", Ok("/admin")),
            ("/public/%2e/admin", Ok("/public/admin")),
            ("/a/..%2e", Ok("/a/...")),
            ("/a/...", Ok("/a/...")),
            ("/a/..b/.c", Ok("/a/..b/.c")),
            // `//` is kept, and is a segment `..` can remove.
            ("/a//b", Ok("/a//b")),
            ("//a", Ok("//a")),
            ("/a//../b", Ok("/a/b")),
            // Unreserved characters decoded, other escapes in uppercase.
            ("/%61dmin", Ok("/admin")),
            ("/%7Euser/%41-%5f", Ok("/~user/A-_")),
            ("/a%3ab%3F", Ok("/a%3Ab%3F")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/café", Ok("/café")),
            ("/a%25", Ok("/a%25")),
            ("/a;b=1/c", Ok("/a;b=1/c")),
            // Refused.
            ("/a%2fb", Err(EncodedSlash)),
            ("/public%2F..%2Fadmin", Err(EncodedSlash)),
            ("/a%5cb", Err(EncodedSlash)),
            ("/a%5C", Err(EncodedSlash)),
            ("/a\\b", Err(Backslash)),
            ("/a%00", Err(Nul)),
            ("/a%", Err(BadEscape)),
            ("/a%2", Err(BadEscape)),
            ("/a%zz", Err(BadEscape)),
            ("/a%%32%65", Err(BadEscape)),
            ("/public/..;/admin", Err(DotParams)),
            ("/public/%2e%2e;x/admin", Err(DotParams)),
            ("/.;x", Err(DotParams)),
        ];
        for (path, want) in cases {
            let got = normalize_path(path);
            assert_eq!(got.as_deref(), want.as_deref(), "{path}");
        }
        // Nothing to do: nothing allocated; targets without a path are left alone.
        for path in ["/", "/a/b/", "/a//b", "/a;b", "*", ""] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn route_keys_merge_slashes_and_drop_parameters() {
        for (path, key) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("//admin", "/admin"),
            ("/a//b//", "/a/b/"),
            ("/admin;jsessionid=1", "/admin"),
            ("/admin;x/y", "/admin/y"),
            ("/;x/admin", "/admin"),
            ("/api/;x", "/api/"),
            ("*", "*"),
        ] {
            assert_eq!(route_key(path), key, "{path}");
        }
    }

    #[test]
    fn locations_match_whole_segments() {
        for (loc, path, want) in [
            ("/public", "/public", true),
            ("/public", "/public/", true),
            ("/public", "/public/x", true),
            ("/public", "/publicadmin", false),
            ("/public", "/publi", false),
            ("/public", "/", false),
            ("/api/", "/api/", true),
            ("/api/", "/api/v1", true),
            ("/api/", "/api", false),
            ("/api/", "/apix/", false),
            ("/", "/", true),
            ("/", "/anything/at/all", true),
            ("/", "*", false),
            ("/a/b", "/a/b/c", true),
            ("/a/b", "/a/bc", false),
        ] {
            assert_eq!(location_matches(loc, path), want, "{loc} vs {path}");
        }
    }

    fn route(proxy: &str, domain: &str, locations: &[&str]) -> Route {
        Route {
            proxy: proxy.to_string(),
            http: HttpRoute {
                domains: vec![domain.to_string()],
                locations: locations.iter().map(|l| l.to_string()).collect(),
                ..HttpRoute::default()
            },
            opener: Arc::new(|| {
                Box::pin(async { Err(std::io::Error::other("no peer in this test")) })
            }),
            owner: 1,
        }
    }

    #[test]
    fn the_longest_whole_segment_location_wins() {
        let v = Vhosts::new(None);
        v.add(route("root", "a.test", &["/"])).unwrap();
        v.add(route("public", "a.test", &["/public"])).unwrap();
        v.add(route("api", "a.test", &["/api/"])).unwrap();
        v.add(route("admin", "a.test", &["/public/admin"])).unwrap();
        let find = |path: &str| {
            let path = normalize_path(path).unwrap();
            v.find("a.test", &path, None).map(|e| e.proxy.clone())
        };
        for (path, want) in [
            ("/", "root"),
            ("/public", "public"),
            ("/public/", "public"),
            ("/public/x", "public"),
            ("/publicadmin", "root"),
            ("/public/../admin", "root"),
            ("/public/%2e%2e/admin", "root"),
            ("/public/x/../../admin", "root"),
            ("/public/x/..", "public"),
            ("/public/admin", "admin"),
            ("/public/admin/", "admin"),
            ("/public/adminx", "public"),
            ("/public//admin", "admin"),
            ("//public/admin", "admin"),
            ("/public/admin;jsessionid=1", "admin"),
            ("/public/%61dmin", "admin"),
            ("/api", "root"),
            ("/api/", "api"),
            ("/api/v1", "api"),
            ("/api//", "api"),
        ] {
            assert_eq!(find(path).as_deref(), Some(want), "{path}");
        }
        assert!(v.find("a.test", "*", None).is_none());
    }

    #[test]
    fn routes_by_user_then_for_everyone() {
        let v = Vhosts::new(None);
        let by = |proxy: &str, domain: &str, user: Option<&str>| {
            let mut r = route(proxy, domain, &["/"]);
            r.http.route_by_user = user.map(str::to_string);
            r
        };
        v.add(by("alice", "a.test", Some("alice"))).unwrap();
        v.add(by("bob", "a.test", Some("bob"))).unwrap();
        v.add(by("wild-carol", "*.test", Some("carol"))).unwrap();
        let find = |user| v.find("a.test", "/", user).map(|e| e.proxy.clone());
        assert_eq!(find(Some("alice")).as_deref(), Some("alice"));
        assert_eq!(find(Some("bob")).as_deref(), Some("bob"));
        assert_eq!(find(Some("carol")).as_deref(), Some("wild-carol"));
        assert_eq!(find(None), None);
        v.add(by("rest", "a.test", None)).unwrap();
        assert_eq!(find(None).as_deref(), Some("rest"));
        assert_eq!(find(Some("dave")).as_deref(), Some("rest"));
        // The registry files user routes apart from the location itself.
        let (_, keys) = v.claims(&by("x", "a.test", Some("bob")).http).unwrap();
        assert_eq!(keys, ["/ (user bob)"]);
        let header = HeaderValue::from_static("Basic Ym9iOnNlY3JldA==");
        assert_eq!(basic_auth_user(Some(&header)).as_deref(), Some("bob"));
        assert!(basic_auth_user(Some(&HeaderValue::from_static("Bearer x"))).is_none());
        assert!(v.add(by("bad", "a.test", Some("a:b"))).is_err());
    }

    #[test]
    fn locations_are_normalized_or_refused() {
        let v = Vhosts::new(None);
        let urls = v
            .add(route("a", "a.test", &["/x//y/", "/%7Euser", " "]))
            .unwrap();
        assert_eq!(
            urls,
            [
                "http://a.test/x/y/",
                "http://a.test/~user",
                "http://a.test/"
            ]
        );
        for bad in [
            "no-slash", "/a b", "/a?b", "/a#b", "/a;b", "/a/../b", "/a/.", "/%2e%2E", "/a%2fb",
            "/a\\b", "/a%00", "/a%zz",
        ] {
            let err = v.add(route("b", "b.test", &[bad])).unwrap_err();
            assert!(err.contains("location"), "{bad}: {err}");
        }
    }

    #[test]
    fn basic_auth() {
        let v = HeaderValue::from_static("Basic dGVzdDp0ZXN0"); // test:test
        assert!(basic_auth_ok(Some(&v), b"test:test"));
        assert!(!basic_auth_ok(Some(&v), b"test:tesT"));
        assert!(!basic_auth_ok(None, b"test:test"));
        let v = HeaderValue::from_static("bearer dGVzdDp0ZXN0");
        assert!(!basic_auth_ok(Some(&v), b"test:test"));
    }
}
