"""Shared helpers for the sessionwatch integration tests.

Every ``tests/integration/test_*.py`` is one ctest test that starts real
processes. This module holds what they have in common, using only the Python
standard library:

* polling instead of sleeping: :func:`wait_until`;
* per-test temporary trees with ``state/``, ``run/`` and ``conf/``:
  :class:`TempDirs` and :func:`temp_dirs`;
* managed child processes with their output captured in files that stay
  readable while the process runs: :class:`Process`;
* the API simulator: :class:`ApiSim`;
* the daemon under test and its INI configuration: :class:`Daemon`,
  :func:`render_ini`;
* a real Prometheus server scraping the daemon: :class:`Prometheus`;
* a real, private ``systemd-journald`` in its own mount namespace:
  :class:`JournalNamespace`;
* small utilities: :func:`free_port`, :func:`read_json_lines`,
  :func:`http_get`, :func:`http_request`.

Paths of the binaries come from the environment, as set by
``tests/integration/CMakeLists.txt``: ``SW_APISIM``, ``SW_DAEMON``,
``SW_CTL``, ``SW_BUILD_DIR`` and ``SW_SOURCE_DIR``.

Other environment variables understood here:

``SW_KEEP_TMP``
    ``1`` keeps the temporary tree of a failed test (its path is printed),
    ``always`` keeps every tree.
``SW_TIMEOUT_SCALE``
    A factor applied to every timeout (for slow builds such as valgrind or
    sanitizers); default 1.
``SW_JOURNALD_DEBUG``
    ``1`` runs the private journald with debug logging (in its log file).
"""

import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

# Exit codes of sessionwatchd (DESIGN.md section 4).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h

DEFAULT_API_KEY = "test-key"

# Variables that make a program believe it runs under systemd (socket
# activation, notification, credentials, journal stream). They are removed
# from the environment of every child so that a test behaves the same when
# the test runner itself is a systemd service; a test that needs one of them
# passes it explicitly.
SYSTEMD_ENV_VARS = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
    "INVOCATION_ID",
    "CREDENTIALS_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "STATE_DIRECTORY",
    "CONFIGURATION_DIRECTORY",
    "LOGS_DIRECTORY",
    "CACHE_DIRECTORY",
    "MAINPID",
    "MANAGERPID",
    "SYSTEMD_EXEC_PID",
)


# ---------------------------------------------------------------------------
# Environment and timing
# ---------------------------------------------------------------------------


def timeout_scale():
    """Return the factor applied to all timeouts (env ``SW_TIMEOUT_SCALE``)."""
    raw = os.environ.get("SW_TIMEOUT_SCALE", "")
    try:
        value = float(raw) if raw else 1.0
    except ValueError:
        raise ValueError(f"SW_TIMEOUT_SCALE is not a number: {raw!r}") from None
    return value if value > 0 else 1.0


def scaled(seconds):
    """Return ``seconds`` multiplied by :func:`timeout_scale`."""
    return seconds * timeout_scale()


def binary_path(var):
    """Return the path in environment variable ``var`` (e.g. ``SW_APISIM``).

    Raises AssertionError when the variable is unset or the file is not an
    executable, so a test that needs the binary fails with a clear message.
    """
    path = os.environ.get(var)
    if not path:
        raise AssertionError(f"{var} is not set (run the test through ctest, or set it)")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError(f"{var}={path} is not an executable file (is it built?)")
    return path


def have_binary(var):
    """Return True when environment variable ``var`` names an executable.

    Not a reason to skip a test that needs a binary built with the project
    (apisim, the daemon, sessionwatchctl): such a test calls
    :func:`binary_path` and fails when it is missing."""
    path = os.environ.get(var)
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def child_env(extra=None):
    """Return the environment for a child process.

    It is the current environment without :data:`SYSTEMD_ENV_VARS`, updated
    with ``extra``; a value of None in ``extra`` removes that variable.
    """
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV_VARS}
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def wait_until(predicate, timeout=10, interval=0.02, message=None, ignore=()):
    """Poll ``predicate()`` until it returns a true value, and return that value.

    ``timeout`` is in seconds (scaled by ``SW_TIMEOUT_SCALE``). The predicate
    is always called at least once, and once more at the deadline. On timeout
    an AssertionError is raised with ``message`` (a string, or a callable
    returning one, evaluated only on failure so it can describe the current
    state). Exceptions of the types in ``ignore`` count as "not yet"; the
    last one is mentioned in the error.
    """
    deadline = time.monotonic() + scaled(timeout)
    last_exc = None
    while True:
        final = time.monotonic() >= deadline
        try:
            value = predicate()
        except ignore as exc:  # an empty tuple catches nothing
            value, last_exc = None, exc
        if value:
            return value
        if final:
            break
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    text = message() if callable(message) else message
    text = text or f"condition {getattr(predicate, '__name__', predicate)!r} not met"
    detail = f" (last error: {last_exc!r})" if last_exc is not None else ""
    raise AssertionError(f"{text}: still false after {scaled(timeout):g}s{detail}")


def _test_failed(testcase):
    """Return True when ``testcase`` has failed so far (or it cannot be told).

    Meant to be called from a cleanup registered with ``addCleanup``. unittest
    resets its "success" flag for each cleanup, so the failures and errors
    already reported to the test result are looked at instead (a failed
    subtest counts).
    """
    outcome = getattr(testcase, "_outcome", None)
    result = getattr(outcome, "result", None)
    if result is None or not hasattr(result, "failures"):
        return True
    for test, _ in list(result.failures) + list(result.errors):
        if test is testcase or getattr(test, "test_case", None) is testcase:
            return True
    return False


# ---------------------------------------------------------------------------
# Temporary directories
# ---------------------------------------------------------------------------


class TempDirs:
    """A fresh temporary tree for one test: ``root`` with ``state/``, ``run/``
    and ``conf/`` below it.

    ``cleanup(failed)`` removes the tree, unless ``SW_KEEP_TMP`` asks to keep
    it (``1``: when ``failed``; ``always``: in any case), in which case its
    path is printed on stderr. Usable as a context manager (an exception
    counts as a failure).
    """

    def __init__(self, prefix="swtest-"):
        self.root = tempfile.mkdtemp(prefix=prefix)
        self.state = os.path.join(self.root, "state")
        self.run = os.path.join(self.root, "run")
        self.conf = os.path.join(self.root, "conf")
        for path in (self.state, self.run, self.conf):
            os.mkdir(path, 0o755)
        self.removed = False

    def path(self, *parts):
        """Return a path below the root (nothing is created)."""
        return os.path.join(self.root, *parts)

    def write(self, relpath, content, mode=0o644):
        """Write ``content`` (str or bytes) to ``relpath`` below the root with
        permissions ``mode``, creating parent directories; return the path."""
        path = self.path(relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)
        return path

    def keep_wanted(self, failed):
        """Return True when ``SW_KEEP_TMP`` asks to keep the tree."""
        keep = os.environ.get("SW_KEEP_TMP", "")
        return keep == "always" or (failed and keep not in ("", "0"))

    def cleanup(self, failed=False):
        """Remove the tree (or keep it, see the class); safe to call twice."""
        if self.removed:
            return
        self.removed = True
        if self.keep_wanted(failed):
            print(f"swtest: kept temporary directory {self.root}", file=sys.stderr)
            return
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.cleanup(failed=exc_type is not None)
        return False


