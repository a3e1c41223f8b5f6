"""Property-based tests (hypothesis) of what the app parses from the network (issue 24).

Whatever a client sends as request ID, traceparent, path, query string or method, reaching
the ASGI application directly (raw bytes, no HTTP client tidying them up first): the app
answers without a 5xx of its own, the request ID it returns is one it accepts, a sane one is
kept, and the trace context it passes to the backend is well-formed W3C and continues a valid
incoming trace.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keel_app.logs import sanitize_request_id

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# Function-scoped fixtures here are factories without state: sharing them across examples is fine.
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

header_bytes = st.binary(max_size=300)
valid_traceparent = st.builds(
    lambda t, s, f: f"00-{t:032x}-{s:016x}-{f:02x}",
    st.integers(1, 2**128 - 1), st.integers(1, 2**64 - 1), st.sampled_from([0, 1]),
)


@given(st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=300)))
def test_sanitize_request_id_returns_the_value_itself_or_none(value: Any) -> None:
    out = sanitize_request_id(value)
    if out is not None:
        assert REQUEST_ID.fullmatch(out)
        assert out == (value.decode("ascii") if isinstance(value, bytes) else value)


@given(st.from_regex(REQUEST_ID, fullmatch=True))
def test_every_acceptable_request_id_is_kept(value: str) -> None:
    assert sanitize_request_id(value) == value
    assert sanitize_request_id(value.encode()) == value


async def call(app: Any, method: bytes, path: bytes, query: bytes, headers: list[tuple[bytes, bytes]]) -> dict:
    """One request straight into the ASGI app, as a server would pass it on."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method.decode("latin-1"), "scheme": "http",
        "path": path.decode("latin-1"), "raw_path": path, "query_string": query, "root_path": "",
        "headers": headers, "client": ("192.0.2.7", 40000), "server": ("127.0.0.1", 8000),
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return {"status": start["status"], "headers": {k.lower(): v for k, v in start.get("headers", [])}}


def run_requests(make_app: Any, service: str, requests: list[tuple], backend_seen: list | None = None) -> list[dict]:
    def backend(request: httpx.Request) -> httpx.Response:
        if backend_seen is not None:
            backend_seen.append(dict(request.headers))
        return httpx.Response(200, json={"service": "backend", "version": "t", "instance": "be"})

    app = make_app(service, backend_transport=httpx.MockTransport(backend), KEEL_APP_TEST_ROUTES="1")

    async def fake_sleep(_seconds: float) -> None:
        return None

    app._sleep = fake_sleep

    async def scenario() -> list[dict]:
        await app.startup()
        try:
            return [await call(app, *r) for r in requests]
        finally:
            await app.shutdown()

    return asyncio.run(scenario())


@PROPERTY
@given(
    service=st.sampled_from(["api", "backend"]),
    method=st.sampled_from([b"GET", b"HEAD", b"POST", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"FOO"]),
    path=st.one_of(st.sampled_from([b"/", b"/hello", b"/work", b"/slow", b"/metrics", b"/readyz", b"/healthz"]),
                   st.binary(max_size=80).map(lambda b: b"/" + b)),
    query=st.binary(max_size=80),
    request_id=header_bytes,
)
def test_any_request_gets_an_answer_below_500_and_a_sane_request_id(
    make_app: Any, service: str, method: bytes, path: bytes, query: bytes, request_id: bytes
) -> None:
    (answer,) = run_requests(make_app, service, [(method, path, query, [(b"x-request-id", request_id)])])
    assert answer["status"] < 500, answer
    returned = answer["headers"][b"x-request-id"].decode("ascii")
    assert REQUEST_ID.fullmatch(returned)
    kept = sanitize_request_id(request_id)
    if kept is not None:
        assert returned == kept


@PROPERTY
@given(ms=st.one_of(st.binary(max_size=30), st.integers(-10**9, 10**12).map(lambda n: str(n).encode()),
                   # percent-encoded as browsers send it: any text, and digits of every script
                   st.text(max_size=12).map(lambda t: quote(t).encode()),
                   st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=4)
                   .map(lambda t: quote(t).encode())))
def test_slow_answers_200_or_400_whatever_its_query(make_app: Any, ms: bytes) -> None:
    (answer,) = run_requests(make_app, "backend", [(b"GET", b"/slow", b"ms=" + ms, [])])
    assert answer["status"] in (200, 400), (ms, answer)


@PROPERTY
@given(traceparent=st.one_of(header_bytes, valid_traceparent.map(str.encode)))
def test_the_backend_always_gets_a_well_formed_traceparent_that_continues_a_valid_one(
    make_app: Any, traceparent: bytes
) -> None:
    seen: list[dict] = []
    (answer,) = run_requests(make_app, "api", [(b"GET", b"/", b"", [(b"traceparent", traceparent)])], seen)
    assert answer["status"] == 200, answer
    sent = TRACEPARENT.fullmatch(seen[0]["traceparent"])
    assert sent and int(sent.group(1), 16) != 0 and int(sent.group(2), 16) != 0, seen[0]["traceparent"]
    incoming = TRACEPARENT.fullmatch(traceparent.decode("latin-1"))
    if incoming and int(incoming.group(1), 16) and int(incoming.group(2), 16):
        assert sent.group(1) == incoming.group(1)  # the trace continues
