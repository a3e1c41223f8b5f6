#!/usr/bin/env python3
"""keel's test suite, in order: lint, unit, specs, molecule, vm, integration, online.

    scripts/test.sh                         everything (what CI runs)
    scripts/test.sh --part lint             one part (repeatable)
    scripts/test.sh --role common           Molecule scenarios that converge a role (common, hardening_vm)
    scripts/test.sh --scenario hardening_vm one Molecule scenario
    scripts/test.sh --list                  what would run
    scripts/test.sh --jobs 1                scenarios one after another (the default)
    scripts/test.sh --jobs 2                container scenarios in two lanes at once

VM scenarios (molecule/*_vm, part "vm") join the full run only where VMs are fast
(KVM) or with KEEL_VM_TESTS=1: under software emulation one takes 60-90 minutes.
Online scenarios (molecule/*_online, part "online") need the internet (Grafana's
APT repository, GitHub releases) and run only with KEEL_ONLINE_TESTS=1 or when named.
The container scenarios' --check run on the converged hosts (after idempotence; the
one on the fresh hosts always runs) joins with KEEL_CONVERGED_CHECK=1.

Lint, unit and specs run first; ansible-lint and the unit tests (CPU-bound) at idle
CPU priority (a cpu cgroup with cpu.idle, where the controller is writable; else nice
19), beside the steps after them and the scenarios, which leave part of the CPU idle.
Container scenarios run in --jobs lanes (default 1: on this 2-core machine two lanes
were no faster than one, see README). Integration scenarios run after them, alone
among the scenarios (--integration-beside: in a lane of their own beside them;
measured slower here, see README). Each scenario
has its own Docker network and container names. VM scenarios run last, alone.
Scenarios that share a container name are kept in one lane,
in order; lanes are balanced by each scenario's last measured duration (kept in
$KEEL_CACHE/test-durations.json, else scripts/test-durations.json). Output lines of scenarios are prefixed with
the scenario's name when lanes run at once.

Prints a summary with pass/fail and duration per step, writes it to
reports/test-summary.md and keeps each step's full log in .cache/test-logs/.
Exit status: 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("KEEL_VENV", ROOT / ".venv")) / "bin"
LOGS = ROOT / ".cache" / "test-logs"
PARTS = ("lint", "unit", "specs", "molecule", "vm", "integration", "autoscale", "online")
NOTES: list[str] = []
CACHE = Path(os.environ.get("KEEL_CACHE", Path.home() / ".cache" / "keel"))
DURATIONS = CACHE / "test-durations.json"
# Durations measured alone on a 2-core machine: the plan of a machine's first run.
SHIPPED_DURATIONS = ROOT / "scripts" / "test-durations.json"
DEFAULT_SECONDS = {"vm": 1200.0, "other": 400.0}  # a scenario with no figure anywhere
_print_lock = threading.Lock()
NICE = ["nice", "-n", "19"]  # an overlap step's command: the scenarios beside it come first
# The CPU cgroup of the overlap steps (background_cgroup), where the cpu controller is writable.
CGROUP_BASES = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup"))
CGROUP_NAME = "keel-tests-background"
BACKGROUND: list[Path | None] = [None]  # the cgroup of this run's overlap steps (execute_all)


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
    scenario: str = ""
    prefix: str = ""
    log: Path | None = None
    why: list[str] = field(default_factory=list)  # the lines of the log that say why it failed
    attempts: int = 1  # a failed step runs again up to this many times in all; the summary says so
    # runs in a thread of its own, at idle CPU priority (background_cgroup), beside the steps
    # that follow it and the container and integration scenarios, which leave part of the CPU
    # idle (waiting on containers, apt, SSH); the VM scenarios wait for it. A CPU-bound step
    # that need not run first (ansible-lint, unit).
    overlap: bool = False

    @property
    def passed(self) -> bool:
        return self.result.startswith("PASS")


def scenarios() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))


CONVERGED_CHECK_NOTE = ("converged check: the `--check` run on the converged hosts (after idempotence) not run "
                        "(about 2 min over the container scenarios). Run it with KEEL_CONVERGED_CHECK=1.")


def base_configs(name: str) -> list[str]:
    """Molecule's base configs for a scenario: the default (.config/molecule/config.yml: check
    mode on the fresh hosts, converge, idempotence, ...), or with KEEL_CONVERGED_CHECK=1 that and
    .config/molecule/converged-check.yml (a --check run on the converged hosts too). Scenarios
    with a sequence of their own (integration_*, *_vm, *_online) keep it either way."""
    if os.environ.get("KEEL_CONVERGED_CHECK", "0") == "1":
        return ["--base-config", ".config/molecule/config.yml", "--base-config", ".config/molecule/converged-check.yml"]
    own = ROOT / "molecule" / name / "molecule.yml"
    if CONVERGED_CHECK_NOTE not in NOTES and not (own.is_file() and "test_sequence:" in own.read_text()):
        NOTES.append(CONVERGED_CHECK_NOTE)
    return []


def scenario_steps(names: list[str], part: str) -> list[Step]:
    steps = []
    for name in names:
        # --destroy never: on failure the journals are dumped first, then the instances go.
        # It also skips the sequence's first destroy, so leftovers of an aborted run
        # are destroyed explicitly before.
        steps.append(Step(part, f"molecule {name}",
                          ["molecule", *base_configs(name), "test", "-s", name, "--destroy", "never"],
                          before=[["molecule", "destroy", "-s", name]],
                          on_failure=[["__journal__", name], ["molecule", "destroy", "-s", name]],
                          on_success=[["molecule", "destroy", "-s", name]],
                          scenario=name,
                          # A scenario that fails gets a second attempt on fresh instances, except
                          # the VM ones (an hour each under emulation). The summary names the failed
                          # attempt, and why it failed, so a flaky test is seen, not hidden.
                          attempts=1 if name.endswith("_vm") else 2))
    return steps


def vm_lab_step() -> Step:
    """README command 1 with --vm: the four lab hosts as VMs, site.yml over SSH, the
    smoke check; then "up" again, which must change nothing. The VM lab only:
    a container lab that runs is refused by lab.sh, never removed."""
    down = ["python3", "scripts/vm.py", "down", "--lab", "keel-lab"]
    return Step("vm", "lab on VMs (scripts/lab.sh up --vm, twice: the second changes nothing)",
                ["bash", "-c", "scripts/lab.sh up --vm && KEEL_LAB_EXPECT_CHANGED=0 scripts/lab.sh up --vm"],
                before=[down], on_failure=[down], on_success=[down])


def converged_roles(scenario: str) -> set[str]:
    """Roles a scenario's converge.yml applies (`- role: NAME` entries)."""
    path = ROOT / "molecule" / scenario / "converge.yml"
    text = path.read_text() if path.exists() else ""
    return set(re.findall(r"^\s*-\s*role:\s*([A-Za-z0-9_.]+)\s*$", text, re.M))


