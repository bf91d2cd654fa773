//! The messages of NAT-PMP (RFC 6886) and PCP (RFC 6887) for TCP port mappings, and
//! the default gateway from `/proc/net/route`: pure encode / decode / parse, no I/O.
//!
//! Only what a peer needs: NAT-PMP's external-address and TCP mapping requests, PCP's
//! MAP opcode (IPv4 only), and their answers. Anything else a gateway sends is an
//! error, never a panic.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The UDP port PCP and NAT-PMP servers listen on (both RFCs).
pub const SERVER_PORT: u16 = 5351;

/// NAT-PMP's version number (PCP servers answer it with version 0 too).
const NATPMP_VERSION: u8 = 0;
/// PCP's version number.
const PCP_VERSION: u8 = 2;
/// NAT-PMP opcode: external address.
const NATPMP_OP_ADDRESS: u8 = 0;
/// NAT-PMP opcode: map TCP.
const NATPMP_OP_MAP_TCP: u8 = 2;
/// PCP opcode MAP.
const PCP_OP_MAP: u8 = 1;
/// The response bit of both protocols' opcode byte.
const RESPONSE: u8 = 0x80;
/// IANA protocol number of TCP (PCP's protocol field).
const PROTO_TCP: u8 = 6;
/// Size of a PCP MAP request and response (24-byte header + 36-byte MAP body).
pub const PCP_MAP_LEN: usize = 60;

/// Why a gateway's answer is not a usable mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short, wrong version or opcode: not an answer to our request.
    #[error("malformed answer ({0})")]
    Malformed(&'static str),
    /// The gateway speaks another version (e.g. a NAT-PMP-only router answering PCP).
    #[error("the gateway speaks version {0}")]
    Version(u8),
    /// The gateway refused, with the protocol's result code.
    #[error("the gateway refused: {}", result_text(*.0))]
    Refused(u16),
    /// The answer is for another mapping (PCP nonce or port mismatch).
    #[error("the answer is for another request")]
    Mismatch,
}

/// A human text for a NAT-PMP (0..=5) or PCP (0..=13) result code.
fn result_text(code: u16) -> String {
    let what = match code {
        1 => "unsupported version",
        2 => "not authorized / refused",
        3 => "network failure / malformed request",
        4 => "out of resources / unsupported opcode",
        5 => "unsupported opcode / option",
        7 => "malformed option",
        8 => "network failure",
        9 => "no resources",
        10 => "unsupported protocol",
        11 => "user exceeded quota",
        12 => "cannot provide external address",
        13 => "address mismatch",
        _ => "unknown result",
    };
    format!("{what} ({code})")
}

/// A mapping the gateway granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// The external port (may differ from the one asked for).
    pub external_port: u16,
    /// The lease in seconds (may differ from the one asked for; 0 after a delete).
    pub lifetime: u32,
    /// The external address, when the answer carries one (PCP does; NAT-PMP's map
    /// answer does not).
    pub external_ip: Option<Ipv4Addr>,
}

/// NAT-PMP: the external address request (2 bytes).
pub fn natpmp_address_request() -> [u8; 2] {
    [NATPMP_VERSION, NATPMP_OP_ADDRESS]
}

/// NAT-PMP: the answer to [`natpmp_address_request`]: the gateway's external address.
pub fn natpmp_address_response(buf: &[u8]) -> Result<Ipv4Addr, WireError> {
    natpmp_head(buf, NATPMP_OP_ADDRESS, 12)?;
    Ok(Ipv4Addr::new(buf[8], buf[9], buf[10], buf[11]))
}

/// NAT-PMP: map TCP `internal_port` to `external_port` (a suggestion) for `lifetime`
/// seconds; lifetime 0 with external port 0 deletes the mapping (12 bytes).
pub fn natpmp_map_request(internal_port: u16, external_port: u16, lifetime: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = NATPMP_VERSION;
    b[1] = NATPMP_OP_MAP_TCP;
    b[4..6].copy_from_slice(&internal_port.to_be_bytes());
    b[6..8].copy_from_slice(&external_port.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

/// NAT-PMP: the answer to [`natpmp_map_request`] for `internal_port`.
pub fn natpmp_map_response(buf: &[u8], internal_port: u16) -> Result<Granted, WireError> {
    natpmp_head(buf, NATPMP_OP_MAP_TCP, 16)?;
    if u16::from_be_bytes([buf[8], buf[9]]) != internal_port {
        return Err(WireError::Mismatch);
    }
    Ok(Granted {
        external_port: u16::from_be_bytes([buf[10], buf[11]]),
        lifetime: u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]),
        external_ip: None,
    })
}

