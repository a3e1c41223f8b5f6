"""The loop: observe (Prometheus), decide (decide.py), act (at most one action at a time), remember.

Every evaluation writes one audit line (decisions.jsonl and the journal). The state (recommendation
history, last actions, back-off, the intent of the action under way) is written atomically after
every change; on start an open intent is reconciled (its job polled, finished or undone) before
any new decision. A state file that cannot be read freezes scaling; it is never reset by itself.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import decide as d
from .actuators import Executor, InventoryWriter, JobFailed, Provider, ProviderError
from .actuators.executors import LOST, RUNNING, SUCCESSFUL
from .actuators.http import ApiError
from .metrics import Registry, autoscaler_registry
from .prom import PromError, Prometheus
from .store import AuditLog, CorruptState, StateStore

RELEASE_MARKER = "keel-release-mismatch"  # add-node.yml says it when the fleet's release is unknown


class Autoscaler:
    def __init__(self, cfg: dict[str, Any], policy: d.Policy, prom: Prometheus, executor: Executor,
                 provider: Provider, inventory: InventoryWriter, clock: Callable[[], float] = time.time,
                 registry: Registry | None = None, log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.policy = policy
        self.prom = prom
        self.executor = executor
        self.provider = provider
        self.inventory = inventory
        self.clock = clock
        self.metrics = registry or autoscaler_registry()
        self.log = log or (lambda line: print(line, file=sys.stdout, flush=True))
        self.mode = cfg["mode"]
        self.owner = cfg.get("lock", {}).get("owner", "keel-autoscaler")
        self.store = StateStore(cfg["state_dir"])
        self.audit = AuditLog(cfg["state_dir"])
        self.state = d.State()
        self.state_error: str | None = None
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        # After a successful action: the nodes Prometheus must show (or no longer show)
        # before the next action may start, and until when to wait for that.
        self._settle: dict[str, Any] | None = None
        self._seen: dict[tuple, float] = {}
        self.last_decision: d.Decision | None = None
        self.last_observation: dict[str, Any] = {}
        self.release_mismatch = False
        self._restored = False
        self.metrics.set("keel_autoscaler_dry_run", 1 if self.mode == "dry-run" else 0)
        self.metrics.set("keel_autoscaler_min_nodes", policy.min_nodes)
        self.metrics.set("keel_autoscaler_max_nodes", policy.max_nodes)
        for m in policy.metrics:
            self.metrics.set("keel_autoscaler_metric_target", m.target, metric=m.name)

    # --- state ----------------------------------------------------------------------------------
    def load_state(self) -> None:
        try:
            self.state = self.store.load()
            self.state_error = None
        except CorruptState as exc:
            self.state_error = str(exc)
            self.log(json.dumps({"event": "state_corrupt", "error": str(exc),
                                 "what_to_do": "inspect the file; move it away to start afresh "
                                               "(cooldowns are then forgotten), then restart"}))

    def save(self) -> None:
        if self.state_error:
            return  # never overwrite a file we could not read: an operator decides
        self.store.save(self.state)

    def set_state(self, state: d.State) -> None:
        with self._lock:
            self.state = state
            self.save()

    # --- observation ----------------------------------------------------------------------------
    def _by_node(self, expr: str) -> dict[str, float]:
        label = self.cfg["prometheus"]["node_label"]
        return {s.labels[label]: s.value for s in self.prom.query(expr) if label in s.labels}

    def observe(self, now: float) -> tuple[d.Observation, dict[str, Any]]:
        pcfg = self.cfg["prometheus"]
        extra: dict[str, Any] = {"errors": []}
        try:
            nodes_up = self._by_node(pcfg["nodes_query"])
        except PromError as exc:
            extra["errors"].append(f"nodes: {exc}")
            nodes_up = {}
        ready: dict[str, float] = {}
        values: dict[str, dict[str, float]] = {}
        ok: dict[str, bool] = {}
        if nodes_up:
            try:
                ready = self._by_node(pcfg["ready_query"])
            except PromError as exc:
                extra["errors"].append(f"ready: {exc}")
            fresh = True
            if pcfg.get("freshness_query"):
                try:
                    ages = [s.value for s in self.prom.query(pcfg["freshness_query"])]
                    fresh = bool(ages) and max(ages) <= pcfg["max_staleness"]
                except PromError as exc:
                    extra["errors"].append(f"freshness: {exc}")
                    fresh = False
            for m in self.policy.metrics:
                try:
                    values[m.name] = self._by_node(m.query)
                    ok[m.name] = fresh and bool(values[m.name])
                except PromError as exc:
                    extra["errors"].append(f"{m.name}: {exc}")
                    ok[m.name] = False
        else:
            ok = {m.name: False for m in self.policy.metrics}
        try:
            managed = self.inventory.managed()
        except (OSError, ValueError, ApiError) as exc:
            extra["errors"].append(f"inventory: {exc}")
            managed = {}
        extra["managed"] = sorted(managed)
        nodes = []
        for name in sorted(nodes_up):
            joined = managed.get(name, {}).get("keel_autoscaler_joined")
            nodes.append(d.Node(name, ready.get(name, 0) >= 1, None if joined is None else max(0.0, now - joined),
                                {m.name: values.get(m.name, {}).get(name) for m in self.policy.metrics}))
        lock_owner, lock_unknown = self.read_lock(extra)
        spare = self.provider.spare(set(nodes_up)) if self.mode != "off" else -1
        extra["spare"] = spare
        self.metrics.set("keel_autoscaler_spare_nodes", spare)
        return d.Observation(tuple(nodes), ok, lock_owner, lock_unknown, spare), extra

    def read_lock(self, extra: dict[str, Any]) -> tuple[str | None, bool]:
        """Another owner holding the lifecycle lock: from the lock file when this host holds it
        (immediate), else from the lock host's metric in Prometheus."""
        lock_file = self.cfg.get("lock", {}).get("file")
        if lock_file and Path(lock_file).parent.exists():
            try:
                rec = json.loads(Path(lock_file).read_text())
            except FileNotFoundError:
                return None, False
            except (OSError, ValueError) as exc:
                extra["errors"].append(f"lock file: {exc}")
                return None, True
            if rec.get("owner") and rec.get("owner") != self.owner and float(rec.get("expires", 0)) > self.clock():
                return f"{rec['owner']} ({rec.get('purpose', '?')})", False
            return None, False
        query = self.cfg["prometheus"].get("lock_query")
        if not query:
            return None, False
        try:
            owners = [s.labels.get("owner", "?") for s in self.prom.query(query) if s.value > 0]
        except PromError as exc:
            extra["errors"].append(f"lock: {exc}")
            return None, True
        others = [o for o in owners if o != self.owner]
        return (", ".join(sorted(others)) if others else None), False

    def busy(self) -> dict[str, float]:
        q = self.cfg["prometheus"].get("busy_query")
        if not q:
            return {}
        try:
            return self._by_node(q)
        except PromError:
            return {}

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, trigger: str = "timer") -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            obs, extra = self.observe(now)
            worker_busy = self._worker is not None and self._worker.is_alive()
            state = self.state
            decision = d.decide(self.policy, state, obs, now, self.mode, self.state_error)
            if worker_busy and decision.gate == "none" and decision.action != "none":
                decision = replace(decision, action="none", gate="in_flight", reason="an action is under way")
            decision = self._settled(decision, obs, now)
            self.state = d.record(self.policy, state, decision, now)
            if self.state.direction_changes != state.direction_changes:
                self.metrics.inc("keel_autoscaler_direction_changes_total")
            entry = {
                "ts": round(now, 3), "event": "evaluation", "trigger": trigger, "mode": self.mode,
                "nodes": [{"name": n.name, "ready": n.ready, "age": n.age, "values": n.values} for n in obs.nodes],
                "metrics_ok": obs.metrics_ok, "lock_owner": obs.lock_owner, "spare": obs.spare_nodes,
                "errors": extra["errors"], **decision.to_dict(), "result": None,
            }
            if decision.gate == "dry_run":
                entry["result"] = f"dry-run: would scale to {decision.desired}"
            started = None
            self.last_observation = entry  # the action's worker reads the serving nodes from it
            if decision.action != "none" and decision.gate == "none":
                started = self.start_action(decision, obs, now)
                entry["result"] = f"started {started['id']}" if started else "not started"
                entry["intent"] = started
            self.save()
            self.last_decision = decision
            self.last_observation = entry
            self._export(decision, obs, now)
        self.audit.write(entry)
        self.log(json.dumps(entry, sort_keys=True, default=str))
        return entry

    def _settled(self, decision: d.Decision, obs: d.Observation, now: float) -> d.Decision:
        """No new action on an observation that does not show the last action's result yet.

        A playbook that ended has changed the inventory, HAProxy and Prometheus, but the next
        evaluation (woken at once) can still read the old node count from Prometheus: acting
        on it would repeat the scale-out (seen in the lab: 2 -> 3, then "2 -> 3" again).
        Waits until the added nodes are seen (the removed ones gone), at most 4 intervals.
        """
        settle = self._settle
        if settle is None:
            return decision
        names = {n.name for n in obs.nodes}
        nodes = set(settle["nodes"])
        shown = nodes <= names if settle["direction"] == d.UP else not nodes & names
        if shown or now >= settle["until"]:
            self._settle = None
            return decision
        if decision.gate == "none" and decision.action != "none":
            return replace(decision, action="none", gate="in_flight",
                           reason="waiting for Prometheus to show the last action's nodes "
                                  f"({', '.join(sorted(nodes))})")
        return decision

    def _export(self, decision: d.Decision, obs: d.Observation, now: float) -> None:
        m = self.metrics
        m.set("keel_autoscaler_current_nodes", decision.current)
        m.set("keel_autoscaler_desired_nodes", max(decision.raw, decision.desired) if decision.gate == "at_max"
              else decision.desired if decision.action != "none" else decision.current)
        for a in decision.metrics:
            if a.value is not None:
                m.set("keel_autoscaler_metric_value", a.value, metric=a.name)
        m.set("keel_autoscaler_metrics_missing", 1 if decision.metrics_missing or not obs.metrics_ok
              or not all(obs.metrics_ok.values()) else 0)
        m.inc("keel_autoscaler_decisions_total", action=decision.action, gate=decision.gate)
        m.set("keel_autoscaler_cooldown_remaining_seconds", decision.cooldown_remaining)
        m.set("keel_autoscaler_backoff_remaining_seconds", decision.backoff_remaining)
        m.set("keel_autoscaler_frozen", 1 if self.state.frozen_reason else 0, reason="operator")
        m.set("keel_autoscaler_frozen", 1 if self.state_error else 0, reason="state")
        m.set("keel_autoscaler_frozen", 1 if (obs.lock_owner or obs.lock_unknown) else 0, reason="lifecycle")
        intent = self.state.intent
        m.set("keel_autoscaler_intent_age_seconds", max(0.0, now - float(intent.get("started", now))) if intent else 0)
        for direction, at in self.state.last_action.items():
            m.set("keel_autoscaler_last_action_timestamp_seconds", at, direction=direction)
        m.set("keel_autoscaler_release_mismatch", 1 if self.release_mismatch else 0)
        m.set("keel_autoscaler_last_evaluation_timestamp_seconds", now)

    # --- actions --------------------------------------------------------------------------------
    def start_action(self, decision: d.Decision, obs: d.Observation, now: float) -> dict[str, Any] | None:
        direction = decision.direction
        if direction is None:
            return None
        intent: dict[str, Any] = {"id": uuid.uuid4().hex[:12], "direction": direction, "phase": "start",
                                  "before": decision.current, "target": decision.desired, "started": now,
                                  "nodes": [], "job": None}
        if direction == d.DOWN:
            victims = self.choose_victims(obs, decision.current - decision.desired, now)
            if not victims:
                return None
            intent["nodes"] = victims
            intent["phase"] = "drain"
        else:
            intent["phase"] = "provision"
        self.state = d.action_started(self.state, direction, intent, now)
        self.save()
        self._spawn(intent)
        return intent

    def choose_victims(self, obs: d.Observation, count: int, now: float) -> list[str]:
        """Only hosts this autoscaler added, never one younger than the grace period: no in-flight
        requests first, then the least busy by HAProxy's current sessions, then the newest."""
        try:
            managed = self.inventory.managed()
        except (OSError, ValueError, ApiError):
            return []
        busy = self.busy()
        names = {n.name for n in obs.nodes}
        pool = [(busy.get(n, 0.0), -float(v.get("keel_autoscaler_joined", 0)), n) for n, v in managed.items()
                if n in names and now - float(v.get("keel_autoscaler_joined", 0)) >= self.policy.new_node_grace]
        return [n for _, _, n in sorted(pool)[:count]]

    def _spawn(self, intent: dict[str, Any]) -> None:
        self._worker = threading.Thread(target=self._run_intent, args=(dict(intent),), daemon=True,
                                        name=f"action-{intent['id']}")
        self._worker.start()

    def _update_intent(self, **changes: Any) -> dict[str, Any]:
        with self._lock:
            intent = {**(self.state.intent or {}), **changes}
            self.state = replace(self.state, intent=intent)
            self.save()
            return intent

    def _job(self, intent: dict[str, Any], job: str, extra_vars: dict[str, Any], timeout: float) -> None:
        """Run one job of the intent; a job already in the journal for this phase is waited on
        (never launched again); a runner job lost with its process is run again (the playbooks are
        idempotent: that finishes the same action, it starts no second one)."""
        handle = intent.get("job") if (intent.get("job") or {}).get("job") == job else None
        if handle is not None and self.executor.poll(handle) == LOST:
            self.log(json.dumps({"event": "job_lost", "intent": intent["id"], "job": handle}))
            handle = None
        if handle is not None and self.executor.poll(handle) == SUCCESSFUL:
            return
        vars_ = {"keel_lifecycle_lock_owner": self.owner, **extra_vars}
        self.executor.run(job, vars_, timeout, on_launch=lambda h: self._update_intent(job=h), handle=handle)

    def _run_intent(self, intent: dict[str, Any]) -> None:
        t0 = self.clock()
        direction = intent["direction"]
        ok = False
        error = ""
        try:
            ok = self._scale_up(intent) if direction == d.UP else self._scale_down(intent)
        except Exception as exc:  # any failure ends the action with a back-off, never a crash
            error = f"{type(exc).__name__}: {exc}"
        if not ok and (self.state.intent or {}).get("job"):
            self._release_lock(intent)
        self._finish(intent, ok, error, t0)

    def _release_lock(self, intent: dict[str, Any]) -> None:
        """A playbook that failed keeps the lifecycle lock for its owner (a half-done change must not
        meet a deploy); the autoscaler has undone what it could, so it frees its own lock: a deploy
        by an operator must not wait for the lock to expire. Another owner's lock is left alone."""
        try:
            self.executor.run("lock", {"keel_lifecycle_lock_state": "released",
                                       "keel_lifecycle_lock_owner": self.owner}, 600, on_launch=lambda h: None)
        except Exception as exc:  # logged: the lock then expires by its TTL
            self.log(json.dumps({"event": "lock_release_failed", "intent": intent.get("id"), "error": str(exc)}))

    def _finish(self, intent: dict[str, Any], ok: bool, error: str, t0: float) -> None:
        now = self.clock()
        with self._lock:
            current = self.state.intent or intent
            after = current.get("after", current["target"] if ok else current["before"])
            self.state = d.action_finished(self.policy, self.state, current["direction"], current["before"],
                                           after, ok, now)
            self.save()
            if ok and current.get("nodes"):
                self._settle = {"direction": current["direction"], "nodes": list(current["nodes"]),
                                "until": now + 4 * self.policy.evaluation_interval}
        result = "success" if ok else ("aborted" if current.get("aborted") else "failure")
        self.metrics.inc("keel_autoscaler_actions_total", direction=current["direction"], result=result)
        self.metrics.observe("keel_autoscaler_action_duration_seconds", now - float(current.get("started", t0)),
                             direction=current["direction"])
        entry = {"ts": round(now, 3), "event": "action", "intent": current, "result": result, "error": error,
                 "backoff_seconds": self.state.backoff_seconds, "duration": round(now - t0, 3)}
        self.audit.write(entry)
        self.log(json.dumps(entry, sort_keys=True, default=str))
        self._wake.set()

    def _scale_up(self, intent: dict[str, Any]) -> bool:
        count = intent["target"] - intent["before"]
        if intent["phase"] == "provision":
            serving = {n["name"] for n in self.last_observation.get("nodes", [])}
            try:
                hosts = self.provider.acquire(count, intent["id"], serving)
            except ProviderError as exc:
                partial = getattr(exc, "partial", [])
                if partial:
                    self.provider.release([h["name"] for h in partial], intent["id"], failed=True)
                raise
            intent = self._update_intent(phase="inventory", nodes=[h["name"] for h in hosts], hosts=hosts)
        if intent["phase"] == "inventory":
            self.inventory.add(intent["hosts"], self.clock())
            intent = self._update_intent(phase="add")
        if intent["phase"] == "add":
            try:
                self._job(intent, "add", {"keel_new_nodes": intent["nodes"]},
                          self.policy.provision_timeout)
            except JobFailed as exc:
                self.release_mismatch = RELEASE_MARKER in exc.output
                intent = self._update_intent(phase="undo", error=str(exc), after=intent["before"])
            else:
                self.release_mismatch = False
                self._update_intent(phase="done", after=intent["target"])
                return True
        if intent["phase"] == "undo":
            # the host leaves the inventory, HAProxy, Prometheus and the firewalls, and is not handed out again
            self.inventory.remove(intent["nodes"])
            intent = self._update_intent(phase="undo-forget")
        if intent["phase"] == "undo-forget":
            self._job(intent, "forget", {}, self.policy.provision_timeout)
            self.provider.release(intent["nodes"], intent["id"], failed=True)
            self._update_intent(phase="undone", after=intent["before"])
        raise JobFailed(intent.get("error", "scale-out failed"))

    def _scale_down(self, intent: dict[str, Any]) -> bool:
        if intent["phase"] == "drain":
            try:
                self._job(intent, "remove", {"keel_remove_nodes": intent["nodes"],
                                             "keel_remove_drain_timeout": int(self.policy.drain_timeout)},
                          self.policy.drain_timeout + self.policy.provision_timeout)
            except JobFailed:
                # remove-node.yml put the servers back in rotation (a drain that timed out): back off
                self._update_intent(after=intent["before"])
                raise
            self.inventory.remove(intent["nodes"])
            intent = self._update_intent(phase="forget")
        if intent["phase"] == "forget":
            self._job(intent, "forget", {}, self.policy.provision_timeout)
            intent = self._update_intent(phase="release")
        if intent["phase"] == "release":
            self.provider.release(intent["nodes"], intent["id"])
            self._update_intent(phase="done", after=intent["target"])
        return True

    def reconcile(self) -> dict[str, Any] | None:
        """On start, before any decision: an intent left by the last run is resumed from its phase
        (a journalled job is polled, not launched again)."""
        intent = self.state.intent
        if intent is None or self.state_error:
            return None
        self.log(json.dumps({"event": "reconcile", "intent": intent}, default=str))
        if intent.get("phase") == "done":
            self._finish(intent, True, "", self.clock())
            return intent
        if intent.get("phase") == "undone":
            self._finish(intent, False, intent.get("error", ""), self.clock())
            return intent
        self._spawn(intent)
        return intent

    # --- triggers and operator commands ---------------------------------------------------------
    def webhook(self, payload: dict[str, Any]) -> bool:
        """An Alertmanager notification: wakes the loop; the same group, alerts and status again
        (an Alertmanager pair, a retried notify) within 10 minutes only counts as a duplicate."""
        self.metrics.inc("keel_autoscaler_webhook_received_total")
        fingerprints = tuple(sorted(str(a.get("fingerprint", "")) for a in payload.get("alerts", [])
                                    if isinstance(a, dict)))
        key = (str(payload.get("groupKey", "")), fingerprints, str(payload.get("status", "")))
        now = self.clock()
        with self._lock:
            self._seen = {k: t for k, t in self._seen.items() if t > now - 600}
            if key in self._seen:
                self.metrics.inc("keel_autoscaler_webhook_duplicate_total")
                return False
            self._seen[key] = now
        self._wake.set()
        return True

    def freeze(self, reason: str) -> None:
        self.set_state(replace(self.state, frozen_reason=reason or "no reason given"))
        self.audit.write({"ts": round(self.clock(), 3), "event": "freeze", "reason": reason})

    def unfreeze(self) -> None:
        self.set_state(replace(self.state, frozen_reason=None))
        self.audit.write({"ts": round(self.clock(), 3), "event": "unfreeze"})

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"mode": self.mode, "state": self.state.to_dict(), "state_error": self.state_error,
                    "last": self.last_observation,
                    "action_running": bool(self._worker and self._worker.is_alive())}

    def export_restored_state(self, now: float) -> None:
        """What the state file says, in /metrics from the start: a restarted autoscaler shows its
        cooldown, back-off and last actions before its first evaluation has answered."""
        m = self.metrics
        m.set("keel_autoscaler_cooldown_remaining_seconds", d.cooldown_remaining(self.policy, self.state, now))
        m.set("keel_autoscaler_backoff_remaining_seconds", max(0.0, self.state.backoff_until - now))
        m.set("keel_autoscaler_frozen", 1 if self.state.frozen_reason else 0, reason="operator")
        m.set("keel_autoscaler_frozen", 1 if self.state_error else 0, reason="state")
        for direction, at in self.state.last_action.items():
            m.set("keel_autoscaler_last_action_timestamp_seconds", at, direction=direction)

    def restore(self) -> None:
        """Read the state file and show it in /metrics (the service does this before it answers)."""
        self.load_state()
        self.export_restored_state(self.clock())
        self._restored = True

    def run(self, stop: threading.Event) -> None:
        if not self._restored:
            self.restore()
        self.reconcile()
        interval = self.policy.evaluation_interval
        trigger = "start"
        while not stop.is_set():
            try:
                self.evaluate(trigger)
            except Exception as exc:
                self.log(json.dumps({"event": "evaluation_error", "error": f"{type(exc).__name__}: {exc}"}))
            woke = self._wake.wait(interval)
            self._wake.clear()
            trigger = "webhook" if woke else "timer"
            with contextlib.suppress(Exception):
                if stop.is_set():
                    break

    def wait_idle(self, timeout: float = 60) -> bool:
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True


_ = RUNNING  # re-exported for tests
