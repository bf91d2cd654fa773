#!/bin/bash
# HTTP keep-alive through the real binaries (wrk, 50 connections, 1 thread): requests/s,
# p99, and per request the CPU µs and syscalls of the server and of the exposing peer,
# for `expose tcp` and the vhost (and bore with BORE=1, if bench-data installed it).
# CPU per request and syscalls per request are what the tunnel costs; requests/s on a
# 2-core machine is shared with wrk and the backend. Loopback only.
#
# Needs: wrk and perf (apt-get install wrk linux-perf), release builds
# (cargo build --release -p rendezvous -p peer -p lab).
# Usage: tests/bench/http-syscalls.sh [SECONDS]   (env: B=bin dir, THREADS=N, BORE=1)
set -eu
S=${1:-5}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-$ROOT/target/release}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
TH=()
[ -n "${THREADS:-}" ] && TH=(--threads "$THREADS")

wait_for() { until grep -q "$2" "$1"; do sleep 0.1; done; }
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
syscalls() { awk '/raw_syscalls/{gsub(",","",$1);print $1}' "$1"; }
measure() { # NAME URL PEER_PID SERVER_PID HOST
  local c0s c0p c1s c1p w1 w2
  c0s=$(cpu "$4"); c0p=$(cpu "$3")
  perf stat -e raw_syscalls:sys_enter -p "$4" -o "$W/srv.sc" -- sleep "$S" >/dev/null 2>&1 & w1=$!
  perf stat -e raw_syscalls:sys_enter -p "$3" -o "$W/peer.sc" -- sleep "$S" >/dev/null 2>&1 & w2=$!
  wrk -t1 -c50 -d"${S}s" -H "Host: $5" --latency "$2" > "$W/wrk.out" 2>&1
  wait $w1 $w2
  c1s=$(cpu "$4"); c1p=$(cpu "$3")
  python3 - "$1" "$(awk '/Requests\/sec/{print $2}' "$W/wrk.out")" "$(awk '/ 99%/{print $2}' "$W/wrk.out")" \
    "$S" "$((c1s - c0s))" "$((c1p - c0p))" "$(syscalls "$W/srv.sc")" "$(syscalls "$W/peer.sc")" \
    "$(getconf CLK_TCK)" <<'PY'
import sys
name, rps, p99, s, ds, dp, ss, ps, tck = sys.argv[1:]
n = float(rps) * float(s)
t = float(tck)
print(f"{name:<11} {float(rps):>8.0f} req/s  p99 {p99:>7}  server {int(ds)/t*1e6/n:5.1f} µs/req "
      f"{int(ss)/n:4.2f} syscalls/req  peer {int(dp)/t*1e6/n:5.1f} µs/req {int(ps)/n:4.2f} syscalls/req")
PY
}

"$B/load-backend" http --hold 0 > "$W/be.log" 2>&1 &
wait_for "$W/be.log" "listening on"
T=$(grep -o "listening on [0-9.:]*" "$W/be.log" | awk '{print $3}')
"$B/rendezvous" "${TH[@]}" --bind 127.0.0.1 --port 0 --vhost-http-port 0 > "$W/srv.log" 2>&1 & R=$!
wait_for "$W/srv.log" "http vhost on"
V=$(grep -o "http vhost on [0-9.:]*" "$W/srv.log" | awk '{print $4}')
P=$(grep -oE "127.0.0.1:[0-9]+" "$W/srv.log" | head -1)
"$B/peer" "${TH[@]}" --server "$P" expose tcp --local "$T" --remote-port 0 > "$W/pt.log" 2>&1 & PT=$!
"$B/peer" "${TH[@]}" --server "$P" expose http --local "$T" --domain bench.example.com > "$W/ph.log" 2>&1 & PH=$!
wait_for "$W/pt.log" "exposed "; wait_for "$W/ph.log" "exposed "
EP=$(grep -o "exposed .*" "$W/pt.log" | head -1 | awk '{print $4}')
wrk -t1 -c50 -d"${S}s" "http://$T/" | awk '/Requests\/sec/{printf "direct      %8.0f req/s\n", $2}'
measure "expose tcp" "http://127.0.0.1:$EP/" "$PT" "$R" localhost
measure "vhost" "http://$V/" "$PH" "$R" bench.example.com
kill $PT $PH $R
if [ -n "${BORE:-}" ] && [ -x "$ROOT/target/bench-tools/bin/bore" ]; then
  BB=$ROOT/target/bench-tools/bin/bore
  "$BB" server --bind-addr 127.0.0.1 --min-port 20000 > "$W/bs.log" 2>&1 & BS=$!
  wait_for "$W/bs.log" "server listening"
  "$BB" local "${T##*:}" --to 127.0.0.1 --port 0 > "$W/bl.log" 2>&1 & BL=$!
  wait_for "$W/bl.log" "listening at"
  BA=$(grep -o "listening at .*" "$W/bl.log" | awk '{print $NF}' | sed 's/\x1b\[[0-9;]*m//g')
  measure "bore" "http://$BA/" "$BL" "$BS" localhost
fi
