"""What a Debian administrator installs: the unit files, their hardening, the
man pages and the .deb.

- `systemd-analyze verify` accepts sessionwatchd.service and
  sessionwatchd.socket as built (only ExecStart is pointed at the binary of
  this build, since nothing is installed in /usr here);
- `systemd-analyze security --offline=true` rates the service's exposure at
  2.0 or less;
- `man -l` renders every man page without a warning;
- `cpack -G DEB` builds a package whose contents are the expected files, with
  the config as a conffile, and which installs with dpkg into an empty root:
  the maintainer scripts enable the service and build the journal catalog
  there (so `journalctl --root R --list-catalog` knows our MESSAGE_IDs), and
  a purge removes it all again;
- the installed daemon starts the way the unit starts it: the API key from
  $CREDENTIALS_DIRECTORY, state in $STATE_DIRECTORY, sockets in
  $RUNTIME_DIRECTORY, no --config (the default path comes from the package).
"""

import glob
import gzip
import os
import re
import shutil
import subprocess
import unittest

import swtest

EXPECTED_FILES = [
    "./etc/sessionwatchd/sessionwatchd.conf",
    "./usr/bin/sessionwatchctl",
    "./usr/lib/systemd/catalog/sessionwatchd.catalog",
    "./usr/lib/systemd/system/sessionwatchd.service",
    "./usr/lib/systemd/system/sessionwatchd.socket",
    "./usr/sbin/sessionwatchd",
    "./usr/share/man/man1/sessionwatchctl.1.gz",
    "./usr/share/man/man5/sessionwatchd.conf.5.gz",
    "./usr/share/man/man8/sessionwatchd.8.gz",
]

HARDENING = [
    "Type=notify", "WatchdogSec=30s", "Restart=on-failure", "DynamicUser=yes",
    "StateDirectory=sessionwatchd", "RuntimeDirectory=sessionwatchd",
    "ConfigurationDirectory=sessionwatchd", "LoadCredential=api-key:/etc/sessionwatchd/api-key",
    "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
    "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter=@system-service", "SystemCallArchitectures=native",
    "MemoryDenyWriteExecute=yes", "LockPersonality=yes", "RestrictRealtime=yes",
    "RestrictNamespaces=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "CapabilityBoundingSet=", "UMask=0077",
    "ExecReload=/bin/kill -HUP $MAINPID",
]


def run(argv, **kwargs):
    kwargs.setdefault("timeout", 120)
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=swtest.child_env(), **kwargs)


class InstallTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.build = os.environ["SW_BUILD_DIR"]
        cls.service = os.path.join(cls.build, "dist", "sessionwatchd.service")
        cls.socket_unit = os.path.join(os.environ["SW_SOURCE_DIR"], "systemd", "sessionwatchd.socket")

    def setUp(self):
        self.tmp = swtest.temp_dirs(self)

    def units_for_verify(self):
        """Copies of the units whose ExecStart names this build's daemon."""
        folder = os.path.join(self.tmp.root, "units")
        os.makedirs(folder)
        with open(self.service) as f:
            text = f.read()
        self.assertRegex(text, r"(?m)^ExecStart=/usr/sbin/sessionwatchd$")
        text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=" + swtest.binary_path("SW_DAEMON"), text)
        service = os.path.join(folder, "sessionwatchd.service")
        with open(service, "w") as f:
            f.write(text)
        socket_unit = os.path.join(folder, "sessionwatchd.socket")
        shutil.copy(self.socket_unit, socket_unit)
        return service, socket_unit

    def test_units_verify_clean(self):
        service, socket_unit = self.units_for_verify()
        r = run(["systemd-analyze", "verify", "--man=no", service, socket_unit])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual((r.stdout + r.stderr).strip(), "")

    def test_units_verify_catches_a_broken_unit(self):
        # The check above can fail: a unit with a typo is reported.
        service, _ = self.units_for_verify()
        with open(service, "a") as f:
            f.write("\n[Service]\nProtectSystm=strict\n")
        r = run(["systemd-analyze", "verify", "--man=no", service])
        self.assertIn("ProtectSystm", r.stdout + r.stderr)

    def test_service_has_the_required_settings(self):
        with open(self.service) as f:
            lines = {line.strip() for line in f}
        for setting in HARDENING:
            self.assertIn(setting, lines)

    def test_security_exposure_at_most_2(self):
        r = run(["systemd-analyze", "security", "--offline=true", "--no-pager", self.service])
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
        self.assertIsNotNone(m, r.stdout + r.stderr)
        self.assertLessEqual(float(m.group(1)), 2.0, r.stdout)
        # The threshold binds: a unit without the hardening rates far worse.
        bare = os.path.join(self.tmp.root, "bare.service")
        with open(bare, "w") as f:
            f.write("[Service]\nType=notify\nExecStart=/usr/sbin/sessionwatchd\n")
        r = run(["systemd-analyze", "security", "--offline=true", "--no-pager", bare])
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
        self.assertGreater(float(m.group(1)), 2.0)

    def test_man_pages_render(self):
        pages = sorted(glob.glob(os.path.join(self.build, "dist", "man", "*.gz")))
        self.assertEqual([os.path.basename(p) for p in pages],
                         ["sessionwatchctl.1.gz", "sessionwatchd.8.gz", "sessionwatchd.conf.5.gz"])
        for page in pages:
            r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", page], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=60,
                               env=swtest.child_env({"MANWIDTH": "80", "MAN_KEEP_FORMATTING": None}))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr.strip(), "", f"{page}: {r.stderr}")
            self.assertIn("NAME", r.stdout)
            self.assertIn("SEE ALSO", r.stdout)
            with gzip.open(page, "rt") as f:
                self.assertNotIn("@VERSION@", f.read())

    def build_deb(self):
        out = os.path.join(self.tmp.root, "pkg")
        r = run(["cpack", "-G", "DEB", "--config", os.path.join(self.build, "CPackConfig.cmake"), "-B", out],
                timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        debs = glob.glob(os.path.join(out, "*.deb"))
        self.assertEqual(len(debs), 1, debs)
        return debs[0]

    def test_deb_contents_install_and_purge(self):
        deb = self.build_deb()
        r = run(["dpkg-deb", "-c", deb])
        self.assertEqual(r.returncode, 0, r.stderr)
        files = sorted(line.split()[-1] for line in r.stdout.splitlines() if not line.startswith("d"))
        for path in EXPECTED_FILES:
            self.assertIn(path, files)
        self.assertFalse([f for f in files if "apisim" in f or "/test" in f], files)

        info = run(["dpkg-deb", "-I", deb]).stdout
        self.assertRegex(info, r"(?m)^ Package: sessionwatchd$")
        self.assertRegex(info, r"(?m)^ Depends: .*libuv1")
        ctrl = os.path.join(self.tmp.root, "ctrl")
        self.assertEqual(run(["dpkg-deb", "-e", deb, ctrl]).returncode, 0)
        with open(os.path.join(ctrl, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/sessionwatchd/sessionwatchd.conf"])

        root = os.path.join(self.tmp.root, "root")
        for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates"):
            os.makedirs(os.path.join(root, d))
        open(os.path.join(root, "var/lib/dpkg/status"), "w").close()
        dpkg = ["dpkg", f"--root={root}", "--force-depends", "--force-script-chrootless", "--force-not-root"]
        r = run(dpkg + ["-i", deb])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for path in EXPECTED_FILES:
            self.assertTrue(os.path.exists(os.path.join(root, path)), path)
        self.assertTrue(os.path.islink(os.path.join(
            root, "etc/systemd/system/multi-user.target.wants/sessionwatchd.service")))
        r = run(["journalctl", f"--root={root}", "--list-catalog", "--no-pager"])
        self.assertIn("c6535f30cb814da8b4e707838829121c", r.stdout, r.stderr)  # Failed

        # The installed daemon starts the way the unit runs it.
        self.start_installed(root)

        r = run(dpkg + ["--purge", "sessionwatchd"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for path in EXPECTED_FILES:
            self.assertFalse(os.path.exists(os.path.join(root, path)), path)
        self.assertFalse(os.path.lexists(os.path.join(
            root, "etc/systemd/system/multi-user.target.wants/sessionwatchd.service")))

    def start_installed(self, root):
        from swnotify import NotifySocket

        sim = swtest.ApiSim(self.tmp, scenario={"sessions": [swtest.sim_session("ses_installed", [[0, "Active"]])]})
        sim.start()
        self.addCleanup(sim.stop)
        creds = os.path.join(self.tmp.root, "creds")
        os.makedirs(creds, mode=0o700)
        with open(os.path.join(creds, "api-key"), "w") as f:
            f.write(swtest.DEFAULT_API_KEY + "\n")
        # The packaged config with the API pointed at apisim and a session.
        config = os.path.join(root, "etc/sessionwatchd/sessionwatchd.conf")
        with open(config) as f:
            text = f.read()
        text = text.replace("[api]\n", f"[api]\nurl = {sim.url}\n", 1)
        text = text.replace("[watch]\n", "[watch]\nsession = ses_installed\n", 1)
        with open(config, "w") as f:
            f.write(text)
        notify = NotifySocket(os.path.join(self.tmp.root, "notify.sock"))
        self.addCleanup(notify.close)
        env = {"CREDENTIALS_DIRECTORY": creds, "STATE_DIRECTORY": self.tmp.state,
               "RUNTIME_DIRECTORY": self.tmp.run, **notify.env()}
        daemon = swtest.Process([os.path.join(root, "usr/sbin/sessionwatchd"), "--config", config],
                                self.tmp.root, name="installed", env=env)
        daemon.start()
        self.addCleanup(daemon.stop)
        notify.wait_for("READY", "1", timeout=20)
        swtest.wait_until(lambda: sim.counters(session="ses_installed", times=False)["sessions"].get("ses_installed", {}).get("count", 0) >= 1, timeout=20)
        daemon.stop()
        self.assertEqual(daemon.returncode, 0)
        self.assertTrue(glob.glob(os.path.join(self.tmp.state, "state")))


if __name__ == "__main__":
    unittest.main()
