"""Make the project's scripts and plugins importable from the unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for sub in ("scripts", "scripts/lib", "plugins/filter"):
    sys.path.insert(0, str(ROOT / sub))


def _extract_promtool(archive: Path, out: Path) -> Path:
    """promtool out of a Prometheus release archive (the test mirror's), into out/promtool."""
    import tarfile

    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/promtool"))
        member.name = "promtool"
        tar.extract(member, out, filter="data")
    return out / "promtool"


@pytest.fixture(scope="session")
def extract_promtool():
    return _extract_promtool


def _systemd_exposure(root: Path, unit: str, unit_text: str, drop_in: str | None = None) -> tuple[float, str]:
    """systemd-analyze's own exposure rating of a unit, with its drop-in, offline.

    The unit (and drop-in) are written under root/etc/systemd/system as on a host;
    the binaries need not exist. Returns (overall exposure, the whole report).
    """
    import re
    import subprocess

    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    (units / unit).write_text(unit_text)
    if drop_in is not None:
        (units / f"{unit}.d").mkdir(exist_ok=True)
        (units / f"{unit}.d" / "keel.conf").write_text(drop_in)
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--threshold=100",
                          "--no-pager", unit], capture_output=True, text=True, timeout=60, check=False)
    overall = re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", res.stdout)
    assert overall, res.stdout + res.stderr
    return float(overall.group(1)), res.stdout + res.stderr


@pytest.fixture(scope="session")
def systemd_exposure():
    return _systemd_exposure
