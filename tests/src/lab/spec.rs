//! What a lab looks like: its sites, NAT profiles, firewall behaviour and delays.
//! Plain data, no I/O; [`crate::Lab::new`] turns a [`LabSpec`] into namespaces.

use std::path::PathBuf;

/// One-way delay of site A's internet link by default: server↔A RTT 20 ms.
pub const DEFAULT_DELAY_A_MS: u32 = 10;

/// One-way delay of site B's internet link by default: server↔B RTT 30 ms, A↔B RTT
/// 50 ms. Deliberately unlike A's, so that the server's RTT-based timing of the punch
/// signal matters, and above the 40 ms between NATs that the project must handle.
pub const DEFAULT_DELAY_B_MS: u32 = 15;

/// One of the lab's two sites, each a router (optionally behind a CGNAT) with a LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// Site A: LAN 10.0.1.0/24, public address 203.0.113.21.
    A,
    /// Site B: LAN 10.0.2.0/24, public address 203.0.113.22.
    B,
}

impl Site {
    /// Both sites, A first.
    pub const ALL: [Site; 2] = [Site::A, Site::B];
}

/// A namespace of the lab: somewhere a program can run ([`crate::Lab::command`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host {
    /// The rendezvous server, on the internet bridge at 203.0.113.10 and .11.
    Server,
    /// Host A, 10.0.1.2 behind router A.
    A,
    /// A second host behind router A, 10.0.1.3 (10.0.1.4 with [`LabSpec::same_nat`]);
    /// exists only with [`LabSpec::second_host`] for site A.
    A2,
    /// Host B, 10.0.2.2 behind router B; 10.0.1.3 behind router A with
    /// [`LabSpec::same_nat`].
    B,
    /// A second host behind router B, 10.0.2.3; exists only with
    /// [`LabSpec::second_host`] for site B.
    B2,
    /// Site A's home router (the NAT in front of host A).
    RouterA,
    /// Site B's home router; with [`LabSpec::same_nat`] this is router A.
    RouterB,
    /// Site A's carrier-grade NAT; exists only with [`LabSpec::cgnat`] for site A.
    CgnatA,
    /// Site B's carrier-grade NAT; exists only with [`LabSpec::cgnat`] for site B.
    CgnatB,
    /// The "internet" namespace holding the bridge (203.0.113.1) and the delay programs.
    Internet,
}

impl Host {
    /// The home router of `site`.
    pub fn router(site: Site) -> Host {
        match site {
            Site::A => Host::RouterA,
            Site::B => Host::RouterB,
        }
    }

    /// The carrier-grade NAT of `site`.
    pub fn cgnat(site: Site) -> Host {
        match site {
            Site::A => Host::CgnatA,
            Site::B => Host::CgnatB,
        }
    }

    /// The first host of `site`.
    pub fn of(site: Site) -> Host {
        match site {
            Site::A => Host::A,
            Site::B => Host::B,
        }
    }
}

/// How a home router maps and filters (the `ip nat` table on its WAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatProfile {
    /// `masquerade`: endpoint-independent mapping (the source port is kept when free),
    /// address-and-port-dependent filtering. The common home router.
    PortRestricted,
    /// `masquerade fully-random`: a new public port for every new connection, hence
    /// for every destination. Hole punching through it needs a relay.
    Symmetric,
    /// `masquerade` plus a map of every outbound mapping, from which any inbound
    /// connection to a mapped public port is forwarded to the host that owns it.
    FullCone,
    /// Symmetric, with public ports handed out in sequence: every new connection
    /// (TCP or UDP) gets the next of 20000–21023 (`masquerade to :` an nftables
    /// `numgen inc` mapped to ports; Linux's own allocator picks randomly whenever it
    /// cannot keep the source port). Some routers allocate like this, and a birthday
    /// punch can predict their next ports.
    SymmetricSequential,
}

/// What a NAT box does with an unsolicited packet to its WAN address (one that belongs
/// to no connection and is not forwarded): the `input` chain of `inet fw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unsolicited {
    /// TCP gets a RST (`reject with tcp reset`), as from a Linux box without rules; UDP
    /// gets ICMP port unreachable, without keeping conntrack state. Other packets
    /// (pings) are accepted.
    Rst,
    /// Everything unsolicited is dropped silently; the sender's SYN retransmits.
    Drop,
    /// TCP and UDP get ICMP port unreachable (`reject with icmp type
    /// port-unreachable`), without keeping state. Other packets are accepted.
    Icmp,
}

/// How a carrier-grade NAT maps (for 100.64.0.0/10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgnatProfile {
    /// `masquerade`: endpoint-independent mapping; punching through it works.
    EndpointIndependent,
    /// `masquerade fully-random`: a new port per connection; punching fails.
    Symmetric,
}

