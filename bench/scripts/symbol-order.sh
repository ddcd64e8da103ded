#!/usr/bin/env bash
# Writes crates/drover/symbol.order, the order in which the linker lays out the `drover`
# binary's code (crates/drover/build.rs; BENCHMARKS.md, section 11):
#   1. every function one agent runs, as callgrind sees them, while it registers, connects,
#      idles through a heartbeat, runs a command and serves a shell: side by side, they are the
#      only code an idle agent keeps resident;
#   2. then the server's hottest functions during `cargo xtask bench run --count 1000`, as
#      `perf record` samples them, hottest first: moving the agent's functions away from where
#      LTO put them cost the server 10 % more CPU per invocation until its own hot code was laid
#      out together too.
# Uses the release binaries already built (CARGO_TARGET_DIR is honoured). Needs valgrind and
# perf; takes about a minute. Rebuild afterwards: `cargo build --release -p drover`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
BIN=$(realpath "$target/release/drover")
OUT=$root/crates/drover/symbol.order
B=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$B"' EXIT
. "$here/server.sh"

# 1. The agent's functions.
start_server
ACT=$(activation)
# Each in a subshell that becomes valgrind, so that the agent's PID below is valgrind's.
cg() { exec valgrind --tool=callgrind --callgrind-out-file="$1" --dump-instr=no --compress-strings=no \
  --demangle=no "${@:2}"; }
(cg "$B/register.cg" "$BIN" agent register --server "$URL" --activation "$ACT" \
  --ca-fingerprint "$FP" --name order-node --state-dir "$B/agent" > /dev/null 2> "$B/register.log")
(cg "$B/run.cg" "$BIN" agent run --state-dir "$B/agent" > "$B/agent.log" 2>&1) &
AGENT=$!
for _ in $(seq 600); do
  "$BIN" nodes list 2>/dev/null | grep -q Online && break
  sleep 0.2
done
"$BIN" run --targets order-node -- echo ok > /dev/null
"$BIN" shell order-node -- true > /dev/null
sleep 35 # past the first heartbeat (30 s)
kill -TERM "$AGENT"
wait "$AGENT" || true
kill "$SERVER"
wait "$SERVER" || true
# `fn=` names every function that ran, `cfn=` the ones called (which ran too); callgrind marks
# a recursive call's name with 'N.
sed -n "/^c\\?fn=/{s/^c\\?fn=//; s/'[0-9]*\$//; /^[A-Za-z_][A-Za-z0-9_.\$]*\$/p}" \
  "$B/register.cg" "$B/run.cg" | sort -u > "$B/agent.txt"

# 2. The server's hottest functions.
(cd "$root" && cargo xtask bench run --count 1000 --runs 8 --no-build) > "$B/bench.log" 2>&1 &
for _ in $(seq 1200); do grep -q "warm-up" "$B/bench.log" 2>/dev/null && break; sleep 0.5; done
PID=$(pgrep -f "$target/release/drover server" | head -1)
# perf ends its timer with SIGTERM and exits with that status.
perf record -F 4999 -p "$PID" -o "$B/perf.data" -- sleep 20 > /dev/null 2>&1 || test -s "$B/perf.data"
wait
perf report -i "$B/perf.data" --no-demangle --dso drover --sort sym -F overhead,sym 2>/dev/null \
  | awk '$1 ~ /%$/ {print $3}' > "$B/server.txt"

{
  echo "# The link order of the drover binary's code (crates/drover/build.rs)."
  echo "# Written by bench/scripts/symbol-order.sh; lld skips names it does not find."
  echo "# The functions the agent runs."
  cat "$B/agent.txt"
  echo "# The server's hottest functions, hottest first."
  grep -vxFf "$B/agent.txt" "$B/server.txt"
} > "$OUT"
echo "$(wc -l < "$B/agent.txt") agent and $(grep -cvxFf "$B/agent.txt" "$B/server.txt") server functions in $OUT"
