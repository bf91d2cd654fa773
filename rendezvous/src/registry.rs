//! Who may claim what on a shared server: the ownership rules, with no I/O.
//!
//! Everything a peer claims (a service name, a TCP port, an HTTP host with the
//! locations under it, a subdomain, a wildcard) belongs to the *identity* that claimed
//! it (the public key the peer proved in its handshake), within the allowances of the
//! *user* whose token it logged in with. The connection code asks this registry and
//! carries out its decisions (binding listeners, routing requests); the registry never
//! touches a socket and takes the time as an argument, so every rule is a unit test.
//!
//! The rules:
//!
//! 1. A claim held by another identity is refused, naming the holder by fingerprint
//!    and proxy name (never by anything that would let the requester act as it).
//! 2. A host belongs to one identity: only it may add locations under it. A wildcard
//!    `*.example.com` owns the names under it (`a.example.com`, `*.b.example.com`):
//!    only its holder may claim those. The catch-all `*` owns nothing: it only catches
//!    hosts nobody claimed, and needs a grant (`allowDomains = ["*"]`).
//! 3. Domains, subdomains and ports must be inside the user's allowances; wildcards
//!    broader than the allowance are refused.
//! 4. When a holder's control connection ends, its claims stay reserved for the grace
//!    period: others are refused, the same identity takes them back at once (from a
//!    new connection, e.g. a restarted process). After the grace period they are
//!    released ([`Registry::expire`]), always.
//! 5. A user may hold at most `max_exposures` proxies and services at once.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    time::{Duration, Instant},
};

use common::identity::{Fingerprint, PublicKey};

use crate::config::{DomainAllow, PortRanges};

/// The "location" an https proxy claims under its hosts: hosts are owned across the
/// HTTP and HTTPS vhosts alike (one identity holds a name, and may serve it both
/// ways), while an http location (a path, starting with `/`) and this never collide.
pub const HTTPS_LOCATION: &str = "tls";

/// The "location" a tcpmux (HTTP CONNECT) proxy claims under its hosts, as
/// [`HTTPS_LOCATION`].
pub const TCPMUX_LOCATION: &str = "connect";

/// A control connection, as the server numbers them.
pub type ConnId = u64;

/// What one user may do (from `[[users]]`, or the single `--token` user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    /// The user's name, for logs and errors.
    pub name: String,
    /// Ports its tcp proxies may listen on.
    pub ports: PortRanges,
    /// Host names its http proxies may claim.
    pub domains: DomainAllow,
    /// Most proxies and services it may hold at once.
    pub max_exposures: usize,
    /// Most streams open at once toward each of its peer processes (`None`: the
    /// multiplexer's default).
    pub max_streams: Option<usize>,
}

/// The name of the user of a server with one token (or none): its allowances are the
/// server's, and errors say "on this server".
pub const DEFAULT_USER: &str = "default";

impl Allowance {
    /// "on this server" for the single-token user, `for user "NAME"` otherwise.
    fn whose(&self) -> String {
        if self.name == DEFAULT_USER {
            "on this server".into()
        } else {
            format!("for user {:?}", self.name)
        }
    }
}

/// Who holds a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The identity that owns it.
    pub owner: PublicKey,
    /// The user it logged in as.
    pub user: usize,
    /// The control connection that made (or last renewed) it.
    pub conn: ConnId,
    /// The proxy (or service) name.
    pub proxy: String,
}

/// Why a claim was refused. The text is for the requester: it names the holder by
/// fingerprint and proxy name only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Someone else holds it (or holds it in its grace period).
    Held {
        /// What was asked for, e.g. `port 6000`, `host www.example.com`.
        what: String,
        /// The holder's fingerprint.
        holder: Fingerprint,
        /// The holder's proxy name.
        proxy: String,
        /// Whether the holder is offline, within its grace period.
        reserved: bool,
    },
    /// The same identity holds it under another proxy name, on a live connection.
    HeldBySelf {
        /// What was asked for.
        what: String,
        /// The proxy that holds it.
        proxy: String,
    },
    /// Outside the user's allowances.
    NotAllowed(String),
    /// The user holds as many exposures as it may.
    Limit(String),
    /// The request is malformed.
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Held {
                what,
                holder,
                proxy,
                reserved: false,
            } => write!(f, "{what} is held by peer {holder} (proxy '{proxy}')"),
            Refusal::Held {
                what,
                holder,
                proxy,
                reserved: true,
            } => write!(
                f,
                "{what} is reserved for peer {holder} (proxy '{proxy}'), which went offline \
                 less than a grace period ago; only that peer may take it back"
            ),
            Refusal::HeldBySelf { what, proxy } => {
                write!(f, "{what} is already served by this peer's proxy '{proxy}'")
            }
            Refusal::NotAllowed(s) | Refusal::Limit(s) | Refusal::Invalid(s) => f.write_str(s),
        }
    }
}

