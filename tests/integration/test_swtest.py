"""The helpers of swtest that need neither apisim nor the daemon.

Polling and its timeout, temporary trees and when they are kept, INI
rendering, JSON-lines reading, HTTP helpers, exit-code texts, and process
management (output capture, signals, stop, kill, the parent-death safety net)
with small shell programs; the Daemon wrapper is checked with a stand-in
program generated in the test's temporary tree, to prove how the config and
the API key are handed over and how events are read back.
"""

import contextlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import unittest
from unittest import mock

import swtest

HERE = os.path.dirname(os.path.abspath(__file__))


class WaitUntilTest(unittest.TestCase):
    def test_returns_the_first_true_value_after_polling(self):
        calls = []

        def third_time():
            calls.append(1)
            return "done" if len(calls) >= 3 else None

        self.assertEqual(swtest.wait_until(third_time, timeout=5, interval=0.001), "done")
        self.assertEqual(len(calls), 3)

    def test_timeout_raises_with_message_after_the_deadline(self):
        calls = []
        start = time.monotonic()
        with self.assertRaises(AssertionError) as ctx:
            swtest.wait_until(lambda: calls.append(1), timeout=0.2, interval=0.01, message="never true")
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.2)
        self.assertLess(elapsed, 2.0)
        self.assertIn("never true", str(ctx.exception))
        self.assertGreater(len(calls), 2)  # it polled, it did not sleep once

    def test_message_callable_is_evaluated_only_on_failure(self):
        seen = []
        swtest.wait_until(lambda: True, timeout=1, message=lambda: seen.append("evaluated") or "x")
        self.assertEqual(seen, [])
        with self.assertRaisesRegex(AssertionError, "state is 42"):
            swtest.wait_until(lambda: False, timeout=0.05, message=lambda: "state is 42")

    def test_ignored_exceptions_count_as_not_yet(self):
        calls = []

        def flaky():
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionRefusedError("not listening yet")
            return True

        self.assertTrue(swtest.wait_until(flaky, timeout=5, interval=0.001, ignore=(OSError,)))

        def always_refused():
            raise ConnectionRefusedError("still refused")

        with self.assertRaisesRegex(AssertionError, "last error: .*still refused"):
            swtest.wait_until(always_refused, timeout=0.05, ignore=(OSError,))

    def test_other_exceptions_propagate(self):
        with self.assertRaises(KeyError):
            swtest.wait_until(lambda: {}["missing"], timeout=5, ignore=(OSError,))

    def test_timeout_scale(self):
        with mock.patch.dict(os.environ, {"SW_TIMEOUT_SCALE": "3"}):
            start = time.monotonic()
            with self.assertRaisesRegex(AssertionError, "after 0.3s"):
                swtest.wait_until(lambda: False, timeout=0.1, interval=0.01)
            self.assertGreaterEqual(time.monotonic() - start, 0.3)
        with mock.patch.dict(os.environ, {"SW_TIMEOUT_SCALE": "fast"}):
            with self.assertRaises(ValueError):
                swtest.scaled(1)


