"""Integration tests of apisim, the Airplane API simulator.

They run the real binary ($SW_APISIM) and check it against the API contract
(the OpenAPI document's /sessions/get, /sessions/list and /runbooks/execute),
the scenario and generator semantics, every fault kind, the admin API, and
the command line. Conditions that change over time are polled with a
deadline; nothing sleeps for a fixed time where a condition can be polled.
"""

import datetime
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
import unittest
import urllib.parse

import swtest

KEY = swtest.DEFAULT_API_KEY
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}\+00$")
GENERATED_ID_RE = re.compile(r"^(ses|rbk|tea|usr)\d{8}z[0-9a-z]{6,8}$")
LIFECYCLE_RE = re.compile(r"^Pending Active( Waiting Active){0,2} (Succeeded|Failed|Cancelling Cancelled)$")
FIELDS = {
    "id": str, "name": str, "runbookID": str, "teamID": str, "status": str, "createdAt": str,
    "createdBy": str, "updatedAt": str, "updatedBy": str, "isPrivate": bool, "paramValues": dict,
    "params": list, "permissions": list,
}


def parse_airplane_time(text):
    """Seconds since the epoch of an Airplane timestamp (exact to the microsecond)."""
    dt = datetime.datetime.strptime(text[:-3], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def rfc3339(seconds):
    """An RFC 3339 timestamp with microseconds for the epoch seconds."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="microseconds")


def session(session_id, timeline, runbook="rbkTestA", **extra):
    return swtest.sim_session(session_id, timeline, runbook_id=runbook, **extra)


class ApiSimCase(unittest.TestCase):
    """Starts one apisim per test, stopped (and checked to exit 0) at the end."""

    def start_sim(self, **kwargs):
        tmp = swtest.temp_dirs(self)
        sim = swtest.ApiSim(tmp, **kwargs)
        sim.register(self)
        sim.start()
        # Runs before register's kill: apisim must exit 0 on SIGTERM (and,
        # in a sanitizer build, without leaks).
        self.addCleanup(sim.stop)
        self.tmp = tmp
        return sim

    def get(self, sim, session_id, **kwargs):
        return sim.api("GET", "/sessions/get?" + urllib.parse.urlencode({"id": session_id}), **kwargs)

    def list(self, sim, **params):
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return sim.api("GET", "/sessions/list" + ("?" + query if query else ""))

    def list_ids(self, sim, **params):
        response = self.list(sim, **params)
        self.assertEqual(response.status, 200, response.text)
        return [s["id"] for s in response.json()["sessions"]]

    def list_sessions(self, sim, **params):
        response = self.list(sim, **params)
        self.assertEqual(response.status, 200, response.text)
        return response.json()["sessions"]

    def paged_ids(self, sim, limit, **params):
        """Every page of a list, until the first short one: a list of pages."""
        pages = []
        while True:
            ids = self.list_ids(sim, limit=limit, page=len(pages), **params)
            pages.append(ids)
            if len(ids) < limit:
                return pages

    def assert_json_error(self, response, status):
        self.assertEqual(response.status, status, response.text)
        self.assertTrue(response.headers["Content-Type"].startswith("application/json"))
        body = response.json()
        self.assertIsInstance(body.get("error"), str)
        self.assertTrue(body["error"])
        return body["error"]

    def raw_request(self, sim, path, key=KEY, method="GET", body=None):
        """One request on its own connection; returns (status, headers, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=swtest.scaled(10))
        try:
            headers = {"X-Airplane-API-Key": key} if key else {}
            conn.request(method, sim.prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()


class ResponseShapeTest(ApiSimCase):
    def test_get_carries_every_field_with_airplane_formats(self):
        sim = self.start_sim(sessions=20, seed=7)
        sim_ids = [s["id"] for s in sim.sessions()["sessions"]]
        self.assertEqual(len(sim_ids), 20)
        sizes = []
        for session_id in sim_ids:
            response = self.get(sim, session_id)
            self.assertEqual(response.status, 200, response.text)
            self.assertTrue(response.headers["Content-Type"].startswith("application/json"))
            body = response.json()
            sizes.append(len(response.body))
            self.assertEqual(set(body), set(FIELDS))
            for field, kind in FIELDS.items():
                self.assertIsInstance(body[field], kind, field)
            self.assertEqual(body["id"], session_id)
            for field in ("id", "runbookID", "teamID", "createdBy"):
                self.assertRegex(body[field], GENERATED_ID_RE)
            self.assertRegex(body["createdAt"], TIMESTAMP_RE)
            self.assertRegex(body["updatedAt"], TIMESTAMP_RE)
            self.assertLessEqual(parse_airplane_time(body["createdAt"]), parse_airplane_time(body["updatedAt"]))
            self.assertIn(body["status"], ("Pending", "Active", "Waiting", "Succeeded", "Failed", "Cancelling",
                                           "Cancelled"))
            self.assertTrue(all(isinstance(v, str) for v in body["paramValues"].values()))
            self.assertEqual({p["slug"] for p in body["params"]}, set(body["paramValues"]))
            for param in body["params"]:
                self.assertTrue({"name", "slug", "type"} <= set(param))
            if body["isPrivate"]:
                self.assertTrue(body["permissions"])
        # A realistic body, as the real API's, is several hundred bytes.
        self.assertTrue(all(400 <= size <= 1200 for size in sizes), sizes)

    def test_scenario_strings_are_escaped_and_statuses_verbatim(self):
        name = 'quote " backslash \\ newline \n tab \t ctrl \x01 unicode é ✓'
        scenario = {"sessions": [
            session("ses20220120za1pskd", [[-1, "Pending"], [-0.5, "Ëxploding \"now\""]], name=name,
                    teamID="tea20220103zvy4auu", createdBy="usr20220103zlufhym", isPrivate=True,
                    paramValues={"limit": "20", "user": "eric \"the\" admin"}),
        ]}
        sim = self.start_sim(scenario=scenario)
        response = self.get(sim, "ses20220120za1pskd")
        self.assertEqual(response.status, 200, response.text)
        body = response.json()
        self.assertEqual(body["name"], name)
        self.assertEqual(body["status"], 'Ëxploding "now"')
        self.assertEqual(body["teamID"], "tea20220103zvy4auu")
        self.assertEqual(body["createdBy"], "usr20220103zlufhym")
        self.assertEqual(body["runbookID"], "rbkTestA")
        self.assertIs(body["isPrivate"], True)
        self.assertEqual(body["paramValues"], {"limit": "20", "user": "eric \"the\" admin"})
        self.assertAlmostEqual(parse_airplane_time(body["updatedAt"]) - parse_airplane_time(body["createdAt"]),
                               0.5, places=5)


class AuthAndErrorsTest(ApiSimCase):
    def test_missing_or_wrong_key_is_401_with_json_error(self):
        sim = self.start_sim(sessions=1, key="s3cret-key")
        session_id = sim.sessions()["sessions"][0]["id"]
        self.assert_json_error(self.get(sim, session_id, key=False), 401)
        self.assert_json_error(self.get(sim, session_id, key="wrong"), 401)
        self.assert_json_error(self.get(sim, session_id, key="s3cret-key "), 401)
        self.assert_json_error(sim.api("GET", "/sessions/list", key="x"), 401)
        self.assert_json_error(sim.api("POST", "/runbooks/execute", body={"id": "rbk1"}, key=False), 401)
        self.assertEqual(self.get(sim, session_id).status, 200)
        counters = sim.counters()["requests"]
        self.assertEqual(counters["unauthorized"], 5)
        self.assertEqual(counters["get"], 1)

    def test_unknown_session_and_unknown_paths_are_404(self):
        sim = self.start_sim(sessions=1)
        self.assertIn("not found", self.assert_json_error(self.get(sim, "ses20990101zzzzzzz"), 404))
        self.assert_json_error(sim.api("GET", "/sessions/nope"), 404)
        self.assert_json_error(swtest.http_get(sim.origin + "/v1/sessions/get?id=x"), 404)
        self.assert_json_error(swtest.http_get(sim.origin + "/"), 404)
        self.assert_json_error(swtest.http_get(sim.origin + "/_sim/nope"), 404)
        self.assert_json_error(sim.api("POST", "/sessions/get?id=x", body={}), 405)
        self.assertEqual(sim.counters()["requests"]["notFound"], 1)

    def test_bad_query_parameters_are_400(self):
        sim = self.start_sim(sessions=3)
        cases = ["/sessions/get", "/sessions/get?id=",
                 "/sessions/list?limit=51", "/sessions/list?limit=-1", "/sessions/list?limit=ten",
                 "/sessions/list?limit=1.5", "/sessions/list?page=abc", "/sessions/list?page=-1",
                 "/sessions/list?updatedAfter=yesterday", "/sessions/list?updatedBefore=2022-13-01T00:00:00Z",
                 "/sessions/list?updatedAfter=2022-01-01T12:00:00",  # no offset: not RFC 3339
                 "/sessions/list?updatedAfter=2022-02-30T12:00:00Z"]
        for path in cases:
            with self.subTest(path=path):
                self.assert_json_error(sim.api("GET", path), 400)
        self.assertEqual(sim.counters()["requests"]["badRequest"], len(cases))
        for path in ("/sessions/list?limit=0", "/sessions/list?limit=50&page=0",
                     "/sessions/list?updatedAfter=2022-01-01T12:00:00-00:00",
                     "/sessions/list?updatedAfter=2022-01-01t12:00:00.123z"):
            with self.subTest(path=path):
                self.assertEqual(sim.api("GET", path).status, 200)

    def test_keep_alive_survives_errors(self):
        sim = self.start_sim(sessions=1)
        session_id = sim.sessions()["sessions"][0]["id"]
        conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=swtest.scaled(10))
        self.addCleanup(conn.close)
        statuses = []
        for path, key in (("/sessions/get?id=" + session_id, KEY), ("/sessions/get?id=nope", KEY),
                          ("/sessions/get?id=" + session_id, "bad"), ("/sessions/list?limit=99", KEY),
                          ("/sessions/list", KEY)):
            conn.request("GET", "/v0" + path, headers={"X-Airplane-API-Key": key})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            sock = conn.sock
            self.assertIsNotNone(sock, "the server closed the connection after %d" % response.status)
        self.assertEqual(statuses, [200, 404, 401, 400, 200])


class ListTest(ApiSimCase):
    def scenario(self):
        sessions = [session(f"ses_a{i}", [[-100 + 10 * i, "Pending"], [-95 + 10 * i, "Active"]])
                    for i in range(5)]
        sessions += [session(f"ses_b{i}", [[-98 + 10 * i, "Succeeded"]], runbook="rbkTestB") for i in range(2)]
        # Two sessions with the same updatedAt: ordered by id.
        sessions += [session("ses_tie2", [[-3, "Failed"]]), session("ses_tie1", [[-3, "Failed"]])]
        # Not visible yet: its first step is in the future.
        sessions.append(session("ses_future", [[3600, "Pending"]]))
        return {"sessions": sessions}

    def test_order_runbook_filter_and_paging(self):
        sim = self.start_sim(scenario=self.scenario())
        everything = self.list_ids(sim)
        self.assertEqual(everything, ["ses_b0", "ses_a0", "ses_b1", "ses_a1", "ses_a2", "ses_a3", "ses_a4",
                                      "ses_tie1", "ses_tie2"])
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestB"), ["ses_b0", "ses_b1"])
        self.assertEqual(self.list_ids(sim, runbookID="rbkNoSuchRunbook"), [])
        self.assertEqual(self.list_ids(sim, limit=0), [])

        pages, page = [], 0
        while True:
            ids = self.list_ids(sim, runbookID="rbkTestA", limit=2, page=page)
            pages.append(ids)
            if len(ids) < 2:
                break
            page += 1
        self.assertEqual(pages, [["ses_a0", "ses_a1"], ["ses_a2", "ses_a3"], ["ses_a4", "ses_tie1"], ["ses_tie2"]])
        self.assertEqual(self.list_ids(sim, limit=2, page=99), [])

        body = self.list(sim, limit=1).json()
        self.assertEqual(set(body), {"sessions"})
        self.assertEqual(set(body["sessions"][0]), set(FIELDS))

    def test_updated_after_and_before_are_strict_bounds(self):
        sim = self.start_sim(scenario=self.scenario())
        sessions = {s["id"]: s for s in self.list(sim).json()["sessions"]}
        t_a2 = parse_airplane_time(sessions["ses_a2"]["updatedAt"])
        t_a4 = parse_airplane_time(sessions["ses_a4"]["updatedAt"])
        self.assertEqual(self.list_ids(sim, updatedAfter=rfc3339(t_a2), runbookID="rbkTestA"),
                         ["ses_a3", "ses_a4", "ses_tie1", "ses_tie2"])
        self.assertEqual(self.list_ids(sim, updatedAfter=rfc3339(t_a2 - 1e-6), updatedBefore=rfc3339(t_a4)),
                         ["ses_a2", "ses_a3"])
        self.assertEqual(self.list_ids(sim, updatedBefore=rfc3339(t_a2)), ["ses_b0", "ses_a0", "ses_b1", "ses_a1"])
        # The same bound written in another zone, with 'Z', and with an unescaped '+'.
        local = datetime.datetime.fromtimestamp(t_a2, datetime.timezone(datetime.timedelta(hours=-7)))
        self.assertEqual(self.list_ids(sim, updatedAfter=local.isoformat(timespec="microseconds")),
                         ["ses_a3", "ses_a4", "ses_tie1", "ses_tie2"])
        zulu = rfc3339(t_a2).replace("+00:00", "Z")
        self.assertEqual(len(self.list_ids(sim, updatedAfter=zulu)), 4)
        status, _, raw = self.raw_request(sim, "/sessions/list?updatedAfter=" + rfc3339(t_a2))
        self.assertEqual(status, 200, raw)
        self.assertEqual(len(json.loads(raw)["sessions"]), 4)

    def test_default_limit_is_50_and_a_short_page_ends_paging(self):
        sim = self.start_sim(sessions=120, runbooks=2, seed=3)
        ids, page = [], 0
        while True:
            batch = self.list_ids(sim, page=page)
            ids += batch
            if len(batch) < 50:
                break
            page += 1
        self.assertEqual(page, 2)
        self.assertEqual(len(ids), 120)
        self.assertEqual(len(set(ids)), 120)
        per_runbook = [self.list_ids(sim, runbookID=rb) for rb in
                       sorted({s["runbookID"] for s in sim.sessions()["sessions"]})]
        self.assertEqual(sorted(len(x) for x in per_runbook), [50, 50])  # 60 each, first page


class TimelineTest(ApiSimCase):
    def test_status_follows_the_timeline_and_history_records_it(self):
        sim = self.start_sim()
        added = sim.add_sessions([session("ses_t1", [[0, "Pending"], [0.3, "Active"], [0.6, "Waiting"],
                                                     [0.9, "Succeeded"]]),
                                  session("ses_later", [[0.4, "Pending"], [0.5, "Active"]])])
        self.assertEqual(added["ids"], ["ses_t1", "ses_later"])
        self.assertEqual(self.get(sim, "ses_later").status, 404)  # not created yet
        seen = []

        def poll():
            body = self.get(sim, "ses_t1").json()
            if not seen or seen[-1]["status"] != body["status"]:
                seen.append(body)
            return body["status"] == "Succeeded"

        swtest.wait_until(poll, timeout=10, interval=0.01, message=lambda: f"statuses so far: {seen}")
        self.assertEqual([s["status"] for s in seen], ["Pending", "Active", "Waiting", "Succeeded"])
        created = {s["createdAt"] for s in seen}
        self.assertEqual(len(created), 1)
        updated = [parse_airplane_time(s["updatedAt"]) for s in seen]
        self.assertEqual(updated, sorted(updated))
        self.assertAlmostEqual(updated[-1] - updated[0], 0.9, places=5)

        swtest.wait_until(lambda: self.get(sim, "ses_later").status == 200, timeout=10)
        history = sim.history()
        self.assertEqual([st for _, st in history["ses_t1"]], ["Pending", "Active", "Waiting", "Succeeded"])
        self.assertEqual([t for t, _ in history["ses_t1"]], updated)
        self.assertEqual(sim.history(session="ses_t1"), {"ses_t1": history["ses_t1"]})

    def test_set_status_now_drops_the_rest_of_the_timeline(self):
        sim = self.start_sim()
        sim.add_sessions([session("ses_s1", [[0, "Pending"], [0.2, "Active"], [3600, "Succeeded"]])])
        swtest.wait_until(lambda: self.get(sim, "ses_s1").json()["status"] == "Active", timeout=10)
        before = time.time()
        reply = sim.set_status("ses_s1", "Failed")
        self.assertEqual(reply["status"], "Failed")
        body = self.get(sim, "ses_s1").json()
        self.assertEqual(body["status"], "Failed")
        self.assertAlmostEqual(parse_airplane_time(body["updatedAt"]), before, delta=2)
        sim.set_status("ses_s1", "Exploded")  # any string is served verbatim
        self.assertEqual(self.get(sim, "ses_s1").json()["status"], "Exploded")
        self.assertEqual([st for _, st in sim.history("ses_s1")["ses_s1"]],
                         ["Pending", "Active", "Failed", "Exploded"])
        with self.assertRaises(swtest.ApiSimError) as ctx:
            sim.set_status("ses_nope", "Failed")
        self.assertEqual(ctx.exception.status, 404)
        with self.assertRaises(swtest.ApiSimError) as ctx:
            sim.admin("POST", "/_sim/status", {"id": "ses_s1"})
        self.assertEqual(ctx.exception.status, 400)

    def test_generated_lifecycles_are_realistic_and_deterministic(self):
        kwargs = dict(sessions=200, seed=42, step_min=0.01, step_max=0.05, runbooks=4)
        sim = self.start_sim(**kwargs)
        other = swtest.ApiSim(self.tmp, name="apisim2", **kwargs)
        other.register(self)
        other.start()
        different = swtest.ApiSim(self.tmp, name="apisim3", **dict(kwargs, seed=43))
        different.register(self)
        different.start()

        def all_done(s):
            history = s.history()
            return history if all(LIFECYCLE_RE.match(" ".join(st for _, st in h)) for h in history.values()) \
                else None

        h1 = swtest.wait_until(lambda: all_done(sim), timeout=20)
        h2 = swtest.wait_until(lambda: all_done(other), timeout=20)
        self.assertEqual(list(h1), list(h2))
        for session_id in h1:
            self.assertRegex(session_id, GENERATED_ID_RE)
            steps1, steps2 = h1[session_id], h2[session_id]
            self.assertEqual([s for _, s in steps1], [s for _, s in steps2])
            offsets1 = [t - steps1[0][0] for t, _ in steps1]
            offsets2 = [t - steps2[0][0] for t, _ in steps2]
            for a, b in zip(offsets1, offsets2):
                self.assertAlmostEqual(a, b, places=5)
            for (t0, _), (t1, _) in zip(steps1, steps1[1:]):
                self.assertGreaterEqual(t1 - t0, 0.01 - 1e-6)
                self.assertLessEqual(t1 - t0, 0.05 + 1e-6)
        self.assertFalse(set(h1) & set(different.history()))
        finals = {h[-1][1] for h in h1.values()}
        self.assertEqual(finals, {"Succeeded", "Failed", "Cancelled"})
        self.assertTrue(any("Waiting" in [s for _, s in h] for h in h1.values()))
        self.assertEqual(len({s["runbookID"] for s in sim.sessions()["sessions"]}), 4)


class ExecuteTest(ApiSimCase):
    def test_execute_creates_a_session_with_a_generated_lifecycle(self):
        sim = self.start_sim(runbooks=3, step_min=0.05, step_max=0.1)
        self.assertEqual(self.list_ids(sim), [])  # no sessions yet
        response = sim.api("POST", "/runbooks/execute",
                           body={"id": "rbk20220120z15kl79", "paramValues": {"limit": "20", "user": "eric"}})
        self.assertEqual(response.status, 200, response.text)
        session_id = response.json()["sessionID"]
        self.assertRegex(session_id, GENERATED_ID_RE)
        body = self.get(sim, session_id).json()
        self.assertEqual(body["runbookID"], "rbk20220120z15kl79")
        self.assertEqual(body["paramValues"], {"limit": "20", "user": "eric"})
        self.assertIn(body["status"], ("Pending", "Active"))
        swtest.wait_until(lambda: LIFECYCLE_RE.match(" ".join(s for _, s in sim.history(session_id)[session_id])),
                          timeout=10)

        response = sim.api("POST", "/runbooks/execute", body={"slug": "deploy_service"})
        self.assertEqual(response.status, 200, response.text)
        by_slug = self.get(sim, response.json()["sessionID"]).json()
        self.assertEqual([p["slug"] for p in by_slug["params"]], ["service", "environment", "version"])
        self.assertEqual(self.list_ids(sim, runbookID=by_slug["runbookID"]), [by_slug["id"]])
        self.assertEqual(sim.counters()["requests"]["execute"], 2)

    def test_execute_rejects_bad_requests(self):
        sim = self.start_sim()
        self.assert_json_error(sim.api("POST", "/runbooks/execute", body={"paramValues": {}}), 400)
        self.assert_json_error(sim.api("POST", "/runbooks/execute", body={"id": ""}), 400)
        self.assert_json_error(sim.api("POST", "/runbooks/execute", body=b"{not json"), 400)
        self.assert_json_error(sim.api("POST", "/runbooks/execute", body=[1, 2]), 400)
        self.assert_json_error(sim.api("POST", "/runbooks/execute", body={"id": "rbk1", "paramValues": {"n": 1}}),
                               400)
        self.assert_json_error(sim.api("POST", "/runbooks/execute", body={"slug": "no_such_runbook"}), 404)
        self.assert_json_error(sim.api("GET", "/runbooks/execute"), 405)
        self.assertEqual(sim.sessions()["sessions"], [])


class FaultTest(ApiSimCase):
    def setUp(self):
        self.sim = self.start_sim(scenario={"sessions": [session("ses_f1", [[-1, "Active"]]),
                                                         session("ses_f2", [[-1, "Active"]])]})

    def test_http_error_faults_count_and_retry_after(self):
        sim = self.sim
        for kind, status in (("500", 500), ("502", 502), (503, 503), ("404", 404), ("403", 403),
                             ("401", 401)):
            with self.subTest(kind=kind):
                sim.fault(kind, count=2)
                self.assert_json_error(self.get(sim, "ses_f1"), status)
                self.assert_json_error(self.list(sim), status)
                self.assertEqual(self.get(sim, "ses_f1").status, 200)
        sim.fault("429", retry_after=7)
        response = self.get(sim, "ses_f1")
        self.assert_json_error(response, 429)
        self.assertEqual(response.headers["Retry-After"], "7")
        sim.fault("503", retry_after=3)
        response = self.get(sim, "ses_f1")
        self.assert_json_error(response, 503)
        self.assertEqual(response.headers["Retry-After"], "3")
        sim.fault("429")
        self.assertEqual(self.get(sim, "ses_f1").headers["Retry-After"], "1")
        faults = sim.counters()["faults"]
        self.assertEqual((faults["500"], faults["502"], faults["503"], faults["429"], faults["404"],
                          faults["403"], faults["401"]), (2, 2, 3, 2, 2, 2, 2))
        self.assertEqual(self.get(sim, "ses_f1").json()["id"], "ses_f1")

    def test_reset_closes_the_connection_without_a_response(self):
        sim = self.sim
        sim.fault("reset", session="ses_f1")
        with socket.create_connection(("127.0.0.1", sim.port), timeout=swtest.scaled(10)) as sock:
            sock.sendall(b"GET /v0/sessions/get?id=ses_f1 HTTP/1.1\r\nHost: apisim\r\n"
                         b"X-Airplane-API-Key: " + KEY.encode() + b"\r\n\r\n")
            received = b""
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            except ConnectionResetError:
                pass
        self.assertEqual(received, b"")
        self.assertEqual(self.get(sim, "ses_f1").status, 200)
        self.assertEqual(sim.counters()["faults"]["reset"], 1)

    def test_truncate_sends_half_a_body_with_a_matching_length(self):
        sim = self.sim
        sim.fault("truncate", endpoint="get")
        status, headers, body = self.raw_request(sim, "/sessions/get?id=ses_f1")
        self.assertEqual(status, 200)
        self.assertEqual(int(headers["Content-Length"]), len(body))
        self.assertTrue(body.startswith(b'{"id":"ses_f1"'))
        with self.assertRaises(ValueError):
            json.loads(body)
        sim.fault("truncate", endpoint="list")
        status, headers, body = self.raw_request(sim, "/sessions/list")
        self.assertEqual((status, int(headers["Content-Length"])), (200, len(body)))
        with self.assertRaises(ValueError):
            json.loads(body)

    def test_invalid_json_wrong_type_huge_and_unknown_status(self):
        sim = self.sim
        sim.fault("invalid-json")
        response = self.get(sim, "ses_f1")
        self.assertEqual(response.status, 200)
        with self.assertRaises(ValueError):
            json.loads(response.body)

        sim.fault("wrong-type")
        body = self.get(sim, "ses_f1").json()
        self.assertIsInstance(body["status"], int)
        self.assertIsInstance(body["updatedAt"], bool)
        sim.fault("wrong-type", endpoint="execute")
        body = sim.api("POST", "/runbooks/execute", body={"id": "rbkX"}).json()
        self.assertNotIsInstance(body["sessionID"], str)

        sim.fault("huge")
        response = self.get(sim, "ses_f1")
        self.assertEqual(response.status, 200)
        self.assertGreater(len(response.body), 2 * 1024 * 1024)
        self.assertEqual(response.json()["id"], "ses_f1")

        sim.fault("unknown-status")
        self.assertEqual(self.get(sim, "ses_f1").json()["status"], "Exploded")
        sim.fault("unknown-status", status="Vaporized", endpoint="list")
        self.assertEqual({s["status"] for s in self.list(sim).json()["sessions"]}, {"Vaporized"})
        self.assertEqual(self.get(sim, "ses_f1").json()["status"], "Active")
        faults = sim.counters()["faults"]
        self.assertEqual([faults[k] for k in ("invalid-json", "wrong-type", "huge", "unknown-status")],
                         [1, 2, 1, 2])

    def test_delay_does_not_block_other_requests(self):
        sim = self.start_sim(scenario={"sessions": [session("ses_d1", [[-1, "Active"]]),
                                                    session("ses_d2", [[-1, "Active"]])]}, threads=1)
        sim.fault("delay", delay_ms=1500, session="ses_d1")
        done = {}

        def slow():
            start = time.monotonic()
            done["status"] = self.get(sim, "ses_d1").status
            done["elapsed"] = time.monotonic() - start
            done["at"] = time.monotonic()

        thread = threading.Thread(target=slow)
        thread.start()
        self.addCleanup(thread.join)
        swtest.wait_until(lambda: sim.counters(session="ses_d1")["sessions"].get("ses_d1", {}).get("count"),
                          timeout=10)
        # One server thread: the suspended request must not hold it.
        fast_start = time.monotonic()
        self.assertEqual(self.get(sim, "ses_d2").status, 200)
        fast_end = time.monotonic()
        self.assertNotIn("at", done, "the delayed request finished before the other one")
        thread.join(timeout=swtest.scaled(20))
        self.assertEqual(done["status"], 200)
        self.assertGreaterEqual(done["elapsed"], 1.5)
        self.assertLess(fast_end - fast_start, done["elapsed"])
        self.assertEqual(sim.counters()["faults"]["delay"], 1)
        self.assertEqual(sim.counters(session="ses_d1")["sessions"]["ses_d1"]["count"], 1)

    def test_matching_by_session_endpoint_probability_and_clearing(self):
        sim = self.sim
        sim.fault("500", count=3, session="ses_f2")
        self.assertEqual(self.get(sim, "ses_f1").status, 200)
        self.assertEqual(self.list(sim).status, 200)
        self.assertEqual(self.get(sim, "ses_f2").status, 500)
        self.assertEqual(sim.faults()["faults"][0]["count"], 2)

        sim.clear_faults()
        self.assertEqual(sim.faults()["faults"], [])
        self.assertEqual(self.get(sim, "ses_f2").status, 200)

        sim.fault("502", probability=1.0, endpoint="list")
        for _ in range(5):
            self.assertEqual(self.list(sim).status, 502)
            self.assertEqual(self.get(sim, "ses_f1").status, 200)
        sim.clear_faults()
        self.assertEqual(self.list(sim).status, 200)

        sim.fault("503", probability=0.5, endpoint="get")
        statuses = [self.get(sim, "ses_f1").status for _ in range(200)]
        self.assertTrue(40 < statuses.count(503) < 160, statuses.count(503))
        self.assertEqual(set(statuses), {200, 503})
        sim.clear_faults()

        for bad in ({"kind": "teapot"}, {"kind": "500", "count": 0}, {"kind": "500", "probability": 2},
                    {"kind": "500", "endpoint": "everything"}, {"kind": "500", "bogus": 1}, {},
                    {"kind": "list-miss", "endpoint": "get"}, {"kind": "list-miss", "endpoint": "any"}):
            with self.subTest(rule=bad), self.assertRaises(swtest.ApiSimError) as ctx:
                sim.admin("POST", "/_sim/faults", bad)
            self.assertEqual(ctx.exception.status, 400)

    def test_faults_leave_unauthorized_and_bad_requests_alone(self):
        sim = self.sim
        sim.fault("500", count=1)
        self.assert_json_error(self.get(sim, "ses_f1", key=False), 401)
        self.assert_json_error(sim.api("GET", "/sessions/get"), 400)
        self.assertEqual(self.get(sim, "ses_f1").status, 500)


class CountersTest(ApiSimCase):
    def test_per_session_counts_times_and_reset(self):
        sim = self.start_sim(scenario={"sessions": [session("ses_c1", [[-1, "Active"]]),
                                                    session("ses_c2", [[-1, "Active"]])]}, request_log=5)
        before = time.time()
        for _ in range(8):
            self.get(sim, "ses_c1")
        self.get(sim, "ses_c2")
        self.list(sim)
        after = time.time()
        counters = sim.counters()
        self.assertEqual(counters["requests"]["get"], 9)
        self.assertEqual(counters["requests"]["list"], 1)
        c1 = counters["sessions"]["ses_c1"]
        self.assertEqual(c1["count"], 8)
        self.assertEqual(len(c1["times"]), 5)  # bounded by --request-log
        self.assertEqual(c1["times"], sorted(c1["times"]))
        for t in c1["times"]:
            self.assertGreater(t, before - 1)
            self.assertLess(t, after + 1)
        self.assertEqual(counters["sessions"]["ses_c2"]["count"], 1)
        only = sim.counters(session="ses_c2", times=False)
        self.assertEqual(only["sessions"], {"ses_c2": {"count": 1}})

        sim.reset_counters()
        counters = sim.counters()
        self.assertEqual(counters["sessions"], {})
        self.assertEqual(counters["lists"], {})
        self.assertTrue(all(v == 0 for v in counters["requests"].values()))
        self.assertTrue(all(v == 0 for v in counters["faults"].values()))


class CommandLineTest(ApiSimCase):
    def run_apisim(self, *args, timeout=10):
        return subprocess.run([swtest.binary_path("SW_APISIM"), *args], capture_output=True, text=True,
                              timeout=swtest.scaled(timeout), env=swtest.child_env())

    def test_bad_arguments_exit_2_naming_the_problem(self):
        tmp = swtest.temp_dirs(self)
        bad_json = tmp.path("bad.json")
        with open(bad_json, "w") as f:
            f.write('{"sessions": [')
        no_runbook = tmp.path("norunbook.json")
        with open(no_runbook, "w") as f:
            json.dump({"sessions": [{"id": "ses1", "timeline": [[0, "Pending"]]}]}, f)
        backwards = tmp.path("backwards.json")
        with open(backwards, "w") as f:
            json.dump({"sessions": [session("ses1", [[2, "Active"], [1, "Pending"]])]}, f)
        duplicate = tmp.path("duplicate.json")
        with open(duplicate, "w") as f:
            json.dump({"sessions": [session("ses1", [[0, "Active"]]), session("ses1", [[0, "Active"]])]}, f)
        cases = [
            (["--port", "http"], "--port"),
            (["--port", "70000"], "--port"),
            (["--sessions", "-5"], "--sessions"),
            (["--step-min", "5", "--step-max", "1"], "--step-max"),
            (["--step-min", "soon"], "--step-min"),
            (["--listen", "not-an-address"], "--listen"),
            (["--key-file", tmp.path("missing.key")], "missing.key"),
            (["--scenario", tmp.path("missing.json")], "missing.json"),
            (["--scenario", bad_json], "bad.json"),
            (["--scenario", no_runbook], "sessions[0]"),
            (["--scenario", backwards], "timeline[1]"),
            (["--scenario", duplicate], "duplicate"),
            (["--prefix", "v0"], "--prefix"),
            (["--no-such-option"], "--no-such-option"),
            (["--port"], "--port"),
            (["--list-order", "random"], "--list-order"),
            (["--list-lag", "-1"], "--list-lag"),
            (["--list-lag", "86400001"], "--list-lag"),
            (["--stagger", "soon"], "--stagger"),
        ]
        for args, needle in cases:
            with self.subTest(args=args):
                result = self.run_apisim(*args)
                self.assertEqual(result.returncode, 2, result.stderr)
                self.assertIn(needle, result.stderr)
                self.assertEqual(result.stdout, "")

    def test_start_line_port_file_ids_file_and_clean_stop(self):
        tmp = swtest.temp_dirs(self)
        ids_file = tmp.path("ids.txt")
        sim = swtest.ApiSim(tmp, sessions=25, list_ids=ids_file, quiet=False,
                            scenario={"sessions": [session("ses_x", [[0, "Pending"]])]})
        sim.register(self)
        sim.start()
        line = sim.wait_for_stdout(lambda l: l.startswith("apisim: listening on "))
        self.assertIn(f"apisim: listening on http://127.0.0.1:{sim.port}/v0", str(line))
        with open(ids_file) as f:
            ids = f.read().split()
        self.assertEqual(len(ids), 26)
        self.assertIn("ses_x", ids)
        self.assertEqual(sorted(ids), sorted(s["id"] for s in sim.sessions()["sessions"]))
        with open(sim.port_file) as f:
            self.assertEqual(int(f.read()), sim.port)
        self.assertEqual(self.get(sim, ids[0]).status, 200)
        sim.stop()  # asserts exit status 0 on SIGTERM

    def test_custom_prefix_and_key(self):
        tmp = swtest.temp_dirs(self)
        sim = swtest.ApiSim(tmp, sessions=1, prefix="/api/v0", key="other")
        sim.register(self)
        sim.start()
        session_id = sim.sessions()["sessions"][0]["id"]
        self.assertEqual(self.get(sim, session_id).status, 200)
        self.assertEqual(self.get(sim, session_id, key=KEY).status, 401)
        self.assertEqual(swtest.http_get(f"{sim.origin}/v0/sessions/get?id={session_id}",
                                         headers={"X-Airplane-API-Key": "other"}).status, 404)


class AdminTest(ApiSimCase):
    def test_add_sessions_validates_atomically(self):
        sim = self.start_sim()
        sim.add_sessions([session("ses_ok", [[0, "Pending"]])])
        for bad in ({"sessions": [session("ses_new", [[0, "Pending"]]), session("ses_ok", [[0, "Active"]])]},
                    {"sessions": [session("ses_new", [])]},
                    {"sessions": [session("ses_new", [[0, 5]])]},
                    {"sessions": [dict(session("ses_new", [[0, "Pending"]]), color="red")]},
                    {"sessions": {}}, {"other": []}):
            with self.subTest(body=bad), self.assertRaises(swtest.ApiSimError) as ctx:
                sim.admin("POST", "/_sim/sessions", bad)
            self.assertEqual(ctx.exception.status, 400)
            self.assertTrue(json.loads(ctx.exception.response.body)["error"])
        self.assertEqual([s["id"] for s in sim.sessions()["sessions"]], ["ses_ok"])
        self.assertEqual(sim.health()["sessions"], 1)


class ListOrderTest(ApiSimCase):
    """--list-order and listOrder in /_sim/config."""

    def scenario(self):
        # IDs in an order unrelated to their updatedAt; ties on updatedAt
        # (ses_o07/ses_o13/ses_o02 at -40) are broken by id.
        offsets = [-50, -10, -40, -70, -20, -60, -30, -40, -80, -5, -90, -15, -45, -40, -25, -35, -55, -65,
                   -75, -85, -95, -12, -18, -22, -28, -33, -38, -42, -48, -52]
        sessions = [session(f"ses_o{i:02d}", [[t - 1, "Pending"], [t, "Active"]],
                            runbook="rbkTestA" if i % 3 else "rbkTestB")
                    for i, t in enumerate(offsets)]
        return {"sessions": sessions}

    def expected(self, entries, order):
        by_updated = sorted(entries, key=lambda s: (parse_airplane_time(s["updatedAt"]), s["id"]))
        if order == "updated-asc":
            return [s["id"] for s in by_updated]
        if order == "updated-desc":
            return [s["id"] for s in reversed(by_updated)]
        return sorted(s["id"] for s in entries)

    def assert_pages_partition(self, sim, full, **params):
        for limit in (1, 4, 7, 50):
            with self.subTest(limit=limit, **params):
                pages = self.paged_ids(sim, limit, **params)
                self.assertTrue(all(len(p) == limit for p in pages[:-1]), pages)
                self.assertLess(len(pages[-1]), limit)
                self.assertEqual([i for p in pages for i in p], full)

    def test_each_order_and_pages_partition_it(self):
        sim = self.start_sim(scenario=self.scenario(), extra_args=["--list-order", "updated-desc"])
        self.assertEqual(sim.admin("GET", "/_sim/config"), {"listOrder": "updated-desc", "listLagMs": 0})
        entries = self.list_sessions(sim)
        self.assertEqual(len(entries), 30)
        for order in ("updated-desc", "updated-asc", "id"):
            with self.subTest(order=order):
                self.assertEqual(sim.admin("POST", "/_sim/config", {"listOrder": order})["listOrder"], order)
                full = self.list_ids(sim)
                self.assertEqual(full, self.expected(entries, order))
                self.assert_pages_partition(sim, full)
                only_a = [s for s in entries if s["runbookID"] == "rbkTestA"]
                self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), self.expected(only_a, order))
                self.assert_pages_partition(sim, self.expected(only_a, order), runbookID="rbkTestA")
        # The tie at -40 s: ascending by id in updated-asc, descending in updated-desc.
        sim.admin("POST", "/_sim/config", {"listOrder": "updated-asc"})
        full = self.list_ids(sim)
        self.assertLess(full.index("ses_o02"), full.index("ses_o07"))
        self.assertLess(full.index("ses_o07"), full.index("ses_o13"))
        sim.admin("POST", "/_sim/config", {"listOrder": "updated-desc"})
        full = self.list_ids(sim)
        self.assertLess(full.index("ses_o13"), full.index("ses_o07"))
        self.assertLess(full.index("ses_o07"), full.index("ses_o02"))

    def test_shuffled_is_stable_and_unrelated_to_updated_at_and_id(self):
        sim = self.start_sim(scenario=self.scenario(), extra_args=["--list-order", "shuffled"])
        entries = self.list_sessions(sim)
        first = [s["id"] for s in entries]
        self.assertEqual(sorted(first), sorted(f"ses_o{i:02d}" for i in range(30)))
        self.assertEqual(self.list_ids(sim), first)  # the same request, the same answer
        self.assertNotEqual(first, self.expected(entries, "id"))
        self.assertNotEqual(first, self.expected(entries, "updated-asc"))
        self.assertNotEqual(first, self.expected(entries, "updated-desc"))
        self.assert_pages_partition(sim, first)
        self.assertEqual(self.list_ids(sim, limit=5, page=2), self.list_ids(sim, limit=5, page=2))
        only_b = self.list_ids(sim, runbookID="rbkTestB")
        self.assertEqual(only_b, [i for i in first if int(i[-2:]) % 3 == 0])
        # A change of updatedAt moves nothing in the shuffled order.
        sim.set_status(first[-1], "Failed")
        sim.set_status(first[0], "Succeeded")
        self.assertEqual(self.list_ids(sim), first)
        # Another seed shuffles differently.
        other = swtest.ApiSim(self.tmp, name="apisim2", scenario=self.scenario(), seed=2,
                              extra_args=["--list-order", "shuffled"])
        other.register(self)
        other.start()
        self.addCleanup(other.stop)
        self.assertNotEqual(self.list_ids(other), first)
        self.assertEqual(sorted(self.list_ids(other)), sorted(first))

    def test_generated_sessions_in_every_order(self):
        sim = self.start_sim(sessions=300, runbooks=3, seed=5, step_min=100, step_max=200)
        for order in ("updated-asc", "updated-desc", "id", "shuffled"):
            with self.subTest(order=order):
                sim.admin("POST", "/_sim/config", {"listOrder": order})
                pages = self.paged_ids(sim, 50)
                ids = [i for p in pages for i in p]
                self.assertEqual(len(ids), 300)
                self.assertEqual(len(set(ids)), 300)
                if order == "id":
                    self.assertEqual(ids, sorted(ids))