/// A control connection the registry knows.
#[derive(Debug, Clone)]
struct Conn {
    owner: PublicKey,
    user: usize,
    /// When it ended; its claims are reserved until `gone + grace`.
    gone: Option<Instant>,
}

/// What one proxy of one identity holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ProxyClaim {
    Service(String),
    Port(u16),
    Route {
        hosts: Vec<String>,
        locations: Vec<String>,
    },
}

/// A host, its owner and the proxies serving its locations.
#[derive(Debug, Clone)]
struct HostHold {
    owner: PublicKey,
    locations: BTreeMap<String, Holder>,
}

/// What the connection code must undo because claims ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Released {
    /// TCP ports whose listeners must close.
    pub ports: Vec<u16>,
    /// HTTP routes, by the connection that registered them and proxy name, to take
    /// out of the vhost table.
    pub routes: Vec<(ConnId, String)>,
    /// Service names no longer registered.
    pub services: Vec<String>,
}

impl Released {
    fn absorb(&mut self, other: Released) {
        self.ports.extend(other.ports);
        self.routes.extend(other.routes);
        self.services.extend(other.services);
    }

    /// Whether nothing was released.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.routes.is_empty() && self.services.is_empty()
    }
}

/// What [`Registry::snapshot`] returns.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Live control connections, oldest first.
    pub conns: Vec<ConnView>,
    /// Every claim, by proxy name.
    pub claims: Vec<ClaimView>,
}

/// A live control connection.
#[derive(Debug, Clone)]
pub struct ConnView {
    /// The connection.
    pub conn: ConnId,
    /// Its identity.
    pub owner: PublicKey,
    /// Its user's name.
    pub user: String,
}

/// What a claim is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClaimKind {
    /// A service name (xtcp).
    Service(String),
    /// A TCP port.
    Tcp(u16),
    /// A host of the HTTPS (SNI) vhost.
    Https(String),
    /// A host of the tcpmux (HTTP CONNECT) port.
    TcpMux(String),
    /// A location under a host of the HTTP vhost.
    Http {
        /// The host name (or wildcard).
        host: String,
        /// The path prefix.
        location: String,
    },
}

/// One claim and its holder.
#[derive(Debug, Clone)]
pub struct ClaimView {
    /// What is claimed.
    pub kind: ClaimKind,
    /// Who holds it, for which proxy.
    pub holder: Holder,
    /// The holder's user name.
    pub user: String,
    /// Whether the holder's control connection is up (not reserved for the grace
    /// period).
    pub online: bool,
}

/// How to get the port of a tcp claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPlan {
    /// This identity already holds the port (a reconnection): keep its listener.
    Keep(u16),
    /// Bind this port, then [`Registry::record_port`].
    Bind(u16),
    /// Bind any free port inside these ranges (not held by anyone), then record it.
    BindFrom(PortRanges),
}

/// The registry. See the module docs for its rules.
#[derive(Debug)]
pub struct Registry {
    grace: Duration,
    users: Vec<Allowance>,
    conns: HashMap<ConnId, Conn>,
    services: HashMap<String, Holder>,
    ports: HashMap<u16, Holder>,
    hosts: HashMap<String, HostHold>,
    proxies: HashMap<(PublicKey, String), ProxyClaim>,
    /// The connection each route was registered from (the vhost table's owner key).
    route_conns: HashMap<(PublicKey, String), ConnId>,
}

impl Registry {
    /// An empty registry for these users (index = user number); claims of a gone
    /// connection are reserved for `grace`.
    pub fn new(users: Vec<Allowance>, grace: Duration) -> Self {
        Registry {
            grace,
            users,
            conns: HashMap::new(),
            services: HashMap::new(),
            ports: HashMap::new(),
            hosts: HashMap::new(),
            proxies: HashMap::new(),
            route_conns: HashMap::new(),
        }
    }

    /// A control connection of `owner`, logged in as `user`, is up.
    pub fn connect(&mut self, conn: ConnId, owner: PublicKey, user: usize) {
        self.conns.insert(
            conn,
            Conn {
                owner,
                user,
                gone: None,
            },
        );
    }

    /// The control connection `conn` ended at `now`: its claims are reserved for the
    /// grace period.
    pub fn disconnect(&mut self, conn: ConnId, now: Instant) {
        let holds = self.holds_anything(conn);
        match self.conns.get_mut(&conn) {
            Some(c) if holds => c.gone = Some(now),
            Some(_) => {
                self.conns.remove(&conn);
            }
            None => {}
        }
    }

    /// The identity and user of a live connection.
    pub fn conn_owner(&self, conn: ConnId) -> Option<(PublicKey, usize)> {
        self.conns
            .get(&conn)
            .filter(|c| c.gone.is_none())
            .map(|c| (c.owner, c.user))
    }

    /// The user's allowance.
    pub fn allowance(&self, user: usize) -> Option<&Allowance> {
        self.users.get(user)
    }

