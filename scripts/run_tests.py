#!/usr/bin/env python3
"""keel's test suite, in order: lint, unit, specs, molecule, integration.

    scripts/test.sh                         everything (what CI runs)
    scripts/test.sh --part lint             one part (repeatable)
    scripts/test.sh --role common           Molecule scenarios of one role (common, common_vm)
    scripts/test.sh --scenario common_vm    one Molecule scenario
    scripts/test.sh --list                  what would run

Prints a summary with pass/fail and duration per step, writes it to
reports/test-summary.md and keeps each step's full log in .cache/test-logs/.
Exit status: 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("KEEL_VENV", ROOT / ".venv")) / "bin"
LOGS = ROOT / ".cache" / "test-logs"
PARTS = ("lint", "unit", "specs", "molecule", "integration")


@dataclass
class Step:
    part: str
    name: str
    argv: list[str]
    before: list[list[str]] = field(default_factory=list)
    on_failure: list[list[str]] = field(default_factory=list)
    on_success: list[list[str]] = field(default_factory=list)
    result: str = "not run"
    seconds: float = 0.0


def scenarios() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))


def scenario_steps(names: list[str], part: str) -> list[Step]:
    steps = []
    for name in names:
        # --destroy never: on failure the journals are dumped first, then the instances go.
        # It also skips the sequence's first destroy, so leftovers of an aborted run
        # are destroyed explicitly before.
        steps.append(Step(part, f"molecule {name}",
                          ["molecule", "test", "-s", name, "--destroy", "never"],
                          before=[["molecule", "destroy", "-s", name]],
                          on_failure=[["__journal__", name], ["molecule", "destroy", "-s", name]],
                          on_success=[["molecule", "destroy", "-s", name]]))
    return steps


def plan(args: argparse.Namespace) -> list[Step]:
    all_scenarios = scenarios()
    role_scenarios = [s for s in all_scenarios if not s.startswith("integration")]
    integration = [s for s in all_scenarios if s.startswith("integration")]
    if args.scenario:
        unknown = set(args.scenario) - set(all_scenarios)
        if unknown:
            sys.exit(f"unknown scenario(s) {sorted(unknown)}; known: {all_scenarios}")
        return scenario_steps(args.scenario, "molecule")
    if args.role:
        chosen = [s for s in all_scenarios if any(s == r or s.startswith(r + "_") for r in args.role)]
        if not chosen:
            sys.exit(f"no Molecule scenario for role(s) {args.role}; known: {all_scenarios}")
        return scenario_steps(chosen, "molecule")
    parts = args.part or list(PARTS)
    steps: list[Step] = []
    for part in PARTS:
        if part not in parts:
            continue
        if part == "lint":
            steps += [
                Step(part, "yamllint", ["yamllint", "--strict", "."]),
                Step(part, "ruff", ["ruff", "check", "."]),
                Step(part, "ansible-lint", ["ansible-lint", "--profile", "production", "--strict"]),
            ]
        elif part == "unit":
            steps.append(Step(part, "pytest tests/unit", ["pytest", "-q", "tests/unit"]))
        elif part == "specs":
            steps.append(Step(part, "argument specs = defaults",
                              ["python", "scripts/check_argument_specs.py"]))
        elif part == "molecule":
            steps += scenario_steps(role_scenarios, part)
        elif part == "integration":
            if integration:
                steps += scenario_steps(integration, part)
            else:
                print("[test] integration: no integration_* scenario exists yet", flush=True)
    return steps


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("COLUMNS", "160")
    e["ANSIBLE_FORCE_COLOR"] = "0"
    e["PY_COLORS"] = "0"
    e["NO_COLOR"] = "1"
    return e


def run_logged(argv: list[str], log: Path) -> int:
    with log.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        for line in proc.stdout or []:
            out.write(line)
            if os.environ.get("KEEL_TEST_QUIET") != "1":
                sys.stdout.write("  | " + line)
                sys.stdout.flush()
        return proc.wait()


def dump_journal(scenario: str, log: Path) -> None:
    """Print the journal of every instance of a failed scenario (before destroy)."""
    candidates = sorted(Path.home().glob(f".ansible/tmp/molecule.*.{scenario}/inventory"),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        print(f"[test] no inventory found for {scenario}; cannot dump journals", flush=True)
        return
    print(f"[test] journals of {scenario}'s instances:", flush=True)
    run_logged(["ansible", "all", "-i", str(candidates[-1]), "-m", "ansible.builtin.shell",
                "-a", "systemctl --failed --no-pager; journalctl -b --no-pager -n 200 -o short-precise"], log)


def execute(step: Step) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / (re.sub(r"[^a-zA-Z0-9_.-]+", "_", step.name) + ".log")
    log.write_text("")
    print(f"\n[test] == {step.part}: {step.name}", flush=True)
    t0 = time.monotonic()
    rc = 0
    for pre in step.before:
        rc = rc or run_logged(pre, log)
    rc = rc or run_logged(step.argv, log)
    follow = step.on_failure if rc else step.on_success
    for extra in follow:
        if extra[0] == "__journal__":
            dump_journal(extra[1], log)
        else:
            run_logged(extra, log)
    step.seconds = time.monotonic() - t0
    step.result = "PASS" if rc == 0 else f"FAIL (rc {rc}, log {log.relative_to(ROOT)})"
    print(f"[test] {step.name}: {step.result} in {step.seconds:.0f}s", flush=True)


def summary(steps: list[Step], total: float) -> str:
    lines = ["| part | step | result | seconds |", "|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s.part} | {s.name} | {s.result} | {s.seconds:.0f} |")
    failed = sum(1 for s in steps if s.result != "PASS")
    lines.append(f"\n{len(steps) - failed}/{len(steps)} steps passed in {total:.0f}s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=PARTS)
    parser.add_argument("--role", action="append")
    parser.add_argument("--scenario", action="append")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--keep-going", action="store_true", default=True,
                        help="run every step even after a failure (default)")
    args = parser.parse_args()
    steps = plan(args)
    if args.list:
        for s in steps:
            print(f"{s.part:12} {s.name:32} {shlex.join(s.argv)}")
        return 0
    t0 = time.monotonic()
    for step in steps:
        execute(step)
    text = summary(steps, time.monotonic() - t0)
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "test-summary.md").write_text(f"# Test summary\n\n{text}\n")
    print("\n" + text, flush=True)
    return 0 if all(s.result == "PASS" for s in steps) and steps else 1


if __name__ == "__main__":
    sys.exit(main())