class TempDirsTest(unittest.TestCase):
    def test_layout_write_and_cleanup(self):
        tmp = swtest.TempDirs()
        try:
            for sub in ("state", "run", "conf"):
                self.assertTrue(os.path.isdir(os.path.join(tmp.root, sub)))
            self.assertEqual(tmp.state, tmp.path("state"))
            path = tmp.write("conf/secret", "s3cret", mode=0o600)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            with open(path) as f:
                self.assertEqual(f.read(), "s3cret")
            nested = tmp.write("a/b/c.txt", b"\x00\x01")
            self.assertTrue(os.path.isfile(nested))
        finally:
            tmp.cleanup()
        self.assertFalse(os.path.exists(tmp.root))
        tmp.cleanup()  # a second call is harmless

    def test_fresh_tree_each_time(self):
        with swtest.TempDirs() as a, swtest.TempDirs() as b:
            self.assertNotEqual(a.root, b.root)

    def test_keep_policy(self):
        cases = [("", True, False), ("1", False, False), ("1", True, True), ("always", False, True),
                 ("0", True, False)]
        for value, failed, kept in cases:
            with self.subTest(SW_KEEP_TMP=value, failed=failed):
                stderr = io.StringIO()
                with mock.patch.dict(os.environ, {"SW_KEEP_TMP": value}), contextlib.redirect_stderr(stderr):
                    tmp = swtest.TempDirs()
                    tmp.cleanup(failed=failed)
                self.assertEqual(os.path.exists(tmp.root), kept)
                self.assertEqual(tmp.root in stderr.getvalue(), kept)
                if kept:
                    shutil.rmtree(tmp.root)

    def test_context_manager_exception_counts_as_failure(self):
        with mock.patch.dict(os.environ, {"SW_KEEP_TMP": "1"}), contextlib.redirect_stderr(io.StringIO()):
            with self.assertRaises(RuntimeError):
                with swtest.TempDirs() as tmp:
                    raise RuntimeError("boom")
            with swtest.TempDirs() as fine:
                pass
        self.assertTrue(os.path.isdir(tmp.root))
        self.assertFalse(os.path.exists(fine.root))
        shutil.rmtree(tmp.root)

    def test_temp_dirs_follows_the_test_outcome(self):
        roots = {}

        class Inner(unittest.TestCase):
            def test_pass(self):
                roots["pass"] = swtest.temp_dirs(self).root

            def test_fail(self):
                roots["fail"] = swtest.temp_dirs(self).root
                self.fail("on purpose")

            def test_error(self):
                roots["error"] = swtest.temp_dirs(self).root
                raise RuntimeError("on purpose")

            def test_subtest_fails(self):
                roots["subtest"] = swtest.temp_dirs(self).root
                with self.subTest(case=1):
                    self.fail("on purpose")

        result = unittest.TestResult()
        with mock.patch.dict(os.environ, {"SW_KEEP_TMP": "1"}), contextlib.redirect_stderr(io.StringIO()):
            unittest.defaultTestLoader.loadTestsFromTestCase(Inner).run(result)
        self.assertEqual((len(result.failures), len(result.errors)), (2, 1))
        self.assertFalse(os.path.exists(roots["pass"]))
        for kept in ("fail", "error", "subtest"):
            self.assertTrue(os.path.isdir(roots[kept]), kept)
            shutil.rmtree(roots[kept])
        # Without SW_KEEP_TMP even a failed test's tree goes.
        with mock.patch.dict(os.environ, {"SW_KEEP_TMP": ""}):
            unittest.defaultTestLoader.loadTestsFromTestCase(Inner).run(unittest.TestResult())
        for name in ("fail", "error", "subtest"):
            self.assertFalse(os.path.exists(roots[name]), name)


class RenderIniTest(unittest.TestCase):
    def test_render(self):
        text = swtest.render_ini({
            "api": {"url": "http://127.0.0.1:1/v0", "timeout": "2s", "team-id": None},
            "watch": {"session": ["ses1", "ses2"], "all": False},
            ("webhook", "oncall"): [("url", "http://x/"), ("statuses", "Failed Waiting")],
            "metrics": {"listen": ""},
            "journal": {"enable": True, "max": 3},
        }, header="generated\nfor a test")
        self.assertEqual(text, textwrap.dedent("""\
            # generated
            # for a test

            [api]
            url = http://127.0.0.1:1/v0
            timeout = 2s

            [watch]
            session = ses1
            session = ses2
            all = no

            [webhook "oncall"]
            url = http://x/
            statuses = Failed Waiting

            [metrics]
            listen =

            [journal]
            enable = yes
            max = 3
            """))

    def test_rejects_what_ini_cannot_hold(self):
        with self.assertRaises(ValueError):
            swtest.render_ini({"api": {"url": "a\nb"}})
        with self.assertRaises(ValueError):
            swtest.section_name("webhook", 'a"b')
        self.assertEqual(swtest.section_name("api"), "api")


class ReadJsonLinesTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)

    def test_complete_lines_only_by_default(self):
        path = self.tmp.write("events.ndjson", '{"a": 1}\n\n[2]\n{"partial": ')
        self.assertEqual(swtest.read_json_lines(path), [{"a": 1}, [2]])
        path = self.tmp.write("done.ndjson", '{"a": 1}\n{"b": 2}')
        self.assertEqual(swtest.read_json_lines(path, complete_only=False), [{"a": 1}, {"b": 2}])

    def test_bad_line_and_missing_file(self):
        path = self.tmp.write("bad.ndjson", '{"a": 1}\nnot json\n')
        with self.assertRaisesRegex(AssertionError, re.escape(path) + ":2"):
            swtest.read_json_lines(path)
        self.assertEqual(swtest.read_json_lines(self.tmp.path("absent")), [])


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/json":
            body = json.dumps({"key": self.headers.get("X-Test")}).encode()
            self.send_response(200)
        else:
            body = b"no such thing"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"type": self.headers.get("Content-Type"), "got": json.loads(data)}).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HttpAndPortTest(unittest.TestCase):
    def setUp(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def test_get_post_and_error_status(self):
        response = swtest.http_get(self.base + "/json", headers={"X-Test": "v"})
        self.assertEqual(response.status, 200)
        self.assertEqual(response.json(), {"key": "v"})
        missing = swtest.http_get(self.base + "/missing")
        self.assertEqual(missing.status, 404)
        self.assertEqual(missing.text, "no such thing")
        with self.assertRaises(AssertionError):
            missing.json()
        posted = swtest.http_request("POST", self.base + "/x", body={"n": 1})
        self.assertEqual(posted.status, 201)
        self.assertEqual(posted.json(), {"type": "application/json", "got": {"n": 1}})

    def test_proxy_settings_are_ignored(self):
        with mock.patch.dict(os.environ, {"http_proxy": "http://127.0.0.1:9", "no_proxy": ""}):
            self.assertEqual(swtest.http_get(self.base + "/json").status, 200)

    def test_free_port_can_be_bound(self):
        port = swtest.free_port()
        self.assertGreater(port, 0)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


class ExitCodeTest(unittest.TestCase):
    def test_texts(self):
        self.assertEqual(swtest.exit_status_text(0), "exit 0 (success)")
        self.assertEqual(swtest.exit_status_text(78), "exit 78 (EX_CONFIG)")
        self.assertEqual(swtest.exit_status_text(-9), "killed by SIGKILL")
        self.assertEqual(swtest.exit_status_text(None), "still running")
        swtest.assert_exit(78, swtest.EXIT_CONFIG)
        with self.assertRaisesRegex(AssertionError, "expected exit 0 .*got killed by SIGTERM"):
            swtest.assert_exit(-15, swtest.EXIT_OK)


class ProcessTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)

    def process(self, script, **kwargs):
        return swtest.Process(["/bin/sh", "-c", script], self.tmp.root, name="sh", **kwargs).register(self)

    def test_output_readable_while_running_and_signals(self):
        p = self.process("trap 'echo got-term; exit 3' TERM; echo ready; echo warn >&2; "
                         "while :; do sleep 0.02; done").start()
        self.assertEqual(p.wait_for_stdout("ready"), "ready")
        self.assertTrue(p.running)
        self.assertEqual(p.wait_for_stderr(re.compile(r"^wa")), "warn")
        self.assertEqual(p.stdout_lines(), ["ready"])
        self.assertEqual(p.stop(), 3)
        self.assertEqual(p.stdout_lines(), ["ready", "got-term"])
        self.assertEqual(p.stop(), 3)  # stopping again reports the same status

    def test_wait_fails_fast_when_the_process_exits(self):
        p = self.process("echo something else; exit 4").start()
        start = time.monotonic()
        with self.assertRaisesRegex(AssertionError, "(?s)exited before.*status: exit 4"):
            p.wait_for_stdout("never printed", timeout=30)
        self.assertLess(time.monotonic() - start, 10)

    def test_partial_line_is_not_matched_until_complete(self):
        p = self.process("printf 'half'; sleep 0.3; echo ' done'; sleep 30").start()
        swtest.wait_until(lambda: p.stdout_text() == "half", timeout=5)
        self.assertEqual(p.stdout_lines(complete_only=True), [])
        self.assertEqual(p.stdout_lines(), ["half"])
        self.assertEqual(p.wait_for_stdout(lambda line: line.startswith("half")), "half done")

    def test_stop_timeout_kills_and_fails(self):
        p = self.process("trap '' TERM; echo ready; while :; do sleep 0.02; done").start()
        p.wait_for_stdout("ready")
        with self.assertRaisesRegex(AssertionError, "did not exit"):
            p.stop(timeout=0.3)
        self.assertFalse(p.running)
        self.assertEqual(p.returncode, -signal.SIGKILL)

    def test_kill_signal_and_env(self):
        # Variables that would make the child think it runs under systemd
        # are not inherited; variables passed explicitly are.
        with mock.patch.dict(os.environ, {"NOTIFY_SOCKET": "/run/x"}):
            p = self.process('echo "v=$SW_PROBE n=${NOTIFY_SOCKET-unset}"; exec sleep 30',
                             env={"SW_PROBE": "42"}).start()
        p.wait_for_stdout("v=")
        self.assertEqual(p.stdout_lines(), ["v=42 n=unset"])
        p.signal(signal.SIGUSR1)
        self.assertEqual(p.wait(timeout=5), -signal.SIGUSR1)
        self.assertEqual(self.process("exec sleep 30").start().kill(), -signal.SIGKILL)

    def test_output_files_do_not_clobber(self):
        a = self.process("echo one").start()
        b = self.process("echo two").start()
        self.assertNotEqual(a.stdout_path, b.stdout_path)
        a.wait(), b.wait()
        self.assertEqual((a.stdout_text(), b.stdout_text()), ("one\n", "two\n"))

    def test_child_dies_with_the_test_process(self):
        """A process started by a test that is killed does not outlive it."""
        code = textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {HERE!r})
            import swtest
            p = swtest.Process(["sleep", "300"], {self.tmp.root!r}, name="orphan").start()
            print(p.pid, flush=True)
            time.sleep(300)
        """)
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        self.addCleanup(parent.wait)
        child = int(parent.stdout.readline())
        parent.stdout.close()
        self.assertTrue(_alive(child))
        parent.kill()
        swtest.wait_until(lambda: not _alive(child), timeout=5, message="the child outlived its parent")

    def test_start_returns_once_the_death_signal_is_set(self):
        """setpriv makes its prctl before it execs the program: once start()
        returns, the process is the program and no longer setpriv."""
        setpriv = os.stat(shutil.which("setpriv"))
        wrappers = [(), ("setpriv", "--pdeathsig", "TERM", "--")]  # setpriv again: its exec counts
        still = []
        for n in range(100):
            p = swtest.Process(["sleep", "300"], self.tmp.root, name="sleep",
                               wrapper=wrappers[n % 2]).register(self).start()
            exe = os.stat(f"/proc/{p.pid}/exe")
            if (exe.st_dev, exe.st_ino) == (setpriv.st_dev, setpriv.st_ino):
                still.append(n)
            p.kill()
        self.assertEqual(still, [], "start() returned while the process was still setpriv")

    def test_start_of_a_process_that_exits_at_once(self):
        # Gone (or a zombie) before start() looks at it: no wait, no error.
        for _ in range(20):
            self.assertEqual(self.process("exit 5").start().wait(timeout=5), 5)
        missing = swtest.Process([self.tmp.path("no-such-program")], self.tmp.root,
                                 name="missing").register(self).start()
        self.assertNotEqual(missing.wait(timeout=5), 0)
        self.assertIn("no-such-program", missing.stderr_text())

    def test_start_gives_up_on_a_setpriv_that_does_not_exec(self):
        p = self.process("exec sleep 300")
        with mock.patch.object(swtest, "_still_in_setpriv", return_value=True):
            start = time.monotonic()
            with self.assertRaisesRegex(AssertionError, "(?s)still setpriv.*parent-death signal "
                                                        "is not known to be set"):
                p.start(timeout=0.3)
        self.assertLess(time.monotonic() - start, 5)
        self.assertFalse(p.running)
        self.assertEqual(p.returncode, -signal.SIGKILL)


def _alive(pid):
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


# A stand-in for sessionwatchd: it reports its command line and the config it
# was given on stderr and prints events like --print-events=json does.
FAKE_DAEMON = """\
#!/bin/sh
echo "argv: $*" >&2
config=$2
cat "$config" >&2
key_file=$(sed -n 's/^key-file = //p' "$config")
echo "key: $(cat "$key_file")" >&2
echo '{"type":"sessionwatch.session.active","subject":"ses1"}'
echo 'not an event'
echo '{"type":"sessionwatch.session.failed","subject":"ses1"}'
trap 'exit 0' TERM
while :; do sleep 0.02; done
"""


class DaemonWrapperTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.fake = self.tmp.write("fake-sessionwatchd", FAKE_DAEMON, mode=0o755)

    def test_config_key_file_and_events(self):
        config = swtest.Daemon.basic_config("http://127.0.0.1:1/v0", sessions=["ses1", "ses2"],
                                            extra={"poll": {"interval": "100ms"}})
        daemon = swtest.Daemon(self.tmp, config, api_key="k-123-secret", binary=self.fake,
                               print_events=True).register(self)
        self.assertEqual(stat.S_IMODE(os.stat(daemon.key_file).st_mode), 0o600)
        self.assertNotIn("k-123-secret", " ".join(daemon.full_argv()))
        self.assertNotIn("k-123-secret", daemon.config_text)
        self.assertIn(f"key-file = {daemon.key_file}\n", daemon.config_text)
        self.assertIn(f"path = {self.tmp.run}/events.sock\n", daemon.config_text)
        self.assertIn("session = ses1\nsession = ses2\n", daemon.config_text)
        self.assertIn("[poll]\ninterval = 100ms\n", daemon.config_text)

        daemon.start()
        events = daemon.wait_for_events(count=2)
        self.assertEqual([e["type"] for e in events],
                         ["sessionwatch.session.active", "sessionwatch.session.failed"])
        failed = daemon.wait_for_event(lambda e: e["type"].endswith(".failed"))
        self.assertEqual(failed["subject"], "ses1")
        swtest.wait_until(lambda: "key: k-123-secret" in daemon.stderr_text(), timeout=5)
        self.assertIn(f"argv: --config {daemon.config_path} --print-events=json", daemon.stderr_text())
        self.assertEqual(daemon.stop(), swtest.EXIT_OK)

    def test_text_config_placeholders_and_bad_event_line(self):
        script = self.tmp.write("bad-events", "#!/bin/sh\necho '{broken'\nexec sleep 30\n", mode=0o755)
        daemon = swtest.Daemon(self.tmp, "[state]\npath = @STATE@\n[api]\nkey-file = @KEY_FILE@\n",
                               binary=script).register(self)
        self.assertEqual(daemon.config_text,
                         f"[state]\npath = {self.tmp.state}\n[api]\nkey-file = {daemon.key_file}\n")
        daemon.start()
        daemon.wait_for_stdout("{broken")
        with self.assertRaisesRegex(AssertionError, "not JSON"):
            daemon.events()
        self.assertEqual(daemon.kill(), -signal.SIGKILL)

    def test_missing_binary_is_a_clear_failure(self):
        with mock.patch.dict(os.environ, {"SW_DAEMON": self.tmp.path("nothing-here")}):
            with self.assertRaisesRegex(AssertionError, "SW_DAEMON=.* is not an executable"):
                swtest.Daemon(self.tmp, {})


class ApiSimWrapperTest(unittest.TestCase):
    # apisim is built with the project: a missing binary fails the test (the
    # constructor says so), it is not a reason to skip it.
    def test_missing_binary_is_a_clear_failure(self):
        tmp = swtest.temp_dirs(self)
        for value in (tmp.path("nothing-here"), None):
            with self.subTest(SW_APISIM=value), mock.patch.dict(os.environ, {"SW_APISIM": ""}):
                if value is None:
                    del os.environ["SW_APISIM"]
                else:
                    os.environ["SW_APISIM"] = value
                with self.assertRaisesRegex(AssertionError, "SW_APISIM.* is not (set|an executable)"):
                    swtest.ApiSim(tmp)

    def test_start_admin_and_stop(self):
        tmp = swtest.temp_dirs(self)
        with swtest.ApiSim(tmp) as sim:
            sim.register(self)
            self.assertRegex(sim.url, r"^http://127\.0\.0\.1:\d+/v0$")
            sim.add_sessions([swtest.sim_session("ses_swtest1", [(0, "Active")])])
            self.assertEqual(sim.api("GET", "/sessions/get?id=ses_swtest1").json()["status"], "Active")
            sim.set_status("ses_swtest1", "Failed")
            self.assertEqual(sim.api("GET", "/sessions/get?id=ses_swtest1").json()["status"], "Failed")
            self.assertIn(sim.api("GET", "/sessions/get?id=ses_swtest1", key="wrong").status, (401, 403))
            with self.assertRaises(swtest.ApiSimError):
                sim.admin("GET", "/_sim/no-such-endpoint")
            self.assertEqual([t[1] for t in sim.history("ses_swtest1")["ses_swtest1"]], ["Active", "Failed"])
            requests = sim.counters(session="ses_swtest1", times=False)["requests"]
            self.assertEqual((requests["get"], requests["unauthorized"]), (2, 1))
            sim.reset_counters()
            self.assertEqual(sim.counters()["requests"]["get"], 0)
            sim.fault("503", count=1, session="ses_swtest1", retry_after=2)
            self.assertEqual([f["kind"] for f in sim.faults()["faults"]], ["503"])
            refused = sim.api("GET", "/sessions/get?id=ses_swtest1")
            self.assertEqual((refused.status, refused.headers.get("Retry-After")), (503, "2"))
            sim.fault("503", count=5)
            sim.clear_faults()
            self.assertEqual(sim.api("GET", "/sessions/get?id=ses_swtest1").status, 200)
            self.assertEqual(sim.stop(), 0)


if __name__ == "__main__":
    unittest.main()
