#!/usr/bin/env python3
"""Five daemons on five hosts, a partition between them, and the heal.

Each host is a Linux network namespace. Their cluster addresses
(10.77.0.1-5) sit on one bridge inside a sixth namespace, the switch; each
host also has a point-to-point management link to this namespace for its
HTTP API (10.78.N.2), which no partition touches. A partition moves some
hosts' switch ports to a second bridge: packets between the two groups
stop, as on a real network where a switch fails (no connection is reset;
each side notices by heartbeat timeouts).

Two partitions in one run:

  1. {h1, h2} | {h3, h4, h5}, 6 s after the cluster formed, before any
     shuffle has run: every node must keep an active peer on its own side
     for the whole partition (a node that joined early must not be left
     alone because its neighbours were all across the split);
  2. the same split later, with writes on both sides: a key written on
     both (the newest write wins everywhere), a key removed on one side
     and left alone on the other (the remove wins), and keys written on
     each side; then the heal, and every node's map checked over HTTP.

Needs root (ip netns); exits 77, which meson counts as skipped, where
namespaces cannot be made. Leaves no namespace or process behind.

  netns_processes.py --node-binary build/tools/barrel-p2p-node
"""
import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_processes as dp  # noqa: E402  (the daemon launcher of tools/demo)

HOSTS = 5


def ip(*args):
    subprocess.run(["ip"] + list(args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Network:
    """The switch, the hosts and their links; removed by close()."""

    def __init__(self):
        self.tag = secrets.token_hex(2)  # names stay unique if runs overlap
        self.switch = "bp2p-%s-sw" % self.tag
        self.hosts = ["bp2p-%s-h%d" % (self.tag, i + 1) for i in range(HOSTS)]
        self.made = []
        self.links = []  # ours in this namespace

    def port(self, i):  # the switch's side of host i's data link (<= 15 characters)
        return "bp%sd%d" % (self.tag, i + 1)

    def data_address(self, i):
        return "10.77.0.%d" % (i + 1)

    def http_address(self, i):
        return "10.78.%d.2" % (i + 1)

    def build(self):
        ip("netns", "add", self.switch)
        self.made.append(self.switch)
        for bridge in ("br0", "br1"):
            ip("-n", self.switch, "link", "add", bridge, "type", "bridge")
            ip("-n", self.switch, "link", "set", bridge, "up")
        for i, host in enumerate(self.hosts):
            ip("netns", "add", host)
            self.made.append(host)
            ip("-n", host, "link", "set", "lo", "up")
            # Data: host eth0 <-> a port of br0 in the switch.
            ip("link", "add", self.port(i), "type", "veth", "peer", "name", "eth0", "netns", host)
            ip("link", "set", self.port(i), "netns", self.switch)
            ip("-n", self.switch, "link", "set", self.port(i), "master", "br0")
            ip("-n", self.switch, "link", "set", self.port(i), "up")
            ip("-n", host, "addr", "add", self.data_address(i) + "/24", "dev", "eth0")
            ip("-n", host, "link", "set", "eth0", "up")
            # Management: host mgmt <-> this namespace, for HTTP only.
            root_side = "bp%sm%d" % (self.tag, i + 1)
            ip("link", "add", root_side, "type", "veth", "peer", "name", "mgmt", "netns", host)
            self.links.append(root_side)
            ip("addr", "add", "10.78.%d.1/30" % (i + 1), "dev", root_side)
            ip("link", "set", root_side, "up")
            ip("-n", host, "addr", "add", self.http_address(i) + "/30", "dev", "mgmt")
            ip("-n", host, "link", "set", "mgmt", "up")

    def split(self, group):
        """Moves the hosts in `group` (indexes) to the second bridge."""
        for i in group:
            ip("-n", self.switch, "link", "set", self.port(i), "master", "br1")

    def heal(self):
        for i in range(HOSTS):
            ip("-n", self.switch, "link", "set", self.port(i), "master", "br0")

    def close(self):
        # The ends in this namespace first: deleting a namespace does not
        # always take them at once (they outlived it in a trial run).
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def namespaces_available():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = "bp2p-probe-%s" % secrets.token_hex(2)
    ok = subprocess.run(["ip", "netns", "add", probe], stderr=subprocess.DEVNULL).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], stderr=subprocess.DEVNULL)
    return ok


def active_ids(node):
    s = node.status()
    return None if s is None else {p["id"] for p in s["active_view"]}