class ConfigTest(ApiSimCase):
    def test_get_and_set_config_and_its_errors(self):
        sim = self.start_sim(sessions=2, extra_args=["--list-lag", "1500"])
        self.assertEqual(sim.admin("GET", "/_sim/config"), {"listOrder": "updated-asc", "listLagMs": 1500})
        self.assertEqual(sim.admin("POST", "/_sim/config", {"listLagMs": 250}),
                         {"listOrder": "updated-asc", "listLagMs": 250})
        self.assertEqual(sim.admin("POST", "/_sim/config", {"listOrder": "id", "listLagMs": 0}),
                         {"listOrder": "id", "listLagMs": 0})
        self.assertEqual(sim.admin("POST", "/_sim/config", {}), {"listOrder": "id", "listLagMs": 0})
        self.assertEqual(sim.admin("GET", "/_sim/config"), {"listOrder": "id", "listLagMs": 0})
        cases = [
            ({"listOrder": "random"}, "listOrder"),
            ({"listOrder": 2}, "listOrder"),
            ({"listLagMs": -1}, "listLagMs"),
            ({"listLagMs": "5"}, "listLagMs"),
            ({"listLagMs": 1.5}, "listLagMs"),
            ({"listLagMs": 86400001}, "listLagMs"),
            ({"listLagMs": None}, "listLagMs"),
            ({"color": "red"}, "color"),
            # Nothing is applied when one key is bad.
            ({"listOrder": "updated-desc", "listLagMs": True}, "listLagMs"),
            ([1, 2], "object"),
            (b"{not json", "JSON"),
        ]
        for body, needle in cases:
            with self.subTest(body=body), self.assertRaises(swtest.ApiSimError) as ctx:
                sim.admin("POST", "/_sim/config", body)
            self.assertEqual(ctx.exception.status, 400)
            self.assertIn(needle, json.loads(ctx.exception.response.body)["error"])
        self.assertEqual(sim.admin("GET", "/_sim/config"), {"listOrder": "id", "listLagMs": 0})
        with self.assertRaises(swtest.ApiSimError) as ctx:
            sim.admin("DELETE", "/_sim/config")
        self.assertEqual(ctx.exception.status, 405)


