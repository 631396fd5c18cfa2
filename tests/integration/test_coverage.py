"""Change-driven polling against apisim: sweeps of /sessions/list cover the
sessions of their runbook, so the daemon's requests follow the rate of change.

Each test runs under every list order apisim can serve (updated-asc,
updated-desc, id, shuffled): the daemon makes no assumption about the order.
They check with apisim's per-session and per-runbook counters what the
daemon asked, and with its events what it announced:

- sessions listed by id, three of one runbook, become covered and get no GET
  any more, while a session of another runbook stays on GET; a change of a
  covered session is announced from a sweep; mode = get polls them all, mode
  = list covers even two;
- a burst of 200 changes in one runbook within one interval: every one
  announced once, in the order they happened;
- a change that reaches the list late (list-lag) is caught by the overlap;
  one the list never shows (list-miss) by the audit GET;
- a covered session answering 404 gets its confirmation by GET before it is
  gone;
- a restart resumes from the stored watermark: no repeats, no gaps;
- 3,000 running sessions under rate-limit = 20/s: every change announced,
  within the budget.
"""

import os
import random
import sys
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import swtest  # noqa: E402

KEY = f"swcov-{uuid.uuid4().hex}"
INTERVAL = "200ms"
ORDERS = ("updated-asc", "updated-desc", "id", "shuffled")


def new_id(prefix):
    return f"{prefix}{uuid.uuid4().hex[:10]}"


