"""scripts/bench_noop.py: what it reads from a run and how it sums the runs up."""

from __future__ import annotations

import bench_noop

RECAP = """PLAY RECAP *********************************************************************
app1                       : ok=219  changed=0    unreachable=0    failed=0    skipped=77   rescued=0    ignored=0
lb1                        : ok=208  changed=2    unreachable=1    failed=0    skipped=73   rescued=0    ignored=0
"""


def _run(mode, wall, ctl=50.0, ctr=40.0):
    return {"mode": mode, "wall_s": wall, "controller_cpu_s": ctl, "containers_cpu_s": ctr, "changed": 0,
            "failed": 0, "hosts": 5, "rc": 0}


def test_recap_counters_per_host():
    hosts = bench_noop.recap(RECAP)
    assert hosts["app1"]["ok"] == 219 and hosts["app1"]["changed"] == 0
    assert hosts["lb1"]["changed"] == 2 and hosts["lb1"]["unreachable"] == 1


def test_summary_takes_medians_per_mode_and_the_ratio():
    runs = [_run("fast", 100), _run("builtin", 200), _run("builtin", 180), _run("fast", 80), _run("fast", 90)]
    result = bench_noop.summary(runs)
    assert result["fast"]["wall_s"] == 90 and result["builtin"]["wall_s"] == 190
    assert result["ratio_wall_builtin_over_fast"] == 2.11
    assert result["fast_within_target"] is False  # 90 is not below 90


def test_report_names_every_run_and_the_verdict():
    runs = [_run("fast", 80), _run("builtin", 200), _run("builtin", 190), _run("fast", 82)]
    text = bench_noop.report(runs, bench_noop.summary(runs))
    assert text.count("| fast |") == 2 and text.count("| builtin |") == 2
    assert "**met**" in text and "4 hosts" in text
