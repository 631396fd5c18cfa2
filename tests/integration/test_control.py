"""The control socket and sessionwatchctl.

sessionwatchd runs against apisim with a control socket below the test tree.
The tests run the real sessionwatchctl (and raw socket clients) and check
what apisim sees: every command works in both output modes; watch and
unwatch change what is polled at once and survive a restart; reload applies
a new session list and rejects a bad file with its file:line message; a
peer that is neither root, the daemon's user nor in the control group is
refused mutating commands; malformed, unknown and oversized requests get
error replies and the daemon stays healthy; exit codes 0, 1, 2 and 69.
"""

import json
import os
import socket
import signal
import subprocess
import unittest

import swtest

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def count(sim, session):
    return sim.counters(session=session, times=False)["sessions"].get(session, {}).get("count", 0)


class ControlTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, ids):
        # ses_two belongs to another runbook, for `list --runbook`.
        sessions = [swtest.sim_session(sid, [(0, "Active")], runbook_id="rbk_other" if sid == "ses_two" else "rbk_test")
                    for sid in ids]
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}).register(self).start()

    def config(self, sim, ids, control=None):
        return swtest.Daemon.basic_config(sim.url, sessions=ids, extra={
            "api": {"rate-limit": "off"},
            "poll": {"interval": "50ms", "waiting-interval": "50ms", "mode": "get"},
            "journal": {"enable": False},
            "control": control or {},
        })

    def start_daemon(self, sim, ids, control=None, name="sessionwatchd", config=None):
        daemon = swtest.Daemon(self.tmp, config or self.config(sim, ids, control), name=name)
        daemon.register(self)
        daemon.start()
        daemon.wait_control()
        return daemon

    def wait_polled(self, sim, session, more=3, timeout=15):
        start = count(sim, session)
        swtest.wait_until(lambda: count(sim, session) >= start + more, timeout=timeout,
                          message=f"{session} was not polled {more} more times")

    def assert_not_polled(self, sim, session, witness):
        """`session` gets no poll while `witness` gets several."""
        before = count(sim, session)
        self.wait_polled(sim, witness, more=5)
        self.assertEqual(count(sim, session), before, f"{session} is still polled")

    def assert_ok(self, done, *args):
        self.assertEqual(done.returncode, 0, f"sessionwatchctl {args}: {done.stderr}{done.stdout}")
        return done

    def raw(self, daemon, payload, timeout=10):
        """Send raw bytes on one connection, half-close, read every reply line."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(swtest.scaled(timeout))
            sock.connect(daemon.control_socket)
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may close first (an overlong line); its reply is still queued
            data = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    # Closing with our unread request bytes resets the
                    # connection, after the reply that came before it.
                    break
                if not chunk:
                    break
                data += chunk
        return [json.loads(line) for line in data.decode().splitlines()]

    # -- tests -------------------------------------------------------------------

    def test_every_command_in_both_output_modes(self):
        ids = ["ses_one", "ses_two", "ses_three"]
        sim = self.start_sim(ids + ["ses_four"])
        daemon = self.start_daemon(sim, ids)
        swtest.wait_until(lambda: daemon.ctl_json("status")["sessions"]["unseen"] == 0, timeout=15)

        status = daemon.ctl_json("status")
        self.assertTrue(status["ok"])
        self.assertEqual(status["sessions"]["watched"], 3)
        self.assertEqual(status["sessions"]["byStatus"]["Active"], 3)
        self.assertEqual(status["eventsSocket"], daemon.events_socket)
        self.assertEqual(status["webhooks"], [])
        self.assertFalse(status["state"]["degraded"])
        self.assertIn("http_5xx", status["apiErrors"])
        self.assertGreaterEqual(status["polls"]["ok"], 3)
        text = self.assert_ok(daemon.ctl("status"), "status").stdout
        self.assertRegex(text, r"(?m)^Sessions +3 watched")
        self.assertRegex(text, r"(?m)^  Active +3$")
        self.assertIn(daemon.events_socket, text)

        listed = daemon.ctl_json("list")
        self.assertEqual(sorted(s["id"] for s in listed["sessions"]), sorted(ids))
        self.assertTrue(all(s["status"] == "Active" and s["configured"] for s in listed["sessions"]))
        self.assertEqual(daemon.ctl_json("list", "--status", "Failed")["sessions"], [])
        text = self.assert_ok(daemon.ctl("list", "--status", "Active"), "list").stdout.splitlines()
        self.assertRegex(text[0], r"^ID +STATUS +UPDATED +RUNBOOK +SOURCE$")
        self.assertEqual(len(text), 1 + 3 + 1)
        # Columns line up: every row has STATUS where the header has it.
        column = text[0].index("STATUS")
        self.assertTrue(all(row[column:].startswith("Active") for row in text[1:4]), text)
        by_runbook = daemon.ctl_json("list", "--runbook", "rbk_test")["sessions"]
        self.assertEqual(sorted(s["id"] for s in by_runbook), ["ses_one", "ses_three"])
        self.assertTrue(all(s["runbook"] == "rbk_test" for s in by_runbook))
        self.assertEqual([s["id"] for s in daemon.ctl_json("list", "--runbook", "rbk_other")["sessions"]],
                         ["ses_two"])
        self.assertEqual(daemon.ctl_json("list", "--runbook", "rbk_none")["sessions"], [])
        self.assertEqual(daemon.ctl_json("list", "--runbook", "rbk_other", "--status", "Failed")["sessions"], [])
        text = self.assert_ok(daemon.ctl("list", "--runbook", "rbk_other"), "list").stdout.splitlines()
        self.assertRegex(text[1], r"^ses_two +Active +\S+ +rbk_other +config$")

        watched = daemon.ctl_json("watch", "ses_four", "ses_one")
        self.assertEqual(watched["added"], ["ses_four"])
        self.assertEqual(watched["already"], ["ses_one"])
        text = self.assert_ok(daemon.ctl("unwatch", "ses_four", "ses_nope"), "unwatch").stdout
        self.assertEqual(text, "Stopped watching ses_four.\nses_nope was not watched.\n")
        text = self.assert_ok(daemon.ctl("watch", "ses_four"), "watch").stdout
        self.assertEqual(text, "Watching ses_four.\n")
        unwatched = daemon.ctl_json("unwatch", "ses_four")
        self.assertEqual(unwatched, {"ok": True, "removed": ["ses_four"], "unknown": []})

        reloaded = daemon.ctl_json("reload")
        self.assertEqual(reloaded, {"ok": True, "added": 0, "removed": 0, "watched": 3, "webhooksAdded": 0, "webhooksRemoved": 0, "restartNeeded": None})
        self.assertEqual(self.assert_ok(daemon.ctl("reload"), "reload").stdout,
                         "Reloaded: 0 session(s) added, 0 removed, 3 watched; 0 webhook(s) added, 0 removed.\n")

        metrics = daemon.ctl_json("metrics")["text"]
        self.assertEqual(self.assert_ok(daemon.ctl("metrics"), "metrics").stdout.split("\n")[:2],
                         metrics.split("\n")[:2])
        self.assertIn("# TYPE sessionwatch_polls_total counter\n", metrics)
        self.assertRegex(metrics, r'(?m)^sessionwatch_polls_total\{outcome="ok"\} [1-9]\d*$')
        self.assertRegex(metrics, r'(?m)^sessionwatch_sessions\{status="Active"\} 3$')
        self.assertRegex(metrics, r'(?m)^sessionwatch_transitions_total\{status="Active"\} [1-9]\d*$')
        self.assertRegex(metrics, r"(?m)^sessionwatch_stream_clients 0$")
        for line in metrics.splitlines():
            self.assertRegex(line, r'^(# (HELP|TYPE) \w+ .+|\w+(\{\w+="[^"]*"(,\w+="[^"]*")*\})? '
                                   r'(-?\d+(\.\d+)?(e[-+]\d+)?|\+Inf))$')
        daemon.stop()

    def test_watch_and_unwatch_change_polling_and_survive_a_restart(self):
        sim = self.start_sim(["ses_conf", "ses_dyn", "ses_gone"])
        daemon = self.start_daemon(sim, ["ses_conf"])
        self.wait_polled(sim, "ses_conf")
        self.assertEqual(count(sim, "ses_dyn"), 0)

        self.assert_ok(daemon.ctl("watch", "ses_dyn", "ses_gone"), "watch")
        self.wait_polled(sim, "ses_dyn")
        self.wait_polled(sim, "ses_gone")
        self.assert_ok(daemon.ctl("unwatch", "ses_gone"), "unwatch")
        self.assert_not_polled(sim, "ses_gone", "ses_dyn")
        self.assert_ok(daemon.ctl("unwatch", "ses_conf"), "unwatch")
        self.assert_not_polled(sim, "ses_conf", "ses_dyn")
        daemon.stop()

        # A restart keeps the run-time list: ses_dyn is back, ses_gone is not.
        daemon2 = self.start_daemon(sim, ["ses_conf"], name="sessionwatchd2")
        self.wait_polled(sim, "ses_dyn")
        self.assert_not_polled(sim, "ses_gone", "ses_dyn")
        listed = {s["id"]: s for s in daemon2.ctl_json("list")["sessions"]}
        self.assertTrue(listed["ses_dyn"]["dynamic"])
        self.assertNotIn("ses_gone", listed)
        # The config file still lists ses_conf: it is watched again.
        self.assertIn("ses_conf", listed)
        daemon2.stop()

    def test_unwatch_during_a_poll_in_flight(self):
        # The answer to a poll of a session unwatched (and even watched again,
        # reusing its record) meanwhile is dropped, never applied.
        sim = self.start_sim(["ses_slow", "ses_fast"])
        sim.fault("delay", count=1, session="ses_slow", delay_ms=1000)
        daemon = self.start_daemon(sim, ["ses_slow", "ses_fast"])
        swtest.wait_until(lambda: count(sim, "ses_slow") >= 1, timeout=10)
        swtest.wait_until(lambda: daemon.ctl_json("status")["inFlight"] >= 1, timeout=10)
        self.assertEqual(daemon.ctl_json("unwatch", "ses_slow")["removed"], ["ses_slow"])
        self.assertEqual(daemon.ctl_json("watch", "ses_slow")["added"], ["ses_slow"])
        # Enough polls (50 ms apart) to outlast the delayed answer.
        self.wait_polled(sim, "ses_slow", more=30)
        self.wait_polled(sim, "ses_fast", more=3)
        listed = {s["id"]: s for s in daemon.ctl_json("list")["sessions"]}
        self.assertEqual(listed["ses_slow"]["status"], "Active")
        self.assertTrue(listed["ses_slow"]["dynamic"])
        swtest.wait_until(lambda: daemon.ctl_json("status")["inFlight"] <= 2, timeout=10)
        self.assertTrue(daemon.running)
        daemon.stop()

    def test_reload_applies_the_session_list_and_keeps_a_bad_file_out(self):
        sim = self.start_sim(["ses_a", "ses_b", "ses_c"])
        daemon = self.start_daemon(sim, ["ses_a", "ses_b"])
        self.wait_polled(sim, "ses_b")
        self.assert_ok(daemon.ctl("watch", "ses_b"), "watch")  # also run-time: survives its removal

        with open(daemon.config_path, "w") as f:
            f.write(swtest.render_ini(self.config(sim, ["ses_c"])).replace("@KEY_FILE@", daemon.key_file)
                    .replace("@STATE@", self.tmp.state).replace("@RUN@", self.tmp.run))
        reply = daemon.ctl_json("reload")
        self.assertEqual((reply["added"], reply["removed"], reply["watched"]), (1, 1, 2))
        self.wait_polled(sim, "ses_c")
        self.wait_polled(sim, "ses_b")
        self.assert_not_polled(sim, "ses_a", "ses_c")

        with open(daemon.config_path, "a") as f:
            f.write("[poll]\nbogus-key = 1\n")
        done = daemon.ctl("reload")
        self.assertEqual(done.returncode, 1)
        self.assertIn(f"{daemon.config_path}:", done.stderr)
        self.assertIn("bogus-key", done.stderr)
        self.wait_polled(sim, "ses_c")
        self.assertEqual(daemon.ctl_json("status")["sessions"]["watched"], 2)
        daemon.stop()

    def test_mutating_commands_need_root_the_daemon_user_or_the_group(self):
        sim = self.start_sim(["ses_p", "ses_q"])
        # The tree must be reachable for the unprivileged client.
        os.chmod(self.tmp.root, 0o755)
        os.chmod(self.tmp.run, 0o755)
        daemon = self.start_daemon(sim, ["ses_p"], control={"mode": "0666"})
        self.wait_polled(sim, "ses_p")

        for args in (("watch", "ses_q"), ("unwatch", "ses_p"), ("reload",)):
            done = daemon.ctl(*args, wrapper=NOBODY)
            self.assertEqual(done.returncode, 1, f"{args}: {done.stderr}")
            self.assertIn("permission-denied", done.stderr)
            self.assertIn("uid 65534", done.stderr)
        self.assert_ok(daemon.ctl("status", wrapper=NOBODY), "status")
        self.assert_ok(daemon.ctl("list", wrapper=NOBODY), "list")
        self.assert_ok(daemon.ctl("metrics", wrapper=NOBODY), "metrics")
        self.assertEqual(count(sim, "ses_q"), 0)
        self.wait_polled(sim, "ses_p")
        daemon.stop()

        # A member of [control] group may.
        config = self.config(sim, ["ses_p"], control={"mode": "0660", "group": "65534"})
        daemon2 = self.start_daemon(sim, ["ses_p"], config=config, name="sessionwatchd2")
        self.assertEqual(os.stat(daemon2.control_socket).st_gid, 65534)
        self.assert_ok(daemon2.ctl("watch", "ses_q", wrapper=NOBODY), "watch")
        self.wait_polled(sim, "ses_q")
        daemon2.stop()

    def test_bad_requests_get_error_replies_and_the_daemon_stays_healthy(self):
        sim = self.start_sim(["ses_h"])
        daemon = self.start_daemon(sim, ["ses_h"])
        cases = [
            (b"this is not json", "bad-json"),
            (b"[1, 2]", "bad-json"),
            (b'{"command": "status"} trailing', "bad-json"),
            (b"\x00\xff\xfe{", "bad-json"),
            (b'{"command": 5}', "bad-request"),
            (b'{"no": "command"}', "bad-request"),
            (b'{"command": "fly"}', "unknown-command"),
            (b'{"command": "watch"}', "bad-request"),
            (b'{"command": "watch", "ids": []}', "bad-request"),
            (b'{"command": "watch", "ids": ["ok_id", "not ok!"]}', "bad-id"),
            (b'{"command": "watch", "ids": ["' + b"x" * 65 + b'"]}', "bad-id"),
            (b'{"command": "unwatch", "ids": [7]}', "bad-id"),
            (b'{"command": "list", "limit": 0}', "bad-request"),
            (b'{"command": "list", "status": 3}', "bad-request"),
            # A NUL inside a string must not cut it to another, valid one.
            (b'{"command": "watch", "ids": ["ok_id\\u0000x"]}', "bad-id"),
            (b'{"command": "status\\u0000x"}', "unknown-command"),
        ]
        # All on one connection: one reply per line, in order.
        replies = self.raw(daemon, b"".join(line + b"\n" for line, _ in cases))
        self.assertEqual([(r["ok"], r["error"]) for r in replies], [(False, code) for _, code in cases])
        self.assertTrue(all(r["message"] for r in replies))
        self.assertIn("'fly'", replies[6]["message"])
        self.assertIn("'not ok!'", replies[9]["message"])
        # A bad id changes nothing, not even the good ids beside it.
        self.assertEqual(count(sim, "ok_id"), 0)

        # An overlong line: an error, then the connection ends.
        replies = self.raw(daemon, b'{"command":"status","pad":"' + b"y" * 70000 + b'"}\n{"command":"status"}\n')
        self.assertEqual([r["error"] for r in replies], ["too-long"])

        # A last request without a newline is answered; blank lines are not requests.
        replies = self.raw(daemon, b'\n  \n{"command":"status"}')
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0]["ok"])

        # Paging: limit and cursor walk the table.
        self.assert_ok(daemon.ctl("watch", "ses_x1", "ses_x2", "ses_x3"), "watch")
        seen, cursor = [], None
        while True:
            request = {"command": "list", "limit": 2}
            if cursor is not None:
                request["cursor"] = cursor
            reply = daemon.request(request)
            self.assertLessEqual(len(reply["sessions"]), 2)
            seen += [s["id"] for s in reply["sessions"]]
            cursor = reply["next"]
            if cursor is None:
                break
        self.assertEqual(sorted(seen), ["ses_h", "ses_x1", "ses_x2", "ses_x3"])

        # Connections past the limit are told so; the others keep working.
        socks = []
        try:
            for _ in range(64):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(daemon.control_socket)
                socks.append(sock)
            extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            extra.settimeout(swtest.scaled(10))
            extra.connect(daemon.control_socket)
            data = b""
            while not data.endswith(b"\n"):
                chunk = extra.recv(4096)
                if not chunk:
                    break
                data += chunk
            extra.close()
            self.assertEqual(json.loads(data)["ok"], False)
            self.assertIn("Too many", json.loads(data)["message"])
            socks[0].sendall(b'{"command":"status"}\n')
            socks[0].settimeout(swtest.scaled(10))
            self.assertTrue(json.loads(socks[0].recv(65536).split(b"\n")[0])["ok"])
        finally:
            for sock in socks:
                sock.close()

        self.wait_polled(sim, "ses_h")
        swtest.wait_until(lambda: daemon.ctl("status").returncode == 0, timeout=10)
        self.assertTrue(daemon.running)
        daemon.stop()

    def test_many_ids_and_pipelined_requests(self):
        sim = self.start_sim(["ses_p"])
        daemon = self.start_daemon(sim, ["ses_p"])
        # More ids than one request takes: sessionwatchctl sends them in parts.
        ids = [f"ses_many_{k:05d}_{'x' * 40}" for k in range(2500)]
        reply = daemon.ctl_json("watch", *ids)
        self.assertEqual(len(reply["added"]), 2500)
        self.assertEqual(daemon.ctl_json("status")["sessions"]["watched"], 2501)
        reply = daemon.ctl_json("unwatch", *ids)
        self.assertEqual(len(reply["removed"]), 2500)
        # Many requests in one write are each answered, in order (over
        # several loop turns).
        replies = self.raw(daemon, b"".join(b'{"command":"list","limit":1,"cursor":%d}\n' % k for k in range(200)))
        self.assertEqual(len(replies), 200)
        self.assertTrue(all(r["ok"] for r in replies))
        self.wait_polled(sim, "ses_p")
        daemon.stop()

    def test_a_second_daemon_does_not_take_the_sockets(self):
        sim = self.start_sim(["ses_s"])
        first = self.start_daemon(sim, ["ses_s"])
        second = swtest.Daemon(self.tmp, self.config(sim, ["ses_s"]), name="sessionwatchd-2")
        second.register(self)
        second.start()
        swtest.assert_exit(second.wait(timeout=20), 1, second)
        self.assertIn("in use by a running process", second.stderr_text())
        # The first one is still reachable, on both sockets.
        self.assertTrue(first.request({"command": "status"})["ok"])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(first.events_socket)
        first.stop()
        self.assertFalse(os.path.exists(first.control_socket))

    def test_events_stops_on_sigint_while_idle(self):
        sim = self.start_sim(["ses_i"])
        daemon = self.start_daemon(sim, ["ses_i"])
        proc = subprocess.Popen([swtest.binary_path("SW_CTL"), "--socket", daemon.control_socket, "events"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=swtest.child_env())
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        # Wait until it follows the stream (its live marker is out), then
        # let nothing happen and interrupt it.
        line = proc.stdout.readline()
        while line and b"-- live" not in line:
            line = proc.stdout.readline()
        self.assertIn(b"-- live", line)
        proc.send_signal(signal.SIGINT)
        self.assertEqual(proc.wait(timeout=swtest.scaled(10)), 0)
        proc.stdout.close()
        proc.stderr.close()
        daemon.stop()

    def test_exit_codes(self):
        ctl = swtest.binary_path("SW_CTL")

        def run(*args, env=None):
            return subprocess.run([ctl, *args], capture_output=True, text=True, timeout=swtest.scaled(10),
                                  env=swtest.child_env(env))

        missing = os.path.join(self.tmp.run, "none.sock")
        for args in (("status",), ("list",), ("watch", "ses_1"), ("reload",), ("metrics",), ("events",)):
            done = run("--socket", missing, *args)
            self.assertEqual(done.returncode, 69, f"{args}: {done.stderr}")
            self.assertIn(missing, done.stderr)
        # The default socket follows $RUNTIME_DIRECTORY.
        done = run("status", env={"RUNTIME_DIRECTORY": self.tmp.run})
        self.assertEqual(done.returncode, 69)
        self.assertIn(os.path.join(self.tmp.run, "control.sock"), done.stderr)
        self.assertIn("/run/sessionwatchd/control.sock", run("--help", env={"RUNTIME_DIRECTORY": None}).stdout)

        for args in ((), ("fly",), ("watch",), ("unwatch",), ("status", "extra"), ("--bogus", "status"),
                     ("list", "--colour")):
            self.assertEqual(run("--socket", missing, *args).returncode, 2, f"{args}")
        self.assertEqual(run("--help").returncode, 0)
        version = run("--version")
        self.assertEqual(version.returncode, 0)
        self.assertRegex(version.stdout, r"^sessionwatchctl \d+\.\d+\.\d+\n$")

        sim = self.start_sim(["ses_e"])
        daemon = self.start_daemon(sim, ["ses_e"])
        self.assertEqual(daemon.ctl("status").returncode, 0)
        done = daemon.ctl("watch", "bad id")
        self.assertEqual(done.returncode, 1)
        self.assertIn("bad-id", done.stderr)
        done = daemon.ctl("watch", "bad id", json_output=True)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(json.loads(done.stdout)["error"], "bad-id")
        daemon.stop()
        self.assertEqual(daemon.ctl("status").returncode, 69)


if __name__ == "__main__":
    unittest.main()
