"""The ASGI application, written without a framework so the per-request cost stays small.

Routes (GET and HEAD):
  /         api: its identity plus the backend's (calls backend GET /work); backend: its identity
  /work     backend only: its identity
  /hello    tiny JSON, calls nothing (for load tests)
  /healthz  200 while the process is alive
  /readyz   200 when ready; 503 while starting, while draining and when told to fail
  /metrics  Prometheus text format
  /slow     sleeps ?ms=N milliseconds (capped at 5000) then answers: for drain tests, only with
            KEEL_APP_TEST_ROUTES=1 (404 otherwise)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from keel_app.config import Config
from keel_app.logs import AccessLog, new_request_id, request_id_var, sanitize_request_id
from keel_app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from keel_app.metrics import Metrics
from keel_app.telemetry import PROPAGATOR, Tracing

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Result = tuple[int, bytes, bytes]  # status, body, content type
Handler = Callable[[Scope, str], Awaitable[Result]]

JSON = b"application/json"
SLOW_MAX_MS = 5000
# Below the backend server's keep-alive timeout (5 s): the client closes idle connections first.
BACKEND_KEEPALIVE_EXPIRY = 2.0
# What reusing a connection the backend has just closed raises (before any answer came).
STALE_CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
UNKNOWN_ROUTE = "other"

log = logging.getLogger("keel_app")


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class KeelApp:
    """One service (``api`` or ``backend``) as an ASGI 3 application.

    ``backend_transport`` replaces the HTTP transport of the api's backend
    client (tests pass ``httpx.ASGITransport(app=backend_app)``).
    """

    def __init__(
        self,
        config: Config,
        *,
        tracing: Tracing | None = None,
        backend_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.service = config.service
        self.state = "starting"  # starting -> ready -> draining -> stopping
        self.in_flight = 0
        self.tracing = tracing or Tracing(config)
        self.metrics = Metrics(
            config.service,
            config.version,
            in_flight=lambda: self.in_flight,
            ready=lambda: 1.0 if self.state == "ready" else 0.0,
        )
        self.access_log = AccessLog(config.service)
        self._backend_transport = backend_transport
        self._client: httpx.AsyncClient | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._sleep = asyncio.sleep  # /slow's; tests replace it
        self._identity = {"service": config.service, "version": config.version, "instance": config.instance}
        self._identity_body = _json(self._identity)
        self._hello_body = _json({"message": "hello", **self._identity})
        self._alive_body = _json({"status": "alive"})
        self._routes: dict[str, tuple[str, Handler]] = {
            "/hello": ("/hello", self._hello),
            "/healthz": ("/healthz", self._healthz),
            "/readyz": ("/readyz", self._readyz),
            "/metrics": ("/metrics", self._metrics),
        }
        if config.test_routes:
            self._routes["/slow"] = ("/slow", self._slow)
        if config.service == "api":
            self._routes["/"] = ("/", self._api_root)
        else:
            self._routes["/"] = ("/", self._identity_route)
            self._routes["/work"] = ("/work", self._identity_route)

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def startup(self) -> None:
        if self.config.service == "api":
            self._client = self._new_client()
        self.access_log.autoflush = False
        self._flusher = asyncio.get_running_loop().create_task(self._flush_stdout())
        if self.state == "starting":  # else a stop signal came during startup: stay draining
            self.state = "failing" if self.config.fail_readiness else "ready"
        if self.config.fail_readiness:
            log.warning(
                "KEEL_APP_FAIL_READINESS=1: this instance will never report ready",
                extra={"service": self.service},
            )
        log.info(
            "started %s %s as %s",
            self.service,
            self.config.version,
            self.config.instance,
            extra={"service": self.service, "version": self.config.version, "instance": self.config.instance},
        )

    def begin_drain(self) -> None:
        """Report not-ready (so load balancers stop sending traffic) while still serving every request."""
        if self.state in ("draining", "stopping"):
            return
        self.state = "draining"
        log.info("draining: /readyz now answers 503, requests are still served", extra={"service": self.service})

    async def shutdown(self, trace_flush_seconds: float = 3.0) -> None:
        self.state = "stopping"
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await asyncio.to_thread(self.tracing.shutdown, trace_flush_seconds)
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.access_log.autoflush = True
        log.info("stopped", extra={"service": self.service})
        sys.stdout.flush()

    async def _flush_stdout(self) -> None:
        """Access lines are written without a flush each; push them out at least every 100 ms."""
        while True:
            await asyncio.sleep(0.1)
            with contextlib.suppress(OSError, ValueError):  # stdout closed or broken: nothing to do about it
                sys.stdout.flush()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.config.backend_url or "",
            timeout=self.config.backend_timeout,
            transport=self._backend_transport,
            # An idle connection is dropped by this client before the backend's server drops
            # it (uvicorn's keep-alive timeout is 5 s, httpx's default expiry too): reusing a
            # connection the server is just closing failed one request now and then (a 502).
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128,
                                keepalive_expiry=BACKEND_KEEPALIVE_EXPIRY),
            headers={"user-agent": f"keel-app/{self.config.version}"},
        )

    # -- ASGI ----------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not served
            await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed", extra={"service": self.service})
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    log.exception("shutdown failed", extra={"service": self.service})
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        entry = self._routes.get(path)
        route = entry[0] if entry is not None else UNKNOWN_ROUTE

        raw_request_id = traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                raw_request_id = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value
        request_id = sanitize_request_id(raw_request_id) or new_request_id()

        parent = None
        if traceparent is not None:
            carrier = {"traceparent": traceparent.decode("latin-1")}
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
            parent = PROPAGATOR.extract(carrier)
        span = self.tracing.start_span(
            f"{method} {route}",
            parent,
            SpanKind.SERVER,
            {"http.request.method": method, "http.route": route, "url.path": path},
        )
        ctx_token = otel_context.attach(trace.set_span_in_context(span, parent))
        rid_token = request_id_var.set(request_id)
        self.in_flight += 1
        status = 500
        try:
            try:
                if entry is None:
                    status, body, content_type = 404, _json({"error": "not found", "path": path[:200]}), JSON
                elif method != "GET" and method != "HEAD":
                    status, body, content_type = 405, _json({"error": "method not allowed"}), JSON
                else:
                    status, body, content_type = await entry[1](scope, request_id)
            except Exception as exc:
                status, body, content_type = 500, _json({"error": "internal server error"}), JSON
                span.record_exception(exc)
                log.exception("unhandled error on %s %s", method, route, extra={"service": self.service})
            headers = [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ]
            if status == 405:
                headers.append((b"allow", b"GET, HEAD"))
            if self.state == "draining":
                headers.append((b"connection", b"close"))  # nudge keep-alive clients to another instance
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        finally:
            self.in_flight -= 1
            elapsed = time.perf_counter() - started
            self.metrics.observe(route, status, elapsed)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span_context = span.get_span_context()
            self.access_log(
                method,
                route,
                status,
                round(elapsed * 1000, 3),
                span_context.trace_id,
                span_context.span_id,
                request_id,
            )
            span.end()
            otel_context.detach(ctx_token)
            request_id_var.reset(rid_token)

    # -- handlers ------------------------------------------------------------------------------------------

    async def _hello(self, scope: Scope, request_id: str) -> Result:
        return 200, self._hello_body, JSON

    async def _identity_route(self, scope: Scope, request_id: str) -> Result:
        return 200, self._identity_body, JSON

    async def _healthz(self, scope: Scope, request_id: str) -> Result:
        return 200, self._alive_body, JSON

    async def _readyz(self, scope: Scope, request_id: str) -> Result:
        if self.state == "ready":
            return 200, b'{"status":"ready"}', JSON
        return 503, _json({"status": self.state}), JSON

    async def _metrics(self, scope: Scope, request_id: str) -> Result:
        return 200, self.metrics.render(), METRICS_CONTENT_TYPE

    async def _slow(self, scope: Scope, request_id: str) -> Result:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        raw = query.get("ms", ["1000"])[-1]
        if not (raw.isascii() and raw.isdigit()):  # "²" is a digit to isdigit(), not to int()
            return 400, _json({"error": "ms must be a whole number of milliseconds"}), JSON
        ms = min(int(raw), SLOW_MAX_MS)
        await self._sleep(ms / 1000)
        return 200, _json({"slept_ms": ms, **self._identity}), JSON

    async def _api_root(self, scope: Scope, request_id: str) -> Result:
        status, backend = await self._call_backend(request_id)
        if status != 200:
            # the cause (exception text, addresses) goes to the log, never to the client
            return status, _json({**self._identity, "error": "backend unavailable"}), JSON
        return 200, _json({**self._identity, "backend": backend}), JSON

    async def _call_backend(self, request_id: str) -> tuple[int, Any]:
        """GET /work on the backend, in a client span whose context travels in ``traceparent``."""
        if self._client is None:
            self._client = self._new_client()
        url = f"{self.config.backend_url or ''}/work"
        span = self.tracing.start_span(
            "GET /work", None, SpanKind.CLIENT, {"http.request.method": "GET", "url.full": url}
        )
        with trace.use_span(span, end_on_exit=True):
            headers = {"x-request-id": request_id}
            PROPAGATOR.inject(headers)
            try:
                try:
                    response = await self._client.get("/work", headers=headers)
                except STALE_CONNECTION_ERRORS as exc:
                    # GET /work is idempotent: once more, on a new connection, when a pooled
                    # connection turned out to be closed by the backend
                    log.info("backend connection closed (%s); retrying once", type(exc).__name__,
                             extra={"service": self.service, "backend_url": url})
                    response = await self._client.get("/work", headers=headers)
            except httpx.TimeoutException:
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                log.warning("backend timed out: %s", url, extra={"service": self.service, "backend_url": url})
                return 504, f"timed out after {self.config.backend_timeout:g}s"
            except httpx.HTTPError as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                log.warning(
                    "backend unreachable: %s: %s", url, exc, extra={"service": self.service, "backend_url": url}
                )
                return 502, f"{type(exc).__name__}: {exc}"[:300]
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code != 200:
                span.set_status(Status(StatusCode.ERROR))
                log.warning(
                    "backend answered %d", response.status_code, extra={"service": self.service, "backend_url": url}
                )
                return 502, f"backend answered {response.status_code}"
            try:
                return 200, response.json()
            except ValueError:
                span.set_status(Status(StatusCode.ERROR, "bad json"))
                return 502, "backend answered invalid JSON"


def create_app(config: Config, **kwargs: Any) -> KeelApp:
    return KeelApp(config, **kwargs)
