#!/usr/bin/env bash
# Installs what the tests and the NAT lab need on a fresh Debian machine (as root):
# nftables and iproute2 for the lab's NATs and namespaces, ethtool to turn off veth
# offloads for the lab's delay program, a C compiler for the original C demo programs,
# coturn and stun-client for the STUN interoperability tests, chromium for the admin
# dashboard test (tests/tests/admin.rs; ~36 s to install here, apt-get update included).
set -euo pipefail
need=()
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v ethtool >/dev/null || need+=(ethtool)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v ping >/dev/null || need+=(iputils-ping)
command -v curl >/dev/null || need+=(curl)
# TLS certificates and a TLS server for the https (SNI) vhost test (tests/tests/frp_compat.rs).
command -v openssl >/dev/null || need+=(openssl)
command -v sysctl >/dev/null || need+=(procps)
command -v kill >/dev/null || need+=(procps)
# A pseudo-terminal for the `pipe` terminal tests (tests/tests/first_use.rs).
command -v script >/dev/null || need+=(bsdutils)
# STUN interoperability (tests/tests/stun.rs): coturn as a reference server (and its
# turnutils_natdiscovery RFC 5780 client), stun-client's RFC 3489 `stun`.
command -v turnserver >/dev/null || need+=(coturn)
command -v stun >/dev/null || need+=(stun-client)
# Router port mappings (tests/tests/lab_portmap.rs): miniupnpd, a real UPnP IGD /
# NAT-PMP / PCP router daemon, on the lab's NAT router, nftables backend.
command -v miniupnpd >/dev/null || need+=(miniupnpd-nftables)
# The admin dashboard loaded in a real headless browser (tests/tests/admin.rs).
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: missing ${need[*]} and not root: the NAT lab will be skipped" >&2
  fi
fi