class CoverageBase:
    ORDER = None

    def setUp(self):
        if not swtest.have_binary("SW_APISIM") or not swtest.have_binary("SW_DAEMON"):
            self.fail("apisim or sessionwatchd is not built ($SW_APISIM, $SW_DAEMON)")
        self.tmp = swtest.temp_dirs(self)
        self.rbk_a = new_id("rbka")
        self.rbk_b = new_id("rbkb")

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, sessions=(), name="apisim", extra_args=()):
        return swtest.ApiSim(self.tmp, scenario={"sessions": list(sessions)}, key=KEY, name=name,
                             extra_args=["--list-order", self.ORDER, *extra_args]).register(self).start()

    def start_daemon(self, url, sessions=(), runbooks=(), poll=None, watch=None, api=None, state=True,
                     name="sessionwatchd"):
        config = swtest.Daemon.basic_config(url, sessions=sessions, runbooks=runbooks, extra={
            "api": {"rate-limit": "off", **(api or {})},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL, "audit-interval": "1h", **(poll or {})},
            "watch": {"discover-interval": INTERVAL, **(watch or {})},
            "journal": {"enable": False},
        })
        if not state:
            del config["state"]
        daemon = swtest.Daemon(self.tmp, config, api_key=KEY, print_events=True, name=name)
        daemon.register(self)
        daemon.start()
        daemon.wait_control()
        return daemon

    @staticmethod
    def session(sid, runbook, timeline, **extra):
        return swtest.sim_session(sid, timeline, runbook_id=runbook, **extra)

    @staticmethod
    def statuses(events, sid):
        return [e["data"]["status"] for e in events if e["subject"] == sid]

    @staticmethod
    def gets(sim, sid):
        return sim.counters(session=sid, times=False)["sessions"].get(sid, {}).get("count", 0)

    @staticmethod
    def lists(sim, runbook):
        return sim.counters(times=False).get("lists", {}).get(runbook, 0)

    @staticmethod
    def coverage(daemon):
        return daemon.request({"command": "status"})["coverage"]

    def wait_lists(self, sim, runbook, more, timeout=15):
        start = self.lists(sim, runbook)
        swtest.wait_until(lambda: self.lists(sim, runbook) >= start + more, timeout=timeout,
                          message=f"runbook {runbook} was not swept {more} more times")

    def wait_gets(self, sim, sid, more, timeout=15):
        start = self.gets(sim, sid)
        swtest.wait_until(lambda: self.gets(sim, sid) >= start + more, timeout=timeout,
                          message=f"{sid} was not polled {more} more times")

    def assert_history_announced_once(self, sim, daemons, ids):
        """Every transition apisim made of `ids` is announced exactly once
        (by id) across `daemons`' events, and nothing else is."""
        history = sim.history()
        events = [e for d in daemons for e in d.events() if e["subject"] in ids]
        for sid in ids:
            truth = [status for _, status in history.get(sid, [])]
            seen = self.statuses(events, sid)
            self.assertEqual(seen, truth, f"{sid}: announced {seen}, apisim did {truth}")
        ids_seen = [e["id"] for e in events]
        self.assertEqual(len(ids_seen), len(set(ids_seen)), "an event was announced twice")

    # -- the tests ---------------------------------------------------------------

    def test_sessions_of_one_runbook_become_covered_and_others_stay_on_get(self):
        covered = [new_id("sescov") for _ in range(4)]
        alone = new_id("sesalone")
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-5, "Active"]]) for sid in covered] +
                             [self.session(alone, self.rbk_b, [[-5, "Active"]])])
        daemon = self.start_daemon(sim.url, sessions=[*covered, alone])
        daemon.wait_for_events(lambda e: e["type"] == "sessionwatch.session.active", count=5)
        swtest.wait_until(lambda: self.coverage(daemon)["covered"] == 4, timeout=10,
                          message=lambda: f"not covered: {self.coverage(daemon)}")
        before = {sid: self.gets(sim, sid) for sid in covered}
        # Ten more intervals, measured by the GETs of the one left alone,
        # and sweeps of the runbook meanwhile: no GET of a covered session.
        self.wait_gets(sim, alone, 10)
        self.wait_lists(sim, self.rbk_a, 5)
        self.assertEqual({sid: self.gets(sim, sid) for sid in covered}, before,
                         "a covered session was polled by GET")
        self.assertEqual(self.lists(sim, self.rbk_b), 0, "the runbook of a single session was swept")
        # A change of a covered session comes from a sweep.
        sim.set_status(covered[2], "Failed")
        event = daemon.wait_for_event(lambda e: e["subject"] == covered[2] and e["data"]["status"] == "Failed")
        self.assertEqual(event["data"]["previousStatus"], "Active")
        self.assertEqual(self.gets(sim, covered[2]), before[covered[2]])
        cov = self.coverage(daemon)
        self.assertEqual(cov["mode"], "auto")
        self.assertGreater(cov["requests"]["sweep"], 0)
        self.assertGreater(cov["requests"]["poll"], 0)
        # Finished sessions leave the count: three running ones still pay.
        self.assertEqual(cov["covered"], 3)

    def test_mode_get_polls_every_session(self):
        ids = [new_id("sesget") for _ in range(4)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-5, "Active"]]) for sid in ids])
        daemon = self.start_daemon(sim.url, sessions=ids, poll={"mode": "get"})
        daemon.wait_for_events(count=4)
        for sid in ids:
            self.wait_gets(sim, sid, 5)
        self.assertEqual(self.lists(sim, self.rbk_a), 0)
        self.assertEqual(self.coverage(daemon)["covered"], 0)

    def test_mode_get_sweeps_only_to_discover(self):
        # A swept runbook in mode = get: its sessions are polled by GET
        # every interval, and the runbook is swept at discover-interval
        # (2 s), not at the interval (200 ms) as auto covers it.
        ids = [new_id("sesgetrb") for _ in range(3)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-5, "Active"]]) for sid in ids])
        daemon = self.start_daemon(sim.url, runbooks=[self.rbk_a], poll={"mode": "get"},
                                   watch={"discover-interval": "2s"})
        daemon.wait_for_events(count=3)
        lists = self.lists(sim, self.rbk_a)
        # 20 polls of one session take at least 19 intervals (3.8 s): two
        # sweeps at discover-interval, where auto would make about 20.
        self.wait_gets(sim, ids[0], 20, timeout=30)
        self.assertLessEqual(self.lists(sim, self.rbk_a) - lists, 6, "the runbook was swept at the interval")
        self.assertEqual(self.coverage(daemon)["covered"], 0)
        sim.set_status(ids[1], "Failed")
        daemon.wait_for_event(lambda e: e["subject"] == ids[1] and e["data"]["status"] == "Failed")

    def test_mode_list_covers_what_auto_would_poll(self):
        # Two sessions of one runbook: auto keeps them on GET (a sweep would
        # not be cheaper), list covers them anyway.
        ids = [new_id("seslist") for _ in range(2)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-5, "Active"]]) for sid in ids])
        auto = self.start_daemon(sim.url, sessions=ids, name="sessionwatchd-auto")
        auto.wait_for_events(count=2)
        for sid in ids:
            self.wait_gets(sim, sid, 5)
        self.assertEqual(self.coverage(auto)["covered"], 0)
        self.assertEqual(self.lists(sim, self.rbk_a), 0)
        auto.stop()
        daemon = self.start_daemon(sim.url, sessions=ids, poll={"mode": "list"}, state=False)
        daemon.wait_for_events(count=2)
        swtest.wait_until(lambda: self.coverage(daemon)["covered"] == 2, timeout=10,
                          message=lambda: f"not covered: {self.coverage(daemon)}")
        before = {sid: self.gets(sim, sid) for sid in ids}
        self.wait_lists(sim, self.rbk_a, 10)
        self.assertEqual({sid: self.gets(sim, sid) for sid in ids}, before)

    def test_burst_of_200_changes_announced_once_in_order(self):
        ids = [new_id("sesburst") for _ in range(200)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-30, "Active"]]) for sid in ids])
        daemon = self.start_daemon(sim.url, runbooks=[self.rbk_a])
        daemon.wait_for_events(lambda e: e["type"] == "sessionwatch.session.active", count=200, timeout=20)
        self.wait_lists(sim, self.rbk_a, 3)
        # 200 changes, faster than one interval on this machine's admin API
        # is not promised: they land within a few; each is announced once.
        order = ids[:]
        random.Random(7).shuffle(order)
        for sid in order:
            sim.set_status(sid, "Failed")
        daemon.wait_for_events(lambda e: e["type"] == "sessionwatch.session.failed", count=200, timeout=30)
        self.wait_lists(sim, self.rbk_a, 3)
        events = [e for e in daemon.events() if e["type"] == "sessionwatch.session.failed"]
        self.assertEqual(len(events), 200, "a change was announced twice")
        self.assertEqual({e["subject"] for e in events}, set(ids))
        # In the order they happened: apisim's updatedAt never goes back.
        stamps = [e["data"]["session"]["updatedAt"] for e in events]
        self.assertEqual(stamps, sorted(stamps), "the burst was announced out of order")
        self.assertEqual(sum(self.gets(sim, sid) for sid in ids), 0, "a covered session was polled by GET")
        self.assert_history_announced_once(sim, [daemon], set(ids))

    def test_list_lag_is_caught_by_the_overlap(self):
        ids = [new_id("seslag") for _ in range(3)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-30, "Active"]]) for sid in ids],
                             extra_args=["--list-lag", "1500"])
        daemon = self.start_daemon(sim.url, runbooks=[self.rbk_a], watch={"list-overlap": "4s"})
        daemon.wait_for_events(count=3, timeout=15)
        self.wait_lists(sim, self.rbk_a, 3)
        sim.set_status(ids[1], "Waiting")
        event = daemon.wait_for_event(lambda e: e["subject"] == ids[1] and e["data"]["status"] == "Waiting",
                                      timeout=15)
        self.assertEqual(event["data"]["previousStatus"], "Active")
        self.assertEqual(self.gets(sim, ids[1]), 0, "the change came from a GET, not from a sweep")

    def test_list_miss_is_caught_by_the_audit(self):
        ids = [new_id("sesmiss") for _ in range(3)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-30, "Active"]]) for sid in ids])
        daemon = self.start_daemon(sim.url, runbooks=[self.rbk_a], poll={"audit-interval": "2s"})
        daemon.wait_for_events(count=3, timeout=15)
        # From now on the list never shows ids[0]: only its audit can.
        sim.fault("list-miss", probability=1.0, session=ids[0])
        self.wait_lists(sim, self.rbk_a, 2)
        sim.set_status(ids[0], "Failed")
        event = daemon.wait_for_event(lambda e: e["subject"] == ids[0] and e["data"]["status"] == "Failed",
                                      timeout=15)
        self.assertEqual(event["data"]["previousStatus"], "Active")
        # The sweeps of the next moments would have listed it (the audit may
        # have come first).
        swtest.wait_until(lambda: sim.counters(times=False)["faults"]["list-miss"] > 0, timeout=10,
                          message="no list answer left the session out")
        self.assertGreaterEqual(self.gets(sim, ids[0]), 1)
        self.assertGreaterEqual(self.coverage(daemon)["requests"]["audit"], 1)

    def test_covered_404_is_confirmed_by_get(self):
        ids = [new_id("ses404") for _ in range(3)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-30, "Active"]]) for sid in ids])
        daemon = self.start_daemon(sim.url, runbooks=[self.rbk_a], poll={"audit-interval": "1s"})
        daemon.wait_for_events(count=3, timeout=15)
        sim.fault("404", probability=1.0, session=ids[2])
        event = daemon.wait_for_event(lambda e: e["type"] == "sessionwatch.session.gone", timeout=20)
        self.assertEqual(event["subject"], ids[2])
        self.assertEqual(sim.counters(times=False)["faults"]["404"], 2)
        self.assertGreaterEqual(self.coverage(daemon)["requests"]["confirm"], 1)

    def test_a_gone_session_listed_again_comes_back(self):
        ids = [new_id("sesback") for _ in range(3)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-30, "Active"]]) for sid in ids])
        daemon = self.start_daemon(sim.url, runbooks=[self.rbk_a], poll={"audit-interval": "1s"})
        daemon.wait_for_events(count=3, timeout=15)
        sim.fault("404", probability=1.0, session=ids[0])
        daemon.wait_for_event(lambda e: e["type"] == "sessionwatch.session.gone", timeout=20)
        # The 404s were not the end of it: it changes, a sweep lists it.
        sim.clear_faults()
        sim.set_status(ids[0], "Failed")
        event = daemon.wait_for_event(lambda e: e["subject"] == ids[0] and e["data"]["status"] == "Failed",
                                      timeout=15)
        self.assertEqual(event["data"]["previousStatus"], "Active")
        daemon.wait_for_stderr(lambda line: "is listed again" in line and ids[0] in line, timeout=5)
        listed = {s["id"]: s for s in daemon.ctl_json("list")["sessions"]}
        self.assertFalse(listed[ids[0]]["gone"])

    def test_restart_resumes_without_repeats_or_gaps(self):
        ids = [new_id("sesrst") for _ in range(6)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-30, "Pending"]]) for sid in ids])
        first = self.start_daemon(sim.url, runbooks=[self.rbk_a], watch={"backfill": "yes"})
        first.wait_for_events(count=6, timeout=15)
        for sid in ids[:3]:
            sim.set_status(sid, "Active")
        first.wait_for_events(lambda e: e["data"]["status"] == "Active", count=3, timeout=15)
        first.stop()
        # While it is down: more changes, one of them of a session changed
        # before too.
        sim.set_status(ids[0], "Succeeded")
        sim.set_status(ids[4], "Active")
        second = self.start_daemon(sim.url, runbooks=[self.rbk_a], watch={"backfill": "yes"},
                                   name="sessionwatchd-2")
        second.wait_for_events(count=2, timeout=15)
        sim.set_status(ids[5], "Failed")
        second.wait_for_event(lambda e: e["subject"] == ids[5], timeout=15)
        self.wait_lists(sim, self.rbk_a, 3)
        self.assert_history_announced_once(sim, [first, second], set(ids))

    def test_3000_running_sessions_under_20_requests_per_second(self):
        runbooks = [self.rbk_a, self.rbk_b, new_id("rbkc")]
        ids = [new_id("sesmany") for _ in range(3000)]
        sim = self.start_sim([self.session(sid, runbooks[n % 3], [[-60 + n * 0.01, "Active"]])
                              for n, sid in enumerate(ids)])
        daemon = self.start_daemon(sim.url, runbooks=runbooks, api={"rate-limit": "20/s"},
                                   poll={"interval": "1s", "waiting-interval": "1s"},
                                   watch={"discover-interval": "1s"})
        daemon.wait_for_events(count=3000, timeout=60)
        polls_before = self.coverage(daemon)["requests"]["poll"]
        sim.reset_counters()
        start = time.monotonic()
        changed = random.Random(3).sample(ids, 60)
        for sid in changed:
            sim.set_status(sid, "Waiting")
        daemon.wait_for_events(lambda e: e["type"] == "sessionwatch.session.waiting", count=60, timeout=30)
        counters = sim.counters(times=False)["requests"]
        elapsed = time.monotonic() - start
        # The budget: 20 per second plus one second's burst (and what was in
        # flight at the reset).
        self.assertLessEqual(counters["get"] + counters["list"], 20 * elapsed + 20 + 16)
        # Every one from a sweep, not 3,000 GETs: a listed session's first
        # audit is a whole audit interval (an hour here) away.
        cov = self.coverage(daemon)
        self.assertEqual(cov["requests"]["poll"], polls_before, "a covered session was polled")
        self.assertEqual(counters["get"], 0, "a covered session was fetched by GET")
        self.assertEqual(cov["covered"], 3000)
        self.assertLess(cov["behindSeconds"], 30)


def _make(order):
    name = "Coverage_" + order.replace("-", "_") + "_Test"
    return type(name, (CoverageBase, unittest.TestCase), {"ORDER": order})


for _order in ORDERS:
    globals()[f"Coverage{_order.title().replace('-', '')}Test"] = _make(_order)
del _order


if __name__ == "__main__":
    unittest.main()