def _platform_names(scenario: str) -> set[str]:
    """Container/VM names of a scenario (its own platforms, else the shared base's)."""
    import yaml  # from the project's venv

    def names(path: Path) -> set[str] | None:
        data = yaml.safe_load(path.read_text()) or {}
        plats = data.get("platforms")
        return None if plats is None else {str(p.get("name")) for p in plats}

    own = names(ROOT / "molecule" / scenario / "molecule.yml")
    return own if own is not None else (names(ROOT / ".config" / "molecule" / "config.yml") or set())


def conflict_groups(steps: list[Step]) -> list[list[Step]]:
    """Scenarios that share a platform name cannot run at once: one group each, in order."""
    groups: list[tuple[set[str], list[Step]]] = []
    for step in steps:
        names = _platform_names(step.scenario)
        touching = [g for g in groups if g[0] & names]
        merged_names, merged_steps = set(names), []
        for g in touching:
            merged_names |= g[0]
            merged_steps += g[1]
            groups.remove(g)
        merged_steps.append(step)
        merged_steps.sort(key=steps.index)
        groups.append((merged_names, merged_steps))
    return [g[1] for g in groups]


def expected_seconds(step: Step) -> float:
    known: dict = {}
    for source in (SHIPPED_DURATIONS, DURATIONS):  # this machine's own figures win
        with contextlib.suppress(OSError, ValueError):
            known.update(json.loads(source.read_text()))
    if step.scenario in known:
        return float(known[step.scenario])
    return DEFAULT_SECONDS["vm" if step.scenario.endswith("_vm") else "other"]


