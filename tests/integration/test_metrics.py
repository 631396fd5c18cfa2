"""The Prometheus metrics: the [metrics] HTTP endpoint and `sessionwatchctl metrics`.

sessionwatchd polls apisim with `[metrics] listen` on a free loopback port.
The tests check:

* `promtool check metrics` (Debian's prometheus package) accepts the text
  of both the HTTP endpoint and `sessionwatchctl metrics`, which carry the
  same families, every one of the documented list among them;
* values move as apisim is driven: polls by outcome, the poll duration
  histogram, transitions by new status, a webhook delivery to a real
  receiver, a 429 counted as an API pause;
* a port already in use is a start-up error naming the address;
* a real Prometheus server on loopback scrapes the daemon, and the value
  comes back through Prometheus's HTTP API.
"""

import base64
import os
import re
import shutil
import socket
import subprocess
import unittest

import swtest
from webhook_receiver import WebhookReceiver

PROMTOOL = shutil.which("promtool")
PROMETHEUS = swtest.prometheus_binary()
SECRET = "whsec_" + base64.b64encode(b"metrics test webhook secret key!").decode()
INTERVAL = "50ms"

# Every family sessionwatchd(8) lists (METRICS), with its type. The webhook families have
# samples only with a [webhook] section; the state ones only with a state
# folder (both are configured here).
FAMILIES = {
    "sessionwatch_sessions": "gauge",
    "sessionwatch_sessions_watched": "gauge",
    "sessionwatch_sessions_gone": "gauge",
    "sessionwatch_transitions_total": "counter",
    "sessionwatch_events_total": "counter",
    "sessionwatch_stalled_total": "counter",
    "sessionwatch_polls_total": "counter",
    "sessionwatch_poll_duration_seconds": "histogram",
    "sessionwatch_requests_in_flight": "gauge",
    "sessionwatch_stale_answers_total": "counter",
    "sessionwatch_api_paused": "gauge",
    "sessionwatch_api_rate_limit_pauses_total": "counter",
    "sessionwatch_discovery_sweeps_total": "counter",
    "sessionwatch_discovery_pages_total": "counter",
    "sessionwatch_discovery_list_failures_total": "counter",
    "sessionwatch_discovery_sessions_discovered_total": "counter",
    "sessionwatch_discovery_sessions_refused_total": "counter",
    "sessionwatch_discovery_list_splits_total": "counter",
    "sessionwatch_api_requests_total": "counter",
    "sessionwatch_sessions_by_coverage": "gauge",
    "sessionwatch_sweep_scopes": "gauge",
    "sessionwatch_detection_delay_seconds": "histogram",
    "sessionwatch_schedule_lag_seconds": "histogram",
    "sessionwatch_schedule_behind_seconds": "gauge",
    "sessionwatch_webhook_deliveries_total": "counter",
    "sessionwatch_webhook_dropped_events_total": "counter",
    "sessionwatch_webhook_queue_depth": "gauge",
    "sessionwatch_webhook_in_flight": "gauge",
    "sessionwatch_webhook_oldest_pending_age_seconds": "gauge",
    "sessionwatch_webhook_disabled": "gauge",
    "sessionwatch_webhook_outbox_degraded": "gauge",
    "sessionwatch_webhook_orphaned_queues": "gauge",
    "sessionwatch_webhook_orphaned_events": "gauge",
    "sessionwatch_stream_clients": "gauge",
    "sessionwatch_stream_connections_total": "counter",
    "sessionwatch_stream_overflows_total": "counter",
    "sessionwatch_stream_refused_total": "counter",
    "sessionwatch_control_connections": "gauge",
    "sessionwatch_metrics_scrapes_total": "counter",
    "sessionwatch_http_requests_total": "counter",
    "sessionwatch_http_unauthorized_total": "counter",
    "sessionwatch_http_event_streams": "gauge",
    "sessionwatch_http_event_streams_total": "counter",
    "sessionwatch_http_event_stream_overflows_total": "counter",
    "sessionwatch_http_event_streams_refused_total": "counter",
    "sessionwatch_state_degraded": "gauge",
    "sessionwatch_state_file_bytes": "gauge",
    "sessionwatch_state_pending_bytes": "gauge",
    "sessionwatch_state_records_written_total": "counter",
    "sessionwatch_state_writes_total": "counter",
    "sessionwatch_state_write_duration_seconds": "summary",
    "sessionwatch_state_write_errors_total": "counter",
    "sessionwatch_state_compactions_total": "counter",
    "sessionwatch_build_info": "gauge",
    "sessionwatch_uptime_seconds": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_start_time_seconds": "gauge",
}

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset of (label, value)): float} and {family: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise AssertionError(f"not a sample line: {line!r}")
        labels = frozenset(_LABEL.findall(match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples, types


def value(samples, name, **labels):
    """One sample's value (AssertionError when it is missing)."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise AssertionError(f"no sample {name}{labels}")
    return samples[key]


def promtool_check(testcase, text, what):
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=swtest.scaled(30))
    testcase.assertEqual(done.returncode, 0, f"promtool rejects the {what}:\n{done.stdout}{done.stderr}")
    testcase.assertEqual(done.stdout.strip() + done.stderr.strip(), "", f"promtool lint findings on the {what}")


@unittest.skipUnless(PROMTOOL, "promtool (Debian package prometheus) is not installed")
class MetricsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = swtest.temp_dirs(self)

    # -- helpers ---------------------------------------------------------------

    def start_sim(self, sessions):
        return swtest.ApiSim(self.tmp, scenario={"sessions": sessions}).register(self).start()

    def secret_file(self):
        path = os.path.join(self.tmp.conf, "webhook-secret")
        with open(path, "w") as f:
            f.write(SECRET + "\n")
        os.chmod(path, 0o600)
        return path

    def make_daemon(self, sim, ids, port, webhook_url=None, name="sessionwatchd"):
        extra = {
            "api": {"rate-limit": "off"},
            "poll": {"interval": INTERVAL, "waiting-interval": INTERVAL},
            "journal": {"enable": False},
            "http": {"listen": f"127.0.0.1:{port}"},
        }
        config = swtest.Daemon.basic_config(sim.url, sessions=ids, extra=extra)
        if webhook_url:
            config[("webhook", "oncall")] = {"url": webhook_url, "secret-file": self.secret_file(),
                                             "retry-min": "50ms", "retry-max": "200ms", "timeout": "2s"}
        return swtest.Daemon(self.tmp, config, name=name).register(self)

    def start_daemon(self, *args, **kwargs):
        daemon = self.make_daemon(*args, **kwargs)
        daemon.start()
        daemon.wait_control()
        return daemon

    @staticmethod
    def scrape(port):
        response = swtest.http_request("GET", f"http://127.0.0.1:{port}/metrics")
        assert response.status == 200, response
        return response

    def wait_value(self, port, predicate, message):
        """Scrape until predicate(samples) holds; return the samples."""
        def check():
            samples, _ = parse_metrics(self.scrape(port).text)
            return samples if predicate(samples) else None
        return swtest.wait_until(check, timeout=20, message=message)

    # -- tests -----------------------------------------------------------------

    def test_promtool_accepts_the_endpoint_and_the_control_command(self):
        receiver = WebhookReceiver(secrets=(SECRET,)).register(self).start()
        sim = self.start_sim([swtest.sim_session("ses_a", [(0, "Active")])])
        port = swtest.free_port()
        daemon = self.start_daemon(sim, ["ses_a"], port, webhook_url=receiver.url)
        self.wait_value(port, lambda s: value(s, "sessionwatch_polls_total", outcome="ok") >= 2,
                        "no successful poll counted")

        response = self.scrape(port)
        self.assertEqual(response.headers.get("Content-Type"), "text/plain; version=0.0.4; charset=utf-8")
        ctl = daemon.ctl("metrics")
        self.assertEqual(ctl.returncode, 0, ctl.stderr)
        promtool_check(self, response.text, "HTTP endpoint's text")
        promtool_check(self, ctl.stdout, "output of sessionwatchctl metrics")

        samples, types = parse_metrics(response.text)
        ctl_samples, ctl_types = parse_metrics(ctl.stdout)
        self.assertEqual(types, ctl_types, "the endpoint and the control command differ in families")
        self.assertEqual(set(samples), set(ctl_samples), "the endpoint and the control command differ in series")
        for family, kind in FAMILIES.items():
            self.assertEqual(types.get(family), kind, f"family {family}")
        self.assertEqual(sorted(set(types) - set(FAMILIES)), [], "families missing from the documented list")
        self.assertEqual(value(samples, "sessionwatch_webhook_disabled", webhook="oncall"), 0)
        self.assertEqual(value(samples, "sessionwatch_sessions", status="Active"), 1)
        self.assertEqual(value(samples, "process_open_fds") > 0, True)
        build = [labels for (name, labels) in samples if name == "sessionwatch_build_info"]
        self.assertEqual(len(build), 1)
        self.assertRegex(dict(build[0])["version"], r"^\d+\.\d+\.\d+")
        # The poll outcomes are the documented set, the finer API outcomes folded in.
        outcomes = {dict(labels)["outcome"] for (name, labels) in samples if name == "sessionwatch_polls_total"}
        self.assertEqual(outcomes, {"ok", "http_4xx", "http_5xx", "rate_limited", "timeout", "network", "decode",
                                    "tls"})
        self.assertGreaterEqual(value(samples, "sessionwatch_metrics_scrapes_total", result="ok"), 1)
        daemon.stop()

    def test_values_move_as_the_api_is_driven(self):
        receiver = WebhookReceiver(secrets=(SECRET,)).register(self).start()
        sim = self.start_sim([swtest.sim_session("ses_a", [(0, "Pending")]),
                              swtest.sim_session("ses_b", [(0, "Active")])])
        port = swtest.free_port()
        daemon = self.start_daemon(sim, ["ses_a", "ses_b"], port, webhook_url=receiver.url)
        first = self.wait_value(
            port, lambda s: value(s, "sessionwatch_transitions_total", status="Pending") == 1 and
            value(s, "sessionwatch_transitions_total", status="Active") == 1,
            "the first observations were not counted by status")
        self.assertEqual(value(first, "sessionwatch_transitions_total", status="Succeeded"), 0)

        sim.set_status("ses_a", "Active")
        sim.set_status("ses_b", "Succeeded")
        later = self.wait_value(
            port, lambda s: value(s, "sessionwatch_transitions_total", status="Active") == 2 and
            value(s, "sessionwatch_transitions_total", status="Succeeded") == 1 and
            value(s, "sessionwatch_webhook_deliveries_total", webhook="oncall", outcome="success") >= 4,
            "the transitions or their webhook deliveries were not counted")
        self.assertGreater(value(later, "sessionwatch_polls_total", outcome="ok"),
                           value(first, "sessionwatch_polls_total", outcome="ok"))
        self.assertEqual(value(later, "sessionwatch_sessions", status="Succeeded"), 1)
        self.assertEqual(value(later, "sessionwatch_events_total"), 4)
        self.assertEqual(len(receiver.delivered_ids()) >= 4, True)
        # The histogram counts every completed poll once, and its buckets add up.
        count = value(later, "sessionwatch_poll_duration_seconds_count")
        self.assertGreaterEqual(count, value(later, "sessionwatch_polls_total", outcome="ok"))
        self.assertEqual(value(later, "sessionwatch_poll_duration_seconds_bucket", le="+Inf"), count)
        self.assertGreater(value(later, "sessionwatch_poll_duration_seconds_sum"), 0)
        # The delay histograms have their finite buckets, 0.1 s to 600 s, and
        # not only +Inf: both changes above were observed in the first one.
        for family in ("sessionwatch_detection_delay_seconds", "sessionwatch_schedule_lag_seconds"):
            bounds = sorted(float(dict(labels)["le"]) for (name, labels) in later if name == family + "_bucket")
            self.assertEqual(len(bounds), 19, f"{family} buckets: {bounds}")
            self.assertEqual((bounds[0], bounds[-2], bounds[-1]), (0.1, 600, float("inf")), family)
        self.assertEqual(value(later, "sessionwatch_detection_delay_seconds_count"), 2)
        self.assertEqual(value(later, "sessionwatch_detection_delay_seconds_bucket", le="600"), 2)
        # Every transition went to the state file.
        self.assertGreaterEqual(value(later, "sessionwatch_state_writes_total"), 1)
        self.assertEqual(value(later, "sessionwatch_state_write_duration_seconds_count"),
                         value(later, "sessionwatch_state_writes_total"))

        # A 429 holds every request: counted as a pause and a rate_limited poll.
        self.assertEqual(value(later, "sessionwatch_api_rate_limit_pauses_total", request="get"), 0)
        sim.fault("429", count=1, session="ses_a", retry_after=1)
        paused = self.wait_value(
            port, lambda s: value(s, "sessionwatch_api_rate_limit_pauses_total", request="get") == 1,
            "the 429 pause was not counted")
        self.assertEqual(value(paused, "sessionwatch_polls_total", outcome="rate_limited"), 1)
        self.assertEqual(value(paused, "sessionwatch_api_rate_limit_pauses_total", request="list"), 0)
        # Polling resumes after the pause.
        self.wait_value(port, lambda s: value(s, "sessionwatch_api_paused") == 0 and
                        value(s, "sessionwatch_polls_total", outcome="ok") >
                        value(paused, "sessionwatch_polls_total", outcome="ok"),
                        "polling did not resume after the 429 pause")
        daemon.stop()

    def test_a_port_in_use_is_a_start_up_error_naming_the_address(self):
        sim = self.start_sim([swtest.sim_session("ses_a", [(0, "Active")])])
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            daemon = self.make_daemon(sim, ["ses_a"], port)
            daemon.start()
            returncode = daemon.wait(timeout=20)
        self.assertNotEqual(returncode, 0)
        self.assertIn(f"127.0.0.1:{port}", daemon.stderr_text())
        self.assertIn("[http] listen", daemon.stderr_text())

    @unittest.skipUnless(PROMETHEUS, "prometheus (Debian package prometheus) is not installed")
    def test_a_prometheus_server_scrapes_the_daemon(self):
        sim = self.start_sim([swtest.sim_session("ses_a", [(0, "Active")])])
        port = swtest.free_port()
        daemon = self.start_daemon(sim, ["ses_a"], port)
        # register() kills it at the end of the test, whatever happens.
        prometheus = swtest.Prometheus(self.tmp, [f"127.0.0.1:{port}"], binary=PROMETHEUS).register(self)
        prometheus.start()

        result = prometheus.wait_query("sessionwatch_build_info", timeout=60,
                                       message="Prometheus returned no sample")
        self.assertEqual(len(result), 1)
        self.assertEqual(result[0]["value"][1], "1")
        self.assertEqual(result[0]["metric"]["job"], "sessionwatch")
        self.assertEqual(result[0]["metric"]["instance"], f"127.0.0.1:{port}")
        self.assertRegex(result[0]["metric"]["version"], r"^\d+\.\d+\.\d+")
        prometheus.stop(timeout=20)
        daemon.stop()


if __name__ == "__main__":
    unittest.main()
