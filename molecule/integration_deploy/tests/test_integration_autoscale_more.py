"""The autoscaler's other lab cases, on request (scripts/test.sh --part autoscale): dry-run, a
restart during and after an action, a provider that fails, a new host that never becomes ready,
a deploy under a load that asks for more hosts, Prometheus stopped. Every case counts failed
requests through the load balancer and must see none.

They run after test_integration_autoscale.py (file order) on the same converged scenario, only
with KEEL_AUTOSCALE_LAB=full (the deploy tests are then skipped).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
sys.path.insert(0, str(PROJECT / "molecule" / "resources"))
from autoscale_lab import TARGET, Running, prometheus_query, wait_until  # noqa: E402
from test_integration_autoscale import agree, lab, load, serving_hosts  # noqa: E402
from test_integration_deploy import PROMETHEUS, build_release, current, playbook, record, sh  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("KEEL_AUTOSCALE_LAB") != "full",
                                reason="on request: scripts/test.sh --part autoscale")


def scaled_back(scaler: Running, timeout: float = 900) -> None:
    def done() -> bool:
        overlay = scaler.lab.overlay.read_text() if scaler.lab.overlay.exists() else ""
        return (serving_hosts() == {"app1", "app2"} and "app3" not in overlay and "app4" not in overlay
                and scaler.metric("keel_autoscaler_intent_age_seconds") == 0)
    wait_until(done, timeout, 5, what=f"back to app1 + app2; autoscaler: {scaler.tail()}")


def jobs(scaler: Running, kind: str) -> list[Path]:
    root = Path(scaler.cfg["state_dir"]) / "jobs"
    return sorted(p for p in root.glob(f"{kind}-*")) if root.exists() else []


def test_dry_run_logs_scale_to_4_and_changes_nothing():
    lab_ = lab()
    before = agree(lab_)
    scaler = Running(lab_, {**lab_.config("dry-run"), "state_dir": str(lab_.workdir / "dry")}, "dry").start()
    try:
        with load(4 * TARGET) as loop:
            wait_until(lambda: any(e.get("result") == "dry-run: would scale to 4" for e in scaler.audit()), 120,
                       what="a dry-run decision to scale to 4")
            time.sleep(10)
    finally:
        scaler.stop()
    assert loop.failed == [], loop.summary()
    assert scaler.actions() == [] and jobs(scaler, "add") == []
    assert agree(lab_) == before and serving_hosts() == {"app1", "app2"}
    record("autoscale dry-run: the ramp to 4 x target logged 'dry-run: would scale to 4', nothing changed")


def test_restart_during_and_after_a_scale_out():
    lab_ = lab()
    cfg = {**lab_.config("act"), "state_dir": str(lab_.workdir / "restart")}
    scaler = Running(lab_, cfg, "restart").start()
    loops = []
    try:
        high = load(4 * TARGET)
        high.start()
        loops.append(high)
        # killed while add-node runs: the job (its own session) goes on
        wait_until(lambda: jobs(scaler, "add"), 120, 1, what="the add-node job to start")
        state = json.loads((Path(cfg["state_dir"]) / "state.json").read_text())["state"]
        started = state["last_action"]["up"]
        scaler.kill(signal.SIGKILL)
        time.sleep(3)
        scaler = Running(lab_, cfg, "restart").start()
        wait_until(lambda: serving_hosts() == {"app1", "app2", "app3", "app4"}, 900, 3,
                   what=f"the resumed scale-out; autoscaler: {scaler.tail()}")
        wait_until(lambda: scaler.metric("keel_autoscaler_intent_age_seconds") == 0, 120, 2, what="the intent to close")
        assert len(jobs(scaler, "add")) == 1, jobs(scaler, "add")  # resumed, never launched twice
        # killed again right after the scale-out, load dropped: no scale-in before the delay from `started`
        scaler.kill(signal.SIGKILL)
        low = load(1.5 * TARGET)
        low.start()
        loops.append(low)
        high.stop()
        scaler = Running(lab_, cfg, "restart").start()
        assert scaler.metric("keel_autoscaler_cooldown_remaining_seconds") is not None
        delay = cfg["policy"]["delay_after_scale_up"]
        wait_until(lambda: jobs(scaler, "remove"), 900, 2, what="the first scale-in")
        first_remove = min(p.stat().st_mtime for p in jobs(scaler, "remove"))
        assert first_remove >= started + delay, (first_remove - started, delay)
        scaled_back(scaler)
    finally:
        for loop in loops:
            loop.stop()
        scaler.stop()
    failed = [o for loop in loops for o in loop.failed]
    assert failed == [], [loop.summary() for loop in loops]
    record(f"autoscale restart: killed during add-node, resumed with 1 job; first scale-in "
           f"{first_remove - started:.0f} s after the original scale-out (delay {delay} s); 0 failed")


def provider_program(path: Path, body: str) -> list[str]:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return [str(path)]


def test_provider_failure_changes_nothing_and_backs_off():
    lab_ = lab()
    argv = provider_program(lab_.workdir / "failing-provider", 'echo "no capacity in zone b" >&2; exit 1\n')
    cfg = {**lab_.config("act"), "state_dir": str(lab_.workdir / "provider"),
           "provider": {"type": "command", "argv": argv}}
    before = agree(lab_)
    scaler = Running(lab_, cfg, "provider").start()
    try:
        with load(4 * TARGET) as loop:
            wait_until(lambda: scaler.actions(), 120, 2, what="the failed action")
            time.sleep(20)
            gates = [e["gate"] for e in scaler.audit() if e.get("event") == "evaluation"][-3:]
    finally:
        scaler.stop()
    assert [a["result"] for a in scaler.actions()] == ["failure"], scaler.actions()
    assert "no capacity" in scaler.actions()[0]["error"]
    assert gates and set(gates) == {"backoff"}, gates
    assert jobs(scaler, "add") == [] and agree(lab_) == before
    assert loop.failed == [], loop.summary()


def test_new_host_that_never_becomes_ready_is_undone():
    lab_ = lab()
    # app3 will never report ready: its instances get the fault switch through a unit drop-in
    sh("app3", "mkdir -p /etc/systemd/system/keel-app@.service.d && printf '[Service]\\n"
               "Environment=KEEL_APP_FAIL_READINESS=1\\n' > /etc/systemd/system/keel-app@.service.d/zz-fault.conf"
               " && systemctl daemon-reload")
    cfg = {**lab_.config("act", max_nodes=3), "state_dir": str(lab_.workdir / "never-ready")}
    scaler = Running(lab_, cfg, "never-ready").start()
    try:
        with load(3 * TARGET) as loop:
            wait_until(lambda: scaler.actions(), 900, 5, what=f"the failed scale-out; {scaler.tail()}")
            gates = wait_until(lambda: [e["gate"] for e in scaler.audit()
                                        if e.get("event") == "evaluation"][-1:] == ["backoff"], 60, 2,
                               what="the back-off")
    finally:
        scaler.stop()
        sh("app3", "rm -f /etc/systemd/system/keel-app@.service.d/zz-fault.conf; systemctl daemon-reload;"
                   " systemctl stop 'keel-app@*' || true", check=False)
    assert gates
    action = scaler.actions()[0]
    assert action["result"] == "failure" and action["intent"]["phase"] == "undone", action
    inventory, haproxy, prometheus = agree(lab_)
    assert inventory == haproxy == prometheus == {"app1", "app2"}, (inventory, haproxy, prometheus)
    assert loop.failed == [], loop.summary()
    record("autoscale never-ready host: add-node failed its readiness gate, the host left inventory, HAProxy and "
           f"Prometheus, back-off {cfg['policy']['backoff_initial']} s; 0 failed requests")


def test_deploy_freezes_the_autoscaler_and_the_new_host_gets_the_deployed_release():
    lab_ = lab()
    cfg = {**lab_.config("act", max_nodes=3), "state_dir": str(lab_.workdir / "deploy")}
    path, sha256 = build_release("1.0.2")
    scaler = Running(lab_, cfg, "deploy").start()
    outcome: dict = {}

    def run_deploy() -> None:
        outcome["result"] = playbook("deploy.yml", "-e", "app_release_version=1.0.2", "-e",
                                     f"app_release_file={path}", "-e", f"app_release_sha256={sha256}")
        outcome["at"] = time.time()

    deployer = threading.Thread(target=run_deploy)
    try:
        deployer.start()
        # the load that asks for a third host starts once the deploy holds the lock
        wait_until(lambda: prometheus_query(PROMETHEUS, "max(keel_lifecycle_lock_held) > 0"), 300, 2,
                   what="the deploy's lifecycle lock")
        with load(3 * TARGET) as loop:
            deployer.join(1200)
            assert outcome["result"].returncode == 0
            deployed_at = outcome["at"]
            wait_until(lambda: "app3" in serving_hosts(), 900, 3,
                       what=f"the scale-out after the deploy; {scaler.tail()}")
            # HAProxy sends to app3 before add-node.yml ends (it still waits for Prometheus): the
            # action is in the audit once it has closed
            wait_until(lambda: any(a["intent"]["direction"] == "up" for a in scaler.actions())
                       and scaler.metric("keel_autoscaler_intent_age_seconds") == 0, 300, 2,
                       what=f"the scale-out to close; {scaler.tail()}")
    finally:
        scaler.stop()
    evaluations = [e for e in scaler.audit() if e.get("event") == "evaluation"]
    during = [e for e in evaluations if e["ts"] < deployed_at - 5 and e["gate"] == "lifecycle"]
    assert during, "the autoscaler never saw the deploy's lock"
    ups = [a for a in scaler.actions() if a["intent"]["direction"] == "up"]
    assert ups and all(a["intent"]["started"] >= deployed_at - 15 for a in ups), ups
    assert current("app3") == "1.0.2"
    assert loop.failed == [], loop.summary()


def test_prometheus_stopped_no_scale_in():
    lab_ = lab()
    cfg = {**lab_.config("act"), "state_dir": str(lab_.workdir / "deploy")}  # app3 from the last case
    scaler = Running(lab_, cfg, "outage").start()
    try:
        with load(1 * TARGET) as loop:
            sh("obs1", "systemctl stop prometheus")
            stopped = time.time()
            time.sleep(60)
            sh("obs1", "systemctl start prometheus")
            missing = scaler.metric("keel_autoscaler_metrics_missing")
            during = [e for e in scaler.audit()
                      if e.get("event") == "evaluation" and stopped + 5 < e["ts"] < stopped + 55]
            scaled_back(scaler)
    finally:
        scaler.stop()
    assert during and all(e["action"] == "none" and e["gate"] == "metrics_missing" for e in during), during[-3:]
    assert missing == 1
    assert loop.failed == [], loop.summary()
    assert prometheus_query(PROMETHEUS, "up")  # Prometheus is back
