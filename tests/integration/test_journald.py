"""The private journald of swtest works and is hermetic.

A real systemd-journald runs in its own mount namespace; entries written from
inside come back from ``journalctl -o json`` with their fields and priority,
a long-running process inside can log while the test drives it, nothing
reaches the host's journal, and nothing of the namespace survives the test.
"""

import os
import subprocess
import sys
import unittest
import uuid

import swtest

FAILED_MESSAGE_ID = "c6535f30cb814da8b4e707838829121c"

# A process that logs to the journal through the native protocol (as
# libsystemd does), announces itself on stdout and logs once more when it is
# asked to stop with SIGTERM, then exits 0.
BACKGROUND_LOGGER = r"""
import os, signal, socket, sys, time
marker = sys.argv[1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.connect("/run/systemd/journal/socket")
def send(message, priority):
    fields = {"MESSAGE": message, "PRIORITY": str(priority), "SYSLOG_IDENTIFIER": "swtest-bg",
              "SESSION_ID": marker}
    sock.send("".join(f"{k}={v}\n" for k, v in fields.items()).encode())
stopping = False
def on_term(signum, frame):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, on_term)
send("started", 6)
print("ready", flush=True)
while not stopping:
    time.sleep(0.01)
send("stopping", 4)
sys.exit(0)
"""


