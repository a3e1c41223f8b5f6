"""scripts/hardening_report.py: Lynis parsing and the exposure comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hardening_report

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hardening_report.py"
DECLARED = [{"service": "ssh", "port": 22, "proto": "tcp", "sources": ["10.0.2.2/32"]},
            {"service": "ntp", "port": 123, "proto": "udp", "sources": ["10.213.250.12/32"]},
            {"service": "http", "port": 443, "proto": "tcp", "sources": ["0.0.0.0/0", "::/0"]}]


def _lynis(path: Path, index: int, warnings: int) -> None:
    lines = ["lynis_version=3.0.8", f"hardening_index={index}", "tests_executed=A|B|C|"]
    lines += [f"warning[]=AUTH-{i}|Something to fix|-|-|" for i in range(warnings)]
    lines += ["suggestion[]=KRNL-6000|One or more sysctl values differ|net.ipv4.x|-|"]
    path.write_text("\n".join(lines) + "\n")


def test_read_lynis(tmp_path):
    _lynis(tmp_path / "r.dat", 62, 2)
    data = hardening_report.read_lynis(tmp_path / "r.dat")
    assert data["hardening_index"] == 62
    assert [w[0] for w in data["warnings"]] == ["AUTH-0", "AUTH-1"]
    assert data["suggestions"][0][:2] == ["KRNL-6000", "One or more sysctl values differ"]


def test_allowed_only_inside_declared_sources():
    assert hardening_report.allowed("10.0.2.2", DECLARED, "tcp", 22)
    assert not hardening_report.allowed("10.213.250.1", DECLARED, "tcp", 22)
    assert not hardening_report.allowed("10.213.250.12", DECLARED, "tcp", 123)  # declared for udp only
    assert hardening_report.allowed("192.0.2.9", DECLARED, "tcp", 443)
    assert not hardening_report.allowed("10.0.2.2", DECLARED, "tcp", 8404)  # not declared at all


def test_a_port_reached_from_an_undeclared_source_is_reported():
    ports = {"vm1": [
        {"proto": "tcp", "address": "10.213.250.11", "port": 22,
         "reachable_from": {"lab host 10.213.250.1": False, "vm2 10.213.250.12": False}},
        {"proto": "tcp", "address": "10.213.250.11", "port": 9100,
         "reachable_from": {"lab host 10.213.250.1": True, "vm2 10.213.250.12": False}},
        {"proto": "udp", "address": "10.213.250.11", "port": 123},
    ]}
    rows, unexpected = hardening_report.exposure(ports, {"vm1": DECLARED})
    assert unexpected == ["vm1 tcp/9100 reached from lab host 10.213.250.1"]
    assert [r["declared"] for r in rows] == ["10.0.2.2/32", "nobody (not opened)", "10.213.250.12/32"]


def test_script_writes_figures_and_report(tmp_path):
    _lynis(tmp_path / "lynis-before.dat", 62, 3)
    _lynis(tmp_path / "lynis-after.dat", 84, 0)
    (tmp_path / "ssh-audit.txt").write_text("Host:   127.0.0.1\nResult: ✔ Passed\n")
    (tmp_path / "ports.json").write_text(json.dumps({"vm1": []}))
    (tmp_path / "exposure-vm1.json").write_text(json.dumps(DECLARED))
    out = tmp_path / "report.md"
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(out)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["lynis_before"] == 62 and figures["lynis_after"] == 84
    assert figures["lynis_warnings_after"] == 0 and figures["ssh_audit_passed"] is True
    text = out.read_text()
    assert "| Lynis hardening index (vm1) | 62 | 84 | >= 90 (not met) |" in text
    assert "did not get all their points" not in text  # no log given


def test_report_lists_the_points_lost_when_the_log_is_there(tmp_path):
    _lynis(tmp_path / "lynis-before.dat", 62, 3)
    _lynis(tmp_path / "lynis-after.dat", 84, 0)
    (tmp_path / "lynis-after.log").write_text(
        "2026-11-27 07:10:00 Performing test ID AUTH-9230 (Check group password hashing rounds)\n"
        "2026-11-27 07:10:00 Hardening: assigned partial number of hardening points (0 of 2). Currently having 1\n")
    text = _report(tmp_path)
    assert "2 points lost in 1 checks" in text
    assert "| AUTH-9230 | Check group password hashing rounds | 0 of 2 | 2 |" in text


def test_script_fails_on_a_missing_input(tmp_path):
    _lynis(tmp_path / "lynis-after.dat", 84, 0)  # after without before
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=False)
    assert res.returncode != 0
    assert "lynis-before.dat" in res.stderr


def _report(tmp_path) -> str:
    """Run the script on tmp_path with a passing ssh-audit and no listening socket; return the report."""
    (tmp_path / "ssh-audit.txt").write_text("Host:   127.0.0.1\nResult: ✔ Passed\n")
    (tmp_path / "ports.json").write_text(json.dumps({"vm1": []}))
    out = tmp_path / "report.md"
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(out)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    return out.read_text()


def test_without_lynis_the_report_says_so(tmp_path):
    text = _report(tmp_path)
    assert json.loads((tmp_path / "figures.json").read_text())["lynis_after"] is None
    assert "| Lynis hardening index (vm1) | not run | not run | >= 90 |" in text


def test_lynis_points_lost_from_the_log(tmp_path):
    log = tmp_path / "lynis.log"
    log.write_text("\n".join([
        "2026-11-27 07:10:00 Performing test ID AUTH-9230 (Check group password hashing rounds)",
        "2026-11-27 07:10:00 Hardening: assigned partial number of hardening points (0 of 2)",
        "2026-11-27 07:10:01 Performing test ID SSH-7408 (Check SSH specific defined options)",
        "2026-11-27 07:10:01 Hardening: assigned maximum number of hardening points for this item (3)",
        "2026-11-27 07:10:01 Hardening: assigned partial number of hardening points (1 of 3)",
        "2026-11-27 07:10:02 Performing test ID KRNL-5820 (Checking core dumps configuration)",
        "2026-11-27 07:10:02 Hardening: assigned partial number of hardening points (2 of 2)",
    ]))
    assert hardening_report.lynis_points_lost(log) == [
        ("AUTH-9230", "Check group password hashing rounds", 0, 2),
        ("SSH-7408", "Check SSH specific defined options", 1, 3),
    ]
