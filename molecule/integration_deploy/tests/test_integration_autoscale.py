"""The autoscaler scales the scenario's app hosts 2 -> 4 -> 2 under a load ramp, with 0 failed requests.

Runs first (file order) and leaves what the next tests expect: app1 and app2 serving 1.0.0, the
spares (app3, app4) back in the pool. Two paces:
- quick (the default run, before the deploy tests; KEEL_AUTOSCALE_LAB=off leaves it out): the
  package's evaluation interval (15 s), a 10 s rate window, a 15 s scale-down window, 2 nodes per
  period and 60 s after a scale-up. Each load step comes right after an evaluation, so the next
  one sees the whole step: one add-node job takes both spares ("scale to 4") and one remove-node
  job gives them back. About 4 to 5 minutes (311 s at stop 26, with a 30 s base phase and a 30 s
  scale-down window).
- paced (scripts/test.sh --part autoscale, KEEL_AUTOSCALE_LAB=full: the deploy tests are skipped
  and the other autoscaler cases follow): the lab's policy as those cases use it (evaluations
  every 5 s, a 30 s rate window, a 60 s scale-down window, one node per period, 120 s after a
  scale-up) and load steps at any moment, so the metric may be caught half-way (2 -> 3 -> 4, as
  HPA does) and the scale-ins come one host per period. About 10 minutes.
The autoscaler runs on this machine in mode `act` with the runner executor, the spare-pool
provider and the file inventory writer (molecule/resources/autoscale_lab.py); the scenario's
Prometheus is its metrics source. The rest of the autoscaler's lab cases (restart, faults,
deploy freeze, dry-run, metrics outage) are in test_integration_autoscale_more.py.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
sys.path.insert(0, str(PROJECT / "molecule" / "resources"))
from autoscale_lab import (  # noqa: E402
    DEFAULTS,
    TARGET,
    Lab,
    Running,
    inventory_app_hosts,
    policy,
    prometheus_app_hosts,
    wait_until,
)
from loadloop import LoadLoop  # noqa: E402
from test_integration_deploy import PROMETHEUS, URL, record, server_states, tls  # noqa: E402

PACED = os.environ.get("KEEL_AUTOSCALE_LAB") == "full"
pytestmark = pytest.mark.skipif(os.environ.get("KEEL_AUTOSCALE_LAB") == "off",
                                reason="KEEL_AUTOSCALE_LAB=off: the load ramp left out")


def quick_config(lab_: Lab) -> dict:
    """The default run's pace: the same engine and gates, shorter windows (module docstring)."""
    down = {**policy()["scale_down"], "stabilization_window": 15,
            "policies": [{"type": "nodes", "value": 2, "period": 60}]}
    metric = {**policy()["metrics"][0]}
    metric["query"] = metric["query"].replace("[30s]", "[10s]")
    return lab_.config("act", evaluation_interval=DEFAULTS["evaluation_interval"], metrics=[metric],
                       scale_down=down, delay_after_scale_up=60)


def right_after_an_evaluation(scaler: Running, since: float | None = None) -> dict:
    """Return, as soon as the autoscaler has logged it, the first evaluation that began at `since`
    (default: now) or later."""
    since = time.time() if since is None else since
    return wait_until(lambda: next((e for e in scaler.audit() if e.get("event") == "evaluation"
                                    and e["ts"] >= since), None), 60, 0.2, what="the next evaluation")


def lab() -> Lab:
    work = EPHEMERAL / "autoscale"
    work.mkdir(exist_ok=True)
    return Lab(PROJECT, EPHEMERAL, PROMETHEUS, work)


def load(rate: float) -> LoadLoop:
    return LoadLoop(URL, verify=tls(), workers=2, rate=rate, max_requests=60_000, max_seconds=1500)


def serving_hosts() -> set[str]:
    return {name.rsplit("-", 1)[0] for name, state in server_states().items() if state == "UP"}


def all_servers() -> set[str]:
    return {name.rsplit("-", 1)[0] for name in server_states()}


def agree(lab_: Lab) -> tuple[set[str], set[str], set[str]]:
    return (inventory_app_hosts(PROJECT, EPHEMERAL / "inventory"), all_servers(), prometheus_app_hosts(PROMETHEUS))