def lanes(steps: list[Step], jobs: int) -> list[list[Step]]:
    """Longest group first, each to the least loaded lane."""
    result: list[list[Step]] = [[] for _ in range(max(1, jobs))]
    load = [0.0] * len(result)
    groups = sorted(conflict_groups(steps), key=lambda g: -sum(map(expected_seconds, g)))
    for group in groups:
        i = load.index(min(load))
        result[i] += group
        load[i] += sum(map(expected_seconds, group))
    return [lane for lane in result if lane]


def record_durations(steps: list[Step]) -> None:
    try:
        known = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        known = {}
    for s in steps:
        if s.scenario and s.result == "PASS":  # a retried pass would record two runs' time
            known[s.scenario] = round(s.seconds)
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        DURATIONS.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        print(f"[test] could not record durations in {DURATIONS}: {exc}", flush=True)


def vm_tests_by_default() -> bool:
    """VM scenarios join the full run when VMs are fast (KVM) or KEEL_VM_TESTS=1.

    Under software emulation (TCG) every Ansible task on a VM costs 5-9 s (measured
    here), so one VM scenario alone runs 60-90 minutes: more than the whole
    container suite. Then they run only when asked (--part vm, --scenario NAME,
    KEEL_VM_TESTS=1), and the summary says they were left out.
    """
    wanted = os.environ.get("KEEL_VM_TESTS", "auto")
    if wanted in ("0", "1"):
        return wanted == "1"
    accel_file = CACHE / "vm-accel"
    accel = accel_file.read_text().strip() if accel_file.exists() else "unknown"
    if accel == "kvm":
        return True
    NOTES.append(f"vm: not run (VM acceleration here: {accel}; under software emulation a VM scenario "
                 "takes 60-90 min). Run them with `scripts/test.sh --part vm` or KEEL_VM_TESTS=1.")
    return False


def online_tests() -> bool:
    """Scenarios that need the internet (molecule/*_online: Grafana, Loki, Alloy from
    apt.grafana.com, Jaeger and the Prometheus family from GitHub) run only when
    asked: KEEL_ONLINE_TESTS=1, --part online or --scenario NAME."""
    if os.environ.get("KEEL_ONLINE_TESTS", "0") == "1":
        return True
    NOTES.append("online: not run (needs the internet: apt.grafana.com and github.com). Run them on a machine "
                 "with internet with `scripts/test.sh --part online` or KEEL_ONLINE_TESTS=1.")
    return False


def autoscale_tests() -> bool:
    """The autoscaler's lab cases (the paced 2 -> 4 -> 2 load ramp, restart, faults, deploy
    freeze, dry-run, metrics outage: about 30 minutes on the integration_deploy scenario) run
    only when asked: --part autoscale or KEEL_AUTOSCALE_TESTS=1. The default run keeps the
    autoscaler's unit tests, its role in the monitoring scenario (dry-run decisions against a
    real Prometheus) and the quick 2 -> 4 -> 2 load ramp, first in integration_deploy (about 4
    minutes; KEEL_AUTOSCALE_LAB=off leaves it out)."""
    if os.environ.get("KEEL_AUTOSCALE_TESTS", "0") == "1":
        return True
    NOTES.append("autoscale: the autoscaler's lab cases (the paced 2->4->2 load ramp, restart, faults) not run "
                 "(about 30 min; the quick ramp runs in integration_deploy). Run them with "
                 "`scripts/test.sh --part autoscale` or KEEL_AUTOSCALE_TESTS=1.")
    return False


