"""The HTTP listener: the JSON API, the event stream and what guards them.

sessionwatchd polls apisim with `[http] listen` on a free loopback port; the
tests ask it with urllib, http.client and raw sockets:

* every endpoint answers with the documented fields and the security
  headers (and no CORS header); the page's files are served;
* /api/v1/sessions sorts failures, then waiting sessions, then the rest by
  their last change; its filters work; bad parameters get 400 with a JSON
  error; 10,000 sessions page through in order, each exactly once;
* /api/v1/sessions/ID shows the session's events from the ring;
* /api/v1/events sends every event with its sequence as `id:`, resumes
  after `Last-Event-ID` with exactly the events missed, starts over (and says
  so) for an id the ring no longer covers, sends heartbeats, refuses
  clients past max-event-streams, and cuts off a client that never reads
  while polling and the other clients go on;
* [metrics] listen still works, with one deprecation warning;
* a listener off the loopback needs a token (test_http_token.py checks it
  inside a network namespace of its own).
"""

import http.client
import json
import os
import socket
import subprocess
import time
import unittest
import urllib.parse

import swtest

INTERVAL = "50ms"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SseClient:
    """A reader of /api/v1/events over http.client: next() returns one block
    as {"id", "event", "data", "comment"}."""

    def __init__(self, port, headers=None, path="/api/v1/events", timeout=10):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=swtest.scaled(timeout))
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()

    def next(self):
        block = {"id": None, "event": None, "data": None, "comment": None}
        seen = False
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the event stream ended")
            line = line.decode("utf-8").rstrip("\n")
            if line == "":
                if seen:
                    return block
                continue
            seen = True
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                block["comment"] = value
            elif field == "data":
                block["data"] = json.loads(value)
            elif field in ("id", "event", "retry"):
                block[field] = value

    def next_event(self):
        """The next block that is an event (heartbeats skipped)."""
        while True:
            block = self.next()
            if block["event"]:
                return block

    def close(self):
        self.conn.close()


class HttpTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, sessions):
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}).register(self).start()

    def start_daemon(self, sim, ids=(), http=None, watch=None, start=True, extra=None):
        self.port = swtest.free_port()
        sections = {
            "api": {"rate-limit": "off", "app-url": "https://app.example.test"},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL},
            "journal": {"enable": False},
            "http": {"listen": f"127.0.0.1:{self.port}", **(http or {})},
        }
        if watch:
            sections["watch"] = watch
        for name, keys in (extra or {}).items():
            sections.setdefault(name, {}).update(keys)
        config = swtest.Daemon.basic_config(sim.url, sessions=ids, extra=sections)
        daemon = swtest.Daemon(self.tmp, config).register(self)
        if start:
            daemon.start()
            daemon.wait_control()
        return daemon

    def get(self, path, headers=None):
        return swtest.http_request("GET", f"http://127.0.0.1:{self.port}{path}", headers=headers)

    def get_json(self, path, status=200):
        response = self.get(path)
        self.assertEqual(response.status, status, f"{path}: {response.text}")
        self.assertEqual(response.headers.get("Content-Type"), "application/json")
        return response.json()

    def wait_json(self, path, predicate, message, timeout=20):
        def check():
            body = self.get_json(path)
            return body if predicate(body) else None
        return swtest.wait_until(check, timeout=timeout, message=message)

    def wait_statuses(self, expected):
        """Until /api/v1/sessions shows each id with its status."""
        def check():
            got = {s["id"]: s["status"] for s in self.get_json("/api/v1/sessions?limit=1000")["sessions"]}
            return got if all(got.get(k) == v for k, v in expected.items()) else None
        return swtest.wait_until(check, timeout=20, message=f"the API never showed {expected}")

    def metric(self, name):
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    # -- tests -----------------------------------------------------------------

    def test_every_endpoint_with_its_fields_and_headers(self):
        sim = self.start_sim([
            swtest.sim_session("ses_fail", [(0, "Active"), (1, "Failed")], name="Deploy <prod>",
                               runbook_id="rbk_deploy"),
            swtest.sim_session("ses_wait", [(0, "Waiting")], name="Approve", runbook_id="rbk_deploy"),
            swtest.sim_session("ses_run", [(0, "Active")], name="Backup", runbook_id="rbk_backup"),
            swtest.sim_session("ses_done", [(0, "Succeeded")], name="Report", runbook_id="rbk_backup"),
        ])
        ids = ["ses_fail", "ses_wait", "ses_run", "ses_done"]
        daemon = self.start_daemon(sim, ids)
        self.wait_statuses({"ses_fail": "Failed", "ses_wait": "Waiting", "ses_run": "Active",
                            "ses_done": "Succeeded"})

        # The status: what `sessionwatchctl status --json` says, and the app's address.
        status = self.get_json("/api/v1/status")
        ctl = daemon.ctl("status", json_output=True)
        self.assertEqual(ctl.returncode, 0, ctl.stderr)
        ctl_status = json.loads(ctl.stdout)
        self.assertEqual(set(status) - {"appUrl"}, set(ctl_status) - {"ok"})
        self.assertEqual(status["appUrl"], "https://app.example.test")
        self.assertEqual(status["sessions"]["watched"], 4)
        self.assertEqual(status["sessions"]["byStatus"]["Failed"], 1)
        self.assertEqual(status["sessions"]["byStatus"]["Waiting"], 1)
        self.assertEqual(status["pid"], daemon.pid)

        # The list: failures first, then waiting sessions, then the latest change first.
        page = self.get_json("/api/v1/sessions")
        self.assertEqual([s["id"] for s in page["sessions"]][:2], ["ses_fail", "ses_wait"])
        self.assertEqual(page["matched"], 4)
        self.assertIsNone(page["next"])
        rest = page["sessions"][2:]
        self.assertEqual(sorted(s["id"] for s in rest), ["ses_done", "ses_run"])
        self.assertGreaterEqual(rest[0]["changedAt"], rest[1]["changedAt"])
        failed = page["sessions"][0]
        self.assertEqual(failed["name"], "Deploy <prod>")
        self.assertEqual(failed["runbook"], "rbk_deploy")
        self.assertEqual(failed["status"], "Failed")
        self.assertEqual(failed["previousStatus"], "Active")
        self.assertRegex(failed["updatedAt"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        self.assertEqual(failed["changedAt"], failed["updatedAt"])
        self.assertIs(failed["stalled"], False)
        self.assertIs(failed["gone"], False)
        self.assertEqual(failed["url"], "https://app.example.test/sessions/ses_fail")

        # Filters.
        def ids_of(query):
            return sorted(s["id"] for s in self.get_json("/api/v1/sessions?" + query)["sessions"])
        self.assertEqual(ids_of("status=Failed,Waiting"), ["ses_fail", "ses_wait"])
        self.assertEqual(ids_of("status=Succeeded"), ["ses_done"])
        self.assertEqual(ids_of("runbook=rbk_backup"), ["ses_done", "ses_run"])
        self.assertEqual(ids_of("runbook=rbk_never_seen"), [])
        self.assertEqual(ids_of("q=BACK"), ["ses_done", "ses_run"])  # runbook id, any case
        self.assertEqual(ids_of("q=" + urllib.parse.quote("<prod>")), ["ses_fail"])  # name
        self.assertEqual(ids_of("q=s_wa"), ["ses_wait"])  # id
        self.assertEqual(ids_of("status=Active&runbook=rbk_backup&q=ses"), ["ses_run"])

        # One session with its events, oldest first.
        one = self.get_json("/api/v1/sessions/ses_fail")
        self.assertEqual(one["session"]["id"], "ses_fail")
        types = [e["type"] for e in one["events"]]
        self.assertEqual(types[-1], "sessionwatch.session.failed")
        self.assertTrue(all(e["subject"] == "ses_fail" for e in one["events"]))
        self.assertEqual([e["sequence"] for e in one["events"]], sorted(e["sequence"] for e in one["events"]))
        self.assertEqual(self.get_json("/api/v1/sessions/ses_nobody", status=404)["error"], "not-found")
        self.assertEqual(self.get_json("/api/v1/sessions/not%20an%20id", status=400)["error"], "bad-request")

        # The page's files, and the headers on every answer.
        for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"), ("/app.css", "text/css"),
                           ("/metrics", "text/plain"), ("/api/v1/status", "application/json"),
                           ("/nowhere", "application/json")):
            response = self.get(path)
            self.assertEqual(response.status, 404 if path == "/nowhere" else 200, path)
            self.assertTrue(response.headers.get("Content-Type", "").startswith(kind), path)
            for name, want in SECURITY_HEADERS.items():
                self.assertEqual(response.headers.get(name), want, f"{name} on {path}")
            self.assertFalse([h for h in response.headers if h.lower().startswith("access-control-")],
                             f"a CORS header on {path}")
        self.assertIn(b"<html", self.get("/").body)

        # Only GET and HEAD.
        response = swtest.http_request("POST", f"http://127.0.0.1:{self.port}/api/v1/status", body=b"{}")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.json()["error"], "method-not-allowed")
        self.assertEqual(response.headers.get("Allow"), "GET, HEAD")
        head = swtest.http_request("HEAD", f"http://127.0.0.1:{self.port}/api/v1/status")
        self.assertEqual((head.status, head.body), (200, b""))
        daemon.stop()

    def test_bad_parameters_get_400_with_a_json_error(self):
        sim = self.start_sim([swtest.sim_session("ses_a", [(0, "Active")])])
        daemon = self.start_daemon(sim, ["ses_a"])
        for query, words in (
            ("status=Running", "status names"),
            ("status=", "empty"),
            ("status=Failed,", "comma"),
            ("limit=0", "'limit'"),
            ("limit=1001", "'limit'"),
            ("limit=ten", "'limit'"),
            ("limit=5x", "'limit'"),
            ("after=bogus", "'after'"),
            ("after=3.100.ses_a", "'after'"),
            ("after=1.-5.ses_a", "'after'"),
            ("after=1.5.not%20an%20id", "'after'"),
            ("q=" + "x" * 201, "'q'"),
            ("sort=name", "Unknown parameter 'sort'"),
        ):
            response = self.get("/api/v1/sessions?" + query)
            self.assertEqual(response.status, 400, query)
            body = response.json()
            self.assertEqual(body["error"], "bad-request", query)
            self.assertIn(words, body["message"], query)
        response = self.get("/api/v1/events?since=yesterday")
        self.assertEqual(response.status, 400)
        self.assertEqual(response.json()["error"], "bad-request")
        daemon.stop()

    def test_ten_thousand_sessions_page_through_each_once_in_order(self):
        n = 10000
        sessions = [swtest.sim_session(f"ses_{k:05d}", [(0, "Failed" if k % 7 == 0 else "Active")],
                                       runbook_id=f"rbk_{k % 3}") for k in range(n)]
        sim = self.start_sim(sessions)
        self.start_daemon(sim, watch={"all": True, "discover-interval": "1s", "backfill": True})
        self.wait_json("/api/v1/status", lambda s: s["sessions"]["watched"] == n and s["sessions"]["unseen"] == 0,
                       f"the daemon never watched all {n} sessions", timeout=60)

        def walk(limit, query=""):
            seen, after, pages = [], None, 0
            while True:
                q = f"?limit={limit}{query}" + (f"&after={urllib.parse.quote(after)}" if after else "")
                page = self.get_json("/api/v1/sessions" + q)
                self.assertLessEqual(len(page["sessions"]), limit)
                seen += page["sessions"]
                pages += 1
                after = page["next"]
                if after is None:
                    return seen, pages, page["matched"]

        seen, pages, matched = walk(1000)
        ids = [s["id"] for s in seen]
        self.assertEqual(matched, n)
        self.assertEqual(len(ids), n)
        self.assertEqual(len(set(ids)), n, "a session came twice")
        self.assertEqual(pages, 10)
        # Failures first, then by last change (newest first), then by id.
        failed = n // 7 + 1
        self.assertEqual({s["status"] for s in seen[:failed]}, {"Failed"})
        self.assertEqual({s["status"] for s in seen[failed:]}, {"Active"})
        for part in (seen[:failed], seen[failed:]):
            keys = [(-_ts(s["changedAt"] or s["updatedAt"]), s["id"]) for s in part]
            self.assertEqual(keys, sorted(keys))

        small, pages, _ = walk(333, "&runbook=rbk_1")
        self.assertEqual([s["id"] for s in small], [s["id"] for s in seen if s["runbook"] == "rbk_1"])
        self.assertEqual(pages, -(-len(small) // 333))

    def test_the_event_stream_resumes_after_the_last_event_id(self):
        sim = self.start_sim([swtest.sim_session(f"ses_{k}", [(0, "Active")]) for k in range(3)])
        self.start_daemon(sim, [f"ses_{k}" for k in range(3)])
        self.wait_statuses({f"ses_{k}": "Active" for k in range(3)})

        client = SseClient(self.port)
        self.assertEqual(client.response.status, 200)
        self.assertEqual(client.response.headers["Content-Type"], "text/event-stream; charset=utf-8")
        for name, want in SECURITY_HEADERS.items():
            self.assertEqual(client.response.headers.get(name), want)
        hello = client.next()
        self.assertEqual(hello["event"], "sessionwatch.stream.live")
        self.assertIs(hello["data"]["resumed"], False)
        start = hello["data"]["sequence"]

        sim.set_status("ses_0", "Waiting")
        event = client.next_event()
        self.assertEqual(event["event"], "sessionwatch.session.waiting")
        self.assertEqual(int(event["id"]), start + 1)
        self.assertEqual(event["data"]["sequence"], start + 1)
        self.assertEqual(event["data"]["subject"], "ses_0")
        self.assertEqual(event["data"]["data"]["previousStatus"], "Active")
        client.close()

        # Missed while away: two changes, in order.
        sim.set_status("ses_1", "Waiting")
        self.wait_statuses({"ses_1": "Waiting"})
        sim.set_status("ses_2", "Succeeded")
        self.wait_statuses({"ses_2": "Succeeded"})
        client = SseClient(self.port, headers={"Last-Event-ID": event["id"]})
        hello = client.next()
        self.assertEqual(hello["data"], {"sequence": start + 1, "resumed": True})
        missed = [client.next_event(), client.next_event()]
        self.assertEqual([(e["data"]["subject"], e["event"]) for e in missed],
                         [("ses_1", "sessionwatch.session.waiting"), ("ses_2", "sessionwatch.session.succeeded")])
        self.assertEqual([int(e["id"]) for e in missed], [start + 2, start + 3])
        # Then live again.
        sim.set_status("ses_0", "Active")
        live = client.next_event()
        self.assertEqual((live["data"]["subject"], int(live["id"])), ("ses_0", start + 4))
        client.close()

        # ?since= says the same; an id from before the ring (or another run)
        # starts over and says so.
        client = SseClient(self.port, path=f"/api/v1/events?since={start + 3}")
        self.assertEqual(client.next()["data"], {"sequence": start + 3, "resumed": True})
        self.assertEqual(int(client.next_event()["id"]), start + 4)
        client.close()
        for stale in ("1", "junk"):
            client = SseClient(self.port, headers={"Last-Event-ID": stale})
            self.assertEqual(client.next()["data"], {"sequence": start + 4, "resumed": False})
            client.close()

    def test_heartbeats_and_the_stream_limit(self):
        sim = self.start_sim([swtest.sim_session("ses_a", [(0, "Active")])])
        self.start_daemon(sim, ["ses_a"], http={"heartbeat": "200ms", "max-event-streams": "2"})
        first, second = SseClient(self.port), SseClient(self.port)
        self.assertEqual(first.next()["event"], "sessionwatch.stream.live")
        self.assertEqual(second.next()["event"], "sessionwatch.stream.live")
        while True:  # events may come first
            beat = first.next()
            if beat["comment"] is not None:
                break
        self.assertEqual((beat["comment"], beat["event"]), ("heartbeat", None))
        swtest.wait_until(lambda: self.metric("sessionwatch_http_event_streams") == 2, timeout=10)

        third = self.get("/api/v1/events")
        self.assertEqual(third.status, 503)
        self.assertEqual(third.json()["error"], "busy")
        self.assertEqual(self.metric("sessionwatch_http_event_streams_refused_total"), 1)

        # A client that leaves frees its place (seen at its next heartbeat).
        second.close()
        swtest.wait_until(lambda: self.metric("sessionwatch_http_event_streams") == 1, timeout=10,
                          message="the closed stream was never let go")
        again = SseClient(self.port)
        self.assertEqual(again.next()["event"], "sessionwatch.stream.live")
        first.close()
        again.close()

    def test_a_client_that_never_reads_is_cut_off_while_polling_goes_on(self):
        ids = [f"ses_{k:02d}" for k in range(40)]
        sim = self.start_sim([swtest.sim_session(i, [(0, "Active")]) for i in ids])
        self.start_daemon(sim, ids, http={"client-buffer": "256k"})
        self.wait_statuses({i: "Active" for i in ids})

        # The sleeper asks for the stream with a small window and never reads.
        sleeper = socket.socket()
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.connect(("127.0.0.1", self.port))
        sleeper.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: test\r\n\r\n")
        self.addCleanup(sleeper.close)
        reader = SseClient(self.port)
        self.assertEqual(reader.next()["event"], "sessionwatch.stream.live")
        swtest.wait_until(lambda: self.metric("sessionwatch_http_event_streams") == 2, timeout=10)

        flips, received = 0, 0
        statuses = ("Waiting", "Active")

        def cut():
            nonlocal flips, received
            if self.metric("sessionwatch_http_event_stream_overflows_total") >= 1:
                return True
            for i in ids:
                sim.set_status(i, statuses[flips % 2])
            flips += 1
            # The reader keeps up: each change reaches it.
            for _ in ids:
                reader.next_event()
                received += 1
            return False
        swtest.wait_until(cut, timeout=60, interval=0, message="the client that never reads was not cut off")
        self.assertEqual(self.metric("sessionwatch_http_event_streams"), 1)

        # Polling and the reader go on.
        sim.set_status("ses_00", "Cancelling")
        while True:
            event = reader.next_event()
            if event["data"]["subject"] == "ses_00" and event["data"]["data"]["status"] == "Cancelling":
                break
        self.wait_statuses({"ses_00": "Cancelling"})
        reader.close()
        # The sleeper's connection is closed by the daemon.
        sleeper.settimeout(swtest.scaled(10))
        data = b""
        while True:
            chunk = sleeper.recv(65536)
            if not chunk:
                break
            data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:40])

    def test_metrics_listen_is_the_old_spelling(self):
        sim = self.start_sim([swtest.sim_session("ses_a", [(0, "Active")])])
        port = swtest.free_port()
        config = swtest.Daemon.basic_config(sim.url, sessions=["ses_a"], extra={
            "journal": {"enable": False}, "metrics": {"listen": f"127.0.0.1:{port}"}})
        daemon = swtest.Daemon(self.tmp, config).register(self)
        daemon.start()
        daemon.wait_control()
        self.assertEqual(swtest.http_get(f"http://127.0.0.1:{port}/metrics").status, 200)
        self.assertEqual(swtest.http_get(f"http://127.0.0.1:{port}/api/v1/status").status, 200)
        warnings = [line for line in daemon.stderr_lines() if "deprecated" in line]
        self.assertEqual(len(warnings), 1, daemon.stderr_text())
        self.assertRegex(warnings[0], r"\.conf:\d+: 'listen' in section '\[metrics\]' is deprecated")
        daemon.stop()

        # Both spellings at once: which one is meant is not guessed.
        config["http"] = {"listen": f"127.0.0.1:{port}"}
        both = swtest.Daemon(self.tmp, config, name="both")
        done = subprocess.run([swtest.binary_path("SW_DAEMON"), "--check-config", "--config", both.config_path],
                              capture_output=True, text=True, timeout=swtest.scaled(30))
        self.assertNotEqual(done.returncode, 0)
        self.assertRegex(done.stderr, r"both\.conf:\d+: .*'listen' in section '\[metrics\]' is the old spelling")


def _ts(text):
    """RFC 3339 UTC with optional fraction, as µs since the epoch."""
    whole, _, frac = text.rstrip("Z").partition(".")
    base = time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return int(base) * 1000000 + int((frac + "000000")[:6])


if __name__ == "__main__":
    unittest.main()
