"""The autoscaler's own metrics in Prometheus' text format (no client library: the standard library only)."""

from __future__ import annotations

import math
import threading

BUCKETS = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    def esc(v):
        return (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"'))
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}"


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[tuple, float]] = {}
        self._hist: dict[str, dict[tuple, list[float]]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)
        if kind == "histogram":
            self._hist.setdefault(name, {})
        else:
            self._values.setdefault(name, {})

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = float(value)

    def inc(self, name: str, by: float = 1.0, **labels: str) -> None:
        with self._lock:
            key = tuple(sorted(labels.items()))
            self._values[name][key] = self._values[name].get(key, 0.0) + by

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def observe(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            key = tuple(sorted(labels.items()))
            series = self._hist[name].setdefault(key, [0.0] * (len(BUCKETS) + 2))  # buckets.., +Inf, sum
            for i, b in enumerate(BUCKETS):
                if value <= b:
                    series[i] += 1
            series[len(BUCKETS)] += 1
            series[len(BUCKETS) + 1] += value

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, text) in sorted(self._help.items()):
                lines.append(f"# HELP {name} {text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind == "histogram":
                    for key, s in sorted(self._hist[name].items()):
                        labels = dict(key)
                        for i, b in enumerate(BUCKETS):
                            lines.append(f"{name}_bucket{_labels({**labels, 'le': str(b)})} {_fmt(s[i])}")
                        lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {_fmt(s[len(BUCKETS)])}")
                        lines.append(f"{name}_count{_labels(labels)} {_fmt(s[len(BUCKETS)])}")
                        lines.append(f"{name}_sum{_labels(labels)} {_fmt(s[len(BUCKETS) + 1])}")
                    continue
                suffix = "_total" if kind == "counter" and not name.endswith("_total") else ""
                for key, v in sorted(self._values[name].items()):
                    lines.append(f"{name}{suffix}{_labels(dict(key))} {_fmt(v)}")
        return "\n".join(lines) + "\n"


def autoscaler_registry() -> Registry:
    r = Registry()
    for name, kind, text in (
        ("keel_autoscaler_up", "gauge", "1 while the autoscaler runs."),
        ("keel_autoscaler_current_nodes", "gauge", "App hosts serving now (as Prometheus sees them)."),
        ("keel_autoscaler_desired_nodes", "gauge", "App hosts the last evaluation asked for (after policies)."),
        ("keel_autoscaler_min_nodes", "gauge", "policy.min_nodes."),
        ("keel_autoscaler_max_nodes", "gauge", "policy.max_nodes."),
        ("keel_autoscaler_metric_value", "gauge", "The scaling metric's value per counted node."),
        ("keel_autoscaler_metric_target", "gauge", "The scaling metric's target per node."),
        ("keel_autoscaler_metrics_missing", "gauge", "1 when a scaling metric had no fresh answer."),
        ("keel_autoscaler_decisions_total", "counter", "Evaluations by action and by the gate that stopped it."),
        ("keel_autoscaler_actions_total", "counter", "Scale actions by direction and result."),
        ("keel_autoscaler_action_duration_seconds", "histogram", "Time a scale action took."),
        ("keel_autoscaler_last_action_timestamp_seconds", "gauge", "When the last action of a direction started."),
        ("keel_autoscaler_cooldown_remaining_seconds", "gauge", "Seconds until a scale-in may follow a scale-up."),
        ("keel_autoscaler_backoff_remaining_seconds", "gauge", "Seconds of back-off after a failed action left."),
        ("keel_autoscaler_frozen", "gauge", "1 while scaling is frozen, by reason (operator, state, lifecycle)."),
        ("keel_autoscaler_dry_run", "gauge", "1 in dry-run mode (decides and logs, changes nothing)."),
        ("keel_autoscaler_direction_changes_total", "counter", "Decisions that reversed the last direction."),
        ("keel_autoscaler_spare_nodes", "gauge", "Hosts the provider can still add (-1: unknown)."),
        ("keel_autoscaler_webhook_received_total", "counter", "Alertmanager notifications received."),
        ("keel_autoscaler_webhook_duplicate_total", "counter", "Notifications dropped as duplicates."),
        ("keel_autoscaler_intent_age_seconds", "gauge", "Age of the action under way (0: none)."),
        ("keel_autoscaler_release_mismatch", "gauge", "1 when a scale-out was refused over the fleet's release."),
        ("keel_autoscaler_last_evaluation_timestamp_seconds", "gauge", "When the last evaluation ran."),
    ):
        r.describe(name, kind, text)
    r.set("keel_autoscaler_up", 1)
    for reason in ("operator", "state", "lifecycle"):
        r.set("keel_autoscaler_frozen", 0, reason=reason)
    for direction in ("up", "down"):
        for result in ("success", "failure", "aborted"):
            r.inc("keel_autoscaler_actions_total", 0, direction=direction, result=result)
    r.inc("keel_autoscaler_direction_changes_total", 0)
    r.inc("keel_autoscaler_webhook_received_total", 0)
    r.inc("keel_autoscaler_webhook_duplicate_total", 0)
    r.set("keel_autoscaler_release_mismatch", 0)
    r.set("keel_autoscaler_intent_age_seconds", 0)
    return r
