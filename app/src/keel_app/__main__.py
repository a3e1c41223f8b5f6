"""``python -m keel_app`` is the same as the ``keel-app`` console script."""

from __future__ import annotations

import sys

from keel_app.cli import main

sys.exit(main())
