"""The journal sink: one structured entry per transition in a real journald.

sessionwatchd runs inside a private journald's mount namespace (swtest's
JournalNamespace) and polls apisim outside it; the test moves sessions
through every status and reads the journal back with journalctl -o json. Each
entry carries the fields and priority of DESIGN section 4 and the id of the
event printed on stdout; [journal] statuses filters; every MESSAGE_ID has a
catalog entry; without a journald the daemon says so once and goes on.
"""

import datetime
import json
import os
import re
import unittest
import uuid

import swtest

KEY = f"swjournal-SECRET-{uuid.uuid4().hex}"
TEAM = "tea20220103zvy4auu"
KNOWN = {"Pending", "Active", "Waiting", "Succeeded", "Failed", "Cancelling", "Cancelled"}

MESSAGE_IDS = {
    "Pending": "8534bbf283814c69a2c48fa4a012073f",
    "Active": "d71fbb2ee25746318d837ff155d94411",
    "Waiting": "23108cf0a7044d57b2eb818549d09ca9",
    "Succeeded": "6170eb8b4c78491f829a05b770a78d5b",
    "Failed": "c6535f30cb814da8b4e707838829121c",
    "Cancelling": "96e4ccb1c8d44c33bea1f765a5173c1c",
    "Cancelled": "851d377030f1454b86cc8f443528ff4a",
    "unknown": "d8d14eecabed4ff4bdc7a95570514e95",
    "gone": "6f198cb3aa0b499eabdebc30fcefb0ed",
    "stalled": "ffcaa2342a0f4de08ac8182ca18516d0",
}
PRIORITIES = {"Failed": 3, "Waiting": 4, "Cancelled": 4, "Cancelling": 5, "unknown": 5}

# Every status, an unknown one ("Paused") included, first observations of
# both Pending and Active.
SCRIPTS = {
    "lifecycle": ["Pending", "Active", "Waiting", "Active", "Succeeded"],
    "failing": ["Active", "Failed"],
    "cancelled": ["Active", "Cancelling", "Cancelled"],
    "odd": ["Pending", "Paused", "Failed"],
}


def kind_of(status):
    return status if status in KNOWN else "unknown"


def rfc3339_seconds(text):
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(\.\d+)?(Z|\+00(?::?00)?)", text)
    if not m:
        raise AssertionError(f"not an RFC 3339 UTC time: {text!r}")
    base = datetime.datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S")
    return base.replace(tzinfo=datetime.timezone.utc).timestamp() + float(m.group(3) or 0)


def catalog_ids():
    path = os.path.join(os.environ["SW_SOURCE_DIR"], "systemd", "sessionwatchd.catalog")
    ids = {}
    with open(path) as f:
        current = None
        for line in f:
            m = re.match(r"^-- ([0-9a-f]{32})\s*$", line)
            if m:
                current = m.group(1)
                ids[current] = []
            elif current:
                ids[current].append(line)
    return ids


class JournalSinkTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.sim = swtest.ApiSim(self.tmp, key=KEY).register(self).start()
        self.ids = {name: f"ses{name}{uuid.uuid4().hex[:8]}" for name in SCRIPTS}
        self.sim.add_sessions([swtest.sim_session(self.ids[name], [[-1, script[0]]], name=f"Journal {name}",
                                                  runbook_id="rbk20220120z15kl79", teamID=TEAM)
                               for name, script in SCRIPTS.items()])

    def start_daemon(self, wrapper, journal=None):
        config = {
            "api": {"url": self.sim.url, "key-file": "@KEY_FILE@", "rate-limit": "off"},
            "poll": {"interval": "50ms", "waiting-interval": "50ms"},
            "watch": {"session": list(self.ids.values())},
            "journal": journal or {},
        }
        daemon = swtest.Daemon(self.tmp, config, api_key=KEY, print_events=True, wrapper=wrapper)
        return daemon.register(self).start()

    def drive(self, daemon):
        """Play every script, one step per round, each step seen by the
        daemon before the next; return the events printed."""
        rounds = max(len(script) for script in SCRIPTS.values())
        for k in range(rounds):
            if k > 0:
                for name, script in SCRIPTS.items():
                    if k < len(script):
                        self.sim.set_status(self.ids[name], script[k])
            wanted = sum(min(k + 1, len(script)) for script in SCRIPTS.values())
            daemon.wait_for_events(count=wanted, timeout=15)
        events = daemon.events()
        self.assertEqual(len(events), sum(len(s) for s in SCRIPTS.values()))
        return events

    def journal_events(self, journal):
        """The daemon's journal entries that are events (they have an EVENT_ID)."""
        return [e for e in journal.entries(SYSLOG_IDENTIFIER="sessionwatchd") if "EVENT_ID" in e]

    def test_entries_have_the_fields_and_priorities(self):
        journal = swtest.JournalNamespace(self.tmp).register(self).start()
        daemon = self.start_daemon(journal.wrap(self.tmp.root))
        events = self.drive(daemon)
        journal.sync()
        entries = self.journal_events(journal)
        self.assertEqual(len(entries), len(events), [e.get("MESSAGE") for e in entries])
        by_event_id = {e["EVENT_ID"]: e for e in entries}
        self.assertEqual(set(by_event_id), {e["id"] for e in events}, "journal and stdout events differ")

        for event in events:
            entry = by_event_id[event["id"]]
            data = event["data"]
            session = data["session"]
            status, previous = data["status"], data["previousStatus"]
            with self.subTest(event=f"{event['subject']} {previous} -> {status}"):
                self.assertEqual(entry["SESSION_ID"], event["subject"])
                self.assertEqual(entry["SESSION_NAME"], session["name"])
                self.assertEqual(entry["SESSION_STATUS"], status)
                if previous is None:
                    self.assertNotIn("SESSION_PREVIOUS_STATUS", entry)
                    message = f"Session '{session['name']}' ({event['subject']}) is {status}"
                else:
                    self.assertEqual(entry["SESSION_PREVIOUS_STATUS"], previous)
                    message = f"Session '{session['name']}' ({event['subject']}) {previous} \u2192 {status}"
                self.assertEqual(entry["MESSAGE"], message)
                self.assertEqual(entry["PRIORITY"], str(PRIORITIES.get(kind_of(status), 6)))
                self.assertEqual(entry["MESSAGE_ID"], MESSAGE_IDS[kind_of(status)])
                self.assertEqual(entry["RUNBOOK_ID"], "rbk20220120z15kl79")
                self.assertEqual(entry["TEAM_ID"], TEAM)
                self.assertAlmostEqual(rfc3339_seconds(entry["SESSION_UPDATED_AT"]),
                                       rfc3339_seconds(session["updatedAt"].replace(" ", "T")), delta=2e-6)
                self.assertEqual(entry["SYSLOG_IDENTIFIER"], "sessionwatchd")
                self.assertEqual(entry["_TRANSPORT"], "journal")
                self.assertEqual(entry["_PID"], str(daemon.pid))

        # Per session, the journal has the transitions in the order they happened.
        for name, script in SCRIPTS.items():
            sid = self.ids[name]
            self.assertEqual([e["SESSION_STATUS"] for e in entries if e["SESSION_ID"] == sid], script, name)

        # journalctl can select by priority: errors are exactly the failures.
        errors = [e for e in journal.entries(args=["--priority=err"], SYSLOG_IDENTIFIER="sessionwatchd")
                  if "EVENT_ID" in e]
        self.assertEqual(sorted(e["SESSION_ID"] for e in errors), sorted([self.ids["failing"], self.ids["odd"]]))

        # Every MESSAGE_ID written has a catalog entry with a subject.
        catalog = catalog_ids()
        for message_id in {e["MESSAGE_ID"] for e in entries}:
            self.assertIn(message_id, catalog, f"MESSAGE_ID {message_id} has no catalog entry")
            self.assertTrue(any(line.startswith("Subject: ") for line in catalog[message_id]), message_id)

        # The key is nowhere in the journal, nor in the daemon's output.
        everything = json.dumps(journal.entries(decode=True))
        self.assertNotIn(KEY, everything)
        self.assertNotIn(KEY, daemon.stdout_text() + daemon.stderr_text())
        self.assertEqual(daemon.stop(), swtest.EXIT_OK)

    def test_statuses_filter(self):
        journal = swtest.JournalNamespace(self.tmp).register(self).start()
        daemon = self.start_daemon(journal.wrap(self.tmp.root), journal={"statuses": "Failed Waiting"})
        events = self.drive(daemon)
        journal.sync()
        entries = self.journal_events(journal)
        wanted = [e["id"] for e in events if e["data"]["status"] in ("Failed", "Waiting")]
        self.assertEqual(len(wanted), 3)
        self.assertEqual(sorted(e["EVENT_ID"] for e in entries), sorted(wanted),
                         [(e["SESSION_STATUS"], e["MESSAGE"]) for e in entries])

    def test_catalog_covers_every_message_id(self):
        catalog = catalog_ids()
        for what, message_id in MESSAGE_IDS.items():
            with self.subTest(what):
                self.assertIn(message_id, catalog)
                text = "".join(catalog[message_id])
                self.assertRegex(text, r"(?m)^Subject: \S")
                self.assertRegex(text, r"(?m)^Defined-By: sessionwatch")
        self.assertEqual(set(catalog), set(MESSAGE_IDS.values()), "catalog entries without a use")

    def test_without_journald(self):
        # A mount namespace of our own where /run/systemd/journal is empty.
        setup = ('mount --make-rprivate / && mkdir -p /run/systemd/journal && '
                 'mount -t tmpfs -o size=1m swtest-nojournal /run/systemd/journal && exec "$@"')
        wrapper = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", setup, "sh"]
        daemon = self.start_daemon(wrapper)
        events = self.drive(daemon)
        self.assertEqual(sorted({e["subject"] for e in events}), sorted(self.ids.values()))
        complaints = [line for line in daemon.stderr_lines() if "journal" in line.lower()]
        self.assertEqual(len(complaints), 1, complaints)
        self.assertIn("Cannot write events to the journal", complaints[0])
        self.assertEqual(daemon.stop(), swtest.EXIT_OK)


if __name__ == "__main__":
    unittest.main()
