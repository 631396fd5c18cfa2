"""A listener off the loopback needs the bearer token.

The test runs itself again inside a network namespace of its own (`unshare
--net`), where it brings up the loopback and one interface with the address
192.0.2.1 (TEST-NET-1): a dummy interface, or a veth pair where the kernel
has no dummy driver. Nothing leaves the namespace. In there:

* `--check-config` refuses `[http] listen = 192.0.2.1:PORT` (and `*:PORT`)
  without `token-file`, naming the file and line; the daemon does not start;
* with a token file, the daemon serves on 192.0.2.1: the API, the event
  stream and /metrics answer 401 (with `WWW-Authenticate: Bearer` and a JSON
  error) without the token or with a wrong one, and 200 with it; the page's
  own files need none; the token appears in no output;
* a reload with a new token file content takes the new token from the next
  request.
"""

import json
import os
import subprocess
import sys
import unittest

import swtest

ADDRESS = "192.0.2.1"
TOKEN = "tok_" + "7f3a9c" * 6
NEW_TOKEN = "tok_" + "c0ffee" * 6
INNER = "SW_HTTP_TOKEN_INNER"


def setup_namespace():
    """Inside the new namespace: lo up, and ADDRESS on an interface."""
    def ip(*args, check=True):
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)
    ip("link", "set", "lo", "up")
    if ip("link", "add", "sw0", "type", "dummy", check=False).returncode != 0:
        ip("link", "add", "sw0", "type", "veth", "peer", "name", "sw1")
        ip("link", "set", "sw1", "up")
    ip("addr", "add", f"{ADDRESS}/24", "dev", "sw0")
    ip("link", "set", "sw0", "up")


class TokenTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.sim = swtest.ApiSim(self.tmp, scenario={"sessions": [
            swtest.sim_session("ses_a", [(0, "Active")])]}).register(self).start()

    def token_file(self, token, name="http-token"):
        path = os.path.join(self.tmp.conf, name)
        with open(path, "w") as f:
            f.write(token + "\n")
        os.chmod(path, 0o600)
        return path

    def daemon(self, http, name="sessionwatchd"):
        config = swtest.Daemon.basic_config(self.sim.url, sessions=["ses_a"], extra={
            "api": {"rate-limit": "off"}, "poll": {"interval": "50ms"}, "journal": {"enable": False},
            "http": http})
        return swtest.Daemon(self.tmp, config, name=name).register(self)

    def check_config(self, daemon):
        return subprocess.run([swtest.binary_path("SW_DAEMON"), "--check-config", "--config", daemon.config_path],
                              capture_output=True, text=True, timeout=swtest.scaled(30))

    def test_off_the_loopback_a_token_is_required(self):
        port = swtest.free_port(ADDRESS)
        for listen in (f"{ADDRESS}:{port}", f"*:{port}", f"[::]:{port}"):
            daemon = self.daemon({"listen": listen}, name="open")
            done = self.check_config(daemon)
            self.assertNotEqual(done.returncode, 0, listen)
            line = next(n for n, text in enumerate(daemon.config_text.splitlines(), 1)
                        if text.startswith("listen") and listen in text)
            self.assertIn(f"{daemon.config_path}:{line}: ", done.stderr)
            self.assertIn("is not a loopback address: set 'token-file' in section '[http]'", done.stderr)
            daemon.start()
            self.assertNotEqual(daemon.wait(timeout=swtest.scaled(10)), 0)

        # The loopback needs none.
        daemon = self.daemon({"listen": f"127.0.0.1:{port}"}, name="loopback")
        self.assertEqual(self.check_config(daemon).returncode, 0)

    def test_the_token_guards_all_but_the_page(self):
        port = swtest.free_port(ADDRESS)
        token_path = self.token_file(TOKEN)
        daemon = self.daemon({"listen": f"{ADDRESS}:{port}", "token-file": token_path})
        self.assertEqual(self.check_config(daemon).returncode, 0)
        daemon.start()
        daemon.wait_control()
        base = f"http://{ADDRESS}:{port}"

        def get(path, token=None):
            headers = {"Authorization": f"Bearer {token}"} if token else None
            return swtest.http_request("GET", base + path, headers=headers)

        for path in ("/api/v1/status", "/api/v1/sessions", "/api/v1/sessions/ses_a", "/api/v1/events",
                     "/metrics"):
            for token in (None, "wrong", TOKEN[:-1], TOKEN + "x"):
                response = get(path, token)
                self.assertEqual(response.status, 401, f"{path} with {token!r}")
                self.assertEqual(response.headers.get("WWW-Authenticate"), 'Bearer realm="sessionwatch"')
                self.assertEqual(response.json()["error"], "unauthorized")
        for path in ("/", "/app.js", "/app.css"):
            self.assertEqual(get(path).status, 200, path)
        swtest.wait_until(lambda: get("/api/v1/sessions/ses_a", TOKEN).json()["session"]["status"] == "Active",
                          timeout=20, message="the session never showed with the token")
        self.assertEqual(get("/metrics", TOKEN).status, 200)
        # Also over a raw "Bearer" in another case, as RFC 7235 allows.
        response = swtest.http_request("GET", base + "/api/v1/status", headers={"Authorization": f"bearer {TOKEN}"})
        self.assertEqual(response.status, 200)
        status = json.loads(response.body)
        self.assertEqual(status["sessions"]["watched"], 1)
        metrics = get("/metrics", TOKEN).text
        self.assertRegex(metrics, r"(?m)^sessionwatch_http_unauthorized_total [1-9]")

        # A new token from the next request.
        with open(token_path, "w") as f:
            f.write(NEW_TOKEN + "\n")
        reply = daemon.ctl("reload", json_output=True)
        self.assertEqual(reply.returncode, 0, reply.stderr)
        swtest.wait_until(lambda: get("/api/v1/status", NEW_TOKEN).status == 200, timeout=10,
                          message="the new token was not taken")
        self.assertEqual(get("/api/v1/status", TOKEN).status, 401)
        daemon.stop()
        for text in (daemon.stdout_text(), daemon.stderr_text()):
            self.assertNotIn(TOKEN, text)
            self.assertNotIn(NEW_TOKEN, text)


class NamespaceTest(unittest.TestCase):
    """Runs TokenTest inside a new network namespace (TokenTest itself needs
    the namespace's address, so it runs only there)."""

    def test_in_a_network_namespace(self):
        env = dict(os.environ, **{INNER: "1"})
        done = subprocess.run(["unshare", "--net", "--", sys.executable, "-u", os.path.abspath(__file__),
                               "--inner"], env=env, capture_output=True, text=True,
                              timeout=swtest.scaled(240))
        sys.stderr.write(done.stderr)
        self.assertEqual(done.returncode, 0, "the tests in the namespace failed (above)")
        self.assertRegex(done.stderr, r"Ran 2 tests", "the tests in the namespace did not run")
        self.assertNotIn("skipped", done.stderr.split("Ran ")[-1])


if __name__ == "__main__":
    if "--inner" in sys.argv:
        sys.argv.remove("--inner")
        setup_namespace()
        unittest.main(argv=[sys.argv[0], "-v", "TokenTest"])
    else:
        unittest.main(defaultTest="NamespaceTest")
