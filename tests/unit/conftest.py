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
