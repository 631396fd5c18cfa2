"""Discovery: the daemon finds the sessions of watched runbooks through
/sessions/list sweeps and follows them.

apisim creates sessions over time for two watched runbooks and one that is
not: every new session of the watched ones is found and all its transitions
are emitted once, the other runbook's never; sessions already finished at
the first sweep are not announced (they are with backfill = yes); a restart
resumes from the stored watermark without repeating or missing anything; a
429 on a list page holds every request; more than 50 sessions changed in one
interval are paged through; `all = yes` sees every runbook; past
max-sessions new sessions are refused with an error, never silently.
"""

import os
import time
import unittest
import uuid

import swtest

KEY = f"swdisc-SECRET-{uuid.uuid4().hex}"
TERMINAL = {"Succeeded", "Failed", "Cancelled"}
INTERVAL = "100ms"
DISCOVER = "300ms"


def new_id(prefix):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class DiscoveryTest(unittest.TestCase):
    # The list order apisim serves; the subclasses below run every test
    # under each of the others too: the daemon assumes no order.
    LIST_ORDER = "updated-asc"
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.daemons = []
        self.rbk_a = new_id("rbka")
        self.rbk_b = new_id("rbkb")
        self.rbk_other = new_id("rbko")

    def tearDown(self):
        for daemon in self.daemons:
            for name, text in (("stdout", daemon.stdout_text()), ("stderr", daemon.stderr_text())):
                self.assertNotIn(KEY, text, f"{daemon.name} printed the API key on {name}")

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, sessions=(), name="apisim"):
        return swtest.ApiSim(self.tmp, scenario={"sessions": list(sessions)}, key=KEY, name=name,
                             extra_args=["--list-order", self.LIST_ORDER]).register(self).start()

    def start_daemon(self, url, runbooks=(), watch=None, poll=None, name="sessionwatchd"):
        config = {
            "api": {"url": url, "key-file": "@KEY_FILE@", "rate-limit": "off"},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL, **(poll or {})},
            "watch": {"runbook": list(runbooks), "discover-interval": DISCOVER, **(watch or {})},
            "journal": {"enable": False},
            "state": {"path": "@STATE@"},
        }
        daemon = swtest.Daemon(self.tmp, config, api_key=KEY, print_events=True, name=name)
        daemon.register(self)
        self.daemons.append(daemon)
        return daemon.start()

    @staticmethod
    def session(sid, runbook, timeline):
        return swtest.sim_session(sid, timeline, runbook_id=runbook)

    @staticmethod
    def statuses(events, sid):
        return [e["data"]["status"] for e in events if e["subject"] == sid]

    def list_requests(self, sim):
        return sim.counters(times=False)["requests"]["list"]

    def wait_sweeps(self, sim, more, timeout=20):
        """Wait until apisim has answered `more` further list requests."""
        start = self.list_requests(sim)
        swtest.wait_until(lambda: self.list_requests(sim) >= start + more, timeout=timeout,
                          message=f"fewer than {more} more list requests")

    def assert_history_emitted(self, events, sim, sid):
        """The session's events are exactly its apisim history, in order,
        with previousStatus chained from null."""
        history = [status for _, status in sim.history(sid)[sid]]
        got = [e for e in events if e["subject"] == sid]
        self.assertEqual([e["data"]["status"] for e in got], history, sid)
        previous = None
        for event in got:
            self.assertEqual(event["data"]["previousStatus"], previous, event)
            self.assertEqual(event["data"]["session"]["id"], sid)
            previous = event["data"]["status"]

    # -- tests -----------------------------------------------------------------

    def test_new_sessions_of_watched_runbooks_are_followed(self):
        done_a = new_id("sesdonea")
        running_a = new_id("sesruna")
        other = new_id("sesother")
        sim = self.start_sim([
            self.session(done_a, self.rbk_a, [[-30, "Pending"], [-20, "Active"], [-10, "Succeeded"]]),
            self.session(running_a, self.rbk_a, [[-5, "Active"]]),
            self.session(other, self.rbk_other, [[-5, "Active"]]),
        ])
        daemon = self.start_daemon(sim.url, [self.rbk_a, self.rbk_b])
        # The running one produces its first observation; the finished one
        # produces nothing.
        first = daemon.wait_for_event(lambda e: e["subject"] == running_a)
        self.assertIsNone(first["data"]["previousStatus"])
        self.assertEqual(first["data"]["status"], "Active")

        # Sessions created over time for both runbooks (and another one).
        created = []
        for n in range(3):
            for runbook in (self.rbk_a, self.rbk_b):
                sid = new_id(f"ses{n}")
                created.append(sid)
                sim.add_sessions([self.session(sid, runbook, [[0, "Pending"], [0.6, "Active"],
                                                              [1.2, "Waiting"], [1.8, "Active"],
                                                              [2.4, "Failed" if n == 1 else "Succeeded"]])])
            sim.add_sessions([self.session(new_id("sesoth"), self.rbk_other, [[0, "Active"], [0.5, "Failed"]])])
            time.sleep(0.4)  # spread the creations over several sweeps (not an assertion)
        sim.set_status(running_a, "Waiting")
        sim.set_status(running_a, "Cancelled")

        for sid in created:
            daemon.wait_for_event(lambda e, sid=sid: e["subject"] == sid and e["data"]["status"] in TERMINAL,
                                  timeout=30)
        daemon.wait_for_event(lambda e: e["subject"] == running_a and e["data"]["status"] == "Cancelled")
        # A few more sweeps: nothing is announced twice.
        self.wait_sweeps(sim, 6)
        events = daemon.events()
        for sid in created:
            self.assert_history_emitted(events, sim, sid)
        self.assertEqual(self.statuses(events, done_a), [], "a session finished before the first sweep")
        rb_other = {e["subject"] for e in events
                    if e["data"]["session"].get("runbookID") == self.rbk_other}
        self.assertEqual(rb_other, set(), "sessions of a runbook that is not watched")
        ids = [e["id"] for e in events]
        self.assertEqual(len(ids), len(set(ids)), "an event was emitted twice")
        # Discovery only lists the watched runbooks; the other one is never polled.
        self.assertEqual(sim.counters(session=other, times=False)["sessions"].get(other, {}).get("count", 0), 0)
        # Finished sessions are not polled any more.
        counts = {sid: sim.counters(session=sid, times=False)["sessions"][sid]["count"] for sid in created}
        self.wait_sweeps(sim, 4)
        self.assertEqual({sid: sim.counters(session=sid, times=False)["sessions"][sid]["count"]
                          for sid in created}, counts, "finished sessions were polled again")
        self.assertEqual(sim.counters(session=done_a, times=False)["sessions"].get(done_a, {}).get("count", 0),
                         0, "a session finished at the first sweep was polled")

    def test_backfill_announces_finished_sessions(self):
        done = new_id("sesdone")
        sim = self.start_sim([self.session(done, self.rbk_a, [[-20, "Active"], [-10, "Failed"]])])
        daemon = self.start_daemon(sim.url, [self.rbk_a], watch={"backfill": "yes"})
        event = daemon.wait_for_event(lambda e: e["subject"] == done)
        self.assertEqual(event["data"]["status"], "Failed")
        self.assertIsNone(event["data"]["previousStatus"])
        self.wait_sweeps(sim, 3)
        self.assertEqual(self.statuses(daemon.events(), done), ["Failed"])

    def test_restart_neither_repeats_nor_misses(self):
        before = [new_id("sesbefore") for _ in range(3)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-5, "Active"]]) for sid in before])
        daemon = self.start_daemon(sim.url, [self.rbk_a])
        for sid in before:
            daemon.wait_for_event(lambda e, sid=sid: e["subject"] == sid)
        sim.set_status(before[0], "Succeeded")
        daemon.wait_for_event(lambda e: e["subject"] == before[0] and e["data"]["status"] == "Succeeded")
        self.wait_sweeps(sim, 2)
        first_run = daemon.events()
        daemon.stop()
        with open(os.path.join(self.tmp.state, "state")) as f:
            state = f.read()
        self.assertIn(f" W {self.rbk_a} ", state, "no watermark in the state file")

        # While it is down: a change, a new running session, a new session
        # that starts and finishes.
        sim.set_status(before[1], "Failed")
        new_running = new_id("sesdown")
        new_done = new_id("sesdowndone")
        sim.add_sessions([self.session(new_running, self.rbk_a, [[0, "Active"]]),
                          self.session(new_done, self.rbk_a, [[0, "Active"], [0.1, "Succeeded"]])])
        time.sleep(0.3)  # let new_done finish while the daemon is down (not an assertion)

        sim.reset_counters()
        daemon2 = self.start_daemon(sim.url, [self.rbk_a], name="sessionwatchd-2")
        daemon2.wait_for_event(lambda e: e["subject"] == before[1] and e["data"]["status"] == "Failed")
        daemon2.wait_for_event(lambda e: e["subject"] == new_running)
        daemon2.wait_for_event(lambda e: e["subject"] == new_done and e["data"]["status"] == "Succeeded")
        self.wait_sweeps(sim, 3)
        second_run = daemon2.events()
        # Nothing repeated: no event id of the first run comes again, and
        # each session has exactly the events it should.
        self.assertEqual({e["id"] for e in first_run} & {e["id"] for e in second_run}, set())
        self.assertEqual(self.statuses(second_run, before[0]), [])
        self.assertEqual(self.statuses(second_run, before[1]), ["Failed"])
        self.assertEqual(self.statuses(second_run, before[2]), [])
        self.assertEqual(self.statuses(second_run, new_running), ["Active"])
        self.assertEqual(self.statuses(second_run, new_done), ["Succeeded"])
        # The second run did not treat its sweep as a first one: it learnt
        # nothing it already knew (no first observation of an old session).
        self.assertEqual([e for e in second_run if e["subject"] in before and e["data"]["previousStatus"] is None],
                         [])

    def test_429_on_a_sweep_holds_every_request(self):
        # The witness is of a runbook nobody sweeps: it is polled by GET.
        witness = new_id("seswit")
        sim = self.start_sim([self.session(witness, self.rbk_b, [[-5, "Active"]])])
        daemon = self.start_daemon(sim.url, [self.rbk_a], watch={"session": [witness]})
        daemon.wait_for_event(lambda e: e["subject"] == witness)
        self.wait_sweeps(sim, 1)
        retry_after = 2
        before = time.time()
        sim.fault("429", endpoint="list", retry_after=retry_after)
        swtest.wait_until(lambda: sim.counters(times=False)["faults"]["429"] >= 1, timeout=10,
                          message="the 429 was not served")
        lists = self.list_requests(sim)
        # Sweeps resume after the hold, and new sessions are found again.
        late = new_id("seslate")
        sim.add_sessions([self.session(late, self.rbk_a, [[0, "Active"]])])
        daemon.wait_for_event(lambda e: e["subject"] == late, timeout=20)
        self.assertGreater(self.list_requests(sim), lists)
        # The hold covered polls too: the witness's polls show one gap of
        # about Retry-After after the fault went in, and none inside it.
        swtest.wait_until(lambda: max(sim.counters(session=witness)["sessions"][witness]["times"])
                          > before + retry_after + 0.3, timeout=15, message="polling did not resume")
        times = [t for t in sim.counters(session=witness)["sessions"][witness]["times"] if t >= before]
        gaps = [(b - a, a) for a, b in zip(times, times[1:]) if b - a > retry_after / 2]
        self.assertEqual(len(gaps), 1, f"expected one pause of the polls after the 429, got {gaps}")
        self.assertIn("rate limiting", daemon.stderr_text())
        self.assertEqual(self.statuses(daemon.events(), witness), ["Active"], "a 429 made up events")

    def test_failed_sweeps_are_retried_without_losing_anything(self):
        first = new_id("sesfirst")
        sim = self.start_sim([self.session(first, self.rbk_a, [[-5, "Active"]])])
        daemon = self.start_daemon(sim.url, [self.rbk_a])
        daemon.wait_for_event(lambda e: e["subject"] == first)
        self.wait_sweeps(sim, 1)
        # Three failures of different kinds in a row, while a session is
        # created and another one changes.
        sim.fault("503", endpoint="list", count=1)
        sim.fault("reset", endpoint="list", count=1)
        sim.fault("invalid-json", endpoint="list", count=1)
        late = new_id("seslate")
        sim.add_sessions([self.session(late, self.rbk_a, [[0, "Active"], [0.2, "Succeeded"]])])
        swtest.wait_until(lambda: sum(sim.counters(times=False)["faults"][k] for k in ("503", "reset", "invalid-json"))
                          >= 3, timeout=15, message="the faults were not served")
        daemon.wait_for_event(lambda e: e["subject"] == late and e["data"]["status"] == "Succeeded", timeout=20)
        self.wait_sweeps(sim, 3)
        events = daemon.events()
        self.assertEqual(self.statuses(events, first), ["Active"])
        self.assertIn(self.statuses(events, late), (["Succeeded"], ["Active", "Succeeded"]))
        stderr = daemon.stderr_text()
        self.assertIn(f"Listing the sessions of runbook '{self.rbk_a}' failed: HTTP 503", stderr)
        self.assertIn(f"Undecodable session list of runbook '{self.rbk_a}'", stderr)

    def test_paging_more_than_a_page_in_one_interval(self):
        sim = self.start_sim([])
        daemon = self.start_daemon(sim.url, [self.rbk_a], watch={"discover-interval": "2s"},
                                   poll={"interval": "1s"})
        self.wait_sweeps(sim, 1)
        ids = [new_id(f"sesmany{n:03d}") for n in range(137)]
        # All at one instant: more than two pages share one updatedAt.
        sim.add_sessions([self.session(sid, self.rbk_a, [[0, "Active"]]) for sid in ids])
        got = daemon.wait_for_events(lambda e: e["subject"] in set(ids), count=len(ids), timeout=30)
        self.assertEqual(sorted(e["subject"] for e in got), sorted(ids))
        # Several list requests served that one sweep.
        self.assertGreaterEqual(self.list_requests(sim), 4)

        # Then 120 sessions at distinct instants within one interval: the
        # pages follow each other by updatedAt.
        spread = [new_id(f"sesspread{n:03d}") for n in range(120)]
        sim.add_sessions([self.session(sid, self.rbk_a, [[n * 0.002, "Active"]]) for n, sid in enumerate(spread)])
        got = daemon.wait_for_events(lambda e: e["subject"] in set(spread), count=len(spread), timeout=30)
        self.assertEqual(sorted(e["subject"] for e in got), sorted(spread))
        events = daemon.events()
        ids = [e["id"] for e in events]
        self.assertEqual(len(ids), len(set(ids)), "an event was emitted twice")
        self.assertEqual(len(events), len(ids))

    def test_all_sees_every_runbook(self):
        sim = self.start_sim([])
        daemon = self.start_daemon(sim.url, [], watch={"all": "yes"})
        self.wait_sweeps(sim, 1)
        ids = {new_id("sesall"): runbook for runbook in (self.rbk_a, self.rbk_b, self.rbk_other)}
        sim.add_sessions([self.session(sid, runbook, [[0, "Active"], [0.5, "Succeeded"]])
                          for sid, runbook in ids.items()])
        for sid in ids:
            daemon.wait_for_event(lambda e, sid=sid: e["subject"] == sid and e["data"]["status"] == "Succeeded")
        events = daemon.events()
        for sid in ids:
            self.assertEqual(self.statuses(events, sid)[-1], "Succeeded")
            self.assertEqual(len(self.statuses(events, sid)), len(set(self.statuses(events, sid))), sid)

    def state_records(self):
        """The state file's payloads, in order (checksums not checked here:
        test_state.py covers the format)."""
        with open(os.path.join(self.tmp.state, "state")) as f:
            return [line.rstrip("\n")[9:] for line in f if len(line) > 9]

    def test_retain_drops_finished_sessions_once_no_sweep_can_return_them(self):
        old = [new_id("sesold") for _ in range(2)]
        recent = new_id("sesrecent")
        running = new_id("sesrun")
        sim = self.start_sim([
            self.session(old[0], self.rbk_a, [[-700, "Active"], [-600, "Succeeded"]]),
            self.session(old[1], self.rbk_a, [[-700, "Active"], [-590, "Failed"]]),
            # Finished inside the overlap window: later sweeps list it again.
            self.session(recent, self.rbk_a, [[-40, "Active"], [-30, "Failed"]]),
            self.session(running, self.rbk_a, [[-5, "Active"]]),
        ])
        overlap = {"backfill": "yes", "list-overlap": "60s"}
        daemon = self.start_daemon(sim.url, [self.rbk_a], watch=overlap, poll={"retain": "1s"})
        for sid in (*old, recent, running):
            daemon.wait_for_event(lambda e, sid=sid: e["subject"] == sid)
        # The old ones leave memory: their removal reaches the state file.
        swtest.wait_until(lambda: all(f"U {sid}" in self.state_records() for sid in old), timeout=15,
                          message=lambda: f"old sessions not dropped: {self.state_records()}")
        # Sweeps keep listing the recent one (it is inside the overlap
        # window): it stays in the table, past its retain time, and is never
        # announced again.
        self.wait_sweeps(sim, 8)
        records = self.state_records()
        self.assertNotIn(f"U {recent}", records)
        self.assertNotIn(f"U {running}", records)
        events = daemon.events()
        for sid in (*old, recent, running):
            self.assertEqual(len(self.statuses(events, sid)), 1, f"{sid}: {self.statuses(events, sid)}")
        # Nor after a restart.
        daemon.stop()
        daemon2 = self.start_daemon(sim.url, [self.rbk_a], watch=overlap, poll={"retain": "1s"},
                                    name="sessionwatchd-2")
        self.wait_sweeps(sim, 4)
        self.assertEqual(daemon2.events(), [])

    def test_max_sessions_refuses_loudly(self):
        ids = [new_id(f"sesmax{n}") for n in range(5)]
        sim = self.start_sim([self.session(sid, self.rbk_a, [[-5 + n * 0.01, "Active"]])
                              for n, sid in enumerate(ids)])
        daemon = self.start_daemon(sim.url, [self.rbk_a], poll={"max-sessions": "3"})
        daemon.wait_for_events(lambda e: e["subject"] in set(ids), count=3)
        daemon.wait_for_stderr(lambda line: "max-sessions=3 reached" in line, timeout=10)
        self.wait_sweeps(sim, 3)
        announced = {e["subject"] for e in daemon.events()}
        self.assertEqual(len(announced), 3)
        refused = set(ids) - announced
        for sid in refused:
            self.assertEqual(sim.counters(session=sid, times=False)["sessions"].get(sid, {}).get("count", 0), 0)
        daemon.stop()
        self.assertRegex(daemon.stderr_text(), r"sessions discovered, [1-9]\d* refused past max-sessions")



