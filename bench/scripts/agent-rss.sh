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
. "$here/server.sh"
start_server
ACT=$(activation)
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
