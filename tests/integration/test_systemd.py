"""sessionwatchd as a Type=notify service, through a NOTIFY_SOCKET owned by
the test: READY=1 with a STATUS= summary once polling runs, STATUS= kept
current (at most once a second), WATCHDOG=1 at half of WATCHDOG_USEC from
the daemon's own loop, so that a loop stalled on purpose (the SW_TEST_HOOKS
SIGUSR2 hook) stops the pings, and STOPPING=1 on SIGTERM.
"""

import os
import signal
import statistics
import time
import unittest

import swtest
from swnotify import NotifySocket

KEY = swtest.DEFAULT_API_KEY


class NotifyTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        sessions = [swtest.sim_session(f"ses_sd{n}", [[0, "Active"], [1, "Waiting"]] if n == 0 else [[0, "Active"]])
                    for n in range(3)]
        self.sim = swtest.ApiSim(self.tmp, scenario={"sessions": sessions})
        self.sim.start()
        self.addCleanup(self.sim.stop)
        self.notify = NotifySocket(os.path.join(self.tmp.root, "notify.sock"))
        self.addCleanup(self.notify.close)

    def start_daemon(self, env=None, config_extra=None):
        config = swtest.Daemon.basic_config(self.sim.url, sessions=[f"ses_sd{n}" for n in range(3)],
                                            extra={"poll": {"interval": "100ms", "waiting-interval": "100ms"},
                                                   **(config_extra or {})})
        d = swtest.Daemon(self.tmp, config, env={**self.notify.env(), **(env or {})})
        d.start()
        self.addCleanup(d.stop)
        return d

    def test_ready_status_and_stopping(self):
        d = self.start_daemon()
        ready = self.notify.wait_for("READY", "1")[0]
        self.assertRegex(ready["STATUS"], r"^3 watched: \d+ active, \d+ waiting, \d+ done")
        # Polling had started when READY=1 came: the sessions get polled.
        swtest.wait_until(lambda: all(self.sim.counters(session=f"ses_sd{n}", times=False)["sessions"]
                                      .get(f"ses_sd{n}", {}).get("count", 0) > 0 for n in range(3)))
        # The summary follows the sessions: one of them goes Waiting.
        self.notify.wait_for("STATUS", "3 watched: 2 active, 1 waiting, 0 done; state ok", timeout=15)
        statuses = [m for m in self.notify.snapshot() if "STATUS" in m and len(m) == 3]
        gaps = [b["_time"] - a["_time"] for a, b in zip(statuses, statuses[1:])]
        self.assertTrue(all(g >= 0.5 for g in gaps), gaps)  # refreshes come from a 1 s timer
        self.assertEqual(self.notify.with_key("WATCHDOG"), [])  # no watchdog asked for
        d.stop()
        swtest.assert_exit(d.returncode, 0, d)
        stopping = self.notify.with_key("STOPPING", "1")
        self.assertEqual(len(stopping), 1)
        self.assertGreater(stopping[0]["_time"], ready["_time"])

    def test_watchdog_and_stalled_loop(self):
        d = self.start_daemon(env={"WATCHDOG_USEC": "1000000", "SW_TEST_HOOKS": "1", "SW_TEST_STALL_MS": "3000"})
        self.notify.wait_for("READY", "1")
        pings = self.notify.wait_for("WATCHDOG", "1", count=8, timeout=20)
        gaps = [b["_time"] - a["_time"] for a, b in zip(pings, pings[1:])]
        # Every 500 ms: never much faster, and about that on the median.
        self.assertGreaterEqual(min(gaps), 0.35, gaps)
        self.assertLess(statistics.median(gaps), 0.9, gaps)

        before = len(self.notify.with_key("WATCHDOG"))
        stalled_at = time.monotonic()
        os.kill(d.popen.pid, signal.SIGUSR2)
        swtest.wait_until(lambda: len(self.notify.with_key("WATCHDOG")) >= before + 3, timeout=20)
        pings = self.notify.with_key("WATCHDOG")
        times = [m["_time"] for m in pings if m["_time"] >= stalled_at - 0.6]
        longest = max(b - a for a, b in zip(times, times[1:]))
        # The loop was blocked for 3 s: no ping came for most of that time.
        self.assertGreaterEqual(longest, 2.5, times)
        d.stop()
        swtest.assert_exit(d.returncode, 0, d)

    def test_watchdog_other_pid(self):
        d = self.start_daemon(env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
        self.notify.wait_for("READY", "1")
        time.sleep(1)
        self.assertEqual(self.notify.with_key("WATCHDOG"), [])
        d.stop()


if __name__ == "__main__":
    unittest.main()
