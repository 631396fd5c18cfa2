"""Hostile text from the API and from control-socket peers.

Strings from the API (a session's status, name, runbook) reach
sessionwatchctl's human output only with control characters replaced,
so a status like "Act\\x1b[31mive\\nINJECTED" can neither colour the
terminal nor forge a row of the `list` table. Control-socket replies are
valid JSON in valid UTF-8 whatever bytes the request held, and a request
object with a duplicate key is refused as bad-json instead of running one of
its commands.
"""

import json
import unittest

import swtest

HOSTILE_STATUS = "Act\x1b[31mive\nINJECTED"
HOSTILE_RUNBOOK = "rbk\x1b]0;owned\x07\r\nFORGED"
HOSTILE_NAME = "Deploy\x1b[2J\x9b31m\nFORGED row"


class UntrustedTextTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)

    def start(self, sessions, ids):
        sim = swtest.ApiSim(self.tmp, scenario={"sessions": sessions}).register(self).start()
        config = swtest.Daemon.basic_config(sim.url, sessions=ids, extra={
            "api": {"rate-limit": "off"},
            "poll": {"interval": "50ms", "waiting-interval": "50ms", "mode": "get"},
            "journal": {"enable": False},
        })
        daemon = swtest.Daemon(self.tmp, config).register(self)
        daemon.start()
        daemon.wait_control()
        return sim, daemon

    def raw_reply(self, daemon, payload):
        """Send raw request bytes, return the raw reply bytes (one line)."""
        return daemon.request_raw(payload)

    def strict(self, data):
        """Decode a reply line strictly: UTF-8 errors and bad JSON raise."""
        text = data.decode("utf-8", errors="strict")
        self.assertTrue(text.endswith("\n") and text.count("\n") == 1, repr(text))
        return json.loads(text)

    def test_list_and_events_show_api_strings_sanitised(self):
        sessions = [
            swtest.sim_session("ses_evil", [(0, "Active")], name=HOSTILE_NAME, runbook_id=HOSTILE_RUNBOOK),
            swtest.sim_session("ses_good", [(0, "Active")]),
        ]
        sim, daemon = self.start(sessions, ["ses_evil", "ses_good"])
        swtest.wait_until(lambda: all(s["status"] == "Active" for s in daemon.ctl_json("list")["sessions"]),
                          timeout=15, message="the daemon did not see both sessions")

        # `events` was already clean; it stays so, names included.
        proc = swtest.Process([swtest.binary_path("SW_CTL"), "--socket", daemon.control_socket, "events"],
                              self.tmp.root, name="ctl-events").register(self)
        proc.start()
        proc.wait_for_stdout(lambda line: line.startswith("-- live"), timeout=15)
        sim.set_status("ses_evil", HOSTILE_STATUS)

        def known():
            listed = {s["id"]: s for s in daemon.ctl_json("list")["sessions"]}
            return listed if listed["ses_evil"]["status"] == HOSTILE_STATUS else None
        seen = swtest.wait_until(known, timeout=15, message="the daemon did not see the new status")
        # --json is for scripts: the API's strings as they are.
        self.assertEqual(seen["ses_evil"]["runbook"], HOSTILE_RUNBOOK)

        done = daemon.ctl("list")
        self.assertEqual(done.returncode, 0, done.stderr)
        out = done.stdout
        for bad in ("\x1b", "\r", "\x07", "\x9b"):
            self.assertNotIn(bad, out)
        rows = out.splitlines()
        self.assertEqual(len(rows), 1 + 2 + 1, rows)  # header, two sessions, the count: nothing forged
        self.assertRegex(rows[0], r"^ID +STATUS +UPDATED +RUNBOOK +SOURCE$")
        evil = next(r for r in rows if r.startswith("ses_evil"))
        self.assertIn(" Act?[31mive?INJECTED ", evil)
        self.assertIn(" rbk?]0;owned???FORGED ", evil)
        self.assertEqual(rows[-1], "2 session(s)")

        proc.wait_for_stdout(lambda line: "ses_evil" in line and "\u2192" in line, timeout=15)
        proc.stop()
        text = proc.stdout_text()
        for bad in ("\x1b", "\r", "\x07", "\x9b"):
            self.assertNotIn(bad, text)
        line = next(l for l in text.splitlines() if "ses_evil" in l and "\u2192" in l)
        self.assertIn("ses_evil 'Deploy?[2J?31m?FORGED row' Active \u2192 Act?[31mive?INJECTED", line)
        daemon.stop()

    def test_replies_are_valid_utf8_json_whatever_the_request_held(self):
        sim, daemon = self.start([swtest.sim_session("ses_ok", [(0, "Active")])], ["ses_ok"])
        cases = [
            (b'{"command":"\xff\xfe"}', "bad-json"),
            (b'{"command":"stat\xc3"}', "bad-json"),           # a character cut in half
            (b'{"command":"\xed\xa0\x80"}', "bad-json"),       # a UTF-8-encoded surrogate
            (b'{"command":"watch","ids":["\xc0\xaf"]}', "bad-json"),  # overlong
            (b'{"command":"watch","ids":["ses_\xe2\x82\xac"]}', "bad-id"),  # valid UTF-8, bad id
            # Valid UTF-8 cut by the daemon's own limit on what it repeats.
            (b'{"command":"' + "é".encode() * 200 + b'"}', "unknown-command"),
            (b'{"command":"x' + "é".encode() * 200 + b'"}', "unknown-command"),
        ]
        for payload, code in cases:
            with self.subTest(payload=payload[:40]):
                reply = self.strict(self.raw_reply(daemon, payload))
                self.assertEqual((reply["ok"], reply["error"]), (False, code), reply)
                self.assertTrue(reply["message"])
        reply = self.strict(self.raw_reply(daemon, b'{"command":"\xff\xfe"}'))
        self.assertIn("UTF-8", reply["message"])
        self.assertTrue(self.strict(self.raw_reply(daemon, b'{"command":"status"}'))["ok"])
        daemon.stop()

    def test_a_request_with_a_duplicate_key_is_refused(self):
        sim, daemon = self.start([swtest.sim_session("ses_ok", [(0, "Active")])], ["ses_ok"])
        reloads = lambda: daemon.stderr_text().count("Reloaded '")  # noqa: E731
        before = reloads()
        cases = [
            b'{"command":"status","command":"reload"}',
            b'{"command":"reload","command":"status"}',
            b'{"command":"status","comm\\u0061nd":"reload"}',   # the same key, spelt with an escape
            b'{"command":"list","limit":5,"limit":6}',
            b'{"command":"watch","ids":["ses_a"],"ids":["ses_b"]}',
            b'{"command":"status","x":{"a":1,"a":2}}',          # nested objects too
        ]
        for payload in cases:
            with self.subTest(payload=payload):
                reply = self.strict(self.raw_reply(daemon, payload))
                self.assertEqual((reply["ok"], reply["error"]), (False, "bad-json"), reply)
                self.assertIn("duplicate", reply["message"].lower())
        # Nothing ran: no session was added, and no reload happened.
        self.assertNotIn("ses_a", [s["id"] for s in daemon.ctl_json("list")["sessions"]])
        self.assertNotIn("ses_b", [s["id"] for s in daemon.ctl_json("list")["sessions"]])
        self.assertEqual(reloads(), before)
        # Distinct keys, also the same key in two different objects, are fine.
        reply = self.strict(self.raw_reply(daemon, b'{"command":"status","a":{"x":1},"b":{"x":1}}'))
        self.assertTrue(reply["ok"], reply)
        daemon.stop()


if __name__ == "__main__":
    unittest.main()
