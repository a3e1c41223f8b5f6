"""The decision: pure functions ``(policy, state, observation, now) -> Decision``, no I/O.

The rules are Kubernetes' HorizontalPodAutoscaler's, applied to hosts:

1. per metric, ``raw = ceil(serving * metric / target)``, no change while
   ``|metric / target - 1|`` is within the tolerance of that direction;
   a node that is not ready or younger than ``new_node_grace`` counts as 0 load
   when the answer is a scale-up; a node without a value (or a metric without a fresh
   answer) never lets the answer be a scale-in. Several metrics: the largest answer.
2. stabilised: the lowest recommendation of the scale-up window, the highest of the
   scale-down window (KEP-853);
3. limited by the rate policies of the direction (nodes or percent per period, the
   policy that allows the largest change with ``select: max``), then by min/max;
4. gated: mode, freeze, lifecycle lock, an action in flight, the delay after a
   scale-up, the back-off after a failure, missing metrics, the release check.

``State`` is the part of the autoscaler's memory that decisions read; ``record``
returns the state after an evaluation (pure as well). The loop persists it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

EPSILON = 1e-9  # float noise: 1.1 / 1.0 - 1 is 0.10000000000000009

UP = "up"
DOWN = "down"


@dataclass(frozen=True)
class RatePolicy:
    type: str  # "nodes" | "percent"
    value: float
    period: float  # seconds


@dataclass(frozen=True)
class DirectionRules:
    stabilization_window: float
    policies: tuple[RatePolicy, ...]
    select: str = "max"  # "max": the policy allowing the largest change; "min": the smallest; "disabled"
    tolerance: float = 0.1


@dataclass(frozen=True)
class MetricSpec:
    name: str
    target: float
    query: str = ""


@dataclass(frozen=True)
class Policy:
    min_nodes: int
    max_nodes: int
    metrics: tuple[MetricSpec, ...]
    up: DirectionRules
    down: DirectionRules
    delay_after_scale_up: float = 600
    backoff_initial: float = 180
    backoff_max: float = 1800
    new_node_grace: float = 120
    provision_timeout: float = 900
    drain_timeout: float = 120
    evaluation_interval: float = 15

    @property
    def history_seconds(self) -> float:
        """How far back the state must remember recommendations and scale events."""
        periods = [p.period for p in self.up.policies + self.down.policies]
        return max([self.up.stabilization_window, self.down.stabilization_window, *periods, 0])


def default_policy(target: float = 100.0) -> Policy:
    """The role's defaults (roles/autoscaler/defaults/main.yml), for tests and examples."""
    return Policy(
        min_nodes=2, max_nodes=4,
        metrics=(MetricSpec("requests_per_node", target),),
        up=DirectionRules(0, (RatePolicy("nodes", 2, 300), RatePolicy("percent", 100, 300)), "max", 0.1),
        down=DirectionRules(300, (RatePolicy("nodes", 1, 300),), "min", 0.1),
    )


@dataclass(frozen=True)
class Node:
    name: str
    ready: bool = True
    age: float | None = None  # seconds since the node joined; None: long ago (not added by the autoscaler)
    values: dict[str, float | None] = field(default_factory=dict)  # metric name -> this node's value


@dataclass(frozen=True)
class Observation:
    nodes: tuple[Node, ...]
    metrics_ok: dict[str, bool] = field(default_factory=dict)  # metric name -> the query answered, fresh
    lock_owner: str | None = None  # another owner holds the lifecycle lock
    lock_unknown: bool = False  # the lock could not be read
    spare_nodes: int | None = None

    @property
    def current(self) -> int:
        return len(self.nodes)


@dataclass(frozen=True)
class ScaleEvent:
    at: float
    direction: str
    before: int
    after: int