class WatermarkOrderTest(unittest.TestCase):
    """A discovery watermark becomes durable only after the state of the
    sessions its sweep found, which itself waits for the webhook outboxes:
    killed in between (outbox writes slowed by a test hook), the daemon
    finds the sessions again after a restart and no event is lost for the
    webhook."""

    def test_kill_before_the_sessions_are_durable(self):
        import base64

        from webhook_receiver import WebhookReceiver

        tmp = swtest.temp_dirs(self)
        secret = "whsec_" + base64.b64encode(b"watermark order test secret key!").decode()
        secret_file = os.path.join(tmp.conf, "wm.secret")
        with open(secret_file, "w") as f:
            f.write(secret + "\n")
        old, new = f"seswmold{uuid.uuid4().hex[:6]}", f"seswmnew{uuid.uuid4().hex[:6]}"
        sim = swtest.ApiSim(tmp, scenario={"sessions": [
            swtest.sim_session(old, [[-600, "Active"]], runbook_id="rbkwm"),
            swtest.sim_session(new, [[-1, "Active"]], runbook_id="rbkwm")]}).register(self).start()
        rx = WebhookReceiver(secrets=[secret], port=swtest.free_port()).register(self)

        def daemon(name, env=None):
            config = {
                "api": {"url": sim.url, "key-file": "@KEY_FILE@", "rate-limit": "off"},
                "poll": {"interval": "100ms", "waiting-interval": "100ms"},
                "watch": {"runbook": ["rbkwm"], "discover-interval": "300ms"},
                "journal": {"enable": False},
                "state": {"path": tmp.state},
                ("webhook", "main"): {"url": rx.url, "secret-file": secret_file, "retry-min": "50ms",
                                      "retry-max": "200ms"},
            }
            d = swtest.Daemon(tmp, config, print_events=True, name=name, env=env)
            d.register(self)
            return d.start()

        first = daemon("sessionwatchd-1", env={"SW_TEST_HOOKS": "1", "SW_TEST_OUTBOX_WRITE_DELAY_MS": "5000"})
        events = first.wait_for_events(count=2, timeout=20)
        time.sleep(1.5)  # sweeps go on; a watermark that did not wait is on disk by now
        with open(os.path.join(tmp.state, "state")) as f:
            self.assertNotIn(" W ", f.read())
        first.kill()

        second = daemon("sessionwatchd-2")
        rx.start()
        swtest.wait_until(lambda: {e["id"] for e in events} <= set(rx.delivered_ids()), timeout=20,
                          message=lambda: f"lost: {[e['subject'] for e in events if e['id'] not in rx.delivered_ids()]}")
        swtest.assert_exit(second.stop(), 0, second)


class DiscoveryNewestFirstTest(DiscoveryTest):
    LIST_ORDER = "updated-desc"


class DiscoveryIdOrderTest(DiscoveryTest):
    LIST_ORDER = "id"


class DiscoveryShuffledTest(DiscoveryTest):
    LIST_ORDER = "shuffled"


if __name__ == "__main__":
    unittest.main()
