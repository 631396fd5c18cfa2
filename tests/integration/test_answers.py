"""How sessionwatchd reports answers that are not plain news.

The daemon polls and sweeps apisim (or a TLS listener on loopback) and the
tests check what it says about them:

* a TLS failure (an https:// URL at a plain-HTTP server, a self-signed
  certificate) is the outcome `tls`, in the poll and list log lines and in
  `sessionwatch_polls_total{outcome="tls"}`, not `network`;
* a rate-limited log line says how many lines it held back only when it held
  some back: the first lines have no "(… suppressed)" suffix, the first one
  after the limit says how many;
* an answer older than what the daemon knows, with another status (the API's
  clock went backwards), is dropped, logged and counted in
  `sessionwatch_stale_answers_total`;
* two changes inside one poll interval make one event, marked
  `data.skipped: true` when the pair of statuses shows a step was missed;
* a 401 on a list request holds every request, polls included, and they
  resume once the hold-off has passed.
"""

import os
import re
import socket
import ssl
import subprocess
import threading
import time
import unittest
import uuid

import swtest

KEY = f"swanswers-SECRET-{uuid.uuid4().hex}"
INTERVAL = "50ms"
def time_now():
    return time.time()


SUFFIX = re.compile(r"\((\d+) similar messages? suppressed\)")