/// One site's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    /// The home router's NAT.
    pub nat: NatProfile,
    /// What the site's outermost NAT box (CGNAT if any, else router) and its home router
    /// do with unsolicited inbound packets.
    pub unsolicited: Unsolicited,
    /// One-way delay of the site's link to the internet bridge, in milliseconds. `0`
    /// plugs the link straight into the bridge: no delay program, no TTL aging.
    pub delay_ms: u32,
    /// A carrier-grade NAT between the home router and the internet: the home router's
    /// WAN is then 100.64.1.2 (site A) / 100.64.2.2 (site B).
    pub cgnat: Option<CgnatProfile>,
    /// A second host on the LAN ([`Host::A2`] / [`Host::B2`]).
    pub second_host: bool,
    /// Hairpinning on the home router: a LAN host connecting to the router's own WAN
    /// address reaches the LAN host that owns that public port (any outbound mapping,
    /// or a port forward), and sees the connection come from the caller's public
    /// address and port. Off by default, as on many home routers.
    pub hairpin: bool,
    /// The home router grants port mappings: it runs miniupnpd (UPnP IGD, NAT-PMP and
    /// PCP) on its LAN; start it with [`crate::Lab::start_miniupnpd`]. miniupnpd
    /// refuses to map on a reserved external address (TEST-NET 203.0.113.0/24
    /// included), so such a router's WAN address is [`crate::PORTMAP_PUBLIC_A`] /
    /// `_B` instead, outside the reserved ranges; the lab has no path out, so nothing
    /// ever reaches the real network of that address. Not with a CGNAT.
    pub portmap: bool,
}

impl SiteSpec {
    /// A port-restricted, RST-answering site with the given one-way delay.
    pub fn new(delay_ms: u32) -> SiteSpec {
        SiteSpec {
            nat: NatProfile::PortRestricted,
            unsolicited: Unsolicited::Rst,
            delay_ms,
            cgnat: None,
            second_host: false,
            hairpin: false,
            portmap: false,
        }
    }
}

/// The whole lab's settings. Start from [`LabSpec::default()`] (two port-restricted
/// RST-answering sites, 10 ms and 15 ms one way) and change what the test needs:
///
/// ```
/// use lab::{LabSpec, NatProfile, Site, Unsolicited};
/// let spec = LabSpec::default()
///     .nat(Site::B, NatProfile::Symmetric)
///     .unsolicited(Site::A, Unsolicited::Drop);
/// assert_eq!(spec.b.nat, NatProfile::Symmetric);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Site A.
    pub a: SiteSpec,
    /// Site B (unused with [`LabSpec::same_nat`]).
    pub b: SiteSpec,
    /// Host B sits behind router A (10.0.1.3) and there is no site B: both peers
    /// behind one NAT.
    pub same_nat: bool,
    /// The `lab-delay` program. `None`: the environment variable `LAB_DELAY_BIN`, else
    /// [`crate::find_binary`]`("lab-delay")` (next to the running test executable).
    /// Needed only when a site has a delay.
    pub delay_binary: Option<PathBuf>,
}

impl Default for LabSpec {
    fn default() -> LabSpec {
        LabSpec {
            a: SiteSpec::new(DEFAULT_DELAY_A_MS),
            b: SiteSpec::new(DEFAULT_DELAY_B_MS),
            same_nat: false,
            delay_binary: None,
        }
    }
}

impl LabSpec {
    /// `site`'s router grants port mappings ([`SiteSpec::portmap`]).
    pub fn portmap(mut self, site: Site) -> LabSpec {
        self.site_mut(site).portmap = true;
        self
    }

    /// The settings of `site`.
    pub fn site(&self, site: Site) -> &SiteSpec {
        match site {
            Site::A => &self.a,
            Site::B => &self.b,
        }
    }

    /// The settings of `site`, to change.
    pub fn site_mut(&mut self, site: Site) -> &mut SiteSpec {
        match site {
            Site::A => &mut self.a,
            Site::B => &mut self.b,
        }
    }

    /// Sets the NAT profile of `site`'s home router.
    pub fn nat(mut self, site: Site, nat: NatProfile) -> LabSpec {
        self.site_mut(site).nat = nat;
        self
    }

    /// Sets what `site`'s NAT boxes do with unsolicited inbound packets.
    pub fn unsolicited(mut self, site: Site, unsolicited: Unsolicited) -> LabSpec {
        self.site_mut(site).unsolicited = unsolicited;
        self
    }

    /// Sets the one-way delay of `site`'s internet link (0: no delay program).
    pub fn delay_ms(mut self, site: Site, delay_ms: u32) -> LabSpec {
        self.site_mut(site).delay_ms = delay_ms;
        self
    }

    /// Puts `site` behind a carrier-grade NAT.
    pub fn cgnat(mut self, site: Site, profile: CgnatProfile) -> LabSpec {
        self.site_mut(site).cgnat = Some(profile);
        self
    }

    /// Adds a second host to `site`'s LAN.
    pub fn second_host(mut self, site: Site) -> LabSpec {
        self.site_mut(site).second_host = true;
        self
    }

    /// Turns on hairpinning on `site`'s home router ([`SiteSpec::hairpin`]).
    pub fn hairpin(mut self, site: Site) -> LabSpec {
        self.site_mut(site).hairpin = true;
        self
    }

    /// Puts host B behind router A (10.0.1.3); site B is not built.
    pub fn same_nat(mut self) -> LabSpec {
        self.same_nat = true;
        self
    }

    /// Uses this `lab-delay` program.
    pub fn delay_binary(mut self, path: impl Into<PathBuf>) -> LabSpec {
        self.delay_binary = Some(path.into());
        self
    }
}