    /// Whether `holder`'s claim is still in force at `now` (its connection is up, or
    /// ended less than the grace period ago). `Some(reserved)` if in force.
    fn in_force(&self, holder: &Holder, now: Instant) -> Option<bool> {
        let c = self.conns.get(&holder.conn)?;
        match c.gone {
            None => Some(false),
            Some(t) if now.saturating_duration_since(t) < self.grace => Some(true),
            Some(_) => None,
        }
    }

    /// Whether `holder` stands in the way of `me` (another identity, in force).
    fn blocks(
        &self,
        holder: &Holder,
        me: PublicKey,
        what: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        if holder.owner == me {
            return Ok(());
        }
        match self.in_force(holder, now) {
            Some(reserved) => Err(Refusal::Held {
                what: what.to_string(),
                holder: holder.owner.fingerprint(),
                proxy: holder.proxy.clone(),
                reserved,
            }),
            None => Ok(()),
        }
    }

    fn requester(&self, conn: ConnId) -> Result<(PublicKey, usize), Refusal> {
        self.conn_owner(conn)
            .ok_or_else(|| Refusal::Invalid("this connection is not logged in".into()))
    }

    /// Counts the user's proxies and services, not counting `(owner, proxy)` itself.
    fn check_limit(&self, user: usize, owner: PublicKey, proxy: &str) -> Result<(), Refusal> {
        let Some(a) = self.users.get(user) else {
            return Err(Refusal::Invalid("unknown user".into()));
        };
        if self.proxies.contains_key(&(owner, proxy.to_string())) {
            return Ok(());
        }
        let held = self
            .proxies
            .keys()
            .filter(|(o, p)| self.user_of(*o, p) == Some(user))
            .count();
        if held >= a.max_exposures {
            return Err(Refusal::Limit(format!(
                "user {:?} holds {held} proxies and services, its limit (maxExposures)",
                a.name
            )));
        }
        Ok(())
    }

    fn user_of(&self, owner: PublicKey, proxy: &str) -> Option<usize> {
        let holder = match self.proxies.get(&(owner, proxy.to_string()))? {
            ProxyClaim::Service(name) => self.services.get(name),
            ProxyClaim::Port(p) => self.ports.get(p),
            ProxyClaim::Route { hosts, locations } => hosts.first().and_then(|h| {
                self.hosts
                    .get(h)
                    .and_then(|hh| locations.first().and_then(|l| hh.locations.get(l)))
            }),
        }?;
        Some(holder.user)
    }

    /// Drops what `(owner, proxy)` held (when it is claimed anew with other values).
    fn drop_proxy(&mut self, owner: PublicKey, proxy: &str) -> Released {
        let mut out = Released::default();
        let Some(claim) = self.proxies.remove(&(owner, proxy.to_string())) else {
            return out;
        };
        let route_conn = self.route_conns.remove(&(owner, proxy.to_string()));
        match claim {
            ProxyClaim::Service(name) => {
                if self.services.get(&name).is_some_and(|h| h.owner == owner) {
                    self.services.remove(&name);
                    out.services.push(name);
                }
            }
            ProxyClaim::Port(p) => {
                if self.ports.get(&p).is_some_and(|h| h.owner == owner) {
                    self.ports.remove(&p);
                    out.ports.push(p);
                }
            }
            ProxyClaim::Route { hosts, locations } => {
                for h in &hosts {
                    if let Some(hold) = self.hosts.get_mut(h) {
                        for l in &locations {
                            if let Some(x) = hold
                                .locations
                                .remove(l)
                                .filter(|x| !(x.owner == owner && x.proxy == proxy))
                            {
                                // Someone else's: put it back.
                                hold.locations.insert(l.clone(), x);
                            } else if let Some(conn) = route_conn {
                                out.routes.push((conn, proxy.to_string()));
                            }
                        }
                        if hold.locations.is_empty() {
                            self.hosts.remove(h);
                        }
                    }
                }
                out.routes.sort();
                out.routes.dedup();
            }
        }
        out
    }

    /// Registers service `name` (serve/connect) for the connection's identity.
    pub fn claim_service(
        &mut self,
        conn: ConnId,
        name: &str,
        now: Instant,
    ) -> Result<Released, Refusal> {
        let (me, user) = self.requester(conn)?;
        let what = format!("service {name:?}");
        if let Some(h) = self.services.get(name) {
            self.blocks(h, me, &what, now)?;
        }
        // Service names live in their own namespace of the owner's proxies.
        let key = service_key(name);
        self.check_limit(user, me, &key)?;
        let mut released = Released::default();
        if let Some(h) = self.services.get(name).cloned() {
            if h.owner != me {
                // Expired: the old holder loses it.
                released.absorb(self.drop_proxy(h.owner, &service_key(name)));
            }
        }
        self.services.insert(
            name.to_string(),
            Holder {
                owner: me,
                user,
                conn,
                proxy: name.to_string(),
            },
        );
        self.proxies
            .insert((me, key), ProxyClaim::Service(name.to_string()));
        Ok(released)
    }