def temp_dirs(testcase, prefix=None):
    """Return a new :class:`TempDirs` removed when ``testcase`` ends.

    The cleanup runs after the test's other cleanups registered later (so
    processes using the tree are stopped first) and keeps the tree of a
    failed test when ``SW_KEEP_TMP=1``.
    """
    tmp = TempDirs(prefix=prefix or f"swtest-{testcase._testMethodName}-")
    testcase.addCleanup(lambda: tmp.cleanup(failed=_test_failed(testcase)))
    return tmp


# ---------------------------------------------------------------------------
# Small utilities
# ---------------------------------------------------------------------------


def free_port(host="127.0.0.1"):
    """Return a TCP port that was free a moment ago on ``host``.

    Another process may take it before it is used; prefer letting a server
    bind port 0 and report its port (as apisim does with ``--port-file``).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def read_json_lines(path, complete_only=True):
    """Parse a file of one JSON value per line and return the list of values.

    Blank lines are skipped. With ``complete_only`` a last line without a
    newline is ignored, because the writer may still be in the middle of it.
    A missing file reads as an empty list. A complete line that is not JSON
    raises AssertionError naming the file and line.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if complete_only:
        lines = lines[:-1]  # the text after the last newline, maybe empty
    values = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            values.append(json.loads(raw))
        except ValueError as exc:
            raise AssertionError(f"{path}:{number}: not JSON ({exc}): {raw[:200]!r}") from None
    return values