/// Checks a NAT-PMP answer's version, opcode, length and result code.
fn natpmp_head(buf: &[u8], op: u8, len: usize) -> Result<(), WireError> {
    if buf.len() < 4 {
        return Err(WireError::Malformed("shorter than a header"));
    }
    if buf[0] != NATPMP_VERSION {
        return Err(WireError::Version(buf[0]));
    }
    if buf[1] != RESPONSE | op {
        return Err(WireError::Malformed("another opcode"));
    }
    let result = u16::from_be_bytes([buf[2], buf[3]]);
    if result != 0 {
        return Err(WireError::Refused(result));
    }
    if buf.len() < len {
        return Err(WireError::Malformed("truncated"));
    }
    Ok(())
}

/// PCP opcode ANNOUNCE.
const PCP_OP_ANNOUNCE: u8 = 0;
/// Size of a PCP header (ANNOUNCE has nothing else).
const PCP_HEADER_LEN: usize = 24;

/// PCP: an ANNOUNCE request from `client` (24 bytes): does the gateway speak PCP?
/// It creates nothing.
pub fn pcp_announce_request(client: Ipv4Addr) -> [u8; PCP_HEADER_LEN] {
    let mut b = [0u8; PCP_HEADER_LEN];
    b[0] = PCP_VERSION;
    b[1] = PCP_OP_ANNOUNCE;
    b[8..24].copy_from_slice(&client.to_ipv6_mapped().octets());
    b
}

/// PCP: the answer to [`pcp_announce_request`] (success, or the error).
pub fn pcp_announce_response(buf: &[u8]) -> Result<(), WireError> {
    pcp_head(buf, PCP_OP_ANNOUNCE, PCP_HEADER_LEN)
}

/// Checks a PCP answer's version, opcode, result code and length.
fn pcp_head(buf: &[u8], op: u8, len: usize) -> Result<(), WireError> {
    if buf.len() < 4 {
        return Err(WireError::Malformed("shorter than a header"));
    }
    if buf[0] != PCP_VERSION {
        return Err(WireError::Version(buf[0]));
    }
    if buf[1] != RESPONSE | op {
        return Err(WireError::Malformed("another opcode"));
    }
    if buf[3] != 0 {
        return Err(WireError::Refused(u16::from(buf[3])));
    }
    if buf.len() < len {
        return Err(WireError::Malformed("truncated"));
    }
    Ok(())
}

/// PCP: a MAP request for TCP `internal_port` of `client` (the address the request is
/// sent from: PCP servers check it), suggesting `external_port`, for `lifetime`
/// seconds (0: delete the mapping made with the same `nonce`).
pub fn pcp_map_request(
    client: Ipv4Addr,
    nonce: [u8; 12],
    internal_port: u16,
    external_port: u16,
    lifetime: u32,
) -> [u8; PCP_MAP_LEN] {
    let mut b = [0u8; PCP_MAP_LEN];
    b[0] = PCP_VERSION;
    b[1] = PCP_OP_MAP;
    b[4..8].copy_from_slice(&lifetime.to_be_bytes());
    b[8..24].copy_from_slice(&client.to_ipv6_mapped().octets());
    b[24..36].copy_from_slice(&nonce);
    b[36] = PROTO_TCP;
    b[40..42].copy_from_slice(&internal_port.to_be_bytes());
    b[42..44].copy_from_slice(&external_port.to_be_bytes());
    // No suggested external address: the IPv4-mapped "any" (::ffff:0.0.0.0).
    b[44..60].copy_from_slice(&Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets());
    b
}

/// PCP: the answer to [`pcp_map_request`] with `nonce` for `internal_port`.
pub fn pcp_map_response(
    buf: &[u8],
    nonce: [u8; 12],
    internal_port: u16,
) -> Result<Granted, WireError> {
    pcp_head(buf, PCP_OP_MAP, PCP_MAP_LEN)?;
    if buf[24..36] != nonce
        || buf[36] != PROTO_TCP
        || u16::from_be_bytes([buf[40], buf[41]]) != internal_port
    {
        return Err(WireError::Mismatch);
    }
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&buf[44..60]);
    Ok(Granted {
        external_port: u16::from_be_bytes([buf[42], buf[43]]),
        lifetime: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        external_ip: Ipv6Addr::from(ip).to_ipv4_mapped(),
    })
}

