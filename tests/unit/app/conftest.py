"""Fixtures for keel_app's tests.

keel_app is imported from app/src when it is not installed. Its dependencies
(app/requirements.in) must be installed for these tests to run; each test
module fails when they are not (scripts/setup.sh installs them into .venv).
This file imports nothing from them at import time for that reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
APP_SRC = REPO / "app" / "src"
if importlib.util.find_spec("keel_app") is None:
    sys.path.insert(0, str(APP_SRC))


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(service: str = "backend", **extra: str) -> dict[str, str]:
    env = {"KEEL_APP_SERVICE": service}
    if service == "api":
        env["KEEL_APP_BACKEND_URL"] = "http://backend.test"
    env.update(extra)
    return env


@pytest.fixture
def make_app() -> Callable[..., Any]:
    """make_app(service, exporter=None, backend_transport=None, **env) -> KeelApp (not started)."""
    from keel_app.app import KeelApp
    from keel_app.config import load_config
    from keel_app.telemetry import Tracing

    def make(service: str = "backend", *, exporter: Any = None, backend_transport: Any = None, **env: str) -> Any:
        config = load_config(app_env(service, **env))
        tracing = Tracing(config, exporter=exporter) if exporter is not None else None
        return KeelApp(config, tracing=tracing, backend_transport=backend_transport)

    return make


@contextlib.asynccontextmanager
async def _running(app: Any) -> AsyncIterator[Any]:
    """Run the app's startup and shutdown around the block; yield an httpx client talking to it."""
    import httpx

    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app.test") as client:
            yield client
    finally:
        await app.shutdown()


@pytest.fixture
def running() -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
    """``async with running(app) as client``: startup, an httpx client on the app, shutdown."""
    return _running


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Route log records to stdout as JSON (as configure_logging does) and return a reader of the lines."""
    from keel_app.logs import JsonFormatter, StdoutHandler

    handler = StdoutHandler()
    handler.setFormatter(JsonFormatter("test"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    lines: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        out = capsys.readouterr().out
        for line in out.splitlines():
            if line.strip():
                lines.append(json.loads(line))  # every line on stdout must be one JSON object
        return lines

    try:
        yield read
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
