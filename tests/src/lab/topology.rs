//! The [`Lab`]: builds the namespaces, links, addresses, NAT rules and delay programs
//! of a [`LabSpec`], answers what is where, and tears it all down when dropped.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use super::cmd;
use super::delay;
use super::env::{cleanup_stale_labs, kill_all_in, NS_PREFIX};
use super::error::{Error, Result};
use super::nft;
use super::spec::{CgnatProfile, Host, LabSpec, NatProfile, Site, Unsolicited};

/// The server's first address: where the rendezvous server listens.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The server's second address, for checks of NAT behaviour per destination.
pub const SERVER_ALT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// The internet bridge's own address, in [`Host::Internet`].
pub const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Site A router's WAN address when it grants port mappings ([`SiteSpec::portmap`]):
/// miniupnpd refuses every reserved range as its external address, TEST-NET too.
/// 11.0.0.0/8 is allocated but not announced on the internet; the lab has no path out
/// anyway. Reached on-link over the internet bridge like the other stations.
///
/// [`SiteSpec::portmap`]: super::spec::SiteSpec::portmap
pub const PORTMAP_PUBLIC_A: Ipv4Addr = Ipv4Addr::new(11, 0, 113, 21);
/// Site B's, as [`PORTMAP_PUBLIC_A`].
pub const PORTMAP_PUBLIC_B: Ipv4Addr = Ipv4Addr::new(11, 0, 113, 22);

/// Numbers of each lab made by this process, for unique namespace names.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Packets and bytes (IP length) of TCP to and from the server's link, all ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// TCP packets the server received.
    pub packets_in: u64,
    /// TCP bytes the server received.
    pub bytes_in: u64,
    /// TCP packets the server sent.
    pub packets_out: u64,
    /// TCP bytes the server sent.
    pub bytes_out: u64,
}

impl TcpCounters {
    /// Bytes in and out together.
    pub fn bytes(&self) -> u64 {
        self.bytes_in + self.bytes_out
    }
}

/// A running NAT lab: network namespaces joined by veth pairs and bridges, NAT boxes
/// made with nftables, and a `lab-delay` process per delayed link.
///
/// ```text
///  host A  10.0.1.2 ─┐                                       ┌─ host B  10.0.2.2
///  host A2 10.0.1.3 ─┤ router A               router B       ├─ host B2 10.0.2.3
///      LAN bridge    └ 10.0.1.1   WAN .21    WAN .22  10.0.2.1 ┘    LAN bridge
///                                    │           │
///                         lab-delay 10 ms     lab-delay 15 ms
///                                    │           │
///                 ═══════ internet bridge 203.0.113.0/24 (.1) ═══════
///                                          │
///                              server 203.0.113.10 and .11
///
///  with a CGNAT: router A WAN 100.64.1.2 ── 100.64.1.1 CGNAT A WAN 203.0.113.21
///  same NAT:     host B is 10.0.1.3 behind router A; no site B
/// ```
///
/// The stations on the internet bridge have fixed MACs and permanent ARP entries for
/// each other, so that no first packet waits for ARP through the delay lines.
///
/// Namespaces are named `pl-{pid}-{n}-{role}` (role `inet`, `srv`, `ra`, `ha`, `ha2`,
/// `cga`, `rb`, ...), unique per lab across threads and processes; interfaces are
/// created directly inside the namespaces (`wan`, `lan`, `eth0`, ...), so no name ever
/// exists in the root namespace and labs cannot collide there. Addresses repeat from lab
/// to lab, as every lab has its own namespaces.
///
/// Dropping the lab (also while a test unwinds from a panic) kills its delay programs
/// and every process still running in its namespaces, then deletes the namespaces.
/// Namespaces of a process killed before it could drop its labs are deleted by the next
/// [`Lab::new`] in any process ([`crate::cleanup_stale_labs`]).
#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    prefix: String,
    /// Created namespaces, in order.
    namespaces: Vec<String>,
    /// The `lab-delay` processes.
    delays: Vec<Child>,
}

