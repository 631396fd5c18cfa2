"""The web status page, in a real browser.

sessionwatchd watches scripted sessions in apisim and serves its HTTP
interface (`[http] listen` on a free loopback port). Debian's chromium,
headless, driven by puppeteer-core (`tests/browser/page-test.js`, which takes
one JSON command per line and answers one JSON line), opens the page. The
tests check:

* the page loads with no console error, no uncaught exception, no failed
  request and no HTTP error, from its own origin only, and shows apisim's
  sessions: counts by status, the table (failures and waiting first), links
  to the sessions opening in a new tab without referrer; paging with next
  and previous;
* a status changed in apisim reaches the table, the counts and the feed
  without a reload; a burst of changes reloads the counts at most about once
  a second;
* the status and runbook filters and the search box narrow the table;
* a session named like markup is shown as that text: no element made from
  it, no dialog;
* the page survives a daemon restart on the same port: it shows that it is
  disconnected, comes back live, reloads what changed meanwhile and follows
  changes after;
* with `[http] token-file`, the page asks for the token and then works.

Screenshots are saved in $SW_BUILD_DIR/test-output/page/ (the path is
printed).
"""

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import unittest

import swtest

SOURCE_DIR = os.environ.get("SW_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BROWSER_DIR = os.path.join(SOURCE_DIR, "tests", "browser")
DRIVER = os.path.join(BROWSER_DIR, "page-test.js")
NODE = shutil.which("node")
CHROMIUM = os.environ.get("SW_CHROMIUM", "/usr/bin/chromium")
HAVE_BROWSER = (NODE is not None and os.access(CHROMIUM, os.X_OK)
                and os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "puppeteer-core")))

EVIL = "<img src=x onerror=alert(1)>"
APP_URL = "https://app.airplane.dev"

# The sessions of every test: (id, name, runbook, status).
NAMED = [
    ("sespage001", "Deploy web", "rbk_alpha", "Active"),
    ("sespage002", "Rotate credentials", "rbk_alpha", "Waiting"),
    ("sespage003", "Restart workers", "rbk_beta", "Failed"),
    ("sespage004", "Nightly backup", "rbk_beta", "Succeeded"),
    ("sespage005", EVIL, "rbk_beta", "Active"),
    ("sespage006", "Onboard Ada", "rbk_gamma", "Pending"),
]
# Finished sessions that make the table three pages long (50 a page); their
# ids sort after the named ones.
BULK = [(f"seszbulk{i:03d}", f"Batch job {i}", "rbk_bulk", "Succeeded") for i in range(110)]
SESSIONS = NAMED + BULK
PAGE_SIZE = 50


def output_dir():
    build = os.environ.get("SW_BUILD_DIR") or os.getcwd()
    path = os.path.join(build, "test-output", "page")
    os.makedirs(path, exist_ok=True)
    return path


class BrowserError(AssertionError):
    pass


