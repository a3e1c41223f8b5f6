"""Routes, status codes, readiness, request IDs and metrics, through the ASGI interface."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


def is_generated_id(value: str) -> bool:
    return len(value) == 32 and uuid.UUID(hex=value).version == 4


def test_hello_health_and_identity(make_app: Any, running: Any) -> None:
    async def scenario() -> None:
        app = make_app("backend", KEEL_APP_VERSION="7.1.0", KEEL_APP_INSTANCE="be-1")
        async with running(app) as client:
            hello = await client.get("/hello")
            assert hello.status_code == 200
            assert hello.headers["content-type"] == "application/json"
            assert hello.json() == {"message": "hello", "service": "backend", "version": "7.1.0", "instance": "be-1"}
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
            work = await client.get("/work")
            assert work.json() == {"service": "backend", "version": "7.1.0", "instance": "be-1"}
            head = await client.head("/hello")
            assert (head.status_code, head.content) == (200, b"")

    asyncio.run(scenario())


def test_unknown_path_and_method(make_app: Any, running: Any) -> None:
    async def scenario() -> None:
        async with running(make_app("api")) as client:
            missing = await client.get("/work")  # a backend route, not an api one
            assert missing.status_code == 404
            assert missing.json()["error"] == "not found"
            post = await client.post("/hello", content=b"x")
            assert post.status_code == 405
            assert post.headers["allow"] == "GET, HEAD"

    asyncio.run(scenario())


def test_readyz_before_startup_and_while_draining(make_app: Any, running: Any) -> None:
    async def scenario() -> None:
        app = make_app("backend")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as raw:
            starting = await raw.get("/readyz")
            assert (starting.status_code, starting.json()) == (503, {"status": "starting"})
        async with running(app) as client:
            assert (await client.get("/readyz")).status_code == 200
            app.begin_drain()
            draining = await client.get("/readyz")
            assert (draining.status_code, draining.json()) == (503, {"status": "draining"})
            hello = await client.get("/hello")
            assert hello.status_code == 200  # still served while draining
            assert hello.headers["connection"] == "close"

    asyncio.run(scenario())


def test_fail_readiness_never_ready(make_app: Any, running: Any) -> None:
    async def scenario() -> None:
        async with running(make_app("backend", KEEL_APP_FAIL_READINESS="1")) as client:
            for _ in range(3):
                ready = await client.get("/readyz")
                assert ready.status_code == 503
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/hello")).status_code == 200

    asyncio.run(scenario())


def test_slow_route(make_app: Any, running: Any) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async def scenario() -> None:
        app = make_app("backend", KEEL_APP_TEST_ROUTES="1")
        app._sleep = fake_sleep
        async with running(app) as client:
            ok = await client.get("/slow", params={"ms": "20"})
            assert (ok.status_code, ok.json()["slept_ms"]) == (200, 20)
            capped = await client.get("/slow", params={"ms": "999999"})
            assert capped.json()["slept_ms"] == 5000
            bad = await client.get("/slow", params={"ms": "-5"})
            assert bad.status_code == 400
            # a Unicode digit ("²", %C2%B2) passes str.isdigit() but not int(): 400, not 500
            for raw in ("\u00b2", "\u0663", "1\u00b2"):
                odd = await client.get("/slow", params={"ms": raw})
                assert odd.status_code == 400, (raw, odd.status_code)

    asyncio.run(scenario())
    assert slept == [0.02, 5.0]


@pytest.mark.parametrize(
    ("sent", "honoured"),
    [
        ("abc-123_X.y", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("ünïcode", False),
        ("", False),
        (None, False),
    ],
)
def test_request_id_honoured_sanitised_or_generated(
    make_app: Any, running: Any, sent: str | None, honoured: bool
) -> None:
    async def scenario() -> str:
        async with running(make_app("backend")) as client:
            headers = {} if sent is None else {"x-request-id": sent.encode("utf-8")}
            response = await client.get("/hello", headers=headers)
            assert response.status_code == 200
            return response.headers["x-request-id"]

    echoed = asyncio.run(scenario())
    if honoured:
        assert echoed == sent
    else:
        assert is_generated_id(echoed)


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def test_metrics_use_route_templates(make_app: Any, running: Any) -> None:
    async def scenario() -> str:
        async with running(make_app("backend", KEEL_APP_VERSION="3.2.1")) as client:
            for _ in range(3):
                await client.get("/hello")
            await client.get("/no/such/path-8472")
            await client.get("/.env")
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            return response.text

    text = asyncio.run(scenario())
    samples = metric_samples(text)
    assert ("keel_app_requests_total", {"route": "/hello", "status": "200"}, 3.0) in samples
    assert ("keel_app_requests_total", {"route": "other", "status": "404"}, 2.0) in samples
    assert ("keel_app_build_info", {"version": "3.2.1", "service": "backend"}, 1.0) in samples
    assert ("keel_app_requests_in_flight", {}, 1.0) in samples  # the /metrics request itself
    assert ("keel_app_ready", {}, 1.0) in samples
    buckets = {
        labels["le"]: value
        for name, labels, value in samples
        if name == "keel_app_request_duration_seconds_bucket" and labels["route"] == "/hello"
    }
    assert buckets["+Inf"] == 3.0
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert "path-8472" not in text
    assert ".env" not in text
    # no server error yet: each served route has its error series at 0, so an
    # error ratio is 0 rather than "no data"
    assert ("keel_app_request_errors_total", {"route": "/hello", "status": "500"}, 0.0) in samples
    assert ("keel_app_request_errors_total", {"route": "other", "status": "500"}, 0.0) in samples
    process = {name: value for name, _, value in samples if name.startswith("process_")}
    assert process["process_cpu_seconds_total"] > 0  # the capacity dashboard's requests per CPU second
    assert process["process_resident_memory_bytes"] > 1_000_000
    assert process["process_open_fds"] > 0


def test_backend_failure_is_an_error_metric(make_app: Any, running: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async def scenario() -> None:
        app = make_app("api", backend_transport=httpx.MockTransport(refuse))
        async with running(app) as client:
            down = await client.get("/")
            assert down.status_code == 502
            assert down.json()["error"] == "backend unavailable"
            assert "detail" not in down.json() and "refused" not in down.text  # the cause is logged, not told
            text = (await client.get("/metrics")).text
        samples = metric_samples(text)
        assert ("keel_app_request_errors_total", {"route": "/", "status": "502"}, 1.0) in samples
        errors_of_root = [labels for name, labels, _ in samples
                          if name == "keel_app_request_errors_total" and labels["route"] == "/"]
        assert errors_of_root == [{"route": "/", "status": "502"}]  # no zero series beside a real one

        app = make_app("api", backend_transport=httpx.MockTransport(slow))
        async with running(app) as client:
            assert (await client.get("/")).status_code == 504

    asyncio.run(scenario())


def test_unhandled_error_is_a_500_and_counted(make_app: Any, running: Any, json_logs: Any) -> None:
    async def broken(scope: Any, request_id: str) -> Any:
        raise RuntimeError("handler bug")

    async def scenario() -> str:
        app = make_app("backend")
        app._routes["/hello"] = ("/hello", broken)
        async with running(app) as client:
            failed = await client.get("/hello")
            assert (failed.status_code, failed.json()) == (500, {"error": "internal server error"})
            assert (await client.get("/healthz")).status_code == 200
            return (await client.get("/metrics")).text

    samples = metric_samples(asyncio.run(scenario()))
    assert ("keel_app_request_errors_total", {"route": "/hello", "status": "500"}, 1.0) in samples
    (error_line,) = [line for line in json_logs() if line["level"] == "error"]
    assert "RuntimeError: handler bug" in error_line["exception"]
    assert error_line["request_id"]


def test_a_backend_connection_closed_under_the_api_is_retried_once(make_app: Any, running: Any) -> None:
    """Seen in the lab under load: a pooled connection the backend had just closed (keep-alive
    timeouts of 5 s on both sides) gave one 502 now and then. GET /work is idempotent: one retry."""
    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) % 2 == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json={"service": "backend"})

    def dead(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ReadError("connection reset", request=request)

    async def scenario() -> None:
        app = make_app("api", backend_transport=httpx.MockTransport(flaky))
        async with running(app) as client:
            assert (await client.get("/")).status_code == 200
        assert len(calls) == 2
        calls.clear()
        app = make_app("api", backend_transport=httpx.MockTransport(dead))
        async with running(app) as client:
            assert (await client.get("/")).status_code == 502  # once more only, then the error
        assert len(calls) == 2

    asyncio.run(scenario())


def test_the_api_drops_idle_backend_connections_before_the_backend_does() -> None:
    import inspect

    from keel_app import app as app_module
    from keel_app import cli

    server_timeout = int(inspect.getsource(cli).split("timeout_keep_alive=", 1)[1].split(",")[0].split(")")[0])
    assert server_timeout > app_module.BACKEND_KEEPALIVE_EXPIRY


def test_slow_route_is_absent_unless_test_routes_are_switched_on(make_app: Any, running: Any) -> None:
    """Security review H4: the drain-test route holds a connection at no cost to the caller."""

    async def scenario() -> None:
        for env, status in (({}, 404), ({"KEEL_APP_TEST_ROUTES": "0"}, 404), ({"KEEL_APP_TEST_ROUTES": "1"}, 200)):
            app = make_app("backend", **env)
            async with running(app) as client:
                assert (await client.get("/slow", params={"ms": "1"})).status_code == status, env

    asyncio.run(scenario())