def metric(text, name, **labels):
    """The value of one sample of the Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if labels:
            m = re.fullmatch(re.escape(name) + r"\{(.*)\}", series)
            if m and ",".join(sorted(m.group(1).split(","))) == want:
                return float(value)
        elif series == name:
            return float(value)
    return None


class TlsListener:
    """A TLS server on loopback with a throwaway self-signed certificate,
    made with `openssl req`; it completes no handshake a verifying client
    accepts, and counts the connections it took."""

    def __init__(self, tmp):
        self.cert = os.path.join(tmp.root, "self-signed.pem")
        self.key = os.path.join(tmp.root, "self-signed.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-keyout", self.key, "-out", self.cert],
                       check=True, capture_output=True, timeout=swtest.scaled(30))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert, self.key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closing = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def close(self):
        self.closing = True
        self.sock.close()


class AnswersTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)

    def start_sim(self, sessions, name="apisim"):
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}, key=KEY, name=name).register(self).start()

    def start_daemon(self, url, ids=(), runbooks=(), poll=None, name="sessionwatchd", log_level=None, tmp=None):
        config = swtest.Daemon.basic_config(url, sessions=ids, runbooks=runbooks, extra={
            "api": {"rate-limit": "off", "timeout": "5s"},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL, "mode": "get", **(poll or {})},
            "watch": {"discover-interval": INTERVAL},
            "journal": {"enable": False},
        })
        extra = ("--log-level", log_level) if log_level else ()
        daemon = swtest.Daemon(tmp or self.tmp, config, api_key=KEY, print_events=True, name=name,
                               extra_args=extra).register(self).start()
        daemon.wait_control()
        return daemon

    def metrics(self, daemon):
        done = daemon.ctl("metrics")
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout

    def wait_metric(self, daemon, name, at_least, **labels):
        return swtest.wait_until(
            lambda: (v := metric(self.metrics(daemon), name, **labels)) is not None and v >= at_least and v,
            timeout=15, message=lambda: f"{name}{labels} did not reach {at_least}:\n{self.metrics(daemon)}")

    def count(self, sim, session):
        return sim.counters(session=session, times=False)["sessions"].get(session, {}).get("count", 0)

    # -- TLS -------------------------------------------------------------------

    def assert_tls_outcome(self, daemon):
        self.wait_metric(daemon, "sessionwatch_polls_total", 2, outcome="tls")
        text = self.metrics(daemon)
        self.assertEqual(metric(text, "sessionwatch_polls_total", outcome="network"), 0, text)
        self.assertEqual(metric(text, "sessionwatch_polls_total", outcome="ok"), 0, text)
        daemon.wait_for_stderr(lambda line: "Polling session" in line and "failed: tls (" in line, timeout=15)
        daemon.wait_for_stderr(lambda line: "Listing the sessions of" in line and "failed: tls (" in line,
                               timeout=15)
        status = daemon.ctl_json("status")
        self.assertGreaterEqual(status["polls"]["tls"], 2)
        self.assertEqual(status["polls"]["network"], 0)
        self.assertNotIn("failed: network", daemon.stderr_text())
        self.assertEqual(daemon.events(), [])

    def test_https_at_plain_http_is_tls(self):
        sid = f"sestls{uuid.uuid4().hex[:8]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]])])
        url = sim.url.replace("http://", "https://", 1)
        self.assertTrue(url.startswith("https://127.0.0.1:"), url)
        daemon = self.start_daemon(url, [sid], runbooks=["rbk_test"])
        self.assert_tls_outcome(daemon)
        # apisim saw no request it could answer: the handshake never ended.
        self.assertEqual(sim.counters(times=False)["requests"]["get"], 0)

    def test_self_signed_is_tls(self):
        listener = TlsListener(self.tmp)
        self.addCleanup(listener.close)
        daemon = self.start_daemon(f"https://127.0.0.1:{listener.port}/v0", ["sesselfsigned1"],
                                   runbooks=["rbk_test"])
        self.assert_tls_outcome(daemon)
        self.assertGreaterEqual(listener.connections, 1)
        self.assertIn("certificate", daemon.stderr_text())

    # -- rate-limited lines ----------------------------------------------------

    def test_suppressed_count_only_above_zero(self):
        ids = [f"sesrl{n:02d}{uuid.uuid4().hex[:6]}" for n in range(20)]
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        sim.fault("503", probability=1.0, endpoint="get")
        daemon = self.start_daemon(sim.url, ids)
        # The poll error limit lets 10 lines through per 10 s; 20 sessions
        # failing with backoff from 1 s go past it within the first window.
        swtest.wait_until(lambda: sim.counters(times=False)["faults"]["503"] >= 40, timeout=20,
                          message="apisim did not serve the 503s")

        def failures():
            return [line for line in daemon.stderr_lines(complete_only=True) if "Polling session" in line]

        swtest.wait_until(lambda: len(failures()) >= 10, timeout=15, message="fewer than 10 poll failures logged")
        first = failures()[:10]
        for line in first:
            self.assertIn("HTTP 503", line)
            self.assertNotIn("suppressed", line, line)
        # The next line comes once the 10 s window is over, and says how many
        # lines the limit held back meanwhile.
        later = swtest.wait_until(lambda: len(failures()) >= 11 and failures()[10], timeout=30,
                                  message="no poll failure logged after the first window")
        m = SUFFIX.search(later)
        self.assertIsNotNone(m, later)
        self.assertGreater(int(m.group(1)), 0, later)
        self.assertTrue(later.endswith("suppressed)."), later)
        self.assertNotIn("(0 similar", daemon.stderr_text())

    # -- an answer from the past -----------------------------------------------

    def sim_session_state(self, sim, sid):
        return next(s for s in sim.sessions()["sessions"] if s["id"] == sid)

    def test_older_answer_is_said_and_counted(self):
        sid = f"sesback{uuid.uuid4().hex[:8]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]])])
        daemon = self.start_daemon(sim.url, [sid])
        daemon.wait_for_event(lambda e: e["subject"] == sid and e["data"]["status"] == "Active", timeout=15)
        sim.set_status(sid, "Waiting")
        daemon.wait_for_event(lambda e: e["data"]["status"] == "Waiting", timeout=15)
        waiting = self.sim_session_state(sim, sid)
        # The API's clock goes backwards: Active again, dated 5 s before the
        # Waiting the daemon has seen.
        back = sim.admin("POST", "/_sim/status", {"id": sid, "status": "Active",
                                                  "updatedAt": waiting["updatedAtUnix"] - 5})
        self.assertEqual(back["status"], "Active")
        self.assertLess(self.sim_session_state(sim, sid)["updatedAtUnix"], waiting["updatedAtUnix"])
        line = daemon.wait_for_stderr(lambda line: "clock went backwards" in line, timeout=15)
        self.assertIn(f"'{sid}'", line)
        self.assertIn("answered 'Active' updated at ", line)
        self.assertIn("older than 'Waiting' updated at ", line)
        self.assertEqual(len(re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z", line)), 2, line)
        self.assertNotIn("suppressed", line)
        # Counted once per such answer; polls go on and every one is dropped.
        start = self.count(sim, sid)
        self.wait_metric(daemon, "sessionwatch_stale_answers_total", 3)
        self.assertGreaterEqual(self.count(sim, sid), start + 2)
        self.assertEqual([e["data"]["status"] for e in daemon.events()], ["Active", "Waiting"])
        self.assertEqual(daemon.ctl_json("list")["sessions"][0]["status"], "Waiting")
        # Once the API moves on past what is known, that is news again.
        sim.set_status(sid, "Failed")
        daemon.wait_for_event(lambda e: e["data"]["status"] == "Failed", timeout=15)
        self.assertEqual([e["data"]["previousStatus"] for e in daemon.events()], [None, "Active", "Waiting"])

    def test_apisim_refuses_future_updated_at(self):
        sid = f"sesfuture{uuid.uuid4().hex[:8]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]])])
        for bad in (time_now() + 3600, "yesterday", -1):
            with self.subTest(updated_at=bad):
                with self.assertRaises(swtest.ApiSimError) as caught:
                    sim.admin("POST", "/_sim/status", {"id": sid, "status": "Failed", "updatedAt": bad})
                self.assertIn("updatedAt", str(caught.exception))
        self.assertEqual(self.sim_session_state(sim, sid)["status"], "Active")

    # -- changes inside one interval -------------------------------------------

    def test_two_changes_in_one_interval_skipped(self):
        # Two steps at the same instant: the first is never visible, as when
        # both fall between two polls.
        at = 4
        cases = {
            f"sespw{uuid.uuid4().hex[:8]}": ("Pending", "Active", "Waiting", True),
            f"sesac{uuid.uuid4().hex[:8]}": ("Active", "Cancelling", "Cancelled", True),
            f"sesws{uuid.uuid4().hex[:8]}": ("Waiting", "Active", "Succeeded", True),
            # Waiting in between is invisible in Active -> Failed: not marked.
            f"seswf{uuid.uuid4().hex[:8]}": ("Active", "Waiting", "Failed", False),
        }
        normal = f"sesnormal{uuid.uuid4().hex[:8]}"
        sessions = [swtest.sim_session(sid, [[0, first], [at, middle], [at, last]])
                    for sid, (first, middle, last, _) in cases.items()]
        sessions.append(swtest.sim_session(normal, [[0, "Pending"], [at, "Active"], [at + 1, "Succeeded"]]))
        sim = self.start_sim(sessions)
        daemon = self.start_daemon(sim.url, [*cases, normal])
        first = daemon.wait_for_events(lambda e: e["data"]["previousStatus"] is None, count=len(cases) + 1,
                                       timeout=15)
        self.assertEqual({e["subject"]: e["data"]["status"] for e in first},
                         {**{sid: c[0] for sid, c in cases.items()}, normal: "Pending"},
                         "the daemon did not see every session before its double step")
        for e in first:
            self.assertNotIn("skipped", e["data"])
        daemon.wait_for_events(lambda e: e["data"]["previousStatus"] is not None, count=len(cases) + 2,
                               timeout=20)
        by = {}
        for e in daemon.events():
            by.setdefault(e["subject"], []).append(e)
        for sid, (first_status, middle, last, skipped) in cases.items():
            with self.subTest(session=sid, pair=f"{first_status} -> {middle} -> {last}"):
                # One event for the two changes, from the first status to the last.
                self.assertEqual([(e["data"]["previousStatus"], e["data"]["status"]) for e in by[sid]],
                                 [(None, first_status), (first_status, last)])
                change = by[sid][1]
                if skipped:
                    self.assertIs(change["data"].get("skipped"), True, change)
                else:
                    self.assertNotIn("skipped", change["data"])
        self.assertEqual([(e["data"]["previousStatus"], e["data"]["status"]) for e in by[normal]],
                         [(None, "Pending"), ("Pending", "Active"), ("Active", "Succeeded")])
        for e in by[normal]:
            self.assertNotIn("skipped", e["data"])

    # -- a rejected key on a list request ----------------------------------------

    def test_list_401_holds_polls_too(self):
        polled = [f"sespolled{n}{uuid.uuid4().hex[:6]}" for n in range(3)]
        listed = f"seslisted{uuid.uuid4().hex[:6]}"
        witness = f"seswitness{uuid.uuid4().hex[:6]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]], runbook_id="rbk_polled") for sid in polled]
                             + [swtest.sim_session(listed, [[0, "Active"]], runbook_id="rbk_listed"),
                                swtest.sim_session(witness, [[0, "Active"]], runbook_id="rbk_witness")])
        daemon = self.start_daemon(sim.url, polled, runbooks=["rbk_listed"])
        daemon.wait_for_events(lambda e: e["subject"] in {*polled, listed}, count=4, timeout=15)
        for sid in polled:
            start = self.count(sim, sid)
            swtest.wait_until(lambda: self.count(sim, sid) >= start + 2, timeout=15,
                              message=f"{sid} is not polled")
        sim.fault("401", endpoint="list")
        swtest.wait_until(lambda: sim.counters(times=False)["faults"]["401"] == 1, timeout=15,
                          message="the list request did not get its 401")
        daemon.wait_for_stderr("rejected the key", timeout=15)
        self.assertEqual(metric(self.metrics(daemon), "sessionwatch_api_paused"), 1)
        held = sim.counters(times=False)
        gets = {sid: self.count(sim, sid) for sid in polled}
        # A daemon with the right key, as a clock: a second of its polls.
        clock = self.start_daemon(sim.url, [witness], name="sessionwatchd-clock",
                                  tmp=swtest.temp_dirs(self, prefix="swclock-"))
        clock.wait_for_event(lambda e: e["subject"] == witness, timeout=15)
        start = self.count(sim, witness)
        swtest.wait_until(lambda: self.count(sim, witness) >= start + 20, timeout=15,
                          message="the clock daemon does not poll")
        now = sim.counters(times=False)
        self.assertEqual({sid: self.count(sim, sid) for sid in polled}, gets, "polls went on during the hold")
        self.assertEqual(now["lists"].get("rbk_listed", 0), held["lists"].get("rbk_listed", 0),
                         "list requests went on during the hold")
        key_lines = [line for line in daemon.stderr_lines() if "key" in line.lower()]
        self.assertEqual(len(key_lines), 1, key_lines)
        self.assertIn("key-file", key_lines[0])
        self.assertNotIn("Listing the sessions of", daemon.stderr_text())
        # The hold-off is 30 s: then polls and sweeps resume, and the daemon
        # says the key works again.
        for sid in polled:
            swtest.wait_until(lambda: self.count(sim, sid) > gets[sid], timeout=60,
                              message=f"{sid} was not polled again after the hold")
        swtest.wait_until(lambda: sim.counters(times=False)["lists"].get("rbk_listed", 0)
                          > held["lists"].get("rbk_listed", 0), timeout=15,
                          message="the runbook was not swept again after the hold")
        daemon.wait_for_stderr("accepts the key again", timeout=15)
        self.assertEqual(metric(self.metrics(daemon), "sessionwatch_api_paused"), 0)
        self.assertEqual(sim.counters(times=False)["faults"]["401"], 1)
        self.assertGreaterEqual(metric(self.metrics(daemon), "sessionwatch_discovery_list_failures_total"), 1)


if __name__ == "__main__":
    unittest.main()
