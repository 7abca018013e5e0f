#!/usr/bin/env python3
"""The README's first command, after the build: five barrel-p2p-node
processes on loopback, driven only through their HTTP API.

It forms the cluster, writes through one node and times the value's arrival
on all five, stops a node, writes and removes while it is down, restarts it
from its data directory and shows it catching up (and the removed key
staying removed), prints the cluster's status, then stops everything.
Exits non-zero if any step does not converge; leaves no process behind.

    tools/demo_processes.py --node-binary build/tools/barrel-p2p-node [--quick]
"""

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request


class StepFailed(Exception):
    pass


def say(text=""):
    print(text, flush=True)


_ports_given = set()


def free_port():
    """A port no other process listens on, chosen below the kernel's
    ephemeral range: a port from inside it (what bind to port 0 returns) can
    be taken by some process's outgoing connection between this check and the
    daemon's bind, and the daemon would then fail to start."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, max(low, 10001))
        if port in _ports_given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise StepFailed("no free port below %d" % low)


def clean_up(nodes, workdir, keep):
    """The end of every process test: no daemon left behind, whatever
    happened, and the work directory removed unless --keep."""
    for n in nodes:
        n.kill()
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say("logs and data kept in %s" % workdir)


def script_parser(doc):
    """The flags every process test takes: --node-binary, --anti-entropy-ms, --keep."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node-binary", default="build/tools/barrel-p2p-node")
    p.add_argument("--anti-entropy-ms", type=int, default=2000)
    p.add_argument("--keep", action="store_true", help="keep logs and data directories")
    return p


def write_secret(workdir, name="cluster.secret"):
    """A fresh random cluster secret in a file only its owner may read."""
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    os.chmod(path, 0o600)
    return path


class Node:
    def __init__(self, name, binary, workdir, secret_file, contact, args, extra_flags=(), prefix=(),
                 cluster_host="127.0.0.1", http_host="127.0.0.1"):
        """extra_flags: more daemon flags; prefix: a command that runs the
        daemon (e.g. faketime with its options, or ip netns exec); the
        hosts: where it listens for peers and for HTTP."""
        self.name = name
        self.cluster_host = cluster_host
        self.http_host = http_host
        self.extra_flags = list(extra_flags)
        self.prefix = list(prefix)
        self.binary = binary
        self.cluster_port = free_port()
        self.http_port = free_port()
        self.data_dir = os.path.join(workdir, name)
        self.log_path = os.path.join(workdir, name + ".log")
        self.secret_file = secret_file
        self.contact = contact
        self.args = args
        self.proc = None

    @property
    def cluster_address(self):
        return "%s:%d" % (self.cluster_host, self.cluster_port)

    def start(self):
        cmd = [self.binary, "--id", self.name,
               "--listen", self.cluster_address,
               "--http", "%s:%d" % (self.http_host, self.http_port),
               "--secret-file", self.secret_file,
               "--data-dir", self.data_dir,
               "--map", "kv,persist",
               "--heartbeat-ms", "250",
               "--anti-entropy-ms", str(self.args.anti_entropy_ms)]
        if self.contact:
            cmd += ["--contact", self.contact.cluster_address]
        cmd = self.prefix + cmd + self.extra_flags
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10):
        """SIGTERM: the node leaves the cluster and flushes its maps."""
        if not self.running():
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise StepFailed("%s did not stop within %d s of SIGTERM" % (self.name, timeout))

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()

    def log_line_with(self, needle):
        return next(l for l in self.log_text().splitlines() if needle in l)

    def kill(self):
        if self.running():
            self.proc.kill()
            self.proc.wait()

    # ---- HTTP -------------------------------------------------------------
    def request(self, method, path, body=None):
        url = "http://%s:%d%s" % (self.http_host, self.http_port, path)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as res:
                text = res.read().decode()
                return res.status, text
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def json(self, method, path, body=None):
        status, text = self.request(method, path, body)
        return status, json.loads(text) if text.startswith(("{", "[")) else text

    def get(self, key):
        status, body = self.json("GET", "/maps/kv/" + urllib.parse.quote(key, safe=""))
        return body["value"] if status == 200 else None

    def put(self, key, value):
        status, body = self.json("PUT", "/maps/kv/" + urllib.parse.quote(key, safe=""), value)
        if status != 200:
            raise StepFailed("PUT %s on %s: %s %s" % (key, self.name, status, body))

    def delete(self, key):
        status, body = self.json("DELETE", "/maps/kv/" + urllib.parse.quote(key, safe=""))
        if status != 200:
            raise StepFailed("DELETE %s on %s: %s %s" % (key, self.name, status, body))

    def entries(self):
        # A listing comes in pages (at most max_list_limit entries each):
        # follow next_after to the end.
        out, target = {}, "/maps/kv?limit=10000"
        while True:
            status, body = self.json("GET", target)
            if status != 200:
                return None
            out.update(body["entries"])
            if not body.get("truncated"):
                return out
            target = "/maps/kv?limit=10000&after=" + urllib.parse.quote(body["next_after"], safe="")

    def answers(self):
        """Whether it serves /status yet; a daemon that exited fails the
        step at once, with its log's last lines, instead of at the timeout."""
        if self.proc is not None and self.proc.poll() is not None:
            raise StepFailed("%s exited with status %s before answering" % (self.name, self.proc.returncode))
        return self.status() is not None

    def status(self):
        try:
            status, body = self.json("GET", "/status")
            return body if status == 200 else None
        except (urllib.error.URLError, ConnectionError, OSError):
            return None


