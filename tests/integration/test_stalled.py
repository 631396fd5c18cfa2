"""Stalled sessions: a session that stays non-terminal without any change
past `[poll] stalled-after` (Waiting: `stalled-after-waiting` when set) gets
exactly one `sessionwatch.session.stalled` event; a later change clears it,
and it may stall again; a restart does not repeat it; terminal sessions and
the default configuration never stall.
"""

import re
import time
import unittest
import uuid

import swtest

KEY = f"swstall-SECRET-{uuid.uuid4().hex}"
INTERVAL = "100ms"
STALLED = "sessionwatch.session.stalled"
EVENT_ID = re.compile(r"^evt_[0-9a-f]{32}$")


def new_id(prefix):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class StalledTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)

    def start_sim(self, sessions):
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}, key=KEY).register(self).start()

    def start_daemon(self, url, ids, poll=None, name="sessionwatchd"):
        config = {
            "api": {"url": url, "key-file": "@KEY_FILE@", "rate-limit": "off"},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL, **(poll or {})},
            "watch": {"session": list(ids)},
            "journal": {"enable": False},
            "state": {"path": "@STATE@"},
        }
        daemon = swtest.Daemon(self.tmp, config, api_key=KEY, print_events=True, name=name)
        return daemon.register(self).start()

    @staticmethod
    def stalled(events, sid=None):
        return [e for e in events if e["type"] == STALLED and (sid is None or e["subject"] == sid)]

    def wait_polls(self, sim, sid, more, timeout=15):
        def count():
            return sim.counters(session=sid, times=False)["sessions"].get(sid, {}).get("count", 0)

        start = count()
        swtest.wait_until(lambda: count() >= start + more, timeout=timeout,
                          message=f"{sid} was not polled {more} more times")

    def test_waiting_session_stalls_once_and_a_change_clears_it(self):
        waiting = new_id("seswait")
        active = new_id("sesact")
        done = new_id("sesdone")
        sim = self.start_sim([swtest.sim_session(waiting, [[0, "Waiting"]]),
                              swtest.sim_session(active, [[0, "Active"]]),
                              swtest.sim_session(done, [[-10, "Failed"]])])
        # Waiting sessions stall after 1 s, the others only after an hour.
        daemon = self.start_daemon(sim.url, [waiting, active, done],
                                   poll={"stalled-after": "1h", "stalled-after-waiting": "1s"})
        event = daemon.wait_for_event(lambda e: e["type"] == STALLED, timeout=15)
        self.assertEqual(event["subject"], waiting)
        self.assertRegex(event["id"], EVENT_ID)
        self.assertEqual(event["data"]["status"], "Waiting")
        self.assertEqual(event["data"]["previousStatus"], "Waiting")
        self.assertGreaterEqual(event["data"]["stalledForSeconds"], 1)
        self.assertEqual(event["data"]["session"], {"id": waiting})

        # Exactly one, however many more polls repeat the same answer.
        self.wait_polls(sim, waiting, 15)
        self.assertEqual(len(self.stalled(daemon.events())), 1, self.stalled(daemon.events()))

        # A change clears it; staying quiet in the new status stalls again
        # (Waiting again here, so the 1 s limit applies), with a new id.
        sim.set_status(waiting, "Active")
        daemon.wait_for_event(lambda e: e["subject"] == waiting and e["data"]["status"] == "Active")
        sim.set_status(waiting, "Waiting")
        daemon.wait_for_event(lambda e: e["subject"] == waiting and e["type"] == "sessionwatch.session.waiting"
                              and e["data"]["previousStatus"] == "Active")
        swtest.wait_until(lambda: len(self.stalled(daemon.events(), waiting)) >= 2, timeout=15,
                          message="the session did not stall again after a change")
        events = daemon.events()
        mine = [e for e in events if e["subject"] == waiting]
        self.assertEqual([e["type"] for e in mine],
                         ["sessionwatch.session.waiting", STALLED, "sessionwatch.session.active",
                          "sessionwatch.session.waiting", STALLED])
        first, second = self.stalled(events, waiting)
        self.assertNotEqual(first["id"], second["id"])
        # The Active session (1 h) and the finished one never stall.
        self.assertEqual(self.stalled(events, active), [])
        self.assertEqual(self.stalled(events, done), [])

        # A restart does not repeat the stalled event of a session that is
        # still quiet: the mark is durable.
        daemon.stop()
        daemon2 = self.start_daemon(sim.url, [waiting, active, done], name="sessionwatchd-2",
                                    poll={"stalled-after": "1h", "stalled-after-waiting": "1s"})
        self.wait_polls(sim, waiting, 15)
        self.assertEqual(self.stalled(daemon2.events()), [])
        daemon2.stop()
        self.assertIn("; 2 stalled events.", daemon.stderr_text())

    def test_stalled_after_applies_to_waiting_without_its_own_limit(self):
        waiting = new_id("seswait")
        sim = self.start_sim([swtest.sim_session(waiting, [[0, "Waiting"]])])
        daemon = self.start_daemon(sim.url, [waiting], poll={"stalled-after": "1s"})
        event = daemon.wait_for_event(lambda e: e["type"] == STALLED, timeout=15)
        self.assertEqual(event["subject"], waiting)

    def test_off_by_default(self):
        quiet = new_id("sesquiet")
        sim = self.start_sim([swtest.sim_session(quiet, [[-3600, "Waiting"]])])
        daemon = self.start_daemon(sim.url, [quiet])
        daemon.wait_for_event(lambda e: e["subject"] == quiet)
        self.wait_polls(sim, quiet, 10)
        self.assertEqual(self.stalled(daemon.events()), [])


if __name__ == "__main__":
    unittest.main()
