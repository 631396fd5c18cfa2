#!/usr/bin/env python3
"""The sessionwatch soak; run it through scripts/soak, which builds first.

    scripts/soak [MINUTES]        (default 30)

One long run of the real binaries on loopback, with everything going wrong
that can go wrong in production, then a check that nothing was lost:

  apisim      10,000 generated sessions in 20 runbooks, steps of 30-1800 s
              (every status holds for well over one poll interval), started
              spread over the 1800 s before apisim's start; 5 % of the API
              requests fail, evenly spread over every HTTP fault kind
              (500, 502, 503, 404, 403, 429, delay, reset), and 1 % of the
              list answers leave out one entry (list-miss; see below). The
              401 fault is left out: each one holds every request for 30 s
              and more (a revoked key), which would stop the run, not soak it.
  daemon      sessionwatchd watching the 20 runbooks, mode = auto,
              rate-limit = 50/s, interval = 5s, a state folder, a webhook to
              a receiver in this process, the event stream socket, and
              --print-events=json into one file per daemon run.
  troubles    the webhook receiver closes its listener (and its connections)
              and comes back every few minutes; event stream clients come
              and go, some reading everything, some slowly, some never;
              SIGHUP every minute; SIGKILL and a restart (same config and
              state) every 5 minutes.
  table       every 30 s: RSS, open fds, events so far, webhook deliveries,
              the webhook queue and how far behind the daemon's schedule is.
  drain       faults off, receiver up, one more sweep of every runbook
              (apisim's per-runbook list counters and the daemon's sweep
              counter), then every API request answers 500 so that no new
              event can come, the webhook queue empties, SIGTERM.
  checks      every transition of apisim's history from the end of the
              daemon's first sweeps to the drain is in the union of the event
              logs exactly once by (session, status, updatedAt) (repeats only
              with the same event id), no event without a transition, every
              event delivered to the webhook at least once, RSS and open fds
              flat after warm-up.

list-miss: a change that a list answer leaves out is seen only by the audit
(one GET per covered session every audit-interval), so a status that changes
again before the audit is never seen: Active, Waiting (left out), Active is
no change to a poller. The fault is therefore only on until audit-interval x
1.1 + 60 s before the drain, and a transition not announced counts as
collapsed by list-miss (reported apart, not as missing) only with the proof
that the daemon never saw it: the status held less than that bound, the
session's next announced event has as previousStatus what the daemon had
announced before, and there are no more such collapses than entries apisim
left out. Everything else not announced is missing, and fails the run.

Results: a table and verdicts on stdout, build-soak/soak-results.json. Exit
status 1 when a check fails. Every process started is stopped on exit, Ctrl-C
included.
"""

import argparse
import base64
import calendar
import collections
import hashlib
import hmac
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "tests", "integration"))

FAULT_KINDS = ["500", "502", "503", "404", "403", "429", "delay", "reset"]
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- times

AIRPLANE_TIME_RE = re.compile(r"(\d+)-(\d+)-(\d+)[ T](\d+):(\d+):(\d+)(?:\.(\d{1,6}))?(?:Z|([+-]\d\d)(?::?(\d\d))?)$")


def time_us(text):
    """'2022-01-11 22:32:45.601486+00' (or RFC 3339) as integer µs since the epoch."""
    m = AIRPLANE_TIME_RE.match(text)
    if not m:
        raise ValueError(f"bad time {text!r}")
    y, mo, d, h, mi, s = (int(x) for x in m.group(1, 2, 3, 4, 5, 6))
    frac = int((m.group(7) or "0").ljust(6, "0"))
    off = 0
    if m.group(8):
        sign = -1 if m.group(8).startswith("-") else 1
        off = sign * (abs(int(m.group(8))) * 3600 + 60 * int(m.group(9) or 0))
    return (calendar.timegm((y, mo, d, h, mi, s)) - off) * 1000000 + frac


# ---------------------------------------------------------------- webhook receiver


class Receiver:
    """A Standard Webhooks receiver on loopback (threaded http.server,
    keep-alive). It records every delivered webhook-id and checks the
    signature. stop() closes the listener and every open connection;
    start() listens again on the same port."""

    def __init__(self, secret):
        self.key = base64.b64decode(secret[len("whsec_"):])
        self.port = 0
        self.lock = threading.Lock()
        self.delivered = collections.Counter()  # webhook-id -> 2xx answers
        self.requests = 0
        self.bad_signatures = 0
        self.server = None
        self.thread = None
        self.conns = set()
        self.downs = 0

    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with receiver.lock:
                    receiver.conns.add(self.connection)

            def finish(self):
                try:
                    super().finish()
                finally:
                    with receiver.lock:
                        receiver.conns.discard(self.connection)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                wid = self.headers.get("webhook-id", "")
                ts = self.headers.get("webhook-timestamp", "")
                mac = hmac.new(receiver.key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
                expected = "v1," + base64.b64encode(mac).decode()
                ok = expected in self.headers.get("webhook-signature", "").split()
                with receiver.lock:
                    receiver.requests += 1
                    if ok:
                        receiver.delivered[wid] += 1
                    else:
                        receiver.bad_signatures += 1
                self.send_response(204 if ok else 400)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    @property
    def up(self):
        return self.server is not None

    def stop(self):
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5)
        self.server = None
        self.downs += 1

    def counts(self):
        with self.lock:
            return sum(self.delivered.values()), len(self.delivered), self.requests


