"""The test runner's lane planning: no two scenarios that share a container run at once."""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path

import run_tests


def _steps(names):
    return run_tests.scenario_steps(names, "molecule")


def _fake_platforms(monkeypatch, table):
    monkeypatch.setattr(run_tests, "_platform_names", lambda s: set(table[s]))
    monkeypatch.setattr(run_tests, "SHIPPED_DURATIONS", Path("/nonexistent/durations.json"))


def test_scenarios_sharing_a_container_name_stay_in_one_lane_in_order(monkeypatch, tmp_path):
    _fake_platforms(monkeypatch, {"a": ["lb1"], "b": ["x"], "c": ["lb1", "app1"], "d": ["app1"]})
    monkeypatch.setattr(run_tests, "DURATIONS", tmp_path / "none.json")
    plan = run_tests.lanes(_steps(["a", "b", "c", "d"]), 2)
    by_lane = [[s.scenario for s in lane] for lane in plan]
    assert ["a", "c", "d"] in by_lane
    assert ["b"] in by_lane


def test_lanes_are_balanced_by_recorded_durations(monkeypatch, tmp_path):
    _fake_platforms(monkeypatch, {n: [n] for n in "abcd"})
    durations = tmp_path / "d.json"
    durations.write_text(json.dumps({"a": 1000, "b": 600, "c": 500, "d": 100}))
    monkeypatch.setattr(run_tests, "DURATIONS", durations)
    plan = run_tests.lanes(_steps(list("abcd")), 2)
    loads = sorted(sum(run_tests.expected_seconds(s) for s in lane) for lane in plan)
    assert loads == [1100, 1100]


def test_one_job_gives_one_lane(monkeypatch, tmp_path):
    _fake_platforms(monkeypatch, {n: [n] for n in "abc"})
    monkeypatch.setattr(run_tests, "DURATIONS", tmp_path / "none.json")
    assert len(run_tests.lanes(_steps(list("abc")), 1)) == 1


def test_real_scenarios_platform_names_are_read_from_their_files():
    assert run_tests._platform_names("hardening") == {"osh12", "osh13"}
    assert "lb1" in run_tests._platform_names("integration_deploy")


def test_a_scenario_without_platforms_of_its_own_gets_the_shared_bases(monkeypatch, tmp_path):
    base = (run_tests.ROOT / ".config" / "molecule" / "config.yml").read_text()
    (tmp_path / "molecule" / "bare").mkdir(parents=True)
    (tmp_path / "molecule" / "bare" / "molecule.yml").write_text("---\nprovisioner:\n  name: ansible\n")
    (tmp_path / ".config" / "molecule").mkdir(parents=True)
    (tmp_path / ".config" / "molecule" / "config.yml").write_text(base)
    monkeypatch.setattr(run_tests, "ROOT", tmp_path)
    assert run_tests._platform_names("bare") == {"debian12", "debian13"}


def test_passed_scenarios_update_the_recorded_durations(monkeypatch, tmp_path):
    durations = tmp_path / "d.json"
    monkeypatch.setattr(run_tests, "DURATIONS", durations)
    monkeypatch.setattr(run_tests, "CACHE", tmp_path)
    steps = _steps(["a", "b"])
    steps[0].result, steps[0].seconds = "PASS", 12.4
    steps[1].result, steps[1].seconds = "FAIL (rc 1)", 99
    run_tests.record_durations(steps)
    assert json.loads(durations.read_text()) == {"a": 12}


def test_integration_beside_runs_beside_the_lanes_and_vm_scenarios_alone_at_the_end(monkeypatch):
    events: list[tuple[str, str]] = []
    lane_started = threading.Event()

    def execute(step):
        events.append(("start", step.scenario))
        if step.scenario == "a":
            lane_started.set()
        if step.scenario == "integration_x":  # still running when the lane starts
            assert lane_started.wait(10)
        events.append(("end", step.scenario))

    monkeypatch.setattr(run_tests, "execute", execute)
    monkeypatch.setattr(run_tests, "lanes", lambda steps, jobs: [steps])
    run_tests.execute_all(_steps(["integration_x", "a", "a_vm", "b"]), 1, integration_alone=False)
    assert events.index(("start", "a")) < events.index(("end", "integration_x"))
    assert events[-2:] == [("start", "a_vm"), ("end", "a_vm")]  # after everything, alone
    assert {e[1] for e in events} == {"integration_x", "a", "a_vm", "b"}


