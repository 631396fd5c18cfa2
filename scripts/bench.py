#!/usr/bin/env python3
"""The sessionwatch benchmark; run it through scripts/bench, which builds first.

Measures, in one run and side by side (each repetition alternates the ceiling
and the daemon):

  ceiling    wrk -t1 -cC against a fixed nginx answering GET /v0/sessions/get
             with a ~600-byte GetSessionResponse: requests/s and wrk's CPU
             time per request (user+sys from wait4's rusage / requests).
  saturated  sessionwatchd against the same nginx, 10,000 sessions,
             interval 1ms, jitter 0%, rate-limit 0, C = max-connections 16 and
             64: polls/s and CPU time per poll (rusage / the polls counted in
             the daemon's stop line; nginx's stub_status count is kept as a
             cross-check).
  realistic  100,000 sessions at a 5 s interval against apisim, steps of 5-60 s
             so statuses change: achieved vs intended poll rate (apisim's counters over
             a window after one interval of warm-up), the daemon's share of
             one core over that window, errors (non-ok outcomes of the stop
             line).
  memory     VmRSS with 0 and with 1,000,000 watched sessions on a 1h
             interval (against nginx), once settled: bytes per session.
  latency    2,000 sessions changing every 0.5-2 s, polled every 100ms, events
             written to a file (--print-events=json): the daemon's own
             p50/p99 bounds from response completion to the event's write.
  start-up   exec to READY=1 (sd_notify, on a socket this script owns) with
             1,000,000 sessions; config loading only (no state yet).
  freshness  (once, not repeated) 1,000 to 1,000,000 sessions in 20 runbooks
             against apisim, each changing every 5 min on average (steps of
             1-599 s, --stagger 600, list in id order), the daemon sweeping the
             20 runbooks with rate-limit 50/s and interval 5s, in mode = get and
             then mode = auto, each against a fresh apisim with the same seed.
             After the first sweeps and 2 intervals (by the daemon's metrics),
             a window: every change apisim's /_sim/history shows in it is
             matched to its event line (--print-events=json, read from a pipe
             and timestamped on arrival) by (session, status, updatedAt):
             delay p50/p95/max, the share announced within a deadline,
             requests/s (apisim's counters) and per announced change, CPU share
             and RSS of the daemon.

Each figure is the median over the repetitions (3 by default). --quick: one
repetition, 3 s saturated runs, 20,000 sessions at 1 s for the realistic load,
200,000 sessions for memory and start-up (start-up scaled linearly to 1M), freshness at 1,000 and 10,000
sessions with a 30 s window. --only SECTION[,SECTION...] runs only some sections. Two cores: nginx runs one
worker process, so the server and the client under test (wrk or the daemon)
get one core each; nothing is pinned, the kernel's scheduler places them.
apisim runs with its default thread count and shares the cores with the
daemon in the realistic and latency runs.
"""

import argparse
import calendar
import json
import math
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(TOP, "scripts", "bench.d")

TARGETS = {
    "cpu_ratio_c64": 2.5,  # daemon CPU per poll / wrk CPU per request, at most
    "throughput_ratio_c64": 0.40,  # daemon polls/s / wrk requests/s, at least
    "bytes_per_session": 128,  # at 1,000,000 sessions, at most
    "latency_p99_us": 1000,  # event written after the response completed, at most
    "startup_s": 2.0,  # exec to READY with 1,000,000 sessions, at most
}
# Freshness under a budget, for the rows in mode = auto.
FRESH_TARGETS = {
    "p95_over_interval_s": 1.0,  # change -> event line, p95 at most interval + this
    "announced_ratio": 1.0,  # every change whose status held an interval announced (within the deadline)
    "cpu_share": 0.05,  # of one core, at most
}                            # and API requests/s at most the rate-limit

SECTIONS = ("saturated", "realistic", "latency", "memory", "freshness")


class BenchError(Exception):
    pass


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

LIVE = []  # every child still to be reaped, for the cleanup


class Proc:
    """A child in its own session (so Ctrl-C on the terminal reaches only
    us, and we stop children in order), reaped with wait4 for its rusage."""

    def __init__(self, name, argv, *, stdout=None, stderr=None, env=None):
        self.name = name
        self.rusage = None
        self.status = None
        out = open(stdout, "wb") if isinstance(stdout, str) else (stdout or subprocess.DEVNULL)
        err = open(stderr, "wb") if isinstance(stderr, str) else (stderr or subprocess.DEVNULL)
        try:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                      start_new_session=True)
        finally:
            for f in (out, err):
                if hasattr(f, "close"):
                    f.close()
        self.pid = self.p.pid
        LIVE.append(self)

    def poll(self):
        if self.status is not None:
            return True
        pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._reaped(status, ru)
        return True

    def _reaped(self, status, ru):
        self.status = os.waitstatus_to_exitcode(status)
        self.p.returncode = self.status  # so Popen does not wait again
        self.rusage = ru
        if self in LIVE:
            LIVE.remove(self)

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def send(self, sig):
        if self.status is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill_group(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout=10.0, sig=signal.SIGTERM):
        """Signals the child, waits, and kills its whole group if it lingers
        (or leaves helpers behind, like an nginx worker)."""
        self.send(sig)
        ok = self.wait(timeout)
        if not ok:
            log(f"{self.name} (pid {self.pid}) did not stop in {timeout:g} s; killing it")
            self.kill_group()
            self.wait(5)
        else:
            self.kill_group()
        return ok

    def cpu_s(self):
        return self.rusage.ru_utime + self.rusage.ru_stime


def cleanup_all():
    for p in list(reversed(LIVE)):
        try:
            p.stop(timeout=5)
        except Exception as e:  # keep going: the others must stop too
            log(f"cleanup of {p.name}: {e}")


def on_signal(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def proc_cpu_s(pid):
    """user+sys of a live process from /proc (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_s():
    """CPU time spent busy by the whole machine so far, in seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def proc_rss_bytes(pid, field="VmRSS"):
    """VmRSS (or VmHWM, the peak) of a live process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no {field} for pid {pid}")


def proc_children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def http_get(url, timeout=10.0, method="GET", headers=None):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                 headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_metrics(url):
    """A Prometheus text page as {'name{labels}': value}."""
    out = {}
    for line in http_get(url, timeout=30).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def histogram_quantile(m0, m1, family, q):
    """The upper bound of the bucket holding quantile q of what a histogram
    counted between two scrapes (None when it counted nothing)."""
    prefix = family + '_bucket{le="'
    buckets = sorted((float(k[len(prefix):-2]), m1[k] - m0.get(k, 0)) for k in m1 if k.startswith(prefix))
    if len(buckets) < 2 or buckets[-1][1] <= 0:  # nothing counted, or no finite bucket
        return None
    for le, cum in buckets:
        if cum >= q * buckets[-1][1]:
            return le
    return math.inf


AIRPLANE_TIME_RE = re.compile(r"(\d+)-(\d+)-(\d+)[ T](\d+):(\d+):(\d+)(?:\.(\d{1,6}))?([+-]\d\d)(?::?(\d\d))?$")


def airplane_time_us(text):
    """'2022-01-11 22:32:45.601486+00' as integer µs since the epoch."""
    m = AIRPLANE_TIME_RE.match(text)
    if not m:
        raise ValueError(f"bad time {text!r}")
    y, mo, d, h, mi, s = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
    frac = int((m.group(7) or "0").ljust(6, "0"))
    off = int(m.group(8)) * 3600
    off += (60 if off >= 0 and not m.group(8).startswith("-") else -60) * int(m.group(9) or 0)
    return (calendar.timegm((y, mo, d, h, mi, s)) - off) * 1000000 + frac


def iso_time_s(text):
    """An RFC 3339 UTC time ('...Z') as float seconds since the epoch."""
    return airplane_time_us(text.replace("Z", "+00")) / 1e6


def nearest_rank(ranked, q):
    """The q quantile of a sorted list (nearest rank); None when empty."""
    if not ranked:
        return None
    return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked)) - 1))]


def fmt_delay(v, deadline):
    if v is None:
        return "-"
    if v == math.inf:
        return f">{deadline:g} s"
    return f"{v:.2f} s"


# ---------------------------------------------------------------- inputs


def session_ids(n):
    """n distinct ids shaped like the API's (ses + date + z + 8 base-36
    characters): i * an odd multiplier not divisible by 3 is a bijection
    modulo 36^8."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    mod = 36**8
    out = []
    for i in range(n):
        v = (i * 2654435761 + 12345) % mod
        s = []
        for _ in range(8):
            v, d = divmod(v, 36)
            s.append(digits[d])
        out.append("ses20261129z" + "".join(s))
    return out


def write_config(path, *, url, key_file, ids_lines, interval, waiting_interval=None, max_conn=16,
                 jitter="0%"):
    """ids_lines: an iterable of ids, or the path of a file with one per line."""
    with open(path, "w") as f:
        f.write(f"""# written by scripts/bench
[api]
url = {url}
key-file = {key_file}
max-connections = {max_conn}
rate-limit = 0
timeout = 10s

[poll]
interval = {interval}
waiting-interval = {waiting_interval or interval}
jitter = {jitter}

[journal]
enable = no

[watch]
""")
        if isinstance(ids_lines, str):
            with open(ids_lines) as src:
                for line in src:
                    line = line.strip()
                    if line:
                        f.write(f"session = {line}\n")
        else:
            f.writelines(f"session = {i}\n" for i in ids_lines)


# ---------------------------------------------------------------- servers


class Nginx:
    def __init__(self, work):
        self.dir = os.path.join(work, "nginx")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.port = None

    def start(self):
        with open(os.path.join(HERE, "nginx.conf")) as f:
            template = f.read()
        for _ in range(5):
            port = free_port()
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(template.replace("@DIR@", self.dir).replace("@PORT@", str(port)))
            self.proc = Proc("nginx", ["nginx", "-p", self.dir + "/", "-c", conf, "-e",
                                       os.path.join(self.dir, "error.log")],
                             stdout=os.path.join(self.dir, "stdout.log"),
                             stderr=os.path.join(self.dir, "stderr.log"))
            self.port = port
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if self.proc.poll():
                    break
                try:
                    self.requests()
                    return
                except OSError:
                    time.sleep(0.05)
            self.proc.stop(timeout=3)
        raise BenchError("nginx did not start: " + tail(os.path.join(self.dir, "error.log")))

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v0"

    def requests(self):
        """Requests served so far (each call counts itself too)."""
        body = http_get(f"http://127.0.0.1:{self.port}/_stub", timeout=5).decode()
        m = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", body, re.M)
        if not m:
            raise BenchError(f"unexpected stub_status answer: {body!r}")
        return int(m.group(3))

    def worker_cpu_s(self):
        return sum(proc_cpu_s(c) for c in proc_children(self.proc.pid))

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=5, sig=signal.SIGQUIT)  # graceful: closes keep-alive connections


class Apisim:
    def __init__(self, bench, tag, *, sessions, step_min, step_max, seed=7, extra=(), list_ids=True,
                 start_timeout=30):
        self.dir = os.path.join(bench.work, f"apisim-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        self.ids = os.path.join(self.dir, "ids") if list_ids else None
        portf = os.path.join(self.dir, "port")
        argv = [bench.apisim, "--port", "0", "--port-file", portf, "--key-file", bench.key_file, "--sessions",
                str(sessions), "--seed", str(seed), "--step-min", str(step_min), "--step-max", str(step_max)]
        if self.ids:
            argv += ["--list-ids", self.ids]
        self.proc = Proc("apisim", argv + list(extra) + ["--quiet"],
                         stdout=os.path.join(self.dir, "stdout.log"),
                         stderr=os.path.join(self.dir, "stderr.log"))
        deadline = time.monotonic() + start_timeout
        while not (os.path.exists(portf) and os.path.getsize(portf) > 0):
            if self.proc.poll() or time.monotonic() > deadline:
                self.proc.stop(timeout=3)
                raise BenchError("apisim did not start: " + tail(os.path.join(self.dir, "stderr.log")))
            time.sleep(0.02)
        self.t_up = time.time()  # its clock's zero is a little before this
        with open(portf) as f:
            self.port = int(f.read().strip())
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def url(self):
        return self.base + "/v0"

    def reset_counters(self):
        http_get(self.base + "/_sim/counters/reset", method="POST")

    def get_count(self):
        return self.request_counts()["get"]

    def request_counts(self):
        """The API requests served so far, by endpoint (get, list, ...)."""
        c = json.loads(http_get(self.base + "/_sim/counters?times=0", timeout=60))
        return c["requests"]

    def history(self):
        """Every transition so far: {id: [[unixSeconds, status], ...]}."""
        return json.loads(http_get(self.base + "/_sim/history", timeout=600))

    def status_counts(self):
        s = json.loads(http_get(self.base + "/_sim/sessions", timeout=60))
        counts = {}
        for e in s["sessions"]:
            if e.get("visible", True):
                counts[e["status"]] = counts.get(e["status"], 0) + 1
        return counts

    def stop(self):
        self.proc.stop(timeout=10)


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-n:])
    except OSError:
        return "(no log)"