impl Lab {
    /// Builds the lab of `spec` and waits until every delayed link carries traffic.
    ///
    /// Needs root and the tools of [`crate::require_lab`]; a site with a delay needs the
    /// `lab-delay` program ([`LabSpec::delay_binary`]). Whatever was built is torn down
    /// again if a step fails.
    pub fn new(spec: LabSpec) -> Result<Lab> {
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(|| {
            if let Err(e) = cleanup_stale_labs() {
                eprintln!("lab: cleaning up stale labs failed: {e}");
            }
        });
        let needs_delay = Site::ALL
            .iter()
            .any(|&s| spec.site(s).delay_ms > 0 && (s == Site::A || !spec.same_nat));
        let delay_bin = if needs_delay {
            Some(delay::delay_binary(spec.delay_binary.as_deref())?)
        } else {
            None
        };

        let mut lab = Lab {
            spec,
            prefix: String::new(),
            namespaces: Vec::new(),
            delays: Vec::new(),
        };
        lab.claim_prefix()?;
        lab.build()?;
        if let Some(bin) = delay_bin {
            lab.start_delays(&bin)?;
        }
        Ok(lab)
    }

    /// The spec the lab was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// The lab's unique prefix, `pl-{pid}-{n}`: every namespace name starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the lab has `host` (second hosts and CGNAT boxes exist only if asked for).
    pub fn has(&self, host: Host) -> bool {
        self.role(host).is_some()
    }

    /// The name of `host`'s network namespace, or [`Error::NotInLab`].
    pub fn try_namespace(&self, host: Host) -> Result<String> {
        self.role(host)
            .map(|role| self.ns_name(role))
            .ok_or_else(|| Error::NotInLab(format!("{host:?} (spec: {:?})", self.spec)))
    }

    /// The name of `host`'s network namespace (for `ip netns exec`).
    ///
    /// # Panics
    /// If the lab has no such host (see [`Lab::has`]).
    pub fn namespace(&self, host: Host) -> String {
        match self.try_namespace(host) {
            Ok(ns) => ns,
            Err(e) => panic!("{e}"),
        }
    }

    /// A command running `program` inside `host`'s namespace (`ip netns exec NS
    /// program`); add arguments, pipes and spawn it as usual. Turn it into a
    /// `tokio::process::Command` with `From` if needed. The program is killed when the
    /// lab is dropped, if still running.
    ///
    /// # Panics
    /// If the lab has no such host.
    pub fn command(&self, host: Host, program: impl AsRef<OsStr>) -> Command {
        cmd::in_ns(&self.namespace(host), program)
    }

    /// Runs `program args...` in `host`'s namespace to completion and returns its
    /// stdout; a non-zero exit is an error carrying its stderr.
    pub fn run(&self, host: Host, program: &str, args: &[&str]) -> Result<String> {
        cmd::exec(&self.try_namespace(host)?, program, args)
    }

    /// The server's main address, 203.0.113.10.
    pub fn server_ip(&self) -> Ipv4Addr {
        SERVER_IP
    }

    /// The server's second address, 203.0.113.11.
    pub fn server_alt_ip(&self) -> Ipv4Addr {
        SERVER_ALT_IP
    }

    /// The address of `host` on its own network: a host's LAN address (10.0.x.y), a home
    /// router's WAN address (public, or 100.64.x.2 behind a CGNAT), a CGNAT's public
    /// address, the server's main address, the internet bridge's 203.0.113.1.
    ///
    /// # Panics
    /// If the lab has no such host.
    pub fn host_ip(&self, host: Host) -> Ipv4Addr {
        if !self.has(host) {
            panic!("not in this lab: {host:?}");
        }
        match host {
            Host::Server => SERVER_IP,
            Host::Internet => INTERNET_IP,
            Host::A => lan_ip(Site::A, 2),
            Host::A2 if self.spec.same_nat => lan_ip(Site::A, 4),
            Host::A2 => lan_ip(Site::A, 3),
            Host::B if self.spec.same_nat => lan_ip(Site::A, 3),
            Host::B => lan_ip(Site::B, 2),
            Host::B2 => lan_ip(Site::B, 3),
            Host::RouterA | Host::RouterB => self.router_wan_ip(self.site_of(host)),
            Host::CgnatA | Host::CgnatB => self.public_addr(self.site_of(host)),
        }
    }

