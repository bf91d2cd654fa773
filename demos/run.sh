#!/usr/bin/env bash
# The demo: a rendezvous server and two peers that punch a direct connection and pipe
# data both ways. As root it runs them in the NAT lab (two sites behind
# port-restricted NATs, 50 ms between them); otherwise on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --workspace --release --quiet
exec target/release/punchline-demo "$@"
