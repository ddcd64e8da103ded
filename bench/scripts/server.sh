# Sourced by the scripts beside it: a release server of their own, from a copy of BIN (so that
# the pages it touches never count as an agent's), with the CLI logged in to it.
# Needs BIN and B (a temporary directory); sets URL and FP. `activation` prints a new
# activation as ID:CODE.
start_server() {
  export DROVER_CONFIG=$B/cli.toml
  cp "$BIN" "$B/drover-server"
  "$B/drover-server" server --data-dir "$B/server" --listen 127.0.0.1:0 > "$B/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 200); do grep -q "CA fingerprint" "$B/server.log" 2>/dev/null && break; sleep 0.1; done
  URL=$(grep -o "listening on https://127.0.0.1:[0-9]*" "$B/server.log" | grep -o "https.*")
  FP=$(grep -o "CA fingerprint: [0-9a-f]*" "$B/server.log" | cut -d" " -f3)
  "$BIN" login --server "$URL" --ca-fingerprint "$FP" --token-file "$B/server/admin.token" > /dev/null
}

activation() {
  "$BIN" activation create --count 1 -o json | python3 -c \
    'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(d["id"]+":"+d["code"])'
}
