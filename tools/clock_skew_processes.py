#!/usr/bin/env python3
"""A daemon whose wall clock runs two minutes ahead, as an operator whose NTP
broke would meet it: real barrel-p2p-node processes, the skewed one under
libfaketime (wall clock +120 s, monotonic clock untouched).

Phase 1, policy refuse (the default), with two healthy nodes h1 and h2:
  * h1 and h2 measure the skewed node's offset (~ +120 s) in /status and
    in barrel_p2p_peer_clock_offset_seconds, and log a warning about it;
  * the skewed node knows it is ahead: /status clock.refusing_writes;
  * a PUT on it answers 503 {"error": "clock_skew"} with the measured lead,
    and writes nothing; a GET on it still answers (reads keep working).
Phase 2, the skewed node restarted with --clock-skew-policy warn:
  * its PUT answers 200, the key never reaches h1, and h1 counts the entry
    under barrel_p2p_map_rejected_remote_total{reason="clock_ahead"} and
    logs who wrote it.

Exits 77 (skipped) when libfaketime is not installed (Debian: faketime),
non-zero on any failure; leaves no process behind.

  clock_skew_processes.py --node-binary build/tools/barrel-p2p-node
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_processes as dp  # noqa: E402  (the daemon launcher of tools/demo)

SKEW_S = 120


def faketime_prefix():
    """The command prefix that shifts a process's wall clock, or None."""
    lib = None
    for d in ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime", "/usr/lib/faketime"):
        for name in ("libfaketimeMT.so.1", "libfaketime.so.1"):  # MT: the daemon has a storage thread
            if os.path.exists(os.path.join(d, name)):
                lib = lib or os.path.join(d, name)
    if lib is None:
        return None
    # The library itself, through env (which execs in place), not the
    # faketime wrapper: the wrapper forks, and a SIGTERM meant for the
    # daemon would stop only the wrapper. The monotonic clock keeps real
    # time, as with a broken NTP.
    # Under AddressSanitizer the preloaded library comes before ASan's
    # runtime, which ASan refuses unless told not to check.
    asan = os.environ.get("ASAN_OPTIONS", "")
    asan = (asan + ":" if asan else "") + "verify_asan_link_order=0"
    return ["env", "LD_PRELOAD=" + lib, "FAKETIME=+%ds" % SKEW_S, "FAKETIME_DONT_FAKE_MONOTONIC=1",
            "ASAN_OPTIONS=" + asan]


