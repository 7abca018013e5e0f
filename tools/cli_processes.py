#!/usr/bin/env python3
"""The command-line client `barrel-p2p` against three running daemons.

  1. members (tables, --tag filters, --json), status;
  2. put / get / keys / rm on a replicated map, through different nodes;
     get of an absent key exits 4;
  3. watch prints a put made on another node;
  4. query barrel_p2p.status: every node answers; --tag and --node filter;
  5. register / services / deregister, shards, remind / reminders / unremind;
  6. exit codes: 2 for usage errors, 3 for an unreachable node, 1 for a
     node that refuses (a token is needed), 0 with --token-file.

Exits non-zero when a step fails; leaves no process behind.

  cli_processes.py --node-binary build/tools/barrel-p2p-node --cli-binary build/tools/barrel-p2p
"""
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_processes as dp  # noqa: E402  (the daemon launcher of tools/demo)

say = dp.say


class Cli:
    def __init__(self, binary):
        self.binary = binary

    def run(self, node, *words, token_file=None, expect=0):
        cmd = [self.binary, "--addr", "127.0.0.1:%d" % node.http_port]
        if token_file:
            cmd += ["--token-file", token_file]
        cmd += list(words)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if expect is not None and p.returncode != expect:
            raise dp.StepFailed("`barrel-p2p %s` exited %d, expected %d\nstdout: %s\nstderr: %s"
                                % (" ".join(words), p.returncode, expect, p.stdout, p.stderr))
        return p

    def json(self, node, *words, **kw):
        return json.loads(self.run(node, "--json", *words, **kw).stdout)


def check(condition, what):
    if not condition:
        raise dp.StepFailed(what)


def run(args):
    binary = os.path.abspath(args.node_binary)
    cli = Cli(os.path.abspath(args.cli_binary))
    workdir = tempfile.mkdtemp(prefix="barrel-p2p-cli-")
    secret_file = dp.write_secret(workdir)
    token_file = os.path.join(workdir, "http.token")
    with open(token_file, "w") as f:
        f.write(secrets.token_urlsafe(16) + "\n")
    os.chmod(token_file, 0o600)
    nodes = []
    watcher = None
    try:
        say("== three daemons (node3 wants an HTTP token)")
        for i, role in enumerate(["db", "web", "web"]):
            n = dp.Node("node%d" % (i + 1), binary, workdir, secret_file, nodes[0] if nodes else None, args)
            n.extra_flags = ["--tag", "role=" + role, "--shards", "work:16", "--reminders"]
            if i == 2:
                n.extra_flags += ["--http-token-file", token_file]
            n.start()
            nodes.append(n)
        n1, n2, n3 = nodes
        dp.wait_until("node1 and node2 answer", lambda: n1.answers() and n2.answers(), 30)
        dp.wait_until("three members everywhere",
                      lambda: all(len(cli.json(n, "members")["members"]) == 3 for n in (n1, n2)), 30)

        say("\n== 1. members, status")
        table = cli.run(n1, "members").stdout
        say(table.rstrip())
        check(table.splitlines()[0].split() == ["ID", "ADDRESS", "TAGS"], "members: no table header")
        check(all(("node%d" % i) in table for i in (1, 2, 3)), "members: a node is missing")
        check("role=db" in table, "members: tags are missing")
        web = cli.json(n2, "members", "--tag", "role=web")["members"]
        check(sorted(m["id"] for m in web) == ["node2", "node3"], "members --tag role=web: %s" % web)
        status = cli.run(n2, "status").stdout
        check(status.startswith("node      node2 at "), "status: %r" % status[:80])
        check("MAP" in status and "kv" in status, "status: no map table")

        say("\n== 2. put, get, keys, rm")
        cli.run(n1, "put", "kv", "color", "blue")  # not JSON: stored as a string
        cli.run(n1, "put", "kv", "answer", "42")
        cli.run(n1, "put", "kv", "profile", '{"name": "alice"}')
        dp.wait_until("node2 reads the writes", lambda: cli.run(n2, "get", "kv", "profile", expect=None).returncode == 0, 10)
        check(cli.run(n2, "get", "kv", "color").stdout.strip() == '"blue"', "get color")
        check(cli.run(n2, "get", "kv", "answer").stdout.strip() == "42", "get answer: a number")
        check(cli.json(n2, "get", "kv", "profile")["value"] == {"name": "alice"}, "get profile --json")
        keys = cli.run(n2, "keys", "kv").stdout.split()
        check(keys == ["answer", "color", "profile"], "keys: %s" % keys)
        cli.run(n2, "rm", "kv", "color")
        dp.wait_until("the removal reaches node1",
                      lambda: cli.run(n1, "get", "kv", "color", expect=None).returncode == 4, 10)
        missing = cli.run(n1, "get", "kv", "color", expect=4)
        check("404" in missing.stderr, "get of a removed key: %r" % missing.stderr)
        say("   put on node1, read on node2; rm on node2, get on node1 exits 4: %s" % missing.stderr.strip())

        say("\n== 3. watch")
        watcher = subprocess.Popen([cli.binary, "--addr", "127.0.0.1:%d" % n2.http_port, "watch", "kv"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # the WebSocket is open before the put
        cli.run(n1, "put", "kv", "watched", "[1, 2]")
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(watcher.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("watched" in l for l in lines):
            time.sleep(0.05)
        line = next((l for l in lines if "watched" in l), "")
        check("put key=watched value=[1,2]" in line, "watch printed %r" % line)
        say("   watch on node2 printed: " + line.strip())
        watcher.terminate()
        watcher.wait(5)
        watcher = None

        say("\n== 4. query")
        answers = cli.json(n1, "query", "barrel_p2p.status", "--timeout", "2000")["answers"]
        check(sorted(a["node"] for a in answers) == ["node1", "node2", "node3"],
              "query barrel_p2p.status: %s" % [a["node"] for a in answers])
        check(all(a["payload"]["node"] == a["node"] for a in answers), "each answer is the node's own status")
        table = cli.run(n1, "query", "barrel_p2p.status", "--timeout", "1000", "--tag", "role=db").stdout
        say(table.rstrip()[:300])
        check(table.strip().endswith("1 answer"), "query --tag role=db: %r" % table[-200:])
        picked = cli.json(n2, "query", "barrel_p2p.status", "--node", "node3", "--timeout", "1000")["answers"]
        check([a["node"] for a in picked] == ["node3"], "query --node node3: %s" % picked)
        first = cli.json(n2, "query", "barrel_p2p.status", "--max", "1", "--timeout", "30000")["answers"]
        check(len(first) == 1, "query --max 1: %d answers" % len(first))

        say("\n== 5. services, shards, reminders")
        cli.run(n1, "register", "search", "127.0.0.1:9200", '{"version": 3}')
        dp.wait_until("node2 lists the provider",
                      lambda: len(cli.json(n2, "services", "search")["providers"]) == 1, 10)
        table = cli.run(n2, "services", "search").stdout
        check("node1" in table and "127.0.0.1:9200" in table and '"version":3' in table, "services: %r" % table)
        cli.run(n1, "deregister", "search", "127.0.0.1:9200")
        dp.wait_until("the provider is gone on node2",
                      lambda: not cli.json(n2, "services", "search")["providers"], 10)
        groups = cli.run(n1, "shards").stdout
        check("work" in groups and "16" in groups, "shards: %r" % groups)
        dp.wait_until("three members in 'work'",
                      lambda: len(cli.json(n1, "shards", "work")["members"]) == 3, 20)
        owners = cli.run(n1, "shards", "work").stdout
        check(owners.splitlines()[0].split() == ["OWNER", "SHARDS", "WHICH"], "shards work: %r" % owners)
        check(sum(int(l.split()[1]) for l in owners.splitlines()[1:]) == 16, "shards work: %r" % owners)
        cli.run(n1, "remind", "later", "--in", "600000", "--payload", '{"invoice": 7}')
        dp.wait_until("node2 holds the reminder", lambda: cli.run(n2, "reminders", "later", expect=None).returncode == 0, 10)
        check("later" in cli.run(n2, "reminders").stdout, "reminders: no 'later'")
        cli.run(n2, "unremind", "later")
        dp.wait_until("the reminder is gone on node1",
                      lambda: cli.run(n1, "reminders", "later", expect=None).returncode == 4, 10)

        say("\n== 6. exit codes")
        check("unknown command" in cli.run(n1, "frobnicate", expect=2).stderr, "exit 2 for an unknown command")
        cli.run(n1, "get", "kv", expect=2)
        cli.run(n1, "query", "x", "--bogus", "1", expect=2)
        closed = dp.free_port()
        p = subprocess.run([cli.binary, "--addr", "127.0.0.1:%d" % closed, "status"], capture_output=True, text=True)
        check(p.returncode == 3, "exit %d for an unreachable node, expected 3" % p.returncode)
        refused = cli.run(n3, "status", expect=1)
        check("401" in refused.stderr, "node3 without a token: %r" % refused.stderr)
        check(cli.run(n3, "status", token_file=token_file).stdout.startswith("node      node3"), "node3 with the token")
        say("   2: usage, 3: %s, 1: %s" % (p.stderr.strip(), refused.stderr.strip()))
        dp.stop_all(nodes)
        say("\ncli: every step passed")
        return 0
    except (dp.StepFailed, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
        return dp.failed("cli", e if isinstance(e, dp.StepFailed) else dp.StepFailed(str(e)), nodes)
    finally:
        if watcher:
            watcher.kill()
        dp.clean_up(nodes, workdir, args.keep)


def main():
    p = dp.script_parser(__doc__)
    p.add_argument("--cli-binary", default="build/tools/barrel-p2p")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
