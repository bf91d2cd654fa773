#!/usr/bin/env bash
# The demo: a rendezvous server and two peers that punch a direct connection and pipe
# data both ways. As root it runs them in the NAT lab (two sites behind
# port-restricted NATs, 50 ms between them); otherwise on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
# Not --quiet: the first build takes minutes, and cargo's progress shows it is working.
echo "demo: building the workspace (release; the first build takes a few minutes)" >&2
cargo build --workspace --release
exec target/release/punchline-demo "$@"