# ---------------------------------------------------------------- stream clients


class StreamClients:
    """Event stream readers that come and go: 'reader' reads everything and
    checks that live sequence numbers have no gap, 'slow' reads 4 KiB every
    half second, 'silent' never reads. Each stays 20-90 s."""

    def __init__(self, path, rng):
        self.path = path
        self.rng = rng
        self.lock = threading.Lock()
        self.stats = collections.Counter()
        self.threads = []
        self.stopping = threading.Event()

    def spawn(self):
        mode = self.rng.choice(["reader", "reader", "slow", "silent"])
        stay = self.rng.uniform(20, 90)
        t = threading.Thread(target=self.run, args=(mode, stay), daemon=True)
        t.start()
        self.threads = [x for x in self.threads if x.is_alive()] + [t]

    def count(self, key, n=1):
        with self.lock:
            self.stats[key] += n

    def run(self, mode, stay):
        end = time.monotonic() + stay
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(self.path)
        except OSError:
            self.count("connect_failed")
            return
        self.count(f"connected_{mode}")
        try:
            if mode == "reader":
                s.sendall(b"{}\n")
            buf, last_seq, live = b"", None, False
            while time.monotonic() < end and not self.stopping.is_set():
                if mode == "silent":
                    time.sleep(0.5)
                    continue
                try:
                    chunk = s.recv(65536 if mode == "reader" else 4096)
                except socket.timeout:
                    continue
                if not chunk:
                    self.count("ended_by_daemon")
                    break
                self.count("bytes", len(chunk))
                if mode == "slow":
                    time.sleep(0.5)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line:
                        continue
                    e = json.loads(line)
                    t = e.get("type")
                    if t == "sessionwatch.stream.live":
                        live, last_seq = True, e["sequence"]
                    elif t == "sessionwatch.stream.overflow":
                        self.count("overflow_reader")
                    elif live and "sequence" in e:
                        if e["sequence"] != last_seq + 1:
                            self.count("sequence_gaps")
                        last_seq = e["sequence"]
                        self.count("live_events")
        except (OSError, ValueError):
            self.count("errors")
        finally:
            s.close()