def test_by_default_integration_runs_after_the_lanes_then_vm_scenarios(monkeypatch):
    order = []
    monkeypatch.setattr(run_tests, "execute", lambda step: order.append(step.scenario))
    monkeypatch.setattr(run_tests, "lanes", lambda steps, jobs: [steps])
    run_tests.execute_all(_steps(["integration_x", "a", "a_vm", "b"]), 2)
    assert order == ["a", "b", "integration_x", "a_vm"]


def test_no_role_scenario_shares_a_container_name_with_an_integration_scenario():
    """What lets the integration lane run beside the others (--integration-beside)."""
    names = {s: run_tests._platform_names(s) for s in run_tests.scenarios()}
    for integration in (s for s in names if s.startswith("integration")):
        for other, theirs in names.items():
            if not other.startswith("integration") and not other.endswith("_vm"):
                assert not names[integration] & theirs, (integration, other, names[integration] & theirs)


def test_role_selection_finds_every_scenario_that_converges_the_role():
    assert run_tests.converged_roles("hardening") == {"common", "ssh_hardening", "os_hardening"}
    assert run_tests.converged_roles("hardening_vm") == {"common", "ssh_hardening", "firewall", "os_hardening"}
    assert run_tests.converged_roles("no-such-scenario") == set()


def test_vm_scenarios_join_the_default_run_only_when_vms_are_fast(monkeypatch, tmp_path):
    monkeypatch.setattr(run_tests, "CACHE", tmp_path)
    monkeypatch.setattr(run_tests, "NOTES", [])
    monkeypatch.delenv("KEEL_VM_TESTS", raising=False)
    (tmp_path / "vm-accel").write_text("tcg\n")
    assert run_tests.vm_tests_by_default() is False
    assert "scripts/test.sh --part vm" in run_tests.NOTES[0]
    (tmp_path / "vm-accel").write_text("kvm\n")
    assert run_tests.vm_tests_by_default() is True
    monkeypatch.setenv("KEEL_VM_TESTS", "0")
    assert run_tests.vm_tests_by_default() is False
    (tmp_path / "vm-accel").write_text("tcg\n")
    monkeypatch.setenv("KEEL_VM_TESTS", "1")
    assert run_tests.vm_tests_by_default() is True


def test_failure_excerpt_names_the_failed_task_and_pytest_failure(tmp_path):
    log = tmp_path / "step.log"
    log.write_text("\n".join([
        "TASK [prometheus : Reload] ****",
        "ok: [mon1]",
        "TASK [prometheus : Check the reload took] ****",
        "  mon1 | fatal: [mon1]: FAILED! => {\"msg\": \"reloadConfigSuccess false\"}",
        "collected 3 items",
        "tests/test_m.py::test_up PASSED [ 33%]",
        "tests/test_m.py::test_alert FAILED [ 66%]",
        "E       AssertionError: 0",
        "all good here",
    ]))
    why = run_tests.failure_excerpt(log)
    assert why[0] == "TASK [prometheus : Check the reload took] ****"
    assert any("reloadConfigSuccess false" in line for line in why)
    assert "tests/test_m.py::test_alert FAILED [ 66%]" in why
    assert "E       AssertionError: 0" in why
    assert not any("PASSED" in line or "all good" in line or "ok: [mon1]" in line for line in why)


def test_summary_ends_with_why_a_step_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(run_tests, "ROOT", tmp_path)
    log = tmp_path / "m.log"
    ok = run_tests.Step("molecule", "molecule a", ["true"], result="PASS")
    bad = run_tests.Step("molecule", "molecule b", ["false"], result="FAIL (rc 1)", log=log,
                         why=["fatal: [mon1]: FAILED! => {}"])
    text = run_tests.summary([ok, bad], 10)
    assert text.splitlines()[-2:] == ["why molecule b failed (from m.log):", "    fatal: [mon1]: FAILED! => {}"]