class HttpResponse:
    """A finished HTTP exchange: ``status`` (int), ``headers`` (an
    ``email.message.Message``, case-insensitive ``get``) and ``body`` (bytes)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self):
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self):
        """The body parsed as JSON (AssertionError when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise AssertionError(f"HTTP {self.status} body is not JSON ({exc}): {self.body[:300]!r}") from None

    def __repr__(self):
        return f"HttpResponse(status={self.status}, body={self.body[:120]!r})"


# One opener without proxies: test traffic goes to loopback and must never be
# sent to a proxy named in http_proxy and the like.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_request(method, url, body=None, headers=None, timeout=10):
    """Send one HTTP request and return an :class:`HttpResponse`.

    ``body`` is bytes, str, or a JSON-serialisable object (sent as
    ``application/json``). Any status, 4xx and 5xx included, is returned, not
    raised; connection errors raise ``OSError`` (``urllib.error.URLError``).
    """
    headers = dict(headers or {})
    data = None
    if body is not None:
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(request, timeout=scaled(timeout)) as response:
            return HttpResponse(response.status, response.headers, response.read())
    except urllib.error.HTTPError as err:
        with err:
            return HttpResponse(err.code, err.headers, err.read())


def http_get(url, headers=None, timeout=10):
    """``GET url`` and return an :class:`HttpResponse` (see :func:`http_request`)."""
    return http_request("GET", url, headers=headers, timeout=timeout)


# ---------------------------------------------------------------------------
# Exit codes
# ---------------------------------------------------------------------------


def exit_status_text(returncode):
    """Describe a ``subprocess`` return code: ``exit 78 (EX_CONFIG)``,
    ``killed by SIGKILL``, ``still running`` (for None)."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    names = {EXIT_OK: "success", EXIT_FAILURE: "failure", EXIT_CONFIG: "EX_CONFIG"}
    suffix = f" ({names[returncode]})" if returncode in names else ""
    return f"exit {returncode}{suffix}"


def assert_exit(returncode, expected, process=None):
    """Raise AssertionError unless ``returncode == expected``; the message has
    both statuses and, when ``process`` is given, the tail of its stderr."""
    if returncode == expected:
        return
    text = f"expected {exit_status_text(expected)}, got {exit_status_text(returncode)}"
    if process is not None:
        text += f"\n{process.describe()}"
    raise AssertionError(text)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


_SETPRIV = shutil.which("setpriv")

# Aliases for default arguments in classes with a method named "signal".
_SIGTERM = signal.SIGTERM
_SIGKILL = signal.SIGKILL


def _pdeath_prefix(sig):
    """Return an argv prefix making the child receive ``sig`` when the test
    process dies, so a crashed or killed test leaves no process behind."""
    if sig is None or _SETPRIV is None:
        return []
    return [_SETPRIV, "--pdeathsig", signal.Signals(sig).name[3:], "--"]


def _still_in_setpriv(pid):
    """Return True while process ``pid`` runs ``setpriv``: it has not exec'd
    the next program yet, so it may not have made its
    ``prctl(PR_SET_PDEATHSIG)`` yet either.

    Only ``/proc/PID/exe`` is looked at (the command line is not: it reads
    empty for a moment during an exec). False once it is another file, and
    when it cannot be read: a process that is exiting or a zombie has none,
    and one that we may not inspect has exec'd something with other
    credentials (setpriv runs with ours). A wrapper that is setpriv again is
    waited for too, until the last one has exec'd.
    """
    try:
        exe = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return False
    ours = os.stat(_SETPRIV)
    return (exe.st_dev, exe.st_ino) == (ours.st_dev, ours.st_ino)


def _match_line(predicate):
    """Turn a substring, compiled regex or callable into a line predicate."""
    if isinstance(predicate, str):
        return lambda line: predicate in line
    if isinstance(predicate, re.Pattern):
        return lambda line: predicate.search(line) is not None
    return predicate


class Process:
    """A child process whose stdout and stderr go to files in ``workdir``.

    The files (``<name>.stdout``, ``<name>.stderr``; a numeric suffix is added
    when the name is taken) can be read at any time, also while the process
    runs. ``argv`` is run as ``wrapper + argv``; ``wrapper`` is for example
    :meth:`JournalNamespace.wrap`'s prefix. The child gets ``pdeathsig``
    (default SIGKILL) if the test process dies. ``env`` is applied on top of
    :func:`child_env`.

    A Process is started once (:meth:`start`); start a new one to restart.
    """

    def __init__(self, argv, workdir, name=None, env=None, wrapper=(), cwd=None,
                 pdeathsig=_SIGKILL, stdin=subprocess.DEVNULL):
        self.argv = [str(a) for a in argv]
        self.workdir = str(workdir)
        self.name = name or os.path.basename(self.argv[0])
        self.env = child_env(env)
        self.wrapper = [str(a) for a in wrapper]
        self.cwd = cwd
        self.pdeathsig = pdeathsig
        self.stdin = stdin
        self.popen = None
        self.returncode = None
        base = os.path.join(self.workdir, self.name)
        candidate, n = base, 1
        while os.path.exists(candidate + ".stdout"):
            n += 1
            candidate = f"{base}.{n}"
        self.stdout_path = candidate + ".stdout"
        self.stderr_path = candidate + ".stderr"

    # -- lifecycle ---------------------------------------------------------

    def full_argv(self):
        """The command line actually executed (prefixes included)."""
        return _pdeath_prefix(self.pdeathsig) + self.wrapper + self.argv

    def start(self, timeout=10):
        """Start the process and return self.

        With a ``pdeathsig``, start() returns only once the death signal is
        in force, so a test killed right after it leaves nothing behind.
        Popen returns once ``setpriv`` has been exec'd; setpriv makes its
        prctl and then execs ``wrapper + argv``, so start() waits (up to
        ``timeout`` seconds, scaled) until the process is no longer
        setpriv (or has exited). If it still is at the deadline, the process
        is killed and AssertionError is raised.
        """
        if self.popen is not None:
            raise RuntimeError(f"{self.name}: already started")
        argv = self.full_argv()
        # The child holds its own copies of these descriptors; ours are closed
        # at once so nothing leaks when a test forgets to clean up.
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(argv, stdin=self.stdin, stdout=out, stderr=err,
                                          env=self.env, cwd=self.cwd, close_fds=True)
        if not _pdeath_prefix(self.pdeathsig):
            return self
        pid = self.popen.pid

        def death_signal_set():
            # An exited process is reaped here; its return code is kept.
            return self.poll() is not None or not _still_in_setpriv(pid)

        try:
            wait_until(death_signal_set, timeout=timeout, interval=0.001,
                       message=lambda: f"{self.name} (pid {pid}) is still setpriv: it did not exec "
                                       f"{(self.wrapper + self.argv)[0]}, so its parent-death signal "
                                       f"is not known to be set\n{self.describe()}")
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def pid(self):
        """The process id (None before start)."""
        return self.popen.pid if self.popen else None

    def poll(self):
        """Return the return code, or None while running."""
        if self.popen is not None and self.returncode is None:
            self.returncode = self.popen.poll()
        return self.returncode

    @property
    def running(self):
        """True between start and exit."""
        return self.popen is not None and self.poll() is None

    def wait(self, timeout=10):
        """Wait for the exit and return the return code (negative: killed by a
        signal). AssertionError if the process is still running at timeout."""
        try:
            self.returncode = self.popen.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} (pid {self.pid}) did not exit within "
                                 f"{scaled(timeout):g}s\n{self.describe()}") from None
        return self.returncode

    def signal(self, sig):
        """Send ``sig`` to the process (no-op once it has exited)."""
        if self.running:
            self.popen.send_signal(sig)

    def stop(self, timeout=10, sig=_SIGTERM):
        """Send ``sig`` (SIGTERM), wait up to ``timeout`` and return the return
        code. A process that does not exit in time is killed with SIGKILL and
        AssertionError is raised."""
        if self.popen is None:
            raise RuntimeError(f"{self.name}: not started")
        if self.poll() is not None:
            return self.returncode
        self.signal(sig)
        try:
            return self.wait(timeout)
        except AssertionError:
            self.kill()
            raise

    def kill(self):
        """Kill the process with SIGKILL, reap it and return the return code."""
        if self.popen is None:
            return None
        if self.poll() is None:
            self.popen.kill()
            self.returncode = self.popen.wait()
        return self.returncode

    def cleanup(self):
        """Kill the process if it still runs; safe to call any time."""
        self.kill()

    def register(self, testcase):
        """Have ``testcase`` kill the process at its end, and print the tail of
        its output on stderr when the test failed. Returns self."""
        def done():
            if _test_failed(testcase) and self.popen is not None:
                print(f"\n--- {self.name} ---\n{self.describe()}", file=sys.stderr)
            self.cleanup()
        testcase.addCleanup(done)
        return self

    def __enter__(self):
        if self.popen is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.cleanup()
        return False

    # -- output ------------------------------------------------------------

    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self):
        """Everything written to stdout so far."""
        return self._read(self.stdout_path)

    def stderr_text(self):
        """Everything written to stderr so far."""
        return self._read(self.stderr_path)

    def stdout_lines(self, complete_only=False):
        """Stdout split into lines (without newlines). With ``complete_only``
        a last line not yet ended by a newline is left out."""
        return self._lines(self.stdout_text(), complete_only)

    def stderr_lines(self, complete_only=False):
        """Stderr split into lines, as :meth:`stdout_lines`."""
        return self._lines(self.stderr_text(), complete_only)

    @staticmethod
    def _lines(text, complete_only):
        lines = text.split("\n")
        last = lines.pop()  # text after the last newline
        if last and not complete_only:
            lines.append(last)
        return lines

    def describe(self, tail=40):
        """A short report for error messages: command, status, last lines."""
        def cut(text):
            lines = text.splitlines()
            extra = f"[... {len(lines) - tail} lines]\n" if len(lines) > tail else ""
            return extra + "\n".join(lines[-tail:])
        return (f"{self.name}: {' '.join(self.argv)}\n"
                f"status: {exit_status_text(self.poll()) if self.popen else 'not started'}\n"
                f"stdout ({self.stdout_path}):\n{cut(self.stdout_text())}\n"
                f"stderr ({self.stderr_path}):\n{cut(self.stderr_text())}")

    def _wait_for_output(self, which, predicate, timeout):
        match = _match_line(predicate)
        lines_of = self.stdout_lines if which == "stdout" else self.stderr_lines

        def found():
            exited = self.poll() is not None  # checked before reading: no lost output
            for line in lines_of(complete_only=not exited):
                if match(line):
                    return line
            if exited:
                raise AssertionError(f"{self.name} exited before writing the expected line "
                                     f"to {which}\n{self.describe()}")
            return None

        return wait_until(found, timeout=timeout,
                          message=lambda: f"{self.name}: no matching line on {which}\n{self.describe()}")

    def wait_for_stdout(self, predicate, timeout=10):
        """Wait for a complete stdout line matching ``predicate`` (a substring,
        a compiled regex or a callable) and return it. Fails at once if the
        process exits without writing one."""
        return self._wait_for_output("stdout", predicate, timeout)

    def wait_for_stderr(self, predicate, timeout=10):
        """As :meth:`wait_for_stdout`, for stderr."""
        return self._wait_for_output("stderr", predicate, timeout)


# ---------------------------------------------------------------------------
# apisim
# ---------------------------------------------------------------------------


class ApiSimError(AssertionError):
    """An admin request to apisim got a status other than 2xx."""

    def __init__(self, method, path, response):
        self.status = response.status
        self.response = response
        super().__init__(f"apisim {method} {path}: HTTP {response.status}: {response.text[:500]}")


class ApiSim(Process):
    """The Airplane API simulator (``$SW_APISIM``) on a free loopback port.

    ``scenario`` is a dict (written as JSON to a file) or a file path. The API
    key (default ``test-key``) is given through a key file. Other keyword
    arguments map to the command line options of the same name (``sessions``,
    ``seed``, ``step_min``, ``step_max``, ``runbooks``, ``threads``,
    ``list_ids``, ``request_log``); ``extra_args`` are appended verbatim.
    See the comment at the top of ``tests/apisim/apisim.c`` for the scenario
    format, the admin API and the fault kinds.

    After :meth:`start`: ``port``, ``url`` (``http://127.0.0.1:PORT/v0``),
    ``origin`` (``http://127.0.0.1:PORT``) and ``key``. :meth:`stop` asserts
    a clean exit (0 on SIGTERM).
    """

    def __init__(self, tmp, scenario=None, key=DEFAULT_API_KEY, prefix="/v0", listen="127.0.0.1",
                 sessions=None, seed=None, step_min=None, step_max=None, runbooks=None,
                 threads=None, list_ids=None, request_log=None, quiet=True, extra_args=(), binary=None,
                 env=None, wrapper=(), name="apisim"):
        workdir = tmp.root if isinstance(tmp, TempDirs) else str(tmp)
        self.key = key
        self.prefix = prefix
        self.listen = listen
        self.port = None
        self.port_file = _unique_path(workdir, f"{name}.port")
        argv = [binary or binary_path("SW_APISIM"), "--listen", listen, "--port", "0",
                "--port-file", self.port_file, "--prefix", prefix]
        if key is not None:
            self.key_file = _unique_path(workdir, f"{name}.key")
            _write_private(self.key_file, key)
            argv += ["--key-file", self.key_file]
        if scenario is not None:
            if isinstance(scenario, (dict, list)):
                path = _unique_path(workdir, f"{name}.scenario.json")
                with open(path, "w") as f:
                    json.dump(scenario, f, indent=1)
                scenario = path
            argv += ["--scenario", str(scenario)]
        options = {"--sessions": sessions, "--seed": seed, "--step-min": step_min,
                   "--step-max": step_max, "--runbooks": runbooks, "--threads": threads,
                   "--list-ids": list_ids, "--request-log": request_log}
        for option, value in options.items():
            if value is not None:
                argv += [option, str(value)]
        if quiet:
            argv.append("--quiet")
        argv += list(extra_args)
        super().__init__(argv, workdir, name=name, env=env, wrapper=wrapper)

    def start(self, timeout=10):
        """Start apisim and wait until it listens (its port file is written)."""
        super().start()

        def port_ready():
            if self.poll() is not None:
                raise AssertionError(f"apisim exited during start-up\n{self.describe()}")
            try:
                with open(self.port_file) as f:
                    text = f.read().strip()
            except FileNotFoundError:
                return None
            return int(text) if text.isdigit() and int(text) > 0 else None

        try:
            self.port = wait_until(port_ready, timeout=timeout,
                                   message=lambda: f"apisim wrote no port file\n{self.describe()}")
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def origin(self):
        """``http://HOST:PORT`` without the prefix."""
        return f"http://{self.listen}:{self.port}"

    @property
    def url(self):
        """The API base URL, prefix included: ``http://127.0.0.1:PORT/v0``."""
        return self.origin + self.prefix

    def stop(self, timeout=10, sig=_SIGTERM):
        """Stop apisim with SIGTERM and assert that it exits 0; return 0."""
        returncode = super().stop(timeout=timeout, sig=sig)
        assert_exit(returncode, EXIT_OK, self)
        return returncode

    def admin(self, method, path, body=None, timeout=10):
        """Call the admin API (``/_sim/...``; the prefix may be omitted) and
        return the parsed JSON reply (None for an empty body). A non-2xx status
        raises :class:`ApiSimError`."""
        if not path.startswith("/"):
            path = "/" + path
        if not path.startswith("/_sim/"):
            path = "/_sim" + path
        response = http_request(method, self.origin + path, body=body, timeout=timeout)
        if not 200 <= response.status < 300:
            raise ApiSimError(method, path, response)
        return response.json() if response.body.strip() else None

    def api(self, method, path, body=None, key=None, headers=None, timeout=10):
        """Call the simulated Airplane API (``path`` below the prefix, e.g.
        ``/sessions/get?id=ses1``) with the API key (``key`` overrides it;
        ``False`` sends none) and return the :class:`HttpResponse`."""
        headers = dict(headers or {})
        key = self.key if key is None else key
        if key is not False:
            headers["X-Airplane-API-Key"] = key
        return http_request(method, self.url + path, body=body, headers=headers, timeout=timeout)

    # -- conveniences over the admin API --------------------------------------

    def set_status(self, session_id, status):
        """Set a session's status now (``POST /_sim/status``)."""
        return self.admin("POST", "/_sim/status", {"id": session_id, "status": status})

    def add_sessions(self, sessions):
        """Add sessions (``POST /_sim/sessions``): dicts with ``id``, ``name``,
        ``runbookID`` and ``timeline`` (``[[seconds, status], ...]``); see
        :func:`sim_session` to build one."""
        return self.admin("POST", "/_sim/sessions", {"sessions": list(sessions)})

    def sessions(self):
        """The simulator's sessions (``GET /_sim/sessions``)."""
        return self.admin("GET", "/_sim/sessions")

    def health(self):
        """``GET /_sim/health``."""
        return self.admin("GET", "/_sim/health")

    def fault(self, kind, count=None, probability=None, session=None, endpoint=None,
              retry_after=None, delay_ms=None, status=None):
        """Inject a fault (``POST /_sim/faults``) for the next ``count``
        requests or with ``probability`` (neither: once), optionally limited
        to a session or an endpoint (``get``, ``list``, ``execute``).
        ``status`` is the status served by an ``unknown-status`` fault."""
        body = {"kind": kind}
        for field, value in (("count", count), ("probability", probability), ("session", session),
                             ("endpoint", endpoint), ("retryAfter", retry_after),
                             ("delayMs", delay_ms), ("status", status)):
            if value is not None:
                body[field] = value
        return self.admin("POST", "/_sim/faults", body)

    def faults(self):
        """The active fault rules (``GET /_sim/faults``)."""
        return self.admin("GET", "/_sim/faults")

    def clear_faults(self):
        """Remove all faults (``DELETE /_sim/faults``)."""
        return self.admin("DELETE", "/_sim/faults")

    def counters(self, session=None, times=None):
        """Request counters (``GET /_sim/counters``); ``session`` limits them
        to one session, ``times=False`` leaves out the request times."""
        return self.admin("GET", "/_sim/counters" + _query(session=session, times=times))

    def reset_counters(self):
        """Zero the counters (``POST /_sim/counters/reset``)."""
        return self.admin("POST", "/_sim/counters/reset")

    def history(self, session=None):
        """The transitions that happened so far (``GET /_sim/history``):
        ``{id: [[unixSeconds, status], ...]}``; ``session`` for one."""
        return self.admin("GET", "/_sim/history" + _query(id=session))


def sim_session(session_id, timeline, name=None, runbook_id="rbk_test", **extra):
    """Build a session for :meth:`ApiSim.add_sessions`. ``timeline`` is a list
    of ``(seconds, status)``; ``extra`` adds or overrides fields."""
    session = {"id": session_id, "name": name or f"Session {session_id}", "runbookID": runbook_id,
               "timeline": [[seconds, status] for seconds, status in timeline]}
    session.update(extra)
    return session


def _query(**params):
    """``?a=1&b=x`` from the parameters that are not None (booleans as 1/0)."""
    items = {k: (int(v) if isinstance(v, bool) else v) for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(items) if items else ""


def _unique_path(directory, filename):
    """Return ``directory/filename``, with a numeric suffix if it exists."""
    path = os.path.join(directory, filename)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(directory, f"{n}.{filename}")
    return path


def _write_private(path, text):
    """Write ``text`` to ``path`` with mode 0600 (also when it existed).

    The file is replaced atomically (a temporary file renamed over it), so a
    daemon reading the key at that moment sees the old or the new key, never
    an empty file."""
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


# ---------------------------------------------------------------------------
# The daemon and its configuration
# ---------------------------------------------------------------------------


def section_name(kind, label=None):
    """Return an INI section name: ``api``, or ``webhook "oncall"``."""
    if label is None:
        return kind
    if '"' in label or "\n" in label or "]" in label:
        raise ValueError(f"section label {label!r} cannot be written in INI")
    return f'{kind} "{label}"'


def _ini_value(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"INI value {text!r} spans lines")
    return text


def render_ini(sections, header=None):
    """Render a configuration as INI text.

    ``sections`` maps a section name (a string such as ``'webhook "oncall"'``,
    or a tuple ``("webhook", "oncall")``) to its keys: a dict or a list of
    ``(key, value)`` pairs, in order. Values: str and numbers as written,
    booleans as ``yes``/``no``, a list or tuple as the key repeated once per
    item, None leaves the key out. ``header`` is written first as ``#``
    comment lines. Values spanning lines raise ValueError.
    """
    out = []
    if header:
        out += [f"# {line}".rstrip() for line in header.splitlines()]
        out.append("")
    for name, keys in sections.items():
        if isinstance(name, tuple):
            name = section_name(*name)
        out.append(f"[{name}]")
        items = keys.items() if isinstance(keys, dict) else keys
        for key, value in items:
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                if item is None:
                    continue
                text = _ini_value(item)
                out.append(f"{key} = {text}" if text else f"{key} =")
        out.append("")
    return "\n".join(out)


class Daemon(Process):
    """``sessionwatchd`` (``$SW_DAEMON``) run as ``--config FILE [extra_args]``.

    ``config`` is INI text or a dict for :func:`render_ini`. These
    placeholders are replaced in it: ``@KEY_FILE@`` (the API key file),
    ``@STATE@``, ``@RUN@``, ``@CONF@`` and ``@TMP@`` (directories of ``tmp``).
    The API key is written to ``conf/api-key`` with mode 0600 and never
    appears on the command line; when ``config`` is a dict without
    ``[api] key-file``, it is filled in. ``print_events`` adds
    ``--print-events=json`` so :meth:`events` can read the events from stdout.

    The configuration is written by the constructor (see ``config_path``), so a
    test can inspect or change it before :meth:`start`.
    """

    def __init__(self, tmp, config, api_key=DEFAULT_API_KEY, extra_args=(), print_events=False,
                 binary=None, env=None, wrapper=(), name="sessionwatchd", config_name=None):
        binary = binary or binary_path("SW_DAEMON")
        self.tmp = tmp
        self.key_file = os.path.join(tmp.conf, "api-key")
        if api_key is not None:
            _write_private(self.key_file, api_key)
        if isinstance(config, dict):
            config = dict(config)
            api = dict(config.get("api", {}))
            api.setdefault("key-file", "@KEY_FILE@")
            config["api"] = api
            config = render_ini(config)
        self.config_text = self.expand(config)
        self.config_path = _unique_path(tmp.conf, config_name or f"{name}.conf")
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        argv = [binary, "--config", self.config_path]
        if print_events:
            argv.append("--print-events=json")
        argv += list(extra_args)
        super().__init__(argv, tmp.root, name=name, env=env, wrapper=wrapper)

    def expand(self, text):
        """Replace the ``@...@`` placeholders (see the class) in ``text``."""
        for placeholder, value in (("@KEY_FILE@", self.key_file), ("@STATE@", self.tmp.state),
                                   ("@RUN@", self.tmp.run), ("@CONF@", self.tmp.conf),
                                   ("@TMP@", self.tmp.root)):
            text = text.replace(placeholder, value)
        return text

    @staticmethod
    def basic_config(api_url, sessions=(), runbooks=(), extra=None):
        """Return a small config dict for a daemon in a test tree: the API at
        ``api_url``, the watched ``sessions`` and ``runbooks``, the state
        directory and both sockets below the tree, no metrics listener.
        ``extra`` maps section names to keys merged in (keys replace keys)."""
        config = {
            "api": {"url": api_url, "key-file": "@KEY_FILE@"},
            "watch": {"session": list(sessions), "runbook": list(runbooks)},
            "state": {"path": "@STATE@"},
            "events": {"path": "@RUN@/events.sock"},
            "control": {"path": "@RUN@/control.sock"},
            "metrics": {"listen": ""},
        }
        for name, keys in (extra or {}).items():
            config.setdefault(name, {}).update(keys)
        return config

    @property
    def events_socket(self):
        """Path of the event stream socket in the basic configuration."""
        return os.path.join(self.tmp.run, "events.sock")

    @property
    def control_socket(self):
        """Path of the control socket in the basic configuration."""
        return os.path.join(self.tmp.run, "control.sock")

    def events(self):
        """The JSON objects printed on stdout so far (``--print-events=json``),
        one per complete line. Lines not starting with ``{`` are skipped; a
        line starting with ``{`` that is not JSON raises AssertionError."""
        events = []
        for line in self.stdout_lines(complete_only=True):
            if not line.startswith("{"):
                continue
            try:
                events.append(json.loads(line))
            except ValueError as exc:
                raise AssertionError(f"{self.name}: stdout line is not JSON ({exc}): {line[:300]!r}") from None
        return events

    def wait_for_events(self, predicate=None, count=1, timeout=10):
        """Wait until at least ``count`` events satisfy ``predicate`` (a
        callable on the event dict; None: any) and return the matching ones."""
        match = predicate or (lambda event: True)

        def enough():
            matching = [event for event in self.events() if match(event)]
            if len(matching) >= count:
                return matching
            if self.poll() is not None:
                raise AssertionError(f"{self.name} exited with {len(matching)} of {count} "
                                     f"expected events\n{self.describe()}")
            return None

        return wait_until(enough, timeout=timeout,
                          message=lambda: f"{self.name}: fewer than {count} matching events "
                                          f"(have {len(self.events())} in all)\n{self.describe()}")

    def wait_for_event(self, predicate=None, timeout=10):
        """Wait for the first event satisfying ``predicate`` and return it."""
        return self.wait_for_events(predicate, count=1, timeout=timeout)[0]

    # -- the sockets (sessionwatchctl and the event stream) ---------------------

    def ctl(self, *args, json_output=False, socket_path=None, wrapper=(), timeout=10, env=None):
        """Run ``sessionwatchctl`` (``$SW_CTL``) against this daemon's control
        socket (``socket_path`` overrides it) and return the
        ``subprocess.CompletedProcess`` (text output). ``json_output`` adds
        ``--json``; ``wrapper`` is prepended to the command line (e.g.
        ``setpriv ...``)."""
        argv = list(wrapper) + [binary_path("SW_CTL"), "--socket", socket_path or self.control_socket]
        if json_output:
            argv.append("--json")
        argv += [str(a) for a in args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=scaled(timeout),
                              env=child_env(env), stdin=subprocess.DEVNULL)

    def ctl_json(self, *args, **kwargs):
        """Run ``sessionwatchctl --json ARGS``, assert exit 0 and return the
        parsed reply."""
        done = self.ctl(*args, json_output=True, **kwargs)
        if done.returncode != 0:
            raise AssertionError(f"sessionwatchctl {' '.join(map(str, args))} exited {done.returncode}: "
                                 f"{done.stderr.strip()} {done.stdout.strip()}")
        return json.loads(done.stdout)

    def wait_control(self, timeout=10):
        """Wait until the control socket answers a ``status`` request (its
        file appears at bind(), a moment before the daemon listens)."""
        def answers():
            if not self.running:
                raise AssertionError(f"{self.name} exited\n{self.describe()}")
            return self.request({"command": "status"}, timeout=2).get("ok")
        return wait_until(answers, timeout=timeout, ignore=(OSError, ValueError),
                          message=lambda: f"the control socket does not answer\n{self.describe()}")

    def request(self, obj_or_line, socket_path=None, timeout=10):
        """Send one request line (a dict, or raw text without the newline) to
        the control socket and return the parsed reply."""
        line = obj_or_line if isinstance(obj_or_line, (str, bytes)) else json.dumps(obj_or_line)
        if isinstance(line, str):
            line = line.encode()
        return json.loads(self.request_raw(line, socket_path=socket_path, timeout=timeout))

    def request_raw(self, payload, socket_path=None, timeout=10):
        """Send the bytes `payload` and a newline to the control socket and
        return the reply's bytes as they came (one line), undecoded."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(scaled(timeout))
            sock.connect(socket_path or self.control_socket)
            sock.sendall(payload + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data


# ---------------------------------------------------------------------------
# A Prometheus server
# ---------------------------------------------------------------------------


PROMETHEUS = "/usr/bin/prometheus"


def prometheus_binary():
    """Return the path of the Prometheus server (Debian package
    ``prometheus``), or None when it is not installed."""
    found = shutil.which("prometheus")
    if found:
        return found
    return PROMETHEUS if os.access(PROMETHEUS, os.X_OK) else None


class PrometheusQueryError(AssertionError):
    """Prometheus refused a query (HTTP 400 or 422: the PromQL is wrong, or
    its evaluation failed); the message has Prometheus's error text."""

    def __init__(self, expr, response):
        self.expr = expr
        self.status = response.status
        try:
            detail = response.json().get("error", response.text)
        except AssertionError:
            detail = response.text
        super().__init__(f"Prometheus refuses {expr!r}: HTTP {response.status}: {str(detail)[:500]}")


class Prometheus(Process):
    """A real Prometheus server on a free loopback port that scrapes
    ``targets`` (``HOST:PORT`` strings) as job ``job`` every
    ``scrape_interval``, its configuration and storage in the test tree.

    :meth:`start` returns once ``/-/ready`` answers 200. :meth:`query` runs
    an instant query through ``/api/v1/query`` and returns the result list;
    :meth:`wait_query` repeats one until its result satisfies a predicate;
    :meth:`series` lists series through ``/api/v1/series``. A query
    Prometheus refuses raises :class:`PrometheusQueryError` at once.
    """

    def __init__(self, tmp, targets, job="sessionwatch", scrape_interval="1s", binary=None,
                 name="prometheus", env=None):
        workdir = tmp.root if isinstance(tmp, TempDirs) else str(tmp)
        binary = binary or prometheus_binary()
        if not binary:
            raise AssertionError("prometheus (Debian package prometheus) is not installed")
        self.targets = list(targets)
        self.job = job
        self.storage = _unique_path(workdir, f"{name}-data")
        os.mkdir(self.storage)
        self.config_path = _unique_path(workdir, f"{name}.yml")
        with open(self.config_path, "w") as f:
            f.write("global:\n"
                    f"  scrape_interval: {scrape_interval}\n"
                    f"  evaluation_interval: {scrape_interval}\n"
                    "scrape_configs:\n"
                    f"  - job_name: {json.dumps(job)}\n"
                    "    static_configs:\n"
                    f"      - targets: {json.dumps(self.targets)}\n")
        self.port = free_port()
        argv = [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={self.storage}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        super().__init__(argv, workdir, name=name, env=env)

    @property
    def url(self):
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=30):
        """Start Prometheus and wait until it is ready to serve queries."""
        super().start()

        def ready():
            if self.poll() is not None:
                raise AssertionError(f"prometheus exited during start-up\n{self.describe()}")
            try:
                return http_get(self.url + "/-/ready", timeout=2).status == 200
            except OSError:
                return False

        try:
            wait_until(ready, timeout=timeout, interval=0.1,
                       message=lambda: f"prometheus did not become ready\n{self.describe()}")
        except BaseException:
            self.kill()
            raise
        return self

    def _api(self, path, params, expr):
        if self.poll() is not None:
            raise AssertionError(f"prometheus exited\n{self.describe()}")
        response = http_get(f"{self.url}{path}?" + urllib.parse.urlencode(params, doseq=True), timeout=10)
        if response.status in (400, 422):
            raise PrometheusQueryError(expr, response)
        if response.status != 200:
            raise AssertionError(f"prometheus {path}: HTTP {response.status}: {response.text[:500]}")
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusQueryError(expr, response)
        return body["data"]

    def query(self, expr, at=None):
        """Run the instant query ``expr`` (at Unix time ``at``; default now)
        and return its result: for a vector, a list of ``{"metric": {...},
        "value": [time, "text"]}``."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._api("/api/v1/query", params, expr)["result"]

    def series(self, match, lookback=300):
        """The label sets of the series matching selector ``match`` seen in
        the last ``lookback`` seconds."""
        now = time.time()
        return self._api("/api/v1/series", {"match[]": [match], "start": f"{now - lookback:.3f}",
                                            "end": f"{now:.3f}"}, match)

    def wait_query(self, expr, predicate=None, timeout=30, message=None):
        """Repeat :meth:`query` until ``predicate(result)`` (default: the
        result is not empty) is true, and return the result."""
        check = predicate or bool
        last = []

        def satisfied():
            last[:] = [self.query(expr)]
            return last[0] if check(last[0]) else None

        def describe():
            text = message() if callable(message) else message
            return (f"{text or 'no satisfying answer'} to {expr!r} (last answer: {last[0] if last else None!r})"
                    f"\n{self.describe()}")

        return wait_until(satisfied, timeout=timeout, interval=0.2, message=describe)


# ---------------------------------------------------------------------------
# A private journald
# ---------------------------------------------------------------------------


JOURNALD = "/lib/systemd/systemd-journald"

# The settings of the private journald: volatile storage only (nothing under
# /var/log/journal), no rate limit (tests log in bursts), nothing forwarded to
# syslog, the kernel log, the console or terminals, the kernel log not read.
# Audit= is deliberately empty: journald then leaves the kernel's audit
# setting alone, which is shared with the host.
JOURNALD_CONF = """\
[Journal]
Storage=volatile
Compress=no
Seal=no
SplitMode=none
RateLimitIntervalSec=0
RateLimitBurst=0
RuntimeMaxUse=64M
MaxLevelStore=debug
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
ReadKMsg=no
Audit=
"""

# Run by sh inside the new mount namespace, before it becomes journald. The
# root is made recursively private first so no mount below reaches the host.
# Mount points that do not exist yet are created (empty directories on the
# host's file system); everything mounted is a tmpfs whose source name is the
# per-instance token, which lets tests look for leftovers. Drop-in directories
# of journald.conf are hidden under empty tmpfs, and the main file is replaced
# by a bind mount of ours.
_NAMESPACE_SETUP = r"""
set -eu
conf=$1 token=$2 journald=$3
mount --make-rprivate /
for dir in /run/systemd/journal /run/log/journal; do
    mkdir -p "$dir"
    mount -t tmpfs -o mode=0755,nosuid,nodev,size=256m "$token" "$dir"
done
if [ -d /var/log/journal ]; then
    mount -t tmpfs -o mode=0755,nosuid,nodev,size=1m "$token" /var/log/journal
fi
for dir in /etc/systemd/journald.conf.d /run/systemd/journald.conf.d \
           /usr/local/lib/systemd/journald.conf.d /usr/lib/systemd/journald.conf.d; do
    if [ -d "$dir" ]; then
        mount -t tmpfs -o mode=0755,ro,size=64k "$token" "$dir"
    fi
done
mount --bind "$conf" /etc/systemd/journald.conf
exec "$journald"
"""


def mount_namespace(pid):
    """Return the mount namespace of ``pid`` (``mnt:[inode]``), or None when
    the process is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _all_pids():
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def pids_inmount_namespace(namespace):
    """Return the ids of all processes in mount namespace ``namespace``."""
    return [pid for pid in _all_pids() if mount_namespace(pid) == namespace]


def mounts_with_source(token):
    """Return the mountinfo lines of any process that mention ``token``."""
    found = []
    for pid in _all_pids():
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                found += [f"pid {pid}: {line.strip()}" for line in f if token in line]
        except OSError:
            continue
    return found


def _decode_journal_value(value):
    """Decode one value of ``journalctl -o json``: a string stays a string, an
    array of byte values (binary or non-printable data) becomes a string, an
    array of values (a field given more than once) becomes a list."""
    if isinstance(value, list):
        if all(isinstance(item, int) for item in value):
            return bytes(value).decode("utf-8", "replace")
        return [_decode_journal_value(item) for item in value]
    return value


class JournalNamespace:
    """A real ``systemd-journald`` in a private mount namespace.

    :meth:`start` runs ``unshare --mount`` with the root made private, tmpfs
    mounted over ``/run/systemd/journal`` and ``/run/log/journal`` (and over
    ``/var/log/journal`` if it exists), a journald configuration of its own,
    and then execs ``systemd-journald``, which keeps the namespace alive. Its
    diagnostics go to ``journald.stderr`` in the work directory.

    Commands enter the namespace with ``nsenter --mount`` (exec, no fork, so
    the process id seen by the test is the real one and signals reach it):
    :meth:`run` for one-shot commands, :meth:`spawn` for a background
    :class:`Process`, :meth:`wrap` for any other launcher (pass it as the
    ``wrapper`` of :class:`Daemon`). Only the mount namespace is private:
    network (loopback, so apisim can run outside), processes and the rest of
    the file system are shared with the test. Programs inside log through
    ``/run/systemd/journal/socket`` to this journald alone.

    :meth:`entries` reads the journal back with ``journalctl -o json``.
    :meth:`stop` ends every process left in the namespace, then journald;
    with journald gone the namespace and its mounts disappear.
    """

    def __init__(self, tmp, journald=JOURNALD, name="journald"):
        self.workdir = tmp.root if isinstance(tmp, TempDirs) else str(tmp)
        self.journald = journald
        self.name = name
        self.token = f"swtest-journal-{uuid.uuid4().hex[:12]}"
        self.namespace = None
        self.process = None
        self.spawned = []
        self.strays = []
        self.returncode = None
        self.conf_path = _unique_path(self.workdir, f"{name}.conf")

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout=10):
        """Create the namespace, start journald and wait until it accepts
        messages (its sockets exist); return self."""
        for tool in ("unshare", "nsenter", "mount", "journalctl"):
            if shutil.which(tool) is None:
                raise AssertionError(f"{tool} is not installed")
        if not os.access(self.journald, os.X_OK):
            raise AssertionError(f"{self.journald} is not installed")
        if not os.path.isfile("/etc/systemd/journald.conf"):
            raise AssertionError("/etc/systemd/journald.conf is missing (it is replaced by a "
                                 "bind mount in the namespace, so it must exist)")
        with open(self.conf_path, "w") as f:
            f.write(JOURNALD_CONF)
        env = {"SYSTEMD_LOG_TARGET": "console",
               "SYSTEMD_LOG_LEVEL": "debug" if os.environ.get("SW_JOURNALD_DEBUG") == "1" else "info"}
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", _NAMESPACE_SETUP, "swtest-journal-setup",
                self.conf_path, self.token, self.journald]
        # SIGTERM on the test's death lets journald exit cleanly.
        self.process = Process(argv, self.workdir, name=self.name, env=env,
                               pdeathsig=_SIGTERM).start()
        journald_stat = os.stat(self.journald)
        pid = self.process.pid
        root = f"/proc/{pid}/root"

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"journald exited during start-up\n{self.process.describe()}")
            try:
                exe = os.stat(f"/proc/{pid}/exe")
            except OSError:
                return False
            # Only once sh has exec'd journald are all mounts in place; before
            # that a socket path could still resolve to the host's.
            if (exe.st_dev, exe.st_ino) != (journald_stat.st_dev, journald_stat.st_ino):
                return False
            return all(_is_socket(f"{root}/run/systemd/journal/{leaf}")
                       for leaf in ("socket", "stdout", "io.systemd.journal"))

        try:
            wait_until(ready, timeout=timeout,
                       message=lambda: f"journald did not become ready\n{self.process.describe()}")
            self.namespace = mount_namespace(pid)
            if self.namespace is None or self.namespace == mount_namespace(os.getpid()):
                raise AssertionError("journald is not in a mount namespace of its own")
        except BaseException:
            self.process.kill()
            self.returncode = self.process.returncode
            raise
        return self

    @property
    def pid(self):
        """The process id of journald."""
        return self.process.pid if self.process else None

    @property
    def root(self):
        """``/proc/PID/root``: the namespace's file system seen from outside."""
        return f"/proc/{self.pid}/root"

    def processes(self):
        """Ids of the processes in the namespace (journald included)."""
        return pids_inmount_namespace(self.namespace) if self.namespace else []

    def leftovers(self):
        """What remains of this instance anywhere on the host: a list of
        process ids in its namespace and mountinfo lines naming its tmpfs.
        Both are empty after a successful :meth:`stop`."""
        return self.processes(), mounts_with_source(self.token)

    def stop(self, timeout=10):
        """Stop the processes started with :meth:`spawn` (SIGTERM, then
        SIGKILL), kill any other process still in the namespace (recorded in
        ``strays``), stop journald with SIGTERM and wait until the namespace
        is empty. Returns journald's return code (0 on a clean stop)."""
        if self.process is None or self.returncode is not None:
            return self.returncode
        for process in self.spawned:
            if process.running:
                try:
                    process.stop(timeout=timeout)
                except AssertionError:
                    pass  # stop() has killed it already
        for pid in self.processes():
            if pid != self.pid:
                self.strays.append(pid)
                _kill_quietly(pid, signal.SIGKILL)
        try:
            self.returncode = self.process.stop(timeout=timeout)
        except AssertionError:
            self.returncode = self.process.returncode
        if self.namespace:
            wait_until(lambda: not self.processes(), timeout=timeout,
                       message=f"processes remain in mount namespace {self.namespace}")
        return self.returncode

    def register(self, testcase):
        """Have ``testcase`` stop this journald at its end (printing its log
        on failure). Returns self."""
        def done():
            if _test_failed(testcase) and self.process is not None:
                print(f"\n--- {self.name} ---\n{self.process.describe()}", file=sys.stderr)
            self.stop()
        testcase.addCleanup(done)
        return self

    def __enter__(self):
        if self.process is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        return False

    def log_text(self):
        """journald's own diagnostics so far."""
        return self.process.stderr_text() if self.process else ""

    # -- running programs inside ---------------------------------------------

    def wrap(self, cwd=None):
        """The argv prefix that runs a command inside the namespace, in
        ``cwd`` (default: the current directory; nsenter would otherwise
        start it in ``/``)."""
        if self.process is None or not self.process.running:
            raise AssertionError("journald is not running")
        return ["nsenter", f"--target={self.pid}", "--mount", f"--wd={os.path.abspath(cwd or os.getcwd())}",
                "--"]

    def run(self, argv, input=None, timeout=30, check=True, env=None, cwd=None):
        """Run ``argv`` inside the namespace to completion and return the
        ``subprocess.CompletedProcess`` (text mode). ``check`` raises
        AssertionError with the output on a non-zero exit."""
        argv = [str(a) for a in argv]
        try:
            result = subprocess.run(self.wrap(cwd) + argv, input=input, capture_output=True, text=True,
                                    timeout=scaled(timeout), env=child_env(env), cwd=cwd)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{argv} timed out after {exc.timeout:g}s in the namespace") from None
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} in the namespace: {exit_status_text(result.returncode)}\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def spawn(self, argv, name=None, env=None, cwd=None):
        """Start ``argv`` in the background inside the namespace and return its
        started :class:`Process` (output captured in the work directory). It
        is stopped by :meth:`stop` if still running then."""
        process = Process(argv, self.workdir, name=name, env=env, wrapper=self.wrap(cwd), cwd=cwd)
        self.spawned.append(process)
        return process.start()

    def log(self, message, priority=6, identifier="swtest", **fields):
        """Write one structured entry from inside the namespace with
        ``logger --journald``; ``fields`` are extra journal fields (upper-case
        names, single-line values)."""
        lines = [f"MESSAGE={message}", f"PRIORITY={priority}", f"SYSLOG_IDENTIFIER={identifier}"]
        lines += [f"{key}={value}" for key, value in fields.items()]
        if any("\n" in line for line in lines):
            raise ValueError("logger --journald cannot send values spanning lines")
        self.run(["logger", "--journald"], input="\n".join(lines) + "\n")

    # -- reading the journal ------------------------------------------------

    def sync(self):
        """Ask journald to write out everything it received so far
        (``journalctl --sync``; returns once done)."""
        self.run(["journalctl", "--sync"])

    def entries(self, *matches, args=(), sync=True, decode=True, **fields):
        """Return the journal entries as dicts, oldest first.

        ``matches`` are journalctl match strings (``"FIELD=value"``, ``"+"``);
        ``fields`` add ``FIELD=value`` matches; ``args`` are more journalctl
        options (``["-p", "err"]``). Values are strings; a field present more
        than once is a list. With ``decode=False`` values are as journalctl
        prints them (binary data as arrays of byte values).
        """
        if sync:
            self.sync()
        argv = ["journalctl", "--directory=/run/log/journal", "--output=json", "--all", "--no-pager",
                *args, *matches, *(f"{key}={value}" for key, value in fields.items())]
        result = self.run(argv)
        entries = []
        for line in result.stdout.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if decode:
                entry = {key: _decode_journal_value(value) for key, value in entry.items()}
            entries.append(entry)
        return entries

    def wait_for_entries(self, predicate=None, *matches, count=1, timeout=10, args=(), **fields):
        """Wait until at least ``count`` entries matching ``matches`` and
        ``fields`` (as in :meth:`entries`) also satisfy ``predicate`` (a
        callable on the entry dict; None: any), and return those entries."""
        match = predicate or (lambda entry: True)

        def enough():
            found = [entry for entry in self.entries(*matches, args=args, **fields) if match(entry)]
            return found if len(found) >= count else None

        return wait_until(enough, timeout=timeout, interval=0.05,
                          message=f"fewer than {count} matching journal entries")


def _is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _kill_quietly(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise
