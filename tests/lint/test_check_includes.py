#!/usr/bin/env python3
"""check_includes.py passes on a tree that keeps the rules and fails, naming
file, line and include, on one that breaks each of them."""
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "check_includes.py")


def run(root):
    p = subprocess.run([sys.executable, CHECK, root], capture_output=True, text=True)
    return p.returncode, p.stdout


class CheckIncludes(unittest.TestCase):
    def tree(self, files):
        d = tempfile.mkdtemp(prefix="sw-lint-")
        for rel, text in files.items():
            path = os.path.join(d, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        return d

    def test_clean_tree_passes(self):
        d = self.tree({
            "io/httpmux.c": "#include <curl/curl.h>\n#include <uv.h>\n",
            "io/api.c": '#include "httpmux.h"\n#include <uv.h>\n',
            "core/decode.c": '#include <string.h>\n#include "decode.h"\n',
        })
        self.assertEqual(run(d), (0, ""))

    def test_curl_outside_httpmux_fails(self):
        d = self.tree({"io/httpmux.c": "#include <curl/curl.h>\n",
                       "sinks/webhook.c": "#include <stdio.h>\n#  include <curl/curl.h>\n"})
        rc, out = run(d)
        self.assertEqual(rc, 1)
        self.assertIn("sinks/webhook.c:2: includes <curl/curl.h>", out)

    def test_pure_module_with_impure_include_fails(self):
        d = self.tree({"core/scheduler.h": '#include "log.h"\n',
                       "core/sessions.c": "#include <uv.h>\n",
                       "core/config.c": "#include <systemd/sd-journal.h>\n",
                       "app/daemon.c": '#include "log.h"\n#include <uv.h>\n'})
        rc, out = run(d)
        self.assertEqual(rc, 1)
        self.assertIn("core/scheduler.h:1: includes log.h", out)
        self.assertIn("core/sessions.c:1: includes uv.h", out)
        self.assertIn("core/config.c:1: includes systemd/sd-journal.h", out)
        self.assertNotIn("daemon.c", out)

    def test_uv_in_a_header_fails(self):
        d = self.tree({"io/notify.h": "#include <stdint.h>\n#include <uv.h>\n",
                       "io/notify.c": "#include <uv.h>\n",
                       "app/daemon-private.h": "#include <uv.h>\n"})
        rc, out = run(d)
        self.assertEqual(rc, 1)
        self.assertIn("io/notify.h:2: includes <uv.h>", out)
        self.assertNotIn("notify.c", out)
        self.assertNotIn("app/daemon-private.h", out)

    def test_empty_tree_fails(self):
        self.assertEqual(run(self.tree({"README": ""}))[0], 1)

    def test_this_tree_keeps_the_rules(self):
        daemon = os.path.join(HERE, "..", "..", "daemon")
        rc, out = run(daemon)
        self.assertEqual(rc, 0, out)


if __name__ == "__main__":
    unittest.main()