def start_impostor(nodes, workdir, tag, binary, secret_file, contact, args):
    """A daemon under node2's id, with its own ports and directory."""
    folder = os.path.join(workdir, tag)
    os.mkdir(folder)
    impostor = Node(nodes[1].name, binary, folder, secret_file, contact, args)
    impostor.start()
    return impostor


def print_log_tails(nodes, lines=15):
    """The last lines of each node's log: what a failed step shows."""
    for n in nodes:
        say("---- last lines of %s" % n.log_path)
        try:
            with open(n.log_path) as f:
                for line in f.readlines()[-lines:]:
                    say("  " + line.rstrip())
        except OSError:
            pass


def failed(title, error, nodes):
    """Reports a failed step with each node's last log lines; the exit code."""
    say("\n%s FAILED: %s" % (title, error))
    print_log_tails(nodes)
    return 1


def stop_all(nodes):
    """SIGTERM to each node; a non-zero exit fails the step."""
    for n in nodes:
        code = n.stop()
        if code != 0:
            raise StepFailed("%s exited with %s" % (n.name, code))


def wait_until(what, condition, timeout):
    """Polls `condition` until it holds; returns the seconds it took."""
    start = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, OSError, ValueError, KeyError):
            pass
        if time.monotonic() - start > timeout:
            raise StepFailed("%s: not reached within %.0f s" % (what, timeout))
        time.sleep(0.002)


def overlay_ok(nodes):
    """Active views are non-empty, symmetric and connect every running node."""
    views = {}
    for n in nodes:
        s = n.status()
        if s is None:
            return False
        views[n.name] = {p["id"] for p in s["active_view"]}
    names = set(views)
    for a, peers in views.items():
        if not peers or not peers <= names:
            return False
        if any(a not in views[b] for b in peers):
            return False
    seen, todo = set(), [next(iter(names))]
    while todo:
        a = todo.pop()
        if a not in seen:
            seen.add(a)
            todo.extend(views[a])
    return seen == names


def all_equal(nodes, expected):
    return all(n.entries() == expected for n in nodes)


def print_status_table(nodes):
    say("    %-7s %-17s %-7s %-28s %-8s %-5s %s" % ("node", "cluster address", "http", "active view",
                                                    "passive", "keys", "uptime"))
    for n in nodes:
        s = n.status() if n.running() else None
        if s is None:
            say("    %-7s %-17s %-7s (stopped)" % (n.name, n.cluster_address, n.http_port))
            continue
        active = ",".join(sorted(p["id"] for p in s["active_view"]))
        keys = s["maps"][0]["size"] if s["maps"] else 0
        say("    %-7s %-17s %-7d %-28s %-8d %-5d %.1f s" % (s["node"], s["address"], n.http_port, active,
                                                           len(s["passive_view"]), keys, s["uptime_seconds"]))


