"""The event stream socket: snapshot, live marker, sequenced events, resume.

sessionwatchd polls scripted sessions in apisim; real Unix socket clients
read the stream. The tests check the stream against what apisim says really
happened (/_sim/history) and against the daemon's own --print-events output:
snapshot lines first, then the live marker, then every event in order with
consecutive sequence numbers; concurrent subscribers get identical bytes; a
client that never reads is cut off with the overflow line while another
client and polling go on; {"since": N} resumes without a snapshot while the
ring holds N, and falls back to a snapshot across a restart; the socket file
gets its mode, replaces a stale socket, refuses other files and is removed on
exit; sessionwatchctl events follows the stream across a restart.
"""

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import unittest

import swtest

SNAPSHOT = "sessionwatch.session.snapshot"
LIVE = "sessionwatch.stream.live"
OVERFLOW = "sessionwatch.stream.overflow"
TERMINAL = {"Succeeded", "Failed", "Cancelled"}


class StreamReader:
    """One client of the event stream. ``hello`` is the first line sent
    (None: send nothing); with ``read`` a thread collects every line."""

    def __init__(self, path, hello="{}", read=True, rcvbuf=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(path)
        if hello is not None:
            self.sock.sendall(hello.encode() + b"\n")
        self.raw = []
        self.eof = False
        self.lock = threading.Lock()
        self.thread = None
        if read:
            self.start_reading()

    def start_reading(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        pending = b""
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self.lock:
                    self.eof = True
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            with self.lock:
                self.raw.extend(lines)

    def lines(self):
        with self.lock:
            return list(self.raw)

    def objects(self):
        return [json.loads(line) for line in self.lines()]

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self.thread:
            self.thread.join(timeout=swtest.scaled(10))


def split_stream(objects):
    """(snapshot lines, marker, events after it) of one client's stream."""
    for k, obj in enumerate(objects):
        if obj.get("type") == LIVE:
            return objects[:k], obj, objects[k + 1:]
    return objects, None, []


def statuses(history, sid):
    return [status for _, status in history.get(sid, [])]


class StreamTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.readers = []

    def tearDown(self):
        for reader in self.readers:
            reader.close()

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, sessions):
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}).register(self).start()

    def start_daemon(self, sim, ids, events=None, name="sessionwatchd"):
        config = swtest.Daemon.basic_config(sim.url, sessions=ids, extra={
            "api": {"rate-limit": "off"},
            "poll": {"interval": "50ms", "waiting-interval": "50ms", "jitter": "0%", "mode": "get"},
            "journal": {"enable": False},
            "events": events or {},
        })
        daemon = swtest.Daemon(self.tmp, config, print_events=True, name=name)
        daemon.register(self)
        daemon.start()
        daemon.wait_control()
        return daemon

    def reader(self, daemon, **kwargs):
        reader = StreamReader(daemon.events_socket, **kwargs)
        self.readers.append(reader)
        return reader

    def wait_seen(self, daemon, ids):
        ids = set(ids)
        daemon.wait_for_events(lambda e: e["subject"] in ids and e["data"]["previousStatus"] is None,
                               count=len(ids), timeout=15)

    def wait_terminal(self, reader, ids, timeout=30):
        def done():
            _, marker, events = split_stream(reader.objects())
            last = {}
            for event in events:
                last[event["subject"]] = event["data"]["status"]
            return marker is not None and all(last.get(sid) in TERMINAL for sid in ids)

        swtest.wait_until(done, timeout=timeout,
                          message=lambda: f"stream did not reach terminal states: {reader.lines()[-5:]}")

    def assert_consecutive(self, marker, events):
        self.assertEqual([e["sequence"] for e in events],
                         list(range(marker["sequence"] + 1, marker["sequence"] + 1 + len(events))),
                         "events after the marker do not carry consecutive sequences")

    # -- tests -------------------------------------------------------------------

    def test_snapshot_then_live_events_in_order(self):
        sessions = [
            swtest.sim_session("ses_a", [(0, "Pending"), (2, "Active"), (3, "Waiting"), (4, "Active"),
                                         (5, "Succeeded")]),
            swtest.sim_session("ses_b", [(0, "Active"), (3.5, "Failed")]),
            swtest.sim_session("ses_c", [(0, "Pending"), (2.5, "Cancelling"), (4.5, "Cancelled")]),
        ]
        ids = [s["id"] for s in sessions]
        sim = self.start_sim(sessions)
        daemon = self.start_daemon(sim, ids)
        self.wait_seen(daemon, ids)

        reader = self.reader(daemon)
        self.wait_terminal(reader, ids)
        snapshot, marker, events = split_stream(reader.objects())

        # One snapshot line per known session, in the CloudEvents shape.
        self.assertEqual(sorted(s["subject"] for s in snapshot), sorted(ids))
        for line in snapshot:
            self.assertEqual(line["type"], SNAPSHOT)
            self.assertEqual(line["specversion"], "1.0")
            self.assertRegex(line["id"], r"^evt_[0-9a-f]{32}$")
            self.assertNotIn("sequence", line)
            session = line["data"]["session"]
            self.assertEqual(set(session), {"id", "status", "updatedAt"})
            self.assertEqual(session["status"], line["data"]["status"])
        self.assertIs(marker["resumed"], False)
        self.assert_consecutive(marker, events)

        # Snapshot status plus the live events retell apisim's history.
        history = sim.history()
        for sid in ids:
            snap = next(s for s in snapshot if s["subject"] == sid)["data"]["status"]
            told = [snap] + [e["data"]["status"] for e in events if e["subject"] == sid]
            real = statuses(history, sid)
            self.assertIn(snap, real)
            self.assertEqual(told, real[real.index(snap):], f"{sid}: stream {told} vs history {real}")

        # The stream's events are the daemon's events, in the same order.
        printed = [e["id"] for e in daemon.events()]
        streamed = [e["id"] for e in events]
        start = printed.index(streamed[0])
        self.assertEqual(streamed, printed[start:start + len(streamed)])
        daemon.stop()

    def test_three_subscribers_get_identical_streams(self):
        sessions = [swtest.sim_session(f"ses_{k}", [(0, "Pending"), (2 + k * 0.3, "Active"),
                                                    (3 + k * 0.3, "Waiting"), (4 + k * 0.3, "Failed")])
                    for k in range(4)]
        ids = [s["id"] for s in sessions]
        sim = self.start_sim(sessions)
        daemon = self.start_daemon(sim, ids)
        self.wait_seen(daemon, ids)
        readers = [self.reader(daemon) for _ in range(3)]
        for reader in readers:
            self.wait_terminal(reader, ids)

        parts = [split_stream(r.objects()) for r in readers]
        for _, marker, events in parts:
            self.assert_consecutive(marker, events)
        start = max(marker["sequence"] for _, marker, _ in parts)

        def tail(reader):
            out = []
            for line in reader.lines():
                obj = json.loads(line)
                if obj.get("sequence", -1) > start and obj.get("type") != LIVE:
                    out.append(line)
            return out

        tails = [tail(r) for r in readers]
        self.assertGreaterEqual(len(tails[0]), 3 * len(ids) - 1)
        self.assertEqual(tails[0], tails[1])
        self.assertEqual(tails[0], tails[2])
        daemon.stop()

    def test_client_that_never_reads_is_cut_off_others_go_on(self):
        blob = "x" * 8000
        # Big bodies, many steps: megabytes of events in a few seconds.
        timeline = [(0, "Pending")] + [(0.5 + 0.25 * k, "Active" if k % 2 else "Waiting")
                                       for k in range(60)] + [(16, "Succeeded")]
        sessions = [swtest.sim_session(f"ses_big{k}", timeline, paramValues={"blob": blob})
                    for k in range(6)]
        ids = [s["id"] for s in sessions]
        sim = self.start_sim(sessions)
        daemon = self.start_daemon(sim, ids, events={"client-buffer": "64k"})
        self.wait_seen(daemon, ids)

        slow = self.reader(daemon, read=False, rcvbuf=4096)
        fast = self.reader(daemon)

        swtest.wait_until(lambda: daemon.ctl_json("status")["streamOverflows"] >= 1, timeout=30,
                          message="the client that never reads was not cut off")
        # It finds complete lines, then the overflow line, then EOF.
        slow.start_reading()
        swtest.wait_until(lambda: slow.eof, timeout=30, message="the slow client's stream did not end")
        objects = slow.objects()
        self.assertEqual(objects[-1], {"type": OVERFLOW})
        self.assertNotIn(OVERFLOW, [o.get("type") for o in objects[:-1]])

        # Polling and the other client go on.
        before = sum(c["count"] for c in sim.counters(times=False)["sessions"].values())
        got = len(fast.lines())
        swtest.wait_until(lambda: len(fast.lines()) > got + 5, timeout=15,
                          message="the reading client stopped receiving events")
        swtest.wait_until(lambda: sum(c["count"] for c in sim.counters(times=False)["sessions"].values())
                          > before + 20, timeout=15, message="polling stopped")
        self.wait_terminal(fast, ids, timeout=60)
        _, marker, events = split_stream(fast.objects())
        self.assert_consecutive(marker, events)

        metrics = daemon.ctl("metrics").stdout
        self.assertRegex(metrics, r"(?m)^sessionwatch_stream_overflows_total [1-9]")
        self.assertEqual(daemon.ctl_json("status")["streamClients"], 1)
        daemon.stop()

    def test_since_resumes_from_the_ring_and_falls_back_to_a_snapshot(self):
        timeline = [(0, "Pending")] + [(1 + 0.5 * k, "Active" if k % 2 == 0 else "Waiting")
                                       for k in range(14)] + [(9, "Failed")]
        sim = self.start_sim([swtest.sim_session("ses_long", timeline)])
        daemon = self.start_daemon(sim, ["ses_long"])
        self.wait_seen(daemon, ["ses_long"])

        first = self.reader(daemon)
        swtest.wait_until(lambda: len(split_stream(first.objects())[2]) >= 2, timeout=15,
                          message="no live events")
        first.close()
        last = split_stream(first.objects())[2][-1]["sequence"]
        last_id = split_stream(first.objects())[2][-1]["id"]
        printed = [e["id"] for e in daemon.events()]
        # Two more events happen while no client is connected.
        swtest.wait_until(lambda: len(daemon.events()) >= len(printed) + 2, timeout=15)

        resumed = self.reader(daemon, hello=json.dumps({"since": last}))
        swtest.wait_until(lambda: len(resumed.lines()) >= 3, timeout=15)
        objects = resumed.objects()
        self.assertEqual(objects[0], {"type": LIVE, "sequence": last, "resumed": True},
                         "a resume starts with the marker, without a snapshot")
        _, marker, events = split_stream(objects)
        self.assert_consecutive(marker, events)
        printed = [e["id"] for e in daemon.events()]
        after = printed[printed.index(last_id) + 1:]
        self.assertEqual([e["id"] for e in events], after[:len(events)],
                         "the resumed stream skipped or repeated events")

        # A sequence the ring does not hold gets the snapshot instead.
        old = self.reader(daemon, hello=json.dumps({"since": 1}))
        swtest.wait_until(lambda: split_stream(old.objects())[1] is not None, timeout=15)
        snapshot, marker, _ = split_stream(old.objects())
        self.assertEqual([s["type"] for s in snapshot], [SNAPSHOT])
        self.assertIs(marker["resumed"], False)

        # After a restart, sequences go on growing and an old one means a snapshot.
        daemon.stop()
        for reader in (resumed, old):
            swtest.wait_until(lambda r=reader: r.eof, timeout=10)
        daemon2 = self.start_daemon(sim, ["ses_long"], name="sessionwatchd2")
        again = self.reader(daemon2, hello=json.dumps({"since": events[-1]["sequence"] if events else last}))
        swtest.wait_until(lambda: split_stream(again.objects())[1] is not None, timeout=15)
        snapshot, marker, _ = split_stream(again.objects())
        self.assertEqual([s["subject"] for s in snapshot], ["ses_long"])
        self.assertIs(marker["resumed"], False)
        self.assertGreater(marker["sequence"], last)
        daemon2.stop()

    def test_sessionwatchctl_events_follows_across_a_restart(self):
        timeline = [(0, "Pending")] + [(1 + 0.4 * k, "Active" if k % 2 == 0 else "Waiting")
                                       for k in range(30)] + [(14, "Succeeded")]
        sim = self.start_sim([swtest.sim_session("ses_follow", timeline, name="Follow me")])
        daemon = self.start_daemon(sim, ["ses_follow"])
        self.wait_seen(daemon, ["ses_follow"])
        ctl = swtest.binary_path("SW_CTL")
        raw = swtest.Process([ctl, "--socket", daemon.control_socket, "--json", "events"], self.tmp.root,
                             name="ctl-json").register(self).start()
        text = swtest.Process([ctl, "--socket", daemon.control_socket, "events"], self.tmp.root,
                              name="ctl-text").register(self).start()

        def markers(process):
            return [json.loads(line) for line in process.stdout_lines(complete_only=True)
                    if line.startswith("{") and LIVE in line]

        swtest.wait_until(lambda: len(markers(raw)) == 1, timeout=15)
        raw.wait_for_stdout(lambda line: '"sequence"' in line and "ses_follow" in line, timeout=15)
        text.wait_for_stdout(lambda line: "ses_follow 'Follow me'" in line and "→" in line, timeout=15)
        daemon.stop()
        daemon2 = self.start_daemon(sim, ["ses_follow"], name="sessionwatchd2")
        swtest.wait_until(lambda: len(markers(raw)) == 2, timeout=20,
                          message=lambda: f"sessionwatchctl did not reconnect\n{raw.describe()}")
        count = len(raw.stdout_lines(complete_only=True))
        swtest.wait_until(lambda: len(raw.stdout_lines(complete_only=True)) > count, timeout=15)
        self.assertGreater(markers(raw)[1]["sequence"], markers(raw)[0]["sequence"])
        for line in raw.stdout_lines(complete_only=True):
            json.loads(line)
        self.assertNotIn("\033", text.stdout_text(), "colour codes on a pipe")
        self.assertIn("-- live", text.stdout_text())
        raw.stop()
        text.stop()
        daemon2.stop()

    def test_big_snapshot_is_complete_while_events_go_on(self):
        # Several thousand sessions: the snapshot goes out in many batches,
        # interleaved with polling; events made meanwhile follow the marker.
        n = 2500
        sessions = [swtest.sim_session(f"ses_many{k:05d}", [(0, "Active")]) for k in range(n)]
        sessions.append(swtest.sim_session("ses_mover", [(0, "Pending")] +
                                           [(1 + 0.3 * k, "Active" if k % 2 == 0 else "Waiting")
                                            for k in range(40)] + [(14, "Succeeded")]))
        ids = [s["id"] for s in sessions]
        sim = self.start_sim(sessions)
        config_poll = {"interval": "1s", "waiting-interval": "1s"}
        config = swtest.Daemon.basic_config(sim.url, sessions=ids, extra={
            "api": {"rate-limit": "off"}, "poll": config_poll, "journal": {"enable": False}})
        daemon = swtest.Daemon(self.tmp, config).register(self).start()
        daemon.wait_control()
        swtest.wait_until(lambda: daemon.ctl_json("status")["sessions"]["unseen"] == 0, timeout=30)

        reader = self.reader(daemon)
        swtest.wait_until(lambda: split_stream(reader.objects())[1] is not None, timeout=30)
        swtest.wait_until(lambda: len(split_stream(reader.objects())[2]) >= 3, timeout=30)
        snapshot, marker, events = split_stream(reader.objects())
        self.assertEqual(sorted(s["subject"] for s in snapshot), sorted(ids))
        self.assert_consecutive(marker, events)
        self.assertTrue(all(e["subject"] == "ses_mover" for e in events))
        daemon.stop()

    def test_socat_one_liner_reads_the_stream(self):
        # The dashboard example of sessionwatchd(8) (EVENT STREAM): nothing but socat, sending nothing.
        socat = shutil.which("socat")
        if not socat:
            self.fail("socat is not installed (scripts/deps installs it)")
        sim = self.start_sim([swtest.sim_session("ses_socat", [(0, "Pending"), (1.5, "Active")])])
        daemon = self.start_daemon(sim, ["ses_socat"])
        self.wait_seen(daemon, ["ses_socat"])
        reader = swtest.Process([socat, "-u", f"UNIX-CONNECT:{daemon.events_socket}", "-"], self.tmp.root,
                                name="socat").register(self).start()
        reader.wait_for_stdout(lambda line: LIVE in line, timeout=10)
        line = reader.wait_for_stdout(lambda line: '"sessionwatch.session.active"' in line, timeout=15)
        self.assertEqual(json.loads(line)["subject"], "ses_socat")
        self.assertIn(SNAPSHOT, reader.stdout_lines(complete_only=True)[0])
        reader.stop()
        daemon.stop()

    def test_socket_file_mode_stale_socket_and_removal(self):
        sim = self.start_sim([swtest.sim_session("ses_x", [(0, "Active")])])
        path = os.path.join(self.tmp.run, "events.sock")
        # A socket file left behind by a crash.
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        daemon = self.start_daemon(sim, ["ses_x"], events={"mode": "0640"})
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        # The mode is set between bind() and listen(): wait for the control
        # socket to be listening (it may still be being set up).
        swtest.wait_until(lambda: daemon.request({"command": "status"})["ok"], timeout=10, ignore=(OSError,))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        self.assertEqual(stat.S_IMODE(os.stat(daemon.control_socket).st_mode), 0o600)
        reader = self.reader(daemon)
        swtest.wait_until(lambda: split_stream(reader.objects())[1] is not None, timeout=10)
        daemon.stop()
        self.assertFalse(os.path.exists(path), "the events socket was left behind")
        self.assertFalse(os.path.exists(daemon.control_socket), "the control socket was left behind")

        # Anything that is not a socket is not replaced.
        with open(path, "w") as f:
            f.write("keep me\n")
        refused = swtest.Daemon(self.tmp, swtest.Daemon.basic_config(sim.url, sessions=["ses_x"]),
                                name="refused").register(self).start()
        self.assertEqual(refused.wait(timeout=10), swtest.EXIT_FAILURE)
        self.assertIn(path, refused.stderr_text())
        with open(path) as f:
            self.assertEqual(f.read(), "keep me\n")


if __name__ == "__main__":
    unittest.main()