/// The default route's next hop in the text of `/proc/net/route` (the first route
/// with destination and mask 0 and the gateway flag), or `None`.
pub fn default_gateway(proc_net_route: &str) -> Option<Ipv4Addr> {
    /// RTF_UP | RTF_GATEWAY.
    const UP_GATEWAY: u32 = 0x1 | 0x2;
    proc_net_route.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_iface, dest, gw, flags, _, _, _, mask, ..] = f.as_slice() else {
            return None;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        if hex(dest)? != 0 || hex(mask)? != 0 || hex(flags)? & UP_GATEWAY != UP_GATEWAY {
            return None;
        }
        // The kernel prints the address in host byte order (as the address's bytes in memory).
        let gw = Ipv4Addr::from(hex(gw)?.to_ne_bytes());
        (!gw.is_unspecified()).then_some(gw)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natpmp_requests_pin_bytes() {
        assert_eq!(natpmp_address_request(), [0, 0]);
        assert_eq!(
            natpmp_map_request(40000, 40001, 600),
            [0, 2, 0, 0, 0x9c, 0x40, 0x9c, 0x41, 0, 0, 0x02, 0x58]
        );
        // Delete: lifetime 0, external port 0.
        assert_eq!(
            natpmp_map_request(40000, 0, 0),
            [0, 2, 0, 0, 0x9c, 0x40, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn natpmp_answers() {
        let addr = [0, 128, 0, 0, 0, 0, 0, 9, 198, 51, 100, 7];
        assert_eq!(
            natpmp_address_response(&addr),
            Ok(Ipv4Addr::new(198, 51, 100, 7))
        );
        let map = [
            0, 130, 0, 0, 0, 0, 0, 9, 0x9c, 0x40, 0x9c, 0x41, 0, 0, 0, 60,
        ];
        assert_eq!(
            natpmp_map_response(&map, 40000),
            Ok(Granted {
                external_port: 40001,
                lifetime: 60,
                external_ip: None
            })
        );
        assert_eq!(natpmp_map_response(&map, 40002), Err(WireError::Mismatch));
        let refused = [0, 130, 0, 2, 0, 0, 0, 9, 0x9c, 0x40, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            natpmp_map_response(&refused, 40000),
            Err(WireError::Refused(2))
        );
        assert!(natpmp_map_response(&map[..10], 40000).is_err());
        assert!(natpmp_map_response(&[], 40000).is_err());
        assert_eq!(
            natpmp_address_response(&map),
            Err(WireError::Malformed("another opcode"))
        );
        // A PCP server answering with its own version.
        assert_eq!(
            natpmp_address_response(&[2, 128, 0, 1]),
            Err(WireError::Version(2))
        );
    }

    #[test]
    fn pcp_map_round_trip() {
        let nonce = *b"0123456789ab";
        let client = Ipv4Addr::new(10, 0, 1, 2);
        let req = pcp_map_request(client, nonce, 40000, 40000, 600);
        assert_eq!(&req[..4], &[2, 1, 0, 0]);
        assert_eq!(&req[4..8], &600u32.to_be_bytes());
        assert_eq!(
            &req[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 2]
        );
        assert_eq!(&req[24..36], b"0123456789ab");
        assert_eq!(&req[36..40], &[6, 0, 0, 0]);
        assert_eq!(&req[40..44], &[0x9c, 0x40, 0x9c, 0x40]);
        assert_eq!(
            &req[44..60],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
        // The server's answer: response bit, result 0, lifetime, epoch, the MAP body
        // with the assigned port and address.
        let mut resp = req;
        resp[1] = 0x81;
        resp[3] = 0;
        resp[4..8].copy_from_slice(&120u32.to_be_bytes());
        resp[8..24].fill(0);
        resp[42..44].copy_from_slice(&41000u16.to_be_bytes());
        resp[44..60].copy_from_slice(&Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped().octets());
        assert_eq!(
            pcp_map_response(&resp, nonce, 40000),
            Ok(Granted {
                external_port: 41000,
                lifetime: 120,
                external_ip: Some(Ipv4Addr::new(198, 51, 100, 7)),
            })
        );
        assert_eq!(
            pcp_map_response(&resp, *b"another nonc", 40000),
            Err(WireError::Mismatch)
        );
        let mut refused = resp;
        refused[3] = 2;
        assert_eq!(
            pcp_map_response(&refused, nonce, 40000),
            Err(WireError::Refused(2))
        );
        assert!(pcp_map_response(&resp[..40], nonce, 40000).is_err());
        // A NAT-PMP-only gateway answers PCP with version 0, "unsupported version".
        assert_eq!(
            pcp_map_response(&[0, 0x81, 0, 1, 0, 0, 0, 0], nonce, 40000),
            Err(WireError::Version(0))
        );
    }

    #[test]
    fn pcp_announce() {
        let req = pcp_announce_request(Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(&req[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&req[20..24], &[10, 0, 1, 2]);
        let mut resp = [0u8; 24];
        resp[0] = 2;
        resp[1] = 0x80;
        assert_eq!(pcp_announce_response(&resp), Ok(()));
        resp[3] = 5;
        assert_eq!(pcp_announce_response(&resp), Err(WireError::Refused(5)));
        assert!(pcp_announce_response(&resp[..3]).is_err());
    }

    #[test]
    fn finds_the_default_gateway() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth0\t00000000\t0101000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_gateway(table), Some(Ipv4Addr::new(10, 0, 1, 1)));
        let no_default = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
            eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(default_gateway(no_default), None);
        assert_eq!(default_gateway(""), None);
        assert_eq!(default_gateway("header\ngarbage line\n"), None);
    }
}
