"""The autoscaler scales the scenario's app hosts 2 -> 4 -> 2 under a load ramp, with 0 failed requests.

Runs on request (scripts/test.sh --part autoscale, KEEL_AUTOSCALE_LAB=full: the deploy tests
are then skipped), before the other autoscaler cases (file order), and leaves what they expect:
app1 and app2 serving 1.0.0, the spares (app3, app4) back in the pool. The autoscaler runs on this machine in mode
`act` with the runner executor, the spare-pool provider and the file inventory writer
(molecule/resources/autoscale_lab.py); the scenario's Prometheus is its metrics source.
The rest of the autoscaler's lab cases (restart, faults, deploy freeze, dry-run, metrics outage)
follow in test_integration_autoscale_more.py.
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
    TARGET,
    Lab,
    Running,
    inventory_app_hosts,
    prometheus_app_hosts,
    wait_until,
)
from loadloop import LoadLoop  # noqa: E402
from test_integration_deploy import PROMETHEUS, URL, record, server_states, tls  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("KEEL_AUTOSCALE_LAB") != "full",
                                reason="on request: scripts/test.sh --part autoscale")


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
    scaler = Running(lab_, lab_.config("act")).start()
    loops: list[LoadLoop] = []
    passed = False
    try:
        # at the target: 2 hosts x TARGET req/s; the autoscaler holds (within the tolerance)
        base = load(2 * TARGET)
        base.start()
        loops.append(base)
        time.sleep(45)
        assert scaler.actions() == [], scaler.tail()
        assert serving_hosts() == {"app1", "app2"}

        # ramp up to 4 x TARGET: "scale to 4", in one add-node job for both spares, or in two when
        # an evaluation catches the metric half-way up its rate window (2 -> 3 -> 4, as HPA does)
        extra = load(2 * TARGET)
        extra.start()
        loops.append(extra)
        ramp_at = time.time()
        crossed = wait_until(lambda: next((e for e in scaler.audit() if e.get("event") == "evaluation"
                                           and e["ts"] >= ramp_at and e["raw"] > e["current"]), None),
                             120, what="the metric to cross the threshold")
        wait_until(lambda: serving_hosts() == {"app1", "app2", "app3", "app4"}, 900, 3,
                   what=f"4 hosts UP in HAProxy; autoscaler: {scaler.tail()}")
        serving_at = time.time()

        def ups() -> list[dict]:
            return [a for a in scaler.actions() if a["intent"]["direction"] == "up"]
        # HAProxy sends to the new hosts before add-node.yml ends (it still waits for Prometheus)
        wait_until(lambda: sorted(n for a in ups() for n in a["intent"]["nodes"]) == ["app3", "app4"]
                   and scaler.metric("keel_autoscaler_intent_age_seconds") == 0, 300,
                   what=f"the scale-out to close; actions: {scaler.actions()}")
        assert [a["result"] for a in ups()] in (["success"], ["success", "success"]), ups()
        assert ups()[-1]["intent"]["target"] == 4
        assert agree(lab_) == ({"app1", "app2", "app3", "app4"},) * 3
        up_seconds = serving_at - crossed["ts"]

        # ramp down to 1.5 x TARGET in all: two scale-ins, one host per period, after the delay
        low = load(1.5 * TARGET)
        low.start()
        loops.append(low)
        base.stop()
        extra.stop()
        down_at = time.time()
        wait_until(lambda: len([a for a in scaler.actions() if a["intent"]["direction"] == "down"]) >= 2
                   and scaler.metric("keel_autoscaler_intent_age_seconds") == 0, 1200, 5,
                   what=f"two scale-ins; autoscaler: {scaler.tail()}")
        downs = [a for a in scaler.actions() if a["intent"]["direction"] == "down"]
        assert [a["result"] for a in downs] == ["success", "success"], downs
        assert downs[1]["intent"]["started"] - downs[0]["intent"]["started"] >= 60  # one host per period
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
    record(f"autoscale ramp 2->4->2: threshold crossing to 4 hosts serving {up_seconds:.0f} s "
           f"({len(ups())} scale-out action(s)); "
           f"scale-ins finished {time.time() - down_at:.0f} s after the ramp down; {total} requests, "
           f"{len(failed)} failed")
    assert failed == [], summary
    assert total > 0
    inventory, haproxy, prometheus = agree(lab_)
    assert inventory == haproxy == prometheus == {"app1", "app2"}, (inventory, haproxy, prometheus)
    assert serving_hosts() == {"app1", "app2"}
