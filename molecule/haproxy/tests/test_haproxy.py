"""Behaviour of the haproxy role: TLS, redirect, headers, health checks, Runtime API, stats, reloads."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
LB = "172.30.78.21"
CA = EPHEMERAL / "lab-ca" / "ca.crt"
SOCKET = "/run/haproxy/admin.sock"


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(CA))
    ctx.check_hostname = False  # the certificate names lb-solo and 127.0.0.1/the private IP; we dial the IP
    return ctx


def get(url: str, headers: dict | None = None, auth: tuple[str, str] | None = None, timeout: float = 5):
    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310  always http(s) to the test host
    if auth:
        import base64

        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    ctx = tls_context() if url.startswith("https") else None

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def runtime_api(host, command: str) -> str:
    return host.check_output(f"echo '{command}' | socat stdio {SOCKET}")


def server_states(host) -> dict[str, str]:
    out = host.check_output(f"echo 'show stat' | socat stdio {SOCKET}")
    states = {}
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[0] == "app" and fields[1] not in ("FRONTEND", "BACKEND"):
            states[fields[1]] = fields[17]
    return states


def test_config_is_valid_and_service_runs(host):
    assert host.run("haproxy -c -f /etc/haproxy/haproxy.cfg").rc == 0
    assert host.service("haproxy").is_running
    assert host.service("haproxy").is_enabled


def haproxy_on_the_host() -> tuple[dict, list[dict]]:
    """HAProxy's master and workers as this machine sees them (docker top: host PIDs). A worker
    has dropped to the haproxy user and is not dumpable, so inside the container root, without
    CAP_SYS_PTRACE, cannot read its /proc/PID/root; this machine's root can."""
    out = subprocess.run(["docker", "top", "lb-solo", "-eo", "pid,ppid,uid,comm"], capture_output=True,
                         text=True, check=True, timeout=30).stdout.splitlines()[1:]
    procs = [dict(zip(("pid", "ppid", "uid", "comm"), line.split(None, 3), strict=True)) for line in out]
    haproxy = [p for p in procs if p["comm"].strip() == "haproxy"]
    pids = {p["pid"] for p in haproxy}
    (master,) = [p for p in haproxy if p["ppid"] not in pids]
    return master, [p for p in haproxy if p["ppid"] == master["pid"]]


