#!/usr/bin/env bash
# The hardening report with Lynis: runs the hardening_vm scenario (two Debian 12
# VMs) with KEEL_HARDENING_REPORT=1, which adds a Lynis audit of vm1 before any
# keel role and after hardening and a reboot (about 20 minutes each under software
# emulation, which is why the test suite leaves Lynis out). Writes
# reports/hardening-report.md (figures in reports/hardening/figures.json).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export KEEL_HARDENING_REPORT=1
"$here/test.sh" --scenario hardening_vm
echo "report: $here/../reports/hardening-report.md"
