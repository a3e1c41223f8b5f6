"""The real ``keel-app`` process: start, drain on SIGTERM, finish in-flight work, exit 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

APP_SRC = Path(__file__).resolve().parents[3] / "app" / "src"
EXIT_BOUND = 10.0  # seconds from SIGTERM to exit: 1 s drain + the rest of a 2.5 s request + margin


def keel_app_command() -> list[str]:
    """The console script next to this Python if the package is installed, else ``python -m keel_app``."""
    script = Path(sys.executable).with_name("keel-app")
    if script.exists():
        return [str(script)]
    found = shutil.which("keel-app")
    return [found] if found else [sys.executable, "-m", "keel_app"]


def process_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_APP_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APP_SRC), env.get("PYTHONPATH")]))
    env.update(values)
    return env


def wait_until_ready(base: str, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "keel-app exited before it became ready"
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"keel-app did not become ready within {timeout}s")


def test_sigterm_drains_then_exits_zero(tmp_path: Path, free_port: int) -> None:
    base = f"http://127.0.0.1:{free_port}"
    log_path = tmp_path / "keel-app.log"
    env = process_env(
        KEEL_APP_SERVICE="backend",
        KEEL_APP_PORT=str(free_port),
        KEEL_APP_DRAIN_SECONDS="1",
        KEEL_APP_SHUTDOWN_TIMEOUT="8",
        KEEL_APP_TEST_ROUTES="1",
    )
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(keel_app_command(), env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(base, proc)

        slow_result: dict[str, Any] = {}

        def slow_request() -> None:
            try:
                response = httpx.get(f"{base}/slow", params={"ms": "2500"}, timeout=15.0)
                slow_result["status"] = response.status_code
            except httpx.HTTPError as exc:  # reported by the assertion below
                slow_result["error"] = repr(exc)

        worker = threading.Thread(target=slow_request, daemon=True)
        worker.start()
        time.sleep(0.4)  # the slow request is in flight
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Draining: readiness fails at once, while ordinary requests are still served.
        readyz = None
        while time.monotonic() - signalled < 0.8:
            readyz = httpx.get(f"{base}/readyz", timeout=1.0)
            if readyz.status_code == 503:
                break
            time.sleep(0.05)
        assert readyz is not None
        assert readyz.status_code == 503
        assert readyz.json() == {"status": "draining"}
        assert httpx.get(f"{base}/hello", timeout=1.0).status_code == 200

        worker.join(timeout=12.0)
        assert slow_result == {"status": 200}
        code = proc.wait(timeout=EXIT_BOUND)
        assert code == 0
        assert time.monotonic() - signalled < EXIT_BOUND
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    messages = [line["message"] for line in lines]
    assert any(m.startswith("SIGTERM received: draining for 1s") for m in messages)
    assert "exited cleanly" in messages
    slow_lines = [line for line in lines if line.get("route") == "/slow"]
    assert [(line["status"], line["service"]) for line in slow_lines] == [(200, "backend")]


def test_bad_config_exits_nonzero_with_one_line(free_port: int) -> None:
    env = process_env(KEEL_APP_SERVICE="backend", KEEL_APP_PORT="not-a-port")
    done = subprocess.run(keel_app_command(), env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "KEEL_APP_PORT must be an integer 1-65535 (got 'not-a-port')" in done.stderr
