#!/usr/bin/env python3
"""How long a job's end takes to reach its webhook receiver.

Starts `matchbox serve` (the release binary), or two hosts sharing a Redis
with `--redis URL --hosts 2`, and a receiver on a loopback port that checks
every signature (Standard Webhooks: HMAC-SHA256 of id, timestamp and body).
Submits N `skills` jobs with a callback, a few at a time, and measures, for
each, the time from the task's end (its `updated_at`, stamped by the host
that wrote the end, on this machine's clock) to the receiver reading the
request. Prints p50, p99 and the worst.

    cargo build --release -p matchbox
    python3 bench/webhook-latency.py --jobs 1000
    python3 bench/webhook-latency.py --jobs 1000 --redis redis://127.0.0.1:6379 --hosts 2

Needs only Python's standard library.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def verify(secret, headers, body):
    """The receiver's check, as the README shows it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s.removeprefix("v1,")) for s in headers["webhook-signature"].split())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--redis", help="a Redis URL: hosts share it (a fresh key prefix)")
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/matchbox"))
    args = parser.parse_args()

    received = {}
    bad = []
    done = threading.Event()

    class Receiver(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            at = time.time()
            body = self.rfile.read(int(self.headers["content-length"]))
            if not verify(SECRET, self.headers, body):
                bad.append(self.headers["webhook-id"])
            task = json.loads(body)
            ended = datetime.datetime.fromisoformat(task["updated_at"]).timestamp()
            received[self.headers["webhook-id"]] = at - ended
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()
            if len(received) >= args.jobs:
                done.set()

        def log_message(self, *_):
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"

    dirs = tempfile.mkdtemp()
    prefix = f"bench-webhooks-{os.getpid()}"
    hosts, bases = [], []
    for i in range(args.hosts):
        port = free_port()
        command = [args.binary, "serve", "--listen", f"127.0.0.1:{port}", "--webhook-secret", SECRET,
                   "--callback-allow", "127.0.0.1", "--data-dir", f"{dirs}/data{i}", "--cache-dir", f"{dirs}/cache"]
        if args.redis:
            command += ["--store", args.redis, "--redis-prefix", prefix]
        hosts.append(subprocess.Popen(command, stderr=subprocess.DEVNULL))
        bases.append(f"http://127.0.0.1:{port}")
    try:
        for base in bases:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"{base}/healthz").read()
                    break
                except OSError:
                    time.sleep(0.05)

        def submit(i):
            job = {
                "candidate": {"id": f"c{i}", "skills": [{"name": "rust"}, {"name": "sql"}]},
                "postings": [{"id": f"p{j}", "title": "Engineer", "required_skills": ["rust"]} for j in range(10)],
                "callback": {"url": hook},
            }
            request = urllib.request.Request(f"{bases[i % len(bases)]}/jobs/match", data=json.dumps(job).encode(),
                                             headers={"content-type": "application/json"})
            urllib.request.urlopen(request).read()

        started = time.time()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(submit, range(args.jobs)))
        if not done.wait(120):
            sys.exit(f"only {len(received)} of {args.jobs} ends arrived")
        elapsed = time.time() - started
    finally:
        for host in hosts:
            host.terminate()
            host.wait()
    if bad:
        sys.exit(f"{len(bad)} deliveries with a bad signature")
    latencies = sorted(received.values())
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3
    where = f"{args.hosts} host(s) on {args.redis}" if args.redis else "one host, memory store"
    print(f"{len(latencies)} ends delivered in {elapsed:.1f} s ({where}), all signatures checked")
    print(f"task end -> receipt: p50 {pick(0.5):.2f} ms, p99 {pick(0.99):.2f} ms, max {latencies[-1] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
