#!/usr/bin/env python3
"""Soak: a cluster of daemons under a steady load of writes and churn for a
long time, with every daemon's resident memory sampled once a second.

Starts N barrel-p2p-node daemons (persisted map "kv"), then for --minutes:
PUTs and DELETEs at --rate per second through the nodes in turn over a
bounded key space (--keys, so the state itself stops growing once every key
was written), and every --churn-s seconds stops one node other than the
first (SIGTERM) and starts it again on the same data directory. Prints the
RSS of the nodes that never restarted after --warmup-minutes, and whether
it stayed flat: the mean of the last minute within --flat of the mean of
the first minute after warm-up. Writes every sample as JSON.

    tools/soak_processes.py --node-binary build/tools/barrel-p2p-node \\
        [--nodes 5] [--minutes 12] [--rate 200] [--json soak.json]

The warm-up (6 minutes by default) covers the Plumtree cache's TTL: the
cache fills for 5 minutes at a steady write rate, then stays level.

Exit status 0 when the memory stayed flat and the nodes converged at the
end, 1 otherwise.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_processes  # noqa: E402  (the daemon launcher of tools/demo)
from demo_processes import Node, StepFailed, say, wait_until  # noqa: E402


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def run(args):
    binary = os.path.abspath(args.node_binary)
    if not os.access(binary, os.X_OK):
        raise StepFailed("no node binary at %s (build first: tools/setup)" % binary)
    if args.minutes < args.warmup_minutes + 2:
        raise StepFailed("--minutes must be at least --warmup-minutes + 2 (two separate minutes to compare)")
    workdir = tempfile.mkdtemp(prefix="barrel-p2p-soak-")
    secret_file = demo_processes.write_secret(workdir)
    node_args = argparse.Namespace(anti_entropy_ms=args.anti_entropy_ms)
    nodes = []
    rng = random.Random(args.seed)
    samples = []  # (t, node name, rss KiB)
    restarted = set()
    try:
        for i in range(args.nodes):
            n = Node("node%d" % (i + 1), binary, workdir, secret_file, nodes[0] if nodes else None, node_args)
            n.start()
            nodes.append(n)
        wait_until("every node answers /status", lambda: all(n.answers() for n in nodes), 30)
        wait_until("a connected overlay", lambda: demo_processes.overlay_ok(nodes), 60)
        say("soak: %d nodes, %.0f writes/s over %d keys, one restart every %d s, %d minutes"
            % (len(nodes), args.rate, args.keys, args.churn_s, args.minutes))
        start = time.monotonic()
        end = start + args.minutes * 60
        next_sample = start
        next_churn = start + args.churn_s
        writes = failures = 0
        period = 1.0 / args.rate
        next_write = start
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                for n in nodes:
                    if n.running():
                        kib = rss_kib(n.proc.pid)
                        if kib is not None:
                            samples.append((round(now - start, 1), n.name, kib))
                next_sample += 1.0
            if now >= next_churn and len(nodes) > 1:
                victim = rng.choice(nodes[1:])
                victim.stop()
                victim.start()
                restarted.add(victim.name)
                next_churn += args.churn_s
            if now >= next_write:
                n = nodes[writes % len(nodes)]
                key = "k%d" % rng.randrange(args.keys)
                try:
                    if rng.random() < 0.1:
                        n.delete(key)
                    else:
                        n.put(key, {"n": writes, "pad": "x" * args.value_bytes})
                except (StepFailed, OSError, ValueError):
                    failures += 1  # a node restarting: expected during churn
                writes += 1
                next_write += period
            time.sleep(max(0.0, min(next_write, next_sample) - time.monotonic()))

        say("soak: %d writes, %d refused or lost to a restarting node" % (writes, failures))
        converged = True
        try:
            wait_until("every node holds the same entries",
                       lambda: all(n.entries() == nodes[0].entries() for n in nodes[1:]), 120)
        except StepFailed:
            converged = False

        # Flatness, per node that was never restarted (a restarted one starts over).
        warm = args.warmup_minutes * 60
        steady = [n.name for n in nodes if n.name not in restarted]
        flat = True
        rows = []
        for name in steady:
            series = [(t, kib) for (t, who, kib) in samples if who == name and t >= warm]
            if not series:
                continue
            first = [kib for (t, kib) in series if t < warm + 60]
            last = [kib for (t, kib) in series if t >= series[-1][0] - 60]
            growth = (mean(last) - mean(first)) / mean(first) if first else 0.0
            flat = flat and growth <= args.flat
            rows.append((name, mean(first) / 1024, mean(last) / 1024, max(k for (_, k) in series) / 1024, growth))
        for name in steady:
            per_minute = []
            for minute in range(int(args.minutes) + 1):
                xs = [kib for (t, who, kib) in samples if who == name and minute * 60 <= t < (minute + 1) * 60]
                if xs:
                    per_minute.append("%.1f" % (mean(xs) / 1024))
            say("%s RSS by minute (MiB): %s" % (name, " ".join(per_minute)))
        say("node      RSS first min after warm-up   RSS last min   peak    growth")
        for name, a, b, peak, g in rows:
            say("%-8s  %8.1f MiB                  %8.1f MiB  %6.1f MiB  %+5.1f %%" % (name, a, b, peak, g * 100))
        flat = flat and bool(rows)  # nothing judged is not flat
        say("soak: memory %s (limit +%.0f %%), nodes %s"
            % ("flat" if flat else "NOT flat", args.flat * 100, "converged" if converged else "did NOT converge"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"nodes": args.nodes, "minutes": args.minutes, "rate": args.rate, "keys": args.keys,
                           "churn_s": args.churn_s, "writes": writes, "failures": failures,
                           "restarted": sorted(restarted), "flat": flat, "converged": converged,
                           "rows": [{"node": r[0], "first_mib": r[1], "last_mib": r[2], "peak_mib": r[3],
                                     "growth": r[4]} for r in rows],
                           "samples": samples}, f)
        return 0 if flat and converged else 1
    finally:
        for n in nodes:
            n.kill()
        if args.keep:
            say("soak: files kept in " + workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node-binary", default="build/tools/barrel-p2p-node")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--minutes", type=float, default=10)
    # At least the Plumtree cache's TTL (5 minutes): the cache fills for
    # that long at a steady write rate, then stays level.
    p.add_argument("--warmup-minutes", type=float, default=6)
    p.add_argument("--rate", type=float, default=200, help="writes per second, over all nodes")
    p.add_argument("--keys", type=int, default=5000, help="size of the key space")
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument("--churn-s", type=int, default=30, help="seconds between restarts")
    p.add_argument("--flat", type=float, default=0.10, help="allowed RSS growth after warm-up")
    p.add_argument("--anti-entropy-ms", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json")
    p.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    args = p.parse_args()
    try:
        sys.exit(run(args))
    except StepFailed as e:
        say("soak FAILED: %s" % e)
        sys.exit(1)


if __name__ == "__main__":
    main()
