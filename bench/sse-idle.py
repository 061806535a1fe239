#!/usr/bin/env python3
"""What an open, idle event stream costs a matchbox host.

Starts `matchbox serve` (the release binary) with one worker, keeps that
worker busy with a long `misbehave` job, submits one more job (which stays
pending), then opens N streams of `GET /tasks/{id}/events` on it and reads
the host's resident memory before and after, once the streams have settled.

    cargo build --release -p matchbox
    python3 bench/sse-idle.py --streams 1000

Needs only Python's standard library.
"""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def call(url, method="GET", body=None, content_type="application/json"):
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": content_type})
    with urllib.request.urlopen(request) as reply:
        return json.loads(reply.read() or b"null")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/matchbox"))
    parser.add_argument("--misbehave", default=os.path.join(ROOT, "target/guests/wasm32-wasip2/guest/matchbox_misbehave.wasm"))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.streams + 256), hard))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    dirs = tempfile.mkdtemp()
    host = subprocess.Popen(
        [args.binary, "serve", "--listen", f"127.0.0.1:{port}", "--workers", "1", "--job-timeout", "1h",
         "--max-connections", str(args.streams + 64), "--data-dir", f"{dirs}/data", "--cache-dir", f"{dirs}/cache"],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                call(f"{base}/healthz")
                break
            except Exception:
                time.sleep(0.05)
        with open(args.misbehave, "rb") as f:
            call(f"{base}/matchers/misbehave", "PUT", f.read(), "application/wasm")
        job = lambda mode: {"matcher": "misbehave", "candidate": {"id": mode}, "postings": [{"id": "p1"}]}
        call(f"{base}/jobs/match", "POST", job("busy-600000"))
        watched = call(f"{base}/jobs/match", "POST", job("honest"))["task_id"]
        time.sleep(2)
        before = rss(host.pid)
        streams = []
        request = f"GET /tasks/{watched}/events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n".encode()
        for _ in range(args.streams):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request)
            streams.append(s)
        opened = 0
        for s in streams:
            s.settimeout(10)
            head = s.recv(4096)
            if b" 200 " in head.split(b"\r\n", 1)[0]:
                opened += 1
        time.sleep(5)
        during = rss(host.pid)
        print(f"streams open: {opened} of {args.streams}")
        print(f"resident memory: {before / 2**20:.1f} MiB before, {during / 2**20:.1f} MiB with the streams open")
        print(f"per idle stream: {(during - before) / max(opened, 1) / 1024:.1f} KiB")
        for s in streams:
            s.close()
    finally:
        host.kill()
        host.wait()


if __name__ == "__main__":
    sys.exit(main())