    /// The owner of service `name`, if its connection is up.
    pub fn service(&self, name: &str) -> Option<&Holder> {
        self.services
            .get(name)
            .filter(|h| self.in_force(h, Instant::now()) == Some(false))
    }

    /// Decides how the connection's proxy `proxy` gets TCP port `port` (0: any).
    pub fn plan_port(
        &self,
        conn: ConnId,
        proxy: &str,
        port: u16,
        now: Instant,
    ) -> Result<PortPlan, Refusal> {
        let (me, user) = self.requester(conn)?;
        let allow = &self.users[user].ports;
        if let Some(ProxyClaim::Port(p)) = self.proxies.get(&(me, proxy.to_string())) {
            if port == 0 || port == *p {
                return Ok(PortPlan::Keep(*p));
            }
        }
        self.check_limit(user, me, proxy)?;
        if port == 0 {
            return Ok(PortPlan::BindFrom(allow.clone()));
        }
        if !allow.contains(port) {
            return Err(Refusal::NotAllowed(format!(
                "port {port} is not allowed {} (allowed: {allow})",
                self.users[user].whose()
            )));
        }
        if let Some(h) = self.ports.get(&port) {
            let what = format!("port {port}");
            self.blocks(h, me, &what, now)?;
            if h.owner == me
                && h.proxy != proxy
                && h.conn == conn
                && self.in_force(h, now) == Some(false)
            {
                return Err(Refusal::HeldBySelf {
                    what,
                    proxy: h.proxy.clone(),
                });
            }
            // Every held port has its listener: the new holder takes it over.
            return Ok(PortPlan::Keep(port));
        }
        Ok(PortPlan::Bind(port))
    }

    /// Whether `port` is free for a new listener (nobody holds it, even expired).
    pub fn port_free(&self, port: u16) -> bool {
        !self.ports.contains_key(&port)
    }

    /// Records that the connection's `proxy` listens on `port` (after
    /// [`Registry::plan_port`] and a successful bind). Checks again, since the lock was
    /// let go while binding. Returns what must be undone: the proxy's previous port, or
    /// the claim of an expired holder.
    pub fn record_port(
        &mut self,
        conn: ConnId,
        proxy: &str,
        port: u16,
        now: Instant,
    ) -> Result<Released, Refusal> {
        let (me, user) = self.requester(conn)?;
        if let Some(h) = self.ports.get(&port) {
            self.blocks(h, me, &format!("port {port}"), now)?;
        }
        let mut released = Released::default();
        if let Some(h) = self.ports.get(&port).cloned() {
            if h.owner != me || h.proxy != proxy {
                let mut r = self.drop_proxy(h.owner, &h.proxy);
                // The listener stays: the port now leads to the new holder.
                r.ports.retain(|p| *p != port);
                released.absorb(r);
            }
        }
        if self.proxies.get(&(me, proxy.to_string())) != Some(&ProxyClaim::Port(port)) {
            released.absorb(self.drop_proxy(me, proxy));
        }
        self.ports.insert(
            port,
            Holder {
                owner: me,
                user,
                conn,
                proxy: proxy.to_string(),
            },
        );
        self.proxies
            .insert((me, proxy.to_string()), ProxyClaim::Port(port));
        Ok(released)
    }

    /// Who a user connection to `port` goes to: the holder, and whether its
    /// connection is up (false: in its grace period, refuse the user at once).
    pub fn port_holder(&self, port: u16, now: Instant) -> Option<(&Holder, bool)> {
        let h = self.ports.get(&port)?;
        let reserved = self.in_force(h, now)?;
        Some((h, !reserved))
    }

