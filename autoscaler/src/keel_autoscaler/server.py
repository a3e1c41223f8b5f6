"""HTTP: /metrics (open), /healthz (open), the Alertmanager webhook and the operator API (bearer token)."""

from __future__ import annotations

import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .loop import Autoscaler

MAX_BODY = 1024 * 1024


def make_handler(scaler: Autoscaler, token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "keel-autoscaler"
        sys_version = ""

        def log_message(self, *args: Any) -> None:  # the audit log says what matters
            pass

        def _send(self, code: int, body: Any, ctype: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body, default=str).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if not token:
                return False  # no token configured: the authenticated endpoints are closed
            given = self.headers.get("Authorization", "")
            return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0 or length > MAX_BODY:
                raise ValueError("body too large")
            raw = self.rfile.read(length) if length else b"{}"
            return json.loads(raw)

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, scaler.metrics.render(), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                self._send(200, {"status": "ok", "mode": scaler.mode})
            elif self.path == "/v1/status":
                if not self._authorized():
                    self._send(401, {"error": "bearer token required"})
                    return
                self._send(200, scaler.status())
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path not in ("/v1/alertmanager", "/v1/freeze", "/v1/unfreeze", "/v1/evaluate"):
                self._send(404, {"error": "not found"})
                return
            if not self._authorized():
                self._send(401, {"error": "bearer token required"})
                return
            try:
                body = self._body()
            except (ValueError, json.JSONDecodeError) as exc:
                self._send(400, {"error": f"bad JSON body: {exc}"})
                return
            if not isinstance(body, dict):
                self._send(400, {"error": "the body must be a JSON object"})
                return
            if self.path == "/v1/alertmanager":
                fresh = scaler.webhook(body)
                self._send(200, {"accepted": True, "duplicate": not fresh})
            elif self.path == "/v1/freeze":
                reason = str(body.get("reason", "")).strip()
                if not reason:
                    self._send(400, {"error": "say why: {\"reason\": \"...\"}"})
                    return
                scaler.freeze(reason[:500])
                self._send(200, {"frozen": reason[:500]})
            elif self.path == "/v1/unfreeze":
                scaler.unfreeze()
                self._send(200, {"frozen": None})
            else:
                scaler._wake.set()
                self._send(200, {"woken": True})

    return Handler


def serve(scaler: Autoscaler, address: str, port: int, token: str | None) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer((address, port), make_handler(scaler, token))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True, name="http").start()
    return httpd
