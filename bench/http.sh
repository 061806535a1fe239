#!/usr/bin/env bash
# HTTP figures, all in one run on this machine:
#  1. jobs per second and latency of `POST /jobs/match?wait=10s` (skills, 10
#     postings) against a bare axum handler parsing the same JSON;
#  2. overload: jobs completed per second closed-loop (`?wait=`, 32
#     connections) against the same clients flooding submissions without
#     waiting, with 3 postings a job and with 100 (more than the workers can
#     run: the queue fills and the rest is answered 429);
#  3. `GET /tasks/{id}` latency with the host idle, then with every worker
#     busy running guests (1,000-posting jobs submitted without pause).
# Usage: bench/http.sh [seconds per run, default 10]
# MATCHBOX_BIN=path runs another build of matchbox (to compare two builds
# against the same bare handler).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk
fi
cargo build --release -q -p matchbox -p matchbox-bench

tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

job() { python3 bench/job.py "$1"; }  # job N: a match request with N postings
job 10 > "$tmp/small.json"
job 3 > "$tmp/tiny.json"
job 100 > "$tmp/medium.json"
job 1000 > "$tmp/large.json"

wait_up() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" 2>/dev/null && return 0; curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }

${MATCHBOX_BIN:-target/release/matchbox} serve --listen 127.0.0.1:18181 --data-dir "$tmp/data" --cache-dir "$tmp/cache" \
    --task-ttl 30s --max-tasks 1000000 >"$tmp/matchbox.log" 2>&1 &
pids+=($!)
target/release/bare --listen 127.0.0.1:18182 &
pids+=($!)
wait_up http://127.0.0.1:18181/healthz
wait_up http://127.0.0.1:18182/jobs/match

run() {  # run NAME URL BODY CONNECTIONS
    echo "== $1"
    BODY=$3 wrk -t2 -c"$4" -d"${SECS}s" --latency -s bench/post.lua "$2" | grep -E "Requests/sec|Non-2xx|^ +(50|90|99)%|Latency  "
}
echo "# POST /jobs/match, 10 postings, ${SECS}s each, 2 threads"
for c in 8 32; do
    run "bare axum, $c connections" "http://127.0.0.1:18182/jobs/match" "$tmp/small.json" "$c"
    run "matchbox ?wait=10s, $c connections" "http://127.0.0.1:18181/jobs/match?wait=10s" "$tmp/small.json" "$c"
done

completed() {  # jobs this host completed so far, from /metrics
    curl -s http://127.0.0.1:18181/metrics | awk '/^matchbox_jobs_total\{.*outcome="completed"/ {n += $2} END {printf "%d\n", n}'
}
drained() {  # waits for a flood's queue to drain before the next measurement
    for _ in $(seq 100); do
        curl -s http://127.0.0.1:18181/status | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["jobs_in_flight"] != 0)' && return
        sleep 0.2
    done
}
overload() {  # overload POSTINGS BODY
    echo "# overload: $1 postings, 32 connections, ${SECS}s each"
    local before closed flooded
    before=$(completed)
    run "closed loop, ?wait=10s" "http://127.0.0.1:18181/jobs/match?wait=10s" "$2" 32
    closed=$(( ($(completed) - before) / SECS ))
    drained
    before=$(completed)
    run "flood, no wait" "http://127.0.0.1:18181/jobs/match" "$2" 32
    flooded=$(( ($(completed) - before) / SECS ))
    python3 -c "print(f'jobs completed/s, $1 postings: closed loop $closed, under the flood $flooded, ratio {$flooded / $closed:.2f}')"
    drained
}
overload 3 "$tmp/tiny.json"
overload 100 "$tmp/medium.json"

id=$(curl -s -X POST -H 'content-type: application/json' --data-binary @"$tmp/small.json" \
    'http://127.0.0.1:18181/jobs/match?wait=10s' | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_id"])')
echo "# GET /tasks/$id, ${SECS}s each"
echo "== idle host"
wrk -t1 -c8 -d"${SECS}s" --latency "http://127.0.0.1:18181/tasks/$id" | grep -E "Requests/sec|^ +(50|90|99)%"
echo "== every worker running 1,000-posting jobs"
# Four clients each waiting for their job keep both workers busy (two jobs
# running, two queued) without flooding the front end with refused bodies.
BODY="$tmp/large.json" wrk -t1 -c4 -d"$((SECS + 4))s" -s bench/post.lua "http://127.0.0.1:18181/jobs/match?wait=30s" >"$tmp/load.txt" &
load=$!
sleep 2
curl -s http://127.0.0.1:18181/readyz; echo
wrk -t1 -c8 -d"${SECS}s" --latency "http://127.0.0.1:18181/tasks/$id" | grep -E "Requests/sec|^ +(50|90|99)%"
curl -s http://127.0.0.1:18181/readyz; echo
wait "$load" || true
grep -E "Requests/sec" "$tmp/load.txt" | sed 's/^/guest load: 1,000-posting jobs /'
echo "== flood: 16 clients posting 1,000-posting jobs without waiting (most refused with 429)"
BODY="$tmp/large.json" wrk -t1 -c16 -d"$((SECS + 4))s" -s bench/post.lua "http://127.0.0.1:18181/jobs/match" >"$tmp/flood.txt" &
flood=$!
sleep 2
wrk -t1 -c8 -d"${SECS}s" --latency "http://127.0.0.1:18181/tasks/$id" | grep -E "Requests/sec|^ +(50|90|99)%"
wait "$flood" || true
grep -E "Requests/sec|Non-2xx" "$tmp/flood.txt" | sed 's/^/flood: /'