    /// Claims HTTP `hosts` (normalised: lowercase, `*.suffix`, `*`) with `locations`
    /// for the connection's `proxy`. Returns what must be undone (the proxy's previous
    /// route, routes of expired holders of these hosts).
    pub fn claim_route(
        &mut self,
        conn: ConnId,
        proxy: &str,
        hosts: &[String],
        locations: &[String],
        now: Instant,
    ) -> Result<Released, Refusal> {
        let (me, user) = self.requester(conn)?;
        self.check_limit(user, me, proxy)?;
        let allow = &self.users[user];
        for h in hosts {
            if !allow.domains.allows(h) {
                return Err(Refusal::NotAllowed(if h == "*" {
                    format!(
                        "the catch-all host \"*\" is not granted to user {:?} (it needs allowDomains = [\"*\"])",
                        allow.name
                    )
                } else {
                    format!(
                        "host {h} is not allowed {} (allowed: {})",
                        allow.whose(),
                        allow.domains
                    )
                }));
            }
        }
        for h in hosts {
            let what = format!("host {h}");
            if let Some(hold) = self.hosts.get(h) {
                for x in hold.locations.values() {
                    self.blocks(x, me, &what, now)?;
                }
                for l in locations {
                    if let Some(x) = hold.locations.get(l) {
                        if x.owner == me
                            && x.proxy != proxy
                            && x.conn == conn
                            && self.in_force(x, now) == Some(false)
                        {
                            return Err(Refusal::HeldBySelf {
                                what: format!("host {h} location {l}"),
                                proxy: x.proxy.clone(),
                            });
                        }
                    }
                }
            }
            // Wildcards of other identities that own this name.
            for cover in covering_wildcards(h) {
                if let Some(hold) = self.hosts.get(&cover) {
                    for x in hold.locations.values() {
                        self.blocks(x, me, &format!("host {h} (under {cover})"), now)?;
                    }
                }
            }
        }
        // Accepted: drop the proxy's previous route (unless it is this connection's:
        // the vhost table replaces that in place) and whatever expired holders or this
        // identity's other proxies held at these host + location pairs.
        let mut released = self.drop_proxy(me, proxy);
        released.routes.retain(|(c, p)| !(*c == conn && p == proxy));
        for h in hosts {
            let displaced: Vec<(PublicKey, String)> = match self.hosts.get(h) {
                Some(hold) if hold.owner != me => hold
                    .locations
                    .values()
                    .map(|x| (x.owner, x.proxy.clone()))
                    .collect(),
                Some(hold) => locations
                    .iter()
                    .filter_map(|l| hold.locations.get(l))
                    .map(|x| (x.owner, x.proxy.clone()))
                    .collect(),
                None => Vec::new(),
            };
            for (o, p) in displaced {
                released.absorb(self.drop_proxy(o, &p));
            }
            let hold = self.hosts.entry(h.clone()).or_insert_with(|| HostHold {
                owner: me,
                locations: BTreeMap::new(),
            });
            hold.owner = me;
            for l in locations {
                hold.locations.insert(
                    l.clone(),
                    Holder {
                        owner: me,
                        user,
                        conn,
                        proxy: proxy.to_string(),
                    },
                );
            }
        }
        self.route_conns.insert((me, proxy.to_string()), conn);
        self.proxies.insert(
            (me, proxy.to_string()),
            ProxyClaim::Route {
                hosts: hosts.to_vec(),
                locations: locations.to_vec(),
            },
        );
        Ok(released)
    }

    /// Releases the claims of connections gone longer than the grace period. Call it
    /// often (every second): it is what makes release happen "always".
    pub fn expire(&mut self, now: Instant) -> Released {
        let dead: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.gone
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.grace)
            })
            .map(|(id, _)| *id)
            .collect();
        let mut out = Released::default();
        for conn in dead {
            let mine: Vec<(PublicKey, String)> = self
                .holders()
                .filter(|h| h.conn == conn)
                .map(|h| (h.owner, proxy_key(h, &self.services)))
                .collect();
            for (o, p) in mine {
                out.absorb(self.drop_proxy(o, &p));
            }
            self.conns.remove(&conn);
        }
        out.routes.sort();
        out.routes.dedup();
        out
    }

    /// Everything the registry holds, for the status page: live connections and every
    /// claim (with whether its holder is online or reserved for the grace period).
    pub fn snapshot(&self) -> Snapshot {
        let user = |u: usize| {
            self.users
                .get(u)
                .map_or_else(|| u.to_string(), |a| a.name.clone())
        };
        let online = |c: ConnId| self.conns.get(&c).is_some_and(|c| c.gone.is_none());
        let mut conns: Vec<ConnView> = self
            .conns
            .iter()
            .filter(|(_, c)| c.gone.is_none())
            .map(|(id, c)| ConnView {
                conn: *id,
                owner: c.owner,
                user: user(c.user),
            })
            .collect();
        conns.sort_by_key(|c| c.conn);
        let mut claims = Vec::new();
        let mut claim = |kind: ClaimKind, h: &Holder| {
            claims.push(ClaimView {
                kind,
                holder: h.clone(),
                user: user(h.user),
                online: online(h.conn),
            })
        };
        for (name, h) in &self.services {
            claim(ClaimKind::Service(name.clone()), h);
        }
        for (port, h) in &self.ports {
            claim(ClaimKind::Tcp(*port), h);
        }
        for (host, hold) in &self.hosts {
            for (location, h) in &hold.locations {
                let kind = if location == HTTPS_LOCATION {
                    ClaimKind::Https(host.clone())
                } else if location == TCPMUX_LOCATION {
                    ClaimKind::TcpMux(host.clone())
                } else {
                    ClaimKind::Http {
                        host: host.clone(),
                        location: location.clone(),
                    }
                };
                claim(kind, h);
            }
        }
        claims.sort_by(|a, b| (&a.holder.proxy, &a.kind).cmp(&(&b.holder.proxy, &b.kind)));
        Snapshot { conns, claims }
    }

    /// How many connections and claims the registry holds (for tests and status).
    pub fn counts(&self) -> (usize, usize) {
        (self.conns.len(), self.proxies.len())
    }

    fn holders(&self) -> impl Iterator<Item = &Holder> {
        self.services
            .values()
            .chain(self.ports.values())
            .chain(self.hosts.values().flat_map(|h| h.locations.values()))
    }

    fn holds_anything(&self, conn: ConnId) -> bool {
        self.holders().any(|h| h.conn == conn)
    }
}

