"""The Grafana dashboard dist/grafana/sessionwatch.json, checked the way it is used.

* Its structure is that of an importable dashboard: ``__inputs`` asking for
  a Prometheus data source, a data source template variable every panel,
  target and query variable refers to, unique panel ids, grid positions that
  fit the 24-column grid without overlapping, targets with an expression and
  a unique refId, no reference to a variable that does not exist, and
  ``$__rate_interval`` as the window of every range selector.
* Every panel target's expression returns data from a real Prometheus
  (Debian package ``prometheus``, loopback, 1 s scrape interval) scraping a
  real sessionwatchd that polls apisim, with ``$__rate_interval``,
  ``$__interval`` and ``$__range`` replaced by 30s and the job and instance
  variables resolved by their own queries as Grafana would. apisim and a
  webhook receiver are driven so that every panel has something to show:
  transitions (one of them to Failed), a webhook backlog (the receiver
  answers 503) that is then delivered, an HTTP 429 hold on the API, and a
  client on the event stream socket. Each target must return at least one
  series with a finite value, and a non-zero one where the scenario makes
  it so; an expression naming a family the daemon does not export fails at
  once, naming it.
"""

import base64
import json
import math
import os
import re
import socket
import threading
import unittest

import swtest
from webhook_receiver import WebhookReceiver

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("SW_SOURCE_DIR") or os.path.normpath(os.path.join(HERE, "..", ".."))
DASHBOARD = os.path.join(SOURCE_DIR, "dist", "grafana", "sessionwatch.json")

PROMETHEUS = swtest.prometheus_binary()
SECRET = "whsec_" + base64.b64encode(b"grafana test webhook secret key!").decode()
INTERVAL = "50ms"
WINDOW = "30s"

# Grafana's own variables the dashboard may use, with what the test puts in
# their place.
BUILTINS = {"__rate_interval": WINDOW, "__interval": WINDOW, "__range": WINDOW}

# Families every dashboard must show (the panels asked for).
REQUIRED_FAMILIES = {
    "sessionwatch_sessions",
    "sessionwatch_transitions_total",
    "sessionwatch_detection_delay_seconds_bucket",
    "sessionwatch_polls_total",
    "sessionwatch_api_requests_total",
    "sessionwatch_api_rate_limit_pauses_total",
    "sessionwatch_api_paused",
    "sessionwatch_webhook_queue_depth",
    "sessionwatch_webhook_oldest_pending_age_seconds",
    "sessionwatch_stream_clients",
    "sessionwatch_http_event_streams",
    "sessionwatch_poll_duration_seconds_bucket",
    "sessionwatch_schedule_behind_seconds",
}

# Families the scenario below makes non-zero: a target made of these alone
# must show a value above 0 at some moment. The others (requests in flight,
# how far behind the schedule is, HTTP event streams) may rightly read 0.
DRIVEN = {
    "sessionwatch_sessions",
    "sessionwatch_sessions_watched",
    "sessionwatch_uptime_seconds",
    "sessionwatch_transitions_total",
    "sessionwatch_detection_delay_seconds_bucket",
    "sessionwatch_polls_total",
    "sessionwatch_poll_duration_seconds_bucket",
    "sessionwatch_poll_duration_seconds_sum",
    "sessionwatch_poll_duration_seconds_count",
    "sessionwatch_api_requests_total",
    "sessionwatch_api_rate_limit_pauses_total",
    "sessionwatch_api_paused",
    "sessionwatch_webhook_queue_depth",
    "sessionwatch_webhook_oldest_pending_age_seconds",
    "sessionwatch_webhook_deliveries_total",
    "sessionwatch_stream_clients",
}

_METRIC = re.compile(r"\b((?:sessionwatch|process)_[A-Za-z0-9_]+)")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_RANGE = re.compile(r"\[([^\[\]]*)\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*\S)\s*,\s*)?(\w+)\s*\)\s*$")


def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def all_panels(dashboard):
    """Every panel, those inside rows included."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found += panel.get("panels", [])
    return found


def query_panels(dashboard):
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def variable_query(variable):
    query = variable.get("query")
    return query.get("query") if isinstance(query, dict) else query


def metric_names(expr):
    return set(_METRIC.findall(expr))


def regex_escape(value):
    """A label value as Grafana's Prometheus data source puts a selected
    value of a multi-value variable into a regex matcher: regex specials
    escaped, backslashes doubled for the PromQL string."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def substitute(text, values):
    """Replace ``$name``, ``${name}`` and ``[[name]]`` with ``values[name]``;
    a name not in ``values`` raises KeyError."""
    def one(match):
        name = match.group(1) or match.group(2) or match.group(3)
        return values[name]
    return _VARIABLE.sub(one, text)


