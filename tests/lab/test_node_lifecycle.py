"""Adding and removing an app host on the running lab (`scripts/lab.sh check`).

The deployment guide's procedures, run as written against real hosts: a third app
host (app3, a new lab container) joins with `playbooks/add-node.yml`, serves
through HAProxy and is scraped by Prometheus; `playbooks/remove-node.yml` drains
it; its container goes and `site.yml --tags firewall,loadbalancers,monitoring`
with the original inventory makes HAProxy and Prometheus forget it. Requests go
through the load balancer the whole time, the last step included (one client,
bounded in time and count): none may fail, and app3 must have answered some of
them. The container is removed at the end, whatever happened.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv" / "bin"
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
CA = ROOT / ".credentials" / "lab-ca" / "ca.crt"
LB = "https://172.30.80.11"
NEW = "app3"
NEW_IP = "172.30.80.23"
PROMETHEUS = "http://127.0.0.1:9090"


def playbook(*args: str, inventories: list[Path], timeout: int = 1800) -> subprocess.CompletedProcess:
    argv = [str(VENV / "ansible-playbook")]
    for inventory in inventories:
        argv += ["-i", str(inventory)]
    return subprocess.run(argv + list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def lb_stats() -> dict[str, tuple[str, int]]:
    """Server name -> (state, sessions served so far) of the app backend, from the Runtime API."""
    out = subprocess.run(["docker", "exec", "keel-lab-lb1", "sh", "-c",
                          "echo 'show stat' | socat stdio /run/haproxy/admin.sock"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    states = {}
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) > 17 and fields[0] == "app" and fields[1] not in ("FRONTEND", "BACKEND"):
            states[fields[1]] = (fields[17], int(fields[7] or 0))  # status, stot
    return states


def lb_servers() -> dict[str, str]:
    """Server name -> state of the app backend."""
    return {name: state for name, (state, _) in lb_stats().items()}


def serving_release(host: str) -> str:
    """The release /opt/keel-app/current points at on a lab host."""
    return subprocess.run(["docker", "exec", f"keel-lab-{host}", "readlink", "/opt/keel-app/current"],
                          capture_output=True, text=True, timeout=30).stdout.strip().rsplit("/", 1)[-1]


def lock_free() -> bool:
    """No lifecycle lock record on the lock host (the first monitoring host)."""
    return subprocess.run(["docker", "exec", "keel-lab-mon1", "test", "-e", "/var/lib/keel/lifecycle-lock.json"],
                          capture_output=True, timeout=30).returncode == 1


FORGOTTEN: list[bool] = []  # set once forget_app3 completed


def forget_app3() -> None:
    """The guide's last step: the inventory without the host, the layers that list it."""
    forgot = playbook(str(ROOT / "playbooks" / "site.yml"), "--tags", "firewall,loadbalancers,monitoring",
                      inventories=[INVENTORY])
    assert forgot.returncode == 0, forgot.stdout[-3000:]
    FORGOTTEN.append(True)
    assert not any(name.startswith(f"{NEW}-") for name in lb_servers())
    deadline = time.monotonic() + 30  # Prometheus applies its new target list within a few seconds
    while prometheus_targets(NEW) and time.monotonic() < deadline:
        time.sleep(1)
    assert not prometheus_targets(NEW), prometheus_targets(NEW)


def prometheus_targets(host: str) -> list[dict]:
    """Active targets whose instance label names the host (instance is "host" or "host:port")."""
    with urllib.request.urlopen(f"{PROMETHEUS}/api/v1/targets?state=active", timeout=10) as resp:  # noqa: S310
        targets = json.load(resp)["data"]["activeTargets"]
    return [t for t in targets if t["labels"].get("instance", "").split(":")[0] == host]


