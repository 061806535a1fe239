#!/usr/bin/env bash
# Instructions per `POST /jobs/match?wait=` request (skills, 10 postings),
# counted by valgrind's callgrind: the same for the same binary and input
# whatever else the machine is doing, where timings on a shared machine move
# by a third between runs. Kernel time (system calls, wake-ups, page faults)
# is not counted: compare builds with this, and with `bench/http.sh` for time.
#
# It runs the host under callgrind twice, for 200 and for 1,200 sequential
# requests, and divides the difference by 1,000, so start-up is left out.
# The per-request cost of a function, with its callees:
#   callgrind_annotate --inclusive=yes $OUT/1200.out  (minus the 200 run)
#
# Usage: bench/instructions.sh [matchbox binary, default target/release/matchbox]
# Needs valgrind (Debian's package); OUT=dir keeps the profiles.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/matchbox}
[ "$BIN" != target/release/matchbox ] || cargo build --release -q -p matchbox
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 bench/job.py 10 > "$tmp/job.json"

# `exec`: run in the background, the host itself (not a subshell around it)
# is the process `$!` names, so the signal that stops it reaches it.
serve() { exec "$@" serve --listen 127.0.0.1:18191 --data-dir "$tmp/data" --cache-dir "$tmp/cache"; }
stop() {  # stop PID: stops a host and waits until it has gone, port and all
    kill -INT "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
requests() {  # requests N: N requests, one after another, on one connection
    python3 - "$1" "$tmp/job.json" <<'PY'
import http.client, sys, time
n, body = int(sys.argv[1]), open(sys.argv[2], "rb").read()
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", 18191, timeout=120)
        c.request("GET", "/healthz"); c.getresponse().read(); break
    except OSError:
        time.sleep(0.2)
for _ in range(n):
    c.request("POST", "/jobs/match?wait=30s", body, {"content-type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}
# Once uncounted, so the built-ins are compiled into the cache before
# counting. Under valgrind too: the CPU it emulates has other features than
# the real one, so the engine's compatibility hash differs, and a cache
# filled natively would be compiled again in the first counted run.
serve valgrind --tool=none --smc-check=all-non-file "$BIN" >/dev/null 2>&1 &
native=$!
requests 1
stop $native
count() {  # count N: instructions of a host's whole life serving N requests
    serve valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$OUT/$1.out" "$BIN" \
        >"$tmp/valgrind.log" 2>&1 &
    local pid=$!
    requests "$1"
    stop $pid
    local n
    n=$(grep -oE "Collected : [0-9]+" "$tmp/valgrind.log" | awk '{print $3}')
    [ -n "$n" ] || { echo "callgrind counted nothing; its log:" >&2; cat "$tmp/valgrind.log" >&2; exit 1; }
    echo "$n"
}
small=$(count 200)
large=$(count 1200)
echo "instructions per request: $(( (large - small) / 1000 )) (profiles in $OUT)"
