"""The public frontend of roles/haproxy, rendered from the role's template and run in a real HAProxy.

What the internet may and may not do at the edge (security review H4, M3, L2, L3): internal
paths (/metrics, /healthz, /readyz, /slow) answer 404 however they are spelt, only the
allowed methods pass, a body above the limit is refused, client address and trace headers
never reach the app, header names with "_" are refused, per-source connection and request
limits hold, HAProxy's own answers carry the security headers, and the request ID is random.
Skipped where Debian's haproxy is not installed (scripts/setup.sh installs it).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from keel_test_helpers import local_play

ROOT = Path(__file__).resolve().parents[2]
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="haproxy is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Echo(http.server.BaseHTTPRequestHandler):
    """The app: answers every method with the request's path and headers as JSON."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"path": self.path, "method": self.command,
                           "headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _answer

    def log_message(self, *args) -> None:
        pass


def render_template(tmp_path: Path, template: str, dest: Path, extra: dict, role: str = "haproxy") -> Path:
    """One of the role's templates with its defaults and vars and the given values."""
    res = local_play(tmp_path, [{"ansible.builtin.template": {
        "src": str(ROOT / "roles" / role / "templates" / template), "dest": str(dest), "mode": "0600"}}],
        {"ansible_managed": "test", **extra},
        vars_files=[str(ROOT / "roles" / role / "defaults/main.yml"), str(ROOT / "roles" / role / "vars/main.yml")])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    return dest


def render(tmp_path: Path, cert_from: Path | None = None, **overrides) -> tuple[Path, dict]:
    """haproxy.cfg from the role's template, defaults and vars, on local ports; the chroot is
    a directory of the test's own; the certificate is new, or cert_from's (another edge's)."""
    ports = {"haproxy_http_port": free_port(), "haproxy_https_port": free_port(), "haproxy_stats_port": free_port()}
    backend = free_port()
    extra = {"haproxy_bind_address": "127.0.0.1", "haproxy_stats_bind_address": "127.0.0.1",
             "haproxy_runtime_api_socket": str(tmp_path / "admin.sock"), "__haproxy_stats_password": "s3cret-stats",
             "__haproxy_servers": [{"name": "app1-8000", "address": "127.0.0.1", "port": backend}],
             "haproxy_maxconn": 2000, "haproxy_health_check_path": "/readyz", **ports, **overrides}
    render_template(tmp_path, "etc/haproxy/haproxy.cfg.j2", tmp_path / "haproxy.cfg", extra)
    chroot = tmp_path / "chroot"
    chroot.mkdir()
    pem = tmp_path / "site.pem"
    if cert_from is not None:
        for name in ("cert.pem", "key.pem"):
            shutil.copy(cert_from / name, tmp_path / name)
    else:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                       check=True, capture_output=True)
    pem.write_text((tmp_path / "cert.pem").read_text() + (tmp_path / "key.pem").read_text())
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(cfg.read_text().replace("/etc/haproxy/certs/site.pem", str(pem))
                   .replace("log /dev/log local0", "log stderr local0")
                   .replace("chroot /var/lib/haproxy", f"chroot {chroot}"))
    return cfg, {**ports, "backend": backend, "chroot": str(chroot)}


def start(tmp_path: Path, cert_from: Path | None = None, **overrides):
    cfg, ports = render(tmp_path, cert_from, **overrides)
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    app = http.server.ThreadingHTTPServer(("127.0.0.1", ports["backend"]), Echo)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if request_(ports, "GET", "/probe")[0] == 200:
                break
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("HAProxy did not answer: " + proc.stderr.read().decode()[-2000:])
    yield {**ports, "pid": proc.pid, "cert": str(tmp_path / "cert.pem")}
    proc.terminate()
    proc.wait(10)
    app.shutdown()


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """The role's defaults."""
    yield from start(tmp_path_factory.mktemp("edge"))


