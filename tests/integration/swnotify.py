"""A test ``NOTIFY_SOCKET``: the datagram socket systemd gives a
``Type=notify`` service, owned by the test so it can read every message the
daemon sends (READY=1, STATUS=..., WATCHDOG=1, RELOADING=1, STOPPING=1) with
the time it arrived."""

import os
import socket
import threading
import time

from swtest import wait_until


class NotifySocket:
    """Binds an ``AF_UNIX``/``SOCK_DGRAM`` socket at ``path`` and collects
    datagrams in a background thread. Each message is a dict of its
    ``KEY=VALUE`` lines plus ``"_time"`` (``time.monotonic()`` at arrival)
    and ``"_raw"``."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def env(self):
        """The environment entry that points a child at this socket."""
        return {"NOTIFY_SOCKET": self.path}

    def _run(self):
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            message = {"_time": time.monotonic(), "_raw": data.decode("utf-8", "replace")}
            for line in message["_raw"].split("\n"):
                if "=" in line:
                    key, value = line.split("=", 1)
                    message[key] = value
            with self.lock:
                self.messages.append(message)

    def snapshot(self):
        """A copy of the messages received so far."""
        with self.lock:
            return list(self.messages)

    def with_key(self, key, value=None):
        """The messages that carry ``key`` (equal to ``value`` when given)."""
        return [m for m in self.snapshot() if key in m and (value is None or m[key] == value)]

    def wait_for(self, key, value=None, count=1, timeout=10):
        """Wait until ``count`` messages carry ``key`` (= ``value``) and
        return them."""
        wait_until(lambda: len(self.with_key(key, value)) >= count, timeout=timeout,
                   message=lambda: f"{count} notify message(s) with {key}={value}; got {self.snapshot()!r}")
        return self.with_key(key, value)

    def close(self):
        self.closed = True
        self.sock.close()
        self.thread.join(timeout=2)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
