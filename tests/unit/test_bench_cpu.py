"""scripts/lib/bench.py: the CPU accounting behind the benchmark's CPU budget table."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "lib" / "bench.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)
TICK = os.sysconf("SC_CLK_TCK")


def test_process_cpu_seconds_reads_utime_and_stime_even_with_spaces_in_the_name():
    stat = f"4242 (granian worker (api)) S 1 4242 4242 0 -1 4194560 900 0 0 0 {3 * TICK} {TICK} 0 0 20 0 5 0"
    assert bench.process_cpu_seconds(stat) == 4.0


def test_machine_busy_leaves_idle_and_iowait_out():
    stat = f"cpu  {TICK * 10} 0 {TICK * 5} {TICK * 80} {TICK * 5} 0 0 0 0 0\ncpu0 1 2 3 4\n"
    assert bench.machine_busy_seconds(stat) == (15.0, 100.0)


def test_own_process_is_measured_like_the_containers():
    own = bench.process_cpu_seconds(Path("/proc/self/stat").read_text())
    usage = os.times()
    assert abs(own - (usage.user + usage.system)) < 0.05
