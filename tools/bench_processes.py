#!/usr/bin/env python3
"""Convergence latency with one node per process (the multi-process mode of
barrel-p2p-bench's latency measurement).

Starts N barrel-p2p-node daemons on loopback, subscribes to every node's
change events over a WebSocket (/maps/kv/events), PUTs keys through the
nodes in turn at a low rate, and measures, for each put, the time from the
PUT's HTTP response to the change event arriving from the slowest other
node. Prints p50/p90/p99/max per cluster size and writes JSON.

    tools/bench_processes.py --node-binary build/tools/barrel-p2p-node \\
        [--nodes 3,5,10] [--puts 500] [--rate 100] [--json bench-processes.json]

The figures include the HTTP round trip's tail and this Python client's
scheduling; the daemons themselves run one per process, each on its own
event loop, competing for this machine's cores.
"""

import argparse
import base64
import http.client
import json
import os
import secrets
import socket
import struct
import sys
import threading
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_processes  # noqa: E402  (the daemon launcher of tools/demo)


class EventReader(threading.Thread):
    """A minimal RFC 6455 client: one text message per change event."""

    def __init__(self, port, arrivals):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET /maps/kv/events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           % key).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("no WebSocket handshake answer")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError("WebSocket refused: " + head.split(b"\r\n")[0].decode())
        self.buffer = head.split(b"\r\n\r\n", 1)[1]
        self.sock.settimeout(None)
        self.arrivals = arrivals

    def read_exact(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def send_frame(self, opcode, payload):
        mask = os.urandom(4)  # client frames are masked
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def run(self):
        try:
            while True:
                b0, b1 = self.read_exact(2)
                length = b1 & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self.read_exact(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self.read_exact(8))[0]
                payload = self.read_exact(length)
                now = time.perf_counter()
                opcode = b0 & 0x0F
                if opcode == 1:
                    ev = json.loads(payload)
                    if ev.get("event") == "put":
                        self.arrivals.setdefault(ev["key"], now)
                elif opcode == 9:
                    self.send_frame(0xA, payload)  # pong
                elif opcode == 8:
                    return
        except (EOFError, OSError):
            return


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure(binary, n, puts, rate, workdir):
    secret = os.path.join(workdir, "secret")
    with open(secret, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    args = types.SimpleNamespace(anti_entropy_ms=30000)
    nodes = []
    readers = []
    try:
        for i in range(n):
            node = demo_processes.Node("p%d" % i, binary, workdir, secret, nodes[0] if nodes else None, args)
            node.start()
            nodes.append(node)
        demo_processes.wait_until("every node answers", lambda: all(x.answers() for x in nodes), 30)
        demo_processes.wait_until("a connected overlay", lambda: demo_processes.overlay_ok(nodes), 30)
        arrivals = [dict() for _ in nodes]
        for node, arr in zip(nodes, arrivals):
            r = EventReader(node.http_port, arr)
            r.start()
            readers.append(r)
        conns = [http.client.HTTPConnection("127.0.0.1", x.http_port, timeout=10) for x in nodes]
        returned = []
        gap = 1.0 / rate
        for k in range(puts):
            origin = k % n
            key = "b%d" % k
            conns[origin].request("PUT", "/maps/kv/" + key, body=str(k))
            res = conns[origin].getresponse()
            res.read()
            returned.append((origin, key, time.perf_counter()))
            if res.status != 200:
                raise demo_processes.StepFailed("PUT %s: %d" % (key, res.status))
            time.sleep(gap)
        time.sleep(2)
        latencies, missing = [], 0
        for origin, key, t in returned:
            worst = 0.0
            for i, arr in enumerate(arrivals):
                if i == origin:
                    continue
                if key not in arr:
                    missing += 1
                    continue
                worst = max(worst, arr[key] - t)
            latencies.append(worst * 1e6)
        latencies.sort()
        return {"bench": "latency_processes", "nodes": n, "puts": puts, "rate": rate, "missing": missing,
                "p50_us": percentile(latencies, 0.50), "p90_us": percentile(latencies, 0.90),
                "p99_us": percentile(latencies, 0.99), "max_us": latencies[-1] if latencies else 0.0,
                "samples_us": latencies}
    finally:
        for node in nodes:
            node.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node-binary", default="build/tools/barrel-p2p-node")
    p.add_argument("--nodes", default="3,5,10")
    p.add_argument("--puts", type=int, default=500)
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--json", default="bench-processes.json")
    a = p.parse_args()
    import tempfile
    import shutil
    results, ok = [], True
    print("%-18s %6s %6s %9s %9s %9s %9s" % ("latency (procs)", "nodes", "puts", "p50 us", "p90 us", "p99 us",
                                             "max us"))
    for n in [int(x) for x in a.nodes.split(",")]:
        workdir = tempfile.mkdtemp(prefix="barrel-p2p-bench-")
        try:
            r = measure(os.path.abspath(a.node_binary), n, a.puts, a.rate, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print("%-18s %6d %6d %9.0f %9.0f %9.0f %9.0f%s" % ("", n, a.puts, r["p50_us"], r["p90_us"], r["p99_us"],
                                                            r["max_us"], "  (some missing!)" if r["missing"] else ""))
        ok &= r["missing"] == 0
        results.append(r)
    with open(a.json, "w") as f:
        json.dump(results, f, indent=1)
    print("wrote", a.json)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
