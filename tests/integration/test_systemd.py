"""sessionwatchd as a Type=notify service, through a NOTIFY_SOCKET owned by
the test: READY=1 with a STATUS= summary once polling runs, STATUS= kept
current (at most once a second), WATCHDOG=1 at half of WATCHDOG_USEC from
the daemon's own loop, so that a loop stalled on purpose (the SW_TEST_HOOKS
SIGUSR2 hook) stops the pings, and STOPPING=1 on SIGTERM.
"""

import os
import select
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
        self.notify.wait_for("STATUS", "3 watched: 2 active, 1 waiting, 0 done; 0 failed in the last hour; webhooks ok; state ok", timeout=15)
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

    def test_manager_that_does_not_read(self):
        # A notify socket nobody reads fills after a few datagrams (the
        # kernel's max_dgram_qlen); sending must not block the loop then:
        # polling goes on and SIGTERM still stops the daemon at once.
        import socket as socketlib

        path = os.path.join(self.tmp.root, "deaf.sock")
        deaf = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
        deaf.bind(path)
        self.addCleanup(deaf.close)
        config = swtest.Daemon.basic_config(self.sim.url, sessions=[f"ses_sd{n}" for n in range(3)],
                                            extra={"poll": {"interval": "100ms", "waiting-interval": "100ms"}})
        d = swtest.Daemon(self.tmp, config, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
        d.start()
        self.addCleanup(d.stop)

        def polls():
            # GETs and list sweeps alike: with three sessions of one runbook
            # the daemon covers them by sweeps ([poll] mode = auto).
            requests = self.sim.counters(times=False)["requests"]
            return requests.get("get", 0) + requests.get("list", 0)

        # A socket connected to the deaf one is writable only while its
        # queue has room: the kernel's own view, and nothing is sent.
        probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
        self.addCleanup(probe.close)
        probe.connect(path)

        def queue_full():
            return not select.select([], [probe], [], 0)[1]

        swtest.wait_until(lambda: polls() > 0)
        # Pings every 10 ms: the daemon soon fills the queue, and every
        # send after that finds no room.
        swtest.wait_until(queue_full, message="the daemon's datagrams did not fill the queue nobody reads")
        before = polls()
        swtest.wait_until(lambda: polls() > before + 5)
        self.assertTrue(queue_full())  # full all along, as nobody read
        swtest.assert_exit(d.stop(timeout=10), 0, d)

    def test_watchdog_other_pid(self):
        d = self.start_daemon(env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
        self.notify.wait_for("READY", "1")
        # A change after READY=1 shows in a STATUS= refresh, which the 1 s
        # timer sends a second or more after READY=1: ten watchdog
        # intervals, and a ping sent in them (or along with READY=1) would
        # have reached the socket before that refresh.
        self.sim.set_status("ses_sd2", "Failed")

        def refreshed():
            return [m for m in self.notify.snapshot()
                    if "READY" not in m and "1 failed in the last hour" in m.get("STATUS", "")]

        swtest.wait_until(refreshed, timeout=15, message=lambda: f"no STATUS= refresh with the failure; "
                                                                 f"got {self.notify.snapshot()!r}")
        self.assertEqual(self.notify.with_key("WATCHDOG"), [])
        d.stop()


SECRET = "whsec_" + __import__("base64").b64encode(b"reload test webhook secret key!!").decode()


class ReloadTest(unittest.TestCase):
    """SIGHUP and `sessionwatchctl reload`: RELOADING=1 with MONOTONIC_USEC,
    then READY=1; sessions, webhooks and settings applied without losing
    session state, socket clients or events; an invalid file changes
    nothing and says where it is wrong in the log and in STATUS=."""

    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.ids = {name: f"ses_rl_{name}" for name in ("a", "b", "c")}
        sessions = [swtest.sim_session(sid, [[0, "Active"]]) for sid in self.ids.values()]
        self.sim = swtest.ApiSim(self.tmp, scenario={"sessions": sessions})
        self.sim.start()
        self.addCleanup(self.sim.stop)
        self.notify = NotifySocket(os.path.join(self.tmp.root, "notify.sock"))
        self.addCleanup(self.notify.close)

    def config(self, watch, interval="100ms", webhooks=None, extra=None):
        config = swtest.Daemon.basic_config(self.sim.url, sessions=[self.ids[n] for n in watch],
                                            extra={"poll": {"interval": interval, "waiting-interval": interval},
                                                   **(extra or {})})
        for name, url in (webhooks or {}).items():
            secret = os.path.join(self.tmp.conf, f"{name}.secret")
            with open(secret, "w") as f:
                f.write(SECRET + "\n")
            config[("webhook", name)] = {"url": url, "secret-file": secret, "retry-min": "50ms",
                                         "retry-max": "200ms"}
        return config

    def write_config(self, daemon, config):
        with open(daemon.config_path, "w") as f:
            f.write(daemon.expand(swtest.render_ini({**config, "api": {**config["api"],
                                                                        "key-file": "@KEY_FILE@"}})))

    def polls(self, name):
        sid = self.ids[name]
        return self.sim.counters(session=sid, times=False)["sessions"].get(sid, {}).get("count", 0)

    def start(self, config):
        d = swtest.Daemon(self.tmp, config, print_events=True, env=self.notify.env())
        d.start()
        self.addCleanup(d.stop)
        self.notify.wait_for("READY", "1")
        return d

    def reload_signal(self, d):
        before = len(self.notify.with_key("READY", "1"))
        sent = time.monotonic()
        os.kill(d.popen.pid, signal.SIGHUP)
        ready = self.notify.wait_for("READY", "1", count=before + 1)[-1]
        reloading = [m for m in self.notify.with_key("RELOADING", "1") if m["_time"] >= sent - 0.01]
        self.assertEqual(len(reloading), 1, self.notify.snapshot())
        self.assertLessEqual(reloading[0]["_time"], ready["_time"])
        # MONOTONIC_USEC is CLOCK_MONOTONIC, the clock of time.monotonic().
        usec = int(reloading[0]["MONOTONIC_USEC"])
        self.assertLess(abs(usec / 1e6 - reloading[0]["_time"]), 5)
        return ready

    def test_sighup_applies_sessions_webhooks_and_settings(self):
        from test_stream import StreamReader
        from webhook_receiver import WebhookReceiver

        rx = WebhookReceiver(secrets=(SECRET,)).register(self).start()
        d = self.start(self.config(["a", "b"], interval="2s"))
        swtest.wait_until(lambda: self.polls("a") > 0 and self.polls("b") > 0)
        d.wait_for_events(count=2)
        stream = StreamReader(d.events_socket)
        self.addCleanup(stream.close)
        swtest.wait_until(lambda: any(o.get("type") == "sessionwatch.stream.live" for o in stream.objects()))

        self.write_config(d, self.config(["a", "c"], interval="100ms", webhooks={"hook": rx.url}))
        ready = self.reload_signal(d)
        self.assertRegex(ready["STATUS"], r"^2 watched: ")
        self.assertIn("Reloaded", d.stderr_text())

        # C is polled, B no more; the new interval shows in A's poll count:
        # five polls within 1.5 s (the old interval is 2 s).
        swtest.wait_until(lambda: self.polls("c") > 0)
        b_after = self.polls("b")
        a_after = self.polls("a")
        swtest.wait_until(lambda: self.polls("a") >= a_after + 5, timeout=1.5,
                          message=lambda: f"A polled {self.polls('a') - a_after} time(s) in 1.5 s")
        # 25 polls of A at 100 ms (± 5 % jitter) take longer than B's old
        # interval: B, had it stayed, would have been polled meanwhile at
        # either interval.
        swtest.wait_until(lambda: self.polls("a") >= a_after + 25, timeout=15)
        self.assertLessEqual(self.polls("b"), b_after + 1)  # at most one that was in flight

        # A change after the reload reaches stdout, the stream client that
        # was connected before, and the webhook added by the reload; no
        # event is repeated.
        self.sim.set_status(self.ids["a"], "Failed")
        failed = d.wait_for_event(lambda e: e["subject"] == self.ids["a"] and e["data"]["status"] == "Failed")
        swtest.wait_until(lambda: failed["id"] in [o.get("id") for o in stream.objects()])
        swtest.wait_until(lambda: failed["id"] in rx.delivered_ids(), timeout=15)
        self.assertFalse(stream.eof)
        ids = [e["id"] for e in d.events()]
        self.assertEqual(len(ids), len(set(ids)), ids)
        self.assertEqual(sorted(e["subject"] for e in d.events() if e["data"]["previousStatus"] is None),
                         sorted(self.ids[n] for n in "abc"))

        # Removing the webhook again closes it; its outbox, with nothing left
        # to deliver, goes (test_webhook.py tests one with events left).
        self.write_config(d, self.config(["a", "c"], interval="100ms"))
        self.reload_signal(d)
        self.assertIn("Webhook 'hook' is no longer configured", d.stderr_text())
        swtest.wait_until(lambda: not os.path.exists(os.path.join(self.tmp.state, "outbox-hook")),
                          message="the empty outbox of a removed webhook stays")
        d.stop()
        swtest.assert_exit(d.returncode, 0, d)

    def test_reload_past_max_sessions_keeps_the_watched_ones(self):
        # A new session refused for max-sessions must not make the reload
        # drop sessions listed after it that were watched already.
        d = self.start(self.config(["a", "b"], extra={"poll": {"interval": "100ms", "waiting-interval": "100ms",
                                                               "max-sessions": "2"}}))
        swtest.wait_until(lambda: self.polls("a") > 0 and self.polls("b") > 0)
        config = self.config(["a", "c", "b"], extra={"poll": {"interval": "100ms", "waiting-interval": "100ms",
                                                              "max-sessions": "2"}})
        self.write_config(d, config)
        reply = d.ctl_json("reload")
        self.assertEqual((reply["added"], reply["removed"], reply["watched"]), (0, 0, 2), reply)
        self.assertIn("max-sessions=2", d.stderr_text())
        count = self.polls("b")
        swtest.wait_until(lambda: self.polls("b") > count + 2)
        self.assertEqual(self.polls("c"), 0)
        d.stop()

    def test_removing_a_webhook_releases_held_state_writes(self):
        # State writes wait while a webhook's outbox write is in progress
        # (slowed down here by a test hook); removing that webhook by a
        # reload must let them go rather than hold them until the stop.
        from webhook_receiver import WebhookReceiver

        rx = WebhookReceiver(secrets=(SECRET,)).register(self).start()
        config = self.config(["a"], webhooks={"slow": rx.url})
        d = swtest.Daemon(self.tmp, config, print_events=True,
                          env={**self.notify.env(), "SW_TEST_HOOKS": "1", "SW_TEST_OUTBOX_WRITE_DELAY_MS": "3000"})
        d.start()
        self.addCleanup(d.stop)
        self.notify.wait_for("READY", "1")
        d.wait_for_events(count=1)
        state = os.path.join(self.tmp.state, "state")

        def recorded(status):
            try:
                with open(state) as f:
                    return f" {self.ids['a']} {status} " in f.read()
            except FileNotFoundError:
                return False

        self.write_config(d, self.config(["a"]))
        self.reload_signal(d)
        self.sim.set_status(self.ids["a"], "Failed")
        d.wait_for_event(lambda e: e["data"]["status"] == "Failed")
        # Well before a stop, and before a slow outbox write could matter.
        swtest.wait_until(lambda: recorded("Failed"), timeout=2,
                          message="the state write stayed held after the webhook was removed")
        d.stop()

    def test_invalid_config_on_reload_keeps_the_old_one(self):
        d = self.start(self.config(["a"]))
        swtest.wait_until(lambda: self.polls("a") > 0)
        with open(d.config_path) as f:
            good = f.read()
        lines = good.splitlines()
        lines.insert(3, "no-such-key = 1")
        with open(d.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        ready = self.reload_signal(d)
        where = f"{d.config_path}:4"
        self.assertIn("Reload failed", ready["STATUS"])
        self.assertIn(where, ready["STATUS"])
        swtest.wait_until(lambda: where in d.stderr_text())
        # Still polling with the old config, and the failure stays shown
        # through the STATUS= refreshes (a 1 s timer): 13 polls at 100 ms
        # (± 5 % jitter) take more than a second, so one refresh came.
        count = self.polls("a")
        swtest.wait_until(lambda: self.polls("a") > count + 3)
        swtest.wait_until(lambda: self.polls("a") >= count + 13, timeout=15)

        # sessionwatchctl reload says the same, with exit 1.
        done = d.ctl("reload")
        self.assertEqual(done.returncode, 1, done)
        self.assertIn(where, done.stderr + done.stdout)
        # Its RELOADING=1 came after that refresh on the socket: every
        # STATUS= from the failed reload's READY=1 up to it keeps the failure.
        reloading = self.notify.wait_for("RELOADING", "1", count=2)[-1]
        messages = self.notify.snapshot()
        first = next(k for k, m in enumerate(messages) if m is ready)
        last = next(k for k, m in enumerate(messages) if m is reloading)
        shown = [m["STATUS"] for m in messages[first:last + 1] if "STATUS" in m]
        self.assertGreaterEqual(len(shown), 2, shown)  # those of READY=1 and RELOADING=1 at least
        for status in shown:
            self.assertIn("Reload failed", status)

        with open(d.config_path, "w") as f:
            f.write(good)
        done = d.ctl("reload")
        self.assertEqual(done.returncode, 0, done)
        swtest.wait_until(lambda: self.notify.with_key("STATUS")[-1]["STATUS"].startswith("1 watched"))
        d.stop()
        swtest.assert_exit(d.returncode, 0, d)


class SocketActivationTest(unittest.TestCase):
    """The event and control sockets passed the way systemd passes them
    (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), here by
    systemd-socket-activate: the daemon serves them instead of binding its
    own, and leaves the files alone."""

    def test_sockets_passed_by_the_service_manager(self):
        tmp = swtest.temp_dirs(self)
        sim = swtest.ApiSim(tmp, scenario={"sessions": [swtest.sim_session("ses_act", [[0, "Active"]])]})
        sim.start()
        self.addCleanup(sim.stop)
        notify = NotifySocket(os.path.join(tmp.root, "notify.sock"))
        self.addCleanup(notify.close)
        events = os.path.join(tmp.run, "events.sock")
        control = os.path.join(tmp.run, "control.sock")
        config = swtest.Daemon.basic_config(sim.url, sessions=["ses_act"],
                                            extra={"poll": {"interval": "100ms"}})
        d = swtest.Daemon(tmp, config, print_events=True,
                          wrapper=("systemd-socket-activate", "-l", events, "-l", control,
                                   "--fdname=events:control", "-E", "NOTIFY_SOCKET"),
                          env=notify.env())
        d.start()
        self.addCleanup(d.stop)
        swtest.wait_until(lambda: os.path.exists(events) and os.path.exists(control))
        inodes = (os.stat(events).st_ino, os.stat(control).st_ino)
        # The first connection makes systemd-socket-activate start the daemon.
        reply = d.request({"command": "status"}, timeout=20)
        self.assertTrue(reply["ok"], reply)
        notify.wait_for("READY", "1")
        d.wait_for_events(count=1)
        from test_stream import StreamReader
        stream = StreamReader(events)
        self.addCleanup(stream.close)
        swtest.wait_until(lambda: any(o.get("subject") == "ses_act" for o in stream.objects()))
        self.assertIn("Using the event stream socket passed by the service manager.", d.stderr_text())
        self.assertIn("Using the control socket passed by the service manager.", d.stderr_text())
        self.assertEqual((os.stat(events).st_ino, os.stat(control).st_ino), inodes)
        d.stop()
        swtest.assert_exit(d.returncode, 0, d)
        # Not bound by the daemon, so not removed by it either.
        self.assertTrue(os.path.exists(events) and os.path.exists(control))

    def test_passed_sockets_without_paths_in_the_config(self):
        # No [events]/[control] path and no $RUNTIME_DIRECTORY: the passed
        # sockets are all there is, and status names the stream by what it is
        # bound to.
        tmp = swtest.temp_dirs(self)
        sim = swtest.ApiSim(tmp, scenario={"sessions": [swtest.sim_session("ses_act2", [[0, "Active"]])]})
        sim.start()
        self.addCleanup(sim.stop)
        events = os.path.join(tmp.run, "ev.sock")
        control = os.path.join(tmp.run, "ct.sock")
        config = swtest.Daemon.basic_config(sim.url, sessions=["ses_act2"])
        del config["events"], config["control"]
        d = swtest.Daemon(tmp, config, print_events=True,
                          wrapper=("systemd-socket-activate", "-l", events, "-l", control,
                                   "--fdname=events:control"))
        d.start()
        self.addCleanup(d.stop)
        swtest.wait_until(lambda: os.path.exists(control))
        reply = d.request({"command": "status"}, socket_path=control, timeout=20)
        self.assertTrue(reply["ok"], reply)
        self.assertEqual(reply["eventsSocket"], events)
        d.stop()
        swtest.assert_exit(d.returncode, 0, d)


if __name__ == "__main__":
    unittest.main()
