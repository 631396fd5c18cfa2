"""Reload applies what operators rotate, without a restart.

sessionwatchd runs against apisim. The tests change the key file, the API
URL or a webhook secret file, reload, and check what the daemon does next:
after apisim switches keys (the old one is refused with 401 from then on)
and the key file is rewritten, polling goes on with the new key with no
more 401s than the few requests already on their way, and a status change
made around the switch is announced; a list request sent with the old key
and refused after the reload holds nothing; a hold-off for a rejected key
ends with the reload; a new [api] url sends the polls to a second apisim;
a new max-connections changes how many polls are in flight; a new
[http] listen moves the listener (and an address that cannot be bound
leaves it where it was); what still needs a restart is named; a new
webhook secret signs the next delivery. Neither the key nor a secret
appears in the daemon's output.
"""

import os
import socket
import unittest
import uuid

import swtest
from webhook_receiver import WebhookReceiver

OLD_KEY = "reload-old-key-3f1c9a"
NEW_KEY = "reload-new-key-8d27e4"
SECRET_A = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
SECRET_B = "whsec_" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="
INTERVAL = "50ms"
IDS = ["ses_r1", "ses_r2", "ses_r3", "ses_r4"]


def polls(sim, session):
    return sim.counters(session=session, times=False)["sessions"].get(session, {}).get("count", 0)


def unauthorized(sim):
    return sim.counters(times=False)["requests"]["unauthorized"]


class ReloadTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.daemons = []

    def tearDown(self):
        for daemon in self.daemons:
            for text in (daemon.stdout_text(), daemon.stderr_text()):
                for secret in (OLD_KEY, NEW_KEY, SECRET_A[6:], SECRET_B[6:]):
                    self.assertNotIn(secret, text, f"{daemon.name} printed a key or secret")

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, ids=IDS, status="Active", key=OLD_KEY):
        sessions = [swtest.sim_session(sid, [(0, status)]) for sid in ids]
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}, key=key).register(self).start()

    def config(self, url, extra=None):
        config = swtest.Daemon.basic_config(url, sessions=IDS, extra={
            "api": {"rate-limit": "off"},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL, "mode": "get"},
            "journal": {"enable": False},
        })
        for name, keys in (extra or {}).items():
            config.setdefault(name, {}).update(keys)
        return config

    def start_daemon(self, config):
        daemon = swtest.Daemon(self.tmp, config, api_key=OLD_KEY, print_events=True).register(self)
        self.daemons.append(daemon)
        daemon.start()
        daemon.wait_control()
        return daemon

    def rewrite(self, daemon, config):
        with open(daemon.config_path, "w") as f:
            f.write(daemon.expand(swtest.render_ini(config)))

    def wait_polled(self, sim, session, more=3, timeout=15):
        start = polls(sim, session)
        swtest.wait_until(lambda: polls(sim, session) >= start + more, timeout=timeout,
                          message=f"{session} was not polled {more} more times")

    def wait_status(self, daemon, session, status):
        return daemon.wait_for_event(lambda e: e.get("subject") == session and e["data"]["status"] == status,
                                     timeout=15)

    def reload(self, daemon):
        reply = daemon.ctl_json("reload")
        self.assertTrue(reply["ok"], reply)
        return reply

    def stop(self, daemon):
        returncode = daemon.stop()
        swtest.assert_exit(returncode, 0, daemon)
        self.assertNotIn("Sanitizer", daemon.stderr_text())
        self.assertNotIn("runtime error", daemon.stderr_text())

    def secret_file(self, secret):
        path = os.path.join(self.tmp.conf, f"hook-{uuid.uuid4().hex[:6]}.secret")
        with open(path, "w") as f:
            f.write(secret + "\n")
        os.chmod(path, 0o600)
        return path

    # -- tests -----------------------------------------------------------------

    def test_a_rotated_key_is_used_from_the_next_request(self):
        sim = self.start_sim()
        daemon = self.start_daemon(self.config(sim.url))
        for sid in IDS:
            self.wait_polled(sim, sid)
        self.assertEqual(unauthorized(sim), 0)

        # The API switches keys first: from here on the old one is refused.
        sim.admin("POST", "/_sim/config", {"apiKey": NEW_KEY})
        sim.set_status("ses_r1", "Waiting")
        with open(daemon.key_file, "w") as f:
            f.write(NEW_KEY + "\n")
        reply = self.reload(daemon)
        self.assertIsNone(reply["restartNeeded"])
        daemon.wait_for_stderr(lambda line: "Using the API key from" in line and daemon.key_file in line)

        # The change made around the switch is announced, and every session
        # is polled again (only requests with the new key are served).
        self.wait_status(daemon, "ses_r1", "Waiting")
        for sid in IDS:
            self.wait_polled(sim, sid)
        sim.set_status("ses_r2", "Failed")
        self.wait_status(daemon, "ses_r2", "Failed")

        # Refused: what was in flight with the old key, and what started
        # between the switch and the reload (a 401 holds every request).
        refused = unauthorized(sim)
        self.assertLessEqual(refused, 2 * len(IDS), f"{refused} requests refused with 401")
        self.wait_polled(sim, "ses_r3")
        self.assertEqual(unauthorized(sim), refused, "401s after the reload")
        self.assertEqual(daemon.ctl_json("status")["polls"]["auth"], refused)
        self.assertTrue(daemon.running)
        self.stop(daemon)

    def test_a_rejected_key_hold_ends_with_the_reload_that_brings_a_new_one(self):
        sim = self.start_sim()
        daemon = self.start_daemon(self.config(sim.url))
        self.wait_polled(sim, "ses_r1")
        sim.admin("POST", "/_sim/config", {"apiKey": NEW_KEY})
        daemon.wait_for_stderr(lambda line: "The API rejected the key" in line)
        refused = unauthorized(sim)

        with open(daemon.key_file, "w") as f:
            f.write(NEW_KEY + "\n")
        self.reload(daemon)
        sim.set_status("ses_r4", "Failed")
        self.wait_status(daemon, "ses_r4", "Failed")
        for sid in IDS[:3]:  # a Failed session is not polled any more
            self.wait_polled(sim, sid)
        self.assertLessEqual(unauthorized(sim) - refused, len(IDS))
        self.stop(daemon)

    def test_a_401_to_a_list_sent_with_the_old_key_holds_nothing(self):
        sim = self.start_sim()
        config = self.config(sim.url, extra={"poll": {"mode": "list"},
                                             "watch": {"runbook": "rbk_test", "discover-interval": "100ms"}})
        config["watch"]["session"] = []
        daemon = self.start_daemon(config)
        swtest.wait_until(lambda: sim.counters(times=False)["requests"]["list"] >= 3, timeout=10)

        # The next list request is held by the API for a second: it goes
        # out with the old key and is answered after the reload, with 401.
        sim.fault("delay", endpoint="list", delay_ms=1000, count=1)
        swtest.wait_until(lambda: sim.counters(times=False)["faults"].get("delay", 0) == 1, timeout=10)
        sim.admin("POST", "/_sim/config", {"apiKey": NEW_KEY})
        with open(daemon.key_file, "w") as f:
            f.write(NEW_KEY + "\n")
        self.reload(daemon)
        swtest.wait_until(lambda: unauthorized(sim) >= 1, timeout=10, message="no 401 to the held list")

        # Without a hold of every request (30 s), the change shows at once.
        sim.set_status("ses_r2", "Failed")
        self.wait_status(daemon, "ses_r2", "Failed")
        self.assertNotIn("holding all requests", daemon.stderr_text().split("Using the API key from")[-1])
        self.stop(daemon)

    def test_a_new_url_sends_the_polls_to_the_other_api(self):
        first = self.start_sim()
        second = self.start_sim(status="Active", key=OLD_KEY)
        second.set_status("ses_r3", "Failed")
        daemon = self.start_daemon(self.config(first.url))
        for sid in IDS:
            self.wait_polled(first, sid)
        self.assertEqual(polls(second, "ses_r1"), 0)

        self.rewrite(daemon, self.config(second.url))
        reply = self.reload(daemon)
        self.assertIsNone(reply["restartNeeded"])
        daemon.wait_for_stderr(lambda line: f"Requests go to '{second.url}'" in line)
        after = {sid: polls(first, sid) for sid in IDS}
        self.wait_status(daemon, "ses_r3", "Failed")
        for sid in ("ses_r1", "ses_r2", "ses_r4"):  # a Failed session is not polled any more
            self.wait_polled(second, sid)
        # The first API saw at most the polls already in flight at the reload.
        for sid in IDS:
            self.assertLessEqual(polls(first, sid) - after[sid], 1, sid)
        self.stop(daemon)

    def test_what_a_reload_cannot_apply_is_named(self):
        sim = self.start_sim()
        daemon = self.start_daemon(self.config(sim.url))
        self.wait_polled(sim, "ses_r1")
        self.rewrite(daemon, self.config(sim.url, extra={"api": {"max-body": "2M", "timeout": "7s"}}))
        reply = self.reload(daemon)
        self.assertEqual(reply["restartNeeded"], "[api] max-body")
        daemon.wait_for_stderr(lambda line: "Changes to [api] max-body take effect at the next restart." in line)
        self.wait_polled(sim, "ses_r1")
        self.stop(daemon)

    def test_max_connections_changes_how_many_polls_are_in_flight(self):
        ids = [f"ses_c{k}" for k in range(8)]
        sim = self.start_sim(ids=ids)
        # Every answer takes long enough for the polls to pile up.
        sim.fault("delay", endpoint="get", delay_ms=800, probability=1)
        config = self.config(sim.url, extra={"api": {"max-connections": "2"}})
        config["watch"]["session"] = ids
        daemon = self.start_daemon(config)
        swtest.wait_until(lambda: daemon.ctl_json("status")["inFlight"] == 2, timeout=10)

        config["api"]["max-connections"] = "6"
        self.rewrite(daemon, config)
        self.assertIsNone(self.reload(daemon)["restartNeeded"])
        seen = []
        swtest.wait_until(lambda: seen.append(daemon.ctl_json("status")["inFlight"]) or seen[-1] == 6,
                          timeout=10, message=f"in flight: {seen[-5:]}")
        self.assertLessEqual(max(seen), 6)
        sim.clear_faults()
        self.stop(daemon)

    def test_a_new_http_address_moves_the_listener(self):
        sim = self.start_sim()
        first, second = swtest.free_port(), swtest.free_port()
        daemon = self.start_daemon(self.config(sim.url, extra={"http": {"listen": f"127.0.0.1:{first}"}}))
        self.assertEqual(swtest.http_get(f"http://127.0.0.1:{first}/metrics").status, 200)

        self.rewrite(daemon, self.config(sim.url, extra={"http": {"listen": f"127.0.0.1:{second}"}}))
        self.assertIsNone(self.reload(daemon)["restartNeeded"])
        daemon.wait_for_stderr(lambda line: f"Serving HTTP on 127.0.0.1:{second}" in line)
        self.assertEqual(swtest.http_get(f"http://127.0.0.1:{second}/metrics").status, 200)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", first), timeout=5).close()

        # An address taken by someone else: the error names it, the
        # listener stays where it was.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            self.rewrite(daemon, self.config(sim.url, extra={"http": {"listen": f"127.0.0.1:{busy}"}}))
            self.reload(daemon)
            daemon.wait_for_stderr(lambda line: f"Failed to listen for HTTP on 127.0.0.1:{busy}" in line
                                   and f"still serving on 127.0.0.1:{second}" in line)
        self.assertEqual(swtest.http_get(f"http://127.0.0.1:{second}/metrics").status, 200)

        self.rewrite(daemon, self.config(sim.url, extra={"http": {"listen": ""}}))
        self.reload(daemon)
        daemon.wait_for_stderr(lambda line: f"No longer serving HTTP (on 127.0.0.1:{second})" in line)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", second), timeout=5).close()
        self.stop(daemon)

    def test_a_new_webhook_secret_signs_the_next_delivery(self):
        sim = self.start_sim()
        receiver = WebhookReceiver(secrets=(SECRET_B,)).register(self).start()
        secret = self.secret_file(SECRET_A)
        hook = {("webhook", "oncall"): {"url": receiver.url, "secret-file": secret, "statuses": "Failed",
                                        "retry-min": "50ms", "retry-max": "200ms"}}
        config = self.config(sim.url, extra=hook)
        daemon = self.start_daemon(config)
        self.wait_polled(sim, "ses_r1")

        with open(secret, "w") as f:
            f.write(SECRET_B + "\n")
        reply = self.reload(daemon)
        self.assertIsNone(reply["restartNeeded"])
        sim.set_status("ses_r2", "Failed")
        swtest.wait_until(lambda: any(r.json and r.json.get("subject") == "ses_r2" for r in receiver.delivered()),
                          timeout=15, message="the Failed event was not delivered")
        self.assertEqual(receiver.bad_signatures(), [])
        self.stop(daemon)


if __name__ == "__main__":
    unittest.main()