def check_sides(nodes, sides, seconds):
    """For `seconds`, every node has an active peer, and all of them on its side."""
    end = time.monotonic() + seconds
    alone_seen = set()
    while time.monotonic() < end:
        for side in sides:
            names = {nodes[i].name for i in side}
            for i in side:
                ids = active_ids(nodes[i])
                if ids is None:
                    raise dp.StepFailed("%s stopped answering" % nodes[i].name)
                if not ids <= names:
                    continue  # a link across is still being torn down (heartbeat timeout)
                if not ids:
                    alone_seen.add(nodes[i].name)
        time.sleep(0.25)
    return alone_seen


def run(args):
    binary = os.path.abspath(args.node_binary)
    if not os.access(binary, os.X_OK):
        raise dp.StepFailed("no node binary at %s (build first: tools/setup)" % binary)
    net = Network()
    workdir = tempfile.mkdtemp(prefix="barrel-p2p-netns-")
    secret_file = dp.write_secret(workdir)
    nodes = []
    opts = types.SimpleNamespace(anti_entropy_ms=2000)
    try:
        net.build()
        dp.say("== five hosts (network namespaces) on one bridge: 10.77.0.1-5")
        for i in range(HOSTS):
            n = dp.Node("h%d" % (i + 1), binary, workdir, secret_file, nodes[0] if nodes else None, opts,
                        prefix=["ip", "netns", "exec", net.hosts[i]],
                        cluster_host=net.data_address(i), http_host=net.http_address(i))
            n.cluster_port = 7946  # each host has its own ports
            n.http_port = 8080
            n.start()
            nodes.append(n)
        dp.wait_until("every daemon answers /status", lambda: all(n.answers() for n in nodes), 30)
        dp.wait_until("a connected overlay", lambda: dp.overlay_ok(nodes), 30)
        dp.print_status_table(nodes)

        left, right = [0, 1], [2, 3, 4]
        dp.say("\n== 1. split {h1,h2} | {h3,h4,h5} 6 s after forming (no shuffle has run yet)")
        time.sleep(6)
        net.split(left)
        alone = check_sides(nodes, [left, right], 20)
        dp.print_status_table(nodes)
        if alone:
            raise dp.StepFailed("left without an active peer during the split: %s" % ", ".join(sorted(alone)))
        dp.say("   for 20 s every node kept an active peer on its own side")
        net.heal()
        t = dp.wait_until("the overlay joins again", lambda: dp.overlay_ok(nodes), 120)
        dp.say("   healed: one connected overlay %.1f s later" % t)

        dp.say("\n== 2. split again, write on both sides, heal")
        nodes[0].put("removed", {"v": "before"})
        nodes[0].put("conflict", {"v": "before"})
        dp.wait_until("the first keys everywhere", lambda: all(n.get("removed") is not None for n in nodes), 30)
        net.split(left)
        dp.wait_until("each side sees only itself",
                      lambda: all(active_ids(nodes[i]) and active_ids(nodes[i]) <= {nodes[j].name for j in left}
                                  for i in left), 60)
        nodes[0].put("conflict", {"v": "left"})
        time.sleep(0.05)  # a later wall clock: the right side's write is newer
        nodes[3].put("conflict", {"v": "right"})
        nodes[4].delete("removed")
        expected = {"conflict": {"v": "right"}}
        for k in range(20):
            nodes[1].put("left-%02d" % k, {"n": k})
            nodes[2].put("right-%02d" % k, {"n": k})
            expected["left-%02d" % k] = {"n": k}
            expected["right-%02d" % k] = {"n": k}
        if nodes[0].get("right-00") is not None or nodes[4].get("left-00") is not None:
            raise dp.StepFailed("a write crossed the partition")
        dp.say("   wrote 40 keys, the key 'conflict' on both sides, removed 'removed' on the right")
        net.heal()
        t = dp.wait_until("every map equal after the heal", lambda: dp.all_equal(nodes, expected), 120)
        dp.say("   healed: every node's map is the same %.1f s later; the newer write and the remove won" % t)
        dp.stop_all(nodes)
        dp.say("\nnetns: all steps passed")
        return 0
    except dp.StepFailed as e:
        return dp.failed("netns", e, nodes)
    finally:
        for n in nodes:
            n.kill()
        net.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node-binary", default="build/tools/barrel-p2p-node")
    p.add_argument("--keep", action="store_true", help="keep logs and data directories")
    args = p.parse_args()
    if not namespaces_available():
        print("netns: skipped: network namespaces need root and iproute2 (ip netns add failed)")
        sys.exit(77)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
