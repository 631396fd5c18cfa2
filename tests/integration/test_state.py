"""Durable state across restarts, crashes, bad files and failing disks.

sessionwatchd keeps the last known status of every session in an
append-only, checksummed log in its state folder (daemon/state.h). These
tests run the real daemon against apisim, stop or kill it, change the world
while it is down, damage its state file or take its disk away, and check:

* a restart with unchanged sessions emits nothing; a session that changed
  while the daemon was down gives exactly one event, marked replayed, whose
  previousStatus is the stored status;
* terminal sessions restored from the state are not polled again; sessions no
  longer in the config are forgotten (and compacted out of the file);
* SIGKILL at random moments loses no transition, and a transition emitted
  twice has the same id both times; SIGTERM then restart repeats nothing;
* a corrupt file (bad checksum, unknown version) is moved aside byte for
  byte and the daemon starts fresh; a torn last record is not corruption;
  an empty file is a fresh start; an unreadable file that cannot be moved
  (read-only folder) stays untouched until it can be;
* a full disk or a read-only folder is logged (rate-limited), polling and
  events go on, and writing resumes once it can.

The tests that need a full or read-only file system run the daemon inside a
private mount namespace (`unshare --mount`, as root) with a tiny tmpfs or a
read-only bind mount on its state folder.
"""

import datetime
import os
import random
import re
import shutil
import signal
import subprocess
import time
import unittest
import uuid

import swtest

KEY = f"swstate-SECRET-{uuid.uuid4().hex}"
INTERVAL = "50ms"
TERMINAL = {"Succeeded", "Failed", "Cancelled"}
EVENT_ID = re.compile(r"^evt_[0-9a-f]{32}$")
CORRUPT_NAME = re.compile(r"^state\.corrupt-\d{8}T\d{6}Z(-\d+)?$")
STATE_HEADER = "sessionwatch-state 2"

# ---------------------------------------------------------------------------
# The state file, read independently of the daemon
# ---------------------------------------------------------------------------


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli) of bytes, as the state file's records use it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def state_line(payload):
    """One complete record line for `payload` (str), checksum included."""
    raw = payload.encode()
    return b"%08x " % crc32c(raw) + raw + b"\n"


def parse_state(data):
    """Parse a state file's bytes strictly: returns (lines, torn) where lines
    are the payloads of the complete lines (the header first) and torn the
    bytes after the last newline. Every complete line must carry a correct
    checksum."""
    *complete, torn = data.split(b"\n")
    payloads = []
    for number, line in enumerate(complete, 1):
        m = re.fullmatch(rb"([0-9a-f]{8}) (.+)", line)
        if not m:
            raise AssertionError(f"state line {number} is not '<crc> <payload>': {line!r}")
        if int(m.group(1), 16) != crc32c(m.group(2)):
            raise AssertionError(f"state line {number} has a bad checksum: {line!r}")
        payloads.append(m.group(2).decode())
    return payloads, torn


def decode_status(field):
    if field == "-":
        return None
    if field == "=":
        return ""
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), field)


def state_sessions(data):
    """The sessions a state file holds after replaying it (last record wins,
    `U` removes): {id: (status, updated_at_us, flags)}."""
    payloads, _ = parse_state(data)
    if not payloads or payloads[0] != STATE_HEADER:
        raise AssertionError(f"state file without the header {STATE_HEADER!r}: {payloads[:1]}")
    sessions = {}
    for payload in payloads[1:]:
        fields = payload.split(" ")
        if fields[0] == "S" and len(fields) == 5:
            sessions[fields[1]] = (decode_status(fields[2]), int(fields[3]), fields[4])
        elif fields[0] == "U" and len(fields) == 2:
            sessions.pop(fields[1], None)
        elif fields[0] == "W" and len(fields) == 3:
            pass  # a discovery watermark, not a session
        else:
            raise AssertionError(f"unknown state record {payload!r}")
    return sessions


def state_record_ids(data):
    """Every id named by an `S` record of the file (not replayed)."""
    payloads, _ = parse_state(data)
    return [p.split(" ")[1] for p in payloads[1:] if p.startswith("S ")]


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------
# Time stamps
# ---------------------------------------------------------------------------


def api_time_us(text):
    """Airplane's '2022-01-11 22:32:45.601486+00' as integer Unix microseconds."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?\+00", text)
    if not m:
        raise AssertionError(f"not an API timestamp: {text!r}")
    base = datetime.datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S")
    seconds = int(base.replace(tzinfo=datetime.timezone.utc).timestamp())
    return seconds * 1_000_000 + int((m.group(3) or "0").ljust(6, "0"))


def history_us(seconds):
    """apisim's history time (Unix seconds with six decimals) in microseconds."""
    return int(round(seconds * 1_000_000))