/// The proxy key under which a holder's claim is filed.
fn proxy_key(h: &Holder, services: &HashMap<String, Holder>) -> String {
    if services.get(&h.proxy).is_some_and(|s| s == h) {
        service_key(&h.proxy)
    } else {
        h.proxy.clone()
    }
}

/// Services share the owner's proxy namespace under a prefix no proxy name can have.
fn service_key(name: &str) -> String {
    format!("\u{0}service:{name}")
}

/// The wildcards (other than `*`) that own `host`: for `a.b.c`, `*.b.c` and `*.c`; for
/// `*.b.c`, `*.c`.
fn covering_wildcards(host: &str) -> Vec<String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if host == "*" {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest = name;
    while let Some(dot) = rest.find('.') {
        rest = &rest[dot + 1..];
        out.push(format!("*.{rest}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::identity::Identity;

    const GRACE: Duration = Duration::from_secs(60);

    fn allowance(name: &str, ports: &str, domains: DomainAllow) -> Allowance {
        Allowance {
            name: name.into(),
            ports: PortRanges::parse_cli(ports).expect("ports"),
            domains,
            max_exposures: 100,
            max_streams: None,
        }
    }

    fn any() -> DomainAllow {
        DomainAllow::AnyButCatchAll
    }

    fn reg() -> Registry {
        Registry::new(
            vec![
                allowance("default", "1-65535", any()),
                allowance(
                    "alice",
                    "6000-6099",
                    DomainAllow::parse(&["*.alice.test", "alice.test"]).expect("domains"),
                ),
                allowance(
                    "root",
                    "1-65535",
                    DomainAllow::parse(&["*"]).expect("domains"),
                ),
            ],
            GRACE,
        )
    }

    fn who() -> PublicKey {
        Identity::generate().public()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn another_identity_cannot_take_a_held_port_and_learns_only_a_fingerprint() {
        let mut r = reg();
        let (a, b) = (who(), who());
        let now = Instant::now();
        r.connect(1, a, 0);
        r.connect(2, b, 0);
        assert_eq!(r.plan_port(1, "web", 6000, now), Ok(PortPlan::Bind(6000)));
        r.record_port(1, "web", 6000, now).expect("record");
        let e = r.plan_port(2, "evil", 6000, now).expect_err("held");
        let text = e.to_string();
        assert!(
            text.contains(&a.fingerprint().to_string()) && text.contains("'web'"),
            "{text}"
        );
        assert!(r.record_port(2, "evil", 6000, now).is_err());
        assert_eq!(
            r.port_holder(6000, now).map(|(h, up)| (h.owner, up)),
            Some((a, true))
        );
    }

    #[test]
    fn a_host_is_owned_across_http_and_https() {
        let mut r = reg();
        let (a, b) = (who(), who());
        let now = Instant::now();
        r.connect(1, a, 0);
        r.connect(2, b, 0);
        let tls = s(&[HTTPS_LOCATION]);
        r.claim_route(1, "web", &s(&["www.example.com"]), &s(&["/"]), now)
            .expect("a http");
        let e = r
            .claim_route(2, "tls", &s(&["www.example.com"]), &tls, now)
            .expect_err("b may not serve a's host over https");
        assert!(matches!(e, Refusal::Held { .. }), "{e}");
        r.claim_route(1, "tls", &s(&["www.example.com"]), &tls, now)
            .expect("a serves its host over https too");
        r.claim_route(2, "tls", &s(&["*.b.example.com"]), &tls, now)
            .expect("b https wildcard");
        let e = r
            .claim_route(1, "x", &s(&["x.b.example.com"]), &s(&["/"]), now)
            .expect_err("under b's wildcard");
        assert!(matches!(e, Refusal::Held { .. }), "{e}");
        let kinds: Vec<ClaimKind> = r.snapshot().claims.into_iter().map(|c| c.kind).collect();
        assert!(kinds.contains(&ClaimKind::Https("www.example.com".into())));
    }

    #[test]
    fn only_the_host_owner_adds_locations() {
        let mut r = reg();
        let (a, b) = (who(), who());
        let now = Instant::now();
        r.connect(1, a, 0);
        r.connect(2, b, 0);
        r.claim_route(1, "web", &s(&["www.example.com"]), &s(&["/"]), now)
            .expect("a");
        let e = r
            .claim_route(2, "login", &s(&["www.example.com"]), &s(&["/login"]), now)
            .expect_err("b may not add a location");
        assert!(matches!(e, Refusal::Held { .. }), "{e}");
        // The owner may.
        r.claim_route(1, "api", &s(&["www.example.com"]), &s(&["/api"]), now)
            .expect("a /api");
    }

    #[test]
    fn a_wildcard_owns_the_names_under_it() {
        let mut r = reg();
        let (a, b) = (who(), who());
        let now = Instant::now();
        r.connect(1, a, 0);
        r.connect(2, b, 0);
        r.claim_route(1, "corp", &s(&["*.corp.test"]), &s(&["/"]), now)
            .expect("a");
        for name in ["mail.corp.test", "a.b.corp.test", "*.x.corp.test"] {
            let e = r
                .claim_route(2, "mail", &s(&[name]), &s(&["/"]), now)
                .expect_err(name);
            assert!(e.to_string().contains("*.corp.test"), "{e}");
        }
        r.claim_route(1, "mail", &s(&["mail.corp.test"]), &s(&["/"]), now)
            .expect("owner");
        r.claim_route(2, "other", &s(&["corp2.test"]), &s(&["/"]), now)
            .expect("unrelated");
    }

    #[test]
    fn the_catch_all_needs_a_grant_and_owns_nothing() {
        let mut r = reg();
        let (a, b, c) = (who(), who(), who());
        let now = Instant::now();
        r.connect(1, a, 0);
        r.connect(2, b, 2);
        r.connect(3, c, 0);
        let e = r
            .claim_route(1, "all", &s(&["*"]), &s(&["/"]), now)
            .expect_err("not granted");
        assert!(matches!(e, Refusal::NotAllowed(_)), "{e}");
        r.claim_route(2, "all", &s(&["*"]), &s(&["/"]), now)
            .expect("granted");
        r.claim_route(3, "site", &s(&["site.test"]), &s(&["/"]), now)
            .expect("not owned by *");
    }

    #[test]
    fn allowances_confine_ports_and_domains() {
        let mut r = reg();
        let a = who();
        let now = Instant::now();
        r.connect(1, a, 1);
        assert!(matches!(
            r.plan_port(1, "p", 7000, now),
            Err(Refusal::NotAllowed(_))
        ));
        assert_eq!(r.plan_port(1, "p", 6001, now), Ok(PortPlan::Bind(6001)));
        match r.plan_port(1, "p", 0, now) {
            Ok(PortPlan::BindFrom(p)) => assert_eq!(p.to_string(), "6000-6099"),
            other => panic!("{other:?}"),
        }
        for ok in [
            "alice.test",
            "www.alice.test",
            "*.alice.test",
            "*.x.alice.test",
        ] {
            r.claim_route(1, ok, &s(&[ok]), &s(&["/"]), now).expect(ok);
        }
        for bad in ["bob.test", "*.test", "*", "xalice.test"] {
            let e = r
                .claim_route(1, bad, &s(&[bad]), &s(&["/"]), now)
                .expect_err(bad);
            assert!(matches!(e, Refusal::NotAllowed(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn grace_reserves_for_the_holder_and_refuses_others() {
        let mut r = reg();
        let (a, b) = (who(), who());
        let t0 = Instant::now();
        r.connect(1, a, 0);
        r.connect(2, b, 0);
        r.record_port(1, "web", 6000, t0).expect("a");
        r.claim_service(1, "ssh", t0).expect("svc");
        r.claim_route(1, "site", &s(&["a.test"]), &s(&["/"]), t0)
            .expect("route");
        r.disconnect(1, t0);
        let t1 = t0 + Duration::from_secs(1);
        let e = r.plan_port(2, "x", 6000, t1).expect_err("reserved");
        assert!(e.to_string().contains("reserved for peer"), "{e}");
        assert!(r.claim_service(2, "ssh", t1).is_err());
        assert!(r
            .claim_route(2, "x", &s(&["a.test"]), &s(&["/"]), t1)
            .is_err());
        assert_eq!(r.port_holder(6000, t1).map(|(_, up)| up), Some(false));
        // The same identity, from a new connection, takes everything back at once.
        r.connect(3, a, 0);
        assert_eq!(r.plan_port(3, "web", 6000, t1), Ok(PortPlan::Keep(6000)));
        r.record_port(3, "web", 6000, t1).expect("back");
        r.claim_service(3, "ssh", t1).expect("back");
        r.claim_route(3, "site", &s(&["a.test"]), &s(&["/"]), t1)
            .expect("back");
        assert_eq!(r.port_holder(6000, t1).map(|(_, up)| up), Some(true));
    }

    #[test]
    fn a_restart_takes_claims_from_a_connection_not_yet_noticed_dead() {
        let mut r = reg();
        let a = who();
        let now = Instant::now();
        r.connect(1, a, 0);
        r.record_port(1, "web", 6000, now).expect("a");
        r.claim_service(1, "ssh", now).expect("svc");
        // Connection 1 still looks up (kill -9, no FIN yet); the restart arrives.
        r.connect(2, a, 0);
        r.record_port(2, "web", 6000, now).expect("restart");
        r.claim_service(2, "ssh", now).expect("restart");
        assert_eq!(r.service("ssh").map(|h| h.conn), Some(2));
        assert_eq!(r.port_holder(6000, now).map(|(h, _)| h.conn), Some(2));
        // The old connection's end releases nothing the new one holds.
        r.disconnect(1, now);
        assert!(r.expire(now + GRACE * 2).is_empty());
        assert_eq!(
            r.port_holder(6000, now + GRACE * 2).map(|(h, _)| h.conn),
            Some(2)
        );
    }

    #[test]
    fn claims_are_released_after_the_grace_period_always() {
        let mut r = reg();
        let (a, b) = (who(), who());
        let t0 = Instant::now();
        r.connect(1, a, 0);
        r.record_port(1, "web", 6000, t0).expect("a");
        r.claim_service(1, "ssh", t0).expect("svc");
        r.claim_route(1, "site", &s(&["a.test"]), &s(&["/", "/x"]), t0)
            .expect("route");
        r.disconnect(1, t0);
        assert!(r.expire(t0 + GRACE - Duration::from_millis(1)).is_empty());
        let rel = r.expire(t0 + GRACE);
        assert_eq!(rel.ports, vec![6000]);
        assert_eq!(rel.services, vec!["ssh".to_string()]);
        assert_eq!(rel.routes, vec![(1, "site".to_string())]);
        assert_eq!(r.counts(), (0, 0), "nothing of the gone peer is kept");
        r.connect(2, b, 0);
        assert_eq!(
            r.plan_port(2, "x", 6000, t0 + GRACE),
            Ok(PortPlan::Bind(6000))
        );
        r.claim_service(2, "ssh", t0 + GRACE).expect("free");
    }

    #[test]
    fn a_connection_without_claims_is_forgotten_at_once() {
        let mut r = reg();
        let now = Instant::now();
        for i in 0..1000 {
            r.connect(i, who(), 0);
            r.disconnect(i, now);
        }
        assert_eq!(r.counts(), (0, 0));
    }

    #[test]
    fn an_expired_holder_gives_way_to_another_identity() {
        let mut r = reg();
        let (a, b) = (who(), who());
        let t0 = Instant::now();
        r.connect(1, a, 0);
        r.record_port(1, "web", 6000, t0).expect("a");
        r.disconnect(1, t0);
        r.connect(2, b, 0);
        // Not yet swept, but past the grace period: b may take it (and its listener).
        let later = t0 + GRACE + Duration::from_secs(1);
        assert_eq!(
            r.plan_port(2, "mine", 6000, later),
            Ok(PortPlan::Keep(6000))
        );
        r.record_port(2, "mine", 6000, later).expect("b");
        assert_eq!(r.port_holder(6000, later).map(|(h, _)| h.owner), Some(b));
    }

    #[test]
    fn two_proxies_of_one_peer_cannot_share_a_location() {
        let mut r = reg();
        let a = who();
        let now = Instant::now();
        r.connect(1, a, 0);
        r.claim_route(1, "one", &s(&["x.test"]), &s(&["/"]), now)
            .expect("one");
        let e = r
            .claim_route(1, "two", &s(&["x.test"]), &s(&["/"]), now)
            .expect_err("two");
        assert!(matches!(e, Refusal::HeldBySelf { .. }), "{e}");
        r.record_port(1, "p", 6000, now).expect("p");
        assert!(matches!(
            r.plan_port(1, "q", 6000, now),
            Err(Refusal::HeldBySelf { .. })
        ));
    }

    #[test]
    fn exposure_limits_are_per_user() {
        let mut users = vec![allowance("small", "1-65535", any())];
        users[0].max_exposures = 2;
        let mut r = Registry::new(users, GRACE);
        let (a, b) = (who(), who());
        let now = Instant::now();
        r.connect(1, a, 0);
        r.connect(2, b, 0);
        r.record_port(1, "one", 6001, now).expect("1");
        r.claim_service(2, "svc", now).expect("2");
        let e = r
            .claim_route(1, "three", &s(&["x.test"]), &s(&["/"]), now)
            .expect_err("3");
        assert!(matches!(e, Refusal::Limit(_)), "{e}");
        // Re-claiming an existing proxy is not a new one.
        r.record_port(1, "one", 6001, now).expect("again");
    }

    #[test]
    fn covering_wildcards_of_names() {
        assert_eq!(covering_wildcards("a.b.c"), s(&["*.b.c", "*.c"]));
        assert_eq!(covering_wildcards("*.b.c"), s(&["*.c"]));
        assert!(covering_wildcards("*").is_empty());
        assert!(covering_wildcards("localhost").is_empty());
    }
}
