"""Behaviour of the app role: releases, sandboxed instances, readiness, a second release."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

API_PORTS = (8000, 8001)
ADDR = "172.30.79.31"
SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])


def get_json(host, url: str) -> dict:
    return json.loads(host.check_output(f"curl -sf --max-time 5 {url}"))


def test_instances_run(host):
    for name in [f"api-{p}" for p in API_PORTS] + ["backend-9000"]:
        unit = host.service(f"keel-app@{name}")
        assert unit.is_running, name
        assert unit.is_enabled, name


def test_api_listens_on_the_private_address_backend_on_loopback_only(host):
    for port in API_PORTS:
        assert host.socket(f"tcp://{ADDR}:{port}").is_listening
    assert host.socket("tcp://127.0.0.1:9000").is_listening
    assert not host.socket(f"tcp://{ADDR}:9000").is_listening


def test_api_calls_backend_and_reports_the_release(host):
    for port in API_PORTS:
        body = get_json(host, f"http://{ADDR}:{port}/")
        assert body["service"] == "api"
        assert body["version"] == "1.0.1"  # side_effect deployed 1.0.1
        assert body["backend"]["service"] == "backend"
        assert body["backend"]["version"] == "1.0.1"


def test_readyz_and_metrics(host):
    assert get_json(host, f"http://{ADDR}:8000/readyz")["status"] == "ready"
    metrics = host.check_output(f"curl -sf http://{ADDR}:8000/metrics")
    assert 'keel_app_build_info{' in metrics and 'version="1.0.1"' in metrics
    # process metrics inside the sandbox (ProcSubset=pid hides /proc/stat): the capacity dashboard needs them
    cpu = [line for line in metrics.splitlines() if line.startswith("process_cpu_seconds_total ")]
    assert cpu and float(cpu[0].split()[1]) > 0, metrics[-2000:]


def test_current_points_at_the_new_release_and_the_old_one_is_kept(host):
    current = host.file("/opt/keel-app/current")
    assert current.is_symlink
    assert current.linked_to == "/opt/keel-app/releases/1.0.1"
    assert host.file("/opt/keel-app/releases/1.0.0/venv/bin/keel-app").exists  # rollback target


def test_service_user_cannot_change_code_or_settings(host):
    assert host.user("keel-app").shell == "/usr/sbin/nologin"
    res = host.run("setpriv --reuid keel-app --regid keel-app --clear-groups touch /opt/keel-app/current/x")
    assert res.rc != 0
    env = host.file("/etc/keel-app/common.env")
    assert env.user == "root" and env.group == "keel-app" and env.mode == 0o640


@pytest.mark.parametrize("name", [f"api-{API_PORTS[0]}", "backend-9000"])
def test_units_are_sandboxed(host, name):
    """systemd-analyze security must rate every instance 2.0 or lower ("OK" or better)."""
    out = host.check_output(f"systemd-analyze security --no-pager keel-app@{name}.service | tail -1")
    match = re.search(r"exposure level for \S+: (\d+\.\d+)", out)
    assert match, out
    assert float(match.group(1)) <= 2.0, out


def test_instances_run_unprivileged(host):
    pid = host.check_output("systemctl show -p MainPID --value keel-app@api-8000")
    status = host.file(f"/proc/{pid}/status").content_string
    assert re.search(r"^CapEff:\s+0+$", status, re.M)
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)


def _converge(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "converge.yml"), *extra],
        capture_output=True, text=True, timeout=600,
    )


def test_binary_release_runs_and_rolls_back_to_the_wheelhouse_release(host):
    """Any executable given with its sha256 deploys like the reference app; rolling back restores the wheel."""
    binary = SCENARIO / "files" / "plain-server"
    sha256 = hashlib.sha256(binary.read_bytes()).hexdigest()
    res = _converge("-e", "keel_test_release=2.0.0-plain", "-e", f"app_release_file={binary}",
                    "-e", f"app_release_sha256={sha256}", "-e", "app_release_format=binary",
                    "-e", "app_command=plain-server")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    for port in API_PORTS:
        body = get_json(host, f"http://{ADDR}:{port}/")
        assert body == {"service": "api", "version": "2.0.0-plain", "program": "plain-server", "path": "/"}
    assert host.file("/opt/keel-app/releases/2.0.0-plain/.keel-exec").linked_to == \
        "/opt/keel-app/releases/2.0.0-plain/plain-server"
    res = _converge("-e", "app_rollback_to=1.0.1")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert host.file("/opt/keel-app/current").linked_to == "/opt/keel-app/releases/1.0.1"
    body = get_json(host, f"http://{ADDR}:8000/")
    assert body["version"] == "1.0.1" and body["backend"]["service"] == "backend"
    assert host.check_output("tail -n 3 /opt/keel-app/history").split() == ["1.0.1", "2.0.0-plain", "1.0.1"]
