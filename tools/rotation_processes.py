#!/usr/bin/env python3
"""Cluster key rotation on running daemons, under a stream of writes.

Three barrel-p2p-node processes share a keyring file. While a writer thread
PUTs keys round-robin over HTTP, the file goes through the three steps of a
rotation (add the new key, dial with it, retire the old one); after each
step every daemon gets SIGHUP in turn, then a new daemon joins, so that new
connections are made with the keys of that step. At the end:

  * every acknowledged write is on every node (nothing lost);
  * no node counted a refused handshake (no peer was locked out mid-rotation);
  * a daemon that still has only the retired key cannot join.

Exits non-zero on any failure, and leaves no process behind.

  rotation_processes.py --node-binary build/tools/barrel-p2p-node
"""
import argparse
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_processes as dp  # noqa: E402  (the daemon launcher of tools/demo)


def write_keyring(path, lines):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("# the first secret is dialled with; the others are accepted too\n")
        for line in lines:
            f.write(line + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # a reader never sees half a file


def handshake_failures(node):
    """Sum of barrel_p2p_transport_handshake_failures_total over reasons, and by reason."""
    status, text = node.request("GET", "/metrics")
    if status != 200:
        raise dp.StepFailed("GET /metrics on %s: %s" % (node.name, status))
    by_reason = {}
    for line in text.splitlines():
        if line.startswith("barrel_p2p_transport_handshake_failures_total{"):
            labels, value = line.rsplit(" ", 1)
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            by_reason[reason] = by_reason.get(reason, 0) + int(float(value))
    return sum(by_reason.values()), by_reason


def reloads_logged(node):
    with open(node.log_path) as f:
        return f.read().count("SIGHUP: keyring reloaded")


class Writer(threading.Thread):
    """PUTs w0, w1, ... round-robin over the nodes it is given; keeps the acknowledged ones."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes = nodes
        self.acked = []
        self.errors = []
        self.stop_flag = threading.Event()

    def run(self):
        i = 0
        while not self.stop_flag.is_set():
            node = self.nodes[i % len(self.nodes)]
            key = "w%d" % i
            try:
                node.put(key, i)
                self.acked.append((key, i))
            except Exception as e:  # noqa: BLE001 (counted and reported)
                self.errors.append("%s on %s: %s" % (key, node.name, e))
            i += 1
            time.sleep(0.01)


def run(args):
    binary = os.path.abspath(args.node_binary)
    workdir = tempfile.mkdtemp(prefix="barrel-p2p-rotation-")
    keyring = os.path.join(workdir, "cluster.keyring")
    old_key, new_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    write_keyring(keyring, [old_key])
    opts = types.SimpleNamespace(anti_entropy_ms=2000)
    nodes = []
    writer = None

    def start(name, keyring_path):
        n = dp.Node(name, binary, workdir, keyring_path, nodes[0] if nodes else None, opts)
        n.start()
        nodes.append(n)
        dp.wait_until(name + " serves HTTP", lambda: n.status() is not None, 20)
        return n

    try:
        for name in ("r1", "r2", "r3"):
            start(name, keyring)
        dp.wait_until("overlay of three", lambda: dp.overlay_ok(nodes), 30)
        writer = Writer(list(nodes))
        writer.start()
        steps = [("install the new key everywhere", [old_key, new_key], "r4"),
                 ("dial with the new key everywhere", [new_key, old_key], "r5"),
                 ("retire the old key", [new_key], "r6")]
        for what, lines, joiner in steps:
            write_keyring(keyring, lines)
            for n in list(nodes):
                before = reloads_logged(n)
                n.proc.send_signal(dp.signal.SIGHUP)
                dp.wait_until(n.name + " reloads its keyring", lambda n=n, b=before: reloads_logged(n) > b, 10)
                time.sleep(0.2)  # writes flow between the nodes' steps
            start(joiner, keyring)
            dp.wait_until(joiner + " joins", lambda: dp.overlay_ok(nodes), 30)
            dp.say("step: %s; %s joined; %d writes acknowledged so far" % (what, joiner, len(writer.acked)))
        time.sleep(0.5)
        writer.stop_flag.set()
        writer.join(10)
        if writer.errors:
            raise dp.StepFailed("writes refused during the rotation: %s" % writer.errors[:3])
        expected = dict(writer.acked)

        def everywhere():
            for n in nodes:
                entries = n.entries()
                if entries is None:
                    return False
                have = {k: v for k, v in entries.items() if k in expected}
                if have != expected:
                    return False
            return True

        took = dp.wait_until("every acknowledged write on every node", everywhere, 60)
        dp.say("all %d acknowledged writes on all %d nodes (%.1f s after the last)" % (len(expected), len(nodes), took))
        for n in nodes:
            total, by_reason = handshake_failures(n)
            if total != 0:
                raise dp.StepFailed("%s refused %d handshakes during the rotation: %s" % (n.name, total, by_reason))
        dp.say("no node refused a handshake")

        stale = os.path.join(workdir, "stale.keyring")
        write_keyring(stale, [old_key])
        late = start("late", stale)
        dp.wait_until("the retired key refused",
                      lambda: handshake_failures(nodes[0])[1].get("unknown_key", 0) > 0, 20)
        s = late.status()
        if s and s["active_view"]:
            raise dp.StepFailed("a node with the retired key joined: %s" % s["active_view"])
        dp.say("a daemon with only the retired key is refused (unknown_key)")
        return 0
    except dp.StepFailed as e:
        return dp.failed("rotation", e, nodes)
    finally:
        if writer:
            writer.stop_flag.set()
        for n in nodes:
            n.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node-binary", default="build/tools/barrel-p2p-node")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