class ListLagTest(ApiSimCase):
    LAG = 4.0  # seconds: far longer than the few requests made before it could pass

    def test_a_status_change_reaches_the_list_lag_late(self):
        sim = self.start_sim(scenario={"sessions": [session("ses_l1", [[-20, "Pending"], [-10, "Active"]]),
                                                    session("ses_l2", [[-30, "Active"]])]})
        old = self.list_sessions(sim)
        self.assertEqual([s["status"] for s in old], ["Active", "Active"])
        old_l1 = next(s for s in old if s["id"] == "ses_l1")
        sim.admin("POST", "/_sim/config", {"listLagMs": int(self.LAG * 1000)})

        changed_at = time.monotonic()
        sim.set_status("ses_l1", "Failed")
        now = self.get(sim, "ses_l1").json()
        listed = {s["id"]: s for s in self.list_sessions(sim)}
        newer = self.list_ids(sim, updatedAfter=rfc3339(parse_airplane_time(old_l1["updatedAt"])))
        checked_at = time.monotonic()
        self.assertLess(checked_at - changed_at, self.LAG, "too slow to see the list before the lag passed")
        # get is current; the list still shows the session as it was.
        self.assertEqual(now["status"], "Failed")
        self.assertEqual(listed["ses_l1"]["status"], "Active")
        self.assertEqual(listed["ses_l1"]["updatedAt"], old_l1["updatedAt"])
        self.assertEqual(listed["ses_l1"]["updatedBy"], old_l1["updatedBy"])
        self.assertEqual(list(listed), ["ses_l2", "ses_l1"])
        self.assertEqual(newer, [])  # the filter sees the old updatedAt too

        def list_status():
            return {s["id"]: s for s in self.list_sessions(sim)}["ses_l1"]["status"] == "Failed"

        swtest.wait_until(list_status, timeout=self.LAG + 10, interval=0.05)
        self.assertGreaterEqual(time.time() + 0.01, parse_airplane_time(now["updatedAt"]) + self.LAG)
        listed = self.list_sessions(sim)
        self.assertEqual([s["id"] for s in listed], ["ses_l2", "ses_l1"])
        self.assertEqual(listed[1]["updatedAt"], now["updatedAt"])
        self.assertEqual(self.list_ids(sim, updatedAfter=rfc3339(parse_airplane_time(old_l1["updatedAt"]))),
                         ["ses_l1"])

        # Back to no lag: the next change is listed at once.
        sim.admin("POST", "/_sim/config", {"listLagMs": 0})
        sim.set_status("ses_l2", "Cancelled")
        self.assertEqual(self.list_sessions(sim)[-1]["status"], "Cancelled")

    def test_a_new_session_is_listed_lag_late(self):
        sim = self.start_sim(extra_args=["--list-lag", str(int(self.LAG * 1000))])
        added_at = time.monotonic()
        sim.add_sessions([session("ses_new", [[0, "Pending"]])])
        self.assertEqual(self.get(sim, "ses_new").status, 200)
        listed = self.list_ids(sim)
        self.assertLess(time.monotonic() - added_at, self.LAG, "too slow to see the list before the lag passed")
        self.assertEqual(listed, [])
        swtest.wait_until(lambda: self.list_ids(sim) == ["ses_new"], timeout=self.LAG + 10, interval=0.05)


