"""The poll engine against apisim: every transition, once, in order; faults.

sessionwatchd polls scripted sessions in apisim and prints its events
(--print-events=json). The tests compare the event stream with what apisim
says really happened (/_sim/history) and what it saw the daemon do
(/_sim/counters): every transition appears exactly once and in order, faults
never stop polling nor invent events, a 429 holds every request until
Retry-After has passed, terminal and gone sessions are not polled again, a
rejected key is reported once and holds requests, SIGTERM stops cleanly with
requests in flight, and the key appears in no output.
"""

import datetime
import random
import re
import signal
import subprocess
import time
import unittest
import uuid

import swtest

KEY = f"swpoll-SECRET-{uuid.uuid4().hex}"
KNOWN = {"Pending", "Active", "Waiting", "Succeeded", "Failed", "Cancelling", "Cancelled"}
TERMINAL = {"Succeeded", "Failed", "Cancelled"}
EVENT_ID = re.compile(r"^evt_[0-9a-f]{32}$")
INTERVAL = "50ms"


def event_type_for(status):
    return "sessionwatch.session." + (status.lower() if status in KNOWN else "unknown")


def parse_api_time(text):
    """Airplane's '2022-01-11 22:32:45.601486+00' as Unix seconds."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(\.\d+)?\+00", text)
    if not m:
        raise AssertionError(f"not an API timestamp: {text!r}")
    base = datetime.datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S")
    base = base.replace(tzinfo=datetime.timezone.utc).timestamp()
    return base + (float(m.group(3)) if m.group(3) else 0.0)


def fault_rules(sim):
    """The fault rules apisim still holds."""
    return sim.faults()["faults"]


class PollTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.daemons = []

    def tearDown(self):
        # The key is in no output of any daemon of the test, whatever it did.
        for daemon in self.daemons:
            for name, text in (("stdout", daemon.stdout_text()), ("stderr", daemon.stderr_text())):
                self.assertNotIn(KEY, text, f"{daemon.name} printed the API key on {name}")
                self.assertNotIn(KEY[-16:], text, f"{daemon.name} printed part of the API key on {name}")

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, sessions, extra_args=(), name="apisim"):
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}, key=KEY, extra_args=extra_args,
                             name=name).register(self).start()

    def start_daemon(self, url, ids, api=None, poll=None, key=KEY, name="sessionwatchd", env=None):
        config = {
            "api": {"url": url, "key-file": "@KEY_FILE@", "rate-limit": "off", "timeout": "10s",
                    **(api or {})},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL, "mode": "get", **(poll or {})},
            "watch": {"session": list(ids)},
            "journal": {"enable": False},
        }
        daemon = swtest.Daemon(self.tmp, config, api_key=key, print_events=True, name=name, env=env)
        daemon.register(self)
        self.daemons.append(daemon)
        return daemon.start()

    @staticmethod
    def by_subject(events):
        out = {}
        for event in events:
            out.setdefault(event["subject"], []).append(event)
        return out

    def count(self, sim, session):
        return sim.counters(session=session, times=False)["sessions"].get(session, {}).get("count", 0)

    def counts(self, sim):
        return {sid: c["count"] for sid, c in sim.counters(times=False)["sessions"].items()}

    def wait_first_events(self, daemon, ids, timeout=15):
        ids = set(ids)
        daemon.wait_for_events(lambda e: e["subject"] in ids and e["data"]["previousStatus"] is None,
                               count=len(ids), timeout=timeout)

    def wait_polls(self, sim, session, more, timeout=15):
        """Wait until apisim has seen `more` further gets of `session`."""
        start = self.count(sim, session)
        swtest.wait_until(lambda: self.count(sim, session) >= start + more, timeout=timeout,
                          message=f"{session} was not polled {more} more times")

    def assert_event_shape(self, event, session_id, status, previous):
        """One transition event: CloudEvents envelope and data."""
        self.assertEqual(event["specversion"], "1.0")
        self.assertRegex(event["id"], EVENT_ID)
        self.assertTrue(event["source"].startswith("sessionwatchd://"), event["source"])
        self.assertEqual(event["type"], event_type_for(status), event)
        self.assertEqual(event["subject"], session_id)
        self.assertEqual(event["datacontenttype"], "application/json")
        self.assertRegex(event["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        data = event["data"]
        self.assertEqual(data["status"], status, event)
        self.assertEqual(data["previousStatus"], previous, event)
        session = data["session"]
        self.assertEqual(session["id"], session_id)
        self.assertEqual(session["status"], status)

    def assert_stream_matches_history(self, events, history, session_id):
        """The session's events are exactly its history: same statuses, in
        order, previousStatus chained from null, updatedAt of each step."""
        steps = history[session_id]
        statuses = [status for _, status in steps]
        got = [e["data"]["status"] for e in events]
        self.assertEqual(got, statuses, f"{session_id}: events {got} but apisim history {statuses}")
        previous = None
        for event, (when, status) in zip(events, steps):
            self.assert_event_shape(event, session_id, status, previous)
            self.assertAlmostEqual(parse_api_time(event["data"]["session"]["updatedAt"]), when, delta=2e-6)
            previous = status

    # -- tests -----------------------------------------------------------------

    def test_every_transition_once_and_in_order(self):
        patterns = [
            ["Pending", "Active", "Succeeded"],
            ["Pending", "Active", "Failed"],
            ["Pending", "Active", "Waiting", "Active", "Succeeded"],
            ["Active", "Cancelling", "Cancelled"],
            ["Pending", "Active", "Paused", "Active", "Failed"],  # Paused: outside the enum
            ["Pending", "Waiting", "Cancelling", "Cancelled"],
        ]
        rng = random.Random(20261129)
        # Every session holds its first status until `lead`, time for the
        # daemon to start and see it; then steps of 0.4-1 s (8-20 intervals).
        lead = swtest.scaled(3.0)
        sessions, expected = [], {}
        for n in range(30):
            sid = f"ses{n:02d}poll{uuid.uuid4().hex[:8]}"
            statuses = patterns[n % len(patterns)]
            at, timeline = lead + rng.uniform(0, 0.5), [[0, statuses[0]]]
            for status in statuses[1:]:
                timeline.append([round(at, 3), status])
                at += swtest.scaled(rng.uniform(0.4, 1.0))
            sessions.append(swtest.sim_session(sid, timeline, name=f"Poll {n}", runbook_id=f"rbk{n % 3}",
                                               teamID="tea20220103zvy4auu"))
            expected[sid] = statuses
        sim = self.start_sim(sessions)
        daemon = self.start_daemon(sim.url, expected)

        self.wait_first_events(daemon, expected, timeout=3.0)
        history = sim.history()
        late = [sid for sid in expected if len(history[sid]) > 1]
        self.assertEqual(late, [], "the daemon started too late to see the first status")

        finals = {sid: statuses[-1] for sid, statuses in expected.items()}
        total = sum(len(s) for s in expected.values())
        daemon.wait_for_events(lambda e: finals.get(e["subject"]) == e["data"]["status"],
                               count=len(finals), timeout=25)
        events = daemon.events()
        history = sim.history()
        self.assertEqual(len(events), total, "not one event per step of the script")
        per_session = self.by_subject(events)
        self.assertEqual(set(per_session), set(expected))
        for sid, statuses in expected.items():
            with self.subTest(session=sid):
                self.assertEqual([s for _, s in history[sid]], statuses, "apisim did not play the script")
                self.assert_stream_matches_history(per_session[sid], history, sid)
                # data.session is the object as the API sent it.
                final = sim.api("GET", f"/sessions/get?id={sid}").json()
                self.assertEqual(per_session[sid][-1]["data"]["session"], final)
        ids = [e["id"] for e in events]
        self.assertEqual(len(set(ids)), len(ids), "two transitions share an event id")

        # The id is stable: a second daemon that first sees a session in its
        # final state gives that transition the same id.
        second = self.start_daemon(sim.url, expected, name="sessionwatchd-2")
        again = second.wait_for_events(count=len(expected), timeout=15)
        for event in again:
            sid = event["subject"]
            self.assertIsNone(event["data"]["previousStatus"])
            self.assertEqual(event["id"], per_session[sid][-1]["id"], sid)

    def test_faults_keep_polling_and_invent_nothing(self):
        kinds = ["500", "502", "503", "reset", "delay", "truncate", "invalid-json", "wrong-type", "huge",
                 "unknown-status"]
        ids = {kind: f"sesfault{re.sub('[^a-z0-9]', '', kind)}{uuid.uuid4().hex[:6]}" for kind in kinds}
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids.values()])
        daemon = self.start_daemon(sim.url, ids.values(), api={"timeout": "1s", "max-body": "256k"})
        self.wait_first_events(daemon, ids.values())

        # One fault each (more would pass the daemon's log rate limit of 10
        # poll errors per 10 s, which the diagnostics check below relies on),
        # two resets: libcurl retries a request whose reused connection dies
        # without an answer, on another connection, so a reset may never
        # reach the daemon; the two make it likelier that one does.
        counts = {kind: 2 if kind == "reset" else 1 for kind in kinds}
        for kind, sid in ids.items():
            sim.fault(kind, session=sid, count=counts[kind], delay_ms=4000 if kind == "delay" else None)
        swtest.wait_until(lambda: all(v >= counts[k] for k, v in sim.counters(times=False)["faults"].items()
                                      if k in ids),
                          timeout=20, message=lambda: f"not every fault fired: {sim.counters(times=False)}")
        self.assertEqual(fault_rules(sim), [], "fault rules left")
        # Polling goes on after each fault (past the error backoff).
        for kind, sid in ids.items():
            with self.subTest(kind=kind):
                self.wait_polls(sim, sid, 3)
        self.assertTrue(daemon.running)

        for sid in ids.values():
            sim.set_status(sid, "Succeeded")
        daemon.wait_for_events(lambda e: e["data"]["status"] == "Succeeded", count=len(ids), timeout=15)
        history = sim.history()
        per_session = self.by_subject(daemon.events())
        for kind, sid in ids.items():
            with self.subTest(kind=kind):
                events = per_session[sid]
                if kind == "unknown-status":
                    # A status outside the enum is news: reported as such,
                    # and the real status again after it.
                    got = [(e["type"], e["data"]["status"], e["data"]["previousStatus"]) for e in events]
                    self.assertEqual(got, [
                        ("sessionwatch.session.active", "Active", None),
                        ("sessionwatch.session.unknown", "Exploded", "Active"),
                        ("sessionwatch.session.active", "Active", "Exploded"),
                        ("sessionwatch.session.succeeded", "Succeeded", "Active"),
                    ])
                    for event in events:
                        self.assertRegex(event["id"], EVENT_ID)
                else:
                    self.assert_stream_matches_history(events, history, sid)

        # Each failure was reported with the session it concerns (a reset
        # may have been absorbed by libcurl's retry, and a truncated body may
        # pass the quick scan as "unchanged": neither is required to show).
        stderr = daemon.stderr_text()
        for kind in ("500", "502", "503", "delay", "huge", "invalid-json", "wrong-type"):
            with self.subTest(log=kind):
                self.assertIn(f"'{ids[kind]}'", stderr, f"no diagnostic for the {kind} fault")

    def test_429_holds_every_request_until_retry_after(self):
        ids = [f"ses429n{n}{uuid.uuid4().hex[:6]}" for n in range(6)]
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        daemon = self.start_daemon(sim.url, ids)
        self.wait_first_events(daemon, ids)
        retry_after = 2.0
        before = time.time()
        sim.fault("429", session=ids[0], retry_after=int(retry_after))
        swtest.wait_until(lambda: sim.counters(times=False)["faults"]["429"] >= 1, timeout=10,
                          message="the 429 was not served")
        # Wait until polling has resumed everywhere after the hold.
        swtest.wait_until(lambda: all(max(c["times"]) > before + retry_after + 0.2
                                      for c in sim.counters()["sessions"].values()),
                          timeout=15, message="polling did not resume after Retry-After")
        times = {sid: c["times"] for sid, c in sim.counters()["sessions"].items()}
        # The request that got the 429 is the first one of its session after
        # the rule went in that is followed by a long silence.
        mine = [t for t in times[ids[0]] if t >= before]
        gaps = [(b - a, a) for a, b in zip(mine, mine[1:]) if b - a > retry_after / 2]
        self.assertEqual(len(gaps), 1, f"expected one pause after the 429, got {gaps}")
        t429 = gaps[0][1]
        tolerance = swtest.scaled(0.05)
        window = (t429 + tolerance, t429 + retry_after - tolerance)
        inside = {sid: [t for t in ts if window[0] < t < window[1]] for sid, ts in times.items()}
        inside = {sid: ts for sid, ts in inside.items() if ts}
        self.assertEqual(inside, {}, f"requests during the Retry-After hold {window}")
        # And it resumed promptly: every session polled within a second of the end.
        for sid, ts in times.items():
            after = [t for t in ts if t >= window[1]]
            self.assertTrue(after, sid)
            self.assertLess(min(after), t429 + retry_after + swtest.scaled(1.0), sid)
        self.assertEqual(len(daemon.events()), len(ids), "events out of a 429")

    def test_terminal_sessions_are_not_polled_again(self):
        ends = {"Succeeded": None, "Failed": None, "Cancelled": None}
        for status in ends:
            ends[status] = f"sesterm{status.lower()}{uuid.uuid4().hex[:6]}"
        witness = f"seswitness{uuid.uuid4().hex[:6]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in [*ends.values(), witness]])
        daemon = self.start_daemon(sim.url, [*ends.values(), witness])
        self.wait_first_events(daemon, [*ends.values(), witness])
        for status, sid in ends.items():
            sim.set_status(sid, status)
        daemon.wait_for_events(lambda e: e["data"]["status"] in TERMINAL, count=len(ends))
        frozen = {sid: self.count(sim, sid) for sid in ends.values()}
        # Twenty intervals of a polled session later...
        self.wait_polls(sim, witness, 20)
        self.assertEqual({sid: self.count(sim, sid) for sid in ends.values()}, frozen,
                         "a terminal session was polled again")
        self.assertEqual(len(daemon.events()), 2 * len(ends) + 1)

    def test_session_gone_after_404(self):
        gone = f"sesgone{uuid.uuid4().hex[:8]}"
        witness = f"seswitness{uuid.uuid4().hex[:6]}"
        sim = self.start_sim([swtest.sim_session(gone, [[0, "Active"]], name="Goner"),
                              swtest.sim_session(witness, [[0, "Active"]])])
        daemon = self.start_daemon(sim.url, [gone, witness])
        self.wait_first_events(daemon, [gone, witness])
        # From now on apisim answers 404 for the session, as for one deleted.
        sim.reset_counters()
        sim.fault("404", probability=1.0, session=gone)
        event = daemon.wait_for_event(lambda e: e["type"] == "sessionwatch.session.gone", timeout=20)
        self.assertEqual(event["subject"], gone)
        self.assertRegex(event["id"], EVENT_ID)
        self.assertEqual(event["data"]["previousStatus"], "Active")
        self.assertIsNone(event["data"]["status"])
        self.assertEqual(event["data"]["session"], {"id": gone})
        # Gone takes two 404s at least an interval apart.
        counters = sim.counters(session=gone)
        served = counters["faults"]["404"]
        self.assertEqual(served, 2)
        times = counters["sessions"][gone]["times"]
        self.assertEqual(len(times), 2)
        self.assertGreaterEqual(times[1] - times[0], 0.05 - 0.005, "the two 404s came too close")
        self.assertIn("answered HTTP 404; asking again", daemon.stderr_text())
        self.wait_polls(sim, witness, 20)
        self.assertEqual(sim.counters(times=False)["faults"]["404"], served,
                         "the gone session was polled again")
        gones = [e for e in daemon.events() if e["type"] == "sessionwatch.session.gone"]
        self.assertEqual(len(gones), 1)
        self.assertEqual(len(daemon.events()), 3, "events beyond the two first ones and gone")

    def test_a_single_404_is_not_gone(self):
        """A proxy or a deploy answering 404 once makes no gone event."""
        flap = f"sesflap{uuid.uuid4().hex[:8]}"
        sim = self.start_sim([swtest.sim_session(flap, [[0, "Active"]])])
        daemon = self.start_daemon(sim.url, [flap])
        self.wait_first_events(daemon, [flap])
        sim.fault("404", count=1, session=flap)
        swtest.wait_until(lambda: sim.counters(times=False)["faults"]["404"] == 1, timeout=10,
                          message="the 404 was not served")
        # The confirmation answered 200, and polling goes on past it.
        self.wait_polls(sim, flap, 5)
        daemon.wait_for_stderr("answered HTTP 404; asking again", timeout=5)
        self.assertEqual([e for e in daemon.events() if e["type"] == "sessionwatch.session.gone"], [])
        self.assertEqual(len(daemon.events()), 1, "events beyond the first one")

    def test_rejected_key_is_said_once_and_holds_requests(self):
        ids = [f"seskey{n:02d}{uuid.uuid4().hex[:6]}" for n in range(30)]
        witness = f"seswitness{uuid.uuid4().hex[:6]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in [*ids, witness]])
        wrong_key = f"swpoll-WRONG-{uuid.uuid4().hex}"
        # A 1 ms interval sends the first polls all at once: many are in
        # flight when the first 401 comes back.
        daemon = self.start_daemon(sim.url, ids, key=wrong_key, poll={"interval": "1ms"},
                                   name="sessionwatchd-wrongkey")
        daemon.wait_for_stderr("rejected the key", timeout=15)
        # A daemon with the right key, as a clock: a second of its polls.
        clock = self.start_daemon(sim.url, [witness], name="sessionwatchd-clock")
        self.wait_first_events(clock, [witness])
        first = sim.counters(times=False)["requests"]["unauthorized"]
        self.assertGreaterEqual(first, 1)
        self.assertLessEqual(first, len(ids), "more rejected requests than sessions")
        self.wait_polls(sim, witness, 20)
        self.assertEqual(sim.counters(times=False)["requests"]["unauthorized"], first,
                         "requests went on after the key was rejected")
        key_lines = [line for line in daemon.stderr_lines() if "key" in line.lower()]
        self.assertEqual(len(key_lines), 1, key_lines)
        self.assertIn("key-file", key_lines[0])
        self.assertEqual(daemon.events(), [])
        self.assertTrue(daemon.running)
        self.assertNotIn(wrong_key, daemon.stderr_text() + daemon.stdout_text())

    def test_forbidden_session_holds_only_itself(self):
        private = f"sesprivate{uuid.uuid4().hex[:8]}"
        witness = f"seswitness{uuid.uuid4().hex[:6]}"
        sim = self.start_sim([swtest.sim_session(private, [[0, "Active"]]),
                              swtest.sim_session(witness, [[0, "Active"]])])
        sim.fault("403", probability=1.0, session=private)
        daemon = self.start_daemon(sim.url, [private, witness])
        daemon.wait_for_stderr("refuses access to session", timeout=15)
        # The other session keeps its pace: 40 polls at 50 ms, well before
        # any key-wide hold-off (30 s) could end.
        self.wait_polls(sim, witness, 40, timeout=10)
        text = daemon.stderr_text()
        self.assertEqual(text.count("refuses access"), 1, text)
        self.assertNotIn("rejected the key", text)
        self.assertEqual([e["subject"] for e in daemon.events()], [witness])

    def test_overlong_status_is_not_taken_in(self):
        sid = f"seslong{uuid.uuid4().hex[:8]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]])])
        daemon = self.start_daemon(sim.url, [sid])
        self.wait_first_events(daemon, [sid])
        sim.set_status(sid, "X" * 1100)
        daemon.wait_for_stderr("longer than 1024 bytes", timeout=15)
        self.wait_polls(sim, sid, 1)
        sim.set_status(sid, "Failed")
        daemon.wait_for_event(lambda e: e["data"]["status"] == "Failed", timeout=15)
        self.assertEqual([e["data"]["status"] for e in daemon.events()], ["Active", "Failed"])

    def test_stalled_stdout_reader_does_not_stop_polling(self):
        ids = [f"sespipe{n:03d}{uuid.uuid4().hex[:6]}" for n in range(200)]
        witness = ids[0]
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        config = {
            "api": {"url": sim.url, "key-file": "@KEY_FILE@", "rate-limit": "off"},
            "poll": {"interval": INTERVAL, "mode": "get"},
            "watch": {"session": ids},
            "journal": {"enable": False},
        }
        daemon = swtest.Daemon(self.tmp, config, api_key=KEY, name="sessionwatchd-pipe")
        # stdout is a pipe that nobody reads: 200 first observations (about
        # 180 KB of JSON) overfill its 64 KiB at once.
        proc = subprocess.Popen([swtest.binary_path("SW_DAEMON"), "--config", daemon.config_path,
                                 "--print-events=json"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=swtest.child_env())
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        swtest.wait_until(lambda: self.count(sim, ids[-1]) > 0, timeout=15, message="not every session polled")
        self.wait_polls(sim, witness, 40, timeout=15)
        self.assertIsNone(proc.poll(), "the daemon died")
        proc.terminate()
        try:
            proc.wait(timeout=swtest.scaled(10))
        finally:
            proc.stdout.close()
        self.assertEqual(proc.returncode, 0)

    def test_proxy_from_the_environment(self):
        sid = f"sesproxy{uuid.uuid4().hex[:8]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]])])
        # A proxy address where nothing listens: a daemon that uses it
        # cannot reach apisim at all.
        dead_proxy = f"http://127.0.0.1:{swtest.free_port()}"
        proxied = self.start_daemon(sim.url, [sid], env={"http_proxy": dead_proxy, "no_proxy": None,
                                                         "NO_PROXY": None},
                                    name="sessionwatchd-proxied")
        proxied.wait_for_stderr("failed: network", timeout=15)
        self.assertEqual(self.count(sim, sid), 0, "requests bypassed the configured proxy")
        self.assertEqual(proxied.events(), [])
        # no_proxy exempts the API's host: polling works through the same
        # environment otherwise.
        exempt = self.start_daemon(sim.url, [sid], env={"http_proxy": dead_proxy, "no_proxy": "127.0.0.1"},
                                   name="sessionwatchd-no-proxy")
        self.wait_first_events(exempt, [sid])
        self.assertGreater(self.count(sim, sid), 0)

    def test_sigterm_with_requests_in_flight(self):
        ids = [f"sesterm{n}{uuid.uuid4().hex[:6]}" for n in range(4)]
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        daemon = self.start_daemon(sim.url, ids, api={"timeout": "60s"})
        self.wait_first_events(daemon, ids)
        sim.fault("delay", probability=1.0, delay_ms=60000, endpoint="get")
        # Every session has a request suspended in apisim.
        swtest.wait_until(lambda: sim.counters(times=False)["faults"]["delay"] >= len(ids), timeout=10,
                          message="the requests were not delayed")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        swtest.assert_exit(daemon.wait(timeout=10), swtest.EXIT_OK, daemon)
        self.assertLess(time.monotonic() - started, swtest.scaled(6.0), "the stop took too long")
        self.assertIn("Received Terminated", daemon.stderr_text())
        self.assertEqual(len(daemon.events()), len(ids))


if __name__ == "__main__":
    unittest.main()