def scan_for(directory, needle):
    """Return the files below ``directory`` whose bytes contain ``needle``."""
    hits = []
    for top, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(top, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                continue
    return hits


class JournaldTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.journal = swtest.JournalNamespace(self.tmp).register(self).start()
        self.marker = "ses" + uuid.uuid4().hex[:16]

    def test_structured_entry_round_trip(self):
        """Custom fields, MESSAGE_ID, non-ASCII text and the priority survive."""
        message = f"Session 'Deploy' ({self.marker}) Active \u2192 Failed"
        self.journal.log(message, priority=3, identifier="sessionwatchd", SESSION_ID=self.marker,
                         MESSAGE_ID=FAILED_MESSAGE_ID, SESSION_STATUS="Failed",
                         SESSION_PREVIOUS_STATUS="Active", RUNBOOK_ID="rbk20220120z15kl79")
        self.journal.log("an informational line", priority=6, identifier="sessionwatchd",
                         SESSION_ID=self.marker)

        entries = self.journal.entries(SESSION_ID=self.marker)
        self.assertEqual(len(entries), 2, entries)
        entry = entries[0]
        self.assertEqual(entry["MESSAGE"], message)
        self.assertEqual(entry["PRIORITY"], "3")
        self.assertEqual(entry["MESSAGE_ID"], FAILED_MESSAGE_ID)
        self.assertEqual(entry["SESSION_ID"], self.marker)
        self.assertEqual(entry["SESSION_STATUS"], "Failed")
        self.assertEqual(entry["SESSION_PREVIOUS_STATUS"], "Active")
        self.assertEqual(entry["RUNBOOK_ID"], "rbk20220120z15kl79")
        self.assertEqual(entry["SYSLOG_IDENTIFIER"], "sessionwatchd")
        self.assertEqual(entry["_TRANSPORT"], "journal")
        self.assertEqual(entries[1]["PRIORITY"], "6")

        # journald indexes the priority: journalctl filters on it.
        errors = self.journal.entries(args=["--priority=err"], SESSION_ID=self.marker)
        self.assertEqual([e["MESSAGE"] for e in errors], [message])
        self.assertEqual(self.journal.entries(args=["--priority=crit"], SESSION_ID=self.marker), [])
        # And on the message id.
        by_id = self.journal.entries(MESSAGE_ID=FAILED_MESSAGE_ID)
        self.assertEqual([e["SESSION_ID"] for e in by_id], [self.marker])

    def test_repeated_field_reads_back_as_list(self):
        fields = f"MESSAGE=two tags\nSESSION_ID={self.marker}\nTAG=first\nTAG=second\n"
        self.journal.run(["logger", "--journald"], input=fields)
        (entry,) = self.journal.entries(SESSION_ID=self.marker)
        self.assertEqual(sorted(entry["TAG"]), ["first", "second"])

    def test_stdout_stream_transport(self):
        """A program whose stdout is connected to journald (systemd-cat)."""
        self.journal.run(["systemd-cat", "--identifier", self.marker, "--priority", "warning",
                          "echo", "line from a stream"])
        (entry,) = self.journal.wait_for_entries(None, SYSLOG_IDENTIFIER=self.marker)
        self.assertEqual(entry["MESSAGE"], "line from a stream")
        self.assertEqual(entry["PRIORITY"], "4")
        self.assertEqual(entry["_TRANSPORT"], "stdout")

    def test_background_process_logs_while_running_and_on_stop(self):
        process = self.journal.spawn([sys.executable, "-c", BACKGROUND_LOGGER, self.marker], name="bg")
        process.wait_for_stdout("ready")
        # It runs inside the namespace under its real pid, so signals reach it.
        self.assertEqual(swtest.mount_namespace(process.pid), self.journal.namespace)
        (started,) = self.journal.wait_for_entries(None, SESSION_ID=self.marker)
        self.assertEqual(started["MESSAGE"], "started")
        self.assertEqual(started["_PID"], str(process.pid))
        self.assertTrue(process.running)

        self.assertEqual(process.stop(), 0)
        messages = [e["MESSAGE"] for e in self.journal.entries(SESSION_ID=self.marker)]
        self.assertEqual(messages, ["started", "stopping"])
        self.assertEqual(process.stdout_lines(), ["ready"])

    def test_hermetic_and_nothing_left_behind(self):
        journal = self.journal
        with open("/proc/self/mountinfo") as f:
            self.assertNotIn(journal.token, f.read())
        self.assertNotEqual(journal.namespace, swtest.mount_namespace(os.getpid()))
        # Inside, the journal directories are this instance's tmpfs.
        for path in ("/run/systemd/journal", "/run/log/journal"):
            found = journal.run(["findmnt", "--noheadings", "--output", "FSTYPE,SOURCE",
                                 "--mountpoint", path]).stdout.split()
            self.assertEqual(found, ["tmpfs", journal.token], path)
        inner_socket = os.stat(journal.root + "/run/systemd/journal/socket")
        try:
            outer_socket = os.stat("/run/systemd/journal/socket")
        except FileNotFoundError:
            outer_socket = None
        if outer_socket is not None:
            self.assertNotEqual((outer_socket.st_dev, outer_socket.st_ino),
                                (inner_socket.st_dev, inner_socket.st_ino))

        journal.log("hermetic check", SESSION_ID=self.marker)
        self.assertEqual(len(journal.entries(SESSION_ID=self.marker)), 1)
        needle = self.marker.encode()
        # The marker is in the namespace's journal files (so the scan below
        # would find it if it were in the host's) ...
        self.assertTrue(scan_for(journal.root + "/run/log/journal", needle))
        # ... and in none of the host's.
        for directory in ("/run/log/journal", "/var/log/journal"):
            self.assertEqual(scan_for(directory, needle), [], directory)
        host = subprocess.run(["journalctl", "--output=json", "--no-pager", f"SESSION_ID={self.marker}"],
                              capture_output=True, text=True, env=swtest.child_env())
        self.assertNotIn(self.marker, host.stdout)

        # A process the test forgot is ended by stop() as well.
        forgotten = subprocess.Popen(journal.wrap() + ["sleep", "300"])
        self.addCleanup(forgotten.wait)
        swtest.wait_until(lambda: swtest.mount_namespace(forgotten.pid) == journal.namespace,
                          timeout=5, message="the forgotten process did not enter the namespace")

        self.assertEqual(journal.stop(), 0, journal.log_text())
        self.assertEqual(journal.strays, [forgotten.pid])
        self.assertEqual(forgotten.wait(timeout=5), -9)
        processes, mounts = journal.leftovers()
        self.assertEqual(processes, [])
        self.assertEqual(mounts, [])
        with self.assertRaises(AssertionError):
            journal.run(["true"])


if __name__ == "__main__":
    unittest.main()
