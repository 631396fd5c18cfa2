"""sessionwatchd's command line: exit codes, configuration errors, secrets.

A bad configuration exits 78 (EX_CONFIG) with one "FILE:LINE: message" line
per problem on stderr, both with --check-config and on a normal start; a good
one passes --check-config with exit 0; bytes of the file that are control
characters or not UTF-8 are shown escaped (\x1b) in every message; an
integer too large for any integer setting is "too large" with the limit;
a missing API key is a warning for --check-config (so the README's first
check of the shipped example config works) but the daemon refuses to start;
an http:// API URL to a host that is not the loopback is warned about by
--check-config, at start and on a reload that brings it; --version prints the version; a bad
option or argument exits 64 (EX_USAGE). The API key, a recognisable string,
appears in no output of any of these runs, not even when the configuration
around it is wrong.
"""

import os
import re
import subprocess
import unittest
import uuid

import swtest

EX_USAGE = 64

# A key nobody would write by chance: any output containing it is a leak.
KEY = f"swcli-SECRET-{uuid.uuid4().hex}"
KEY_TAIL = KEY[-16:]  # a part of it, to catch a cut or quoted copy


class CliTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.daemon = swtest.binary_path("SW_DAEMON")
        self.key_file = self.tmp.write("conf/api-key", KEY + "\n", mode=0o600)
        self.outputs = []  # every (argv, stdout, stderr) seen, for the leak check

    def tearDown(self):
        for argv, out, err in self.outputs:
            for text, name in ((out, "stdout"), (err, "stderr")):
                self.assertNotIn(KEY_TAIL, text, f"the API key leaked on {name} of {argv}")

    def run_daemon(self, *args, timeout=20):
        argv = [self.daemon, *args]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=swtest.scaled(timeout),
                                    env=swtest.child_env(), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{argv} did not exit within {exc.timeout:g}s "
                                 f"(stderr: {exc.stderr!r})") from None
        self.outputs.append((argv, result.stdout, result.stderr))
        return result

    def write_config(self, name, text):
        return self.tmp.write(f"conf/{name}", text.replace("@KEY_FILE@", self.key_file))

    # A valid base: every bad configuration below differs from it in one place.
    BASE = ("[api]\n"                      # 1
            "url = http://127.0.0.1:9/v0\n"  # 2
            "key-file = @KEY_FILE@\n"      # 3
            "[poll]\n"                     # 4
            "interval = 1s\n"              # 5
            "[watch]\n"                    # 6
            "session = ses20220120za1pskd\n")  # 7

    def test_check_config_ok(self):
        path = self.write_config("ok.conf", self.BASE + '[webhook "oncall"]\nurl = http://127.0.0.1:9/hook\n')
        result = self.run_daemon("--check-config", "--config", path)
        swtest.assert_exit(result.returncode, swtest.EXIT_OK)
        self.assertEqual(result.stdout.strip(), f"{path}: OK (1 session(s), 0 runbook(s), 1 webhook(s))")
        self.assertEqual(result.stderr, "")

    def test_bad_configs_exit_78_with_file_and_line(self):
        # (name, config text, expected line, a piece of the message)
        table = [
            ("unknown section", self.BASE + "[bogus]\nx = 1\n", 8, "Unknown section '[bogus]'"),
            ("unknown key", self.BASE + "frobnicate = 3\n", 8, "Unknown key 'frobnicate'"),
            ("bad duration", self.BASE.replace("interval = 1s", "interval = 5 parsecs"), 5,
             "'interval'"),
            ("duration without unit", self.BASE.replace("interval = 1s", "interval = 5"), 5, "'interval'"),
            ("duplicate webhook", self.BASE + '[webhook "a"]\nurl = http://h.example/1\n'
                                              '[webhook "a"]\nurl = http://h.example/2\n', 10,
             "Duplicate webhook 'a'"),
            ("duplicate key", self.BASE + "[poll]\ninterval = 2s\n", 9, "Duplicate key 'interval'"),
            # A secret pasted into the config file: the error names the key,
            # never the value.
            ("secret in the file", self.BASE.replace("[poll]\n", f"key = {KEY}\n[poll]\n"), 4,
             "Unknown key 'key'"),
            ("secret as a bare line", self.BASE + KEY + "\n", 8, "Syntax error"),
        ]
        for name, text, line, message in table:
            with self.subTest(name):
                path = self.write_config(re.sub(r"\W+", "-", name) + ".conf", text)
                for args in (["--check-config", "--config", path], ["--config", path]):
                    result = self.run_daemon(*args)
                    swtest.assert_exit(result.returncode, swtest.EXIT_CONFIG)
                    self.assertEqual(result.stdout, "", args)
                    lines = result.stderr.splitlines()
                    self.assertTrue(lines, f"{args}: nothing on stderr")
                    for text_line in lines:
                        self.assertRegex(text_line, rf"^{re.escape(path)}:\d+: \S",
                                         f"{args}: not a FILE:LINE: message line")
                    wanted = f"{path}:{line}: "
                    hits = [text_line for text_line in lines if text_line.startswith(wanted)]
                    self.assertTrue(hits, f"{args}: no line starting {wanted!r}: {lines}")
                    self.assertIn(message, hits[0], args)

    def test_config_messages_escape_control_and_non_utf8_bytes(self):
        text = (self.BASE.replace("interval = 1s", "interval = 5\x1b[31ms\xff")
                + "fr\x1b[2Job\xfe = 1\n"        # line 8: a key
                + "[po\x1b[31mll\xff]\n")         # line 9: a section
        path = self.tmp.path("conf", "garbage.conf")
        with open(path, "wb") as f:
            f.write(text.replace("@KEY_FILE@", self.key_file).encode("latin-1"))
        for args in (["--check-config", "--config", path], ["--config", path]):
            with self.subTest(args=args):
                result = subprocess.run([self.daemon, *args], capture_output=True, timeout=swtest.scaled(20),
                                        env=swtest.child_env(), stdin=subprocess.DEVNULL)
                swtest.assert_exit(result.returncode, swtest.EXIT_CONFIG)
                err = result.stderr
                for raw in (b"\x1b", b"\xff", b"\xfe", b"\x07"):
                    self.assertNotIn(raw, err)
                err = err.decode("utf-8", errors="strict")
                self.outputs.append((args, "", err))
                self.assertIn(f"{path}:5: Invalid value '5\\x1b[31ms\\xff' for 'interval'", err)
                self.assertIn(f"{path}:8: Unknown key 'fr\\x1b[2Job\\xfe'", err)
                self.assertIn(f"{path}:9: Unknown section '[po\\x1b[31mll\\xff]'", err)

    def test_integers_too_large_say_so_with_the_limit(self):
        huge = "99999999999999999999999"
        table = [
            ("[api]", "max-connections", huge, "number too large (at most 1024)"),
            ("[api]", "rate-limit", huge + "/s", "the count is too large (at most 1000000)"),
            ("[api]", "timeout", huge + "s", "number too large (at most "),
            ("[api]", "max-body", huge + "k", "number too large (at most "),
            ("[poll]", "max-sessions", huge, "number too large (at most "),
            ("[poll]", "jitter", huge + "%", "number too large (at most 100%)"),
            ('[webhook "w"]', "max-in-flight", huge, "number too large (at most "),
            ("[metrics]", "listen", "127.0.0.1:" + huge, "the port is too large (at most 65535)"),
            ("[events]", "mode", "066000", "too large"),
        ]
        for section, key, value, message in table:
            with self.subTest(key=key):
                extra = f"{section}\n" + ("url = http://127.0.0.1:9/hook\n" if "webhook" in section else "")
                text = self.BASE + extra + f"{key} = {value}\n"
                line = text.count("\n")
                path = self.write_config(f"huge-{key}.conf", text)
                result = self.run_daemon("--check-config", "--config", path)
                swtest.assert_exit(result.returncode, swtest.EXIT_CONFIG)
                self.assertIn(f"{path}:{line}: Invalid value '{value}' for '{key}': {message}", result.stderr)
                self.assertNotIn("not a", result.stderr)

    def test_missing_api_key_is_a_warning_for_check_config_only(self):
        missing = self.tmp.path("conf", "no-such-key")
        path = self.write_config("nokey.conf", self.BASE.replace("@KEY_FILE@", missing))
        result = self.run_daemon("--check-config", "--config", path)
        swtest.assert_exit(result.returncode, swtest.EXIT_OK)
        self.assertEqual(result.stdout.strip(), f"{path}: OK (1 session(s), 0 runbook(s), 0 webhook(s))")
        self.assertRegex(result.stderr, rf"^{re.escape(path)}:3: warning: key-file '{re.escape(missing)}': "
                                        r"No such file or directory; the daemon will not start without it\n$")
        # The daemon itself does not start without its key.
        result = self.run_daemon("--config", path)
        swtest.assert_exit(result.returncode, swtest.EXIT_CONFIG)
        self.assertIn(f"{path}:3: key-file '{missing}': No such file", result.stderr)
        # Other problems with the key file stay errors for --check-config too.
        empty = self.tmp.write("conf/empty-key", "\n", mode=0o600)
        path = self.write_config("emptykey.conf", self.BASE.replace("@KEY_FILE@", empty))
        result = self.run_daemon("--check-config", "--config", path)
        swtest.assert_exit(result.returncode, swtest.EXIT_CONFIG)
        self.assertIn(f"{path}:3: key-file", result.stderr)

    def test_readme_check_config_step_works_with_the_shipped_config(self):
        # The README's "Build by hand" block, its last command run as written
        # from the source tree, on a machine without an API key.
        source = os.environ["SW_SOURCE_DIR"]
        with open(os.path.join(source, "README.md")) as f:
            readme = f.read()
        block = re.search(r"Build by hand:\n\n```sh\n(.*?)```", readme, re.S).group(1)
        step = [l for l in block.splitlines() if "--check-config" in l]
        self.assertEqual(step, ["build/daemon/sessionwatchd --config config/sessionwatchd.conf --check-config"])
        argv = step[0].split()
        argv[0] = self.daemon  # the build folder of this run
        env = swtest.child_env()
        env.pop("CREDENTIALS_DIRECTORY", None)
        result = subprocess.run(argv, capture_output=True, text=True, cwd=source, env=env,
                                timeout=swtest.scaled(20), stdin=subprocess.DEVNULL)
        swtest.assert_exit(result.returncode, swtest.EXIT_OK)
        self.assertEqual(result.stdout, "config/sessionwatchd.conf: OK (0 session(s), 0 runbook(s), 0 webhook(s))\n")
        self.assertRegex(result.stderr, r"^config/sessionwatchd.conf: warning: No API key: .*"
                                        r"the daemon will not start without one\n$")
        # The same file, started for real, is refused.
        argv.remove("--check-config")
        result = subprocess.run(argv, capture_output=True, text=True, cwd=source, env=env,
                                timeout=swtest.scaled(20), stdin=subprocess.DEVNULL)
        swtest.assert_exit(result.returncode, swtest.EXIT_CONFIG)
        self.assertIn("No API key", result.stderr)

    def test_cleartext_api_url_is_warned_about(self):
        table = [
            ("http://api.example.com/v0", True),
            ("http://10.1.2.3:8080/v0", True),
            ("http://user@[2001:db8::1]:80/v0", True),
            ("http://127.0.0.1:9/v0", False),
            ("http://127.8.9.10/v0", False),
            ("http://[::1]:9/v0", False),
            ("http://LOCALHOST:9/v0", False),
            ("https://api.example.com/v0", False),
        ]
        for url, warned in table:
            with self.subTest(url=url):
                path = self.write_config("url.conf", self.BASE.replace("http://127.0.0.1:9/v0", url))
                result = self.run_daemon("--check-config", "--config", path)
                swtest.assert_exit(result.returncode, swtest.EXIT_OK)
                if warned:
                    self.assertEqual(result.stderr,
                                     f"{path}:2: warning: 'url' '{url}' is plain http:// to a host that is not "
                                     "the loopback: the API key would be sent in clear text\n")
                else:
                    self.assertEqual(result.stderr, "")

    def test_cleartext_api_url_warning_at_start_and_on_reload(self):
        warning = "is plain http:// to a host that is not the loopback: the API key is sent in clear text"
        tmp = swtest.temp_dirs(self, prefix="swcli-daemon-")
        daemon = swtest.Daemon(tmp, swtest.Daemon.basic_config("http://127.0.0.1:9/v0", sessions=["ses_a"],
                                                               extra={"journal": {"enable": False}}))
        daemon.register(self).start()
        daemon.wait_for_stderr(lambda line: "Watching 1 session(s)" in line, timeout=15)
        self.assertNotIn(warning, daemon.stderr_text())  # loopback: nothing to say

        # A reload to a clear-text URL elsewhere: one warning.
        with open(daemon.config_path) as f:
            text = f.read()
        with open(daemon.config_path, "w") as f:
            f.write(text.replace("http://127.0.0.1:9/v0", "http://192.0.2.1:9/v0"))
        reply = daemon.ctl_json("reload")
        self.assertIsNone(reply["restartNeeded"])  # a reload applies a new URL
        self.assertEqual(daemon.stderr_text().count(warning), 1, daemon.stderr_text())
        self.assertIn("'http://192.0.2.1:9/v0'", daemon.stderr_text())
        # A reload back to the running loopback URL says nothing more.
        with open(daemon.config_path, "w") as f:
            f.write(text)
        reply = daemon.ctl_json("reload")
        self.assertIsNone(reply["restartNeeded"])
        self.assertEqual(daemon.stderr_text().count(warning), 1, daemon.stderr_text())
        daemon.stop()

        # Started with it: one warning at start.
        daemon = swtest.Daemon(tmp, swtest.Daemon.basic_config("http://192.0.2.1:9/v0", sessions=["ses_a"],
                                                               extra={"journal": {"enable": False}}),
                               name="sessionwatchd-2")
        daemon.register(self).start()
        daemon.wait_for_stderr(lambda line: warning in line, timeout=15)
        self.assertEqual(daemon.stderr_text().count(warning), 1)
        daemon.stop()

    def test_unreadable_config_file(self):
        for name, path in (("missing", self.tmp.path("conf", "absent.conf")),
                           ("directory", self.tmp.conf)):
            with self.subTest(name):
                for args in (["--check-config", "--config", path], ["--config", path]):
                    result = self.run_daemon(*args)
                    swtest.assert_exit(result.returncode, swtest.EXIT_CONFIG)
                    self.assertRegex(result.stderr.strip(), rf"^{re.escape(path)}: \S")

    def test_key_file_errors_do_not_show_the_key(self):
        # A key with a control character in it is refused; the message names
        # the file, not what is inside.
        bad_key = self.tmp.write("conf/bad-key", KEY + "\x01tail\n", mode=0o600)
        path = self.write_config("bad-key.conf", self.BASE.replace("@KEY_FILE@", bad_key))
        result = self.run_daemon("--check-config", "--config", path)
        swtest.assert_exit(result.returncode, swtest.EXIT_CONFIG)
        self.assertIn(f"{path}:3: ", result.stderr)
        self.assertIn(bad_key, result.stderr)

    def test_version(self):
        result = self.run_daemon("--version")
        swtest.assert_exit(result.returncode, swtest.EXIT_OK)
        self.assertRegex(result.stdout, r"^sessionwatchd \d+\.\d+\.\d+\n$")
        with open(os.path.join(os.environ["SW_SOURCE_DIR"], "CMakeLists.txt")) as f:
            version = re.search(r"project\(sessionwatch VERSION (\S+)", f.read()).group(1)
        self.assertEqual(result.stdout.split()[1], version)

    def test_help(self):
        result = self.run_daemon("--help")
        swtest.assert_exit(result.returncode, swtest.EXIT_OK)
        self.assertIn("--check-config", result.stdout)

    def test_bad_usage_exits_64(self):
        path = self.write_config("ok.conf", self.BASE)
        for args in (["--no-such-option"], ["--config"], ["--print-events=xml", "--config", path],
                     ["--log-level", "loud", "--config", path], ["--config", path, "extra-argument"]):
            with self.subTest(args=args):
                result = self.run_daemon(*args)
                swtest.assert_exit(result.returncode, EX_USAGE)
                self.assertTrue(result.stderr.strip(), "no message on stderr")
                self.assertEqual(result.stdout, "")


if __name__ == "__main__":
    unittest.main()
