"""The webhook sink: signed, at-least-once, isolated delivery.

sessionwatchd polls apisim and delivers each event to real HTTP receivers
(tests/integration/webhook_receiver.py) that verify every Standard Webhooks
signature with their own HMAC code. The tests check:

* the body is the event printed on stdout, with the CloudEvents content type,
  webhook-id/-timestamp/-signature and User-Agent headers;
* a receiver that is down, then up, gets every event, each session's in
  order, each id at least once, even when the daemon is stopped, restarted
  and SIGKILLed meanwhile (the outbox file survives);
* a dead (hanging) webhook does not delay a live one or polling;
* statuses filtering, the Slack format, secret rotation (two signatures);
* 410 disables the webhook (its outbox stays), other 4xx drop the event,
  3xx is retried and never followed, 429 honours Retry-After, a hung or
  closed connection is retried, and events older than max-age are dropped.
"""

import base64
import os
import signal
import time
import unittest
import uuid

import swtest
from webhook_receiver import WebhookReceiver

KEY = f"swwebhook-SECRET-{uuid.uuid4().hex}"
SECRET_A = "whsec_" + base64.b64encode(b"sessionwatch test key number one!").decode()
SECRET_B = "whsec_" + base64.b64encode(b"the second key, for rotation").decode()
INTERVAL = "50ms"
APP_URL = "https://app.example.test"


