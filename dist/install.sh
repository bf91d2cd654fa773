#!/usr/bin/env bash
# Installs punchline's two binaries, `peer` and `rendezvous`, into PREFIX/bin
# (default /usr/local/bin), building them first in release mode.
#
#   bash dist/install.sh                     # build, install to /usr/local/bin (root)
#   bash dist/install.sh --prefix ~/.local   # to ~/.local/bin, no root needed
#   bash dist/install.sh --systemd           # also the systemd units and /etc/punchline/
#   bash dist/install.sh --from DIR          # install binaries already built in DIR
#
# Release binaries carry no debug info (about 8 and 13 MB); for file:line in profiles
# build `cargo build --profile profiling` and run target/profiling/ instead.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local
from=
systemd=no
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    --systemd) systemd=yes; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$from" ]; then
  echo "install.sh: building (release; the first build takes a few minutes)" >&2
  cargo build --release -p peer -p rendezvous
  from=target/release
fi
install -d "$prefix/bin"
for b in peer rendezvous; do
  install -m 0755 "$from/$b" "$prefix/bin/$b"
  echo "installed $prefix/bin/$b"
done
if [ "$systemd" = yes ]; then
  if [ "$prefix" != /usr/local ]; then
    # The units run /usr/local/bin/...; point them at this prefix.
    sed_expr="s|/usr/local/bin/|$prefix/bin/|"
  else
    sed_expr=
  fi
  for u in dist/systemd/*.service; do
    sed -e "$sed_expr" "$u" > "/etc/systemd/system/$(basename "$u")"
    echo "installed /etc/systemd/system/$(basename "$u")"
  done
  install -d -m 0755 /etc/punchline
  [ -e /etc/punchline/rendezvous.toml ] || install -m 0600 examples/rendezvous.toml /etc/punchline/rendezvous.toml
  install -m 0644 examples/peer.toml /etc/punchline/peer.toml.example
  systemctl daemon-reload 2>/dev/null || true
  echo "systemd: edit /etc/punchline/rendezvous.toml, then systemctl enable --now punchline-rendezvous"
  echo "systemd: for a peer, write /etc/punchline/NAME.toml, then systemctl enable --now punchline-peer@NAME"
fi
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH; add it: export PATH=\"$prefix/bin:\$PATH\"" ;;
esac