class Browser:
    """``node page-test.js URL OUTDIR``: one headless chromium on one page."""

    def __init__(self, testcase, url, outdir, workdir):
        self.testcase = testcase
        self.stderr_path = os.path.join(workdir, "page-test.stderr")
        self.lines = queue.Queue()
        env = swtest.child_env({"PUPPETEER_SKIP_DOWNLOAD": "1", "SW_CHROMIUM": CHROMIUM})
        with open(self.stderr_path, "wb") as err:
            # Its own session, so that chromium and its helpers go with it.
            self.popen = subprocess.Popen([NODE, DRIVER, url, outdir], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=err, env=env, cwd=BROWSER_DIR,
                                          text=True, bufsize=1, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        testcase.addCleanup(self.close)
        self.ready = self._next(timeout=60)
        if not self.ready.get("ok"):
            raise BrowserError(f"the browser did not open {url}: {self.ready.get('error')}\n{self.stderr()}")

    def _read(self):
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def stderr(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()[-4000:]
        except FileNotFoundError:
            return ""

    def _next(self, timeout):
        try:
            line = self.lines.get(timeout=swtest.scaled(timeout))
        except queue.Empty:
            raise BrowserError(f"page-test.js did not answer within {timeout}s\n{self.stderr()}") from None
        if line is None:
            raise BrowserError(f"page-test.js exited ({self.popen.poll()})\n{self.stderr()}")
        return json.loads(line)

    def call(self, cmd, answer_within=30, **args):
        self.popen.stdin.write(json.dumps(dict(args, cmd=cmd)) + "\n")
        self.popen.stdin.flush()
        answer = self._next(answer_within)
        if not answer.get("ok"):
            raise BrowserError(f"{cmd} {args}: {answer.get('error')}")
        return answer.get("value")

    def wait(self, fn, arg=None, timeout=10, what=None):
        """Wait until page function ``fn(arg)`` is truthy; return its value."""
        ms = int(swtest.scaled(timeout) * 1000)
        try:
            return self.call("wait", answer_within=swtest.scaled(timeout) + 30, fn=fn, arg=arg, timeout=ms)
        except BrowserError as exc:
            state = self.call("eval", fn=DESCRIBE)
            raise BrowserError(f"{what or fn}: not reached within {timeout}s ({exc})\npage: {state}") from None

    def eval(self, fn, arg=None):
        return self.call("eval", fn=fn, arg=arg)

    def report(self):
        return self.call("report")

    def screenshot(self, name, full_page=True):
        path = self.call("screenshot", name=name, fullPage=full_page)
        print(f"\nscreenshot: {path}", file=sys.stderr)
        return path

    def close(self):
        if self.popen.poll() is None:
            try:
                self.popen.stdin.write('{"cmd":"quit"}\n')
                self.popen.stdin.close()
                self.popen.wait(timeout=swtest.scaled(15))
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # anything chromium left behind
        except OSError:
            pass
        for pipe in (self.popen.stdin, self.popen.stdout):
            try:
                pipe.close()
            except OSError:
                pass


# What the page shows, for error messages.
DESCRIBE = """() => ({
  connection: document.getElementById('connection').dataset.state + ' ' + document.getElementById('connection').textContent,
  error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
  matched: document.getElementById('matched').textContent,
  counts: Object.fromEntries([...document.querySelectorAll('#counts li')].map(li => [li.dataset.status, li.querySelector('.value').textContent])),
  rows: [...document.querySelectorAll('#sessions tbody tr')].slice(0, 8).map(tr => (tr.dataset.id || '') + ':' + (tr.dataset.status || '')),
  feed: [...document.querySelectorAll('#feed li')].slice(0, 5).map(li => li.textContent),
})"""

# The rows of the table: [{id, name, runbook, status, previous, flags, href, target, rel}].
ROWS = """() => [...document.querySelectorAll('#sessions tbody tr[data-id]')].map(tr => ({
  id: tr.dataset.id, status: tr.dataset.status || null,
  name: tr.querySelector('td.name').textContent, runbook: tr.querySelector('td.runbook').textContent,
  shownStatus: tr.querySelector('td.status').textContent, previous: tr.querySelector('td.previous').textContent,
  changed: tr.querySelector('td.changed').textContent, flags: tr.querySelector('td.flags').textContent,
  href: tr.querySelector('td.id a') && tr.querySelector('td.id a').href,
  target: tr.querySelector('td.id a') && tr.querySelector('td.id a').target,
  rel: tr.querySelector('td.id a') && tr.querySelector('td.id a').rel,
}))"""

COUNTS = """() => Object.fromEntries([...document.querySelectorAll('#counts li[data-status]')].map(
  li => [li.dataset.status, Number(li.querySelector('.value').textContent.replace(/,/g, ''))]))"""

# Truthy (the ids in page order) once the table shows exactly the ids in
# arg[0] (in any order) and says that arg[1] sessions match (all pages).
TABLE_IS = """([want, matched]) => {
  const ids = [...document.querySelectorAll('#sessions tbody tr[data-id]')].map(tr => tr.dataset.id);
  const shown = Number(document.getElementById('matched').dataset.matched);
  return JSON.stringify([...ids].sort()) === JSON.stringify([...want].sort()) && shown === matched ? ids : null;
}"""


def table(ids, matched=None):
    """The argument of TABLE_IS: these ids, and len(ids) matching unless said."""
    return [list(ids), len(ids) if matched is None else matched]


FIRST_PAGE = table([s[0] for s in SESSIONS[:PAGE_SIZE]], len(SESSIONS))

ROW_STATUS = """([id, status]) => {
  const tr = document.querySelector('#sessions tbody tr[data-id="' + CSS.escape(id) + '"]');
  return tr && tr.dataset.status === status ? tr.querySelector('td.status').textContent : null;
}"""

COUNT_IS = """([key, n]) => {
  const li = document.querySelector('#counts li[data-status="' + key + '"] .value');
  return li && Number(li.textContent.replace(/,/g, '')) === n;
}"""

FEED_COUNT = """([id, type, n]) => [...document.querySelectorAll('#feed li.event')].filter(
  li => li.dataset.session === id && li.dataset.type === type).length >= n"""

FEED_HAS = """([id, type]) => {
  const li = [...document.querySelectorAll('#feed li.event')].find(
    li => li.dataset.session === id && li.dataset.type === type);
  return li ? li.textContent : null;
}"""

CONNECTION = """(state) => {
  const c = document.getElementById('connection');
  return c.dataset.state === state ? c.textContent : null;
}"""


class PageTest(unittest.TestCase):
    def setUp(self):
        # Missing parts are a failure, not a skip: scripts/deps installs them.
        self.assertTrue(HAVE_BROWSER, "node, /usr/bin/chromium or tests/browser/node_modules missing "
                                      "(run scripts/deps)")
        self.tmp = swtest.temp_dirs(self)
        self.outdir = output_dir()

    # -- helpers ---------------------------------------------------------------

    def start_sim(self):
        scenario = {"sessions": [swtest.sim_session(sid, [[0, status]], name=name, runbook_id=runbook)
                                 for sid, name, runbook, status in SESSIONS]}
        return swtest.ApiSim(self.tmp, scenario=scenario).register(self).start()

    def make_daemon(self, sim, port, http=None, name="sessionwatchd"):
        config = swtest.Daemon.basic_config(sim.url, sessions=[s[0] for s in SESSIONS], extra={
            "api": {"rate-limit": "off", "app-url": APP_URL},
            "poll": {"interval": "100ms", "waiting-interval": "100ms", "jitter": "0%", "mode": "get"},
            "journal": {"enable": False},
            "http": dict({"listen": f"127.0.0.1:{port}"}, **(http or {})),
        })
        return swtest.Daemon(self.tmp, config, name=name).register(self)

    def start_daemon(self, daemon):
        daemon.start()
        daemon.wait_control()
        return daemon

    def wait_all_seen(self, daemon):
        """Until the daemon knows the status of every session."""
        def seen():
            return daemon.ctl_json("status")["sessions"]["unseen"] == 0
        swtest.wait_until(seen, timeout=20, message="the daemon has not seen every session")

    def setup_page(self, http=None):
        sim = self.start_sim()
        port = swtest.free_port()
        daemon = self.start_daemon(self.make_daemon(sim, port, http=http))
        self.wait_all_seen(daemon)
        url = f"http://127.0.0.1:{port}/"
        return sim, daemon, port, Browser(self, url, self.outdir, self.tmp.root)

    def wait_loaded(self, browser):
        browser.wait(CONNECTION, "live", what="the stream is live")
        browser.wait(COUNT_IS, ["Succeeded", len(BULK) + 1], what="the counts are loaded")
        browser.wait(TABLE_IS, FIRST_PAGE, what="the first page is shown")

    def assert_clean(self, browser, report=None):
        """No console error or warning, uncaught exception, failed request,
        HTTP error or dialog so far; returns the driver's report."""
        report = report or browser.report()
        noisy = [m for m in report["console"] if m["type"] in ("error", "warn", "warning", "assert")]
        self.assertEqual(noisy, [], "console errors")
        self.assertEqual(report["pageErrors"], [], "uncaught exceptions")
        self.assertEqual(report["failedRequests"], [], "failed requests")
        self.assertEqual(report["httpErrors"], [], "HTTP errors")
        self.assertEqual(report["dialogs"], [], "dialogs")
        return report

    # -- tests -----------------------------------------------------------------

    def test_loads_and_shows_sessions(self):
        sim, daemon, port, browser = self.setup_page()
        origin = f"http://127.0.0.1:{port}"
        self.assertEqual(browser.ready["status"], 200)
        self.assertEqual(browser.ready["headers"].get("content-security-policy"), "default-src 'self'")
        self.wait_loaded(browser)

        counts = browser.eval(COUNTS)
        expected = {key: 0 for key in ("Pending", "Active", "Waiting", "Succeeded", "Failed", "Cancelling",
                                       "Cancelled", "unknown", "gone")}
        for _, _, _, status in SESSIONS:
            expected[status] += 1
        self.assertEqual(counts, expected)

        rows = browser.eval(ROWS)
        self.assertEqual(len(rows), PAGE_SIZE)
        # Failures first, then waiting, then the rest.
        self.assertEqual([r["id"] for r in rows[:2]], ["sespage003", "sespage002"])
        by_id = {r["id"]: r for r in rows}
        for sid, name, runbook, status in NAMED:
            row = by_id[sid]
            self.assertEqual((row["name"], row["runbook"], row["status"], row["shownStatus"]),
                             (name, runbook, status, status), row)
            self.assertEqual(row["href"], f"{APP_URL}/sessions/{sid}")
            self.assertEqual(row["target"], "_blank")
            self.assertEqual(set(row["rel"].split()), {"noopener", "noreferrer"})
            self.assertEqual(row["previous"], "—")  # a first observation
            self.assertEqual(row["flags"], "")
        shot = browser.screenshot("page-loaded.png")
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

        # Paging: 116 sessions make three pages; previous goes back.
        first_ids = [r["id"] for r in rows]
        browser.call("click", selector="#next")
        page2 = table([s[0] for s in SESSIONS[PAGE_SIZE:2 * PAGE_SIZE]], len(SESSIONS))
        page2_order = browser.wait(TABLE_IS, page2, what="page 2")
        self.assertEqual(page2_order, page2[0])  # the same time, so by id
        browser.call("click", selector="#next")
        browser.wait(TABLE_IS, table([s[0] for s in SESSIONS[2 * PAGE_SIZE:]], len(SESSIONS)), what="page 3")
        self.assertTrue(browser.eval("() => document.getElementById('next').disabled"))
        browser.call("click", selector="#prev")
        self.assertEqual(browser.wait(TABLE_IS, page2, what="back to page 2"), page2_order)
        browser.call("click", selector="#prev")
        self.assertEqual(browser.wait(TABLE_IS, FIRST_PAGE, what="back to page 1"), first_ids)
        self.assertTrue(browser.eval("() => document.getElementById('prev').disabled"))

        report = self.assert_clean(browser)
        foreign = [r["url"] for r in report["requests"] if not r["url"].startswith(origin + "/")]
        self.assertEqual(foreign, [], "requests to another origin")
        self.assertEqual(daemon.poll(), None)

    def test_live_change(self):
        sim, daemon, port, browser = self.setup_page()
        self.wait_loaded(browser)
        started = time.monotonic()
        sim.set_status("sespage001", "Failed")
        browser.wait(ROW_STATUS, ["sespage001", "Failed"], timeout=10, what="the row shows Failed")
        browser.wait(COUNT_IS, ["Failed", 2], what="two failures counted")
        feed = browser.wait(FEED_HAS, ["sespage001", "sessionwatch.session.failed"], what="the feed has the event")
        self.assertIn("Deploy web", feed)
        self.assertIn("Active", feed)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, swtest.scaled(10))
        row = [r for r in browser.eval(ROWS) if r["id"] == "sespage001"][0]
        self.assertEqual(row["previous"], "Active")
        # The failures come first, the newest change first.
        self.assertEqual([r["id"] for r in browser.eval(ROWS)[:2]], ["sespage001", "sespage003"])

        # A burst of changes (between statuses that are not final: a session
        # that has finished is no longer polled): every one reaches the feed,
        # while the counts are reloaded at most about once a second.
        before = len(browser.report()["requests"])
        burst = [(sid, status) for sid, first, second in (("sespage002", "Active", "Waiting"),
                                                           ("sespage005", "Waiting", "Active"),
                                                           ("sespage006", "Active", "Waiting"))
                 for status in (first, second, first)]
        seen = {}
        for sid, status in burst:
            sim.set_status(sid, status)
            key = (sid, "sessionwatch.session." + status.lower())
            seen[key] = seen.get(key, 0) + 1
            browser.wait(FEED_COUNT, [*key, seen[key]], what=f"{sid} {status} in the feed")
        browser.wait(ROW_STATUS, ["sespage006", "Active"], what="the last change in the table")
        browser.wait(COUNT_IS, ["Waiting", 1], what="the counts after the burst")
        self.assertEqual({k: v for k, v in browser.eval(COUNTS).items() if v},
                         {"Active": 2, "Waiting": 1, "Failed": 2, "Succeeded": len(BULK) + 1})
        requests = browser.report()["requests"][before:]
        times = [r["at"] for r in requests if r["url"].endswith("/api/v1/status")]
        self.assertGreaterEqual(len(times), 1)
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertTrue(all(gap >= 0.9 for gap in gaps), f"status reloaded faster than once a second: {gaps}")
        self.assertLessEqual(len(browser.eval("() => [...document.querySelectorAll('#feed li')]")), 50)
        browser.screenshot("page-live.png")
        browser.screenshot("page.png", full_page=False)
        self.assert_clean(browser)

    def test_filters_and_search(self):
        sim, daemon, port, browser = self.setup_page()
        self.wait_loaded(browser)

        browser.call("select", selector="#filter-status", value="Waiting")
        browser.wait(TABLE_IS, table(["sespage002"]), what="status filter Waiting")
        browser.call("select", selector="#filter-status", value="Active")
        browser.wait(TABLE_IS, table(["sespage001", "sespage005"]), what="status filter Active")
        browser.call("select", selector="#filter-status", value="")
        browser.wait(TABLE_IS, FIRST_PAGE, what="no status filter")

        browser.call("type", selector="#filter-runbook", text="rbk_beta")
        browser.call("press", key="Enter")
        browser.wait(TABLE_IS, table(["sespage003", "sespage004", "sespage005"]), what="runbook filter")
        browser.call("select", selector="#filter-status", value="Failed")
        browser.wait(TABLE_IS, table(["sespage003"]), what="runbook and status filters")
        browser.call("select", selector="#filter-status", value="")
        browser.call("type", selector="#filter-runbook", text="")
        browser.call("press", key="Enter")
        browser.wait(TABLE_IS, FIRST_PAGE, what="no runbook filter")

        # The search box: a case-insensitive substring of id, name or runbook.
        browser.call("type", selector="#search", text="ROTATE")
        browser.wait(TABLE_IS, table(["sespage002"]), what="search by name")
        browser.call("type", selector="#search", text="sespage00")
        browser.wait(TABLE_IS, table([s[0] for s in NAMED]), what="search by id")
        browser.call("type", selector="#search", text="rbk_gam")
        browser.wait(TABLE_IS, table(["sespage006"]), what="search by runbook")
        browser.call("type", selector="#search", text="no such session")
        browser.wait(TABLE_IS, table([]), what="search matching nothing")
        browser.call("click", selector="#clear-filters")
        browser.wait(TABLE_IS, FIRST_PAGE, what="filters cleared")

        # A count is a shortcut for its status filter.
        browser.call("click", selector='#counts [data-status="Failed"] button')
        browser.wait(TABLE_IS, table(["sespage003"]), what="the Failed count filters")
        self.assertEqual(browser.eval("() => document.getElementById('filter-status').value"), "Failed")
        # A filtered page follows live changes too.
        sim.set_status("sespage001", "Failed")
        browser.wait(TABLE_IS, table(["sespage001", "sespage003"]), what="a new failure in the filtered table")
        self.assert_clean(browser)

    def test_markup_in_a_name_is_text(self):
        sim, daemon, port, browser = self.setup_page()
        self.wait_loaded(browser)
        name = browser.wait("""(id) => {
            const tr = document.querySelector('#sessions tbody tr[data-id="' + id + '"]');
            return tr && tr.querySelector('td.name').textContent;
        }""", "sespage005", what="the row of the session named like markup")
        self.assertEqual(name, EVIL)
        self.assertEqual(browser.eval("() => document.querySelectorAll('img, [onerror]').length"), 0)
        # The event feed shows it as text as well.
        sim.set_status("sespage005", "Waiting")
        text = browser.wait("""(id) => {
            const li = document.querySelector('#feed li[data-session="' + id + '"] .name');
            return li && li.textContent;
        }""", "sespage005", what="the feed entry of the session named like markup")
        self.assertEqual(text, EVIL)
        browser.wait(ROW_STATUS, ["sespage005", "Waiting"], what="the row after the change")
        self.assertEqual(browser.eval("() => document.querySelectorAll('img, [onerror]').length"), 0)
        self.assertEqual(browser.eval("""(evil) => [...document.querySelectorAll('#sessions td.name, #feed .name')]
            .filter(node => node.textContent === evil && node.childElementCount <= 1).length""", EVIL), 2)
        report = self.assert_clean(browser)
        self.assertEqual(report["dialogs"], [])

    def test_survives_a_daemon_restart(self):
        sim, daemon, port, browser = self.setup_page()
        self.wait_loaded(browser)
        sim.set_status("sespage001", "Waiting")
        browser.wait(ROW_STATUS, ["sespage001", "Waiting"], what="a change before the restart")
        self.assert_clean(browser)

        daemon.stop()
        text = browser.wait(CONNECTION, "disconnected", timeout=10, what="the page shows it is disconnected")
        self.assertIn("disconnected — reconnecting", text)
        # Changed while the daemon is down: the page reloads it once back.
        sim.set_status("sespage006", "Active")
        # Let the page fail a reconnection or two before the daemon is back.
        attempts = lambda: sum(1 for r in browser.report()["requests"] if r["url"].endswith("/api/v1/events"))
        before = attempts()
        swtest.wait_until(lambda: attempts() >= before + 1, timeout=10, message="the page does not retry")

        second = self.start_daemon(self.make_daemon(sim, port, name="sessionwatchd-2"))
        browser.wait(CONNECTION, "live", timeout=15, what="the page is live again")
        browser.wait(ROW_STATUS, ["sespage006", "Active"], timeout=10, what="the change made while down")
        sim.set_status("sespage002", "Failed")
        browser.wait(ROW_STATUS, ["sespage002", "Failed"], timeout=10, what="a change after the restart")
        browser.wait(FEED_HAS, ["sespage002", "sessionwatch.session.failed"], what="the feed after the restart")
        browser.wait(COUNT_IS, ["Failed", 2], what="the counts after the restart")
        report = browser.report()
        self.assertEqual(report["pageErrors"], [])
        self.assertEqual(report["dialogs"], [])
        # What failed is what the daemon's absence explains: the page's own
        # requests to the daemon, refused or cut while it was down.
        for failed in report["failedRequests"]:
            self.assertTrue(failed["url"].startswith(f"http://127.0.0.1:{port}/api/v1/"), failed)
        self.assertEqual(second.poll(), None)

    def test_token(self):
        token = "page-test-token-0123456789"
        token_file = self.tmp.write("conf/http-token", token + "\n", mode=0o600)
        sim, daemon, port, browser = self.setup_page(http={"token-file": token_file})
        browser.wait("() => !document.getElementById('auth').hidden", what="the token form")
        self.assertEqual(browser.eval("() => document.getElementById('connection').dataset.state"), "unauthorized")
        browser.call("type", selector="#token", text=token)
        browser.call("press", key="Enter")
        self.wait_loaded(browser)
        self.assertTrue(browser.eval("() => document.getElementById('auth').hidden"))
        self.assertEqual(browser.eval("() => sessionStorage.getItem('sessionwatch.token')"), token)
        sim.set_status("sespage001", "Failed")
        browser.wait(ROW_STATUS, ["sespage001", "Failed"], what="a live change with the token")
        report = browser.report()
        self.assertEqual(report["pageErrors"], [])
        self.assertEqual(report["failedRequests"], [])
        # The only HTTP errors are the first answers without a token.
        self.assertTrue(report["httpErrors"])
        self.assertEqual({e["status"] for e in report["httpErrors"]}, {401}, report["httpErrors"])


if __name__ == "__main__":
    unittest.main()
