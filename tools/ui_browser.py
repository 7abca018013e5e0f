#!/usr/bin/env python3
"""The live cluster page (/ui) in a real headless browser: Debian's chromium,
driven through chromedriver's WebDriver protocol (HTTP and JSON: the
standard library is enough).

  1. Three daemons; the page, loaded from node1, draws every node of the
     graph as answering, the broadcast tree's eager edges, and lists the
     three members with their tags.
  2. A put made through node2's HTTP API appears in the page's live feed
     (the page follows node1's WebSocket: the change crossed the cluster).
  3. A node that wants a bearer token: the page asks for it, reads the
     cluster with it and follows the feed (the token offered as a WebSocket
     subprotocol).
  4. Optionally saves a screenshot (--screenshot FILE) for the docs.

Exits 77 (skipped) when chromium or chromedriver is not installed, 1 when a
step fails; leaves no process behind.

  ui_browser.py --node-binary build/tools/barrel-p2p-node [--screenshot docs/images/ui.png]
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_processes as dp  # noqa: E402  (the daemon launcher of tools/demo)

say = dp.say
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class Browser:
    """One WebDriver session on a chromedriver process."""

    def __init__(self, workdir):
        self.port = dp.free_port()
        self.log = open(os.path.join(workdir, "chromedriver.log"), "w")
        self.proc = subprocess.Popen([CHROMEDRIVER, "--port=%d" % self.port], stdout=self.log, stderr=subprocess.STDOUT)
        self.base = "http://127.0.0.1:%d" % self.port
        dp.wait_until("chromedriver answers", self._ready, 20)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--user-data-dir=" + os.path.join(workdir, "chromium-profile")]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _ready(self):
        try:
            return self._call("GET", "/status")["ready"]
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as res:
                return json.loads(res.read().decode())["value"]
        except urllib.error.HTTPError as e:
            raise dp.StepFailed("WebDriver %s %s: %s %s" % (method, path, e.code, e.read().decode()[:500]))

    def open(self, url):
        self._call("POST", "/session/%s/url" % self.session, {"url": url})

    def run(self, script):
        return self._call("POST", "/session/%s/execute/sync" % self.session, {"script": script, "args": []})

    def screenshot(self, path):
        png = base64.b64decode(self._call("GET", "/session/%s/screenshot" % self.session))
        with open(path, "wb") as f:
            f.write(png)

    def close(self):
        try:
            self._call("DELETE", "/session/%s" % self.session)
        except Exception:  # noqa: BLE001  (closing anyway)
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# What the page shows, read from its DOM.
PAGE_STATE = """
const circles = [...document.querySelectorAll('#graph circle')];
return {
  nodes: circles.map(c => c.dataset.node).sort(),
  silent: circles.filter(c => c.classList.contains('silent')).map(c => c.dataset.node),
  eager: document.querySelectorAll('#graph line.eager').length,
  active: document.querySelectorAll('#graph line').length,
  members: [...document.querySelectorAll('#members tbody tr')].map(r => r.dataset.id).sort(),
  tags: document.querySelector('#members tbody') ? document.querySelector('#members tbody').innerText : '',
  feed: [...document.querySelectorAll('#feed li')].map(li => li.innerText),
  error: document.getElementById('error').innerText,
};
"""


def run(args):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        say("ui: chromium and chromedriver are not installed (apt install chromium chromium-driver): skipped")
        return 77
    binary = os.path.abspath(args.node_binary)
    workdir = tempfile.mkdtemp(prefix="barrel-p2p-ui-")
    secret_file = dp.write_secret(workdir)
    nodes, browser = [], None
    try:
        say("== three daemons")
        for i in range(args.nodes):
            zone = "a" if i % 2 == 0 else "b"
            n = dp.Node("node%d" % (i + 1), binary, workdir, secret_file, nodes[0] if nodes else None, args)
            n.extra_flags = ["--tag", "zone=" + zone]
            n.start()
            nodes.append(n)
        dp.wait_until("every node answers", lambda: all(n.answers() for n in nodes), 30)
        dp.wait_until("every member listed everywhere",
                      lambda: all(len(n.json("GET", "/members")[1]["members"]) == len(nodes) for n in nodes), 30)

        say("\n== 1. the page from node1 in headless chromium")
        browser = Browser(workdir)
        browser.open("http://127.0.0.1:%d/ui" % nodes[0].http_port)
        names = sorted(n.name for n in nodes)
        seen = {}

        def drawn():
            seen.update(browser.run(PAGE_STATE))
            return seen["nodes"] == names and not seen["silent"] and seen["members"] == names and seen["eager"] >= len(nodes) - 1
        try:
            t = dp.wait_until("the graph shows every node answering, with the eager tree", drawn, 30)
        except dp.StepFailed:
            raise dp.StepFailed("the page shows %s" % json.dumps(seen))
        say("   after %.1f s: nodes %s, %d links of which %d eager, members %s"
            % (t, seen["nodes"], seen["active"], seen["eager"], seen["members"]))
        if "zone=b" not in seen["tags"]:
            raise dp.StepFailed("the members table shows no tags: %r" % seen["tags"])

        say("\n== 2. a put through node2's API appears in node1's page")
        nodes[1].put("from-the-api", {"seen": "in the browser"})

        def in_feed():
            seen.update(browser.run(PAGE_STATE))
            return any("put from-the-api" in line for line in seen["feed"])
        try:
            t = dp.wait_until("the put in the live feed", in_feed, 20)
        except dp.StepFailed:
            raise dp.StepFailed("the feed shows %s (error: %r)" % (seen["feed"][:5], seen["error"]))
        say("   in the feed after %.2f s: %s" % (t, next(l for l in seen["feed"] if "from-the-api" in l)))
        say("\n== 3. a node that wants a token: the page asks for it, then reads and follows with it")
        token_file = os.path.join(workdir, "http.token")
        with open(token_file, "w") as f:
            f.write("page-token-%d\n" % os.getpid())
        guarded = dp.Node("guarded", binary, workdir, secret_file, nodes[0], args,
                          extra_flags=["--http-token-file", token_file])
        guarded.start()
        nodes.append(guarded)

        def serves_page():  # the page needs no token; the API behind it does
            try:
                return guarded.request("GET", "/ui")[0] == 200
            except OSError:
                return False
        dp.wait_until("the guarded node serves /ui", serves_page, 30)
        browser.open("http://127.0.0.1:%d/ui" % guarded.http_port)
        dp.wait_until("the page asks for a token",
                      lambda: browser.run("return getComputedStyle(document.getElementById('login')).display") == "flex", 20)
        browser.run("document.getElementById('token').value = 'page-token-%d';"
                    "document.getElementById('login').requestSubmit();" % os.getpid())
        everyone = sorted(n.name for n in nodes)

        def drawn_with_token():
            seen.update(browser.run(PAGE_STATE))
            return seen["nodes"] == everyone and not seen["silent"] and not seen["error"]
        try:
            dp.wait_until("the page reads the cluster with the token", drawn_with_token, 30)
        except dp.StepFailed:
            raise dp.StepFailed("the page shows %s" % json.dumps(seen))
        time.sleep(0.5)  # the WebSocket opens after the first read
        nodes[1].put("seen-with-a-token", 1)

        def in_guarded_feed():
            seen.update(browser.run(PAGE_STATE))
            return any("put seen-with-a-token" in line for line in seen["feed"])
        try:
            dp.wait_until("the put in the feed of the page with a token", in_guarded_feed, 20)
        except dp.StepFailed:
            raise dp.StepFailed("the feed shows %s (error: %r)" % (seen["feed"][:5], seen["error"]))
        say("   the token entered in the page; %d nodes drawn; the put arrived over the WebSocket"
            " (the token offered as a subprotocol)" % len(everyone))
        browser.open("http://127.0.0.1:%d/ui" % nodes[0].http_port)
        if args.screenshot:
            for i in range(8):
                nodes[i % len(nodes)].put("order:%d" % i, {"qty": i + 1})
            time.sleep(3.5)  # one refresh of the graph and the map sizes
            browser.screenshot(args.screenshot)
            say("   screenshot: %s" % args.screenshot)
        dp.stop_all(nodes)
        say("\nui: every step passed")
        return 0
    except dp.StepFailed as e:
        return dp.failed("ui", e, nodes)
    finally:
        if browser:
            browser.close()
        dp.clean_up(nodes, workdir, args.keep)


def main():
    p = dp.script_parser(__doc__)
    p.add_argument("--screenshot", help="save a PNG of the page here")
    p.add_argument("--nodes", type=int, default=3, help="daemons to start (default 3)")
    sys.exit(run(p.parse_args()))


if __name__ == "__main__":
    main()