def metric(node, name, labels):
    """The value of one sample of /metrics whose labels include `labels`."""
    status, text = node.request("GET", "/metrics")
    if status != 200:
        raise dp.StepFailed("GET /metrics on %s: %s" % (node.name, status))
    for line in text.splitlines():
        if line.startswith(name + "{") and all('%s="%s"' % kv in line for kv in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def peer_offset(node, peer):
    s = node.status()
    for p in (s or {}).get("clock", {}).get("peers", []):
        if p["id"] == peer:
            return p["offset_seconds"]
    return None


def near(offset, expected):
    """An offset measured (not None: the peer may not be active yet) and within 5 s."""
    return offset is not None and abs(offset - expected) < 5


def logged(node, text):
    with open(node.log_path) as f:
        return text in f.read()


def run(args):
    prefix = faketime_prefix()
    if prefix is None:
        print("SKIPPED: libfaketime is not installed (Debian package faketime); "
              "the clock-skew process test needs it to shift one daemon's wall clock")
        return 77
    binary = os.path.abspath(args.node_binary)
    workdir = tempfile.mkdtemp(prefix="barrel-p2p-skew-")
    secret_file = dp.write_secret(workdir)
    opts = types.SimpleNamespace(anti_entropy_ms=1000)
    fast = ["--clock-probe-ms", "300"]
    nodes = []
    try:
        h1 = dp.Node("h1", binary, workdir, secret_file, None, opts, fast)
        h1.start()
        nodes.append(h1)
        dp.wait_until("h1 answers", lambda: h1.status() is not None, 30)
        h2 = dp.Node("h2", binary, workdir, secret_file, h1, opts, fast)
        ahead = dp.Node("ahead", binary, workdir, secret_file, h1, opts, fast, prefix)
        for n in (h2, ahead):
            n.start()
            nodes.append(n)
        dp.wait_until("the overlay connects", lambda: dp.overlay_ok(nodes), 30)
        h1.put("written-before", "by h1")
        dp.wait_until("h1's write reaches the skewed node", lambda: ahead.get("written-before") == "by h1", 30)

        dp.say("phase 1: policy refuse")
        for h in (h1, h2):
            dp.wait_until("%s measures the skewed node" % h.name,
                          lambda h=h: near(peer_offset(h, "ahead"), SKEW_S), 30)
            value = metric(h, "barrel_p2p_peer_clock_offset_seconds", {"peer": "ahead"})
            if value is None or abs(value - SKEW_S) > 5:
                raise dp.StepFailed("%s: barrel_p2p_peer_clock_offset_seconds{peer=ahead} = %s" % (h.name, value))
            dp.wait_until("%s logs the skewed peer" % h.name,
                          lambda h=h: logged(h, "peer ahead's wall clock is +1"), 10)
        dp.say("    h1 and h2 measure the skewed node at %+.3f s and %+.3f s"
               % (peer_offset(h1, "ahead"), peer_offset(h2, "ahead")))
        dp.wait_until("the skewed node refuses writes",
                      lambda: ahead.status()["clock"]["refusing_writes"], 30)
        status, body = ahead.json("PUT", "/maps/kv/skewed", "must not be acknowledged")
        if status != 503 or body.get("error") != "clock_skew" or abs(body.get("ahead_seconds", 0) - SKEW_S) > 5:
            raise dp.StepFailed("PUT on the skewed node: %s %s (expected 503 clock_skew)" % (status, body))
        dp.say("    PUT on the skewed node: 503 %s, %.3f s ahead" % (body["error"], body["ahead_seconds"]))
        status, body = ahead.json("DELETE", "/maps/kv/written-before")
        if status != 503:
            raise dp.StepFailed("DELETE on the skewed node: %s %s (expected 503)" % (status, body))
        if ahead.get("skewed") is not None or ahead.get("written-before") != "by h1":
            raise dp.StepFailed("the refused writes changed the skewed node's map")
        refused = metric(ahead, "barrel_p2p_clock_writes_refused_total", {})
        if refused is None or refused < 2:
            raise dp.StepFailed("barrel_p2p_clock_writes_refused_total on the skewed node: %s" % refused)
        if not logged(ahead, "refusing local writes until they are back in range"):
            raise dp.StepFailed("the skewed node did not log why it refuses writes")
        dp.say("    reads still answer; refusals counted and logged")

        dp.say("phase 2: policy warn")
        if ahead.stop() != 0:
            raise dp.StepFailed("the skewed node did not stop cleanly")
        nodes.remove(ahead)
        warned = dp.Node("warned", binary, workdir, secret_file, h1, opts,
                         fast + ["--clock-skew-policy", "warn"], prefix)
        warned.start()
        nodes.append(warned)
        dp.wait_until("the overlay connects again", lambda: dp.overlay_ok(nodes), 30)
        dp.wait_until("the warned node measures its lead",
                      lambda: warned.status()["clock"]["ahead_of_cluster"], 30)
        warned.put("from-the-future", 1)  # acknowledged under policy warn
        dp.wait_until("h1 counts the entry as clock_ahead",
                      lambda: (metric(h1, "barrel_p2p_map_rejected_remote_total",
                                      {"map": "kv", "reason": "clock_ahead"}) or 0) >= 1, 30)
        time.sleep(2)  # two anti-entropy rounds: it still does not arrive
        if h1.get("from-the-future") is not None or h2.get("from-the-future") is not None:
            raise dp.StepFailed("an entry stamped 120 s ahead was accepted")
        dp.wait_until("h1 logs the refused entries", lambda: logged(h1, "written by warned"), 10)
        dp.say("    acknowledged on the skewed node, refused by h1 and h2, counted as clock_ahead and logged")
        dp.say("clock skew: ok")
        return 0
    except dp.StepFailed:
        for n in nodes:  # what each daemon said last, to see why
            if os.path.exists(n.log_path):
                with open(n.log_path) as f:
                    tail = f.read().splitlines()[-5:]
                print("--- %s (%s):" % (n.name, "running" if n.running() else "exited %s" % n.proc.returncode))
                for line in tail:
                    print("    " + line)
        raise
    finally:
        for n in nodes:
            n.kill()
        if os.environ.get("BARREL_KEEP_LOGS"):
            print("logs kept in", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node-binary", required=True)
    args = p.parse_args()
    try:
        sys.exit(run(args))
    except dp.StepFailed as e:
        print("FAILED:", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
