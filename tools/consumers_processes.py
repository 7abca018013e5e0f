#!/usr/bin/env python3
"""The registry, sharded placement and durable reminders on five
barrel-p2p-node processes, driven through their HTTP API.

  1. Each daemon registers the service "api" at its HTTP address and joins
     the placement group "work" (64 shards) and the reminders.
  2. Every node lists the five providers; every shard of "work" has exactly
     one owner and all five agree on it.
  3. A reminder is scheduled for 4 s later; the daemon that owns its shard
     is killed (SIGKILL) before it is due: the provider's registration
     disappears from every survivor (the time is printed), only the killed
     node's shards move, and the reminder fires on a survivor.
  4. Another reminder is scheduled, the whole cluster is stopped and
     restarted from its data directories: the reminder fires after the
     restart.

Exits non-zero if a step does not converge; leaves no process behind.

  consumers_processes.py --node-binary build/tools/barrel-p2p-node
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_processes as dp  # noqa: E402  (the daemon launcher of tools/demo)

say = dp.say
SHARDS = 64


def providers(node, service="api"):
    status, body = node.json("GET", "/services/" + service)
    if status != 200:
        raise dp.StepFailed("GET /services/%s on %s: %s %s" % (service, node.name, status, body))
    return {p["node"] for p in body["providers"]}


def group(node, name):
    status, body = node.json("GET", "/shards/" + name)
    if status != 200:
        raise dp.StepFailed("GET /shards/%s on %s: %s %s" % (name, node.name, status, body))
    return body


def settled(nodes, name, members):
    """Every node sees `members`, names the same owners, and each shard is
    owned (in the owners' own view) by exactly one of them."""
    views = [group(n, name) for n in nodes]
    if any({m["node"] for m in v["members"]} != members for v in views):
        return False
    owners = views[0]["owners"]
    if any(v["owners"] != owners for v in views) or any(o is None for o in owners):
        return False
    claims = {}
    for n, v in zip(nodes, views):
        for o in v["owned"]:
            claims.setdefault(o["shard"], []).append(n.name)
    return all(claims.get(s) == [owners[s]] for s in range(len(owners)))


def fired_on(nodes, reminder):
    return [n.name for n in nodes if "reminder '%s' fired" % reminder in n.log_text()]


def schedule(node, name, in_ms, payload):
    status, body = node.json("PUT", "/reminders/" + name, {"in_ms": in_ms, "payload": payload})
    if status != 200:
        raise dp.StepFailed("PUT /reminders/%s on %s: %s %s" % (name, node.name, status, body))


def run(args):
    binary = os.path.abspath(args.node_binary)
    workdir = tempfile.mkdtemp(prefix="barrel-p2p-consumers-")
    secret_file = dp.write_secret(workdir)
    nodes = []
    try:
        say("== 1. Five daemons: each registers 'api', joins the group 'work' and fires reminders")
        for i in range(5):
            n = dp.Node("node%d" % (i + 1), binary, workdir, secret_file, nodes[0] if nodes else None, args)
            n.extra_flags = ["--register", "api=127.0.0.1:%d" % n.http_port, "--shards", "work:%d" % SHARDS,
                             "--reminders"]
            n.start()
            nodes.append(n)
        dp.wait_until("every node answers", lambda: all(n.answers() for n in nodes), 30)
        names = {n.name for n in nodes}
        t = dp.wait_until("five providers of 'api' everywhere", lambda: all(providers(n) == names for n in nodes), 30)
        say("   every node lists the 5 providers of 'api' (%.2f s)" % t)
        t = dp.wait_until("one owner per shard of 'work'", lambda: settled(nodes, "work", names), 30)
        owners_before = group(nodes[0], "work")["owners"]
        counts = {name: owners_before.count(name) for name in sorted(names)}
        say("   every shard of 'work' has one owner, all agree (%.2f s): %s" % (t, counts))
        dp.wait_until("the reminders' group settles", lambda: settled(nodes, "barrel_p2p.reminders", names), 30)

        say("\n== 2. Schedule a reminder, then SIGKILL its owner before it is due")
        # A name whose shard node1 (which schedules it) does not own.
        name, victim = None, None
        for k in range(100):
            candidate = "invoice-%d" % k
            status, body = nodes[0].json("PUT", "/reminders/" + candidate, {"in_ms": 4000, "payload": {"invoice": k}})
            if status != 200:
                raise dp.StepFailed("PUT /reminders/%s: %s %s" % (candidate, status, body))
            if body["owner"] != nodes[0].name:
                name, victim = candidate, next(n for n in nodes if n.name == body["owner"])
                break
            nodes[0].json("DELETE", "/reminders/" + candidate)
        if name is None:
            raise dp.StepFailed("node1 owned the shard of each of 100 reminder names")
        say("   PUT /reminders/%s (due in 4 s) on node1: shard owned by %s" % (name, victim.name))
        victim.kill()
        killed_at = time.monotonic()
        live = [n for n in nodes if n is not victim]
        live_names = {n.name for n in live}
        t = dp.wait_until("the killed provider gone everywhere",
                          lambda: all(providers(n) == live_names for n in live), 30)
        say("   %s killed: its 'api' registration gone from all 4 survivors after %.0f ms"
            " (heartbeat timeout 1,250 ms)" % (victim.name, t * 1000))
        t = dp.wait_until("'work' settles on the survivors", lambda: settled(live, "work", live_names), 30)
        owners_after = group(live[0], "work")["owners"]
        moved = sum(1 for a, b in zip(owners_before, owners_after) if a != b)
        orphans = owners_before.count(victim.name)
        say("   'work' settled on 4 members %.2f s after the kill: %d shards moved, %d were %s's"
            % (time.monotonic() - killed_at, moved, orphans, victim.name))
        if moved != orphans:
            raise dp.StepFailed("%d shards moved, but only the %d of the killed node had to" % (moved, orphans))
        dp.wait_until("the reminder fires", lambda: fired_on(live, name), 30)
        line = next(l for n in live for l in n.log_text().splitlines() if "reminder '%s' fired" % name in l)
        say("   " + line.split(" ", 1)[1])
        dp.wait_until("the reminder is completed everywhere",
                      lambda: all(n.json("GET", "/reminders/" + name)[0] == 404 for n in live), 30)
        say("   completed: GET /reminders/%s is 404 on every survivor" % name)

        say("\n== 3. Schedule a reminder 6 s ahead, stop the whole cluster, restart it from disk")
        schedule(live[0], "after-restart", 6000, {"restart": True})
        dp.wait_until("the reminder reached every node",
                      lambda: all(n.json("GET", "/reminders/after-restart")[0] == 200 for n in live), 5)
        if fired_on(live, "after-restart"):
            raise dp.StepFailed("'after-restart' fired before the cluster stopped: the step would prove nothing")
        dp.stop_all(live)
        say("   all 4 stopped (SIGTERM) before it was due")
        logged_before = {n.name: len(n.log_text()) for n in live}
        for n in live:
            n.start()
        dp.wait_until("every node answers", lambda: all(n.answers() for n in live), 30)

        def fired_since_restart():
            return [n.name for n in live if "reminder 'after-restart' fired" in n.log_text()[logged_before[n.name]:]]
        dp.wait_until("the reminder fires after the restart", fired_since_restart, 60)
        say("   restarted from disk; 'after-restart' fired on %s" % ", ".join(fired_since_restart()))
        dp.stop_all(live)
        say("\nconsumers: every step converged")
        return 0
    except dp.StepFailed as e:
        return dp.failed("consumers", e, nodes)
    finally:
        dp.clean_up(nodes, workdir, args.keep)


def main():
    p = dp.script_parser(__doc__)
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
