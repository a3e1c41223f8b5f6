"""No-op benchmark (issue 6): site.yml run again on a converged lab, fast paths on and off.

    scripts/lab.sh up            # a converged lab
    .venv/bin/python scripts/bench_noop.py [--rounds 2] [--timeout 900]

Runs playbooks/site.yml against the lab inventory in ABBA order per round
(fast, builtin, builtin, fast; "builtin" sets KEEL_FAST_PATH=0 so every keel_*
action runs its builtin module, see docs/fast-actions.md). For every run it
records the wall time, the changed count of the recap (must be 0), the CPU
seconds of the controller (ansible-playbook and its children, the docker CLI
included) and of the lab's containers (their cgroups). Prints the medians and
the ratio and writes reports/bench/noop-<UTC time>/{report.md,results.json,*.log}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
CONTAINER_PREFIX = "keel-lab-"
TARGET_S = 90.0


def container_cpu_seconds() -> float:
    """CPU seconds used so far by the lab's containers (cgroup v1 or v2)."""
    ids = subprocess.run(["docker", "ps", "-q", "--no-trunc", "--filter", f"name={CONTAINER_PREFIX}"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    total = 0.0
    for cid in ids:
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = next(iter(Path("/sys/fs/cgroup").glob(f"**/*{cid}*/cpu.stat")), None)
        if v1.exists():
            total += int(v1.read_text()) / 1e9
        elif v2 is not None:
            usage = re.search(r"usage_usec (\d+)", v2.read_text())
            total += int(usage.group(1)) / 1e6 if usage else 0.0
    return total


def recap(text: str) -> dict[str, dict[str, int]]:
    """Per-host counters of the PLAY RECAP."""
    hosts = {}
    for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", text, re.MULTILINE):
        hosts[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
    return hosts


def run_once(mode: str, log: Path, timeout: float) -> dict:
    env = dict(os.environ, KEEL_FAST_PATH="1" if mode == "fast" else "0", ANSIBLE_FORCE_COLOR="0")
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(INVENTORY), "playbooks/site.yml"]
    before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_ctr = container_cpu_seconds()
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              check=False)
    wall = time.monotonic() - start
    after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    hosts = recap(log.read_text())
    return {
        "mode": mode, "rc": proc.returncode, "wall_s": round(wall, 1),
        "controller_cpu_s": round(after_cpu.ru_utime + after_cpu.ru_stime
                                  - before_cpu.ru_utime - before_cpu.ru_stime, 1),
        "containers_cpu_s": round(container_cpu_seconds() - before_ctr, 1),
        "changed": sum(h.get("changed", 0) for h in hosts.values()),
        "failed": sum(h.get("failed", 0) + h.get("unreachable", 0) for h in hosts.values()),
        "hosts": len(hosts), "log": log.name,
    }


def summary(runs: list[dict]) -> dict:
    out = {}
    for mode in ("fast", "builtin"):
        mine = [r for r in runs if r["mode"] == mode]
        out[mode] = {key: round(statistics.median(r[key] for r in mine), 1)
                     for key in ("wall_s", "controller_cpu_s", "containers_cpu_s")}
    out["ratio_wall_builtin_over_fast"] = round(out["builtin"]["wall_s"] / out["fast"]["wall_s"], 2)
    out["target_s"] = TARGET_S
    out["fast_within_target"] = out["fast"]["wall_s"] < TARGET_S
    return out


def report(runs: list[dict], result: dict) -> str:
    lines = [
        "# No-op run of site.yml on the lab: keel_* fast paths on and off", "",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}. Lab: {runs[0]['hosts'] - 1} hosts "
        "(containers, docker connection). Order ABBA per round; every run must change nothing.", "",
        "| # | mode | wall s | controller CPU s | containers CPU s | changed | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {r['mode']} | {r['wall_s']} | {r['controller_cpu_s']} | {r['containers_cpu_s']} | "
              f"{r['changed']} | {r['failed']} |" for n, r in enumerate(runs, 1)]
    fast, builtin = result["fast"], result["builtin"]
    lines += [
        "", "| median | wall s | controller CPU s | containers CPU s |", "|---|---|---|---|",
        f"| fast paths (the roles as shipped) | {fast['wall_s']} | {fast['controller_cpu_s']} | "
        f"{fast['containers_cpu_s']} |",
        f"| builtins only (KEEL_FAST_PATH=0) | {builtin['wall_s']} | {builtin['controller_cpu_s']} | "
        f"{builtin['containers_cpu_s']} |",
        "", f"Ratio builtin / fast (wall): **{result['ratio_wall_builtin_over_fast']}**. "
        f"Target < {TARGET_S:.0f} s: **{'met' if result['fast_within_target'] else 'not met'}** "
        f"(median {fast['wall_s']} s).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each 4 runs); default 2")
    parser.add_argument("--timeout", type=float, default=900, help="bound of one site.yml run, seconds")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 5:
        parser.error("--rounds must be 1 to 5")
    out = ROOT / "reports" / "bench" / time.strftime("noop-%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True)
    runs = []
    for rnd in range(args.rounds):
        for mode in ("fast", "builtin", "builtin", "fast"):
            run = run_once(mode, out / f"site-{len(runs) + 1}-{mode}.log", args.timeout)
            runs.append(run)
            print(f"round {rnd + 1} {mode:8s} wall {run['wall_s']:6.1f} s  controller {run['controller_cpu_s']:5.1f} "
                  f"CPU-s  containers {run['containers_cpu_s']:5.1f} CPU-s  changed={run['changed']} "
                  f"failed={run['failed']} rc={run['rc']}", flush=True)
    result = summary(runs)
    (out / "results.json").write_text(json.dumps({"runs": runs, "summary": result}, indent=2) + "\n")
    text = report(runs, result)
    (out / "report.md").write_text(text)
    print(text)
    print(f"written: {out.relative_to(ROOT)}")
    bad = [r for r in runs if r["rc"] != 0 or r["changed"] or r["failed"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