class ListMissTest(ApiSimCase):
    def setUp(self):
        self.sim = self.start_sim(scenario={"sessions": [
            session(f"ses_m{i}", [[-50 + i, "Active"]]) for i in range(5)] + [
            session("ses_other", [[-1, "Active"]], runbook="rbkTestB")]})
        self.all_a = [f"ses_m{i}" for i in range(5)]

    def test_a_named_session_misses_from_exactly_one_answer(self):
        sim = self.sim
        sim.fault("list-miss", session="ses_m2")
        # Answers without the session leave the rule alone, and get is not affected.
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestB"), ["ses_other"])
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA", limit=2), ["ses_m0", "ses_m1"])
        self.assertEqual(self.get(sim, "ses_m2").status, 200)
        self.assertEqual(len(sim.faults()["faults"]), 1)
        self.assertEqual(sim.counters()["faults"]["list-miss"], 0)
        # The page that holds it comes one short; the next answer has it again.
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA", limit=2, page=1), ["ses_m3"])
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA", limit=2, page=1), ["ses_m2", "ses_m3"])
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), self.all_a)
        self.assertEqual(sim.faults()["faults"], [])
        self.assertEqual(sim.counters()["faults"]["list-miss"], 1)

    def test_count_probability_and_random_entries(self):
        sim = self.sim
        sim.fault("list-miss", session="ses_m4", count=2)
        expected = [i for i in self.all_a if i != "ses_m4"]
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), expected)
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), expected)
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), self.all_a)

        sim.fault("list-miss", session="ses_m0", probability=1.0)
        for _ in range(3):
            self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), self.all_a[1:])
        sim.clear_faults()
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), self.all_a)

        # Without a session: one entry of each matching answer, chosen at random.
        sim.fault("list-miss", count=20)
        missing = set()
        for _ in range(20):
            ids = self.list_ids(sim, runbookID="rbkTestA")
            self.assertEqual(len(ids), 4)
            self.assertEqual(ids, [i for i in self.all_a if i in ids])  # order kept
            missing |= set(self.all_a) - set(ids)
        self.assertGreater(len(missing), 1)
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), self.all_a)
        self.assertEqual(sim.counters()["faults"]["list-miss"], 2 + 3 + 20)

        # An answer that another fault replaces is not one the rule changed.
        sim.fault("500", endpoint="list")
        sim.fault("list-miss", session="ses_m1")
        self.assertEqual(self.list(sim).status, 500)
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), ["ses_m0", "ses_m2", "ses_m3", "ses_m4"])
        self.assertEqual(self.list_ids(sim, runbookID="rbkTestA"), self.all_a)


