"""The Prometheus rules the role ships: promtool checks and unit-tests them, and
every alert has a unit test (a new alert without one fails here).

promtool is the real one, from the test mirror's Prometheus archives (the
previous and the current version): scripts/setup.sh builds the mirror
(scripts/build_test_mirror.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "roles/prometheus/files/rules").glob("*.yml"))
TESTS = sorted((ROOT / "tests/promtool").glob("*.test.yml"))
CACHE = Path(os.environ.get("KEEL_CACHE") or Path.home() / ".cache" / "keel")
MIRROR = CACHE / "test-mirror" / "prometheus" / "prometheus" / "releases" / "download"


def archives() -> list[Path]:
    found = sorted(MIRROR.glob("v*/prometheus-*.linux-amd64.tar.gz"))
    assert found, f"no Prometheus archive in {MIRROR}: run scripts/build_test_mirror.py (scripts/setup.sh does)"
    return found


@pytest.fixture(scope="module", params=archives(), ids=lambda p: p.parent.name)
def promtool(request, tmp_path_factory, extract_promtool) -> Path:
    return extract_promtool(request.param, tmp_path_factory.mktemp("promtool"))


def alerts_in(path: Path) -> set[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def alerts_tested_in(path: Path) -> set[str]:
    tests = yaml.safe_load(path.read_text())["tests"]
    return {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
            if case.get("exp_alerts")}  # a test that only expects silence does not count


def test_rule_files_and_tests_exist():
    assert RULES and TESTS


def test_every_alert_has_a_test_that_expects_it_to_fire():
    alerts = set().union(*(alerts_in(p) for p in RULES))
    tested = set().union(*(alerts_tested_in(p) for p in TESTS))
    assert alerts, "no alert found in the rule files"
    assert alerts - tested == set(), f"alerts without a promtool test that fires them: {sorted(alerts - tested)}"
    assert tested - alerts == set(), f"tests of alerts that do not exist: {sorted(tested - alerts)}"


# What issue 5 asks to alert on, by the alert that does it: renaming or dropping
# one of them must be a decision, not an accident.
REQUIRED_ALERTS = {
    "instance down": "KeelInstanceDown",
    "HAProxy backend without healthy servers": "KeelHAProxyBackendDown",
    "high error ratio": "KeelAppHighErrorRatio",
    "latency SLO multiwindow burn rate": "KeelAppLatencyBudgetBurn",
    "availability SLO multiwindow burn rate": "KeelAppErrorBudgetBurn",
    "disk filling up (predictive)": "KeelDiskFillingUp",
    "certificate expiry": "KeelCertificateExpiresSoon",
    "Prometheus target missing": "KeelTargetMissing",
}


def test_the_required_alerts_exist():
    alerts = set().union(*(alerts_in(p) for p in RULES))
    missing = {need: name for need, name in REQUIRED_ALERTS.items() if name not in alerts}
    assert not missing, missing


def test_every_rule_file_is_tested():
    covered = {(t.parent / f).resolve() for t in TESTS for f in yaml.safe_load(t.read_text())["rule_files"]}
    assert {p.resolve() for p in RULES} <= covered


def test_the_role_installs_every_rule_file():
    """A rule file the role's list (vars/main.yml) forgets is tested here but never deployed."""
    listed = yaml.safe_load((ROOT / "roles/prometheus/vars/main.yml").read_text())["_prometheus_role_rules"]
    assert sorted(listed) == [p.stem for p in RULES]


def test_promtool_check_rules(promtool):
    res = subprocess.run([promtool, "check", "rules", *RULES], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"SUCCESS: \d+ rules found", res.stdout), res.stdout


def test_promtool_test_rules(promtool):
    res = subprocess.run([promtool, "test", "rules", *TESTS], capture_output=True, text=True, check=False, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout and "FAILED" not in res.stdout, res.stdout