class Traffic:
    """One client sending GET / through the load balancer until stopped (at most
    `limit` seconds and `max_requests` requests), counting answers that are not 200."""

    def __init__(self, limit: float = 1800, max_requests: int = 200_000) -> None:
        self.ok = 0
        self.failed: list[str] = []
        self.limit, self.max_requests = limit, max_requests
        self._stop = threading.Event()
        self._ctx = ssl.create_default_context(cafile=str(CA))
        self._ctx.check_hostname = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < end and self.ok + len(self.failed) < self.max_requests:
            try:
                with urllib.request.urlopen(f"{LB}/", context=self._ctx, timeout=10) as resp:  # noqa: S310
                    if resp.status == 200:
                        self.ok += 1
                    else:
                        self.failed.append(str(resp.status))
            except (urllib.error.URLError, OSError) as err:
                self.failed.append(repr(err))
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def plus_app3(tmp_path_factory) -> list[Path]:
    """The lab inventory plus app3, and app3's container; removed afterwards."""
    extra = tmp_path_factory.mktemp("inventory") / "app3.yml"
    extra.write_text(json.dumps({"all": {"children": {"lab": {"children": {"app": {"hosts": {
        NEW: {"ansible_host": f"keel-lab-{NEW}", "keel_private_ip": NEW_IP}}}}}}}}))
    inventories = [INVENTORY, extra]
    try:
        created = playbook(str(ROOT / "playbooks" / "lab-create.yml"), inventories=inventories)
        assert created.returncode == 0, created.stdout[-3000:]
        yield inventories
    finally:
        subprocess.run(["docker", "rm", "-f", f"keel-lab-{NEW}"], capture_output=True, timeout=120)
        if not FORGOTTEN:  # the test stopped before its last step: firewall, HAProxy or Prometheus may list app3
            forget_app3()


def test_add_then_remove_an_app_host_without_a_failed_request(plus_app3):
    assert not any(name.startswith(f"{NEW}-") for name in lb_servers())
    with Traffic() as traffic:
        added = playbook(str(ROOT / "playbooks" / "add-node.yml"), "-e", f"keel_new_nodes={NEW}",
                         inventories=plus_app3)
        assert added.returncode == 0, added.stdout[-4000:]
        # the release the serving hosts run (not necessarily the inventory's), and the lock is free again
        assert serving_release(NEW) == serving_release("app1") != "", (serving_release(NEW), serving_release("app1"))
        assert "the new nodes get it, copied from app1" in " ".join(added.stdout.split()), added.stdout[-4000:]
        assert lock_free(), "the lifecycle lock is still held after add-node.yml"
        servers = {name: state for name, state in lb_servers().items() if name.startswith(f"{NEW}-")}
        assert servers and set(servers.values()) == {"UP"}, lb_servers()
        targets = prometheus_targets(NEW)
        assert targets and {t["health"] for t in targets} == {"up"}, targets
        # app3 takes its share of the traffic (round robin over every instance)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            app3_served = sum(stot for name, (_, stot) in lb_stats().items() if name.startswith(f"{NEW}-"))
            if app3_served:
                break
            time.sleep(1)
        assert app3_served > 0, lb_stats()
        served_before_removal = traffic.ok

        removed = playbook(str(ROOT / "playbooks" / "remove-node.yml"), "-e", f"keel_remove_nodes={NEW}",
                           inventories=plus_app3)
        assert removed.returncode == 0, removed.stdout[-4000:]
        assert lock_free(), "the lifecycle lock is still held after remove-node.yml"
        servers = {name: state for name, state in lb_servers().items() if name.startswith(f"{NEW}-")}
        assert servers and set(servers.values()) == {"MAINT"}, lb_servers()
        active = subprocess.run(["docker", "exec", f"keel-lab-{NEW}", "systemctl", "is-active", "keel-app@api-8000"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
        assert active == "inactive"

        subprocess.run(["docker", "rm", "-f", f"keel-lab-{NEW}"], capture_output=True, timeout=120, check=True)
        forget_app3()
        time.sleep(2)
    assert traffic.failed == [], traffic.failed[:10]
    assert served_before_removal > 0 and traffic.ok > served_before_removal
    print(f"\n[lifecycle] {traffic.ok} requests through the load balancer while app3 was added, served "
          f"{app3_served} of them, and was removed and forgotten; {len(traffic.failed)} failed")