    /// The public address of `site`: its router's WAN address, or its CGNAT's. With
    /// [`LabSpec::same_nat`], site B's is router A's.
    pub fn public_ip(&self, site: Site) -> Ipv4Addr {
        self.public_addr(self.real_site(site))
    }

    /// Replaces the NAT profile of `site`'s home router while the lab runs (one atomic
    /// nft transaction replacing table `ip nat`). Connections already open keep their
    /// mappings; new ones get the new profile. Port forwards are kept.
    pub fn set_nat(&self, site: Site, profile: NatProfile) -> Result<()> {
        let site = self.real_site(site);
        let mut cmds = vec!["delete table ip nat".to_string()];
        cmds.extend(nft::nat_table(&lan_net(site), profile, self.hairpin(site)));
        cmd::nft_batch(&self.namespace(Host::router(site)), &cmds).map(drop)
    }

    /// Replaces what `site`'s NAT boxes (home router and CGNAT) do with unsolicited
    /// inbound packets, atomically.
    pub fn set_unsolicited(&self, site: Site, unsolicited: Unsolicited) -> Result<()> {
        let site = self.real_site(site);
        for host in [Host::router(site), Host::cgnat(site)] {
            if self.has(host) {
                let mut cmds = vec!["flush chain inet fw input".to_string()];
                cmds.extend(nft::unsolicited_rules(unsolicited));
                cmd::nft_batch(&self.namespace(host), &cmds)?;
            }
        }
        Ok(())
    }

    /// Forwards TCP and UDP `port` on `site`'s public address to the site's first host
    /// (host A for site A), same port: a baseline path without punching.
    pub fn forward_port(&self, site: Site, port: u16) -> Result<()> {
        self.forward_port_to(Host::of(site), port)
    }

    /// Forwards TCP and UDP `port` on the public address of `host`'s site to `host`,
    /// same port (through the CGNAT too, if the site has one).
    pub fn forward_port_to(&self, host: Host, port: u16) -> Result<()> {
        if !matches!(host, Host::A | Host::A2 | Host::B | Host::B2) || !self.has(host) {
            return Err(Error::NotInLab(format!(
                "{host:?} is not a LAN host of the lab"
            )));
        }
        let site = self.site_of(host);
        let router = Host::router(site);
        let rules = nft::forward_rules(port, self.host_ip(host), self.hairpin(site));
        Self::nft_all(&self.namespace(router), &rules)?;
        let cgnat = Host::cgnat(site);
        if self.has(cgnat) {
            let rules = nft::forward_rules(port, self.host_ip(router), None);
            Self::nft_all(&self.namespace(cgnat), &rules)?;
        }
        Ok(())
    }

    /// TCP bytes in plus out of the server's link since the lab started, all ports.
    /// Compare before and after a transfer: a direct link leaves it nearly unchanged.
    pub fn server_tcp_bytes(&self) -> Result<u64> {
        Ok(self.server_tcp_counters()?.bytes())
    }

    /// TCP packets and bytes in and out of the server's link since the lab started.
    /// Traffic inside the server's namespace (loopback) is not counted.
    pub fn server_tcp_counters(&self) -> Result<TcpCounters> {
        let ns = self.namespace(Host::Server);
        let listing = cmd::exec(&ns, "nft", &["list", "counters", "table", "inet", "acct"])?;
        let parse = |name| {
            nft::parse_counter(&listing, name).ok_or_else(|| Error::Parse {
                command: format!("ip netns exec {ns} nft list counters table inet acct"),
                output: listing.clone(),
            })
        };
        let (packets_in, bytes_in) = parse(nft::COUNTER_IN)?;
        let (packets_out, bytes_out) = parse(nft::COUNTER_OUT)?;
        Ok(TcpCounters {
            packets_in,
            bytes_in,
            packets_out,
            bytes_out,
        })
    }

