"""Make the project's scripts and plugins importable from the unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for sub in ("scripts", "scripts/lib", "plugins/filter"):
    sys.path.insert(0, str(ROOT / sub))
