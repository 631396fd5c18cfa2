"""A webhook receiver for the tests: a threaded HTTP server in the test
process that checks every Standard Webhooks signature with its own HMAC code
and records each request in order.

    receiver = WebhookReceiver(secrets=["whsec_..."]).start()
    receiver.url            # http://127.0.0.1:PORT/hook
    receiver.answer(500)    # every request from now on: HTTP 500
    receiver.answer(429, headers={"Retry-After": "2"}, count=1)
    receiver.answer("hang") # read the request, then never answer (until released)
    receiver.answer("close")# read the request, then close the connection
    receiver.answer(200)    # back to normal
    receiver.stop(); receiver.start()   # down, then up again on the same port

Each request becomes a :class:`Request` in ``receiver.requests`` with the
headers, the body, the parsed JSON, what was answered, and ``verified``: the
indexes of the configured secrets whose signature the request carried. A
request whose signatures do not match every configured secret is recorded
with ``signature_ok`` False (tests assert that none is).
"""

import base64
import hashlib
import hmac
import http.server
import json
import socket
import threading
import time


def decode_secret(secret):
    """The key bytes of a ``whsec_<base64>`` secret."""
    if not secret.startswith("whsec_"):
        raise ValueError("not a whsec_ secret")
    return base64.b64decode(secret[len("whsec_"):], validate=True)


def sign(secret, msg_id, timestamp, body):
    """``v1,<base64 HMAC-SHA256(key, id.timestamp.body)>``, written
    independently of the daemon."""
    key = decode_secret(secret)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class Request:
    def __init__(self, path, headers, body, secrets):
        self.time = time.monotonic()
        self.path = path
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body
        try:
            self.json = json.loads(body)
        except ValueError:
            self.json = None
        self.id = self.headers.get("webhook-id")
        self.timestamp = self.headers.get("webhook-timestamp")
        offered = self.headers.get("webhook-signature", "").split()
        self.verified = set()
        for index, secret in enumerate(secrets):
            if self.id and self.timestamp and sign(secret, self.id, self.timestamp, body) in offered:
                self.verified.add(index)
        self.signature_ok = len(self.verified) == len(secrets) and (not secrets or len(offered) == len(secrets))
        self.status = None  # what was answered; None: hung or closed

    def __repr__(self):
        return f"<Request {self.id} status={self.status} ok={self.signature_ok}>"


class WebhookReceiver:
    def __init__(self, secrets=(), port=0, host="127.0.0.1"):
        self.secrets = list(secrets)
        self.host = host
        self.port = port
        self.requests = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self._rules = []  # [mode, headers, remaining or None]
        self._by_subject = {}  # event subject -> mode, ahead of the rules
        self._server = None
        self._thread = None

    # -- control -----------------------------------------------------------

    def answer(self, mode, headers=None, count=None):
        """From now on answer with ``mode`` (a status code, ``"hang"`` or
        ``"close"``), for ``count`` requests or for good (``None``); answers
        given with a count are used first, in order."""
        with self.lock:
            if count is None:
                self._rules = [r for r in self._rules if r[2] is not None] + [[mode, dict(headers or {}), None]]
            else:
                self._rules.insert(len([r for r in self._rules if r[2] is not None]),
                                   [mode, dict(headers or {}), count])
        if mode != "hang":
            self.release.set()
        else:
            self.release.clear()

    def answer_subject(self, subject, mode):
        """Answer every event about ``subject`` with ``mode`` (a status
        code), whatever the other rules say; ``None`` stops it."""
        with self.lock:
            if mode is None:
                self._by_subject.pop(subject, None)
            else:
                self._by_subject[subject] = mode

    def _next_rule(self, request=None):
        body = request.json if request is not None else None
        subject = body.get("subject") if isinstance(body, dict) else None
        with self.lock:
            if subject in self._by_subject:
                return self._by_subject[subject], {}
            for rule in self._rules:
                if rule[2] is None:
                    return rule[0], rule[1]
                if rule[2] > 0:
                    rule[2] -= 1
                    if rule[2] == 0:
                        self._rules.remove(rule)
                    return rule[0], rule[1]
            return 200, {}

    @property
    def url(self):
        return f"http://{self.host}:{self.port}/hook"

    def start(self):
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                request = Request(self.path, dict(self.headers), body, receiver.secrets)
                with receiver.lock:
                    receiver.requests.append(request)
                mode, headers = receiver._next_rule(request)
                if mode == "hang":
                    receiver.release.wait(60)
                    self.close_connection = True
                    return
                if mode == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                reply = b'{"ok":true}' if 200 <= mode < 300 else b'{"error":"test"}'
                headers = dict(headers)
                size = headers.pop("_body_size", None)  # a test asking for a big body
                if size is not None:
                    reply = b'"' + b"x" * (int(size) - 2) + b'"'
                # Recorded before the answer leaves, so a test that sees the
                # daemon act on it finds it recorded.
                request.status = mode
                self.send_response(mode)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def handle_error(self, request, client_address):
                # Connections the tests cut or the daemon abandons (a
                # timeout) are expected; their tracebacks would be noise.
                pass

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop listening (connections are refused until start())."""
        if self._server is not None:
            self.release.set()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None

    def register(self, testcase):
        testcase.addCleanup(self.stop)
        return self

    # -- what arrived --------------------------------------------------------

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def delivered(self):
        """Requests answered with a 2xx, in arrival order."""
        return [r for r in self.snapshot() if r.status is not None and 200 <= r.status < 300]

    def delivered_ids(self):
        return [r.id for r in self.delivered()]

    def bad_signatures(self):
        return [r for r in self.snapshot() if not r.signature_ok]