    /// The public address of a built site's edge: 203.0.113.21 / .22, or
    /// [`PORTMAP_PUBLIC_A`] / `_B` for a router that grants port mappings.
    fn public_addr(&self, site: Site) -> Ipv4Addr {
        let s = self.spec.site(site);
        match (s.portmap && s.cgnat.is_none(), site) {
            (true, Site::A) => PORTMAP_PUBLIC_A,
            (true, Site::B) => PORTMAP_PUBLIC_B,
            (false, _) => public_ip(site),
        }
    }

    /// Starts miniupnpd (UPnP IGD, NAT-PMP, PCP; nftables backend) on `site`'s router,
    /// which must have been built with [`SiteSpec::portmap`], and waits until it
    /// listens. `extra` lines are appended to its config (e.g. `enable_upnp=no`).
    /// Leases as short as 1 s are granted (`min_lifetime=1`), so that tests can watch
    /// renewals. Its rules live in table `inet miniupnpd` (DNAT at prerouting priority
    /// -105, before the lab's NAT; the lab's forward chain accepts DNATed flows).
    ///
    /// [`SiteSpec::portmap`]: super::spec::SiteSpec::portmap
    pub fn start_miniupnpd(&self, site: Site, extra: &[&str]) -> Result<Miniupnpd> {
        let site = self.real_site(site);
        if !self.spec.site(site).portmap || self.spec.site(site).cgnat.is_some() {
            return Err(Error::NotInLab(format!(
                "site {site:?} was not built with portmap (spec: {:?})",
                self.spec
            )));
        }
        let ns = self.namespace(Host::router(site));
        Self::nft_all(&ns, &nft::miniupnpd_tables())?;
        let dir = std::env::temp_dir();
        let base = format!("{}-miniupnpd-{}", self.prefix, site_tag(site));
        let conf = dir.join(format!("{base}.conf"));
        let log = dir.join(format!("{base}.log"));
        let pid = dir.join(format!("{base}.pid"));
        let mut text = miniupnpd_conf(&lan_net(site));
        for line in extra {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&conf, text)
            .map_err(|e| Error::NotReady(format!("{}: {e}", conf.display())))?;
        let log_file = std::fs::File::create(&log)
            .map_err(|e| Error::NotReady(format!("{}: {e}", log.display())))?;
        let child = cmd::in_ns(&ns, "miniupnpd")
            .arg("-d")
            .arg("-f")
            .arg(&conf)
            .arg("-P")
            .arg(&pid)
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| {
                Error::NotReady(format!(
                    "cannot start miniupnpd (package miniupnpd-nftables): {e}"
                ))
            })?;
        let mut daemon = Miniupnpd {
            child,
            ns,
            files: vec![conf, log.clone(), pid],
            log,
        };
        // Ready once both listeners are up (it logs them at start; bounded wait).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = daemon.log();
            if text.contains("Listening for NAT-PMP/PCP traffic")
                && text.contains("HTTP listening on port")
            {
                return Ok(daemon);
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                return Err(Error::NotReady(format!(
                    "miniupnpd exited ({status}): {text}"
                )));
            }
            if std::time::Instant::now() > until {
                return Err(Error::NotReady(format!(
                    "miniupnpd not listening after 20 s: {text}"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    // ----- naming -----

    fn ns_name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// The namespace role of `host`, if the lab has it.
    fn role(&self, host: Host) -> Option<&'static str> {
        let (a, b, same) = (&self.spec.a, &self.spec.b, self.spec.same_nat);
        match host {
            Host::Server => Some("srv"),
            Host::Internet => Some("inet"),
            Host::A => Some("ha"),
            Host::A2 => a.second_host.then_some("ha2"),
            Host::B => Some("hb"),
            Host::B2 => (!same && b.second_host).then_some("hb2"),
            Host::RouterA => Some("ra"),
            Host::RouterB => Some(if same { "ra" } else { "rb" }),
            Host::CgnatA => a.cgnat.is_some().then_some("cga"),
            Host::CgnatB => (!same && b.cgnat.is_some()).then_some("cgb"),
        }
    }

    /// The site whose boxes serve `site`: site A for both with `same_nat`.
    fn real_site(&self, site: Site) -> Site {
        if self.spec.same_nat {
            Site::A
        } else {
            site
        }
    }

    /// The (real) site of a host, router or CGNAT. Server and internet: site A (unused).
    fn site_of(&self, host: Host) -> Site {
        match host {
            Host::B | Host::B2 | Host::RouterB | Host::CgnatB => self.real_site(Site::B),
            _ => Site::A,
        }
    }

    /// The sites that are built.
    fn sites(&self) -> Vec<Site> {
        if self.spec.same_nat {
            vec![Site::A]
        } else {
            Site::ALL.to_vec()
        }
    }

    /// The LAN hosts of a built site, with their port names on the router's bridge.
    fn lan_hosts(&self, site: Site) -> Vec<(Host, &'static str)> {
        let mut hosts = vec![(Host::of(site), "h1")];
        let second = match site {
            Site::A => Host::A2,
            Site::B => Host::B2,
        };
        if self.has(second) {
            hosts.push((second, "h2"));
        }
        if site == Site::A && self.spec.same_nat {
            hosts.push((Host::B, "h3"));
        }
        hosts
    }

    /// The address LAN hosts hairpin through, if `site`'s router hairpins: its WAN
    /// address (behind a CGNAT: the 100.64 one).
    fn hairpin(&self, site: Site) -> Option<Ipv4Addr> {
        self.spec
            .site(site)
            .hairpin
            .then(|| self.router_wan_ip(site))
    }

    fn router_wan_ip(&self, site: Site) -> Ipv4Addr {
        if self.spec.site(site).cgnat.is_some() {
            cgnat_lan_ip(site, 2)
        } else {
            self.public_addr(site)
        }
    }

    // ----- building -----

    /// Picks the first free `pl-{pid}-{n}` by creating its `inet` namespace (which fails
    /// if the name exists, e.g. left by an earlier process with the same pid).
    fn claim_prefix(&mut self) -> Result<()> {
        let pid = std::process::id();
        let mut last = None;
        for _ in 0..100 {
            let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
            self.prefix = format!("{NS_PREFIX}{pid}-{n}");
            match self.add_namespace("inet", false) {
                Ok(()) => return Ok(()),
                Err(Error::Command { stderr, .. }) if stderr.contains("exists") => {
                    last = Some(stderr);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::NotReady(format!(
            "no free namespace prefix: {}",
            last.unwrap_or_default()
        )))
    }

    /// Creates namespace `role`: IPv6 off (no RS/ND noise), loopback up, forwarding on
    /// for NAT boxes.
    fn add_namespace(&mut self, role: &str, forwarding: bool) -> Result<()> {
        let ns = self.ns_name(role);
        cmd::tool("ip", &["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        let mut sysctls = vec![
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ];
        if forwarding {
            sysctls.push("net.ipv4.ip_forward=1");
        }
        cmd::exec(&ns, "sysctl", &[&["-qw"], sysctls.as_slice()].concat())?;
        // With br_netfilter loaded (it is on these machines, and its switches are per
        // namespace, on by default), frames bridged between two hosts of one LAN would
        // pass the router's IP forward chain and be dropped. A home switch does not
        // filter; the keys are absent without br_netfilter, hence `-e`.
        cmd::exec(
            &ns,
            "sysctl",
            &[
                "-qew",
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        )?;
        cmd::ip(&ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A veth pair `ns1:if1` ↔ `ns2:if2`, created inside the namespaces, offloads off
    /// on both ends (`lab-delay` needs whole frames with real checksums).
    fn veth(&self, ns1: &str, if1: &str, ns2: &str, if2: &str) -> Result<()> {
        cmd::ip(
            ns1,
            &[
                "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2,
            ],
        )?;
        for (ns, ifname) in [(ns1, if1), (ns2, if2)] {
            cmd::exec(
                ns,
                "ethtool",
                &[
                    "-K", ifname, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
                ],
            )?;
        }
        Ok(())
    }

    fn up(ns: &str, ifname: &str) -> Result<()> {
        cmd::ip(ns, &["link", "set", ifname, "up"]).map(drop)
    }

    fn addr(ns: &str, ifname: &str, cidr: &str) -> Result<()> {
        cmd::ip(ns, &["addr", "add", cidr, "dev", ifname]).map(drop)
    }

    fn nft_all(ns: &str, cmds: &[String]) -> Result<()> {
        cmds.iter().try_for_each(|c| cmd::nft(ns, c).map(drop))
    }

    fn build(&mut self) -> Result<()> {
        self.add_namespace("srv", false)?;
        for site in self.sites() {
            for host in [Host::router(site), Host::cgnat(site)] {
                if let Some(role) = self.role(host) {
                    self.add_namespace(role, true)?;
                }
            }
            for (host, _) in self.lan_hosts(site) {
                if let Some(role) = self.role(host) {
                    self.add_namespace(role, false)?;
                }
            }
        }

        // The internet: a bridge, and the server on it.
        let inet = self.namespace(Host::Internet);
        cmd::ip(&inet, &["link", "add", "br0", "type", "bridge"])?;
        Self::addr(&inet, "br0", &format!("{INTERNET_IP}/24"))?;
        Self::up(&inet, "br0")?;
        let srv = self.namespace(Host::Server);
        self.veth(&srv, "eth0", &inet, "srv")?;
        cmd::ip(&inet, &["link", "set", "srv", "master", "br0", "up"])?;
        Self::addr(&srv, "eth0", &format!("{SERVER_IP}/24"))?;
        Self::addr(&srv, "eth0", &format!("{SERVER_ALT_IP}/24"))?;
        Self::up(&srv, "eth0")?;
        Self::nft_all(&srv, &nft::accounting())?;

        for site in self.sites() {
            self.build_site(site)?;
        }
        self.pin_internet_neighbours()
    }

    /// The stations on the internet bridge: (namespace, interface, addresses, bridge
    /// port their frames arrive on).
    fn internet_stations(&self) -> Vec<(String, &'static str, Vec<Ipv4Addr>, Option<String>)> {
        let mut stations = vec![
            (
                self.namespace(Host::Internet),
                "br0",
                vec![INTERNET_IP],
                None,
            ),
            (
                self.namespace(Host::Server),
                "eth0",
                vec![SERVER_IP, SERVER_ALT_IP],
                Some("srv".to_string()),
            ),
        ];
        for site in self.sites() {
            let tag = site_tag(site);
            let port = if self.spec.site(site).delay_ms > 0 {
                format!("y{tag}b")
            } else {
                format!("x{tag}")
            };
            let edge = match self.spec.site(site).cgnat {
                Some(_) => Host::cgnat(site),
                None => Host::router(site),
            };
            stations.push((
                self.namespace(edge),
                "wan",
                vec![self.public_addr(site)],
                Some(port),
            ));
        }
        stations
    }

    /// Gives every station on the internet bridge a fixed MAC (from its address) and
    /// permanent neighbour entries for all the others, and the bridge static entries
    /// for them. Routers on the internet do not ARP for each other per connection;
    /// without this the first packet between two sites would wait one extra RTT
    /// through both delay lines for ARP, skewing exactly the timing a punch depends on.
    fn pin_internet_neighbours(&self) -> Result<()> {
        let stations = self.internet_stations();
        let inet = self.namespace(Host::Internet);
        for (ns, ifname, ips, port) in &stations {
            let mac = station_mac(ips[0]);
            cmd::ip(ns, &["link", "set", "dev", ifname, "address", &mac])?;
            if let Some(port) = port {
                cmd::run(std::process::Command::new("bridge").args([
                    "-n", &inet, "fdb", "replace", &mac, "dev", port, "master", "static",
                ]))?;
            }
        }
        for (ns, ifname, _, _) in &stations {
            for (other_ns, _, ips, _) in &stations {
                if other_ns == ns {
                    continue;
                }
                for ip in ips.iter().filter(|ip| !on_internet_net(**ip)) {
                    let host = format!("{ip}/32");
                    cmd::ip(ns, &["route", "add", &host, "dev", ifname])?;
                }
                for ip in ips {
                    let (ip, mac) = (ip.to_string(), station_mac(ips[0]));
                    cmd::ip(
                        ns,
                        &[
                            "neigh",
                            "replace",
                            &ip,
                            "lladdr",
                            &mac,
                            "dev",
                            ifname,
                            "nud",
                            "permanent",
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }

    fn build_site(&self, site: Site) -> Result<()> {
        let spec = self.spec.site(site).clone();
        let tag = site_tag(site);
        let inet = self.namespace(Host::Internet);
        let router = self.namespace(Host::router(site));
        let edge = match spec.cgnat {
            Some(_) => self.namespace(Host::cgnat(site)),
            None => router.clone(),
        };

        // The edge's WAN into the internet: straight onto the bridge, or through
        // lab-delay between x{tag} and y{tag} (whose peer y{tag}b is on the bridge).
        let x = format!("x{tag}");
        self.veth(&edge, "wan", &inet, &x)?;
        if spec.delay_ms > 0 {
            let (y, yb) = (format!("y{tag}"), format!("y{tag}b"));
            self.veth(&inet, &y, &inet, &yb)?;
            Self::up(&inet, &x)?;
            Self::up(&inet, &y)?;
            cmd::ip(&inet, &["link", "set", &yb, "master", "br0", "up"])?;
        } else {
            cmd::ip(&inet, &["link", "set", &x, "master", "br0", "up"])?;
        }
        let public = self.public_addr(site);
        if on_internet_net(public) {
            Self::addr(&edge, "wan", &format!("{public}/24"))?;
            Self::up(&edge, "wan")?;
        } else {
            // Outside the internet bridge's /24: on-link routes both ways (the other
            // stations get theirs in pin_internet_neighbours).
            Self::addr(&edge, "wan", &format!("{public}/32"))?;
            Self::up(&edge, "wan")?;
            let src = public.to_string();
            cmd::ip(
                &edge,
                &["route", "add", "203.0.113.0/24", "dev", "wan", "src", &src],
            )?;
        }

        if let Some(profile) = spec.cgnat {
            self.veth(&edge, "lan", &router, "wan")?;
            Self::addr(&edge, "lan", &format!("{}/24", cgnat_lan_ip(site, 1)))?;
            Self::up(&edge, "lan")?;
            Self::addr(&router, "wan", &format!("{}/24", cgnat_lan_ip(site, 2)))?;
            Self::up(&router, "wan")?;
            let gateway = cgnat_lan_ip(site, 1).to_string();
            cmd::ip(&router, &["route", "add", "default", "via", &gateway])?;
            let nat = match profile {
                CgnatProfile::EndpointIndependent => NatProfile::PortRestricted,
                CgnatProfile::Symmetric => NatProfile::Symmetric,
            };
            self.nat_box(&edge, "100.64.0.0/10", nat, spec.unsolicited, None)?;
        }

        cmd::ip(&router, &["link", "add", "lan", "type", "bridge"])?;
        Self::addr(&router, "lan", &format!("{}/24", lan_ip(site, 1)))?;
        Self::up(&router, "lan")?;
        let gateway = lan_ip(site, 1).to_string();
        for (host, port) in self.lan_hosts(site) {
            let ns = self.namespace(host);
            self.veth(&ns, "eth0", &router, port)?;
            cmd::ip(&router, &["link", "set", port, "master", "lan", "up"])?;
            Self::addr(&ns, "eth0", &format!("{}/24", self.host_ip(host)))?;
            Self::up(&ns, "eth0")?;
            cmd::ip(&ns, &["route", "add", "default", "via", &gateway])?;
        }
        let hairpin = self.hairpin(site);
        self.nat_box(&router, &lan_net(site), spec.nat, spec.unsolicited, hairpin)
    }

    /// Firewall, unsolicited-packet rules, NAT and port-forward tables of a NAT box.
    fn nat_box(
        &self,
        ns: &str,
        lan: &str,
        nat: NatProfile,
        u: Unsolicited,
        hairpin: Option<Ipv4Addr>,
    ) -> Result<()> {
        Self::nft_all(ns, &nft::firewall())?;
        Self::nft_all(ns, &nft::unsolicited_rules(u))?;
        Self::nft_all(ns, &nft::nat_table(lan, nat, hairpin))?;
        Self::nft_all(ns, &nft::forward_table())
    }

    /// Starts `lab-delay` on every delayed site link, then waits until each carries a
    /// ping from the site's edge to the server.
    fn start_delays(&mut self, bin: &std::path::Path) -> Result<()> {
        let inet = self.namespace(Host::Internet);
        let mut edges = Vec::new();
        for site in self.sites() {
            let delay_ms = self.spec.site(site).delay_ms;
            if delay_ms == 0 {
                continue;
            }
            let tag = site_tag(site);
            let child = delay::spawn(bin, &inet, &format!("x{tag}"), &format!("y{tag}"), delay_ms)?;
            self.delays.push(child);
            let edge = if self.spec.site(site).cgnat.is_some() {
                Host::cgnat(site)
            } else {
                Host::router(site)
            };
            edges.push(self.namespace(edge));
        }
        for edge in edges {
            delay::wait_for_path(&edge, SERVER_IP)?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.delays {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            kill_all_in(ns);
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = cmd::tool("ip", &["netns", "del", ns]) {
                eprintln!("lab: cannot delete namespace {ns}: {e}");
            }
        }
    }
}

/// A miniupnpd running on a lab router ([`Lab::start_miniupnpd`]); killed when dropped
/// (or with the lab).
#[derive(Debug)]
pub struct Miniupnpd {
    child: Child,
    ns: String,
    log: std::path::PathBuf,
    files: Vec<std::path::PathBuf>,
}

impl Miniupnpd {
    /// What it logged so far (it runs with `-d`: everything, to stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its nftables table (`inet miniupnpd`) as `nft list table` prints it: one DNAT
    /// rule per mapping in chain `prerouting`.
    pub fn ruleset(&self) -> Result<String> {
        cmd::exec(&self.ns, "nft", &["list", "table", "inet", "miniupnpd"])
    }

    /// The TCP ports it forwards now (from [`Miniupnpd::ruleset`]'s DNAT rules), with
    /// the LAN address and port each goes to.
    pub fn mapped_ports(&self) -> Result<Vec<(u16, std::net::SocketAddrV4)>> {
        Ok(nft::parse_dnat_rules(&self.ruleset()?))
    }
}

impl Drop for Miniupnpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// miniupnpd's config for a router whose LAN is `lan_net`: all three protocols on the
/// LAN bridge, mappings only for LAN hosts to themselves, leases from 1 s.
fn miniupnpd_conf(lan_net: &str) -> String {
    format!(
        "ext_ifname=wan\n\
         listening_ip=lan\n\
         http_port=0\n\
         enable_natpmp=yes\n\
         enable_upnp=yes\n\
         secure_mode=yes\n\
         system_uptime=yes\n\
         uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b\n\
         min_lifetime=1\n\
         upnp_table_name=miniupnpd\n\
         upnp_nat_table_name=miniupnpd\n\
         upnp_forward_chain=forward\n\
         upnp_nat_chain=prerouting\n\
         upnp_nat_postrouting_chain=postrouting\n\
         allow 1024-65535 {lan_net} 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n"
    )
}

fn site_tag(site: Site) -> &'static str {
    match site {
        Site::A => "a",
        Site::B => "b",
    }
}

fn site_number(site: Site) -> u8 {
    match site {
        Site::A => 1,
        Site::B => 2,
    }
}

/// 10.0.{1,2}.`last`.
fn lan_ip(site: Site, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, site_number(site), last)
}

fn lan_net(site: Site) -> String {
    format!("{}/24", lan_ip(site, 0))
}

/// 100.64.{1,2}.`last`: the link between a CGNAT and its home router.
fn cgnat_lan_ip(site: Site, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, site_number(site), last)
}

/// The fixed MAC of an internet station, from its (first) address: 02:00:cb:00:71:xx.
fn station_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// Whether `ip` is in the internet bridge's 203.0.113.0/24.
fn on_internet_net(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [203, 0, 113]
}

/// 203.0.113.21 (A) / .22 (B).
fn public_ip(site: Site) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 20 + site_number(site))
}