@dataclass(frozen=True)
class State:
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, raw recommendation)
    events: tuple[ScaleEvent, ...] = ()  # scale actions that completed (or were decided, in dry-run)
    last_action: dict[str, float] = field(default_factory=dict)  # direction -> time it started
    last_direction: str | None = None
    direction_changes: tuple[float, ...] = ()
    backoff_seconds: float = 0.0
    backoff_until: float = 0.0
    frozen_reason: str | None = None  # an operator's freeze
    intent: dict[str, Any] | None = None  # the action under way (the loop's journal)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommendations": [list(r) for r in self.recommendations],
            "events": [e.__dict__ for e in self.events],
            "last_action": dict(self.last_action),
            "last_direction": self.last_direction,
            "direction_changes": list(self.direction_changes),
            "backoff_seconds": self.backoff_seconds,
            "backoff_until": self.backoff_until,
            "frozen_reason": self.frozen_reason,
            "intent": self.intent,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        """Strict: a field of the wrong shape raises (ValueError/TypeError/KeyError), never a silent reset."""
        if not isinstance(data, dict):
            raise TypeError("state must be an object")
        last_direction = data.get("last_direction")
        if last_direction not in (None, UP, DOWN):
            raise ValueError(f"bad last_direction {last_direction!r}")
        intent = data.get("intent")
        if intent is not None and not isinstance(intent, dict):
            raise TypeError("intent must be an object or null")
        frozen = data.get("frozen_reason")
        if frozen is not None and not isinstance(frozen, str):
            raise TypeError("frozen_reason must be a string or null")
        events = []
        for e in data.get("events", []):
            if e["direction"] not in (UP, DOWN):
                raise ValueError(f"bad event direction {e['direction']!r}")
            events.append(ScaleEvent(float(e["at"]), e["direction"], int(e["before"]), int(e["after"])))
        last_action = {}
        for k, v in dict(data.get("last_action", {})).items():
            if k not in (UP, DOWN):
                raise ValueError(f"bad last_action direction {k!r}")
            last_action[k] = float(v)
        return cls(
            recommendations=tuple((float(t), int(n)) for t, n in data.get("recommendations", [])),
            events=tuple(events),
            last_action=last_action,
            last_direction=last_direction,
            direction_changes=tuple(float(t) for t in data.get("direction_changes", [])),
            backoff_seconds=float(data.get("backoff_seconds", 0.0)),
            backoff_until=float(data.get("backoff_until", 0.0)),
            frozen_reason=frozen,
            intent=intent,
        )


@dataclass(frozen=True)
class MetricAnswer:
    name: str
    value: float | None  # the average per counted node, None when missing
    target: float
    recommendation: int | None  # None: no answer
    missing: bool
    note: str = ""


@dataclass(frozen=True)
class Decision:
    current: int
    raw: int  # the largest metric answer (current when none answered)
    stabilized: int
    desired: int  # after rate policies and min/max
    action: str  # "none" | "scale_up" | "scale_down"
    gate: str  # "none" or what stopped (or, for dry_run, withheld) the action
    metrics: tuple[MetricAnswer, ...]
    metrics_missing: bool
    cooldown_remaining: float
    backoff_remaining: float
    reason: str = ""

    @property
    def direction(self) -> str | None:
        return {"scale_up": UP, "scale_down": DOWN}.get(self.action)

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": self.current, "raw": self.raw, "stabilized": self.stabilized, "desired": self.desired,
            "action": self.action, "gate": self.gate, "reason": self.reason,
            "metrics": [m.__dict__ for m in self.metrics], "metrics_missing": self.metrics_missing,
            "cooldown_remaining": round(self.cooldown_remaining, 3),
            "backoff_remaining": round(self.backoff_remaining, 3),
        }


# --- step 1: one metric -> a recommendation ------------------------------------------------------

def recommend(metric: MetricSpec, nodes: tuple[Node, ...], answered: bool, up: DirectionRules,
              down: DirectionRules, grace: float) -> MetricAnswer:
    """HPA's replica calculation for one metric over the observed nodes."""
    current = len(nodes)
    if not answered or current == 0:
        return MetricAnswer(metric.name, None, metric.target, None, True, "no fresh answer")
    counted = [n for n in nodes if n.ready and (n.age is None or n.age >= grace)]
    unready = [n for n in nodes if n not in counted]
    present = [n.values.get(metric.name) for n in counted if n.values.get(metric.name) is not None]
    absent = len(counted) - len(present)
    if not present:
        return MetricAnswer(metric.name, None, metric.target, None, True, "no serving node has a value")
    total = float(sum(present))
    ratio = total / (metric.target * len(present))
    if ratio > 1 + up.tolerance + EPSILON:
        # scale-up: nodes without a value, not ready or too young count as 0 load
        ratio_all = total / (metric.target * current)
        if ratio_all <= 1 + up.tolerance + EPSILON:
            return MetricAnswer(metric.name, ratio_all * metric.target, metric.target, current, absent > 0,
                                "within tolerance once not-ready/new nodes count as 0")
        return MetricAnswer(metric.name, ratio_all * metric.target, metric.target,
                            math.ceil(ratio_all * current - EPSILON), absent > 0)
    if ratio < 1 - down.tolerance - EPSILON:
        if absent:
            # a node without a value might be the busy one: never a scale-in on a guess
            return MetricAnswer(metric.name, total / len(present), metric.target, current, True,
                                f"{absent} serving node(s) without a value: no scale-in")
        # not-ready / young nodes are left out of the average, but kept in the count
        return MetricAnswer(metric.name, total / len(present), metric.target,
                            max(math.ceil(ratio * len(present) - EPSILON), 1) + len(unready), False)
    return MetricAnswer(metric.name, total / len(present), metric.target, current, absent > 0, "within tolerance")