def outbox_pending(path):
    """Event ids in an outbox file that have no done record, read
    independently of the daemon (checksums are not checked here)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    events, done = {}, set()
    for line in data.split(b"\n")[1:]:
        fields = line.split(b" ", 7)
        if len(fields) >= 7 and fields[1] == b"E":
            events[int(fields[2])] = fields[5].decode()
        elif len(fields) == 3 and fields[1] == b"D":
            done.add(int(fields[2]))
    return [eid for seq, eid in sorted(events.items()) if seq not in done]


class WebhookTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.daemons = []

    def tearDown(self):
        for daemon in self.daemons:
            for text in (daemon.stdout_text(), daemon.stderr_text()):
                self.assertNotIn(KEY, text, f"{daemon.name} printed the API key")
                self.assertNotIn(SECRET_A[6:], text, f"{daemon.name} printed a webhook secret")
                self.assertNotIn(SECRET_B[6:], text, f"{daemon.name} printed a webhook secret")

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, sessions):
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}, key=KEY).register(self).start()

    def receiver(self, secrets=(SECRET_A,), start=True, port=0):
        r = WebhookReceiver(secrets=secrets, port=port).register(self)
        return r.start() if start else r

    def secret_file(self, name, secret):
        path = os.path.join(self.tmp.conf, name)
        with open(path, "w") as f:
            f.write(secret + "\n")
        os.chmod(path, 0o600)
        return path

    def webhook(self, url, secrets=(SECRET_A,), **keys):
        section = {"url": url, "secret-file": [self.secret_file(f"s{i}-{uuid.uuid4().hex[:6]}", s)
                                               for i, s in enumerate(secrets)],
                   "retry-min": "50ms", "retry-max": "200ms", "timeout": "2s"}
        section.update(keys)
        return section

    def make_daemon(self, sim, ids, webhooks, name="sessionwatchd", api=None, env=None, extra=None):
        config = self.daemon_config(sim, ids, webhooks, api=api, extra=extra)
        daemon = swtest.Daemon(self.tmp, config, api_key=KEY, print_events=True, name=name, env=env)
        daemon.register(self)
        self.daemons.append(daemon)
        return daemon

    def daemon_config(self, sim, ids, webhooks, api=None, extra=None):
        config = {
            "api": {"url": sim.url, "key-file": "@KEY_FILE@", "rate-limit": "off", "app-url": APP_URL,
                    **(api or {})},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL},
            "watch": {"session": list(ids)},
            "journal": {"enable": False},
            "state": {"path": self.tmp.state},
            **(extra or {}),
        }
        for label, section in webhooks.items():
            config[("webhook", label)] = section
        return config

    CONTROL = {"control": {"path": "@RUN@/control.sock"}}

    def reload(self, daemon, sim, ids, webhooks):
        """Rewrite the daemon's config with these webhooks and reload it."""
        config = self.daemon_config(sim, ids, webhooks, extra=self.CONTROL)
        with open(daemon.config_path, "w") as f:
            f.write(daemon.expand(swtest.render_ini(config)))
        return daemon.ctl_json("reload")

    @staticmethod
    def orphans(daemon):
        return {q["name"]: q for q in daemon.ctl_json("status")["orphanedQueues"]}

    @staticmethod
    def metric(daemon, name):
        for line in daemon.ctl_json("metrics")["text"].splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    def stop(self, daemon):
        swtest.assert_exit(daemon.stop(timeout=20), swtest.EXIT_OK, daemon)

    def wait_delivered(self, receiver, ids, timeout=20):
        ids = set(ids)
        return swtest.wait_until(lambda: ids <= set(receiver.delivered_ids()), timeout=timeout,
                                 message=lambda: f"not delivered: {sorted(ids - set(receiver.delivered_ids()))}")

    def assert_signed(self, receiver):
        self.assertEqual(receiver.bad_signatures(), [], "requests with a wrong or missing signature")

    def assert_session_order(self, events, receiver):
        """Each session's events reached the receiver (first delivery of each
        id) in the order the daemon emitted them."""
        first = {}
        for index, request in enumerate(receiver.delivered()):
            first.setdefault(request.id, index)
        by_session = {}
        for event in events:
            ids = by_session.setdefault(event["subject"], [])
            if event["id"] not in ids:
                ids.append(event["id"])
        for session, ids in by_session.items():
            positions = [first[i] for i in ids]
            self.assertEqual(positions, sorted(positions), f"session {session} delivered out of order")

    @staticmethod
    def change(daemon, sim, sid, status, timeout=10):
        """Set a session's status and wait for the daemon's event about it
        (a new one: earlier events with that status do not count)."""
        def matching():
            return [e for e in daemon.events() if e["subject"] == sid and e["data"]["status"] == status]

        before = len(matching())
        sim.set_status(sid, status)
        return daemon.wait_for_events(lambda e: e["subject"] == sid and e["data"]["status"] == status,
                                      count=before + 1, timeout=timeout)[-1]

    @staticmethod
    def sessions(prefix, n):
        return [f"{prefix}{k:02d}{uuid.uuid4().hex[:6]}" for k in range(n)]

    # -- tests -----------------------------------------------------------------

    def test_delivery_body_headers_and_signature(self):
        ids = self.sessions("seswh", 3)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]], name=f"Hook {sid}") for sid in ids])
        rx = self.receiver()
        daemon = self.make_daemon(sim, ids, {"main": self.webhook(rx.url)}).start()
        daemon.wait_for_events(count=3, timeout=20)
        for sid in ids:
            sim.set_status(sid, "Failed")
        events = daemon.wait_for_events(lambda e: e["data"]["status"] == "Failed", count=3, timeout=20)
        all_events = daemon.events()
        self.wait_delivered(rx, [e["id"] for e in all_events])
        self.assert_signed(rx)
        by_id = {e["id"]: e for e in all_events}
        for request in rx.delivered():
            self.assertEqual(request.path, "/hook")
            self.assertEqual(request.json, by_id[request.id], "the body is not the event")
            self.assertEqual(request.headers["content-type"], "application/cloudevents+json")
            self.assertTrue(request.headers["user-agent"].startswith("sessionwatchd/"), request.headers)
            self.assertLess(abs(int(request.timestamp) - time.time()), 120)
            self.assertEqual(request.verified, {0})
        self.assertEqual(len(events), 3)
        self.assert_session_order(all_events, rx)
        # Each delivery is recorded in the outbox as done (a response that
        # arrives after the receiver recorded the request takes a moment).
        outbox = os.path.join(self.tmp.state, "outbox-main")
        swtest.wait_until(lambda: outbox_pending(outbox) == [], timeout=10,
                          message=lambda: f"still pending: {outbox_pending(outbox)}")
        self.stop(daemon)
        self.assertEqual(outbox_pending(outbox), [])
        # The sink's counters, as its stop line reports them.
        n = len(all_events)
        self.assertIn(f"Webhook 'main': {n} attempt(s), {n} delivered, 0 dropped, 0 undelivered kept in the "
                      f"outbox.", daemon.stderr_text())


    def test_receiver_down_restart_and_sigkill_lose_nothing(self):
        ids = self.sessions("sesdown", 4)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        # The receiver's port is known but nothing listens yet: connections
        # are refused through three daemon runs.
        rx = self.receiver(start=False, port=swtest.free_port())
        hooks = {"main": self.webhook(rx.url)}
        outbox = os.path.join(self.tmp.state, "outbox-main")
        emitted = []

        first = self.make_daemon(sim, ids, hooks, name="sessionwatchd-1").start()
        first.wait_for_events(count=4, timeout=20)
        for sid in ids:
            sim.set_status(sid, "Waiting")
        first.wait_for_events(lambda e: e["data"]["status"] == "Waiting", count=4, timeout=20)
        self.stop(first)
        emitted += first.events()
        self.assertEqual(set(outbox_pending(outbox)), {e["id"] for e in emitted})

        # Changed while down: the second run replays them, then is killed
        # once their records are in the outbox file.
        for sid in ids:
            sim.set_status(sid, "Active")
        second = self.make_daemon(sim, ids, hooks, name="sessionwatchd-2").start()
        second.wait_for_events(lambda e: e["data"]["status"] == "Active", count=4, timeout=20)
        ids_so_far = {e["id"] for e in emitted + second.events()}
        swtest.wait_until(lambda: ids_so_far <= set(outbox_pending(outbox)), timeout=10,
                          message="the second run's events never reached the outbox file")
        second.kill()
        emitted += second.events()

        for sid in ids:
            sim.set_status(sid, "Failed")
        third = self.make_daemon(sim, ids, hooks, name="sessionwatchd-3").start()
        third.wait_for_events(lambda e: e["data"]["status"] == "Failed", count=4, timeout=20)
        emitted += third.events()

        rx.start()
        self.wait_delivered(rx, [e["id"] for e in emitted], timeout=30)
        self.assert_signed(rx)
        self.assert_session_order(emitted, rx)
        self.assertEqual(len({e["id"] for e in emitted}), 16, "four statuses of four sessions")
        swtest.wait_until(lambda: outbox_pending(outbox) == [], timeout=10,
                          message=lambda: f"still pending: {outbox_pending(outbox)}")
        self.stop(third)
        self.assertIn("undelivered event(s) from before the restart", third.stderr_text())

    def test_kill_before_the_outbox_write_loses_nothing(self):
        # The state file must not record a transition before every outbox
        # holds its event: with outbox writes slowed down (a test hook), a
        # SIGKILL after the event went to stdout and before the outbox write
        # must make the next run emit the event again, for the webhook.
        ids = self.sessions("seskill", 1)
        # Unwatched during the second run, to see its state writes through.
        spare = f"sesspare{uuid.uuid4().hex[:6]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids + [spare]])
        rx = self.receiver(start=False, port=swtest.free_port())
        hooks = {"main": self.webhook(rx.url)}
        outbox = os.path.join(self.tmp.state, "outbox-main")
        state = os.path.join(self.tmp.state, "state")
        first = self.make_daemon(sim, ids + [spare], hooks, name="sessionwatchd-1").start()
        firsts = first.wait_for_events(count=2, timeout=20)
        active = next(e for e in firsts if e["subject"] == ids[0])
        swtest.wait_until(lambda: {e["id"] for e in firsts} <= set(outbox_pending(outbox)), timeout=10)
        self.stop(first)

        def state_text():
            with open(state, "rb") as f:
                return f.read().decode("utf-8", "replace")

        slow = self.make_daemon(sim, ids + [spare], hooks, name="sessionwatchd-2",
                                env={"SW_TEST_HOOKS": "1", "SW_TEST_OUTBOX_WRITE_DELAY_MS": "5000"},
                                extra={"control": {"path": "@RUN@/control.sock"}}).start()
        slow.wait_control()
        failed = self.change(slow, sim, ids[0], "Failed", timeout=20)
        # An unwatch is written to the state file at once, never held for
        # the outboxes, after whatever was queued before it: once its record
        # is in the file, so would be a state write for the Failed event
        # that did not wait for the outbox.
        reply = slow.request({"command": "unwatch", "ids": [spare]})
        self.assertEqual(reply.get("removed"), [spare], reply)
        swtest.wait_until(lambda: f" U {spare}\n" in state_text(), timeout=10,
                          message="the unwatch did not reach the state file")
        self.assertNotIn(f" S {ids[0]} Failed ", state_text(),
                         "the state file recorded the transition before the outbox had its event")
        self.assertNotIn(failed["id"], outbox_pending(outbox))
        slow.kill()

        third = self.make_daemon(sim, ids, hooks, name="sessionwatchd-3").start()
        again = third.wait_for_event(lambda e: e["data"]["status"] == "Failed", timeout=20)
        self.assertEqual(again["id"], failed["id"])
        rx.start()
        self.wait_delivered(rx, [active["id"], failed["id"]], timeout=30)
        self.stop(third)

    def test_a_2xx_with_a_big_body_is_a_delivery(self):
        ids = self.sessions("sesbig", 1)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        rx = self.receiver()
        rx.answer(200, {"_body_size": 300000})  # over the 64 KiB kept of an answer
        daemon = self.make_daemon(sim, ids, {"big": self.webhook(rx.url)}).start()
        event = daemon.wait_for_events(count=1, timeout=20)[0]
        self.wait_delivered(rx, [event["id"]])
        # The done record: the daemon took the answer for a delivery and will
        # not try again (the receiver records a request before answering, so
        # a retry would be in its list by then).
        outbox = os.path.join(self.tmp.state, "outbox-big")
        swtest.wait_until(lambda: outbox_pending(outbox) == [], timeout=10,
                          message=lambda: f"still pending: {outbox_pending(outbox)}")
        self.assertEqual([r.id for r in rx.snapshot()], [event["id"]])
        self.stop(daemon)
        self.assertIn("Webhook 'big': 1 attempt(s), 1 delivered, 0 dropped", daemon.stderr_text())

    def test_retry_after_pauses_the_whole_webhook(self):
        # A 429 with Retry-After holds every session's events for that
        # webhook, not only the one answered; "Retry-After: 0" waits
        # retry-min rather than retrying at once.
        ids = self.sessions("sespause", 2)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        rx = self.receiver()
        rx.answer(429, {"Retry-After": "2"}, count=1)
        hook = self.webhook(rx.url, **{"max-in-flight": 1, "retry-min": "500ms", "retry-max": "1s"})
        daemon = self.make_daemon(sim, ids, {"p": hook}).start()
        events = daemon.wait_for_events(count=2, timeout=20)
        self.wait_delivered(rx, [e["id"] for e in events], timeout=20)
        requests = rx.snapshot()
        first_429 = next(r for r in requests if r.status == 429)
        after = [r for r in requests if r.time > first_429.time]
        self.assertTrue(after)
        self.assertGreaterEqual(min(r.time for r in after) - first_429.time, 1.5,
                                [(r.id, r.status, r.time) for r in requests])

        rx.answer(429, {"Retry-After": "0"}, count=1)
        sim.set_status(ids[0], "Waiting")
        waiting = daemon.wait_for_event(lambda e: e["data"]["status"] == "Waiting", timeout=20)
        self.wait_delivered(rx, [waiting["id"]], timeout=20)
        tries = [r for r in rx.snapshot() if r.id == waiting["id"]]
        self.assertEqual([r.status for r in tries], [429, 200])
        self.assertGreaterEqual(tries[1].time - tries[0].time, 0.4)
        self.stop(daemon)

    def test_a_disabled_webhook_still_expires_old_events(self):
        ids = self.sessions("sesdisx", 1)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        rx = self.receiver()
        rx.answer(410)
        daemon = self.make_daemon(sim, ids, {"gone": self.webhook(rx.url, **{"max-age": "1s"})}).start()
        daemon.wait_for_events(count=1, timeout=20)
        swtest.wait_until(lambda: "answered 410 Gone" in daemon.stderr_text(), timeout=10)
        sim.set_status(ids[0], "Failed")
        daemon.wait_for_event(lambda e: e["data"]["status"] == "Failed", timeout=20)
        outbox = os.path.join(self.tmp.state, "outbox-gone")
        swtest.wait_until(lambda: outbox_pending(outbox) == [], timeout=15,
                          message=lambda: f"still kept: {outbox_pending(outbox)}")
        self.assertEqual(len(rx.snapshot()), 1)
        self.stop(daemon)

    def test_expiring_several_events_of_one_session(self):
        # Several pending events of one session expire in one walk of the
        # queue (the sanitizer build checks the walk's memory use).
        ids = self.sessions("sesexp", 1)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        rx = self.receiver(start=False, port=swtest.free_port())
        daemon = self.make_daemon(sim, ids, {"down": self.webhook(rx.url, **{"max-age": "1500ms"})}).start()
        daemon.wait_for_events(count=1, timeout=20)
        for status in ("Waiting", "Active", "Failed"):
            self.change(daemon, sim, ids[0], status, timeout=20)
        outbox = os.path.join(self.tmp.state, "outbox-down")
        swtest.wait_until(lambda: outbox_pending(outbox) == [], timeout=15,
                          message=lambda: f"still pending: {outbox_pending(outbox)}")
        self.stop(daemon)
        self.assertIn("4 dropped", daemon.stderr_text())

    def test_dead_webhook_does_not_delay_live_one_or_polling(self):
        ids = self.sessions("sesiso", 4)
        steady = f"sessteady{uuid.uuid4().hex[:6]}"
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids + [steady]])
        dead = self.receiver()
        dead.answer("hang")
        live = self.receiver()
        daemon = self.make_daemon(sim, ids + [steady], {
            "dead": self.webhook(dead.url, timeout="300ms", **{"max-in-flight": 1}),
            "live": self.webhook(live.url, **{"max-in-flight": 1}),
        }).start()
        firsts = daemon.wait_for_events(count=5, timeout=20)
        self.wait_delivered(live, [e["id"] for e in firsts], timeout=10)
        for status in ("Waiting", "Active", "Failed"):
            for sid in ids:
                event = self.change(daemon, sim, sid, status)
                # Promptly: well before the dead webhook's attempts (one at
                # a time, 300 ms each) could have let it through.
                self.wait_delivered(live, [event["id"]], timeout=5)
        # Polling went on at its rate meanwhile.
        def polls():
            return sim.counters(session=steady, times=False)["sessions"][steady]["count"]

        before = polls()
        swtest.wait_until(lambda: polls() >= before + 10,
            timeout=10, message="polling stalled while a webhook hangs")
        # The dead one kept retrying its first event, one attempt at a time.
        requests = dead.snapshot()
        self.assertGreaterEqual(len(requests), 2, "the hanging webhook was not retried")
        self.assertEqual(dead.delivered(), [])
        self.assert_signed(live)
        self.assert_session_order(daemon.events(), live)
        self.stop(daemon)
        self.assertGreater(len(outbox_pending(os.path.join(self.tmp.state, "outbox-dead"))), 0)

    def test_statuses_filter_and_slack_format(self):
        ids = self.sessions("sesslack", 2)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]], name=f"Slack {k}")
                              for k, sid in enumerate(ids)])
        rx = self.receiver()
        daemon = self.make_daemon(sim, ids, {
            "chat": self.webhook(rx.url, statuses="Failed Waiting", format="slack"),
        }).start()
        daemon.wait_for_events(count=2, timeout=20)
        for sid, script in zip(ids, (["Waiting", "Active", "Failed"], ["Succeeded"])):
            for status in script:
                self.change(daemon, sim, sid, status)
        wanted = [e for e in daemon.events() if e["data"]["status"] in ("Failed", "Waiting")]
        self.assertEqual(len(wanted), 2)
        self.wait_delivered(rx, [e["id"] for e in wanted])
        self.stop(daemon)
        self.assertEqual(sorted(rx.delivered_ids()), sorted(e["id"] for e in wanted),
                         "statuses outside the filter were sent")
        self.assert_signed(rx)
        texts = {r.id: r for r in rx.delivered()}
        for event, transition in zip(wanted, ("Active → Waiting", "Active → Failed")):
            request = texts[event["id"]]
            self.assertEqual(request.headers["content-type"], "application/json")
            self.assertEqual(list(request.json), ["text"], request.json)
            text = request.json["text"]
            self.assertIn(f"'Slack 0' ({ids[0]})", text)
            self.assertIn(transition, text)
            self.assertIn(f"<{APP_URL}/sessions/{ids[0]}>", text)

    def test_secret_rotation_signs_with_every_secret(self):
        ids = self.sessions("sesrot", 1)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        both = self.receiver(secrets=(SECRET_A, SECRET_B))
        only_b = self.receiver(secrets=(SECRET_B,))
        daemon = self.make_daemon(sim, ids, {
            "both": self.webhook(both.url, secrets=(SECRET_A, SECRET_B)),
            "newkey": self.webhook(only_b.url, secrets=(SECRET_B,)),
        }).start()
        event = daemon.wait_for_event(timeout=20)
        self.wait_delivered(both, [event["id"]])
        self.wait_delivered(only_b, [event["id"]])
        self.stop(daemon)
        request = both.delivered()[0]
        self.assertEqual(len(request.headers["webhook-signature"].split()), 2)
        self.assertEqual(request.verified, {0, 1})
        self.assertEqual(only_b.delivered()[0].verified, {0})
        self.assert_signed(both)
        self.assert_signed(only_b)

    def test_410_disables_the_webhook_and_keeps_its_outbox(self):
        ids = self.sessions("sesgone", 2)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        gone = self.receiver()
        gone.answer(410)
        witness = self.receiver()
        # One attempt at a time, so exactly one request precedes the 410.
        hooks = {"gone": self.webhook(gone.url, **{"max-in-flight": 1}), "witness": self.webhook(witness.url)}
        daemon = self.make_daemon(sim, ids, hooks).start()
        firsts = daemon.wait_for_events(count=2, timeout=20)
        swtest.wait_until(lambda: len(gone.snapshot()) >= 1, timeout=10, message="no attempt at all")
        swtest.wait_until(lambda: "answered 410 Gone" in daemon.stderr_text(), timeout=10,
                          message="the 410 was not logged")
        for sid in ids:
            sim.set_status(sid, "Failed")
        later = daemon.wait_for_events(lambda e: e["data"]["status"] == "Failed", count=2, timeout=20)
        # The witness webhook got everything; the disabled one got nothing
        # after its first answer, while every event waits in its outbox.
        self.wait_delivered(witness, [e["id"] for e in firsts + later])
        outbox = os.path.join(self.tmp.state, "outbox-gone")
        swtest.wait_until(lambda: len(outbox_pending(outbox)) == 4, timeout=10,
                          message=lambda: f"outbox of the disabled webhook: {outbox_pending(outbox)}")
        self.assertEqual(len(gone.snapshot()), 1, "a disabled webhook was attempted again")
        self.stop(daemon)
        self.assertEqual(daemon.stderr_text().count("answered 410 Gone"), 1)
        self.assertIn("(disabled by 410 Gone)", daemon.stderr_text())

        # A restart enables it again, and the kept events go out in order.
        gone.answer(200)
        again = self.make_daemon(sim, ids, hooks, name="sessionwatchd-again").start()
        self.wait_delivered(gone, [e["id"] for e in firsts + later])
        self.assert_session_order(firsts + later, gone)
        self.assert_signed(gone)
        self.stop(again)

    def test_max_age_expiry_drops_with_an_error(self):
        ids = self.sessions("sesage", 2)
        sim = self.start_sim([swtest.sim_session(ids[0], [[0, "Active"]])])
        rx = self.receiver()
        rx.answer(500)
        daemon = self.make_daemon(sim, ids[:1], {"main": self.webhook(rx.url, **{"max-age": "400ms"})}).start()
        event = daemon.wait_for_event(timeout=20)
        swtest.wait_until(lambda: "older than max-age" in daemon.stderr_text(), timeout=10,
                          message="no expiry error")
        self.assertIn(event["id"], daemon.stderr_text())
        outbox = os.path.join(self.tmp.state, "outbox-main")
        swtest.wait_until(lambda: outbox_pending(outbox) == [], timeout=10, message="the expired event stays")
        attempts = [r for r in rx.snapshot() if r.id == event["id"]]
        self.assertGreaterEqual(len(attempts), 2, "a failing event was not retried before it expired")
        rx.answer(200)
        self.stop(daemon)
        self.assertIn(f"Webhook 'main': {len(attempts)} attempt(s), 0 delivered, 1 dropped, 0 undelivered",
                      daemon.stderr_text())
        # Gone for good: a restart does not send it again.
        sim.add_sessions([swtest.sim_session(ids[1], [[0, "Active"]])])
        again = self.make_daemon(sim, ids, {"main": self.webhook(rx.url, **{"max-age": "400ms"})},
                                 name="sessionwatchd-again").start()
        fresh = again.wait_for_event(lambda e: e["subject"] == ids[1], timeout=20)
        self.wait_delivered(rx, [fresh["id"]])
        self.stop(again)
        self.assertNotIn(event["id"], rx.delivered_ids())
        self.assertEqual(len([r for r in rx.snapshot() if r.id == event["id"]]), len(attempts))

    def test_a_removed_webhooks_queue_is_kept_and_taken_back(self):
        ids = self.sessions("sesorph", 1)
        sim = self.start_sim([swtest.sim_session(ids[0], [[0, "Active"]])])
        rx = self.receiver()
        rx.answer(500)
        hooks = {"gone": self.webhook(rx.url)}
        daemon = self.make_daemon(sim, ids, hooks, extra=self.CONTROL).start()
        daemon.wait_control()
        event = daemon.wait_for_event(timeout=20)
        swtest.wait_until(lambda: any(r.id == event["id"] for r in rx.snapshot()), timeout=10)
        self.assertEqual(self.orphans(daemon), {})
        self.assertEqual(self.metric(daemon, "sessionwatch_webhook_orphaned_queues"), 0)

        # Removed with an undelivered event: an orphaned queue, in the status
        # (both forms) and the metrics.
        self.assertEqual(self.reload(daemon, sim, ids, {})["webhooksRemoved"], 1)
        outbox = os.path.join(self.tmp.state, "outbox-gone")
        queues = self.orphans(daemon)
        self.assertEqual(list(queues), ["gone"])
        self.assertEqual(queues["gone"]["file"], outbox)
        self.assertEqual(queues["gone"]["events"], 1)
        self.assertGreater(queues["gone"]["oldestAgeSeconds"], 0)
        self.assertEqual(self.metric(daemon, "sessionwatch_webhook_orphaned_queues"), 1)
        self.assertEqual(self.metric(daemon, "sessionwatch_webhook_orphaned_events"), 1)
        text = daemon.ctl("status")
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertRegex(text.stdout, rf"Orphaned queues\s+gone: 1 event\(s\) \(oldest \d+ s\), {outbox}")
        self.assertEqual(outbox_pending(outbox), [event["id"]])

        # Back in the config: the same queue is delivered.
        rx.answer(200)
        self.assertEqual(self.reload(daemon, sim, ids, hooks)["webhooksAdded"], 1)
        self.assertEqual(self.orphans(daemon), {})
        self.wait_delivered(rx, [event["id"]])
        swtest.wait_until(lambda: outbox_pending(outbox) == [], timeout=10)
        self.assertEqual(self.metric(daemon, "sessionwatch_webhook_orphaned_queues"), 0)
        self.stop(daemon)
        self.assert_signed(rx)

    def test_an_orphaned_queue_is_deleted_once_its_events_expire(self):
        ids = self.sessions("sesexp", 1)
        sim = self.start_sim([swtest.sim_session(ids[0], [[0, "Active"]])])
        rx = self.receiver()
        rx.answer(500)
        daemon = self.make_daemon(sim, ids, {"short": self.webhook(rx.url, **{"max-age": "3s"})},
                                  extra=self.CONTROL).start()
        daemon.wait_control()
        event = daemon.wait_for_event(timeout=20)
        swtest.wait_until(lambda: any(r.id == event["id"] for r in rx.snapshot()), timeout=10)
        self.reload(daemon, sim, ids, {})
        outbox = os.path.join(self.tmp.state, "outbox-short")
        self.assertEqual(self.orphans(daemon)["short"]["events"], 1)
        # It keeps the max-age of the webhook it was: gone within seconds.
        swtest.wait_until(lambda: self.orphans(daemon) == {}, timeout=15, message="the orphaned queue stays")
        self.assertFalse(os.path.exists(outbox), "the expired orphaned outbox file stays")
        self.assertEqual(self.metric(daemon, "sessionwatch_webhook_orphaned_queues"), 0)
        self.assertIn(f"Removed the orphaned webhook outbox '{outbox}'", daemon.stderr_text())
        self.assertIn("older than max-age", daemon.stderr_text())
        self.stop(daemon)
        self.assertNotIn(event["id"], rx.delivered_ids())

    def test_a_start_finds_the_outboxes_of_webhooks_it_does_not_have(self):
        ids = self.sessions("sesstart", 1)
        sim = self.start_sim([swtest.sim_session(ids[0], [[0, "Active"]])])
        rx_down, rx_up = self.receiver(), self.receiver()
        rx_down.answer(500)
        first = self.make_daemon(sim, ids, {"down": self.webhook(rx_down.url), "up": self.webhook(rx_up.url)})
        first.start()
        event = first.wait_for_event(timeout=20)
        down, up = (os.path.join(self.tmp.state, f"outbox-{n}") for n in ("down", "up"))
        self.wait_delivered(rx_up, [event["id"]])
        # The receiver has it before the daemon has its answer: wait until
        # the daemon has marked it delivered in its outbox.
        def marked_delivered():
            with open(up, "rb") as f:
                written = event["id"].encode() in f.read()
            return written and outbox_pending(up) == []
        swtest.wait_until(marked_delivered, timeout=10, ignore=(FileNotFoundError,),
                          message=lambda: f"not marked delivered in 'up': {outbox_pending(up)}")
        self.stop(first)
        self.assertEqual(outbox_pending(down), [event["id"]])

        # Neither is configured now: the one with an event is an orphaned
        # queue (the default max-age), the empty one is removed.
        again = self.make_daemon(sim, ids, {}, name="sessionwatchd-again", extra=self.CONTROL).start()
        again.wait_control()
        swtest.wait_until(lambda: not os.path.exists(up), timeout=10, message="the empty outbox stays")
        queues = self.orphans(again)
        self.assertEqual(list(queues), ["down"])
        self.assertEqual(queues["down"]["events"], 1)
        self.assertIn("Webhook 'down' is not configured", again.stderr_text())

        # Configured again by a reload: delivered.
        rx_down.answer(200)
        self.reload(again, sim, ids, {"down": self.webhook(rx_down.url)})
        self.wait_delivered(rx_down, [event["id"]])
        self.assertEqual(self.orphans(again), {})
        self.stop(again)

    # The in-memory window of a webhook is shared across sessions: one
    # session whose deliveries keep failing holds at most its share of it,
    # so other sessions' events are read back from disk and delivered.
    def test_one_sessions_retries_do_not_hold_the_others_on_disk(self):
        a, b, c = self.sessions("seshol", 3)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in (a, b, c)])
        rx = self.receiver()
        rx.answer_subject(a, 500)
        daemon = self.make_daemon(sim, [a], {"main": self.webhook(rx.url)}, extra=self.CONTROL,
                                  env={"SW_TEST_HOOKS": "1", "SW_TEST_WEBHOOK_WINDOW": "4"}).start()
        daemon.wait_control()
        a_events = [daemon.wait_for_event(lambda e: e["subject"] == a, timeout=20)]
        for k in range(7):
            a_events.append(self.change(daemon, sim, a, "Waiting" if k % 2 == 0 else "Active"))
        # Eight events of A, twice the window: B's and C's come after them.
        daemon.ctl_json("watch", b, c)
        others = daemon.wait_for_events(lambda e: e["subject"] in (b, c), count=2, timeout=20)
        self.wait_delivered(rx, [e["id"] for e in others], timeout=10)
        self.assertEqual([i for i in rx.delivered_ids() if i in {e["id"] for e in a_events}], [])

        # The receiver takes A's events again: all of them, in order.
        rx.answer_subject(a, None)
        self.wait_delivered(rx, [e["id"] for e in a_events], timeout=30)
        self.assert_session_order(daemon.events(), rx)
        self.stop(daemon)
        self.assert_signed(rx)

    def test_a_tls_failure_is_counted_as_tls(self):
        # https:// at a receiver that speaks plain HTTP: the handshake
        # fails, the event stays queued and is retried, counted as tls.
        ids = self.sessions("sestlswh", 1)
        sim = self.start_sim([swtest.sim_session(ids[0], [[0, "Active"]])])
        rx = self.receiver()
        url = rx.url.replace("http://", "https://", 1)
        daemon = self.make_daemon(sim, ids, {"secure": self.webhook(url)}, extra=self.CONTROL).start()
        daemon.wait_control()
        daemon.wait_for_event(timeout=20)

        def failures():
            hooks = {w["name"]: w for w in daemon.ctl_json("status")["webhooks"]}
            return hooks["secure"]["failures"]

        swtest.wait_until(lambda: failures().get("tls", 0) >= 2, timeout=20,
                          message=lambda: f"no tls failures counted: {failures()}")
        self.assertEqual(failures().get("network", 0), 0)
        self.assertEqual(rx.delivered_ids(), [])
        self.assertTrue(any("to webhook 'secure' failed: tls (" in line for line in daemon.stderr_lines()),
                        daemon.stderr_text())

    def test_failures_are_retried_or_dropped(self):
        cases = ["drop400", "redirect", "ratelimit", "hang", "close"]
        ids = {case: f"ses{case}{uuid.uuid4().hex[:6]}" for case in cases}
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids.values()])
        rx = self.receiver()
        daemon = self.make_daemon(sim, list(ids.values()), {"main": self.webhook(rx.url, timeout="500ms")})
        daemon.start()
        firsts = daemon.wait_for_events(count=len(ids), timeout=20)
        self.wait_delivered(rx, [e["id"] for e in firsts])

        def attempts(event_id):
            return [r for r in rx.snapshot() if r.id == event_id]

        def change(case, status, mode, headers=None, count=1):
            rx.answer(mode, headers=headers, count=count)
            return self.change(daemon, sim, ids[case], status)

        with self.subTest("other 4xx drops the event"):
            event = change("drop400", "Waiting", 400)
            swtest.wait_until(lambda: "refused it with HTTP 400" in daemon.stderr_text(), timeout=10,
                              message="no drop error")
            follow = change("drop400", "Failed", 200)
            self.wait_delivered(rx, [follow["id"]])
            self.assertEqual(len(attempts(event["id"])), 1, "a dropped event was retried")
            self.assertNotIn(event["id"], rx.delivered_ids())

        with self.subTest("3xx is a failure, retried, never followed"):
            event = change("redirect", "Waiting", 301, headers={"Location": rx.url + "/moved"}, count=2)
            self.wait_delivered(rx, [event["id"]])
            self.assertGreaterEqual(len(attempts(event["id"])), 3)
            self.assertEqual([r for r in rx.snapshot() if r.path != "/hook"], [], "a redirect was followed")

        with self.subTest("429 waits for Retry-After"):
            event = change("ratelimit", "Waiting", 429, headers={"Retry-After": "2"})
            self.wait_delivered(rx, [event["id"]])
            tries = attempts(event["id"])
            self.assertEqual(len(tries), 2)
            # retry-min is 50 ms: only Retry-After explains a longer wait.
            self.assertGreaterEqual(tries[1].time - tries[0].time, 1.5)

        with self.subTest("a hung request times out and is retried"):
            event = change("hang", "Waiting", "hang")
            self.wait_delivered(rx, [event["id"]])
            self.assertGreaterEqual(len(attempts(event["id"])), 2)

        with self.subTest("a closed connection is retried"):
            event = change("close", "Waiting", "close", count=2)
            self.wait_delivered(rx, [event["id"]])
            self.assertGreaterEqual(len(attempts(event["id"])), 3)

        self.assert_signed(rx)
        self.stop(daemon)


    def test_without_a_state_folder_the_daemon_refuses_to_start(self):
        ids = self.sessions("sesnostate", 1)
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        daemon = self.make_daemon(sim, ids, {"main": self.webhook("http://127.0.0.1:9/hook")})
        # The same config without [state]: webhooks could not keep their outbox.
        text = "\n".join(line for line in daemon.config_text.splitlines()
                         if not line.startswith("path = ") and line != "[state]")
        with open(daemon.config_path, "w") as f:
            f.write(text)
        daemon.start()
        swtest.assert_exit(daemon.wait(timeout=20), swtest.EXIT_FAILURE, daemon)
        self.assertIn("Webhooks need a state folder", daemon.stderr_text())
        self.assertEqual(daemon.events(), [])


if __name__ == "__main__":
    unittest.main()
