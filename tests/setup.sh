#!/usr/bin/env bash
# Installs what the tests and the NAT lab need on a fresh Debian machine (as root):
# nftables and iproute2 for the lab's NATs and namespaces, ethtool to turn off veth
# offloads for the lab's delay program, a C compiler for the original C demo programs.
set -euo pipefail
need=()
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v ethtool >/dev/null || need+=(ethtool)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v ping >/dev/null || need+=(iputils-ping)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: missing ${need[*]} and not root: the NAT lab will be skipped" >&2
  fi
fi