# --- step 2: stabilisation windows ---------------------------------------------------------------

def stabilize(policy: Policy, history: tuple[tuple[float, int], ...], raw: int, current: int, now: float) -> int:
    """The safest recommendation of each window: the lowest of the scale-up window, the highest
    of the scale-down window (KEP-853); the current count when neither moves it."""
    up_rec = down_rec = raw
    for at, rec in history:
        if at > now - policy.up.stabilization_window:
            up_rec = min(up_rec, rec)
        if at > now - policy.down.stabilization_window:
            down_rec = max(down_rec, rec)
    stabilized = current
    if stabilized < up_rec:
        stabilized = up_rec
    if stabilized > down_rec:
        stabilized = down_rec
    return stabilized


# --- step 3: rate policies and bounds -----------------------------------------------------------

def _changed_in(events: tuple[ScaleEvent, ...], direction: str, period: float, now: float) -> int:
    return sum(abs(e.after - e.before) for e in events if e.direction == direction and e.at > now - period)


def rate_limit(policy: Policy, events: tuple[ScaleEvent, ...], current: int, stabilized: int, now: float) -> int:
    """HPA's scaling policies: per policy, the count allowed from the count at the start of its
    period; ``select: max`` takes the policy that allows the largest change."""
    if stabilized > current:
        rules = policy.up
        if rules.select == "disabled":
            return current
        limits = []
        for p in rules.policies:
            start = current - _changed_in(events, UP, p.period, now)
            step = p.value if p.type == "nodes" else math.ceil(start * p.value / 100 - EPSILON)
            limits.append(start + int(step))
        limit = max(limits) if rules.select == "max" else min(limits)
        return max(current, min(stabilized, limit))
    if stabilized < current:
        rules = policy.down
        if rules.select == "disabled":
            return current
        limits = []
        for p in rules.policies:
            start = current + _changed_in(events, DOWN, p.period, now)
            step = p.value if p.type == "nodes" else math.ceil(start * p.value / 100 - EPSILON)
            limits.append(start - int(step))
        limit = min(limits) if rules.select == "max" else max(limits)
        return min(current, max(stabilized, limit))
    return current


# --- step 4: the whole decision -----------------------------------------------------------------

def cooldown_remaining(policy: Policy, state: State, now: float) -> float:
    last_up = state.last_action.get(UP)
    if last_up is None:
        return 0.0
    return max(0.0, last_up + policy.delay_after_scale_up - now)


