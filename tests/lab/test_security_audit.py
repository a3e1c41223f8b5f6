"""The security audit (`playbooks/security-audit.yml`) against the running lab
(`scripts/lab.sh check`), as the deployment guide runs it.

It must read only (no change, the same findings with --check), find nothing
critical on a lab that site.yml converged, and see what really runs there: the
app instances and exporters listening on the private addresses (their processes
are hidden from root in a container without CAP_SYS_PTRACE, which made an earlier
version miss them), every listener on a non-loopback address declared by the
firewall role, and keel's units rated by systemd-analyze at 2.0 or lower.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv" / "bin"
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
HOSTS = ("lb1", "app1", "app2", "mon1")
# what must be seen listening on each host's private address (inventories/lab/hosts.yml)
EXPECTED_LISTENERS = {
    "lb1": {443, 80, 8404, 9100},
    "app1": {8000, 8001, 9100},
    "app2": {8000, 8001, 9100},
    "mon1": {9090, 9093, 9115, 9100},
}
EXPECTED_UNITS = {
    "app1": {"keel-app@api-8000.service", "keel-app@api-8001.service", "keel-app@backend-9000.service",
             "node_exporter.service"},
    "mon1": {"prometheus.service", "alertmanager.service", "blackbox_exporter.service", "node_exporter.service"},
}


def audit(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    out = tmp_path / "reports"
    res = subprocess.run([str(VENV / "ansible-playbook"), "-i", str(INVENTORY), "playbooks/security-audit.yml",
                          "-e", f"keel_audit_report_dir={out}", *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    reports = {host: json.loads((out / f"{host}.json").read_text())
               for host in HOSTS if (out / f"{host}.json").exists()}
    return res, reports


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    return audit(tmp_path_factory.mktemp("audit"))


def test_audit_passes_changes_nothing_and_reports_every_host(audited):
    res, reports = audited
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    recap = [line for line in res.stdout.splitlines() if " : ok=" in line]
    assert len(recap) == len(HOSTS) and all("changed=0" in line for line in recap), recap
    assert sorted(reports) == sorted(HOSTS)
    for host, report in reports.items():
        assert report["critical"] == 0, (host, report["findings"])


def test_no_finding_about_ssh_firewall_or_undeclared_listeners(audited):
    _, reports = audited
    for host, report in reports.items():
        serious = [f for f in report["findings"] if f["check"] in ("ssh", "firewall", "sockets", "units")
                   and f["severity"] != "info"]
        assert serious == [], (host, serious)


def test_the_audit_sees_every_listener_of_the_services(audited):
    _, reports = audited
    private = {host: vars_["keel_private_ip"] for group in yaml.safe_load(INVENTORY.read_text())["all"]["children"]
               ["lab"]["children"].values() for host, vars_ in group["hosts"].items()}
    for host, ports in EXPECTED_LISTENERS.items():
        seen = {s["port"] for s in reports[host]["sockets"]["tcp_listen"]
                if s["address"] in (private[host], "0.0.0.0", "::")}  # noqa: S104  addresses read, not bound
        assert ports <= seen, (host, sorted(seen))
        declared = {d["port"] for d in reports[host]["sockets"]["declared"]}
        assert ports <= declared | {22}, (host, sorted(declared))


def test_keel_units_are_rated_2_or_lower(audited):
    _, reports = audited
    for host, units in EXPECTED_UNITS.items():
        rated = {u["unit"]: u["exposure"] for u in reports[host]["units"]}
        assert units <= set(rated), (host, rated)
        assert all(exposure is not None and exposure <= 2.0 for exposure in rated.values()), (host, rated)


def test_check_mode_gives_the_same_findings(audited, tmp_path):
    _, reports = audited
    res, checked = audit(tmp_path, "--check")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]

    def comparable(findings: list[dict]) -> list[tuple[str, str]]:
        return sorted((f["check"], f["severity"]) for f in findings)
    assert {h: comparable(r["findings"]) for h, r in checked.items()} == \
           {h: comparable(r["findings"]) for h, r in reports.items()}