def sample_values(result):
    return [float(series["value"][1]) for series in result]


class StreamClient:
    """A client of the event stream socket that reads every line."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall(b"{}\n")
        self.lines = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        pending = b""
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            *complete, pending = pending.split(b"\n")
            with self.lock:
                self.lines += [json.loads(line) for line in complete if line.strip()]

    def types(self):
        with self.lock:
            return [line.get("type") for line in self.lines]

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


class DashboardStructureTest(unittest.TestCase):
    def setUp(self):
        self.dashboard = load_dashboard()
        self.variables = {v.get("name"): v for v in self.dashboard.get("templating", {}).get("list", [])}
        datasources = [v for v in self.variables.values() if v.get("type") == "datasource"]
        self.assertEqual(len(datasources), 1, "one data source template variable")
        self.datasource_var = datasources[0]
        self.datasource_refs = {f"${{{self.datasource_var['name']}}}", f"${self.datasource_var['name']}"}

    def assert_datasource(self, ref, what):
        self.assertIsInstance(ref, dict, f"{what}: datasource is not an object")
        self.assertEqual(ref.get("type"), "prometheus", f"{what}: datasource type")
        self.assertIn(ref.get("uid"), self.datasource_refs,
                      f"{what}: datasource does not refer to the ${self.datasource_var['name']} variable")

    def test_import_metadata(self):
        d = self.dashboard
        inputs = {i.get("name"): i for i in d.get("__inputs", [])}
        self.assertIn("DS_PROMETHEUS", inputs)
        self.assertEqual(inputs["DS_PROMETHEUS"].get("type"), "datasource")
        self.assertEqual(inputs["DS_PROMETHEUS"].get("pluginId"), "prometheus")
        requires = {(r.get("type"), r.get("id")) for r in d.get("__requires", [])}
        self.assertIn(("grafana", "grafana"), requires)
        self.assertIn(("datasource", "prometheus"), requires)
        for panel in query_panels(d):
            self.assertIn(("panel", panel.get("type")), requires, f"panel type {panel.get('type')} in __requires")
        self.assertIsNone(d.get("id"), "an importable dashboard has id null")
        self.assertRegex(d.get("uid", ""), r"^[A-Za-z0-9_-]{1,40}$")
        self.assertTrue(d.get("title"))
        self.assertIsInstance(d.get("schemaVersion"), int)
        self.assertTrue(36 <= d["schemaVersion"] <= 41, f"schemaVersion {d['schemaVersion']}")
        self.assertIn("from", d.get("time", {}))

    def test_the_data_source_variable_is_the_imported_prometheus(self):
        var = self.datasource_var
        self.assertEqual(var.get("query"), "prometheus")
        self.assertEqual(var.get("current", {}).get("value"), "${DS_PROMETHEUS}",
                         "the data source variable defaults to the one chosen at import")
        for name, variable in self.variables.items():
            if variable.get("type") == "query":
                self.assert_datasource(variable.get("datasource"), f"variable {name}")
                self.assertTrue(variable_query(variable), f"variable {name} has a query")

    def test_panels_ids_grid_datasource_and_targets(self):
        panels = all_panels(self.dashboard)
        self.assertTrue(panels, "no panels")
        ids = [p.get("id") for p in panels]
        self.assertTrue(all(isinstance(i, int) for i in ids), f"panel ids {ids}")
        self.assertEqual(len(ids), len(set(ids)), f"panel ids repeat: {ids}")
        cells = {}
        for panel in panels:
            what = f"panel {panel.get('id')} {panel.get('title')!r}"
            self.assertTrue(panel.get("title"), f"{what}: no title")
            grid = panel.get("gridPos")
            self.assertIsInstance(grid, dict, f"{what}: no gridPos")
            for key in ("x", "y", "w", "h"):
                self.assertIsInstance(grid.get(key), int, f"{what}: gridPos.{key}")
            self.assertTrue(grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] >= 1 and grid["h"] >= 1, what)
            self.assertLessEqual(grid["x"] + grid["w"], 24, f"{what}: wider than the grid")
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    self.assertNotIn((x, y), cells, f"{what} overlaps panel {cells.get((x, y))}")
                    cells[(x, y)] = panel["id"]
            if panel.get("type") == "row":
                self.assertFalse(panel.get("targets"), f"{what}: a row has no targets")
                continue
            self.assert_datasource(panel.get("datasource"), what)
            targets = panel.get("targets")
            self.assertIsInstance(targets, list, f"{what}: no targets")
            self.assertTrue(targets, f"{what}: no targets")
            ref_ids = [t.get("refId") for t in targets]
            self.assertTrue(all(isinstance(r, str) and r for r in ref_ids), f"{what}: refIds {ref_ids}")
            self.assertEqual(len(ref_ids), len(set(ref_ids)), f"{what}: refIds repeat: {ref_ids}")
            for target in targets:
                self.assertIsInstance(target.get("expr"), str, f"{what} {target.get('refId')}: no expr")
                self.assertTrue(target["expr"].strip(), f"{what} {target.get('refId')}: empty expr")
                if "datasource" in target:
                    self.assert_datasource(target["datasource"], f"{what} target {target['refId']}")

    def test_every_variable_reference_resolves(self):
        known = (set(self.variables) | set(BUILTINS) | {"__all"}
                 | {i["name"] for i in self.dashboard.get("__inputs", [])})
        text = json.dumps(self.dashboard)
        for match in _VARIABLE.finditer(text):
            name = match.group(1) or match.group(2) or match.group(3)
            self.assertIn(name, known, f"{match.group(0)} names no variable")

    def test_range_windows_follow_the_scrape_interval(self):
        for panel in query_panels(self.dashboard):
            for target in panel["targets"]:
                for window in _RANGE.findall(target["expr"]):
                    self.assertEqual(window, "$__rate_interval",
                                     f"panel {panel['title']!r} {target['refId']}: window [{window}] "
                                     f"in {target['expr']}")

    def test_the_panels_asked_for_are_there(self):
        used = set()
        for panel in query_panels(self.dashboard):
            for target in panel["targets"]:
                used |= metric_names(target["expr"])
        self.assertEqual(sorted(REQUIRED_FAMILIES - used), [], "families no panel shows")


@unittest.skipUnless(PROMETHEUS, "prometheus (Debian package prometheus) is not installed")
class PanelQueriesTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)
        self.dashboard = load_dashboard()

    def secret_file(self):
        path = os.path.join(self.tmp.conf, "webhook-secret")
        with open(path, "w") as f:
            f.write(SECRET + "\n")
        os.chmod(path, 0o600)
        return path

    def resolve_variables(self, prometheus, port):
        """The value of every template variable, as Grafana puts it in a
        query with "All" selected: the data source variable is not used in
        an expression; each query variable's label_values() is run through
        /api/v1/series, after the variables before it are filled in."""
        values = dict(BUILTINS)
        for variable in self.dashboard["templating"]["list"]:
            if variable.get("type") != "query":
                continue
            name, query = variable["name"], variable_query(variable)
            match = _LABEL_VALUES.match(query)
            self.assertIsNotNone(match, f"variable {name}: {query!r} is not label_values(...)")
            selector, label = match.group(1), match.group(2)
            selector = substitute(selector, values) if selector else "{__name__=~\".+\"}"

            def found():
                return sorted({s[label] for s in prometheus.series(selector) if label in s})

            options = swtest.wait_until(found, timeout=30, interval=0.2,
                                        message=f"variable {name}: {selector} has no {label} label")
            values[name] = regex_escape(options[0]) if len(options) == 1 else \
                "(" + "|".join(regex_escape(o) for o in options) + ")"
            self.resolved[name] = options
        self.assertEqual(self.resolved.get("instance"), [f"127.0.0.1:{port}"])
        self.assertEqual(self.resolved.get("job"), ["sessionwatch"])
        return values

    def test_every_panel_query_returns_data(self):
        receiver = WebhookReceiver(secrets=(SECRET,)).register(self).start()
        receiver.answer(503)  # a backlog first
        sim = swtest.ApiSim(self.tmp, scenario={"sessions": [
            swtest.sim_session("ses_a", [(0, "Pending")]),
            swtest.sim_session("ses_b", [(0, "Active")]),
            swtest.sim_session("ses_c", [(0, "Active")]),
        ]}).register(self).start()
        port = swtest.free_port()
        config = swtest.Daemon.basic_config(sim.url, sessions=["ses_a", "ses_b", "ses_c"], extra={
            "api": {"rate-limit": "off"},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL},
            "journal": {"enable": False},
            "metrics": {"listen": f"127.0.0.1:{port}"},
        })
        config[("webhook", "oncall")] = {"url": receiver.url, "secret-file": self.secret_file(),
                                         "retry-min": "50ms", "retry-max": "200ms", "timeout": "2s"}
        daemon = swtest.Daemon(self.tmp, config).register(self)
        daemon.start()
        daemon.wait_control()
        prometheus = swtest.Prometheus(self.tmp, [f"127.0.0.1:{port}"], binary=PROMETHEUS).register(self)
        prometheus.start()
        client = StreamClient(daemon.events_socket)
        self.addCleanup(client.close)

        self.resolved = {}
        values = self.resolve_variables(prometheus, port)
        text = swtest.http_get(f"http://127.0.0.1:{port}/metrics").text
        families = dict(line.split(" ")[2:4] for line in text.splitlines() if line.startswith("# TYPE "))

        def exported(name):
            if name in families:
                return True
            base, _, suffix = name.rpartition("_")
            return suffix in ("bucket", "sum", "count") and families.get(base) in ("histogram", "summary")

        # Every target: its panel, refId, expression as run, and state.
        targets, failures = [], {}
        for panel in query_panels(self.dashboard):
            for target in panel["targets"]:
                expr = substitute(target["expr"], values)
                self.assertNotIn("$", expr, f"unresolved variable in {expr}")
                names = metric_names(expr)
                entry = {"panel": panel["title"], "refId": target["refId"], "expr": expr,
                         "nonzero": bool(names) and names <= DRIVEN, "names": names, "last": None}
                missing = sorted(n for n in names if not exported(n))
                if missing:
                    failures[(panel["title"], target["refId"])] = (
                        f"the daemon exports no family {', '.join(missing)} (GET /metrics has no "
                        f"'# TYPE {missing[0]}' line), so panel {panel['title']!r} query "
                        f"{target['refId']} cannot show data: {expr}")
                else:
                    targets.append(entry)
        pending = list(targets)

        def satisfied(entry):
            result = prometheus.query(entry["expr"])  # a refused expression fails at once
            entry["last"] = result
            numbers = [v for v in sample_values(result) if math.isfinite(v)]
            return bool(numbers) and (not entry["nonzero"] or any(v > 0 for v in numbers))

        def sweep():
            """Query every target not yet satisfied; True once none is left."""
            pending[:] = [entry for entry in pending if not satisfied(entry)]
            return not pending

        def settled(families):
            """No target on one of ``families`` is left."""
            return not any(entry["names"] & families for entry in pending)

        def wait(condition, message, timeout=30):
            swtest.wait_until(lambda: (sweep(), condition())[1], timeout=timeout, interval=0.2,
                              message=message)

        # The first observations scraped: then every later change is a rise
        # Prometheus sees.
        wait(lambda: sample_values(prometheus.query("sum(sessionwatch_transitions_total)")) == [3.0]
             and "sessionwatch.stream.live" in client.types(),
             "Prometheus did not scrape the first three observations, or the stream client is not live")
        sim.set_status("ses_a", "Active")
        sim.set_status("ses_b", "Failed")
        sim.set_status("ses_c", "Succeeded")

        # The receiver refuses every delivery until the queue's panels show it.
        wait(lambda: settled({"sessionwatch_webhook_queue_depth",
                              "sessionwatch_webhook_oldest_pending_age_seconds"}),
             "the webhook queue panels never showed the backlog")
        receiver.answer(200)
        wait(lambda: len(set(receiver.delivered_ids())) >= 6, "the six events were not delivered")

        # Every API request answers 429 (each renewing the hold for a
        # second) until the pause panels show the hold.
        sim.fault("429", count=1000000, retry_after=1)
        wait(lambda: settled({"sessionwatch_api_paused", "sessionwatch_api_rate_limit_pauses_total"}),
             "the 429 panels never showed the hold")
        sim.clear_faults()

        try:
            wait(lambda: not pending, "some panel queries returned no data")
        except AssertionError:
            pass  # each one is reported below
        for entry in pending:
            failures[(entry["panel"], entry["refId"])] = (
                f"panel {entry['panel']!r} query {entry['refId']} returned "
                f"{'no non-zero value' if entry['nonzero'] and entry['last'] else 'no data'}: {entry['expr']}\n"
                f"last answer: {json.dumps(entry['last'])[:600]}")
        for (panel, ref_id), message in sorted(failures.items()):
            with self.subTest(panel=panel, refId=ref_id):
                self.fail(message)
        self.assertEqual(receiver.bad_signatures(), [])
        daemon.stop()
        prometheus.stop(timeout=20)


if __name__ == "__main__":
    unittest.main()