class LineReader(threading.Thread):
    """Reads a pipe as the data comes and keeps each complete line with the
    time.time() of the read that completed it: the time the line reached
    us, which is within a read of when it was written."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.fd = pipe.fileno()
        self.lines = []  # (arrival, bytes)

    def run(self):
        rest = b""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except OSError:
                break
            if not chunk:
                break
            t = time.time()
            *done, rest = (rest + chunk).split(b"\n")
            self.lines.extend((t, line) for line in done if line)


# ---------------------------------------------------------------- the daemon

STOP_RE = re.compile(r"Stopped after (\d+) polls \(([^)]*)\), (\d+) transitions, (\d+) events, "
                     r"(\d+) quick decodes; event latency p50 <= (\d+) us, p99 <= (\d+) us")


class Daemon:
    """One sessionwatchd run: started with a NOTIFY_SOCKET we own, stopped
    with SIGTERM, its stop line parsed."""

    def __init__(self, bench, tag, config, *, print_events=None, events_pipe=False, state_dir=None):
        """events_pipe: the events go to a pipe that a thread reads as they
        come (self.events); otherwise to a file. state_dir: a state folder
        of its own instead of the bench's shared one."""
        self.bench = bench
        self.tag = tag
        self.stderr = os.path.join(bench.work, f"daemon-{tag}.log")
        self.stdout = os.path.join(bench.work, f"events-{tag}.json") if print_events else None
        if events_pipe:
            self.stdout = subprocess.PIPE
        sock_path = os.path.join(bench.work, "notify.sock")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sock_path)
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID")}
        env["NOTIFY_SOCKET"] = sock_path
        env["RUNTIME_DIRECTORY"] = bench.runtime_dir
        env["STATE_DIRECTORY"] = state_dir or bench.state_dir
        argv = [bench.daemon, "--config", config, "--log-level", "info"]
        if print_events:
            argv.append(f"--print-events={print_events}")
        self.t_exec = time.monotonic()
        self.proc = Proc(f"sessionwatchd[{tag}]", argv, stdout=self.stdout, stderr=self.stderr, env=env)
        self.t_ready = None
        self.stats = None
        self.events = None
        if events_pipe:
            self.events = LineReader(self.proc.p.stdout)
            self.events.start()

    def wait_ready(self, timeout=60):
        deadline = self.t_exec + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"daemon {self.tag}: no READY=1 within {timeout} s")
            r, _, _ = select.select([self.sock], [], [], min(left, 0.05))
            if r:
                msg = self.sock.recv(65536)
                if b"READY=1" in msg.split(b"\n"):
                    self.t_ready = time.monotonic()
                    return self.t_ready - self.t_exec
            elif self.proc.poll():
                raise BenchError(f"daemon {self.tag} exited with {self.proc.status} before READY:\n"
                                 + tail(self.stderr))

    def stop(self, timeout=15):
        t = time.monotonic()
        ok = self.proc.stop(timeout=timeout)
        self.stop_s = time.monotonic() - t
        self.sock.close()
        if self.events:
            self.events.join(10)  # EOF once the daemon is gone
            self.proc.p.stdout.close()
        if not ok:
            raise BenchError(f"daemon {self.tag} did not stop in {timeout} s")
        if self.proc.status != 0:
            raise BenchError(f"daemon {self.tag} exited with {self.proc.status}:\n" + tail(self.stderr))
        with open(self.stderr, errors="replace") as f:
            m = None
            for m in STOP_RE.finditer(f.read()):
                pass
        if not m:
            raise BenchError(f"daemon {self.tag}: no stop line in its log:\n" + tail(self.stderr))
        outcomes = {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", m.group(2))}
        self.stats = {
            "polls": int(m.group(1)),
            "outcomes": outcomes,
            "errors": int(m.group(1)) - outcomes.get("ok", 0),
            "transitions": int(m.group(3)),
            "events": int(m.group(4)),
            "quick_decodes": int(m.group(5)),
            "latency_p50_us": int(m.group(6)),
            "latency_p99_us": int(m.group(7)),
        }
        return self.stats


# ---------------------------------------------------------------- the runs


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.daemon = os.path.join(args.build, "daemon", "sessionwatchd")
        self.apisim = os.path.join(args.build, "tests", "apisim", "apisim")
        for exe in (self.daemon, self.apisim):
            if not os.access(exe, os.X_OK):
                raise BenchError(f"{exe} is missing: build first (scripts/bench does)")
        self.sections = args.only
        needs_nginx = args.profile or {"saturated", "memory"} & set(self.sections)
        for exe in ("nginx", "wrk") if needs_nginx else ():
            if not shutil.which(exe):
                raise BenchError(f"{exe} is not installed: scripts/deps --bench")
        self.work = tempfile.mkdtemp(prefix="sessionwatch-bench.")
        os.chmod(self.work, 0o700)
        self.runtime_dir = os.path.join(self.work, "run")
        self.state_dir = os.path.join(self.work, "state")
        os.makedirs(self.runtime_dir)
        os.makedirs(self.state_dir)
        self.key_file = os.path.join(self.work, "api-key")
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("bench-%016x\n" % random.getrandbits(64))

        q = self.quick
        self.p = {
            "reps": 1 if q else args.reps,
            "sat_sessions": 10000,
            "sat_seconds": 3 if q else 10,
            "connections": [16, 64],
            "real_sessions": 20000 if q else 100000,
            "real_interval_s": 1 if q else 5,
            "real_warmup_s": 1.5 if q else 3,  # after one interval
            "real_window_s": 4 if q else 15,
            "real_step": [5, 60],
            "mem_sessions": 200000 if q else 1000000,
            "mem_settle_s": 1.5 if q else 3,
            "lat_sessions": 2000,
            "lat_interval_ms": 100,
            "lat_step": [0.5, 2],
            "lat_seconds": 4 if q else 10,
            "sections": list(self.sections),
            "fresh": {
                "sessions": args.freshness_sessions or ([1000, 10000] if q else [1000, 10000, 100000, 1000000]),
                "modes": ["get", "auto"],  # as printed; auto runs first, see freshness()
                "runbooks": 20,
                "step": [1, 599],  # uniform: a change every 300 s on average
                "stagger_s": 600,
                "list_order": "id",
                "seed": 7,
                "rate_limit": 50,
                "interval_s": 5,
                # Short, so that audits compete with the sweeps in every
                # window (the window starts at least 1.2 audit intervals
                # after apisim; with the default 10m the first audits would
                # come after 9 minutes): they want sessions / 30 requests a
                # second, far more than the budget from 10,000 sessions up.
                "audit_interval_s": 30,
                "window_s": 30 if q else 60,
                # A change counts as announced if its line arrives within this.
                "deadline_s": 30,
                # Limit of the wait for the first sweeps: base + per session.
                "warmup_base_s": 120,
                "warmup_per_session_s": 0.003,
                # ... and no longer than this (1,000,000 sessions cannot all
                # be taken in at 50 requests a second in time anyway).
                "warmup_max_s": 600,
            },
        }

    # -- inputs

    def prepare(self):
        p = self.p
        t = time.monotonic()
        self.ids_file = os.path.join(self.work, "ids")
        ids = session_ids(p["mem_sessions"])
        with open(self.ids_file, "w") as f:
            f.writelines(i + "\n" for i in ids)
        self.sat_ids = ids[: p["sat_sessions"]]
        self.wrk_id = self.sat_ids[0]
        log(f"generated {len(ids):,} session ids in {time.monotonic() - t:.1f} s")

    def nginx_configs(self, nginx):
        p = self.p
        self.sat_conf = {}
        for c in p["connections"]:
            path = os.path.join(self.work, f"sat-c{c}.conf")
            write_config(path, url=nginx.url, key_file=self.key_file, ids_lines=self.sat_ids, interval="1ms",
                         max_conn=c)
            self.sat_conf[c] = path
        self.mem0_conf = os.path.join(self.work, "mem0.conf")
        write_config(self.mem0_conf, url=nginx.url, key_file=self.key_file, ids_lines=[], interval="1h")
        self.memn_conf = os.path.join(self.work, "memn.conf")
        write_config(self.memn_conf, url=nginx.url, key_file=self.key_file, ids_lines=self.ids_file,
                     interval="1h")

    # -- the ceiling

    def wrk(self, nginx, conns, tag):
        p = self.p
        out = os.path.join(self.work, f"wrk-{tag}.out")
        env = dict(os.environ, SW_BENCH_KEY_FILE=self.key_file)
        n0 = nginx.requests()
        w0, b0, t0 = nginx.worker_cpu_s(), system_busy_s(), time.monotonic()
        proc = Proc(f"wrk[{tag}]", ["wrk", "-t1", f"-c{conns}", f"-d{p['sat_seconds']}s", "--timeout", "5s",
                                    "-s", os.path.join(HERE, "wrk.lua"),
                                    f"{nginx.url}/sessions/get?id={self.wrk_id}"],
                    stdout=out, stderr=out, env=env)
        if not proc.wait(p["sat_seconds"] + 30):
            proc.stop(timeout=3)
            raise BenchError("wrk did not finish in time")
        w1, b1, t1 = nginx.worker_cpu_s(), system_busy_s(), time.monotonic()
        n1 = nginx.requests()
        with open(out) as f:
            text = f.read()
        if proc.status != 0:
            raise BenchError(f"wrk failed ({proc.status}):\n{text}")
        m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", text)
        rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
        if not m or not rps:
            raise BenchError(f"cannot read wrk's output:\n{text}")
        requests = int(m.group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
        errors = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
        return {
            "requests": requests,
            "requests_per_s": float(rps.group(1)),
            "cpu_s": proc.cpu_s(),
            "cpu_us_per_request": proc.cpu_s() * 1e6 / max(requests, 1),
            "errors": errors,
            "nginx_requests": n1 - n0 - 1,
            "nginx_worker_cpu_s": w1 - w0,
            # Cores kept busy by anything but the client and nginx's worker.
            "other_load_cores": max(0.0, (b1 - b0) - proc.cpu_s() - (w1 - w0)) / (t1 - t0),
        }

    # -- the saturated daemon

    def saturated(self, nginx, conns, tag):
        p = self.p
        n0 = nginx.requests()
        w0, b0, t0 = nginx.worker_cpu_s(), system_busy_s(), time.monotonic()
        d = Daemon(self, tag, self.sat_conf[conns])
        d.wait_ready()
        time.sleep(p["sat_seconds"])
        t_stop = time.monotonic()
        st = d.stop()
        w1, b1, t1 = nginx.worker_cpu_s(), system_busy_s(), time.monotonic()
        n1 = nginx.requests()
        wall = t_stop - d.t_ready
        return {
            "polls": st["polls"],
            "polls_per_s": st["polls"] / wall,
            "wall_s": wall,
            "cpu_s": d.proc.cpu_s(),
            "cpu_us_per_poll": d.proc.cpu_s() * 1e6 / max(st["polls"], 1),
            "errors": st["errors"],
            "quick_decodes": st["quick_decodes"],
            "nginx_requests": n1 - n0 - 1,
            "nginx_worker_cpu_s": w1 - w0,
            "other_load_cores": max(0.0, (b1 - b0) - d.proc.cpu_s() - (w1 - w0)) / (t1 - t0),
        }

    # -- realistic load

    def realistic(self, tag):
        p = self.p
        n, interval = p["real_sessions"], p["real_interval_s"]
        sim = Apisim(self, tag, sessions=n, step_min=p["real_step"][0], step_max=p["real_step"][1])
        try:
            conf = os.path.join(self.work, f"real-{tag}.conf")
            write_config(conf, url=sim.url, key_file=self.key_file, ids_lines=sim.ids, interval=f"{interval}s",
                         max_conn=64, jitter="10%")
            d = Daemon(self, tag, conf)
            d.wait_ready()
            # The first polls are spread over one interval; let it pass.
            time.sleep(interval + p["real_warmup_s"])
            counts0 = sim.status_counts()
            sim.reset_counters()
            t0, c0 = time.monotonic(), proc_cpu_s(d.proc.pid)
            time.sleep(p["real_window_s"])
            t1, c1 = time.monotonic(), proc_cpu_s(d.proc.pid)
            gets = sim.get_count()
            t2 = time.monotonic()
            st = d.stop()
            counts1 = sim.status_counts()
        finally:
            sim.stop()

        def live(counts):
            return sum(v for k, v in counts.items() if k not in ("Succeeded", "Failed", "Cancelled"))

        # Sessions that end during the window stop being polled: the
        # intended rate uses the mean of the live counts at both ends.
        live0, live1 = live(counts0), live(counts1)
        live = (live0 + live1) / 2
        window = (t1 + t2) / 2 - t0  # the counters were read between t1 and t2
        achieved = gets / window
        intended = live / interval
        return {
            "sessions": n,
            "interval_s": interval,
            "non_terminal_start": live0,
            "non_terminal_end": live1,
            "intended_per_s": intended,
            "achieved_per_s": achieved,
            "achieved_ratio": achieved / intended if intended else 0.0,
            "cpu_share": (c1 - c0) / (t1 - t0),
            "errors": st["errors"],
            "outcomes": st["outcomes"],
            "polls": st["polls"],
            "transitions": st["transitions"],
            "latency_p50_us": st["latency_p50_us"],
            "latency_p99_us": st["latency_p99_us"],
        }

    # -- memory and start-up

    def memory(self, tag):
        p = self.p
        d0 = Daemon(self, f"{tag}-0", self.mem0_conf)
        d0.wait_ready()
        time.sleep(p["mem_settle_s"])
        rss0 = proc_rss_bytes(d0.proc.pid)
        d0.stop()
        dn = Daemon(self, f"{tag}-n", self.memn_conf)
        startup = dn.wait_ready(timeout=120)
        rss_ready = proc_rss_bytes(dn.proc.pid)
        time.sleep(p["mem_settle_s"])
        rssn = proc_rss_bytes(dn.proc.pid)
        hwmn = proc_rss_bytes(dn.proc.pid, "VmHWM")
        st = dn.stop(timeout=30)
        n = p["mem_sessions"]
        return {
            "sessions": n,
            "rss_0": rss0,
            "rss_n_at_ready": rss_ready,
            "rss_n": rssn,
            "rss_n_peak": hwmn,
            "bytes_per_session": (rssn - rss0) / n,
            "startup_s": startup,
            "startup_s_per_1m": startup * 1e6 / n,
            "stop_s": dn.stop_s,
            "errors": st["errors"],
        }

    # -- event latency

    def latency(self, tag):
        p = self.p
        sim = Apisim(self, tag, sessions=p["lat_sessions"], step_min=p["lat_step"][0], step_max=p["lat_step"][1],
                     seed=11)
        try:
            conf = os.path.join(self.work, f"lat-{tag}.conf")
            write_config(conf, url=sim.url, key_file=self.key_file, ids_lines=sim.ids,
                         interval=f"{p['lat_interval_ms']}ms", max_conn=16, jitter="10%")
            d = Daemon(self, tag, conf, print_events="json")
            d.wait_ready()
            time.sleep(p["lat_seconds"])
            st = d.stop()
        finally:
            sim.stop()
        with open(d.stdout, "rb") as f:
            lines = sum(1 for _ in f)
        return {
            "sessions": p["lat_sessions"],
            "events": st["events"],
            "event_lines_written": lines,
            "transitions": st["transitions"],
            "latency_p50_us": st["latency_p50_us"],
            "latency_p99_us": st["latency_p99_us"],
            "errors": st["errors"],
            "polls": st["polls"],
        }

    # -- freshness under a budget

    def fresh_runbooks(self, sim, k):
        """The ids of the k runbooks, from the first pages of the list."""
        with open(self.key_file) as f:
            hdr = {"X-Airplane-API-Key": f.read().strip()}
        found = []
        for page in range(1000):
            body = json.loads(http_get(f"{sim.url}/sessions/list?limit=50&page={page}", timeout=60, headers=hdr))
            for e in body["sessions"]:
                if e["runbookID"] not in found:
                    found.append(e["runbookID"])
            if len(found) >= k or len(body["sessions"]) < 50:
                break
        if len(found) < k:
            raise BenchError(f"apisim lists only {len(found)} runbooks, not {k}")
        return sorted(found)

    def fresh_config(self, path, *, url, runbooks, mode, metrics_port, max_sessions):
        f_ = self.p["fresh"]
        with open(path, "w") as f:
            f.write(f"""# written by scripts/bench (freshness)
[api]
url = {url}
key-file = {self.key_file}
max-connections = 16
rate-limit = {f_['rate_limit']}/s
timeout = 10s

[poll]
mode = {mode}
interval = {f_['interval_s']}s
waiting-interval = {f_['interval_s']}s
audit-interval = {f_['audit_interval_s']}s
max-sessions = {max_sessions}

[journal]
enable = no

[metrics]
listen = 127.0.0.1:{metrics_port}

[watch]
backfill = no
""")
            f.writelines(f"runbook = {r}\n" for r in runbooks)

    def freshness_one(self, n, mode, tag, at_offset=None):
        """One row: a fresh apisim (same seed, so the same timelines relative
        to its start), a daemon in this mode, warm-up, the window, then every
        change apisim's history shows inside the window matched to its event
        line by (session, status, updatedAt). at_offset: start the window
        that many seconds after apisim's start whether the warm-up is done
        or not (so that two rows measure the same changes)."""
        fp = self.p["fresh"]
        interval, window, deadline = fp["interval_s"], fp["window_s"], fp["deadline_s"]
        sim = Apisim(self, tag, sessions=n, step_min=fp["step"][0], step_max=fp["step"][1], seed=fp["seed"],
                     list_ids=False, start_timeout=120,
                     extra=["--runbooks", str(fp["runbooks"]), "--stagger", str(fp["stagger_s"]),
                            "--list-order", fp["list_order"]])
        d = None
        try:
            runbooks = self.fresh_runbooks(sim, fp["runbooks"])
            state = os.path.join(self.work, f"state-{tag}")
            os.makedirs(state)
            for attempt in range(3):
                port = free_port()
                conf = os.path.join(self.work, f"{tag}.conf")
                self.fresh_config(conf, url=sim.url, runbooks=runbooks, mode=mode, metrics_port=port,
                                  max_sessions=max(1000000, 2 * n))
                d = Daemon(self, f"{tag}-{attempt}", conf, print_events="json", events_pipe=True,
                           state_dir=state)
                try:
                    d.wait_ready()
                    break
                except BenchError:
                    if "Address already in use" not in tail(d.stderr) or attempt == 2:
                        raise
                    d.proc.stop(timeout=5)
                    d.sock.close()
                    d = None
            murl = f"http://127.0.0.1:{port}/metrics"

            # Warm-up: every session taken in and every runbook swept once
            # (the daemon's counters), then 2 intervals by its own uptime.
            if at_offset is None:
                until = time.time() + min(fp["warmup_base_s"] + fp["warmup_per_session_s"] * n, fp["warmup_max_s"])
            else:
                until = sim.t_up + at_offset
            warm_ok = True
            while True:
                m = scrape_metrics(murl)
                if (m.get("sessionwatch_sessions_watched", 0) >= n
                        and m.get("sessionwatch_discovery_sweeps_total", 0) >= fp["runbooks"]):
                    break
                if d.proc.poll():
                    raise BenchError(f"daemon {tag} exited during the warm-up:\n" + tail(d.stderr))
                if time.time() > until:
                    warm_ok = False
                    log(f"{tag}: the first sweeps did not finish in {time.time() - sim.t_up:.0f} s "
                        f"({m.get('sessionwatch_sessions_watched', 0):,.0f} of {n:,} sessions taken in, "
                        f"{m.get('sessionwatch_discovery_sweeps_total', 0):.0f} sweeps); measuring anyway")
                    break
                time.sleep(0.5)
            first_sweeps_s = time.time() - sim.t_up
            if at_offset is None:
                # The first audits (of sessions listed at the start) due.
                until = max(until, sim.t_up + 1.2 * fp["audit_interval_s"])
                while time.time() < sim.t_up + 1.2 * fp["audit_interval_s"]:
                    time.sleep(0.25)
            watched_after_warmup = m.get("sessionwatch_sessions_watched", 0)
            up1 = m["sessionwatch_uptime_seconds"]
            while m["sessionwatch_uptime_seconds"] < up1 + 2 * interval and time.time() < until:
                time.sleep(0.25)
                m = scrape_metrics(murl)
            if at_offset is not None:
                time.sleep(max(0.0, until - time.time()))
            sweeps_at_start = m.get("sessionwatch_discovery_sweeps_total", 0)

            # The window.
            pid = d.proc.pid
            a = time.time()
            c0 = sim.request_counts()
            cpu0, m0 = proc_cpu_s(pid), scrape_metrics(murl)
            t0 = (a + time.time()) / 2
            watched0 = m0.get("sessionwatch_sessions_watched", 0)
            time.sleep(window)
            a = time.time()
            c1 = sim.request_counts()
            cpu1, m1 = proc_cpu_s(pid), scrape_metrics(murl)
            t1 = (a + time.time()) / 2
            rss = proc_rss_bytes(pid)
            # Changes near the end of the window get their deadline too.
            time.sleep(deadline)
            hist = sim.history()
            st = d.stop()
        finally:
            if d and d.proc.status is None:
                d.proc.stop(timeout=10)
            sim.stop()

        # Event lines by (session, status, updatedAt in µs): first arrival.
        seen = {}
        bad = 0
        for arrival, line in d.events.lines:
            try:
                e = json.loads(line)
                data = e["data"]
                if data.get("status") is None:
                    continue
                key = (e["subject"], data["status"], airplane_time_us(data["session"]["updatedAt"]))
                evt = iso_time_s(e["time"])
            except (ValueError, KeyError, TypeError):
                bad += 1
                continue
            if key not in seen:
                seen[key] = (arrival, evt)

        terminal = ("Succeeded", "Failed", "Cancelled")
        changes = []  # (t, session, status)
        running0 = 0
        for sid, steps in hist.items():
            last = None
            for i, (t, status) in enumerate(steps):
                if t < t0:
                    last = status
                elif t < t1 and i > 0:
                    # How long the status lasted (None: it still holds).
                    lasted = steps[i + 1][0] - t if i + 1 < len(steps) else None
                    changes.append((t, sid, status, lasted, t - steps[i - 1][0]))
            if last is not None and last not in terminal:
                running0 += 1
        changes.sort()
        delays, missing, late, short, lag = [], [], 0, 0, 0.0
        # A status that held for less than one interval may be replaced
        # before any poll or sweep looks: such changes are counted apart.
        held = held_announced = 0
        for t, sid, status, lasted, before in changes:
            # ... and so can the status it replaces: Active, Waiting for
            # 2 s, Active again is no change to a request every interval.
            holds = (lasted is None or lasted >= interval) and before >= interval
            held += holds
            us = round(t * 1e6)
            ev = None
            for k in (us, us - 1, us + 1):
                ev = seen.get((sid, status, k))
                if ev:
                    break
            if ev and ev[0] - t <= deadline:
                delays.append(ev[0] - t)
                lag = max(lag, ev[0] - ev[1])
                held_announced += holds
            else:
                if ev:
                    late += 1
                elif not holds:
                    short += 1
                missing.append({"session": sid, "status": status, "at_s": round(t - t0, 3),
                                "late_s": round(ev[0] - t, 3) if ev else None,
                                "lasted_s": None if lasted is None else round(lasted, 3)})
        w = t1 - t0
        reqs = {k: c1.get(k, 0) - c0.get(k, 0) for k in ("get", "list")}
        total = sum(reqs.values())
        purposes = {}
        for k in ("sweep", "poll", "audit", "confirm"):
            name = f'sessionwatch_api_requests_total{{purpose="{k}"}}'
            purposes[k] = m1.get(name, 0) - m0.get(name, 0)
        ranked = sorted(delays) + [math.inf] * len(missing)
        announced = len(delays)
        return {
            "sessions": n,
            "mode": mode,
            "runbooks": len(runbooks),
            "warmup_complete": warm_ok,
            "first_sweeps_s": first_sweeps_s,
            "sessions_taken_in_at_window_start": watched0,
            "sessions_taken_in_after_warmup": watched_after_warmup,
            "sweeps_at_window_start": sweeps_at_start,
            "window_offset_s": t0 - sim.t_up,
            "running_at_window_start": running0,
            "window_s": w,
            "changes": len(changes),
            "changes_per_s": len(changes) / w,
            "announced": announced,
            "announced_ratio": announced / len(changes) if changes else 1.0,
            "held_changes": held,
            "held_announced_ratio": held_announced / held if held else 1.0,
            "missing": len(missing),
            "missing_late": late,
            "missing_short_lived": short,  # not announced at all, from or to a status held less than an interval
            "missing_examples": missing[:200],
            "delay_p50_s": nearest_rank(ranked, 0.50),
            "delay_p95_s": nearest_rank(ranked, 0.95),
            "delay_max_announced_s": max(delays) if delays else None,
            "reader_lag_max_s": lag,
            "requests": reqs,
            "requests_per_s": total / w,
            "requests_by_purpose_per_s": {k: v / w for k, v in purposes.items()},
            "requests_per_announced_change": total / announced if announced else None,
            "list_pages_needed_per_s": len(changes) / w / 50,
            "cpu_share": (cpu1 - cpu0) / w,
            "rss_bytes": rss,
            "schedule_behind_s_at_end": m1.get("sessionwatch_schedule_behind_seconds", 0),
            "daemon_detection_delay_p95_le_s": histogram_quantile(m0, m1, "sessionwatch_detection_delay_seconds",
                                                                  0.95),
            "event_lines": len(d.events.lines),
            "undecodable_event_lines": bad,
            "polls_whole_run": st["polls"],
            "errors_whole_run": st["errors"],
        }

    def freshness(self):
        fp = self.p["fresh"]
        rows = []
        for n in fp["sessions"]:
            # auto first: its warm-up ends once its first sweeps are done;
            # get then measures the same stretch of the same timelines.
            offset = None
            pair = []
            for mode in ("auto", "get"):
                self.wait_idle()
                log(f"freshness: {n:,} sessions in {fp['runbooks']} runbooks, mode = {mode}, "
                    f"rate-limit {fp['rate_limit']}/s, {fp['window_s']} s window"
                    + (f" from {offset:.0f} s after apisim's start" if offset else ""))
                r = self.freshness_one(n, mode, f"fresh-{n}-{mode}", at_offset=offset)
                offset = r["window_offset_s"]
                r["verdicts"] = fresh_verdicts(r, fp) if mode == "auto" else None
                log(f"freshness: {n:,} {mode}: {r['announced_ratio']:.1%} of {r['changes']:,} changes announced, "
                    f"p95 {fmt_delay(r['delay_p95_s'], fp['deadline_s'])}, {r['requests_per_s']:.1f} requests/s, "
                    f"{r['cpu_share']:.1%} CPU")
                pair.append(r)
            rows += reversed(pair)
        return rows

    # -- a profile of the saturated daemon

    def profile(self, seconds, out_data):
        """perf record of the daemon saturated at 64 connections (software
        cpu-clock: no hardware counters are needed), then the flat profile
        by self time and by library."""
        if not shutil.which("perf"):
            raise BenchError("perf is not installed: scripts/deps --bench")
        nginx = Nginx(self.work)
        nginx.start()
        try:
            conf = os.path.join(self.work, "profile.conf")
            write_config(conf, url=nginx.url, key_file=self.key_file, ids_lines=self.sat_ids, interval="1ms",
                         max_conn=64)
            d = Daemon(self, "profile", conf)
            d.wait_ready()
            time.sleep(1)  # past the start-up
            perf = Proc("perf", ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000",
                                 "--call-graph", "dwarf,16384", "-p", str(d.proc.pid), "-o", out_data,
                                 "--", "sleep", str(seconds)],
                        stdout=os.path.join(self.work, "perf.log"), stderr=os.path.join(self.work, "perf.log"))
            if not perf.wait(seconds + 60):
                perf.stop(timeout=10, sig=signal.SIGINT)
            if perf.status != 0:
                raise BenchError("perf record failed:\n" + tail(os.path.join(self.work, "perf.log")))
            st = d.stop()
        finally:
            nginx.stop()
        log(f"daemon: {st['polls']:,} polls during the profiled run; data in {out_data}")
        for title, extra in (("self time by symbol", ["--sort", "dso,symbol"]),
                             ("self time by library", ["--sort", "dso"])):
            r = subprocess.run(["perf", "report", "-i", out_data, "--no-children", "--stdio", "-g", "none",
                                "--percent-limit", "0.7"] + extra, capture_output=True, text=True, timeout=300)
            lines = [l for l in r.stdout.splitlines() if l.strip() and not l.startswith("#")]
            print(f"\nProfile of the saturated daemon (64 connections), {title}:")
            print("\n".join(lines[:40]))

    # -- the whole run

    def wait_idle(self):
        """Waits, at most --wait-idle seconds, for other processes to leave
        the CPUs alone: a shared machine otherwise halves every figure."""
        limit = self.args.wait_idle
        if limit is None:
            limit = 0 if self.quick else 30
        if limit <= 0:
            return
        deadline = time.monotonic() + limit
        busy = busy_cores(0.5)
        if busy < 0.15:
            return
        log(f"waiting up to {limit:g} s for the machine to be idle ({busy:.2f} cores busy)")
        while time.monotonic() < deadline:
            busy = busy_cores(0.5)
            if busy < 0.15:
                return
        log(f"still {busy:.2f} cores busy; measuring anyway")

    def run(self):
        p = self.p
        want = set(self.sections)
        reps = []
        nginx = None
        if want & {"saturated", "realistic", "latency", "memory"}:
            if want & {"saturated", "memory"}:
                self.prepare()
                nginx = Nginx(self.work)
                nginx.start()
                log(f"nginx on 127.0.0.1:{nginx.port}; {p['reps']} repetition(s)")
                self.nginx_configs(nginx)
            try:
                for r in range(p["reps"]):
                    rep = {}
                    if "saturated" in want:
                        for c in p["connections"]:
                            self.wait_idle()
                            log(f"rep {r + 1}: wrk -t1 -c{c} for {p['sat_seconds']} s")
                            rep[f"wrk_c{c}"] = self.wrk(nginx, c, f"r{r}c{c}")
                            log(f"rep {r + 1}: sessionwatchd, {p['sat_sessions']:,} sessions, interval 1ms, "
                                f"max-connections {c}, {p['sat_seconds']} s")
                            rep[f"daemon_c{c}"] = self.saturated(nginx, c, f"sat-r{r}c{c}")
                    if "realistic" in want:
                        self.wait_idle()
                        log(f"rep {r + 1}: realistic, {p['real_sessions']:,} sessions at {p['real_interval_s']} s "
                            "against apisim")
                        rep["realistic"] = self.realistic(f"real-r{r}")
                    if "latency" in want:
                        log(f"rep {r + 1}: latency, {p['lat_sessions']:,} changing sessions at "
                            f"{p['lat_interval_ms']} ms")
                        rep["latency"] = self.latency(f"lat-r{r}")
                    if "memory" in want:
                        log(f"rep {r + 1}: memory and start-up, 0 and {p['mem_sessions']:,} sessions")
                        rep["memory"] = self.memory(f"mem-r{r}")
                    if "saturated" in want:
                        for c in p["connections"]:
                            w, d = rep[f"wrk_c{c}"], rep[f"daemon_c{c}"]
                            rep[f"cpu_ratio_c{c}"] = d["cpu_us_per_poll"] / w["cpu_us_per_request"]
                            rep[f"throughput_ratio_c{c}"] = d["polls_per_s"] / w["requests_per_s"]
                    reps.append(rep)
            finally:
                if nginx:
                    nginx.stop()
        # Once, not repeated: a full freshness run takes most of an hour.
        fresh = self.freshness() if "freshness" in want else None
        return reps, fresh


# ---------------------------------------------------------------- report


def median_tree(reps):
    """The per-key median of a list of equally shaped dicts."""
    first = reps[0]
    out = {}
    for k, v in first.items():
        if isinstance(v, dict):
            out[k] = median_tree([r[k] for r in reps])
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = statistics.median(r[k] for r in reps)
        else:
            out[k] = v
    return out


def verdicts(m, p):
    mem_note = "" if p["mem_sessions"] == 1000000 else f" (at {p['mem_sessions']:,})"
    start_note = "" if p["mem_sessions"] == 1000000 else f" (scaled from {p['mem_sessions']:,})"
    rows = []
    if "cpu_ratio_c64" in m:
        rows += [
            ("CPU per poll / wrk CPU per request (c64)", m["cpu_ratio_c64"], "<=", TARGETS["cpu_ratio_c64"],
             "{:.2f}x"),
            ("polls/s / wrk requests/s (c64)", m["throughput_ratio_c64"], ">=", TARGETS["throughput_ratio_c64"],
             "{:.0%}"),
        ]
    if "memory" in m:
        rows.append(("RSS bytes per watched session" + mem_note, m["memory"]["bytes_per_session"], "<=",
                     TARGETS["bytes_per_session"], "{:.0f} B"))
    if "latency" in m:
        rows.append(("event latency p99 (upper bound)", m["latency"]["latency_p99_us"], "<=",
                     TARGETS["latency_p99_us"], "{:.0f} us"))
    if "memory" in m:
        rows.append(("start-up to READY, 1M sessions" + start_note, m["memory"]["startup_s_per_1m"], "<=",
                     TARGETS["startup_s"], "{:.2f} s"))
    out = []
    for name, value, op, target, fmt in rows:
        ok = value <= target if op == "<=" else value >= target
        out.append({"target": name, "value": value, "op": op, "limit": target, "ratio": value / target,
                    "ok": ok, "fmt": fmt})
    return out


def fresh_verdicts(r, fp):
    """The freshness targets of one row (the auto rows are judged)."""
    rows = [
        ("p95", r["delay_p95_s"], "<=", fp["interval_s"] + FRESH_TARGETS["p95_over_interval_s"], "{:.2f} s"),
        ("announced", r["held_announced_ratio"], ">=", FRESH_TARGETS["announced_ratio"], "{:.2%}"),
        ("requests/s", r["requests_per_s"], "<=", fp["rate_limit"], "{:.1f}"),
        ("CPU", r["cpu_share"], "<=", FRESH_TARGETS["cpu_share"], "{:.1%}"),
    ]
    out = []
    for name, value, op, limit, fmt in rows:
        ok = value is not None and (value <= limit if op == "<=" else value >= limit)
        out.append({"target": name, "value": value, "op": op, "limit": limit, "ok": ok, "fmt": fmt})
    return out


def print_freshness(rows, fp):
    def mib(b):
        return f"{b / 2**20:.0f} MiB"

    dl = fp["deadline_s"]
    print(f"Freshness under a budget: {fp['runbooks']} runbooks swept by [watch] runbook, generated steps "
          f"{fp['step'][0]}-{fp['step'][1]} s (a change every {sum(fp['step']) / 2:.0f} s on average per session), "
          f"--stagger {fp['stagger_s']}, list in {fp['list_order']} order;")
    print(f"rate-limit = {fp['rate_limit']}/s, interval = {fp['interval_s']}s (Waiting too), audit-interval = "
          f"{fp['audit_interval_s']}s (audits compete in every window), backfill = no, journal off;")
    print(f"a {fp['window_s']} s window once auto's first sweeps are done, 2 intervals more, and at least "
          f"{1.2 * fp['audit_interval_s']:.0f} s after apisim's start,")
    print("the get row over the same stretch of the same timelines (a fresh apisim, same seed, same offset "
          "from its start).")
    print(f"Delay: apisim's change time to the event line's arrival on the daemon's stdout; a change whose "
          f"line did not arrive within {dl} s counts as missed (as infinite in p50/p95; max is over the announced).")
    head = (f"  {'sessions':>9} {'mode':<4} {'from':>6} {'running':>9} {'changes/s':>9} {'announced':>9} {'held':>7} {'p50':>8} {'p95':>8} "
            f"{'max':>8} {'req/s':>6} {'sweep/poll/audit per s':>22} {'req/change':>10} {'CPU':>6} {'RSS':>8} "
            f"{'behind':>7}  targets")
    print(head)
    for r in rows:
        pp = r["requests_by_purpose_per_s"]
        mix = f"{pp['sweep']:.1f}/{pp['poll']:.1f}/{pp['audit']:.1f}"
        rpc = r["requests_per_announced_change"]
        if r["verdicts"]:
            bad = [v["target"] for v in r["verdicts"] if not v["ok"]]
            verdict = "all met" if not bad else "MISS: " + ", ".join(bad)
        else:
            verdict = ""
        print(f"  {r['sessions']:>9,} {r['mode']:<4} {r['window_offset_s']:>5.0f}s {r['running_at_window_start']:>9,} {r['changes_per_s']:>9.1f} "
              f"{r['announced_ratio']:>9.1%} {r['held_announced_ratio']:>7.1%} {fmt_delay(r['delay_p50_s'], dl):>8} "
              f"{fmt_delay(r['delay_p95_s'], dl):>8} {fmt_delay(r['delay_max_announced_s'], dl):>8} "
              f"{r['requests_per_s']:>6.1f} {mix:>22} {('-' if rpc is None else f'{rpc:.2f}'):>10} "
              f"{r['cpu_share']:>6.1%} {mib(r['rss_bytes']):>8} {r['schedule_behind_s_at_end']:>6.1f}s  {verdict}")
    print(f"  targets (auto rows): p95 <= {fp['interval_s'] + FRESH_TARGETS['p95_over_interval_s']:g} s, "
          f"every change whose status held for an interval announced (held), requests/s <= {fp['rate_limit']} (the budget), "
          f"CPU <= {FRESH_TARGETS['cpu_share']:.0%} of one core")
    print("  announced: of every change in the window; held: of the changes between two statuses that each held "
          "for at least one interval (a shorter one can be replaced before any request looks)")
    print("  from: the window's start after apisim's; running: sessions not finished then; req/s: apisim's "
          "counters over the window; behind: sessionwatch_schedule_behind_seconds at its end")
    for r in rows:
        tag = f"{r['sessions']:,} {r['mode']}"
        if not r["warmup_complete"]:
            print(f"  NOTE {tag}: its first sweeps had not finished when the window started, "
                  f"{r['window_offset_s']:.0f} s after apisim's start: {r['sessions_taken_in_at_window_start']:,.0f} "
                  f"of {r['sessions']:,} sessions taken in, {r['sweeps_at_window_start']:.0f} sweeps complete.")
        if r["missing"]:
            never = r["missing"] - r["missing_late"]
            what = (f"{r['missing_late']:,} announced later than {dl} s, {never:,} not at all, "
                    f"{r['missing_short_lived']:,} of which from or to a status that held less than one interval")
            if r["mode"] == "auto" or r["missing"] <= 5:
                ex = ", ".join(f"{e['session']} {e['status']} at +{e['at_s']:.1f} s"
                               + (f" (line after {e['late_s']:.1f} s)" if e["late_s"] is not None else
                                  f" (lasted {e['lasted_s']:.1f} s)" if e["lasted_s"] is not None else "")
                               for e in r["missing_examples"][:5])
                print(f"  missed {tag}: {r['missing']:,} of {r['changes']:,} ({what}), e.g. {ex}")
            else:
                print(f"  missed {tag}: {r['missing']:,} of {r['changes']:,} ({what})")
        need = r["list_pages_needed_per_s"]
        if need > fp["rate_limit"]:
            print(f"  NOTE {tag}: {r['changes_per_s']:,.0f} changes/s need at least {need:.0f} list pages/s of 50 "
                  f"entries, more than the {fp['rate_limit']}/s budget: no polling scheme can announce every "
                  f"change in time at this size; the row shows what the daemon does instead.")
        if r["reader_lag_max_s"] > 0.5:
            print(f"  NOTE {tag}: lines reached the benchmark up to {r['reader_lag_max_s']:.2f} s after the "
                  "event's time field: the reader, not the daemon, was late.")
    print()


def print_report(m, reps, p, vs, quick, src, fresh=None):
    def row(label, value):
        print(f"  {label:<48} {value}")

    n = len(reps)
    only = "" if p["sections"] == list(SECTIONS) else f", only {', '.join(p['sections'])}"
    print()
    print(f"sessionwatch benchmark ({'quick' if quick else 'full'}{only}: {n} repetition(s), medians) "
          f"on {os.cpu_count()} CPUs, Release build")
    if src.get("commit"):
        mod = f", {len(src['modified'])} modified file(s) under daemon/ or tests/apisim/" if src.get("modified") else ""
        print(f"source: {src['commit']}{mod}")
    print()
    for c in p["connections"] if "cpu_ratio_c64" in m else ():
        w, d = m[f"wrk_c{c}"], m[f"daemon_c{c}"]
        print(f"Saturated, {c} connections, {p['sat_seconds']} s runs against nginx:")
        row("ceiling: wrk -t1 requests/s", f"{w['requests_per_s']:,.0f}")
        row("ceiling: wrk CPU per request", f"{w['cpu_us_per_request']:.2f} us")
        row(f"sessionwatchd polls/s ({p['sat_sessions']:,} sessions, 1ms)", f"{d['polls_per_s']:,.0f}")
        row("sessionwatchd CPU per poll", f"{d['cpu_us_per_poll']:.2f} us")
        row("polls/s / wrk requests/s", f"{m[f'throughput_ratio_c{c}']:.0%}")
        row("CPU per poll / wrk CPU per request", f"{m[f'cpu_ratio_c{c}']:.2f}x")
        row("nginx worker CPU share (wrk / daemon run)",
            f"{w['nginx_worker_cpu_s'] / p['sat_seconds']:.0%} / {d['nginx_worker_cpu_s'] / d['wall_s']:.0%}")
        row("errors (wrk / daemon)", f"{w['errors']} / {d['errors']}")
        row("other processes' load, cores (wrk / daemon run)",
            f"{w['other_load_cores']:.2f} / {d['other_load_cores']:.2f}")
        print()
    if "realistic" in m:
        print_realistic(m, p)
    if "memory" in m:
        print_memory(m)
    if "latency" in m:
        print_latency(m, p)
    if fresh is not None:
        print_freshness(fresh, p["fresh"])
    sat = [rep[k]["other_load_cores"] for rep in reps for k in rep if k.startswith(("wrk_", "daemon_"))]
    worst = max(sat) if sat else 0
    if worst > 0.1:
        print(f"NOTE: other processes kept up to {worst:.2f} cores busy during a saturated run: "
              "absolute figures read low and ratios are less reliable; rerun on an idle machine.")
        print()
    if vs:
        print("Targets:")
        print(f"  {'target':<50} {'measured':>10} {'limit':>12} {'ratio':>7}  verdict")
        for v in vs:
            fmt = v["fmt"]
            print(f"  {v['target']:<50} {fmt.format(v['value']):>10} {v['op'] + ' ' + fmt.format(v['limit']):>12} "
                  f"{v['ratio']:>7.2f}  {'ok' if v['ok'] else 'MISS'}")
        print()


def print_realistic(m, p):
    def row(label, value):
        print(f"  {label:<48} {value}")

    r = m["realistic"]
    print(f"Realistic: {r['sessions']:,} sessions at {r['interval_s']} s against apisim, "
          f"{p['real_window_s']} s window:")
    row("intended polls/s (non-terminal / interval)", f"{r['intended_per_s']:,.0f}")
    row("achieved polls/s (apisim's counter)", f"{r['achieved_per_s']:,.0f} ({r['achieved_ratio']:.1%})")
    row("daemon CPU, share of one core", f"{r['cpu_share']:.0%}")
    row("errors (non-ok polls, whole run)", f"{r['errors']}")
    row("transitions seen", f"{r['transitions']:,}")
    print()


def print_memory(m):
    def row(label, value):
        print(f"  {label:<48} {value}")

    mm = m["memory"]
    print(f"Memory and start-up, interval 1h against nginx:")
    row("RSS with 0 sessions", f"{mm['rss_0'] / 2**20:.1f} MiB")
    row(f"RSS with {mm['sessions']:,} sessions", f"{mm['rss_n'] / 2**20:.1f} MiB")
    row(f"peak RSS (VmHWM) with {mm['sessions']:,} sessions", f"{mm['rss_n_peak'] / 2**20:.1f} MiB")
    row("bytes per session (settled RSS)", f"{mm['bytes_per_session']:.0f}")
    row(f"exec to READY=1 with {mm['sessions']:,} sessions (config only)", f"{mm['startup_s']:.2f} s")
    print()


def print_latency(m, p):
    def row(label, value):
        print(f"  {label:<48} {value}")

    lat = m["latency"]
    print(f"Latency: {lat['sessions']:,} sessions changing every {p['lat_step'][0]}-{p['lat_step'][1]} s, "
          f"polled every {p['lat_interval_ms']} ms, events to a file:")
    row("events", f"{lat['events']:,.0f} ({lat['event_lines_written']:,.0f} lines written)")
    row("response done -> event written, p50 <=", f"{lat['latency_p50_us']:.0f} us")
    row("response done -> event written, p99 <=", f"{lat['latency_p99_us']:.0f} us")
    row("errors", f"{lat['errors']}")
    print()


def json_safe(v):
    """Infinite delays (changes missed) as the string "missed": JSON has no infinity."""
    if isinstance(v, float) and math.isinf(v):
        return "missed"
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def busy_cores(seconds=1.0):
    """How much of the machine's CPU time was busy over a short sample, in
    cores: a benchmark on a machine that is not idle reads low."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v) - idle, sum(v)
    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def source_info():
    """Which code was measured: the commit, and the files that differed
    from it (the benchmark measures the work tree as it is)."""
    info = {}
    try:
        r = subprocess.run(["git", "-C", TOP, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10)
        info["commit"] = r.stdout.strip() or None
        r = subprocess.run(["git", "-C", TOP, "status", "--porcelain", "--untracked-files=no", "--", "daemon",
                            "tests/apisim", "CMakeLists.txt"], capture_output=True, text=True, timeout=10)
        info["modified"] = [l[3:] for l in r.stdout.splitlines()]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def machine_info():
    info = {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            info["cpu_model"] = m.group(1) if m else None
    except OSError:
        pass
    for name, argv in (("nginx", ["nginx", "-v"]), ("wrk", ["wrk", "-v"]), ("curl", ["curl", "--version"])):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            info[name] = (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info[name] = None
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(TOP, "build-bench"))
    ap.add_argument("--quick", action="store_true", help="one repetition, fewer sessions, shorter runs")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3; --quick: 1)")
    ap.add_argument("--json", help="where the results go (default bench-results.json at the top; with --only, "
                                   "bench-results-SECTION[-SECTION...].json in the build folder)")
    ap.add_argument("--only", metavar="SECTION[,SECTION...]",
                    help="run only these sections: " + ", ".join(SECTIONS) + " (saturated includes the wrk ceiling)")
    ap.add_argument("--freshness-sessions", metavar="N[,N...]",
                    help="the session counts of the freshness rows (default 1000,10000,100000,1000000; "
                         "--quick: 1000,10000)")
    ap.add_argument("--wait-idle", type=float, metavar="SECONDS",
                    help="before each measured pair, wait up to this long for other processes to leave the "
                         "CPUs idle (default 30; --quick: 0)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    ap.add_argument("--profile", type=float, metavar="SECONDS", nargs="?", const=8.0,
                    help="instead of the benchmark: perf record the saturated daemon (64 connections) "
                         "and print the top costs; perf.data goes into the build dir")
    args = ap.parse_args()
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in only if x not in SECTIONS]
        if bad or not only:
            ap.error(f"--only: unknown section {', '.join(bad) or '(none)'}; expected some of {', '.join(SECTIONS)}")
        args.only = [x for x in SECTIONS if x in only]
    else:
        args.only = list(SECTIONS)
    if args.json is None:
        if args.only == list(SECTIONS):
            args.json = os.path.join(TOP, "bench-results.json")
        else:  # a partial run does not replace the full results
            args.json = os.path.join(args.build, "bench-results-" + "-".join(args.only) + ".json")
    if args.freshness_sessions:
        try:
            args.freshness_sessions = [int(x.replace("_", "")) for x in args.freshness_sessions.split(",")]
            if min(args.freshness_sessions) < 1:
                raise ValueError
        except ValueError:
            ap.error("--freshness-sessions: expected positive integers separated by commas")

    # Explicitly, also when started in the background with SIGINT ignored:
    # whatever stops us must stop the children first.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))

    t0 = time.monotonic()
    bench = None
    try:
        busy = busy_cores()
        if busy > 0.2:
            log(f"warning: the machine is not idle ({busy:.2f} cores busy before the start): "
                "every figure will read low")
        bench = Bench(args)
        bench.source = source_info()
        if args.profile:
            bench.prepare()
            bench.profile(args.profile, os.path.join(args.build, "perf.data"))
            return 0
        reps, fresh = bench.run()
        m = median_tree(reps) if reps else {}
        vs = verdicts(m, bench.p)
        print_report(m, reps, bench.p, vs, args.quick, bench.source, fresh)
        result = {
            "mode": "quick" if args.quick else "full",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(),
            "source": bench.source,
            "busy_cores_before": busy,
            "load_average_after": os.getloadavg(),
            "parameters": bench.p,
            "targets": [{k: v[k] for k in ("target", "value", "op", "limit", "ratio", "ok")} for v in vs]
            + [{"target": f"freshness {r['sessions']:,} auto: {v['target']}",
                **{k: v[k] for k in ("value", "op", "limit", "ok")}}
               for r in fresh or () for v in r["verdicts"] or ()],
            "median": m,
            "repetitions": reps,
            "freshness": None if fresh is None else [
                dict(r, verdicts=None if r["verdicts"] is None else
                     [{k: v[k] for k in ("target", "value", "op", "limit", "ok")} for v in r["verdicts"]])
                for r in fresh],
            "elapsed_s": time.monotonic() - t0,
        }
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(json_safe(result), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, args.json)
        log(f"done in {time.monotonic() - t0:.0f} s; results in {os.path.relpath(args.json)}")
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        cleanup_all()
        if bench:
            if args.keep:
                log(f"kept {bench.work}")
            else:
                shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
