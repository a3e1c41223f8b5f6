"""The loop with a fake clock, a scripted Prometheus and recording actuators: state across restarts,
a corrupt state file, duplicate webhooks, the intent journal, failures and the back-off."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from keel_autoscaler import decide as d
from keel_autoscaler.actuators import FileInventory, JobFailed, ProviderError
from keel_autoscaler.actuators.executors import RUNNING, SUCCESSFUL, Executor
from keel_autoscaler.config import DEFAULTS, _merge, policy_from
from keel_autoscaler.loop import Autoscaler
from keel_autoscaler.prom import PromError, Sample

TARGET = 100.0


class Clock:
    def __init__(self, t: float = 100_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeProm:
    """Per-host request rates; every host is up and ready unless told otherwise."""

    def __init__(self) -> None:
        self.rates: dict[str, float] = {}
        self.down = False
        self.not_ready: set[str] = set()
        self.lock_owner: str | None = None
        self.queries: list[str] = []

    def query(self, expr: str) -> list[Sample]:
        self.queries.append(expr)
        if self.down:
            raise PromError("connection refused")
        if "keel_lifecycle_lock_held" in expr:
            return [Sample({"owner": self.lock_owner}, 1, 0)] if self.lock_owner else []
        if "keel_app_ready" in expr:
            return [Sample({"host": h}, 0 if h in self.not_ready else 1, 0) for h in self.rates]
        if "up{" in expr:
            return [Sample({"host": h}, 1, 0) for h in self.rates]
        if "haproxy_server_current_sessions" in expr:
            return [Sample({"host": h}, 0, 0) for h in self.rates]
        return [Sample({"host": h}, v, 0) for h, v in self.rates.items()]


class FakeExecutor(Executor):
    kind = "fake"

    def __init__(self) -> None:
        self.launched: list[tuple[str, dict[str, Any]]] = []
        self.outcome: dict[str, str] = {}
        self.status: dict[str, str] = {}
        self.gate = threading.Event()
        self.gate.set()

    def launch(self, job: str, extra_vars: dict[str, Any]) -> dict[str, Any]:
        self.launched.append((job, extra_vars))
        jid = f"{job}-{len(self.launched)}"
        self.status[jid] = RUNNING
        return {"executor": "fake", "id": jid, "job": job}

    def poll(self, handle: dict[str, Any]) -> str:
        if self.status.get(handle["id"]) == RUNNING and self.gate.is_set():
            self.status[handle["id"]] = self.outcome.get(handle["job"], SUCCESSFUL)
        return self.status.get(handle["id"], "lost")

    def wait(self, handle, timeout, interval=0.01, sleep=None, clock=None):
        import time
        deadline = time.monotonic() + 10
        while self.poll(handle) == RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.poll(handle)


class FakeProvider:
    def __init__(self, spares: list[str]) -> None:
        self.spares = list(spares)
        self.released: list[tuple[list[str], bool]] = []
        self.fail = False

    def acquire(self, count, request_id, exclude):
        if self.fail:
            raise ProviderError("provision exited 1")
        free = [s for s in self.spares if s not in exclude][:count]
        if len(free) < count:
            raise ProviderError("pool empty")
        return [{"name": n} for n in free]

    def release(self, names, request_id, failed=False):
        self.released.append((list(names), failed))

    def spare(self, serving):
        return len([s for s in self.spares if s not in serving])


def config(tmp_path: Path, mode: str = "act") -> dict[str, Any]:
    cfg = _merge(DEFAULTS, {
        "mode": mode, "state_dir": str(tmp_path / "state"), "token_file": str(tmp_path / "token"),
        "policy": {"metrics": [{"name": "requests_per_node", "target": TARGET, "query": "rate_query"}]},
        "executor": {"type": "runner", "project_dir": str(tmp_path), "inventory": [str(tmp_path)]},
        "inventory": {"type": "file", "path": str(tmp_path / "inv" / "autoscaler.yml"), "group": "app"},
    })
    return cfg


@pytest.fixture
def rig(tmp_path):
    def make(mode="act", clock=None, prom=None, executor=None, provider=None):
        cfg = config(tmp_path, mode)
        clock = clock or Clock()
        prom = prom or FakeProm()
        executor = executor or FakeExecutor()
        provider = provider or FakeProvider(["app3", "app4"])
        scaler = Autoscaler(cfg, policy_from(cfg), prom, executor, provider, FileInventory(cfg["inventory"]),
                            clock=clock, log=lambda line: None)
        scaler.load_state()
        return scaler, clock, prom, executor, provider
    return make


def serve_load(prom: FakeProm, total: float, hosts: list[str]) -> None:
    prom.rates = {h: total / len(hosts) for h in hosts}


def test_scale_out_adds_two_spares_in_one_job(rig):
    scaler, _clock, prom, ex, _prov = rig()
    serve_load(prom, 400, ["app1", "app2"])
    entry = scaler.evaluate()
    assert entry["action"] == "scale_up" and entry["desired"] == 4
    assert scaler.wait_idle(10)
    expected = {"keel_lifecycle_lock_owner": "keel-autoscaler", "keel_new_nodes": ["app3", "app4"]}
    assert ex.launched == [("add", expected)]
    assert sorted(scaler.inventory.managed()) == ["app3", "app4"]
    assert scaler.state.intent is None and scaler.state.events[-1].after == 4
    assert scaler.metrics.get("keel_autoscaler_actions_total", direction="up", result="success") == 1


def test_no_second_scale_out_until_prometheus_shows_the_first(rig):
    """Seen in the lab: the evaluation woken by the end of 2 -> 3 still read 2 nodes and added a 4th
    as "2 -> 3". The next action waits until the added node is seen (at most 4 intervals)."""
    scaler, clock, prom, ex, _prov = rig()
    serve_load(prom, 300, ["app1", "app2"])  # 150 per node against 100: 3 nodes
    assert scaler.evaluate()["desired"] == 3
    assert scaler.wait_idle(10)
    clock.t += 5  # the evaluation woken by the end of the action (+2 per period allows one more)
    serve_load(prom, 400, ["app1", "app2"])  # Prometheus does not show app3 yet
    held = scaler.evaluate()
    assert (held["action"], held["gate"]) == ("none", "in_flight") and "app3" in held["reason"], held
    # now it does (young app3 counts as 0 load on scale-up: 200 + 200 + 0 over 3 nodes): one more action
    serve_load(prom, 600, ["app1", "app2", "app3"])
    entry = scaler.evaluate()
    assert (entry["action"], entry["current"], entry["desired"]) == ("scale_up", 3, 4), entry
    assert scaler.wait_idle(10)
    assert [v["keel_new_nodes"] for _, v in ex.launched if "keel_new_nodes" in v] == [["app3"], ["app4"]]


def test_an_action_that_is_never_seen_holds_the_next_one_at_most_four_intervals(rig):
    scaler, clock, prom, _ex, _prov = rig()
    serve_load(prom, 300, ["app1", "app2"])
    scaler.evaluate()
    assert scaler.wait_idle(10)
    clock.t += 5
    serve_load(prom, 400, ["app1", "app2"])
    assert scaler.evaluate()["gate"] == "in_flight"
    clock.t += 4 * scaler.policy.evaluation_interval
    assert scaler.evaluate()["action"] == "scale_up"


def test_restart_keeps_the_cooldown(rig):
    scaler, clock, prom, _ex, _ = rig()
    serve_load(prom, 400, ["app1", "app2"])
    scaler.evaluate()
    scaler.wait_idle(10)
    started = scaler.state.last_action[d.UP]
    # "kill -9" 10 s later: a new process reads the same state directory
    clock.t += 10
    again, _, _, ex2, _ = rig(clock=clock, prom=prom)
    assert again.state.last_action[d.UP] == started
    # before its first evaluation, the restarted process already shows the cooldown it restored
    again.restore()
    assert again.metrics.get("keel_autoscaler_cooldown_remaining_seconds") == pytest.approx(600 - 10)
    assert again.metrics.get("keel_autoscaler_last_action_timestamp_seconds", direction="up") == started
    serve_load(prom, 100, ["app1", "app2", "app3", "app4"])
    clock.t += 200
    entry = again.evaluate()
    assert entry["action"] == "none" and entry["gate"] in ("cooldown", "stabilization")
    assert entry["cooldown_remaining"] == pytest.approx(600 - 210)
    assert again.metrics.get("keel_autoscaler_cooldown_remaining_seconds") == pytest.approx(390)
    assert ex2.launched == []


def test_corrupt_state_freezes_and_is_not_overwritten(rig, tmp_path):
    state = tmp_path / "state" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"version": 1, "state": {"last_direction": ')
    scaler, _, prom, ex, _ = rig()
    serve_load(prom, 400, ["app1", "app2"])
    entry = scaler.evaluate()
    assert entry["gate"] == "frozen" and "state unreadable" in entry["reason"]
    assert scaler.metrics.get("keel_autoscaler_frozen", reason="state") == 1
    assert ex.launched == []
    assert state.read_text() == '{"version": 1, "state": {"last_direction": '


def test_duplicate_webhooks_wake_once(rig):
    scaler, *_ = rig()
    note = {"groupKey": "{}:{alertname=\"KeelAppHighLoad\"}", "status": "firing",
            "alerts": [{"fingerprint": "abc"}, {"fingerprint": "def"}]}
    assert scaler.webhook(note) is True
    assert scaler._wake.is_set()
    scaler._wake.clear()
    assert scaler.webhook(dict(note, alerts=list(reversed(note["alerts"])))) is False  # the HA peer's copy
    assert not scaler._wake.is_set()
    assert scaler.webhook(dict(note, status="resolved")) is True
    assert scaler.metrics.get("keel_autoscaler_webhook_received_total") == 3
    assert scaler.metrics.get("keel_autoscaler_webhook_duplicate_total") == 1


def test_duplicate_webhooks_give_one_evaluation(rig):
    scaler, _clock, prom, _, _ = rig(mode="dry-run")
    serve_load(prom, 200, ["app1", "app2"])
    evaluations = []
    orig = scaler.evaluate
    scaler.evaluate = lambda trigger="timer": evaluations.append(trigger) or orig(trigger)
    stop = threading.Event()
    scaler.policy = d.Policy(**{**scaler.policy.__dict__, "evaluation_interval": 30})
    t = threading.Thread(target=scaler.run, args=(stop,))
    t.start()
    import time
    time.sleep(0.3)
    note = {"groupKey": "g", "status": "firing", "alerts": [{"fingerprint": "a"}]}
    scaler.webhook(note)
    scaler.webhook(note)
    time.sleep(0.5)
    stop.set()
    scaler._wake.set()
    t.join(5)
    assert evaluations[:2] == ["start", "webhook"] and evaluations.count("webhook") <= 2
    assert len(evaluations) <= 3


def test_lifecycle_lock_freezes_scaling(rig):
    scaler, _, prom, ex, _ = rig()
    serve_load(prom, 400, ["app1", "app2"])
    prom.lock_owner = "alice@ctl"
    entry = scaler.evaluate()
    assert entry["gate"] == "lifecycle" and ex.launched == []
    assert scaler.metrics.get("keel_autoscaler_frozen", reason="lifecycle") == 1
    prom.lock_owner = "keel-autoscaler"  # its own lock (an action's playbook) is no freeze
    assert scaler.evaluate()["gate"] == "none"


def test_prometheus_down_no_scale_in_and_metrics_missing(rig):
    scaler, clock, prom, ex, _ = rig()
    scaler.inventory.add([{"name": "app3"}], clock.t - 10_000)
    serve_load(prom, 10, ["app1", "app2", "app3"])
    prom.down = True
    entry = scaler.evaluate()
    assert entry["action"] == "none" and entry["gate"] == "metrics_missing"
    assert scaler.metrics.get("keel_autoscaler_metrics_missing") == 1 and ex.launched == []


def test_dry_run_logs_scale_to_4_and_changes_nothing(rig, tmp_path):
    scaler, _, prom, ex, _ = rig(mode="dry-run")
    serve_load(prom, 400, ["app1", "app2"])
    entry = scaler.evaluate()
    assert entry["result"] == "dry-run: would scale to 4" and entry["gate"] == "dry_run"
    assert ex.launched == [] and scaler.inventory.managed() == {}
    line = json.loads((tmp_path / "state" / "decisions.jsonl").read_text().splitlines()[-1])
    assert line["desired"] == 4 and line["reason"] == "scale to 4"


def test_provider_failure_backs_off_and_changes_nothing(rig):
    scaler, clock, prom, ex, prov = rig()
    prov.fail = True
    serve_load(prom, 400, ["app1", "app2"])
    scaler.evaluate()
    scaler.wait_idle(10)
    assert ex.launched == [] and scaler.inventory.managed() == {}
    assert scaler.state.backoff_seconds == 180
    assert scaler.metrics.get("keel_autoscaler_actions_total", direction="up", result="failure") == 1
    clock.t += 100
    assert scaler.evaluate()["gate"] == "backoff"
    clock.t += 100
    prov.fail = False
    assert scaler.evaluate()["action"] == "scale_up"


def test_new_host_never_ready_is_undone(rig):
    scaler, clock, prom, ex, prov = rig()
    ex.outcome["add"] = "failed"
    serve_load(prom, 400, ["app1", "app2"])
    scaler.evaluate()
    scaler.wait_idle(10)
    # add-node failed, the forget job took the host out, then the autoscaler freed its own lock
    assert [j for j, _ in ex.launched] == ["add", "forget", "lock"]
    released = {"keel_lifecycle_lock_state": "released", "keel_lifecycle_lock_owner": "keel-autoscaler"}
    assert ex.launched[-1][1] == released
    assert scaler.inventory.managed() == {}
    assert prov.released == [(["app3", "app4"], True)]
    assert scaler.state.intent is None and scaler.state.backoff_seconds == 180
    assert scaler.state.last_action[d.UP] == clock.t


def test_killed_during_an_action_resumes_without_a_second_launch(rig):
    scaler, clock, prom, ex, _ = rig()
    ex.gate.clear()  # the add job keeps running
    serve_load(prom, 400, ["app1", "app2"])
    scaler.evaluate()
    import time
    for _ in range(500):  # until the journal on disk names the job
        with contextlib.suppress(Exception):
            if (scaler.store.load().intent or {}).get("job"):
                break
        time.sleep(0.01)
    journal = scaler.state.intent
    assert journal["phase"] == "add" and journal["job"]["id"] == "add-1"
    # a new process with the same state and the same (still running) job
    again, _, _, _, _ = rig(clock=clock, prom=prom, executor=ex)
    assert again.state.intent["job"]["id"] == "add-1"
    again.reconcile()
    assert again.evaluate()["gate"] == "in_flight"
    ex.gate.set()
    assert again.wait_idle(10)
    assert [j for j, _ in ex.launched] == ["add"]  # polled, never launched again
    assert again.state.intent is None and again.state.events[-1].after == 4


def test_scale_in_picks_the_least_busy_managed_host_and_forgets_it(rig):
    scaler, clock, prom, ex, prov = rig()
    scaler.inventory.add([{"name": "app3"}, {"name": "app4"}], clock.t - 5000)
    serve_load(prom, 100, ["app1", "app2", "app3", "app4"])
    entry = scaler.evaluate()
    assert entry["action"] == "scale_down" and entry["desired"] == 3
    scaler.wait_idle(10)
    assert [j for j, _ in ex.launched] == ["remove", "forget"]
    removed = ex.launched[0][1]["keel_remove_nodes"]
    assert len(removed) == 1 and removed[0] in ("app3", "app4")
    assert removed[0] not in scaler.inventory.managed()
    assert prov.released == [(removed, False)]


def test_drain_timeout_keeps_the_host_and_backs_off(rig):
    scaler, clock, prom, ex, prov = rig()
    ex.outcome["remove"] = "failed"
    scaler.inventory.add([{"name": "app3"}], clock.t - 5000)
    serve_load(prom, 30, ["app1", "app2", "app3"])
    scaler.evaluate()
    scaler.wait_idle(10)
    assert "app3" in scaler.inventory.managed() and prov.released == []
    assert scaler.state.backoff_seconds == 180
    assert scaler.metrics.get("keel_autoscaler_actions_total", direction="down", result="failure") == 1


def test_never_removes_a_host_it_did_not_add_or_a_young_one(rig):
    scaler, clock, prom, ex, _ = rig()
    scaler.inventory.add([{"name": "app3"}], clock.t - 30)  # 30 s old: inside the grace period
    serve_load(prom, 30, ["app1", "app2", "app3"])
    entry = scaler.evaluate()
    assert entry["result"] == "not started" and ex.launched == []


def test_audit_line_has_inputs_results_and_gate(rig, tmp_path):
    scaler, _, prom, _, _ = rig(mode="dry-run")
    serve_load(prom, 150, ["app1", "app2"])
    scaler.evaluate()
    line = json.loads((tmp_path / "state" / "decisions.jsonl").read_text().splitlines()[-1])
    for key in ("ts", "trigger", "nodes", "metrics", "raw", "stabilized", "desired", "gate", "action", "result"):
        assert key in line
    assert line["metrics"][0]["value"] == 75.0 and line["raw"] == 2


def test_metrics_text_has_every_series(rig):
    scaler, _, prom, _, _ = rig()
    serve_load(prom, 150, ["app1", "app2"])
    scaler.evaluate()
    text = scaler.metrics.render()
    for name in ("keel_autoscaler_up 1", "keel_autoscaler_current_nodes 2", "keel_autoscaler_desired_nodes",
                 "keel_autoscaler_min_nodes 2", "keel_autoscaler_max_nodes 4",
                 'keel_autoscaler_metric_value{metric="requests_per_node"} 75',
                 'keel_autoscaler_metric_target{metric="requests_per_node"} 100',
                 "keel_autoscaler_decisions_total{", "keel_autoscaler_actions_total{",
                 "keel_autoscaler_cooldown_remaining_seconds", 'keel_autoscaler_frozen{reason="operator"} 0',
                 "keel_autoscaler_dry_run 0", "keel_autoscaler_direction_changes_total 0",
                 "keel_autoscaler_spare_nodes 2", "keel_autoscaler_webhook_received_total 0",
                 "keel_autoscaler_webhook_duplicate_total 0", "keel_autoscaler_intent_age_seconds 0",
                 "keel_autoscaler_release_mismatch 0", "keel_autoscaler_metrics_missing 0"):
        assert name in text, name


def test_freeze_and_unfreeze_survive_a_restart(rig):
    scaler, clock, prom, _ex, _ = rig()
    scaler.freeze("incident 42")
    again, *_ = rig(clock=clock, prom=prom)
    serve_load(prom, 400, ["app1", "app2"])
    assert again.evaluate()["gate"] == "frozen"
    again.unfreeze()
    assert again.evaluate()["gate"] == "none"


def test_job_failed_carries_release_mismatch(rig):
    class Refusing(FakeExecutor):
        def run(self, job, extra_vars, timeout, on_launch, handle=None):
            self.launched.append((job, extra_vars))
            if job == "add":
                raise JobFailed("add failed", {}, "... keel-release-mismatch: app1 runs 1.0.0, app2 runs 1.1.0")
            return {}
    scaler, _, prom, _ex, _ = rig(executor=Refusing())
    serve_load(prom, 400, ["app1", "app2"])
    scaler.evaluate()
    scaler.wait_idle(10)
    scaler.evaluate()
    assert scaler.metrics.get("keel_autoscaler_release_mismatch") == 1
