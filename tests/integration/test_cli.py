"""sessionwatchd's command line: exit codes, configuration errors, secrets.

A bad configuration exits 78 (EX_CONFIG) with one "FILE:LINE: message" line
per problem on stderr, both with --check-config and on a normal start; a good
one passes --check-config with exit 0; --version prints the version; a bad
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
        missing_key = self.tmp.path("conf", "no-such-key")
        # (name, config text, expected line, a piece of the message)
        table = [
            ("unknown section", self.BASE + "[bogus]\nx = 1\n", 8, "Unknown section '[bogus]'"),
            ("unknown key", self.BASE + "frobnicate = 3\n", 8, "Unknown key 'frobnicate'"),
            ("bad duration", self.BASE.replace("interval = 1s", "interval = 5 parsecs"), 5,
             "'interval'"),
            ("duration without unit", self.BASE.replace("interval = 1s", "interval = 5"), 5, "'interval'"),
            ("missing key file", self.BASE.replace("@KEY_FILE@", missing_key), 3, "No such file"),
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