# ---------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build)
        os.environ["SW_APISIM"] = os.path.join(self.build, "tests", "apisim", "apisim")
        os.environ["SW_DAEMON"] = os.path.join(self.build, "daemon", "sessionwatchd")
        os.environ["SW_CTL"] = os.path.join(self.build, "daemon", "sessionwatchctl")
        import swtest  # noqa: E402 (needs the variables above)
        self.sw = swtest
        self.work = os.path.join(self.build, "soak-work")
        if not args.recheck:
            shutil.rmtree(self.work, ignore_errors=True)
        self.state = os.path.join(self.work, "state")
        self.run_dir = os.path.join(self.work, "run")
        for p in (self.state, self.run_dir):
            os.makedirs(p, exist_ok=True)
        self.rng = random.Random(args.seed)
        self.sim = None
        self.daemon = None
        self.runs = []  # one dict per daemon run
        self.receiver = None
        self.clients = None
        self.rows = []
        self.samples = []  # every sample (also between rows)
        self.notes = []
        self.unexpected_exits = []
        self.secret = "whsec_" + base64.b64encode(hashlib.sha256(b"soak").digest()).decode()
        self.minutes = args.minutes
        self.duration = args.minutes * 60.0
        self.audit_s = args.audit_interval
        self.audit_bound = self.audit_s * 1.1 + 60
        self.behind_max = 0.0

    # -- processes

    def start_sim(self):
        a = self.args
        ids = os.path.join(self.work, "ids.txt")
        self.sim = self.sw.ApiSim(self.work, sessions=a.sessions, runbooks=a.runbooks, seed=a.seed,
                                  step_min=a.step_min, step_max=a.step_max, list_ids=ids,
                                  extra_args=["--stagger", str(a.stagger)])
        self.sim.start(timeout=120)
        self.sim_t0 = time.time()
        rbs = sorted({s["runbookID"] for s in self.sim.sessions()["sessions"]})
        if len(rbs) != a.runbooks:
            raise RuntimeError(f"apisim has {len(rbs)} runbooks, not {a.runbooks}")
        self.runbooks = rbs

    def write_config(self):
        key = os.path.join(self.work, "api-key")
        self.sw._write_private(key, self.sim.key)
        secret = os.path.join(self.work, "webhook.secret")
        self.sw._write_private(secret, self.secret)
        self.metrics_port = self.sw.free_port()
        self.config = os.path.join(self.work, "sessionwatchd.conf")
        a = self.args
        with open(self.config, "w") as f:
            f.write(f"""# written by scripts/soak
[api]
url = {self.sim.url}
key-file = {key}
rate-limit = 50/s
timeout = 10s

[poll]
mode = auto
interval = 5s
waiting-interval = 30s
audit-interval = {self.audit_s:g}s

[watch]
""")
            f.writelines(f"runbook = {r}\n" for r in self.runbooks)
            f.write(f"""
[journal]
enable = no

[webhook "soak"]
url = http://127.0.0.1:{self.receiver.port}/hook
secret-file = {secret}
retry-min = 1s
retry-max = {a.retry_max:g}s

[events]
path = {self.run_dir}/events.sock

[control]
path = {self.run_dir}/control.sock

[metrics]
listen =

[state]
path = {self.state}
""")

    def start_daemon(self):
        n = len(self.runs) + 1
        p = self.sw.Process([os.environ["SW_DAEMON"], "--config", self.config, "--print-events=json"],
                            self.work, name=f"sessionwatchd.run{n}")
        p.start()
        run = {"n": n, "process": p, "pid": p.pid, "started": time.time(), "events_file": p.stdout_path,
               "end": None}
        self.runs.append(run)
        self.daemon = p

        def answers():
            if p.poll() is not None:
                raise RuntimeError(f"the daemon exited at start-up\n{p.describe()}")
            return self.status(timeout=2)

        self.sw.wait_until(answers, timeout=60, ignore=(OSError, ValueError, subprocess.SubprocessError),
                           message="the daemon's control socket does not answer")
        log(f"daemon run {n} up (pid {p.pid})")

    def status(self, timeout=10):
        """sessionwatchctl --json status, parsed (None when it fails)."""
        done = subprocess.run([os.environ["SW_CTL"], "--socket", f"{self.run_dir}/control.sock", "--json",
                               "status"], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def metrics(self):
        done = subprocess.run([os.environ["SW_CTL"], "--socket", f"{self.run_dir}/control.sock", "metrics"],
                              capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        out = {}
        for line in done.stdout.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def kill_daemon(self):
        run = self.runs[-1]
        run["process"].kill()
        run["end"] = time.time()
        run["end_how"] = "SIGKILL"

    def set_faults(self, on, list_miss):
        self.sim.clear_faults()
        if on:
            # First matching rule wins: rule i fires with p / (1 - i p) so
            # that each kind gets p of all requests.
            p = self.args.fault_total / len(FAULT_KINDS)
            for i, kind in enumerate(FAULT_KINDS):
                self.sim.fault(kind, probability=p / (1 - i * p))
        if list_miss:
            self.sim.fault("list-miss", probability=self.args.list_miss, endpoint="list")

    # -- samples

    def proc_sample(self, pid):
        rss = None
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return None, None
        return rss, fds

    def event_lines(self):
        n = 0
        for run in self.runs:
            try:
                with open(run["events_file"], "rb") as f:
                    n += f.read().count(b"\n")
            except FileNotFoundError:
                pass
        return n

    def sample(self, now, row):
        run = self.runs[-1]
        rss, fds = self.proc_sample(run["pid"])
        st = None
        try:
            st = self.status()
        except (subprocess.SubprocessError, ValueError):
            pass
        wh = (st or {}).get("webhooks") or [{}]
        behind = ((st or {}).get("coverage") or {}).get("behindSeconds")
        if behind is not None:
            self.behind_max = max(self.behind_max, behind)
        delivered, distinct, _ = self.receiver.counts()
        s = {"t": now - self.t_start, "run": run["n"], "run_age": now - run["started"], "rss": rss, "fds": fds,
             "events": self.event_lines(), "deliveries": delivered, "delivered_ids": distinct,
             "queued": wh[0].get("queued"), "behind": behind,
             "stream_clients": (st or {}).get("streamClients"), "receiver_up": self.receiver.up}
        self.samples.append(s)
        if row:
            self.rows.append(s)
            print(self.fmt_row(s), flush=True)

    @staticmethod
    def fmt_header():
        return (f"{'min':>5} {'run':>3} {'RSS MiB':>8} {'fds':>4} {'events':>8} {'delivered':>9} "
                f"{'queue':>6} {'behind s':>8} {'hook':>4}")

    @staticmethod
    def fmt_row(s):
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)
        return (f"{s['t'] / 60:5.1f} {s['run']:3d} {f(s['rss'] and s['rss'] / 2**20, '8.1f')} "
                f"{f(s['fds'], '4d')} {s['events']:8d} {s['deliveries']:9d} {f(s['queued'], '6d')} "
                f"{f(s['behind'], '8.1f')} {'up' if s['receiver_up'] else 'down':>4}")

    # -- the run

    def run(self):
        a = self.args
        self.receiver = Receiver(self.secret)
        self.receiver.start()
        log(f"apisim: {a.sessions:,} sessions in {a.runbooks} runbooks, steps {a.step_min:g}-{a.step_max:g} s, "
            f"stagger {a.stagger:g} s")
        self.start_sim()
        self.write_config()
        self.set_faults(True, False)
        self.start_daemon()
        self.clients = StreamClients(f"{self.run_dir}/events.sock", self.rng)

        # The end of the first sweeps: every runbook swept (the daemon's
        # coverage and sweep counter).
        def first_sweeps():
            st = self.status()
            m = self.metrics()
            return (st and st["coverage"]["sweptScopes"] >= len(self.runbooks)
                    and m.get("sessionwatch_discovery_sweeps_total", 0) >= len(self.runbooks))
        self.sw.wait_until(first_sweeps, timeout=300, interval=0.2, ignore=(OSError, ValueError, TypeError),
                           message="the first sweeps did not finish")
        self.t_first = time.time()
        self.t_start = self.t_first
        log(f"first sweeps done {self.t_first - self.sim_t0:.1f} s after apisim's start; the soak starts")

        # The schedule. Short runs get shortened periods so that each trouble
        # happens at least twice.
        kill_every = min(300.0, self.duration / 2.5)
        hook_every = min(180.0, self.duration / 3)
        hook_down_for = min(60.0, hook_every / 3)
        lm_end = self.duration - self.audit_bound
        self.list_miss_window = None
        if a.list_miss > 0 and lm_end > 60:
            self.set_faults(True, True)
            self.list_miss_window = (self.t_first, self.t_first + lm_end)
            log(f"list-miss on until minute {lm_end / 60:.1f} (audit-interval x 1.1 + 60 s before the drain)")
        else:
            self.notes.append(f"list-miss not used: the run is shorter than audit-interval x 1.1 + 60 s "
                              f"({self.audit_bound:.0f} s)")
        print(self.fmt_header(), flush=True)
        plan = {"row": 0.0, "hup": 60.0, "kill": kill_every, "hook_down": hook_every - hook_down_for,
                "hook_up": None, "client": 5.0, "list_miss_off": lm_end if self.list_miss_window else None,
                "sample": 10.0}
        self.sample(time.time(), True)
        plan["row"] = 30.0
        self.hups = self.kills = 0
        while True:
            now = time.time()
            t = now - self.t_start
            if t >= self.duration:
                break
            p = self.daemon
            if p.poll() is not None:
                self.unexpected_exits.append({"run": self.runs[-1]["n"], "t": t, "how": self.sw.exit_status_text(p.returncode),
                                              "stderr_tail": p.stderr_text()[-2000:]})
                log(f"the daemon exited unexpectedly ({self.sw.exit_status_text(p.returncode)}); restarting")
                self.runs[-1]["end"], self.runs[-1]["end_how"] = now, "exited"
                self.start_daemon()
                continue
            if plan["list_miss_off"] is not None and t >= plan["list_miss_off"]:
                self.set_faults(True, False)
                plan["list_miss_off"] = None
                log("list-miss off")
            if t >= plan["kill"]:
                self.kill_daemon()
                self.kills += 1
                log(f"SIGKILL daemon run {self.runs[-1]['n']}; restarting")
                self.start_daemon()
                plan["kill"] += kill_every
            if t >= plan["hup"]:
                p.signal(signal.SIGHUP)
                self.hups += 1
                plan["hup"] += 60.0
            if plan["hook_down"] is not None and t >= plan["hook_down"]:
                self.receiver.stop()
                log("webhook receiver down")
                plan["hook_up"], plan["hook_down"] = plan["hook_down"] + hook_down_for, None
            if plan["hook_up"] is not None and t >= plan["hook_up"]:
                self.receiver.start()
                log("webhook receiver up")
                plan["hook_down"], plan["hook_up"] = plan["hook_up"] + hook_every - hook_down_for, None
            if t >= plan["client"]:
                self.clients.spawn()
                plan["client"] += self.rng.uniform(10, 30)
            if t >= plan["row"]:
                self.sample(now, True)
                plan["row"] += 30.0
            elif t >= plan["sample"]:
                self.sample(now, False)
            if t >= plan["sample"]:
                plan["sample"] += 10.0
            time.sleep(0.1)
        self.drain()

    def drain(self):
        log("drain: faults off, receiver up")
        self.t_cut = time.time()
        self.set_faults(False, False)
        if not self.receiver.up:
            self.receiver.start()
        self.clients.stopping.set()
        m0 = self.metrics()
        sweeps0 = m0.get("sessionwatch_discovery_sweeps_total", 0)
        lists0 = self.sim.counters(times=False)["lists"]
        run0 = len(self.runs)

        # One more complete sweep of every runbook: each runbook asked for at
        # least twice since the cut (the second request belongs to a sweep
        # that started after it) and as many complete sweeps as runbooks.
        def swept():
            if len(self.runs) != run0 or self.daemon.poll() is not None:
                raise RuntimeError("the daemon exited during the drain")
            lists = self.sim.counters(times=False)["lists"]
            m = self.metrics()
            return (all(lists.get(r, 0) >= lists0.get(r, 0) + 2 for r in self.runbooks)
                    and m.get("sessionwatch_discovery_sweeps_total", 0) >= sweeps0 + 2 * len(self.runbooks))
        self.sw.wait_until(swept, timeout=300, interval=0.5, message="no complete sweep of every runbook")
        self.t_swept = time.time()
        self.sample(time.time(), True)
        # From now on no answer can make an event; wait for the requests in
        # flight and the webhook queue.
        self.t_wall = time.time()
        self.sim.fault("500", probability=1.0)

        def quiet():
            st = self.status()
            wh = st["webhooks"][0]
            return st["inFlight"] == 0 and wh["queued"] == 0 and wh["inFlight"] == 0
        self.sw.wait_until(quiet, timeout=600, interval=0.5, ignore=(TypeError, KeyError),
                           message="the webhook queue did not empty")
        self.final_status = self.status()
        self.t_quiet = time.time()
        log(f"drain done (swept {self.t_swept - self.t_cut:.0f} s after the cut, queue empty "
            f"{self.t_quiet - self.t_wall:.0f} s later); SIGTERM")
        run = self.runs[-1]
        rc = run["process"].stop(timeout=30)
        run["end"], run["end_how"] = time.time(), f"SIGTERM, {self.sw.exit_status_text(rc)}"
        self.final_rc = rc
        self.history = self.sim.history()
        self.sim_counters = self.sim.counters(times=False)
        self.receiver.stop()
        self.sim.stop()
        self.save_raw()

    RAW = ("runbooks", "t_first", "t_start", "t_cut", "t_swept", "t_wall", "t_quiet", "sim_t0", "list_miss_window",
           "history", "sim_counters", "final_status", "final_rc", "rows", "samples", "notes", "unexpected_exits",
           "behind_max", "hups", "kills")

    def save_raw(self):
        """Everything the checks need, so that they can be run again
        (--recheck) without running the soak again."""
        raw = {k: getattr(self, k) for k in self.RAW}
        raw["runs"] = [{k: v for k, v in r.items() if k != "process"} for r in self.runs]
        raw["delivered"] = dict(self.receiver.delivered)
        raw["receiver"] = {"requests": self.receiver.requests, "bad_signatures": self.receiver.bad_signatures,
                           "downs": self.receiver.downs}
        raw["clients"] = dict(self.clients.stats)
        with open(os.path.join(self.work, "raw.json"), "w") as f:
            json.dump(raw, f)

    def load_raw(self):
        with open(os.path.join(self.work, "raw.json")) as f:
            raw = json.load(f)
        for k in self.RAW:
            setattr(self, k, raw[k])
        self.runs = raw["runs"]
        self.receiver = Receiver(self.secret)
        self.receiver.delivered = collections.Counter(raw["delivered"])
        self.receiver.requests = raw["receiver"]["requests"]
        self.receiver.bad_signatures = raw["receiver"]["bad_signatures"]
        self.receiver.downs = raw["receiver"]["downs"]
        self.clients = StreamClients(None, self.rng)
        self.clients.stats = collections.Counter(raw["clients"])

    # -- checks

    def read_events(self):
        events, torn = [], 0
        for run in self.runs:
            with open(run["events_file"], "rb") as f:
                data = f.read()
            lines = data.split(b"\n")
            if lines[-1]:
                torn += 1
            for raw in lines[:-1]:
                if raw.startswith(b"{"):
                    try:
                        e = json.loads(raw)
                    except ValueError:
                        torn += 1
                        continue
                    e["_run"] = run["n"]
                    events.append(e)
        return events, torn

    def check(self):
        a = self.args
        events, torn = self.read_events()
        by_key = collections.defaultdict(list)
        gone, other_events = [], 0
        for e in events:
            d = e.get("data") or {}
            if e.get("type") == "sessionwatch.session.gone":
                gone.append(e["subject"])
                continue
            if d.get("status") is None or "session" not in d:
                other_events += 1
                continue
            by_key[(e["subject"], d["status"], time_us(d["session"]["updatedAt"]))].append(e)

        def find(sid, status, us):
            for k in (us, us - 1, us + 1):
                if (sid, status, k) in by_key:
                    return (sid, status, k)
            return None

        hist_keys = set()
        for sid, steps in self.history.items():
            for t, status in steps:
                us = round(t * 1e6)
                for k in (us, us - 1, us + 1):
                    hist_keys.add((sid, status, k))
        unmatched = [k for k in by_key if k not in hist_keys]

        repeats = sum(len(v) - 1 for v in by_key.values())
        id_conflicts = [k for k, v in by_key.items() if len({e["id"] for e in v}) > 1]
        repeats_by_run_pair = collections.Counter(
            "same run" if len({e["_run"] for e in v}) < len(v) else "after restart"
            for v in by_key.values() if len(v) > 1)

        t_from, t_to = self.t_first, self.t_cut
        run_start = {r["n"]: r["started"] for r in self.runs}
        delays = {"steady": [], "after_restart": []}
        changes = missing = 0
        collapsed, missing_ex, collapsed_ex = [], [], []
        for sid, steps in self.history.items():
            # The events of this session by updatedAt, for the collapse proof.
            announced = []  # (us, status, previousStatus)
            for i, (t, status) in enumerate(steps):
                k = find(sid, status, round(t * 1e6))
                if k:
                    announced.append((t, status, by_key[k][0]["data"].get("previousStatus")))
            prev_collapsed = False
            for i, (t, status) in enumerate(steps):
                if not t_from <= t < t_to:
                    continue
                changes += 1
                k = find(sid, status, round(t * 1e6))
                if k:
                    prev_collapsed = False
                    first = min(by_key[k], key=lambda e: time_us(e["time"]))
                    et = time_us(first["time"]) / 1e6
                    started = run_start[first["_run"]]
                    # Announced in the first 200 s of a restarted daemon or not.
                    group = "after_restart" if first["_run"] > 1 and et - started < 200 else "steady"
                    delays[group].append(et - t)
                    continue
                before = [x for x in announced if x[0] < t]
                after = [x for x in announced if x[0] > t]
                last_known = before[-1][1] if before else None
                held = steps[i + 1][0] - t if i + 1 < len(steps) else None
                lm = self.list_miss_window
                why = None
                if prev_collapsed and status == last_known:
                    why = "folded: the same status as the daemon knew before the collapsed one"
                elif (lm and lm[0] - 10 <= t <= lm[1] and held is not None and held <= self.audit_bound
                      and steps[i + 1][0] < t_to and last_known is not None
                      and ((after and after[0][2] == last_known and after[0][0] == steps[i + 1][0])
                           or steps[i + 1][1] == last_known)):
                    why = f"held {held:.0f} s; the next event has previousStatus {last_known}"
                ex = {"session": sid, "status": status, "at_min": round((t - self.t_start) / 60, 2),
                      "held_s": None if held is None else round(held, 1), "daemon_knew": last_known,
                      "gone": sid in gone}
                if why:
                    if not why.startswith("folded"):
                        collapsed.append(ex)
                    ex["why"] = why
                    collapsed_ex.append(ex)
                    prev_collapsed = True
                else:
                    missing += 1
                    missing_ex.append(ex)
                    prev_collapsed = False
        list_missed = self.sim_counters["faults"].get("list-miss", 0)

        def quantiles(v):
            v = sorted(v)
            if not v:
                return None
            return {"n": len(v), "p50": v[len(v) // 2], "p99": v[min(len(v) - 1, int(len(v) * 0.99))],
                    "max": v[-1]}
        delay_stats = {k: quantiles(v) for k, v in delays.items()}
        folded = len(collapsed_ex) - len(collapsed)

        delivered = self.receiver.delivered
        ids = {e["id"] for e in events}
        undelivered = sorted(i for i in ids if delivered.get(i, 0) == 0)
        dup_delivered = sum(1 for i, n in delivered.items() if n > 1)
        extra_delivered = sum(1 for i in delivered if i not in ids)

        verdicts = []

        def verdict(name, ok, detail):
            verdicts.append({"check": name, "ok": bool(ok), "detail": detail})

        verdict("every transition announced", missing == 0 and len(collapsed) <= list_missed,
                f"{changes:,} transitions from minute 0 to the drain; {missing} missing; "
                f"{len(collapsed)} collapsed by list-miss (+{folded} folded), at most {list_missed} allowed "
                f"(entries apisim left out)")
        verdict("exactly once (repeats only with the same id)", not id_conflicts,
                f"{repeats} repeated lines, all with the same event id; {len(id_conflicts)} keys with two ids; "
                f"repeats: {dict(repeats_by_run_pair)}")
        verdict("no event without a transition", not unmatched,
                f"{len(unmatched)} events match no transition of apisim's history; {len(gone)} gone events")
        verdict("every event delivered to the webhook", not undelivered and self.receiver.bad_signatures == 0,
                f"{len(ids):,} event ids, {len(undelivered)} never delivered; {sum(delivered.values()):,} "
                f"deliveries of {len(delivered):,} ids, {dup_delivered:,} delivered more than once, "
                f"{self.receiver.bad_signatures} bad signatures")
        verdict("the daemon ran without crashing", not self.unexpected_exits and self.final_rc == 0,
                f"{len(self.unexpected_exits)} unexpected exits; final stop: {self.runs[-1]['end_how']}")

        # Memory and descriptors: samples after warm-up (the first tenth of
        # the run, at least 60 s) and at least 60 s into their daemon run.
        warm = max(60.0, self.duration / 10)
        good = [s for s in self.samples if s["t"] >= warm and s["run_age"] >= 60 and s["rss"]]
        # The first run takes in every session with its first sweep, which
        # leaves it higher than the restarted runs: when there are restarted
        # runs, only they are compared (a lower, stricter baseline).
        later = [s for s in good if s["run"] >= 2]
        runs_note = ""
        if len(later) >= 3:
            good, runs_note = later, "; runs 2 and later (run 1 peaks higher after its first sweeps)"
        rss_ok, rss_detail = True, "too few samples"
        if len(good) >= 3:
            n3 = max(1, len(good) // 3)
            first, last = max(s["rss"] for s in good[:n3]), max(s["rss"] for s in good[-n3:])
            margin = max(0.10 * first, 4 * 2**20)
            rss_ok = last <= first + margin
            rss_detail = (f"max RSS first third {first / 2**20:.1f} MiB, last third {last / 2**20:.1f} MiB "
                          f"(margin {margin / 2**20:.1f} MiB: 10 %, at least 4 MiB){runs_note}")
        verdict("RSS flat after warm-up", rss_ok, rss_detail)
        fd_ok, fd_parts = True, []
        for run in self.runs:
            rs = [s for s in self.samples if s["run"] == run["n"] and s["fds"] is not None
                  and s["run_age"] >= 30 and s["t"] >= 0]
            if len(rs) < 3:
                continue
            n3 = max(1, len(rs) // 3)
            first, last = max(s["fds"] for s in rs[:n3]), max(s["fds"] for s in rs[-n3:])
            ok = last <= first + 8
            fd_ok &= ok
            fd_parts.append(f"run {run['n']}: {first}->{last}{'' if ok else ' (grew)'}")
        verdict("open fds flat within each run", fd_ok,
                "max fds first third -> last third (margin 8: connections and stream clients come and go): "
                + ", ".join(fd_parts) if fd_parts else "too few samples")

        self.result = {
            "minutes": self.minutes,
            "settings": {k: v for k, v in vars(a).items() if k != "build"},
            "runbooks": self.runbooks,
            "first_sweeps_after_apisim_start_s": self.t_first - self.sim_t0,
            "transitions_checked": changes,
            "events": len(events),
            "event_keys": len(by_key),
            "event_ids": len(ids),
            "torn_lines": torn,
            "repeats_same_id": repeats,
            "repeats": dict(repeats_by_run_pair),
            "id_conflicts": [list(k) for k in id_conflicts[:50]],
            "missing": missing,
            "missing_examples": missing_ex[:50],
            "collapsed_by_list_miss": len(collapsed),
            "folded_after_collapse": folded,
            "collapsed_examples": collapsed_ex[:50],
            "list_miss_served": list_missed,
            "list_miss_window_min": None if not self.list_miss_window else
            [0, round((self.list_miss_window[1] - self.t_start) / 60, 2)],
            "unmatched_events": len(unmatched),
            "unmatched_examples": [list(k) for k in unmatched[:20]],
            "gone_events": gone[:50],
            "other_events": other_events,
            "webhook": {"deliveries": sum(delivered.values()), "distinct_ids": len(delivered),
                        "undelivered": len(undelivered), "undelivered_examples": undelivered[:20],
                        "delivered_more_than_once": dup_delivered, "not_in_log": extra_delivered,
                        "requests": self.receiver.requests, "bad_signatures": self.receiver.bad_signatures,
                        "receiver_downs": self.receiver.downs},
            "stream_clients": dict(self.clients.stats),
            "daemon_runs": [{k: v for k, v in r.items() if k not in ("process",)} for r in self.runs],
            "sighups": self.hups,
            "sigkills": self.kills,
            "unexpected_exits": self.unexpected_exits,
            "behind_max_s": self.behind_max,
            "detection_delay_s": delay_stats,
            "apisim_requests": self.sim_counters["requests"],
            "apisim_faults": self.sim_counters["faults"],
            "drain_s": {"swept_after_cut": self.t_swept - self.t_cut, "quiet_after_wall": self.t_quiet - self.t_wall},
            "final_status": self.final_status,
            "notes": self.notes,
            "rows": self.rows,
            "samples": self.samples,
            "verdicts": verdicts,
        }
        return all(v["ok"] for v in verdicts)

    def report(self):
        r = self.result
        print()
        print(f"Soak: {self.minutes:g} minutes, {len(self.runs)} daemon runs ({r['sigkills']} SIGKILLs, "
              f"{r['sighups']} SIGHUPs), webhook receiver down {r['webhook']['receiver_downs']} times")
        print(self.fmt_header())
        for s in self.rows:
            print(self.fmt_row(s))
        print()
        print(f"transitions checked {r['transitions_checked']:,}; events {r['events']:,} "
              f"({r['event_keys']:,} distinct, {r['repeats_same_id']} repeats with the same id); "
              f"missing {r['missing']}; collapsed by list-miss {r['collapsed_by_list_miss']} "
              f"(+{r['folded_after_collapse']} folded) of {r['list_miss_served']} entries left out; "
              f"webhook deliveries {r['webhook']['deliveries']:,} ({r['webhook']['delivered_more_than_once']:,} "
              f"ids delivered more than once); schedule behind at most {r['behind_max_s']:.1f} s")
        for k, q in r["detection_delay_s"].items():
            if q:
                print(f"detection delay ({k.replace('_', ' ')}, event time - updatedAt): {q['n']:,} transitions, "
                      f"p50 {q['p50']:.1f} s, p99 {q['p99']:.1f} s, max {q['max']:.1f} s")
        print(f"apisim: {r['apisim_requests']}; faults served {r['apisim_faults']}")
        print(f"stream clients: {r['stream_clients']}")
        for ex in r["missing_examples"][:10]:
            print(f"  missing: {ex}")
        for ex in r["collapsed_examples"][:5]:
            print(f"  collapsed: {ex}")
        for note in r["notes"]:
            print(f"note: {note}")
        for v in r["verdicts"]:
            print(f"{'PASS' if v['ok'] else 'FAIL'}  {v['check']}: {v['detail']}")

    def cleanup(self):
        if self.clients:
            self.clients.stopping.set()
        for run in self.runs:
            try:
                run["process"].kill()
            except Exception:
                pass
        if self.sim and self.sim.popen:
            self.sim.kill()
        if self.receiver and self.receiver.up:
            try:
                self.receiver.stop()
            except Exception:
                pass


def json_safe(v):
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, float) and v != v:
        return None
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("minutes", nargs="?", type=float, default=30.0)
    ap.add_argument("--build", required=True)
    ap.add_argument("--json", help="results file (default BUILD/soak-results.json)")
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--runbooks", type=int, default=20)
    ap.add_argument("--step-min", type=float, default=30)
    ap.add_argument("--step-max", type=float, default=1800)
    ap.add_argument("--stagger", type=float, default=1800)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--fault-total", type=float, default=0.05,
                    help="share of API requests that fail, split evenly over the HTTP fault kinds")
    ap.add_argument("--list-miss", type=float, default=0.01, help="share of list answers that leave out an entry")
    ap.add_argument("--audit-interval", type=float, default=300.0, help="[poll] audit-interval in seconds")
    ap.add_argument("--recheck", action="store_true",
                    help="only run the checks again on the data of the last run (BUILD/soak-work/raw.json)")
    ap.add_argument("--retry-max", type=float, default=30.0, help="the webhook's retry-max in seconds")
    args = ap.parse_args()
    soak = Soak(args)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    ok = False
    try:
        if args.recheck:
            soak.load_raw()
        else:
            soak.run()
        ok = soak.check()
        soak.report()
        path = args.json or os.path.join(soak.build, "soak-results.json")
        with open(path, "w") as f:
            json.dump(json_safe(soak.result), f, indent=1)
        print(f"results: {path}; logs: {soak.work}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        ok = False
    finally:
        soak.cleanup()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
