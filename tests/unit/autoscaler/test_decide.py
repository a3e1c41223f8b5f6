"""The decision layer with a fake clock: HPA's formula, tolerance, windows, policies, bounds, gates."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
from keel_autoscaler import decide as d

TARGET = 100.0


def nodes(*values: float | None, ready: bool = True, age: float | None = None) -> tuple[d.Node, ...]:
    return tuple(d.Node(f"app{i + 1}", ready, age, {"requests_per_node": v}) for i, v in enumerate(values))


def obs(*values: float | None, ok: bool = True, **kw) -> d.Observation:
    return d.Observation(nodes(*values), {"requests_per_node": ok}, **kw)


def policy(**kw) -> d.Policy:
    return replace(d.default_policy(TARGET), **kw)


# --- the formula and the tolerance ---------------------------------------------------------------

@pytest.mark.parametrize(("values", "expected"), [
    ((100, 100), 2),          # at target
    ((110, 110), 2),          # ratio 1.1: within the 0.1 tolerance, no change
    ((111, 111), 3),          # ratio 1.11: ceil(2 * 1.11) = 3
    ((90, 90), 2),            # ratio 0.9: within tolerance
    ((150, 150), 3),          # ceil(2 * 1.5)
    ((200, 200), 4),
    ((300, 300), 6),          # the rule's answer, before rate policies and max
])
def test_formula_and_tolerance_edges(values, expected):
    p = policy(max_nodes=10)
    answer = d.recommend(p.metrics[0], nodes(*values), True, p.up, p.down, p.new_node_grace)
    assert answer.recommendation == expected


def test_tolerance_per_direction():
    p = policy(max_nodes=10, up=replace(d.default_policy().up, tolerance=0.5),
               down=replace(d.default_policy().down, tolerance=0.05))
    assert d.recommend(p.metrics[0], nodes(140, 140), True, p.up, p.down, 0).recommendation == 2
    assert d.recommend(p.metrics[0], nodes(40, 40, 40, 40), True, p.up, p.down, 0).recommendation == 2
    assert d.recommend(p.metrics[0], nodes(94, 94, 94, 94), True, p.up, p.down, 0).recommendation == 4


def test_scale_in_answer_is_ceil_of_load_over_target():
    p = policy()
    assert d.recommend(p.metrics[0], nodes(30, 30, 30, 30), True, p.up, p.down, 0).recommendation == 2  # 1.2 -> 2
    assert d.recommend(p.metrics[0], nodes(10, 10, 10, 10), True, p.up, p.down, 0).recommendation == 1


# --- not ready, young and missing nodes ----------------------------------------------------------

def test_not_ready_node_counts_as_zero_for_scale_up():
    p = policy(max_nodes=10)
    ns = (*nodes(150, 150), d.Node("app3", False, None, {"requests_per_node": None}))
    # ready average 1.5x target, but with app3 at 0: 300 / (3 * 100) = 1.0 -> no change
    assert d.recommend(p.metrics[0], ns, True, p.up, p.down, 0).recommendation == 3


def test_young_node_counts_as_zero_for_scale_up():
    p = policy(max_nodes=10)
    ns = (*nodes(200, 200), d.Node("app3", True, 30.0, {"requests_per_node": 400}))
    # app3 joined 30 s ago (< grace 120 s): its 400 req/s is set aside, it counts 0: 400 / 300 -> ceil(4.0) = 4
    assert d.recommend(p.metrics[0], ns, True, p.up, p.down, p.new_node_grace).recommendation == 4


def test_missing_value_on_a_node_never_scales_in():
    p = policy()
    answer = d.recommend(p.metrics[0], nodes(10, None, 10), True, p.up, p.down, 0)
    assert answer.recommendation == 3 and answer.missing


def test_missing_metric_blocks_scale_in_but_not_scale_up():
    p = replace(policy(max_nodes=10), metrics=(d.MetricSpec("requests_per_node", TARGET), d.MetricSpec("cpu", 0.7)))
    low = d.Observation(nodes(10, 10, 10), {"requests_per_node": True, "cpu": False})
    dec = d.decide(p, d.State(), low, now=10_000)
    assert dec.action == "none" and dec.gate == "metrics_missing" and dec.desired == 3
    high = d.Observation(nodes(300, 300), {"requests_per_node": True, "cpu": False})
    dec = d.decide(p, d.State(), high, now=10_000)
    assert dec.action == "scale_up" and dec.desired == 4


def test_prometheus_down_means_no_decision():
    dec = d.decide(policy(), d.State(), d.Observation((), {"requests_per_node": False}), now=1000)
    assert dec.action == "none" and dec.gate == "metrics_missing" and dec.metrics_missing


def test_several_metrics_the_largest_wins():
    p = replace(policy(max_nodes=10), metrics=(d.MetricSpec("requests_per_node", TARGET), d.MetricSpec("cpu", 0.5)))
    ns = tuple(d.Node(f"app{i}", True, None, {"requests_per_node": 60, "cpu": 0.9}) for i in range(2))
    dec = d.decide(p, d.State(), d.Observation(ns, {"requests_per_node": True, "cpu": True}), now=1000)
    assert dec.raw == 4 and dec.desired == 4  # cpu: ceil(2 * 1.8) = 4; requests alone would say 2


# --- bounds ------------------------------------------------------------------------------------

def test_min_max_clamp():
    assert d.decide(policy(), d.State(), obs(1000, 1000), now=1000).desired == 4
    dec = d.decide(policy(), d.State(), obs(1000, 1000, 1000, 1000), now=1000)
    assert dec.action == "none" and dec.gate == "at_max"
    state = d.State(recommendations=((0.0, 1),))
    dec = d.decide(policy(), state, obs(5, 5), now=1000)
    assert dec.action == "none" and dec.gate == "at_min" and dec.desired == 2


def test_below_min_scales_up_to_min():
    dec = d.decide(policy(min_nodes=3), d.State(), obs(10), now=1000)
    assert dec.action == "scale_up" and dec.desired == 3


# --- stabilisation windows (KEP-853) -------------------------------------------------------------

def test_kep853_window_example():
    """Recommendations [10, 9, 8, 9, 9, 8, 9, 8, 9, 8] one a minute keep 10; a minute later 10 leaves
    the 10-minute window and 7 arrives: 10 -> 9."""
    p = policy(max_nodes=20, down=replace(d.default_policy().down, stabilization_window=600,
                                           policies=(d.RatePolicy("percent", 100, 15),), select="max"))
    recs = [10, 9, 8, 9, 9, 8, 9, 8, 9, 8]
    history = tuple((60.0 * i, r) for i, r in enumerate(recs))
    assert d.stabilize(p, history, 8, 10, now=540.0) == 10
    assert d.stabilize(p, history, 7, 10, now=600.0) == 9


def test_scale_up_window_keeps_the_lowest():
    p = policy(max_nodes=20, up=replace(d.default_policy().up, stabilization_window=120))
    history = ((0.0, 3), (60.0, 6))
    assert d.stabilize(p, history, 8, 2, now=100.0) == 3
    assert d.stabilize(p, history, 8, 2, now=130.0) == 6


def test_scale_down_window_holds_the_highest_recent_recommendation():
    p = policy()
    state = d.State(recommendations=((1000.0, 4),))
    dec = d.decide(p, state, obs(10, 10, 10, 10), now=1200)  # 200 s after a 4: still inside 300 s
    assert dec.action == "none" and dec.gate == "stabilization"
    dec = d.decide(p, state, obs(10, 10, 10, 10), now=1301)
    assert dec.action == "scale_down"


# --- rate policies (the HPA documentation's examples) --------------------------------------------

def test_hpa_doc_scale_down_policy_example():
    """Pods 4 and Percent 10 per 60 s, select Max, from 80 to 10: -8 (10 % of 80), then 10 % of 72 =
    7.2 rounded up to 8; below 40 replicas the Pods policy (4) is the larger change."""
    rules = d.DirectionRules(0, (d.RatePolicy("nodes", 4, 60), d.RatePolicy("percent", 10, 60)), "max", 0.1)
    p = policy(min_nodes=1, max_nodes=100, down=rules)
    current, events, steps, now = 80, (), [], 0.0
    while current > 10:
        now += 61
        nxt = d.rate_limit(p, events, current, 10, now)
        steps.append(current - nxt)
        events = (*events, d.ScaleEvent(now, d.DOWN, current, nxt))
        current = nxt
    assert steps[:2] == [8, 8]
    # below 40 the Pods policy (4) is the larger change, until the target (10) limits the last step
    assert all(s == 4 for s, c in zip(steps, _counts(80, steps), strict=False) if c <= 40 and c - 4 >= 10)
    assert current == 10


def _counts(start: int, steps: list[int]) -> list[int]:
    out, c = [], start
    for s in steps:
        out.append(c)
        c -= s
    return out


def test_default_scale_up_policy_max_of_two_nodes_or_100_percent():
    p = policy(max_nodes=100)
    assert d.rate_limit(p, (), 2, 10, 0) == 4     # +2 nodes == +100 %
    assert d.rate_limit(p, (), 5, 20, 0) == 10    # +100 % > +2
    assert d.rate_limit(p, (), 1, 20, 0) == 3     # +2 > +100 %
    # a scale-up 100 s ago (2 -> 4) counts in the 300 s period: from the period's start (2), +2 is 4
    events = (d.ScaleEvent(100, d.UP, 2, 4),)
    assert d.rate_limit(p, events, 4, 10, 200) == 4
    assert d.rate_limit(p, events, 4, 10, 401) == 8


def test_default_scale_down_one_node_per_period():
    p = policy()
    assert d.rate_limit(p, (), 4, 2, 0) == 3
    events = (d.ScaleEvent(100, d.DOWN, 4, 3),)
    assert d.rate_limit(p, events, 3, 2, 200) == 3
    assert d.rate_limit(p, events, 3, 2, 401) == 2


# --- gates ---------------------------------------------------------------------------------------

def test_delay_after_scale_up_blocks_scale_in():
    state = d.State(last_action={d.UP: 1000.0})
    dec = d.decide(policy(), state, obs(10, 10, 10, 10), now=1500)
    assert dec.gate == "cooldown" and math.isclose(dec.cooldown_remaining, 100)
    assert d.decide(policy(), state, obs(10, 10, 10, 10), now=1601).action == "scale_down"


def test_backoff_after_failure_doubles_to_the_max():
    p = policy()
    s = d.State()
    seen = []
    for i in range(6):
        s = d.action_started(s, d.UP, {"id": str(i)}, 0)
        s = d.action_finished(p, s, d.UP, 2, 2, False, 0)
        seen.append(s.backoff_seconds)
    assert seen == [180, 360, 720, 1440, 1800, 1800]
    dec = d.decide(p, s, obs(300, 300), now=100)
    assert dec.action == "none" and dec.gate == "backoff"
    assert d.decide(p, s, obs(300, 300), now=1801).action == "scale_up"
    s = d.action_finished(p, d.action_started(s, d.UP, {"id": "ok"}, 2000), d.UP, 2, 4, True, 2100)
    assert s.backoff_seconds == 0 and s.backoff_until == 0


@pytest.mark.parametrize(("kw", "gate"), [
    ({"lock_owner": "alice@ctl (deploy.yml)"}, "lifecycle"),
    ({"lock_unknown": True}, "lifecycle"),
])
def test_lifecycle_lock_blocks_action(kw, gate):
    dec = d.decide(policy(), d.State(), obs(300, 300, **kw), now=1000)
    assert dec.action == "none" and dec.gate == gate and dec.desired == 2


def test_in_flight_intent_blocks_a_second_action():
    dec = d.decide(policy(), d.State(intent={"id": "x"}), obs(300, 300), now=1000)
    assert dec.action == "none" and dec.gate == "in_flight"


def test_frozen_by_operator_or_by_an_unreadable_state():
    assert d.decide(policy(), d.State(frozen_reason="incident 42"), obs(300, 300), now=1).gate == "frozen"
    assert d.decide(policy(), d.State(), obs(300, 300), now=1, state_frozen="bad json").gate == "frozen"


def test_modes():
    assert d.decide(policy(), d.State(), obs(300, 300), now=1, mode="off").gate == "mode_off"
    dry = d.decide(policy(), d.State(), obs(300, 300), now=1, mode="dry-run")
    assert dry.action == "scale_up" and dry.gate == "dry_run" and dry.desired == 4 and dry.reason == "scale to 4"


# --- the state as JSON ---------------------------------------------------------------------------

def test_state_round_trip():
    s = d.State(recommendations=((1.0, 3),), events=(d.ScaleEvent(2.0, d.UP, 2, 4),), last_action={d.UP: 2.0},
                last_direction=d.UP, direction_changes=(5.0,), backoff_seconds=180, backoff_until=400,
                frozen_reason="x", intent={"id": "a", "phase": "add"})
    assert d.State.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("bad", [
    [], {"last_direction": "sideways"}, {"events": [{"at": 1, "direction": "up"}]},
    {"recommendations": [["x", 1]]}, {"intent": "yes"}, {"last_action": {"left": 1}},
])
def test_state_from_bad_dict_raises(bad):
    with pytest.raises((ValueError, TypeError, KeyError)):
        d.State.from_dict(bad)


# --- simulations ---------------------------------------------------------------------------------

def simulate(load_at, seconds: float, step: float = 15.0, start_nodes: int = 2, p: d.Policy | None = None):
    """Total load (req/s) shared by the serving nodes; actions complete at once. Returns the
    node count over time and the state."""
    p = p or policy(max_nodes=10)
    state, n, t, trace = d.State(), start_nodes, 0.0, []
    while t <= seconds:
        total = load_at(t)
        o = d.Observation(tuple(d.Node(f"n{i}", True, None, {"requests_per_node": total / n}) for i in range(n)),
                          {"requests_per_node": True})
        dec = d.decide(p, state, o, t)
        state = d.record(p, state, dec, t)
        if dec.action != "none" and dec.gate == "none":
            state = d.action_started(state, dec.direction, {"id": str(t)}, t)
            state = d.action_finished(p, state, dec.direction, n, dec.desired, True, t)
            n = dec.desired
        trace.append((t, n))
        t += step
    return trace, state


def max_changes_in_window(changes: tuple[float, ...], window: float) -> int:
    return max((sum(1 for u in changes if t <= u < t + window) for t in changes), default=0)


def test_24h_oscillating_load_does_not_flap():
    """±30 % around the target of 3 nodes, a 10-minute period, for 24 hours: at most 2 direction
    changes in any 10 minutes."""
    base = 3 * TARGET
    trace, state = simulate(lambda t: base * (1 + 0.3 * math.sin(2 * math.pi * t / 600)), 86400)
    assert max_changes_in_window(state.direction_changes, 600) <= 2
    assert len(state.direction_changes) / (86400 / 600) <= 1  # on average at most 1 per 10 minutes
    assert {n for _, n in trace} <= {2, 3, 4, 5}


def test_square_wave_across_the_threshold_scales_up_once_and_stays():
    trace, state = simulate(lambda t: 2 * TARGET * (1.3 if (t // 120) % 2 else 0.95), 1800)
    ups = [t for (t, n), (_, m) in itertools.pairwise(trace) if m > n]
    assert len(ups) == 1 and len(state.direction_changes) == 0
    assert trace[-1][1] == 3


def test_ramp_2_to_4_and_back_to_2():
    def load(t):
        return 2 * TARGET if t < 300 else 4 * TARGET if t < 1500 else 2 * TARGET
    trace, _ = simulate(load, 4000, p=policy())
    counts = [n for _, n in trace]
    assert max(counts) == 4 and counts[-1] == 2
    first4 = next(t for t, n in trace if n == 4)
    assert first4 <= 315  # the evaluation after the crossing (window 0 s, +2 allowed)
    # down one per 300 s, and only after the 600 s delay after the scale-up and the 300 s window
    downs = [u for (_, n), (u, m) in itertools.pairwise(trace) if m < n]
    last_high = max(t for t, _ in trace if t < 1500)
    assert len(downs) == 2 and downs[1] - downs[0] >= 300 and downs[0] >= last_high + 300