@pytest.fixture
def edge_with(tmp_path, request):
    """The role's defaults with request.param's values."""
    yield from start(tmp_path, **request.param)


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request_(ports: dict, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
             raw_headers: list[tuple[str, str]] | None = None) -> tuple[int, dict, bytes]:
    """One HTTPS request on its own connection, written by hand so nothing is normalised on the way."""
    with socket.create_connection(("127.0.0.1", ports["haproxy_https_port"]), timeout=10) as raw, \
            tls().wrap_socket(raw) as conn:
        lines = [f"{method} {path} HTTP/1.1", "Host: edge.test", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines += [f"{k}: {v}" for k, v in raw_headers or []]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if body:
            with contextlib.suppress(OSError):  # HAProxy may answer and close before the whole body is read
                conn.sendall(body)
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    got = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        got[k.strip().lower()] = v.strip()
    return status, got, payload


def seen_by_app(ports: dict, **kwargs) -> dict:
    status, _, payload = request_(ports, "GET", "/", **kwargs)
    assert status == 200, (status, payload)
    seen: dict[str, list[str]] = {}
    for k, v in json.loads(payload)["headers"]:
        seen.setdefault(k, []).append(v)
    return seen


def test_haproxy_runs_chrooted(edge):
    """The defaults chroot HAProxy (here into the test's directory instead of /var/lib/haproxy)."""
    assert os.readlink(f"/proc/{edge['pid']}/root") == edge["chroot"]


def test_the_unit_with_the_role_drop_in_is_sandboxed_and_rated(tmp_path, systemd_exposure):
    """Debian's haproxy.service has its sandbox commented out (rated 9.6); the role's drop-in
    brings it to 2.5 or lower while the master stays root (it binds 80/443, chroots, drops the
    workers to the haproxy user and signals them on a reload: the audit's own limit for it)."""
    unit = (Path(__file__).parent / "data" / "debian12-haproxy.service").read_text()
    drop_in = render_template(tmp_path, "etc/systemd/system/haproxy.service.d/keel.conf.j2",
                              tmp_path / "keel.conf", {"haproxy_maxconn": 20000}).read_text()
    bare, _ = systemd_exposure(tmp_path / "bare", "haproxy.service", unit)
    exposure, report = systemd_exposure(tmp_path / "keel", "haproxy.service", unit, drop_in)
    assert bare > 9.0
    assert exposure <= 2.5, report[-3000:]
    print(f"haproxy.service exposure: {bare} bare, {exposure} with the drop-in")
    lines = drop_in.splitlines()
    assert "LimitNOFILE=41000" in lines
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_SYS_CHROOT CAP_KILL" in lines
    assert "ReadWritePaths=/run/haproxy" in lines and "ProtectSystem=strict" in lines
    assert "SystemCallFilter=@system-service chroot" in lines


@pytest.mark.parametrize("path", [
    "/metrics", "/healthz", "/readyz", "/slow?ms=5000", "/METRICS", "/%6Detrics", "/%2Fmetrics", "//metrics",
    "/./metrics", "/metrics/", "/metrics/x", "/slow/", "/Readyz?x=1",
])
def test_internal_paths_answer_404_at_the_edge(edge, path):
    status, headers, _ = request_(edge, "GET", path)
    assert status == 404, (path, status)
    assert headers.get("strict-transport-security", "").startswith("max-age=")  # HAProxy's own answers too


@pytest.mark.parametrize("path", ["/", "/hello", "/metricsx", "/api/metrics", "/slowly"])
def test_other_paths_reach_the_app(edge, path):
    status, _, payload = request_(edge, "GET", path)
    assert status == 200 and json.loads(payload)["path"] == path


@pytest.mark.parametrize(("method", "status"), [
    ("GET", 200), ("HEAD", 200), ("OPTIONS", 200), ("POST", 405), ("PUT", 405), ("DELETE", 405), ("PATCH", 405),
    ("TRACE", 405), ("CONNECT", 405),
])
def test_only_the_allowed_methods_pass(edge, method, status):
    path = "edge.test:443" if method == "CONNECT" else "/"
    got = request_(edge, method, path)[0]
    assert got == status or (method == "CONNECT" and got in (400, 405)), (method, got)


@pytest.mark.parametrize("edge_with", [{"haproxy_allowed_methods": ["GET", "HEAD", "POST"]}], indirect=True)
def test_a_body_above_the_limit_is_refused(edge_with):
    edge = edge_with
    assert request_(edge, "POST", "/", body=b"x" * 1000)[0] == 200
    assert request_(edge, "POST", "/", body=b"x" * (2 * 1024 * 1024))[0] == 413


def test_client_address_and_trace_headers_never_reach_the_app(edge):
    seen = seen_by_app(edge, headers={
        "X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6",
        "X-Forwarded-Host": "evil.test", "X-Forwarded-Proto": "http",
        "traceparent": "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01", "tracestate": "k=v"})
    assert seen["x-forwarded-for"] == ["127.0.0.1"]  # HAProxy's own, alone
    assert seen["x-forwarded-proto"] == ["https"]
    for name in ("forwarded", "x-real-ip", "x-forwarded-host", "traceparent", "tracestate"):
        assert name not in seen, (name, seen)


@pytest.mark.parametrize("edge_with", [{"haproxy_trust_client_trace_headers": True}], indirect=True)
def test_trace_headers_kept_when_trusted(edge_with):
    edge = edge_with
    parent = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
    assert seen_by_app(edge, headers={"traceparent": parent})["traceparent"] == [parent]


def test_a_header_name_with_an_underscore_is_refused(edge):
    assert request_(edge, "GET", "/", raw_headers=[("x_forwarded_for", "6.6.6.6")])[0] == 403  # HAProxy refuses it


def test_request_ids_are_random_and_a_sane_one_is_kept(edge):
    ids = {request_(edge, "GET", "/")[1]["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(UUID4.match(i) for i in ids), ids
    assert request_(edge, "GET", "/", headers={"X-Request-ID": "abc-123"})[1]["x-request-id"] == "abc-123"
    assert UUID4.match(request_(edge, "GET", "/", headers={"X-Request-ID": "bad id <x>"})[1]["x-request-id"])


@pytest.mark.parametrize("edge_with", [{"haproxy_conn_limit_per_source": 5}], indirect=True)
def test_connections_per_source_are_capped(edge_with):
    edge = edge_with
    held = []
    try:
        for _ in range(5):
            raw = socket.create_connection(("127.0.0.1", edge["haproxy_https_port"]), timeout=5)
            held.append(tls().wrap_socket(raw))
        time.sleep(0.3)
        with pytest.raises((OSError, ssl.SSLError)):
            request_(edge, "GET", "/")
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.5)
    assert request_(edge, "GET", "/")[0] == 200  # freed connections count no more


@pytest.mark.parametrize("edge_with", [{"haproxy_rate_limit_per_10s": 10}], indirect=True)
def test_requests_per_source_are_limited_with_security_headers(edge_with):
    edge = edge_with
    answers = [request_(edge, "GET", "/") for _ in range(14)]
    statuses = [a[0] for a in answers]
    assert statuses.count(429) >= 3 and statuses[:9] == [200] * 9, statuses
    refused = next(a for a in answers if a[0] == 429)
    assert refused[1].get("strict-transport-security", "").startswith("max-age=")
    assert refused[1].get("x-content-type-options") == "nosniff"


def exchange(ports: dict, head: list[str], body: str) -> list[tuple[int, bytes]]:
    """Send one hand-written request (head lines and a body, nothing added) and read every answer
    on the connection: [(status, payload)]. A request smuggled inside the body would show as a
    second answer."""
    with socket.create_connection(("127.0.0.1", ports["haproxy_https_port"]), timeout=10) as raw, \
            tls().wrap_socket(raw) as conn:
        conn.sendall(("\r\n".join(head) + "\r\n\r\n" + body).encode())
        conn.settimeout(3)
        data = b""
        with contextlib.suppress(OSError):  # TimeoutError when HAProxy keeps the connection open
            while chunk := conn.recv(65536):
                data += chunk
    answers = []
    for part in re.split(rb"(?=HTTP/1\.1 \d{3} )", data):
        if part.startswith(b"HTTP/1.1 "):
            answers.append((int(part.split()[1]), part.partition(b"\r\n\r\n")[2]))
    return answers


# A CL.TE / TE.CL smuggling body: "0" ends the chunked body; what follows would be a second
# request to a backend that framed by Content-Length instead.
SMUGGLED = "0\r\n\r\nGET /metrics HTTP/1.1\r\nHost: edge.test\r\n\r\n"
POST = ["POST / HTTP/1.1", "Host: edge.test", "Connection: close"]


@pytest.fixture(scope="module")
def post_edge(tmp_path_factory):
    """The role's defaults with POST allowed (the smuggling cases need a body to reach the backend)."""
    yield from start(tmp_path_factory.mktemp("post"), haproxy_allowed_methods=["GET", "HEAD", "POST"])


@pytest.mark.parametrize("framing", [
    ["Content-Length: 5", "Content-Length: 6"],              # two lengths
    ["Content-Length: -1"],
    ["Transfer-Encoding: xchunked", "Content-Length: 6"],    # an unknown coding beside a length
    ["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
])
def test_conflicting_or_malformed_framing_is_refused(post_edge, framing):
    assert [status for status, _ in exchange(post_edge, POST + framing, SMUGGLED)] == [400]


@pytest.mark.parametrize("framing", [
    ["Content-Length: 6", "Transfer-Encoding: chunked"],     # CL.TE
    ["Transfer-Encoding: chunked", "Content-Length: 60"],    # TE.CL
    ["Transfer-Encoding:  chunked", "Content-Length: 6"],    # odd spacing
])
def test_transfer_encoding_wins_and_the_backend_gets_one_framing_and_one_request(post_edge, framing):
    """HAProxy drops the Content-Length (RFC 9112), so it and the backend agree on where the
    request ends: the "request" after the chunked body is not forwarded, and never answered."""
    answers = exchange(post_edge, POST + framing, SMUGGLED)
    assert [status for status, _ in answers] == [200], answers
    seen = {k for k, _ in json.loads(answers[0][1])["headers"]}
    assert "transfer-encoding" in seen and "content-length" not in seen, seen


def preflight(tmp_path: Path, **overrides) -> subprocess.CompletedProcess[str]:
    """The role's preflight on this machine (Debian 12) with the given inputs."""
    return local_play(tmp_path, [{"ansible.builtin.include_role": {"name": "haproxy", "tasks_from": "preflight"}}],
                      {"haproxy_maxconn": 2000, **overrides}, facts=True)


def fd_ceiling() -> int:
    line = next(x for x in Path("/proc/1/limits").read_text().splitlines() if x.startswith("Max open files"))
    return int(line.split()[4])


@pytest.mark.parametrize(("overrides", "says"), [
    ({"haproxy_maxconn": -5}, "haproxy_maxconn must be a whole number from 100 to 1,000,000 (got '-5'"),
    ({"haproxy_maxconn": "lots"}, "(got 'lots'"),
    ({"haproxy_backend_maxconn": 5000}, "haproxy_backend_maxconn from 1 to haproxy_maxconn (got '5000')"),
    ({"haproxy_conn_limit_per_source": 3000}, "haproxy_conn_limit_per_source from 0 (off) to haproxy_maxconn"),
    ({"haproxy_rate_limit_per_10s": -1}, "haproxy_rate_limit_per_10s and haproxy_max_request_body_bytes 0 (off)"),
    ({"haproxy_internal_paths": ["metrics"]}, "haproxy_internal_paths are paths such as /metrics"),
    ({"haproxy_internal_paths": ["/a' or '1"]}, "haproxy_internal_paths are paths such as /metrics"),
    ({"haproxy_allowed_methods": ["get"]}, "haproxy_allowed_methods are upper-case method names"),
    ({"haproxy_reload_confirm_timeout": 0}, "haproxy_reload_confirm_timeout 1 to 600 seconds (got '0')"),
    ({"haproxy_chroot_enabled": "maybe"}, 'haproxy_chroot_enabled must be true or false (got "maybe")'),
    ({"haproxy_stats_port": 443}, "must all differ: two listeners cannot share a port"),
    ({"haproxy_http_port": 8443, "haproxy_https_port": 8443}, "must all differ"),
])
def test_preflight_refuses_limits_and_listeners_that_make_no_sense(tmp_path, overrides, says):
    res = preflight(tmp_path, **overrides)
    assert res.returncode != 0 and says in res.stdout, res.stdout[-3000:]


def test_preflight_refuses_a_maxconn_the_host_cannot_give_descriptors_for(tmp_path):
    ceiling = fd_ceiling()
    if ceiling >= 2_001_000:
        pytest.skip(f"this host allows {ceiling} descriptors: any maxconn up to 1,000,000 fits")
    too_many = (ceiling - 1000) // 2 + 1
    res = preflight(tmp_path, haproxy_maxconn=too_many)
    assert res.returncode != 0, res.stdout[-3000:]
    assert f"allows a service at most {ceiling}" in res.stdout
    assert f"lower haproxy_maxconn to {too_many - 1}" in res.stdout
    assert preflight(tmp_path, haproxy_maxconn=too_many - 1).returncode == 0  # the edge of what fits


def test_preflight_accepts_the_defaults(tmp_path):
    res = preflight(tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