def test_workers_are_chrooted_unprivileged_and_the_master_sandboxed(host):
    """Security review M2: the workers chroot into /var/lib/haproxy as the haproxy user; the
    master keeps only the capabilities it needs and writes only under /run/haproxy."""
    master, workers = haproxy_on_the_host()
    assert workers, "no worker under the master"
    haproxy_uid = host.check_output("id -u haproxy").strip()
    for worker in workers:
        assert os.readlink(f"/proc/{worker['pid']}/root").endswith("/var/lib/haproxy"), worker
        assert worker["uid"] == haproxy_uid, worker
    assert not os.readlink(f"/proc/{master['pid']}/root").endswith("/var/lib/haproxy")
    assert master["uid"] == "0"
    in_container = host.check_output("systemctl show -p MainPID --value haproxy").strip()
    bounding = int(host.check_output(f"awk '/^CapBnd/ {{print $2}}' /proc/{in_container}/status"), 16)
    # CAP_KILL 5, CAP_SETGID 6, CAP_SETUID 7, CAP_NET_BIND_SERVICE 10, CAP_SYS_CHROOT 18
    assert bounding == sum(1 << bit for bit in (5, 6, 7, 10, 18)), hex(bounding)
    assert host.file("/run/haproxy/haproxy.pid").content_string.strip() == in_container
    assert host.file("/run/haproxy/master.sock").is_socket
    # the master's view of the file system is read-only outside /run/haproxy (ProtectSystem=strict)
    probe = subprocess.run(["nsenter", "-t", master["pid"], "-m", "touch", "/etc/haproxy/probe"],
                           capture_output=True, text=True, timeout=30, check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe.stderr


def test_the_unit_is_rated_at_most_2_5(host):
    out = host.check_output("systemd-analyze security --no-pager haproxy.service")
    exposure = float(re.search(r"Overall exposure level for haproxy.service: ([0-9.]+)", out).group(1))
    assert exposure <= 2.5, out[-2000:]


def test_listeners(host):
    assert host.socket("tcp://0.0.0.0:80").is_listening
    assert host.socket("tcp://0.0.0.0:443").is_listening
    assert host.socket(f"tcp://{LB}:8404").is_listening
    assert not host.socket("tcp://0.0.0.0:8404").is_listening


def test_http_redirects_to_https():
    status, headers, _ = get(f"http://{LB}/some/path?q=1")
    assert status == 301
    assert headers["location"] == f"https://{LB}/some/path?q=1"


def test_https_serves_the_backends_with_security_headers():
    bodies = set()
    for _ in range(6):
        status, headers, body = get(f"https://{LB}/")
        assert status == 200
        bodies.add(body.strip())
        assert headers["strict-transport-security"].startswith("max-age=31536000")
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert "server" not in {k.lower() for k in headers}
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", headers["x-request-id"])
    assert bodies == {"backend 8001", "backend 8002"}


def test_certificate_chains_to_the_lab_ca():
    ctx = tls_context()
    import socket

    with socket.create_connection((LB, 443), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.selected_alpn_protocol() in (None, "h2", "http/1.1")


def test_old_tls_is_refused():
    ctx = tls_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    import socket

    with (
        pytest.raises((ssl.SSLError, ConnectionResetError, OSError)),
        socket.create_connection((LB, 443), timeout=5) as raw,
        ctx.wrap_socket(raw),
    ):
        pass


def test_incoming_request_id_is_kept_and_bad_one_replaced():
    _, headers, _ = get(f"https://{LB}/", headers={"X-Request-ID": "abc-123.XYZ"})
    assert headers["x-request-id"] == "abc-123.XYZ"
    _, headers, _ = get(f"https://{LB}/", headers={"X-Request-ID": "bad id <script>"})
    assert headers["x-request-id"] != "bad id <script>"
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", headers["x-request-id"])


def test_every_request_is_one_json_line_in_the_journal_without_rate_limit(host):
    """The access log reaches the journal (where the log shipper reads it) and
    journald's per-service limit, which drops lines above ~1,000 req/s, is off for HAProxy."""
    assert host.check_output("systemctl show -p LogRateLimitIntervalUSec --value haproxy") == "0"
    request_id = f"keel-log-{time.time_ns()}"
    assert get(f"https://{LB}/", headers={"X-Request-ID": request_id})[0] == 200
    entries: list[dict] = []
    for _ in range(20):
        lines = host.check_output(
            f"journalctl -u haproxy --since -2min -o cat --no-pager | grep -F '{request_id}' || true")
        entries = [json.loads(line[line.index("{"):]) for line in lines.splitlines() if "{" in line]
        if entries:
            break
        time.sleep(0.5)
    assert len(entries) == 1, entries
    assert entries[0]["request_id"] == request_id and entries[0]["status"] == 200
    assert entries[0]["backend"] == "app" and entries[0]["method"] == "GET"


def test_runtime_api_socket_is_root_only(host):
    sock = host.file(SOCKET)
    assert sock.is_socket
    assert sock.user == "root"
    assert sock.mode == 0o600
    assert host.run(f"su -s /bin/sh -c 'echo show info | socat stdio {SOCKET}' nobody").rc != 0


def test_stats_need_the_password(host):
    status, _, _ = get(f"http://{LB}:8404/stats")
    assert status == 401
    password = (EPHEMERAL / "credentials" / "haproxy-stats-lb-solo").read_text().strip()
    status, _, body = get(f"http://{LB}:8404/stats;csv", auth=("admin", password))
    assert status == 200
    assert "app,lb-solo-8001" in body


def test_prometheus_exporter():
    status, _, body = get(f"http://{LB}:8404/metrics")
    assert status == 200
    assert 'haproxy_backend_active_servers{proxy="app"}' in body


def test_health_check_marks_a_stopped_backend_down_and_back_up(host):
    """inter 2s, fall 2, rise 2: down within 2 x 2 s (+1 interval slack), bound 10 s."""
    assert server_states(host) == {"lb-solo-8001": "UP", "lb-solo-8002": "UP"}
    host.run_test("systemctl stop backend@8002")
    try:
        t0 = time.monotonic()
        while not server_states(host)["lb-solo-8002"].startswith("DOWN") and time.monotonic() - t0 < 10:
            time.sleep(0.2)
        took = time.monotonic() - t0
        assert server_states(host)["lb-solo-8002"].startswith("DOWN"), took
        assert took <= 6.5, took
        for _ in range(6):  # every request now goes to the healthy backend
            status, _, body = get(f"https://{LB}/")
            assert (status, body.strip()) == (200, "backend 8001")
    finally:
        host.run_test("systemctl start backend@8002")
    t0 = time.monotonic()
    while server_states(host)["lb-solo-8002"] != "UP" and time.monotonic() - t0 < 15:
        time.sleep(0.2)
    assert server_states(host)["lb-solo-8002"] == "UP"


def test_reloads_under_load_lose_no_request(host):
    """20 reloads while a client sends requests over fresh connections: no failure.

    The load is bounded: one client thread for at most 60 s or 5,000 requests.
    """
    results = {"ok": 0, "failed": 0, "errors": []}
    stop = threading.Event()

    def client():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and results["ok"] + results["failed"] < 5000:
            try:
                status, _, _ = get(f"https://{LB}/", timeout=5)
                if status == 200:
                    results["ok"] += 1
                else:
                    results["failed"] += 1
                    results["errors"].append(status)
            except Exception as exc:
                results["failed"] += 1
                results["errors"].append(repr(exc))

    worker = threading.Thread(target=client)
    worker.start()
    master_before = host.check_output("systemctl show -p MainPID --value haproxy")
    try:
        for _ in range(20):
            host.run_test("systemctl reload haproxy")
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join(timeout=70)
    assert host.check_output("systemctl show -p MainPID --value haproxy") == master_before  # reloaded, not restarted
    assert results["ok"] > 50, results
    assert results["failed"] == 0, results["errors"][:5]


def test_rejected_config_leaves_the_running_service_untouched(host, tmp_path):
    """A value haproxy -c rejects fails the run; the old config keeps serving."""
    before = host.file("/etc/haproxy/haproxy.cfg").sha256sum
    master = host.check_output("systemctl show -p MainPID --value haproxy")
    output = _converge_with({"haproxy_frontend_extra_config": ["http-request no-such-action"]}, tmp_path)
    assert "failed to validate" in output, output[-2000:]
    assert host.file("/etc/haproxy/haproxy.cfg").sha256sum == before
    assert host.check_output("systemctl show -p MainPID --value haproxy") == master
    assert get(f"https://{LB}/")[0] == 200


def _converge_with(extra: dict, tmp_path) -> str:
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    res = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "converge.yml"),
         "-e", f"@{extra_file}"],
        capture_output=True, text=True, timeout=300,
    )
    output = res.stdout + res.stderr
    assert res.returncode != 0, output[-2000:]
    return " ".join(output.split())


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("case", ["two_instances_one_port", "tls_key_not_matching_certificate",
                                  "journal_rate_limit_not_a_time_span"])
