#!/usr/bin/env bash
# README command 2: set up the controller (fast when nothing changed), then run
# keel's test suite. Arguments go to scripts/run_tests.py (--part, --role,
# --scenario, --list); see scripts/run_tests.py --help.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
exec "$here/../.venv/bin/python" "$here/run_tests.py" "$@"
