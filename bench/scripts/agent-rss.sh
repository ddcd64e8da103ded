#!/usr/bin/env bash
# The idle RSS of one agent: starts a release server and one agent from BINARY (default: the
# workspace's target/release/drover) in a temporary directory, waits 5 s, prints the agent's
# VmRSS, RssAnon and RssFile; with SMAPS=1 the 20 largest resident mappings, with WSS=SECONDS
# the pages it touches while idle for that long, and with
# RESIDENT_CODE=1 which crates' code is resident (resident-code.py). Stops both.
# BENCHMARKS.md, section 9.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=$(realpath "${1:-$here/../../target/release/drover}")
B=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$B"' EXIT
export DROVER_CONFIG=$B/cli.toml
# The server from a copy of the binary: pages it touches would otherwise count as the agent's
# (they share the file) in the working set below.
cp "$BIN" "$B/drover-server"
"$B/drover-server" server --data-dir "$B/server" --listen 127.0.0.1:0 > "$B/server.log" 2>&1 &
for _ in $(seq 200); do grep -q "CA fingerprint" "$B/server.log" 2>/dev/null && break; sleep 0.1; done
URL=$(grep -o "listening on https://127.0.0.1:[0-9]*" "$B/server.log" | grep -o "https.*")
FP=$(grep -o "CA fingerprint: [0-9a-f]*" "$B/server.log" | cut -d" " -f3)
"$BIN" login --server "$URL" --ca-fingerprint "$FP" --token-file "$B/server/admin.token" > /dev/null
ACT=$("$BIN" activation create --count 1 -o json | python3 -c \
  'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(d["id"]+":"+d["code"])')
"$BIN" agent register --server "$URL" --activation "$ACT" --ca-fingerprint "$FP" \
  --name rss-node --state-dir "$B/agent" > /dev/null
"$BIN" agent run --state-dir "$B/agent" > "$B/agent.log" 2>&1 &
AGENT=$!
sleep 5
grep -E "VmRSS|RssAnon|RssFile" "/proc/$AGENT/status"
if [ -n "${SMAPS:-}" ]; then awk '/^[0-9a-f]+-/{m=$6" "$2} /^Rss:/{if($2>0) print $2" kB "m}' /proc/$AGENT/smaps | sort -rn | head -20; fi
if [ -n "${WSS:-}" ]; then
  # The idle working set: clear the pages' referenced bits, stay idle for WSS seconds (two
  # heartbeats at the default 30 s), and count the pages touched meanwhile.
  echo 1 > "/proc/$AGENT/clear_refs"
  sleep "$WSS"
  grep -E "^(Rss|Referenced|Anonymous):" "/proc/$AGENT/smaps_rollup"
fi
if [ "${RESIDENT_CODE:-}" = 1 ]; then python3 "$here/resident-code.py" "$AGENT" "$BIN"; fi
