"""keel-aide-check (roles/os_hardening/files/usr/local/sbin): AIDE's daily result reaches the
journal and node_exporter's textfile collector (security review M6). A stand-in `aide` replays
the output of Debian 12's AIDE 0.18.3 recorded in tests/unit/data (no differences; one file
added, one removed, one changed: exit 7) and AIDE's error exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles/os_hardening/files/usr/local/sbin/keel-aide-check"
DATA = Path(__file__).parent / "data"


def fake_aide(tmp_path: Path, recorded: str | None, rc: int) -> Path:
    aide = tmp_path / "aide"
    text = (DATA / recorded).read_text() if recorded else "Couldn't open file /var/lib/aide/aide.db for reading\n"
    (tmp_path / "out.txt").write_text(text)
    aide.write_text(f"#!/bin/sh\ncat {tmp_path / 'out.txt'}\nexit {rc}\n")
    aide.chmod(0o755)
    return aide


def run(tmp_path: Path, aide: Path, textfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--aide", str(aide), "--textfile-dir", str(textfile)],
                          capture_output=True, text=True, timeout=60, check=False)


def prom(textfile: Path) -> dict[str, float]:
    out = {}
    for line in (textfile / "keel_aide.prom").read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.parametrize(("recorded", "rc", "expected"), [
    ("aide-0.18.3-check-none.txt", 0, (0, 0, 0)),
    ("aide-0.18.3-check-differences.txt", 7, (1, 1, 1)),
])
def test_the_result_is_printed_and_exported(tmp_path, recorded, rc, expected):
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    res = run(tmp_path, fake_aide(tmp_path, recorded, rc), textfile)
    assert res.returncode == 0, res.stderr
    assert "Start timestamp" in res.stdout  # AIDE's own report goes to the journal
    metrics = prom(textfile)
    assert metrics["keel_aide_last_check_success"] == 1
    assert tuple(metrics[f'keel_aide_entries{{change="{c}"}}'] for c in ("added", "removed", "changed")) == expected
    assert metrics["keel_aide_last_check_timestamp_seconds"] > 1.7e9
    assert (textfile / "keel_aide.prom").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in textfile.iterdir()] == ["keel_aide.prom"]  # no temporary file left


def test_an_aide_that_cannot_check_is_a_failure_not_a_clean_result(tmp_path):
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    res = run(tmp_path, fake_aide(tmp_path, None, 17), textfile)
    assert res.returncode == 1
    assert "AIDE failed (exit 17)" in res.stdout
    assert prom(textfile)["keel_aide_last_check_success"] == 0


def test_without_node_exporter_the_result_goes_to_the_journal_only(tmp_path):
    res = run(tmp_path, fake_aide(tmp_path, "aide-0.18.3-check-differences.txt", 7), tmp_path / "absent")
    assert res.returncode == 0
    assert "keel-aide-check: checked: 1 added, 1 removed, 1 changed" in res.stdout
    assert not (tmp_path / "absent").exists()