def autoscale_steps() -> list[Step]:
    """integration_deploy's converge with the autoscaler's cases alone (KEEL_AUTOSCALE_LAB=full
    skips the deploy tests and runs test_integration_autoscale_more.py after the ramp)."""
    steps = scenario_steps(["integration_deploy"], "autoscale")
    for step in steps:
        step.name = "molecule integration_deploy (autoscaler lab cases)"
        step.argv = ["env", "KEEL_AUTOSCALE_LAB=full", *step.argv]
        step.attempts = 1
    return steps


def plan(args: argparse.Namespace) -> list[Step]:
    all_scenarios = scenarios()
    role_scenarios = [s for s in all_scenarios
                      if not s.startswith("integration") and not s.endswith(("_vm", "_online"))]
    online_scenarios = [s for s in all_scenarios if s.endswith("_online")]
    vm_scenarios = [s for s in all_scenarios if s.endswith("_vm")]
    integration = [s for s in all_scenarios if s.startswith("integration")]
    if args.scenario:
        unknown = set(args.scenario) - set(all_scenarios)
        if unknown:
            sys.exit(f"unknown scenario(s) {sorted(unknown)}; known: {all_scenarios}")
        return scenario_steps(args.scenario, "molecule")
    if args.role:
        chosen = [s for s in all_scenarios if any(s == r or s.startswith(r + "_") or r in converged_roles(s)
                                                  for r in args.role)]
        if not chosen:
            sys.exit(f"no Molecule scenario for role(s) {args.role}; known: {all_scenarios}")
        return scenario_steps(chosen, "molecule")
    parts = args.part or [p for p in PARTS
                          if (p != "vm" or vm_tests_by_default()) and (p != "online" or online_tests())
                          and (p != "autoscale" or autoscale_tests())]
    steps: list[Step] = []
    for part in PARTS:
        if part not in parts:
            continue
        if part == "lint":
            steps += [
                Step(part, "yamllint", ["yamllint", "--strict", "."]),
                Step(part, "ruff", ["ruff", "check", "."]),
                # single-threaded (92 s alone at stop 26), beside the scenarios (Step.overlap)
                Step(part, "ansible-lint", ["ansible-lint", "--profile", "production", "--strict"],
                     overlap=True, prefix="ansible-lint "),
                # the forges' pipeline files against their published schemas (bundled: no network)
                Step(part, "pipeline schemas", ["bash", "-c",
                                                "check-jsonschema --builtin-schema vendor.github-workflows "
                                                ".github/workflows/*.yml && check-jsonschema --builtin-schema "
                                                "vendor.gitlab-ci .gitlab-ci.yml"]),
            ]
        elif part == "unit":
            # One worker per CPU (pytest-xdist), a test file per worker at a time (its
            # module fixtures start once); the slowest tests are listed for the next cut.
            # 600 s and 1,140 CPU-s alone (stop 28): beside the scenarios (Step.overlap).
            steps.append(Step(part, "pytest tests/unit", ["pytest", "-q", "-n", "auto", "--dist", "loadfile",
                                                          "--durations", "15", "tests/unit"],
                              overlap=True, prefix="unit "))
        elif part == "specs":
            steps.append(Step(part, "argument specs = defaults",
                              ["python", "scripts/check_argument_specs.py"]))
        elif part == "molecule":
            steps += scenario_steps(role_scenarios, part)
        elif part == "vm":
            steps += scenario_steps(vm_scenarios, part)
            steps.append(vm_lab_step())
        elif part == "online":
            steps += scenario_steps(online_scenarios, part)
        elif part == "autoscale":
            steps += autoscale_steps()
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


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def run_logged(argv: list[str], log: Path, prefix: str = "") -> int:
    with log.open("a") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        # No step reads input; ansible-playbook refuses a non-blocking stdin (a background shell's).
        proc = subprocess.Popen(argv, cwd=ROOT, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        for line in proc.stdout or []:
            out.write(line)
            if os.environ.get("KEEL_TEST_QUIET") != "1":
                with _print_lock:
                    sys.stdout.write(f"  {prefix}| " + line)
                    sys.stdout.flush()
        return proc.wait()


def dump_journal(scenario: str, log: Path, prefix: str = "") -> None:
    """Print the journal of every instance of a failed scenario (before destroy)."""
    candidates = sorted(Path.home().glob(f".ansible/tmp/molecule.*.{scenario}/inventory"),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        say(f"[test] no inventory found for {scenario}; cannot dump journals")
        return
    say(f"[test] journals of {scenario}'s instances:")
    run_logged(["ansible", "all", "-i", str(candidates[-1]), "-m", "ansible.builtin.shell",
                "-a", "systemctl --failed --no-pager; journalctl -b --no-pager -n 200 -o short-precise"], log, prefix)


def background_cgroup() -> Path | None:
    """A CPU cgroup of idle priority (cpu.idle 1, else the lowest weight) for the overlap steps:
    their processes then run only on CPU the scenarios leave. nice alone is not enough: Ansible's
    worker processes start sessions of their own (os.setsid), and with the kernel's autogroups
    (sched_autogroup_enabled) each session gets an equal share of the CPU whatever its nice
    (measured at stop 28: the app scenario took 566 s beside niced unit tests, 249 s alone).
    Processes in a cgroup of their own are not autogrouped. Needs write access to the cpu
    controller (root, cgroup v1 or v2); None where there is none (then nice only)."""
    for base in CGROUP_BASES:
        if not (base / "cgroup.procs").is_file():
            continue
        group = base / CGROUP_NAME
        try:
            if (base / "cgroup.controllers").is_file():  # v2: the children's cpu files need this
                if "cpu" not in (base / "cgroup.controllers").read_text().split():
                    continue
                with contextlib.suppress(OSError):
                    (base / "cgroup.subtree_control").write_text("+cpu")
            group.mkdir(exist_ok=True)
            for name, value in (("cpu.idle", "1"), ("cpu.shares", "2"), ("cpu.weight", "1")):
                if (group / name).is_file():
                    (group / name).write_text(value)
                    return group
        except OSError:
            continue
    return None


def background_argv(argv: list[str], group: Path | None) -> list[str]:
    """An overlap step's command: niced, and in the idle cgroup where there is one."""
    if group is None:
        return NICE + argv
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs"), *NICE, *argv]


def execute(step: Step) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / (re.sub(r"[^a-zA-Z0-9_.-]+", "_", step.name) + ".log")
    log.write_text("")
    step.log = log
    say(f"\n[test] == {step.part}: {step.name}")
    t0 = time.monotonic()
    failed_before: list[str] = []
    for attempt in range(1, step.attempts + 1):
        if attempt > 1:
            say(f"[test] {step.name}: attempt {attempt} of {step.attempts} (attempt {attempt - 1} failed)")
            with log.open("a") as out:
                out.write(f"\n[test] ===== attempt {attempt} of {step.attempts} =====\n")
        start = log.stat().st_size
        rc = 0
        for pre in step.before:
            rc = rc or run_logged(pre, log, step.prefix)
        rc = rc or run_logged(background_argv(step.argv, BACKGROUND[0]) if step.overlap else step.argv,
                              log, step.prefix)
        if rc:  # read before the journals are appended: their lines are not the reason
            step.why = failure_excerpt(log, 40, start)
        follow = step.on_failure if rc else step.on_success
        for extra in follow:
            if extra[0] == "__journal__":
                dump_journal(extra[1], log, step.prefix)
            else:
                run_logged(extra, log, step.prefix)
        if rc == 0:
            break
        failed_before.append(f"attempt {attempt}: " + "; ".join(headline(step.why)))
    step.seconds = time.monotonic() - t0
    where = log.relative_to(ROOT)
    if rc:
        step.result = f"FAIL (rc {rc}, log {where})"
    elif failed_before:
        first = failed_before[0][:300].replace("|", "\\|")  # it goes into a table cell
        step.result = f"PASS on attempt {len(failed_before) + 1} (failed first, log {where}: {first})"
    else:
        step.result = "PASS"
    say(f"[test] {step.name}: {step.result} in {step.seconds:.0f}s")


def exclusive(step: Step) -> bool:
    """Scenarios that run alone, after everything else: VM scenarios (under software
    emulation they slow everything beside them several times over, measured: a
    200 s container scenario took 1538 s next to two VMs)."""
    return step.scenario.endswith("_vm")


def beside(step: Step) -> bool:
    """Integration scenarios (integration_*, and the autoscale part's run of one). By default
    they run after the container scenarios, alone, one after another (they share their hosts);
    --integration-beside runs them in a lane of their own beside the container scenarios.
    Measured on this 2-core machine (stop 24): beside them, the container scenarios ran 2 to
    3.5 times slower while the integration scenario ran (its playbooks are CPU-bound, not only
    waiting), the whole run was no shorter, and the load ramp saw one failed request."""
    return step.scenario.startswith("integration")


def execute_all(steps: list[Step], jobs: int, integration_alone: bool = True) -> None:
    """Non-scenario steps in order, an overlap step beside those after it and beside the
    scenarios (container and integration: idle CPU priority, see background_cgroup); the
    integration scenarios after the container ones (or beside them: integration_alone False);
    the overlap steps end before the exclusive (VM) scenarios, which run alone."""
    overlapping: list[threading.Thread] = []
    if any(s.overlap for s in steps):
        BACKGROUND[0] = background_cgroup()
        say(f"[test] ansible-lint and the unit tests at idle CPU priority: cgroup {BACKGROUND[0]}"
            if BACKGROUND[0] else "[test] ansible-lint and the unit tests at nice 19 (no cpu cgroup here)")
    for step in steps:
        if not step.scenario:
            if step.overlap:
                overlapping.append(threading.Thread(target=execute, args=(step,), name=step.name))
                overlapping[-1].start()
            else:
                execute(step)
    lane_steps = [s for s in steps if s.scenario and not exclusive(s) and not beside(s)]
    side = [s for s in steps if s.scenario and beside(s)]
    thread = None
    if side and lane_steps and not integration_alone:
        say("[test] beside the container scenarios: " + ", ".join(s.name for s in side))
        for step in side:
            step.prefix = f"{step.scenario} "
        thread = threading.Thread(target=lambda: [execute(s) for s in side], name="beside")
        thread.start()
        side = []
    run_lanes(lane_steps, jobs)
    if thread:
        thread.join()
    for step in side:
        execute(step)
    for thread_ in overlapping:
        if thread_.is_alive():
            say(f"[test] waiting for {thread_.name} (beside the scenarios) to end")
        thread_.join()
    for step in steps:
        if step.scenario and exclusive(step):
            execute(step)


def run_lanes(scenario_steps_: list[Step], jobs: int) -> None:
    plan_ = lanes(scenario_steps_, jobs)
    if len(plan_) <= 1:
        for step in scenario_steps_:
            execute(step)
        return
    for i, lane in enumerate(plan_, 1):
        say(f"[test] lane {i}: " + ", ".join(s.scenario for s in lane))
        for step in lane:
            step.prefix = f"{step.scenario} "
    threads = [threading.Thread(target=lambda lane=lane: [execute(s) for s in lane], name=f"lane{i}")
               for i, lane in enumerate(plan_, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# Lines that say why a step failed: Ansible's fatal/failed task results and the
# task that produced them, pytest's failure lines, molecule's CRITICAL/ERROR.
_WHY = re.compile(r"^(fatal:|failed:|FAILED |E  |ERROR|CRITICAL|.*Error: |.*FAILED \[)")
# Molecule prints this on every run that has no 'default' scenario: not a reason.
_NOT_WHY = re.compile(r"molecule/default/molecule\.yml' glob failed")
# The lines that name the failure itself (before molecule's closing summary).
_FIRST_WHY = re.compile(r"^(fatal:|failed:|FAILED |E  |.*FAILED \[)")


def failure_excerpt(log: Path, limit: int = 40, start: int = 0) -> list[str]:
    """The last `limit` lines of a failed step's log (from byte `start`) that say why
    it failed. CI keeps only the end of the output: these go after the summary table."""
    if not log.exists():
        return []
    with log.open("rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    why: list[str] = []
    for i, line in enumerate(lines):
        bare = re.sub(r"^\s*(\S+ )?\| ", "", line)  # lines copied from a sub-run keep their own text
        if not _WHY.match(bare) or _NOT_WHY.search(bare):
            continue
        task = next((lines[j] for j in range(i - 1, max(i - 30, -1), -1) if lines[j].startswith("TASK [")), "")
        if task and (not why or why[-1] != task):
            why.append(task)
        why.append(line[:400])
    return why[-limit:]


def headline(why: list[str], limit: int = 6) -> list[str]:
    """The few lines of an excerpt for a one-line cell: the failure lines themselves
    (failed task, pytest's FAILED/E lines) before molecule's closing CRITICAL lines."""
    bare = [re.sub(r"^\s*(\S+ )?\| ", "", line) for line in why]
    first = [line for line, b in zip(why, bare, strict=True) if _FIRST_WHY.match(b)]
    return (first or why)[-limit:]


def summary(steps: list[Step], total: float) -> str:
    lines = ["| part | step | result | seconds |", "|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s.part} | {s.name} | {s.result} | {s.seconds:.0f} |")
    failed = sum(1 for s in steps if not s.passed)
    lines.append(f"\n{len(steps) - failed}/{len(steps)} steps passed in {total:.0f}s")
    lines += [f"\n{note}" for note in NOTES]
    for s in steps:
        if not s.passed and s.result != "not run" and s.log:
            lines.append(f"\nwhy {s.name} failed (from {s.log.relative_to(ROOT)}):")
            lines += ["    " + line for line in s.why] or ["    (no failure line found: read the log)"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=PARTS)
    parser.add_argument("--role", action="append")
    parser.add_argument("--scenario", action="append")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("KEEL_TEST_JOBS", "1")),
                        help="container scenarios run in this many lanes at once (default 1, env KEEL_TEST_JOBS)")
    parser.add_argument("--integration-beside", action="store_true",
                        default=os.environ.get("KEEL_TEST_INTEGRATION_BESIDE") == "1",
                        help="integration scenarios beside the container scenarios, not after them "
                             "(env KEEL_TEST_INTEGRATION_BESIDE=1)")
    parser.add_argument("--keep-going", action="store_true", default=True,
                        help="run every step even after a failure (default)")
    args = parser.parse_args()
    steps = plan(args)
    for note in NOTES:
        print(f"[test] {note}", flush=True)
    if args.list:
        for s in steps:
            print(f"{s.part:12} {s.name:32} {shlex.join(s.argv)}")
        lane_steps = [s for s in steps if s.scenario and not exclusive(s) and not beside(s)]
        for i, lane in enumerate(lanes(lane_steps, args.jobs), 1):
            print(f"lane {i}: " + ", ".join(f"{s.scenario} (~{expected_seconds(s):.0f}s)" for s in lane))
        side = [s.scenario for s in steps if s.scenario and beside(s)]
        if side:
            where = "beside the lanes" if args.integration_beside and lane_steps else "after the lanes"
            print(f"{where}: " + ", ".join(side))
        alone = [s.scenario for s in steps if s.scenario and exclusive(s)]
        if alone:
            print("then alone: " + ", ".join(alone))
        return 0
    t0 = time.monotonic()
    execute_all(steps, args.jobs, not args.integration_beside)
    record_durations(steps)
    text = summary(steps, time.monotonic() - t0)
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "test-summary.md").write_text(f"# Test summary\n\n{text}\n")
    print("\n" + text, flush=True)
    return 0 if all(s.passed for s in steps) and steps else 1


if __name__ == "__main__":
    sys.exit(main())
