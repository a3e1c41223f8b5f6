"""plugins/modules/keel_wait_http.py: the app role's readiness gate.

Every URL is polled in the same round and the whole wait is bounded by one deadline: real
HTTP servers on loopback answer ready at once, ready after a while, 503 for ever, or are not
there at all; the module also runs through ansible-playbook (the library path of ansible.cfg).
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "modules"))

import keel_wait_http as wait_http  # noqa: E402


class Server:
    """A loopback server whose /readyz answers 503 until ready_after seconds have passed."""

    def __init__(self, ready_after: float | None):
        started = time.monotonic()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                ready = ready_after is not None and time.monotonic() - started >= ready_after
                self.send_response(200 if ready else 503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/readyz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    made: list[Server] = []

    def make(ready_after: float | None) -> str:
        made.append(Server(ready_after))
        return made[-1].url

    yield make
    for server in made:
        server.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/readyz"


def test_every_url_ready_ends_the_wait_at_once(servers):
    urls = [servers(0), servers(0), servers(0)]
    ready, waiting, elapsed = wait_http.wait(urls, 10, 0.2, 1, {200})
    assert waiting == {}
    assert set(ready) == set(urls)
    assert elapsed < 2


def test_a_url_that_becomes_ready_later_is_waited_for_and_the_ready_ones_are_not_asked_again(servers):
    urls = [servers(0), servers(1.0)]
    ready, waiting, _ = wait_http.wait(urls, 10, 0.2, 1, {200})
    assert waiting == {}
    assert ready[urls[0]] < 0.5 <= 1.0 <= ready[urls[1]] < 3


def test_the_deadline_bounds_the_whole_wait_not_each_url(servers):
    """Four instances that never get ready: the wait ends after the timeout once, not four times."""
    urls = [servers(None) for _ in range(4)]
    started = time.monotonic()
    ready, waiting, elapsed = wait_http.wait(urls, 2, 0.2, 1, {200})
    took = time.monotonic() - started
    assert ready == {}
    assert waiting == dict.fromkeys(urls, "HTTP 503")
    assert 2 <= elapsed <= round(took, 2) + 0.01 < 4, (elapsed, took)


def test_no_server_at_all_is_reported_with_its_error(servers):
    url = closed_port_url()
    ready, waiting, _ = wait_http.wait([servers(0), url], 1, 0.2, 1, {200})
    assert len(ready) == 1
    assert "ConnectionRefusedError" in waiting[url], waiting


def test_other_statuses_can_count_as_ready(servers):
    url = servers(None)
    ready, waiting, _ = wait_http.wait([url], 1, 0.2, 1, {200, 503})
    assert waiting == {} and list(ready) == [url]


def play(tmp_path: Path, args: dict) -> subprocess.CompletedProcess:
    """The module on localhost through ansible-playbook (the shared throwaway-play helper)."""
    from keel_test_helpers import local_play as run
    return run(tmp_path, [{"name": "Wait", "keel_wait_http": args}], {})


def test_through_ansible_playbook_a_url_not_ready_fails_the_task_naming_it(servers, tmp_path):
    ok, never = servers(0), servers(None)
    result = play(tmp_path, {"urls": [ok, never], "timeout": 2, "interval": 0.5})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"1 of 2 URL(s) did not answer [200] within 2 s: {never}: HTTP 503" in output, output
    assert ok not in output.split("did not answer")[1].split("\n")[0]


def test_through_ansible_playbook_ready_urls_pass_unchanged_and_in_check_mode(servers, tmp_path):
    result = play(tmp_path, {"urls": [servers(0), servers(0.5)], "timeout": 10, "interval": 0.2})
    assert result.returncode == 0, result.stdout
    assert "changed=0" in result.stdout


@pytest.mark.parametrize(("args", "says"), [
    ({"urls": ["127.0.0.1:8001/readyz"], "timeout": 5}, "urls must be http:// or https:// URLs"),
    ({"urls": ["http://127.0.0.1:1/readyz"], "timeout": 0}, "timeout must be at least 1 s"),
])
def test_bad_arguments_are_refused_with_what_to_fix(tmp_path, args, says):
    result = play(tmp_path, args)
    assert result.returncode == 2
    assert says in result.stdout, result.stdout


@pytest.mark.parametrize("timeout", [0, -5, "1m", 7200])
def test_the_app_role_refuses_a_readiness_timeout_out_of_range_in_preflight(tmp_path, timeout):
    from keel_test_helpers import local_play as run  # the app role's preflight on localhost
    res = run(tmp_path, [{"ansible.builtin.include_role": {"name": "app", "tasks_from": "preflight"}}],
              {"app_ready_timeout": timeout, "app_release_version": "1.0.0", "app_release_file": "/tmp/x.tar.gz",
               "app_release_sha256": "0" * 64}, facts=True)
    out = " ".join(res.stdout.split())
    assert res.returncode != 0, out[-2000:]
    assert f"app_ready_timeout 1 to 3600 seconds (got app_ready_timeout {timeout})" in out, out[-2000:]