def decide(policy: Policy, state: State, obs: Observation, now: float, mode: str = "act",
           state_frozen: str | None = None) -> Decision:
    """One evaluation. ``mode`` is off | dry-run | act; ``state_frozen`` is set by the loop when the
    state file could not be read (scaling stays frozen, nothing is reset)."""
    current = obs.current
    answers = tuple(recommend(m, obs.nodes, obs.metrics_ok.get(m.name, False), policy.up, policy.down,
                              policy.new_node_grace) for m in policy.metrics)
    recs = [a.recommendation for a in answers if a.recommendation is not None]
    any_missing = any(a.missing for a in answers)
    raw = max(recs) if recs else current
    # a metric that did not answer might have asked for more: never a scale-in on the others alone
    effective = max(raw, current) if any_missing else raw
    stabilized = stabilize(policy, state.recommendations, effective, current, now) if recs else current
    limited = rate_limit(policy, state.events, current, stabilized, now)
    desired = min(max(limited, policy.min_nodes), policy.max_nodes)
    cooldown = cooldown_remaining(policy, state, now)
    backoff = max(0.0, state.backoff_until - now)

    def out(action: str, gate: str, reason: str, desired_out: int = desired) -> Decision:
        return Decision(current, raw, stabilized, desired_out, action, gate, answers, any_missing,
                        cooldown, backoff, reason)

    if mode == "off":
        return out("none", "mode_off", "mode is off", current)
    if state_frozen:
        return out("none", "frozen", f"state unreadable: {state_frozen}", current)
    if state.frozen_reason:
        return out("none", "frozen", f"frozen by an operator: {state.frozen_reason}", current)
    if (current == 0 or not recs) and not 0 < current < policy.min_nodes:
        # (below min_nodes, it still brings the count up to min without a metric)
        return out("none", "metrics_missing", "no metric answered", current)
    if obs.lock_owner:
        return out("none", "lifecycle", f"lifecycle lock held by {obs.lock_owner}", current)
    if obs.lock_unknown:
        return out("none", "lifecycle", "lifecycle lock unreadable", current)
    if state.intent is not None:
        return out("none", "in_flight", f"action {state.intent.get('id')} under way", current)
    if desired == current:
        if raw > current and current >= policy.max_nodes:
            return out("none", "at_max", f"metrics ask for {raw}, max_nodes is {policy.max_nodes}")
        if raw < current and current <= policy.min_nodes:
            return out("none", "at_min", f"metrics ask for {raw}, min_nodes is {policy.min_nodes}")
        if raw < current and any_missing:
            return out("none", "metrics_missing", "a metric is missing: no scale-in")
        if raw != current and stabilized == current:
            return out("none", "stabilization", f"raw {raw} held at {current} by the stabilisation window")
        if raw != current:
            return out("none", "rate", f"rate policies hold {current}")
        tol = [a.note for a in answers if a.note]
        return out("none", "tolerance" if tol else "none", "; ".join(tol) or "at the recommendation")
    if desired > current:
        if backoff > 0:
            return out("none", "backoff", f"back-off after a failed action: {backoff:.0f} s left")
        gate = "dry_run" if mode == "dry-run" else "none"
        return out("scale_up", gate, f"scale to {desired}")
    # desired < current
    if any_missing:
        return out("none", "metrics_missing", "a metric is missing: no scale-in")
    if cooldown > 0:
        return out("none", "cooldown", f"{cooldown:.0f} s left of the delay after the last scale-up")
    if backoff > 0:
        return out("none", "backoff", f"back-off after a failed action: {backoff:.0f} s left")
    gate = "dry_run" if mode == "dry-run" else "none"
    return out("scale_down", gate, f"scale to {desired}")


def record(policy: Policy, state: State, decision: Decision, now: float) -> State:
    """The state after an evaluation: its recommendation joins the history (pruned to the longest
    window or period), and a decided direction that differs from the last one counts as a change."""
    keep_after = now - policy.history_seconds
    history = tuple(r for r in state.recommendations if r[0] > keep_after)
    if decision.gate not in ("mode_off", "frozen") and any(a.recommendation is not None for a in decision.metrics):
        history = (*history, (now, decision.raw))
    changes = tuple(t for t in state.direction_changes if t > now - 86400)
    last_direction = state.last_direction
    direction = decision.direction
    if direction is not None:
        if last_direction is not None and direction != last_direction:
            changes = (*changes, now)
        last_direction = direction
    events = tuple(e for e in state.events if e.at > keep_after)
    return replace(state, recommendations=history, direction_changes=changes, last_direction=last_direction,
                   events=events)


def action_started(state: State, direction: str, intent: dict[str, Any], now: float) -> State:
    return replace(state, intent=intent, last_action={**state.last_action, direction: now})


def action_finished(policy: Policy, state: State, direction: str, before: int, after: int, ok: bool,
                    now: float) -> State:
    """Close the intent; a success is a scale event (rate policies count it) and clears the
    back-off; a failure doubles it (from backoff_initial up to backoff_max)."""
    if ok:
        return replace(state, intent=None, events=(*state.events, ScaleEvent(now, direction, before, after)),
                       backoff_seconds=0.0, backoff_until=0.0)
    backoff = policy.backoff_initial if state.backoff_seconds <= 0 else min(state.backoff_seconds * 2,
                                                                              policy.backoff_max)
    return replace(state, intent=None, backoff_seconds=backoff, backoff_until=now + backoff)


def directions_changed_within(state: State, seconds: float, now: float) -> int:
    return sum(1 for t in state.direction_changes if t > now - seconds)
