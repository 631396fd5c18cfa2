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

Each figure is the median over the repetitions (3 by default). --quick: one
repetition, 3 s saturated runs, 20,000 sessions at 1 s for the realistic load,
200,000 sessions for memory and start-up (start-up scaled linearly to 1M). Two cores: nginx runs one
worker process, so the server and the client under test (wrk or the daemon)
get one core each; nothing is pinned, the kernel's scheduler places them.
apisim runs with its default thread count and shares the cores with the
daemon in the realistic and latency runs.
"""

import argparse
import json
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


def http_get(url, timeout=10.0, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    def __init__(self, bench, tag, *, sessions, step_min, step_max, seed=7):
        self.dir = os.path.join(bench.work, f"apisim-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        self.ids = os.path.join(self.dir, "ids")
        portf = os.path.join(self.dir, "port")
        self.proc = Proc("apisim", [bench.apisim, "--port", "0", "--port-file", portf, "--key-file",
                                    bench.key_file, "--sessions", str(sessions), "--seed", str(seed),
                                    "--step-min", str(step_min), "--step-max", str(step_max),
                                    "--list-ids", self.ids, "--quiet"],
                         stdout=os.path.join(self.dir, "stdout.log"),
                         stderr=os.path.join(self.dir, "stderr.log"))
        deadline = time.monotonic() + 30
        while not (os.path.exists(portf) and os.path.getsize(portf) > 0):
            if self.proc.poll() or time.monotonic() > deadline:
                self.proc.stop(timeout=3)
                raise BenchError("apisim did not start: " + tail(os.path.join(self.dir, "stderr.log")))
            time.sleep(0.02)
        with open(portf) as f:
            self.port = int(f.read().strip())
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def url(self):
        return self.base + "/v0"

    def reset_counters(self):
        http_get(self.base + "/_sim/counters/reset", method="POST")

    def get_count(self):
        c = json.loads(http_get(self.base + "/_sim/counters?times=0", timeout=30))
        return c["requests"]["get"]

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


# ---------------------------------------------------------------- the daemon

STOP_RE = re.compile(r"Stopped after (\d+) polls \(([^)]*)\), (\d+) transitions, (\d+) events, "
                     r"(\d+) quick decodes; event latency p50 <= (\d+) us, p99 <= (\d+) us")


class Daemon:
    """One sessionwatchd run: started with a NOTIFY_SOCKET we own, stopped
    with SIGTERM, its stop line parsed."""

    def __init__(self, bench, tag, config, *, print_events=None):
        self.bench = bench
        self.tag = tag
        self.stderr = os.path.join(bench.work, f"daemon-{tag}.log")
        self.stdout = os.path.join(bench.work, f"events-{tag}.json") if print_events else None
        sock_path = os.path.join(bench.work, "notify.sock")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sock_path)
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID")}
        env["NOTIFY_SOCKET"] = sock_path
        env["RUNTIME_DIRECTORY"] = bench.runtime_dir
        env["STATE_DIRECTORY"] = bench.state_dir
        argv = [bench.daemon, "--config", config, "--log-level", "info"]
        if print_events:
            argv.append(f"--print-events={print_events}")
        self.t_exec = time.monotonic()
        self.proc = Proc(f"sessionwatchd[{tag}]", argv, stdout=self.stdout, stderr=self.stderr, env=env)
        self.t_ready = None
        self.stats = None

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
        for exe in ("nginx", "wrk"):
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
        self.prepare()
        nginx = Nginx(self.work)
        nginx.start()
        log(f"nginx on 127.0.0.1:{nginx.port}; {p['reps']} repetition(s)")
        self.nginx_configs(nginx)
        reps = []
        try:
            for r in range(p["reps"]):
                rep = {}
                for c in p["connections"]:
                    self.wait_idle()
                    log(f"rep {r + 1}: wrk -t1 -c{c} for {p['sat_seconds']} s")
                    rep[f"wrk_c{c}"] = self.wrk(nginx, c, f"r{r}c{c}")
                    log(f"rep {r + 1}: sessionwatchd, {p['sat_sessions']:,} sessions, interval 1ms, "
                        f"max-connections {c}, {p['sat_seconds']} s")
                    rep[f"daemon_c{c}"] = self.saturated(nginx, c, f"sat-r{r}c{c}")
                self.wait_idle()
                log(f"rep {r + 1}: realistic, {p['real_sessions']:,} sessions at {p['real_interval_s']} s "
                    "against apisim")
                rep["realistic"] = self.realistic(f"real-r{r}")
                log(f"rep {r + 1}: latency, {p['lat_sessions']:,} changing sessions at {p['lat_interval_ms']} ms")
                rep["latency"] = self.latency(f"lat-r{r}")
                log(f"rep {r + 1}: memory and start-up, 0 and {p['mem_sessions']:,} sessions")
                rep["memory"] = self.memory(f"mem-r{r}")
                for c in p["connections"]:
                    w, d = rep[f"wrk_c{c}"], rep[f"daemon_c{c}"]
                    rep[f"cpu_ratio_c{c}"] = d["cpu_us_per_poll"] / w["cpu_us_per_request"]
                    rep[f"throughput_ratio_c{c}"] = d["polls_per_s"] / w["requests_per_s"]
                reps.append(rep)
        finally:
            nginx.stop()
        return reps


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
    rows = [
        ("CPU per poll / wrk CPU per request (c64)", m["cpu_ratio_c64"], "<=", TARGETS["cpu_ratio_c64"],
         "{:.2f}x"),
        ("polls/s / wrk requests/s (c64)", m["throughput_ratio_c64"], ">=", TARGETS["throughput_ratio_c64"],
         "{:.0%}"),
        ("RSS bytes per watched session" + mem_note, m["memory"]["bytes_per_session"], "<=",
         TARGETS["bytes_per_session"], "{:.0f} B"),
        ("event latency p99 (upper bound)", m["latency"]["latency_p99_us"], "<=", TARGETS["latency_p99_us"],
         "{:.0f} us"),
        ("start-up to READY, 1M sessions" + start_note, m["memory"]["startup_s_per_1m"], "<=",
         TARGETS["startup_s"], "{:.2f} s"),
    ]
    out = []
    for name, value, op, target, fmt in rows:
        ok = value <= target if op == "<=" else value >= target
        out.append({"target": name, "value": value, "op": op, "limit": target, "ratio": value / target,
                    "ok": ok, "fmt": fmt})
    return out


def print_report(m, reps, p, vs, quick, src):
    def row(label, value):
        print(f"  {label:<48} {value}")

    n = len(reps)
    print()
    print(f"sessionwatch benchmark ({'quick' if quick else 'full'}: {n} repetition(s), medians) "
          f"on {os.cpu_count()} CPUs, Release build")
    if src.get("commit"):
        mod = f", {len(src['modified'])} modified file(s) under daemon/ or tests/apisim/" if src.get("modified") else ""
        print(f"source: {src['commit']}{mod}")
    print()
    for c in p["connections"]:
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
    r = m["realistic"]
    print(f"Realistic: {r['sessions']:,} sessions at {r['interval_s']} s against apisim, "
          f"{p['real_window_s']} s window:")
    row("intended polls/s (non-terminal / interval)", f"{r['intended_per_s']:,.0f}")
    row("achieved polls/s (apisim's counter)", f"{r['achieved_per_s']:,.0f} ({r['achieved_ratio']:.1%})")
    row("daemon CPU, share of one core", f"{r['cpu_share']:.0%}")
    row("errors (non-ok polls, whole run)", f"{r['errors']}")
    row("transitions seen", f"{r['transitions']:,}")
    print()
    mm = m["memory"]
    print(f"Memory and start-up, interval 1h against nginx:")
    row("RSS with 0 sessions", f"{mm['rss_0'] / 2**20:.1f} MiB")
    row(f"RSS with {mm['sessions']:,} sessions", f"{mm['rss_n'] / 2**20:.1f} MiB")
    row(f"peak RSS (VmHWM) with {mm['sessions']:,} sessions", f"{mm['rss_n_peak'] / 2**20:.1f} MiB")
    row("bytes per session (settled RSS)", f"{mm['bytes_per_session']:.0f}")
    row(f"exec to READY=1 with {mm['sessions']:,} sessions (config only)", f"{mm['startup_s']:.2f} s")
    print()
    lat = m["latency"]
    print(f"Latency: {lat['sessions']:,} sessions changing every {p['lat_step'][0]}-{p['lat_step'][1]} s, "
          f"polled every {p['lat_interval_ms']} ms, events to a file:")
    row("events", f"{lat['events']:,.0f} ({lat['event_lines_written']:,.0f} lines written)")
    row("response done -> event written, p50 <=", f"{lat['latency_p50_us']:.0f} us")
    row("response done -> event written, p99 <=", f"{lat['latency_p99_us']:.0f} us")
    row("errors", f"{lat['errors']}")
    print()
    worst = max(rep[k]["other_load_cores"] for rep in reps for k in rep if k.startswith(("wrk_", "daemon_")))
    if worst > 0.1:
        print(f"NOTE: other processes kept up to {worst:.2f} cores busy during a saturated run: "
              "absolute figures read low and ratios are less reliable; rerun on an idle machine.")
        print()
    print("Targets:")
    print(f"  {'target':<50} {'measured':>10} {'limit':>12} {'ratio':>7}  verdict")
    for v in vs:
        fmt = v["fmt"]
        print(f"  {v['target']:<50} {fmt.format(v['value']):>10} {v['op'] + ' ' + fmt.format(v['limit']):>12} "
              f"{v['ratio']:>7.2f}  {'ok' if v['ok'] else 'MISS'}")
    print()


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
    ap.add_argument("--json", default=os.path.join(TOP, "bench-results.json"))
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
        reps = bench.run()
        m = median_tree(reps)
        vs = verdicts(m, bench.p)
        print_report(m, reps, bench.p, vs, args.quick, bench.source)
        result = {
            "mode": "quick" if args.quick else "full",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(),
            "source": bench.source,
            "busy_cores_before": busy,
            "load_average_after": os.getloadavg(),
            "parameters": bench.p,
            "targets": [{k: v[k] for k in ("target", "value", "op", "limit", "ratio", "ok")} for v in vs],
            "median": m,
            "repetitions": reps,
            "elapsed_s": time.monotonic() - t0,
        }
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
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