def test_load_ramp_scales_2_to_4_and_back_to_2_without_a_failed_request():
    lab_ = lab()
    started = time.time()
    scaler = Running(lab_, lab_.config("act") if PACED else quick_config(lab_)).start()
    loops: list[LoadLoop] = []
    passed = False

    def ups() -> list[dict]:
        return [a for a in scaler.actions() if a["intent"]["direction"] == "up"]

    def downs() -> list[dict]:
        return [a for a in scaler.actions() if a["intent"]["direction"] == "down"]
    try:
        # paced: at the target, 2 hosts x TARGET req/s, the autoscaler holds (within the tolerance);
        # quick: below it (a 10 s rate window is noisier than the tolerance), it holds too
        base = load((2 if PACED else 1.6) * TARGET)
        base.start()
        loops.append(base)
        if PACED:
            time.sleep(45)
        else:
            # the first evaluation whose 10 s rate window holds the base load alone: it holds
            held = right_after_an_evaluation(scaler, time.time() + 10)
            assert held["raw"] <= held["current"], held
        assert scaler.actions() == [], scaler.tail()
        assert serving_hosts() == {"app1", "app2"}

        # paced: ramp up to 4 x TARGET: "scale to 4", in one add-node job for both spares, or in two
        # when an evaluation catches the metric low in its rate window (2 -> 3 -> 4, as HPA does);
        # quick: a step to 6 x TARGET right after an evaluation (the one above), so that the next
        # asks for 4 at once
        extra = load((2 if PACED else 4.4) * TARGET)
        extra.start()
        loops.append(extra)
        ramp_at = time.time()
        crossed = wait_until(lambda: next((e for e in scaler.audit() if e.get("event") == "evaluation"
                                           and e["ts"] >= ramp_at and e["raw"] > e["current"]), None),
                             120, what="the metric to cross the threshold")
        wait_until(lambda: serving_hosts() == {"app1", "app2", "app3", "app4"}, 900, 3,
                   what=f"4 hosts UP in HAProxy; autoscaler: {scaler.tail()}")
        serving_at = time.time()

        # HAProxy sends to the new hosts before add-node.yml ends (it still waits for Prometheus)
        wait_until(lambda: sorted(n for a in ups() for n in a["intent"]["nodes"]) == ["app3", "app4"]
                   and scaler.metric("keel_autoscaler_intent_age_seconds") == 0, 300,
                   what=f"the scale-out to close; actions: {scaler.actions()}")
        allowed = (["success"], ["success", "success"]) if PACED else (["success"],)
        assert [a["result"] for a in ups()] in allowed, ups()
        assert ups()[-1]["intent"]["target"] == 4
        assert agree(lab_) == ({"app1", "app2", "app3", "app4"},) * 3
        up_seconds = serving_at - crossed["ts"]

        # ramp down to 1.5 x TARGET in all: paced, two scale-ins, one host per period, after the
        # delay; quick, right after an evaluation, one scale-in of both
        if not PACED:
            right_after_an_evaluation(scaler)
        low = load(1.5 * TARGET)
        low.start()
        loops.append(low)
        base.stop()
        extra.stop()
        down_at = time.time()
        wait_until(lambda: sorted(n for a in downs() for n in a["intent"]["nodes"]) == ["app3", "app4"]
                   and scaler.metric("keel_autoscaler_intent_age_seconds") == 0, 1200, 5,
                   what=f"the scale-ins of app3 and app4; autoscaler: {scaler.tail()}")
        down_seconds = time.time() - down_at
        assert {a["result"] for a in downs()} == {"success"}, downs()
        if PACED:
            assert len(downs()) == 2, downs()
            assert downs()[1]["intent"]["started"] - downs()[0]["intent"]["started"] >= 60  # one host per period
        else:
            assert len(downs()) == 1, downs()
        time.sleep(5)
        passed = True
    finally:
        for loop in loops:
            loop.stop()
        scaler.stop()
        failed = [o for loop in loops for o in loop.failed]
        if failed or not passed:
            # what explains it, kept past Molecule's clean-up: reports/autoscale-ramp/
            kept = scaler.keep_evidence(PROJECT / "reports" / "autoscale-ramp", "lb1", started)
            (kept / "failed-requests.txt").write_text("".join(
                f"{time.strftime('%H:%M:%S', time.gmtime(o.wall))}.{int(o.wall % 1 * 1000):03d} UTC "
                f"status={o.status} {o.error}\n" for o in failed))
    total = sum(loop.total for loop in loops)
    summary = "; ".join(loop.summary() for loop in loops)
    record(f"autoscale ramp 2->4->2 ({'paced' if PACED else 'quick'}): threshold crossing to 4 hosts serving "
           f"{up_seconds:.0f} s ({len(ups())} scale-out action(s)); {len(downs())} scale-in action(s) finished "
           f"{down_seconds:.0f} s after the ramp down; ramp {time.time() - started:.0f} s in all; "
           f"{total} requests, {len(failed)} failed")
    assert failed == [], summary
    assert total > 0
    inventory, haproxy, prometheus = agree(lab_)
    assert inventory == haproxy == prometheus == {"app1", "app2"}, (inventory, haproxy, prometheus)
    assert serving_hosts() == {"app1", "app2"}