def transition_key(event):
    """(session, new status, updatedAt µs): what an event id is derived from."""
    return (event["subject"], event["data"]["status"], api_time_us(event["data"]["session"]["updatedAt"]))


# ---------------------------------------------------------------------------
# A private mount namespace kept alive by a placeholder process
# ---------------------------------------------------------------------------


class MountNamespace:
    """`unshare --mount` running `setup` (sh) and then `sleep`, which keeps the
    namespace alive while daemons come and go in it (`wrap()` is the argv
    prefix that enters it). The namespace's view of a path is `path(p)`
    (through /proc/PID/root), readable and writable from the test."""

    def __init__(self, testcase, tmp, setup, name="mountns"):
        for tool in ("unshare", "nsenter", "mount", "sleep"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest(f"{tool} is not installed")
        if os.geteuid() != 0:
            raise unittest.SkipTest("mount namespaces need root")
        self.tmp = tmp
        sleep = os.path.realpath(shutil.which("sleep"))
        script = f"set -eu\nmount --make-rprivate /\n{setup}\nexec {sleep} 100000\n"
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, name]
        self.process = swtest.Process(argv, tmp.root, name=name).register(testcase).start()
        want = os.stat(sleep)

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"the namespace set-up failed\n{self.process.describe()}")
            try:
                exe = os.stat(f"/proc/{self.process.pid}/exe")
            except OSError:
                return False
            return (exe.st_dev, exe.st_ino) == (want.st_dev, want.st_ino)

        swtest.wait_until(ready, timeout=10, message="the mount namespace did not come up")

    def wrap(self):
        return ["nsenter", f"--target={self.process.pid}", "--mount", f"--wd={self.tmp.root}", "--"]

    def path(self, path):
        return f"/proc/{self.process.pid}/root{os.path.abspath(path)}"

    def run(self, argv):
        result = subprocess.run(self.wrap() + [str(a) for a in argv], capture_output=True, text=True,
                                timeout=swtest.scaled(30))
        if result.returncode != 0:
            raise AssertionError(f"{argv} in the namespace: {result.returncode}\n{result.stderr}")
        return result.stdout


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


class StateTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.daemons = []

    def tearDown(self):
        for daemon in self.daemons:
            for text in (daemon.stdout_text(), daemon.stderr_text()):
                self.assertNotIn(KEY, text, f"{daemon.name} printed the API key")

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, sessions, name="apisim"):
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}, key=KEY,
                             name=name).register(self).start()

    def make_daemon(self, sim, ids, state=None, name="sessionwatchd", wrapper=()):
        config = {
            "api": {"url": sim.url, "key-file": "@KEY_FILE@", "rate-limit": "off", "timeout": "10s"},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL, "mode": "get"},
            "watch": {"session": list(ids)},
            "journal": {"enable": False},
            "state": {"path": state or self.tmp.state},
        }
        daemon = swtest.Daemon(self.tmp, config, api_key=KEY, print_events=True, name=name, wrapper=wrapper)
        daemon.register(self)
        self.daemons.append(daemon)
        return daemon

    def start_daemon(self, sim, ids, **kwargs):
        return self.make_daemon(sim, ids, **kwargs).start()

    def stop(self, daemon):
        swtest.assert_exit(daemon.stop(timeout=20), swtest.EXIT_OK, daemon)

    def count(self, sim, session):
        return sim.counters(session=session, times=False)["sessions"].get(session, {}).get("count", 0)

    def wait_polls(self, sim, session, more, timeout=20):
        """Wait until apisim has answered `more` further gets of `session`."""
        start = self.count(sim, session)
        swtest.wait_until(lambda: self.count(sim, session) >= start + more, timeout=timeout,
                          message=f"{session} was not polled {more} more times")

    def wait_first_events(self, daemon, ids, timeout=20):
        ids = set(ids)
        return daemon.wait_for_events(lambda e: e["subject"] in ids and e["data"]["previousStatus"] is None,
                                      count=len(ids), timeout=timeout)

    def assert_replayed(self, event, previous, status):
        self.assertRegex(event["id"], EVENT_ID)
        self.assertEqual(event["data"]["previousStatus"], previous, event)
        self.assertEqual(event["data"]["status"], status, event)
        self.assertIs(event["data"].get("replayed"), True, f"not marked replayed: {event}")

    def assert_live(self, event):
        self.assertNotIn("replayed", event["data"], f"a live change marked replayed: {event}")

    @staticmethod
    def static_sessions(prefix, n):
        return [f"{prefix}{k:02d}{uuid.uuid4().hex[:6]}" for k in range(n)]

    def seed_state(self, sim, ids, state=None, name="sessionwatchd-seed"):
        """Run a daemon until it has seen every session once, stop it cleanly
        and return the state file's bytes."""
        daemon = self.start_daemon(sim, ids, state=state, name=name)
        self.wait_first_events(daemon, ids)
        self.stop(daemon)
        data = read_bytes(os.path.join(state or self.tmp.state, "state"))
        self.assertIsNotNone(data, "no state file after a clean stop")
        self.assertEqual(set(state_sessions(data)), set(ids), "the state file lacks sessions")
        return data

    # -- restart -----------------------------------------------------------------

    def test_restart_unchanged_is_silent_and_changes_while_down_replay_once(self):
        ids = self.static_sessions("sesrst", 8)
        moved = {ids[0]: "Waiting", ids[1]: "Failed", ids[2]: "Paused", ids[3]: "Cancelling"}
        still = [sid for sid in ids if sid not in moved]
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])

        first = self.start_daemon(sim, ids, name="sessionwatchd-1")
        for event in self.wait_first_events(first, ids):
            self.assert_live(event)
        self.stop(first)

        # While it is down, four sessions move (one to a status outside the enum).
        for sid, status in moved.items():
            sim.set_status(sid, status)

        second = self.start_daemon(sim, ids, name="sessionwatchd-2")
        replayed = second.wait_for_events(count=len(moved))
        # Unchanged sessions stay silent however often they are polled, and
        # no changed one is reported twice.
        for sid in still:
            self.wait_polls(sim, sid, 10)
        events = second.events()
        self.assertEqual(sorted(e["subject"] for e in events), sorted(moved),
                         f"expected one event per moved session: {events}")
        for event in replayed:
            with self.subTest(session=event["subject"]):
                self.assert_replayed(event, "Active", moved[event["subject"]])
                self.assertEqual(event["data"]["session"]["status"], moved[event["subject"]])

        # The next change of a restored session is live, not a replay.
        sim.set_status(still[0], "Waiting")
        live = second.wait_for_event(lambda e: e["subject"] == still[0])
        self.assertEqual(live["data"]["previousStatus"], "Active")
        self.assert_live(live)
        ids_before = {e["id"] for e in first.events() + second.events()}
        self.stop(second)

        # A third start after a clean stop has nothing to say.
        third = self.start_daemon(sim, ids, name="sessionwatchd-3")
        for sid in still:
            self.wait_polls(sim, sid, 10)
        self.assertEqual(third.events(), [], "events repeated after a clean stop")
        self.stop(third)
        self.assertEqual(len(ids_before), len(ids) + len(moved) + 1)

    def test_sigterm_then_restart_repeats_no_event(self):
        # Sessions keep moving across the restart: every transition is
        # reported exactly once by one daemon or the other, none twice.
        # Steps last at least a second, far longer than the restart, so every
        # status is observable.
        rng = random.Random(5150)
        patterns = [["Pending", "Active", "Waiting", "Active", "Succeeded"],
                    ["Pending", "Active", "Cancelling", "Cancelled"],
                    ["Active", "Waiting", "Active", "Failed"]]
        sessions, finals = [], {}
        for k in range(12):
            sid = f"sesterm{k:02d}{uuid.uuid4().hex[:6]}"
            statuses = patterns[k % len(patterns)]
            at, timeline = swtest.scaled(1.5) + rng.uniform(0, 0.5), [[0, statuses[0]]]
            for status in statuses[1:]:
                timeline.append([round(at, 3), status])
                at += swtest.scaled(rng.uniform(1.0, 1.5))
            sessions.append(swtest.sim_session(sid, timeline))
            finals[sid] = statuses[-1]
        sim = self.start_sim(sessions)
        ids = list(finals)

        first = self.start_daemon(sim, ids, name="sessionwatchd-1")
        self.wait_first_events(first, ids)
        # Stop in the middle of the timelines: after some second steps.
        first.wait_for_events(lambda e: e["data"]["previousStatus"] is not None, count=6, timeout=20)
        self.stop(first)
        second = self.start_daemon(sim, ids, name="sessionwatchd-2")

        def all_final():
            seen = {(e["subject"], e["data"]["status"]) for e in first.events() + second.events()}
            return all((sid, status) in seen for sid, status in finals.items())

        swtest.wait_until(all_final, timeout=30, interval=0.1,
                          message=lambda: f"final statuses missing\n{second.describe()}")
        self.stop(second)

        a, b = first.events(), second.events()
        self.assertTrue(b, "the second daemon reported nothing: the test did not straddle changes")
        repeated = {e["id"] for e in a} & {e["id"] for e in b}
        self.assertEqual(repeated, set(), "events repeated after SIGTERM and restart")
        history = sim.history()
        expected = sorted((sid, status, history_us(at)) for sid in ids for at, status in history[sid])
        self.assertEqual(sorted(transition_key(e) for e in a + b), expected,
                         "the two daemons together do not report every transition exactly once")

    def test_terminal_not_polled_and_unwatched_sessions_forgotten(self):
        ended = {f"sesend{s.lower()}{uuid.uuid4().hex[:6]}": s for s in ("Succeeded", "Failed", "Cancelled")}
        dropped = f"sesdrop{uuid.uuid4().hex[:8]}"
        witness = f"seswitness{uuid.uuid4().hex[:6]}"
        everyone = [*ended, dropped, witness]
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in everyone])

        first = self.start_daemon(sim, everyone, name="sessionwatchd-1")
        self.wait_first_events(first, everyone)
        for sid, status in ended.items():
            sim.set_status(sid, status)
        first.wait_for_events(lambda e: e["data"]["status"] in TERMINAL, count=len(ended))
        self.stop(first)
        self.assertIn(dropped, state_sessions(read_bytes(os.path.join(self.tmp.state, "state"))))

        # Restart without `dropped` in the config.
        sim.reset_counters()
        smaller = [sid for sid in everyone if sid != dropped]
        second = self.start_daemon(sim, smaller, name="sessionwatchd-2")
        second.wait_for_stderr("no longer watched")
        self.wait_polls(sim, witness, 20)
        counts = sim.counters(times=False)["sessions"]
        for sid in [*ended, dropped]:
            self.assertNotIn(sid, counts, f"{sid} was polled after the restart")
        self.assertEqual(second.events(), [])
        # The compaction the daemon starts for the dropped session leaves it
        # out of the file; everything else is still there.
        path = os.path.join(self.tmp.state, "state")
        swtest.wait_until(lambda: dropped not in state_record_ids(read_bytes(path)), timeout=15,
                          message=lambda: f"{dropped} still in the state file:\n{read_bytes(path)!r}")
        stored = state_sessions(read_bytes(path))
        self.assertEqual(set(stored), set(smaller))
        for sid, status in ended.items():
            self.assertEqual(stored[sid][0], status)
        self.stop(second)

        # With the original config again, the dropped session is new: its
        # state was forgotten, so this is a first observation.
        sim.reset_counters()
        third = self.start_daemon(sim, everyone, name="sessionwatchd-3")
        event = third.wait_for_event(lambda e: e["subject"] == dropped)
        self.assertIsNone(event["data"]["previousStatus"], event)
        self.assertEqual(event["data"]["status"], "Active")
        self.assert_live(event)
        self.wait_polls(sim, witness, 20)
        self.assertEqual([e["subject"] for e in third.events()], [dropped])
        counts = sim.counters(times=False)["sessions"]
        for sid in ended:
            self.assertNotIn(sid, counts, f"terminal {sid} was polled after the second restart")
        self.stop(third)

    # -- crashes -------------------------------------------------------------------

    def test_sigkill_loop_loses_no_transition(self):
        # 40 sessions with 6-step timelines; every step lasts 1.0-1.6 s (times
        # the timeout scale). The daemon polls every 50 ms and is restarted
        # at once after each kill, so it is down for a small fraction of a
        # step: every status in apisim's history is observable by some run,
        # and the comparison below is against the whole history.
        rng = random.Random(0x5E55)
        patterns = [["Pending", "Active", "Waiting", "Active", "Cancelling", "Cancelled"],
                    ["Pending", "Active", "Waiting", "Active", "Waiting", "Failed"],
                    ["Pending", "Active", "Paused", "Active", "Waiting", "Succeeded"],
                    ["Active", "Waiting", "Active", "Waiting", "Active", "Succeeded"]]
        sessions, finals = [], {}
        for k in range(40):
            sid = f"seskill{k:02d}{uuid.uuid4().hex[:6]}"
            statuses = patterns[k % len(patterns)]
            at, timeline = swtest.scaled(1.0) + rng.uniform(0, 0.5), [[0, statuses[0]]]
            for status in statuses[1:]:
                timeline.append([round(at, 3), status])
                at += swtest.scaled(rng.uniform(1.0, 1.6))
            sessions.append(swtest.sim_session(sid, timeline))
            finals[sid] = statuses[-1]
        sim = self.start_sim(sessions)
        ids = list(finals)

        runs = []
        for k in range(20):
            daemon = self.start_daemon(sim, ids, name=f"sessionwatchd-kill{k:02d}")
            # The kill comes at a random moment of the run: during start-up,
            # loading, the first burst of polls or the steady state.
            time.sleep(rng.uniform(0.05, 0.6))
            daemon.signal(signal.SIGKILL)
            self.assertEqual(daemon.wait(timeout=10), -signal.SIGKILL, daemon.describe())
            runs.append(daemon)
        # A last, clean run catches up with everything.
        last = self.start_daemon(sim, ids, name="sessionwatchd-last")
        runs.append(last)

        def all_final():
            seen = {(e["subject"], e["data"]["status"]) for run in runs for e in run.events()}
            return all((sid, status) in seen for sid, status in finals.items())

        swtest.wait_until(all_final, timeout=40, interval=0.1,
                          message=lambda: f"final statuses missing; last run:\n{last.describe()}")
        self.stop(last)

        history = sim.history()
        expected = {(sid, status, history_us(at)) for sid in ids for at, status in history[sid]}
        self.assertEqual(len(expected), sum(len(p) for p in (patterns * 10)), "apisim did not play the script")
        events = [(n, e) for n, run in enumerate(runs) for e in run.events()]
        got = {transition_key(e) for _, e in events}
        lost = sorted(expected - got)
        self.assertEqual(lost, [], f"transitions lost across {len(runs) - 1} kills")
        self.assertEqual(sorted(got - expected), [], "events for transitions that never happened")

        # A transition emitted more than once has one id, and an id one transition.
        ids_of, key_of = {}, {}
        for _, event in events:
            self.assertRegex(event["id"], EVENT_ID)
            ids_of.setdefault(transition_key(event), set()).add(event["id"])
            key_of.setdefault(event["id"], set()).add(transition_key(event))
        self.assertEqual({k: v for k, v in ids_of.items() if len(v) > 1}, {},
                         "a repeated transition changed its id")
        self.assertEqual({k: v for k, v in key_of.items() if len(v) > 1}, {}, "an id names two transitions")

        # Every event goes from the status before it in the history (the
        # stored one, for a replay) to the next: nothing skipped, nothing
        # invented, and no run repeats itself.
        steps = {sid: [status for _, status in history[sid]] for sid in ids}
        for n, event in events:
            sid, status = event["subject"], event["data"]["status"]
            previous = event["data"]["previousStatus"]
            if previous is None:
                self.assertEqual(status, steps[sid][0], f"run {n}: first observation of a later status: {event}")
            else:
                pairs = list(zip(steps[sid], steps[sid][1:]))
                self.assertIn((previous, status), pairs, f"run {n}: not a step of {sid}: {event}")
        for n, run in enumerate(runs):
            keys = [transition_key(e) for e in run.events()]
            self.assertEqual(len(keys), len(set(keys)), f"run {n} emitted a transition twice")

        # The state was used: without it every run would start over with a
        # first observation of all 40 sessions. A repeat needs a kill between
        # an event and the write of its record, a window of a loop turn.
        repeats = len(events) - len(got)
        self.assertLessEqual(repeats, len(ids), f"{repeats} repeated events: the state is not kept")
        self.assertGreaterEqual(sum(1 for run in runs[:-1] if run.events()), 5,
                                "most runs were killed before they reported anything")
        self.assertTrue(any(e["data"].get("replayed") for _, e in events), "no replayed event at all")

        # After the clean stop the file holds each session's final status.
        stored = state_sessions(read_bytes(os.path.join(self.tmp.state, "state")))
        for sid in ids:
            at, status = history[sid][-1]
            self.assertEqual(stored.get(sid, (None, 0))[:2], (status, history_us(at)), sid)

    # -- bad files -------------------------------------------------------------------

    def test_corrupt_truncated_and_empty_state_files(self):
        ids = self.static_sessions("sesbad", 5)
        witness = ids[0]
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        good = self.seed_state(sim, ids)
        lines = good.split(b"\n")[:-1]
        self.assertEqual(len(lines), 1 + len(ids), "expected a header and one record per session")

        # (a) A bad checksum in the middle: one hex digit of record 2 changed.
        bad_crc = bytearray(good)
        at = len(lines[0]) + 1 + len(lines[1]) + 1  # the start of the third line
        bad_crc[at] = ord("0") if bad_crc[at] != ord("0") else ord("1")
        # (b) A header of an unknown version, correctly checksummed.
        version = state_line("sessionwatch-state 99") + b"\n".join(lines[1:]) + b"\n"
        # (c) A torn last record: the file ends in the middle of it.
        torn = good[:-12]
        torn_id = state_record_ids(good)[-1]
        cases = {"checksum": bytes(bad_crc), "version": version, "torn": torn, "empty": b""}

        daemons = {}
        for name, data in cases.items():
            folder = self.tmp.path(f"state-{name}")
            os.mkdir(folder, 0o700)
            with open(os.path.join(folder, "state"), "wb") as f:
                f.write(data)
            daemons[name] = self.make_daemon(sim, ids, state=folder, name=f"sessionwatchd-{name}")
        # Started only once all are made: making a Daemon rewrites the shared
        # API key file, which a daemon starting meanwhile could find empty.
        for daemon in daemons.values():
            daemon.start()

        for name in ("checksum", "version"):
            with self.subTest(case=name):
                daemon, folder = daemons[name], self.tmp.path(f"state-{name}")
                state_path = os.path.join(folder, "state")
                line = daemon.wait_for_stderr(lambda l: state_path in l and "unreadable" in l)
                if name == "version":
                    self.assertIn("version 99", line)
                else:
                    self.assertIn("checksum", line)
                # Moved aside, same bytes; a fresh file took its place. (The
                # "unreadable" line comes just before the move.)
                daemon.wait_for_stderr(lambda l: "Moved it aside" in l)
                aside = [f for f in os.listdir(folder) if f.startswith("state.corrupt")]
                self.assertEqual(len(aside), 1, os.listdir(folder))
                self.assertRegex(aside[0], CORRUPT_NAME)
                self.assertEqual(read_bytes(os.path.join(folder, aside[0])), cases[name])
                daemon.wait_for_stderr(lambda l, a=aside[0]: a in l and "empty state" in l)
                # A fresh start: every session is a first observation.
                events = self.wait_first_events(daemon, ids)
                self.assertEqual(len(daemon.events()), len(ids))
                for event in events:
                    self.assert_live(event)
                swtest.wait_until(lambda: set(state_sessions(read_bytes(state_path))) == set(ids),
                                  timeout=15, message="the fresh state file does not fill")

        with self.subTest(case="torn"):
            daemon, folder = daemons["torn"], self.tmp.path("state-torn")
            daemon.wait_for_stderr("incomplete record")
            # The prefix was loaded: only the session of the torn record is new.
            event = daemon.wait_for_event(lambda e: e["subject"] == torn_id)
            self.assertIsNone(event["data"]["previousStatus"])
            self.assertEqual([f for f in os.listdir(folder) if f.startswith("state.corrupt")], [])
            self.assertNotIn("unreadable", daemon.stderr_text())
            data = read_bytes(os.path.join(folder, "state"))
            prefix = torn[:torn.rindex(b"\n") + 1]
            self.assertTrue(data.startswith(prefix), "the complete records were not kept")
            swtest.wait_until(lambda: torn_id in state_sessions(read_bytes(os.path.join(folder, "state"))),
                              timeout=15, message="the torn session's record was not written again")

        with self.subTest(case="empty"):
            daemon, folder = daemons["empty"], self.tmp.path("state-empty")
            self.wait_first_events(daemon, ids)
            self.assertEqual([f for f in os.listdir(folder) if f.startswith("state.corrupt")], [])
            swtest.wait_until(lambda: set(state_sessions(read_bytes(os.path.join(folder, "state")))) == set(ids),
                              timeout=15, message="the state file does not fill")

        # All four keep polling, and nothing more is reported.
        self.wait_polls(sim, witness, 40)
        for name, daemon in daemons.items():
            with self.subTest(stopping=name):
                self.assertTrue(daemon.running, daemon.describe())
                expected = 1 if name == "torn" else len(ids)
                self.assertEqual(len(daemon.events()), expected, daemon.events())
                self.stop(daemon)
                if name in ("torn", "empty"):
                    self.assertNotIn("unreadable", daemon.stderr_text())
                if name == "empty":
                    self.assertNotRegex(daemon.stderr_text(), r"(?i)error|fail|warn", "an empty file is no error")

    # -- failing disks -----------------------------------------------------------------

    def test_full_disk_is_logged_polling_goes_on_and_writing_resumes(self):
        folder = self.tmp.path("state-full")
        os.mkdir(folder, 0o700)
        # An 8-page tmpfs of which a filler takes six: the log can grow to
        # two pages (8 KiB), about three records per session here.
        ns = MountNamespace(self, self.tmp, f"""
mount -t tmpfs -o size=32k,mode=0700 swtest-state-full {folder}
head -c 24576 /dev/zero > {folder}/filler
""", name="mountns-full")
        ids = [f"sesfull{k:02d}{uuid.uuid4().hex[:6]}" for k in range(50)]
        witness = ids[0]
        # Statuses alternate every 0.4 s for a good while: many records, far
        # more than fit.
        sessions = []
        for k, sid in enumerate(ids):
            timeline = [[0, "Active"]]
            at = swtest.scaled(1.0) + k * 0.005
            for step in range(60):
                timeline.append([round(at, 3), "Waiting" if step % 2 == 0 else "Active"])
                at += swtest.scaled(0.4)
            sessions.append(swtest.sim_session(sid, timeline))
        sim = self.start_sim(sessions)
        state_path = os.path.join(folder, "state")

        daemon = self.start_daemon(sim, ids, state=folder, name="sessionwatchd-full", wrapper=ns.wrap())
        self.wait_first_events(daemon, ids)
        daemon.wait_for_stderr(lambda l: state_path in l and "No space left on device" in l, timeout=30)
        # Polling and events go on, while the retries (full rewrites, with
        # backoff from 2 s) fail too.
        before = len(daemon.events())
        self.wait_polls(sim, witness, 10)
        daemon.wait_for_stderr(lambda l: "temporary copy" in l and "No space left on device" in l, timeout=30)
        daemon.wait_for_events(count=before + 3 * len(ids), timeout=30)
        self.assertTrue(daemon.running)
        # Rate-limited: a handful of lines, not one per record or retry.
        complaints = [l for l in daemon.stderr_lines() if state_path in l and "Failed to" in l]
        self.assertGreaterEqual(len(complaints), 2)
        self.assertLessEqual(len(complaints), 3, complaints)
        self.assertGreater(len(daemon.events()) - before, 10 * len(complaints))

        # Room again: the next retry rewrites the file from memory.
        os.unlink(ns.path(os.path.join(folder, "filler")))
        daemon.wait_for_stderr(lambda l: state_path in l and "current again" in l, timeout=60)
        stored = state_sessions(read_bytes(ns.path(state_path)))
        self.assertEqual(set(stored), set(ids))
        # And it appends again: the end of every timeline reaches the file
        # (the witness stays Active; the others finish).
        sim.set_status(witness, "Active")
        for sid in ids[1:]:
            sim.set_status(sid, "Succeeded")
        daemon.wait_for_events(lambda e: e["data"]["status"] == "Succeeded", count=len(ids) - 1, timeout=30)
        final = {sid: "Succeeded" for sid in ids[1:]}
        final[witness] = "Active"
        swtest.wait_until(lambda: {sid: rec[0] for sid, rec in
                                   state_sessions(read_bytes(ns.path(state_path))).items()} == final,
                          timeout=15, message="the final statuses were not written")
        emitted = [e["id"] for e in daemon.events()]
        self.assertEqual(len(emitted), len(set(emitted)), "an event was emitted twice")
        self.stop(daemon)

        # A restart in the same namespace (same tmpfs) repeats nothing and
        # does not poll the finished sessions.
        sim.reset_counters()
        again = self.start_daemon(sim, ids, state=folder, name="sessionwatchd-full-2", wrapper=ns.wrap())
        self.wait_polls(sim, witness, 20)
        self.assertEqual(again.events(), [], "events repeated after the disk was full")
        self.assertEqual(set(sim.counters(times=False)["sessions"]), {witness},
                         "finished sessions polled after the restart")
        self.stop(again)

    def test_read_only_state_folder(self):
        ids = self.static_sessions("sesro", 5)
        moved, later, witness = ids[0], ids[1], ids[2]
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        folder = self.tmp.path("state-ro")
        os.mkdir(folder, 0o700)
        good = self.seed_state(sim, ids, state=folder)
        ns = MountNamespace(self, self.tmp, f"""
mount --bind {folder} {folder}
mount -o remount,bind,ro {folder}
""", name="mountns-ro")
        state_path = os.path.join(folder, "state")
        sim.set_status(moved, "Failed")

        daemon = self.start_daemon(sim, ids, state=folder, name="sessionwatchd-ro", wrapper=ns.wrap())
        daemon.wait_for_stderr(lambda l: state_path in l and "Read-only file system" in l)
        # The stored state was still read: one replayed event, nothing else.
        event = daemon.wait_for_event()
        self.assertEqual(event["subject"], moved)
        self.assert_replayed(event, "Active", "Failed")
        self.wait_polls(sim, witness, 20)
        self.assertEqual(len(daemon.events()), 1)
        # Live changes are reported.
        sim.set_status(later, "Waiting")
        event = daemon.wait_for_event(lambda e: e["subject"] == later)
        self.assertEqual(event["data"]["previousStatus"], "Active")
        self.assert_live(event)
        self.wait_polls(sim, witness, 20)
        self.assertTrue(daemon.running)
        self.assertEqual(read_bytes(state_path), good, "the read-only file changed")
        complaints = [l for l in daemon.stderr_lines() if state_path in l and "Failed to" in l]
        self.assertGreaterEqual(len(complaints), 1)
        self.assertLessEqual(len(complaints), 3, complaints)

        # Writable again: a retry rewrites the file from memory.
        ns.run(["mount", "-o", "remount,bind,rw", folder])
        daemon.wait_for_stderr(lambda l: state_path in l and "current again" in l, timeout=60)
        stored = state_sessions(read_bytes(state_path))
        self.assertEqual({sid: rec[0] for sid, rec in stored.items()},
                         {sid: {moved: "Failed", later: "Waiting"}.get(sid, "Active") for sid in ids})
        self.stop(daemon)

        # So a restart (outside the namespace, same folder) repeats nothing.
        again = self.start_daemon(sim, ids, state=folder, name="sessionwatchd-ro-2")
        self.wait_polls(sim, witness, 20)
        self.assertEqual(again.events(), [], "events repeated after the folder became writable")
        self.stop(again)

    def test_corrupt_file_in_read_only_folder_is_kept_until_moved_aside(self):
        # The only copy of unreadable data is never overwritten: while the
        # folder is read-only it cannot be moved aside, so it stays as it is;
        # once writable, it is moved aside before a fresh file replaces it.
        ids = self.static_sessions("sesrocorrupt", 4)
        witness = ids[0]
        sim = self.start_sim([swtest.sim_session(sid, [[0, "Active"]]) for sid in ids])
        folder = self.tmp.path("state-ro-corrupt")
        os.mkdir(folder, 0o700)
        good = self.seed_state(sim, ids, state=folder)
        bad = bytearray(good)
        bad[good.index(b"\n") + 1] ^= 0x01  # a checksum digit of the first record
        bad = bytes(bad)
        state_path = os.path.join(folder, "state")
        with open(state_path, "wb") as f:
            f.write(bad)
        ns = MountNamespace(self, self.tmp, f"""
mount --bind {folder} {folder}
mount -o remount,bind,ro {folder}
""", name="mountns-ro-corrupt")

        daemon = self.start_daemon(sim, ids, state=folder, name="sessionwatchd-ro-corrupt", wrapper=ns.wrap())
        daemon.wait_for_stderr(lambda l: state_path in l and "unreadable" in l)
        daemon.wait_for_stderr(lambda l: state_path in l and "kept as it is" in l)
        for event in self.wait_first_events(daemon, ids):
            self.assert_live(event)
        self.wait_polls(sim, witness, 10)
        self.assertEqual(os.listdir(folder), ["state"])
        self.assertEqual(read_bytes(state_path), bad)

        ns.run(["mount", "-o", "remount,bind,rw", folder])
        line = daemon.wait_for_stderr(lambda l: "Moved the unreadable state file aside" in l, timeout=60)
        daemon.wait_for_stderr(lambda l: state_path in l and "current again" in l, timeout=30)
        aside = [f for f in os.listdir(folder) if f.startswith("state.corrupt")]
        self.assertEqual(len(aside), 1, os.listdir(folder))
        self.assertRegex(aside[0], CORRUPT_NAME)
        self.assertIn(aside[0], line)
        self.assertEqual(read_bytes(os.path.join(folder, aside[0])), bad, "the unreadable file was altered")
        self.assertEqual(set(state_sessions(read_bytes(state_path))), set(ids))
        self.stop(daemon)
        self.assertEqual(len(daemon.events()), len(ids))


if __name__ == "__main__":
    unittest.main()