def test_bad_input_rejected_before_the_running_service_is_touched(host, case, tmp_path):
    before = host.check_output("sha256sum /etc/haproxy/haproxy.cfg /etc/haproxy/certs/*")
    master = host.check_output("systemctl show -p MainPID --value haproxy")
    if case == "two_instances_one_port":
        output = _converge_with({"app_instance_ports": [8001, 8001]}, tmp_path)
        assert "two backend servers point at the same address and port (172.30.78.21:8001)" in output
    elif case == "journal_rate_limit_not_a_time_span":
        output = _converge_with({"haproxy_journal_rate_limit_interval": "30 seconds"}, tmp_path)
        assert "haproxy_journal_rate_limit_interval must be a systemd time span" in output
        assert "(got '30 seconds')" in output
    else:
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                 "-subj", "/CN=lb-solo", "-keyout", str(tmp_path / "a.key"), "-out", str(tmp_path / "a.crt"))
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(tmp_path / "b.key"))
        output = _converge_with({"haproxy_tls_mode": "provided",
                                 "haproxy_tls_certificate": (tmp_path / "a.crt").read_text(),
                                 "haproxy_tls_private_key": (tmp_path / "b.key").read_text()}, tmp_path)
        assert "haproxy_tls_private_key does not match haproxy_tls_certificate" in output
    assert "changed=0" in output  # the recap: nothing changed
    assert host.check_output("sha256sum /etc/haproxy/haproxy.cfg /etc/haproxy/certs/*") == before
    assert host.check_output("systemctl show -p MainPID --value haproxy") == master
    assert get(f"https://{LB}/")[0] == 200


def test_a_master_that_can_no_longer_reload_is_restarted_with_the_checked_config(host, tmp_path):
    """Seen on the lab: the master kept a descriptor limit below what the configuration needs, so
    every reload failed ("Cannot raise FD limit") and the old configuration kept serving until
    HAProxy was restarted by hand. The role sees the worker did not change and restarts once."""
    master = host.check_output("systemctl show -p MainPID --value haproxy")
    def worker() -> str:
        return next(line for line in runtime_api(host, "show info").splitlines() if line.startswith("Pid:"))
    worker_before = worker()
    host.check_output(f"prlimit --pid {master} --nofile=1024:1024")  # as an earlier, smaller maxconn left it
    extra = {"haproxy_frontend_extra_config": ["http-after-response set-header X-Keel-Recovered yes"],
             "haproxy_reload_confirm_timeout": 10}  # (60 s by default) the wait is the operator's to choose
    try:
        extra_file = tmp_path / "extra.json"
        extra_file.write_text(json.dumps(extra))
        res = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
                              str(SCENARIO / "converge.yml"), "-e", f"@{extra_file}"],
                             capture_output=True, text=True, timeout=300, check=False)
        output = " ".join((res.stdout + res.stderr).split())
        assert res.returncode == 0, output[-3000:]
        assert "Restart haproxy, its master could not load the checked configuration" in output
        assert "changed: [lb-solo]" in output.split("its master could not load the checked configuration", 1)[1][:400]
        assert host.check_output("systemctl show -p MainPID --value haproxy") != master
        assert worker() != worker_before
        status, headers, _ = get(f"https://{LB}/")
        assert status == 200 and headers.get("x-keel-recovered") == "yes"
        limit = host.check_output("cat /proc/$(systemctl show -p MainPID --value haproxy)/limits")
        assert "1024" not in next(line for line in limit.splitlines() if line.startswith("Max open files"))
    finally:  # back to the scenario's configuration (a plain reload)
        subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
                        str(SCENARIO / "converge.yml")], capture_output=True, text=True, timeout=300, check=False)
    assert "x-keel-recovered" not in get(f"https://{LB}/")[1]