def _script_step(tmp_path, monkeypatch, script: str, attempts: int):
    monkeypatch.setattr(run_tests, "ROOT", tmp_path)
    monkeypatch.setattr(run_tests, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(run_tests, "say", lambda text: None)
    counter = tmp_path / "count"
    runner = tmp_path / "run.sh"
    runner.write_text(f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n" + script)
    step = run_tests.Step("molecule", "molecule flaky", ["bash", str(runner)], attempts=attempts,
                          on_failure=[["echo", "Error: journal noise is not the reason"]])
    run_tests.execute(step)
    return step, int(counter.read_text())


def test_a_step_that_fails_once_passes_on_its_second_attempt_and_says_so(tmp_path, monkeypatch):
    step, runs = _script_step(tmp_path, monkeypatch,
                              'if [ "$n" = 1 ]; then echo "E   AssertionError: flaked"; exit 1; fi\n', 2)
    assert runs == 2 and step.passed
    assert step.result.startswith("PASS on attempt 2") and "AssertionError: flaked" in step.result
    assert "journal noise" not in step.result


def test_a_step_that_fails_every_attempt_fails_with_the_reason(tmp_path, monkeypatch):
    step, runs = _script_step(tmp_path, monkeypatch, 'echo "fatal: [h]: FAILED! => try $n"; exit 2\n', 2)
    assert runs == 2 and not step.passed and step.result.startswith("FAIL (rc 2")
    assert step.why == ["fatal: [h]: FAILED! => try 2"]


def test_vm_scenarios_get_one_attempt_container_scenarios_two():
    vm, box = run_tests.scenario_steps(["hardening_vm", "monitoring"], "molecule")
    assert (vm.attempts, box.attempts) == (1, 2)


def test_retried_pass_cell_names_the_failure_before_molecule_s_closing_lines(tmp_path, monkeypatch):
    step, runs = _script_step(tmp_path, monkeypatch, "\n".join([
        'if [ "$n" = 1 ]; then',
        "  echo \"CRITICAL 'molecule/default/molecule.yml' glob failed.  Exiting.\"",
        '  echo "tests/test_m.py::test_alert FAILED [ 50%]"',
        '  echo "E       assert [] == [1]"',
        *[f'  echo "CRITICAL Ansible return code was 1, command was: step {i}"' for i in range(8)],
        "  exit 1",
        "fi",
    ]) + "\n", 2)
    assert runs == 2 and step.passed
    assert "test_alert FAILED" in step.result and "assert [] == [1]" in step.result
    assert "glob failed" not in step.result and "return code was 1" not in step.result


def test_the_vm_part_brings_the_lab_up_on_vms_twice_and_takes_it_down():
    steps = run_tests.plan(run_tests.argparse.Namespace(scenario=None, role=None, part=["vm"]))
    lab = [s for s in steps if "lab.sh up --vm" in " ".join(s.argv)]
    assert len(lab) == 1 and not lab[0].scenario  # runs alone, before the VM scenarios
    command = lab[0].argv[-1]
    assert command.index("lab.sh up --vm") < command.index("KEEL_LAB_EXPECT_CHANGED=0 scripts/lab.sh up --vm")
    down = ["python3", "scripts/vm.py", "down", "--lab", "keel-lab"]
    assert lab[0].before == lab[0].on_success == lab[0].on_failure == [down]


def test_overlap_steps_run_beside_the_scenarios_and_end_before_the_vm_ones(monkeypatch):
    events: list[tuple[str, str]] = []
    started = {name: threading.Event() for name in ("unit", "a", "integration_b")}

    def execute(step):
        name = step.scenario or step.name
        events.append(("start", name))
        if name in started:
            started[name].set()
        if name == "lint":  # still running when the unit tests and both scenarios start
            assert all(event.wait(10) for event in started.values())
        events.append(("end", name))

    monkeypatch.setattr(run_tests, "execute", execute)
    monkeypatch.setattr(run_tests, "lanes", lambda steps, jobs: [steps])
    monkeypatch.setattr(run_tests, "say", lambda text: None)
    monkeypatch.setattr(run_tests, "background_cgroup", lambda: None)
    steps = [run_tests.Step("lint", "lint", ["true"], overlap=True), run_tests.Step("unit", "unit", ["true"]),
             *_steps(["a", "integration_b", "c_vm"])]
    run_tests.execute_all(steps, 1)
    for name in ("unit", "a", "integration_b"):
        assert events.index(("start", name)) < events.index(("end", "lint"))
    assert events.index(("end", "a")) < events.index(("start", "integration_b"))  # one after the other
    # the VM scenario (software emulation: it slows everything beside it) waits for the overlap step
    assert events[-2:] == [("start", "c_vm"), ("end", "c_vm")]
    lint = run_tests.plan(argparse.Namespace(scenario=None, role=None, part=["lint", "unit"]))
    assert [s.name for s in lint if s.overlap] == ["ansible-lint", "pytest tests/unit"]


def test_an_overlap_step_runs_niced_in_the_idle_cgroup_and_the_others_do_not(tmp_path, monkeypatch):
    monkeypatch.setattr(run_tests, "ROOT", tmp_path)
    monkeypatch.setattr(run_tests, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(run_tests, "say", lambda text: None)
    group = tmp_path / "cgroup"
    group.mkdir()
    monkeypatch.setattr(run_tests, "BACKGROUND", [group])
    for overlap, niceness in ((True, 19), (False, os.nice(0))):
        (group / "cgroup.procs").write_text("")
        step = run_tests.Step("unit", "niceness", ["sh", "-c", "echo pid $$; nice"], overlap=overlap)
        run_tests.execute(step)
        lines = step.log.read_text().splitlines()
        assert step.passed and lines[-1] == str(niceness)
        # the overlap step's process joined the cgroup (it is that process: exec), the others did not
        assert (group / "cgroup.procs").read_text().split() == ([lines[-2].split()[1]] if overlap else [])


def test_the_idle_cgroup_is_made_where_the_cpu_controller_is_writable(tmp_path, monkeypatch):
    v1, v2, none = tmp_path / "v1", tmp_path / "v2", tmp_path / "none"
    for base in (v1, v2):
        base.mkdir()
        (base / "cgroup.procs").write_text("")
        (base / run_tests.CGROUP_NAME).mkdir()
    (v1 / run_tests.CGROUP_NAME / "cpu.idle").write_text("0")
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (v2 / run_tests.CGROUP_NAME / "cpu.weight").write_text("100")
    monkeypatch.setattr(run_tests, "CGROUP_BASES", (none, v1))
    assert run_tests.background_cgroup() == v1 / run_tests.CGROUP_NAME
    assert (v1 / run_tests.CGROUP_NAME / "cpu.idle").read_text() == "1"
    monkeypatch.setattr(run_tests, "CGROUP_BASES", (v2,))
    assert run_tests.background_cgroup() == v2 / run_tests.CGROUP_NAME
    assert (v2 / run_tests.CGROUP_NAME / "cpu.weight").read_text() == "1"
    assert (v2 / "cgroup.subtree_control").read_text() == "+cpu"
    (v2 / "cgroup.controllers").write_text("cpuset io memory pids\n")  # no cpu controller: nice only
    monkeypatch.setattr(run_tests, "CGROUP_BASES", (none, v2))
    assert run_tests.background_cgroup() is None


def test_the_converged_check_is_on_request_and_its_sequence_is_the_default_plus_that_check(monkeypatch):
    import yaml

    monkeypatch.setattr(run_tests, "NOTES", [])
    monkeypatch.delenv("KEEL_CONVERGED_CHECK", raising=False)
    assert _steps(["a"])[0].argv[:2] == ["molecule", "test"]
    assert run_tests.NOTES == [run_tests.CONVERGED_CHECK_NOTE]
    monkeypatch.setattr(run_tests, "NOTES", [])
    run_tests.scenario_steps(["integration_deploy", "hardening_vm"], "integration")  # sequences of their own
    assert run_tests.NOTES == []
    monkeypatch.setenv("KEEL_CONVERGED_CHECK", "1")
    argv = _steps(["a"])[0].argv
    configs = [argv[i + 1] for i, a in enumerate(argv) if a == "--base-config"]
    assert configs == [".config/molecule/config.yml", ".config/molecule/converged-check.yml"]
    base, extra = (yaml.safe_load((run_tests.ROOT / c).read_text())["scenario"]["test_sequence"] for c in configs)
    after = base.index("idempotence") + 1
    assert extra == [*base[:after], "check", *base[after:]]
    assert base.count("check") == 1 and base.index("check") < base.index("converge")  # the fresh hosts' dry run