def run(args):
    binary = os.path.abspath(args.node_binary)
    if not os.access(binary, os.X_OK):
        raise StepFailed("no node binary at %s (build first: tools/setup)" % binary)
    workdir = tempfile.mkdtemp(prefix="barrel-p2p-demo-")
    secret_file = write_secret(workdir)
    keys_per_batch = 20 if args.quick else 200
    nodes = []
    try:
        say("== 1. Start %d node processes on loopback" % args.nodes)
        say("   Each is `barrel-p2p-node` with its own cluster port, HTTP port and data directory;")
        say("   they share a cluster secret (a file), and all but the first join through node1.")
        for i in range(args.nodes):
            n = Node("node%d" % (i + 1), binary, workdir, secret_file, nodes[0] if nodes else None, args)
            n.start()
            nodes.append(n)
        t = wait_until("every node answers /status", lambda: all(n.answers() for n in nodes), 30)
        say("   all %d answer on HTTP after %.2f s" % (len(nodes), t))

        say("\n== 2. Form the cluster")
        t = wait_until("a symmetric, connected overlay", lambda: overlay_ok(nodes), 30)
        say("   HyParView active views are symmetric and connect all %d nodes (%.2f s)" % (len(nodes), t))
        print_status_table(nodes)

        say("\n   A sixth daemon started by mistake under the id node2, its contact node1:")
        impostor = start_impostor(nodes, workdir, "impostor1", binary, secret_file, nodes[0], args)
        wait_until("node1 refuses the impostor",
                   lambda: "refused this node: another node with the id 'node2'" in impostor.log_text(), 15)
        impostor.kill()
        if not overlay_ok(nodes):
            raise StepFailed("the impostor disturbed the overlay")
        say("   node1 already has node2, so it refuses the impostor, which logs:")
        say("   " + impostor.log_line_with("refused this node").split(" ", 1)[1])
        say("   and under the id node2 with node2 itself as its contact, it refuses to start:")
        impostor = start_impostor(nodes, workdir, "impostor2", binary, secret_file, nodes[1], args)
        try:
            code = impostor.proc.wait(20)
        except subprocess.TimeoutExpired:
            impostor.kill()
            raise StepFailed("a daemon whose contact has its id did not exit")
        if code != 1 or "another node uses it" not in impostor.log_text():
            raise StepFailed("a daemon whose contact has its id exited with %s, saying:\n%s"
                             % (code, impostor.log_text()))
        say("   " + impostor.log_line_with("another node uses it").split(" ", 1)[1])

        say("\n== 3. Write through node1's HTTP API, read on all five")
        start = time.monotonic()
        nodes[0].put("greeting", {"text": "hello from node1"})
        wait_until("greeting on every node",
                   lambda: all(n.get("greeting") == {"text": "hello from node1"} for n in nodes), 10)
        say("   PUT /maps/kv/greeting on node1 -> readable on all %d nodes %.1f ms later"
            " (HTTP polling included)" % (len(nodes), (time.monotonic() - start) * 1000))
        expected = {"greeting": {"text": "hello from node1"}}
        start = time.monotonic()
        for i in range(keys_per_batch):
            key = "user:%03d" % i
            nodes[1].put(key, {"n": i})
            expected[key] = {"n": i}
        put_time = time.monotonic() - start
        t = wait_until("%d keys on every node" % keys_per_batch, lambda: all_equal(nodes, expected), 30)
        say("   %d PUTs on node2 (%.0f ms of HTTP round trips), every node equal %.1f ms after the last"
            % (keys_per_batch, put_time * 1000, t * 1000))

        say("\n== 4. Stop node%d (SIGTERM: it leaves politely and flushes its map)" % len(nodes))
        stopped = nodes[-1]
        code = stopped.stop()
        if code != 0:
            raise StepFailed("%s exited with %s" % (stopped.name, code))
        say("   %s exited with status 0" % stopped.name)
        live = nodes[:-1]
        t = wait_until("the overlay heals without it", lambda: overlay_ok(live), 30)
        say("   the other %d still form a connected overlay (%.2f s)" % (len(live), t))

        say("\n== 5. Write and remove while it is down")
        for i in range(keys_per_batch):
            key = "order:%03d" % i
            live[2 % len(live)].put(key, {"total": i * 10})
            expected[key] = {"total": i * 10}
        nodes[0].delete("greeting")
        del expected["greeting"]
        say("   %d PUTs on node3, and DELETE /maps/kv/greeting on node1" % keys_per_batch)
        t = wait_until("the live nodes agree", lambda: all_equal(live, expected), 30)
        say("   the %d live nodes agree (%.1f ms)" % (len(live), t * 1000))

        say("\n== 6. Restart %s from its data directory" % stopped.name)
        say("   Its disk still holds 'greeting' and none of the new keys.")
        stopped.start()
        start = time.monotonic()
        t = wait_until("the restarted node catches up", lambda: stopped.entries() == expected, 30)
        say("   %s holds all %d keys %.2f s after restart (full sync on connect)" % (stopped.name, len(expected), t))
        say("   'greeting' on %s: %s (the tombstone beat its stale copy on disk)"
            % (stopped.name, "absent" if stopped.get("greeting") is None else "PRESENT"))
        watch = 2 * args.anti_entropy_ms / 1000.0
        deadline = time.monotonic() + watch
        while time.monotonic() < deadline:
            for n in nodes:
                if n.get("greeting") is not None:
                    raise StepFailed("the removed key came back on %s" % n.name)
            time.sleep(0.05)
        say("   watched every node for %.0f s (two anti-entropy rounds): 'greeting' stayed removed" % watch)
        if not all_equal(nodes, expected):
            raise StepFailed("the nodes differ after the restart")

        say("\n== 7. The cluster's status")
        wait_until("a symmetric, connected overlay", lambda: overlay_ok(nodes), 30)
        print_status_table(nodes)
        status, metrics = nodes[0].request("GET", "/metrics")
        wanted = ("barrel_p2p_transport_bytes_sent_total", "barrel_p2p_broadcast_delivered_total",
                  "barrel_p2p_replica_syncs_sent_total", "barrel_p2p_map_puts_total",
                  "barrel_p2p_transport_send_queue_drops_total")
        say("   a few of node1's metrics (GET /metrics, Prometheus text):")
        for line in metrics.splitlines():
            if line.startswith(wanted):
                say("     " + line)

        say("\n== 8. Stop everything")
        stop_all(nodes)
        say("   all %d nodes left the cluster and exited with status 0" % len(nodes))
        say("\ndemo: every step converged")
        return 0
    except StepFailed as e:
        return failed("demo", e, nodes)
    finally:
        clean_up(nodes, workdir, args.keep)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node-binary", default="build/tools/barrel-p2p-node")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="fewer keys (the test suite's form)")
    p.add_argument("--anti-entropy-ms", type=int, default=2000)
    p.add_argument("--keep", action="store_true", help="keep logs and data directories")
    args = p.parse_args()
    if args.nodes < 3:
        p.error("--nodes must be at least 3")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
