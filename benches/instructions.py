#!/usr/bin/env python3
"""Server instructions per request, counted by valgrind's callgrind: a figure that does not
depend on what else the machine is doing (unlike time), so a change to the request path can be
compared before/after on a busy box.

    python3 benches/instructions.py [--bin target/profiling/shardbox] [--requests 20000]
        [--only get,put,cache,ceiling] [--annotate]

For each workload it starts the binary under callgrind, preloads, zeroes the counters, sends
the requests (16 keep-alive connections, one request in flight on each, like the suite's load
but smaller), dumps the counters and prints instructions per request. `--annotate` prints the
20 costliest functions (inclusive) of each run. The ceiling is the suite's bare hyper server
(`--ceiling BIN`, default: the newest target/release/deps/suite-*).

Build first: `cargo build --profile profiling --bin shardbox` and `cargo bench --bench suite
--no-run`. Needs valgrind (Debian's package).
"""

import argparse
import glob
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

CONNS = 16


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_up(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"nothing listens on {port}")


def read_response(sock, buf):
    """Reads one response (Content-Length framed) off sock; returns (status, rest of buf)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length: *(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return int(head[9:12]), rest[n:]


def drive(port, requests, make):
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNS)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bufs = [b""] * CONNS
    sent = 0
    bad = 0
    while sent < requests:
        batch = min(CONNS, requests - sent)
        for i in range(batch):
            socks[i].sendall(make(sent + i))
        for i in range(batch):
            status, bufs[i] = read_response(socks[i], bufs[i])
            if status >= 400:
                bad += 1
        sent += batch
    for s in socks:
        s.close()
    return bad


def get_req(i):
    return f"GET /v1/kv/bench/k{i % 1000} HTTP/1.1\r\nhost: b\r\n\r\n".encode()


def put_req(i):
    body = b"v" * 100
    return (
        f"PUT /v1/kv/bench/k{i % 1000} HTTP/1.1\r\nhost: b\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def cache_put_req(i):
    body = b"v" * 100
    return (
        f"PUT /v1/cache/bench/k{i % 1000}?ttl=1h HTTP/1.1\r\nhost: b\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def cache_get_req(i):
    return f"GET /v1/cache/bench/k{i % 1000} HTTP/1.1\r\nhost: b\r\n\r\n".encode()


def ceiling_req(i):
    return b"GET / HTTP/1.1\r\nhost: b\r\n\r\n"


def run(cmd, port, preload, make, requests, annotate, label, preload_with=put_req):
    out = tempfile.mktemp(prefix="cg-", suffix=".out")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_up(port)
        if preload:
            drive(port, 1000, preload_with)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        bad = drive(port, requests, make)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait()
    dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
    dump = [d for d in dumps if not d.endswith(".1")] or dumps
    total = 0
    for d in dumps:
        with open(d) as f:
            text = f.read()
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if m and d == dumps[-1]:
            total = int(m.group(1))
    per = total / requests
    print(f"{label:10} {per:10,.0f} instructions/request  ({requests} requests, {bad} non-2xx)")
    if annotate:
        ann = subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", dumps[-1]], capture_output=True, text=True
        ).stdout
        lines = [l for l in ann.splitlines() if re.match(r"^\s*[\d,]+ \(", l)]
        for l in lines[:40]:
            print("   ", l[:160])
    if os.environ.get("CG_KEEP"):
        # Keep the last dump for a closer look (callgrind_annotate --tree=caller FILE).
        print(f"    kept: {dumps[-1]}")
        dumps = dumps[:-1]
    for d in dumps + [out]:
        if os.path.exists(d):
            os.remove(d)
    return per


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/profiling/shardbox")
    p.add_argument("--ceiling", default=None)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--only", default="get,put,ceiling")
    p.add_argument("--annotate", action="store_true")
    a = p.parse_args()
    only = a.only.split(",")
    for w in only:
        port = free_port()
        if w == "ceiling":
            ceiling = a.ceiling or max(
                (f for f in glob.glob("target/release/deps/suite-*") if os.access(f, os.X_OK) and "." not in os.path.basename(f)),
                key=os.path.getmtime,
            )
            run([ceiling, "--ceiling-server", str(port)], port, False, ceiling_req, a.requests, a.annotate, "ceiling")
            continue
        with tempfile.TemporaryDirectory() as d:
            cmd = [a.bin, "serve", "--data", d, "--listen", f"127.0.0.1:{port}"]
            if w == "get":
                run(cmd, port, True, get_req, a.requests, a.annotate, "GET")
            elif w == "put":
                run(cmd, port, True, put_req, a.requests, a.annotate, "PUT")
            elif w == "cache":
                run(cmd, port, True, cache_get_req, a.requests, a.annotate, "cache GET", cache_put_req)
            else:
                sys.exit(f"unknown workload {w}")


if __name__ == "__main__":
    main()