class StaggerTest(ApiSimCase):
    def created(self, sim, n):
        pages = []
        while True:
            batch = self.list_sessions(sim, limit=50, page=len(pages))
            pages.append(batch)
            if len(batch) < 50:
                break
        entries = [s for p in pages for s in p]
        self.assertEqual(len(entries), n)
        return {s["id"]: parse_airplane_time(s["createdAt"]) for s in entries}, entries

    def test_stagger_spreads_the_starts_over_the_past(self):
        before = time.time()
        sim = self.start_sim(sessions=400, seed=9, step_min=10, step_max=60, extra_args=["--stagger", "100"])
        after = time.time()
        created, entries = self.created(sim, 400)
        offsets = sorted(after - t for t in created.values())
        self.assertGreaterEqual(offsets[0], -0.01)
        self.assertLessEqual(offsets[-1], 100 + (after - before) + 0.01)
        # Roughly uniform: every quarter of the window holds about a quarter of the starts.
        quarters = [0] * 4
        for o in offsets:
            quarters[min(3, int(o // 25))] += 1
        self.assertTrue(all(q >= 60 for q in quarters), quarters)
        # Sessions are at every stage of their lifecycle, not all Pending at once.
        self.assertGreaterEqual(len({s["status"] for s in entries}), 4, {s["status"] for s in entries})
        history = sim.history()
        for session_id, t in created.items():
            self.assertAlmostEqual(history[session_id][0][0], t, places=5)

        # The same seed gives the same spread; without --stagger every session starts at once.
        same = swtest.ApiSim(self.tmp, name="apisim2", sessions=400, seed=9, step_min=10, step_max=60,
                             extra_args=["--stagger", "100"])
        same.register(self)
        same.start()
        self.addCleanup(same.stop)
        created2, _ = self.created(same, 400)
        self.assertEqual(set(created2), set(created))
        first = min(created, key=created.get)
        for session_id in created:
            self.assertAlmostEqual(created2[session_id] - created2[first], created[session_id] - created[first],
                                   places=4)
        flat = swtest.ApiSim(self.tmp, name="apisim3", sessions=50, seed=9)
        flat.register(self)
        flat.start()
        self.addCleanup(flat.stop)
        self.assertEqual(len(set(self.created(flat, 50)[0].values())), 1)


class ListCountersTest(ApiSimCase):
    def test_list_requests_are_counted_per_runbook(self):
        sim = self.start_sim(scenario={"sessions": [session("ses_k1", [[-1, "Active"]]),
                                                    session("ses_k2", [[-1, "Active"]], runbook="rbkTestB")]})
        self.assertEqual(sim.counters()["lists"], {})
        for _ in range(3):
            self.list(sim)
        self.list(sim, runbookID="rbkTestA", limit=1)
        self.list(sim, runbookID="rbkTestA", page=4)
        self.list(sim, runbookID="rbkTestB")
        self.list(sim, runbookID="rbkNoSuchRunbook")
        self.list(sim, runbookID="")  # empty: the same as none
        self.assert_json_error(self.list(sim, runbookID="rbkTestA", limit=99), 400)  # not a list request
        sim.fault("503", endpoint="list")
        self.assertEqual(self.list(sim, runbookID="rbkTestB").status, 503)  # counted, as in "requests"
        self.get(sim, "ses_k1")
        counters = sim.counters()
        self.assertEqual(counters["lists"], {"*": 4, "rbkTestA": 2, "rbkTestB": 2, "rbkNoSuchRunbook": 1})
        self.assertEqual(sum(counters["lists"].values()), counters["requests"]["list"])
        self.assertEqual(sim.counters(session="ses_k1", times=False)["lists"], counters["lists"])
        sim.reset_counters()
        self.assertEqual(sim.counters()["lists"], {})
        self.list(sim, runbookID="rbkTestB")
        self.assertEqual(sim.counters()["lists"], {"rbkTestB": 1})


if __name__ == "__main__":
    unittest.main()
