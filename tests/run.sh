#!/usr/bin/env bash
# Runs every test on this machine: installs what is missing, builds the real binaries
# (the integration tests drive them), then runs the whole workspace's tests.
# As root the NAT-lab tests run; otherwise they are skipped with a reason, unless
# CI=true, where a lab that cannot run is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --workspace --release --all-targets
cargo test --workspace --release --no-fail-fast -- "$@"
