"""keel_autoscaler is imported from autoscaler/src (standard library only: nothing to install)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if importlib.util.find_spec("keel_autoscaler") is None:
    sys.path.insert(0, str(REPO / "autoscaler" / "src"))
