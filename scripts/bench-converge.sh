#!/usr/bin/env bash
# Converge-time benchmark (issue 6): a fresh playbooks/site.yml on 2, 4 and 8 app
# hosts (plus one load balancer and one monitoring host each), timed; growth
# against linear. Writes reports/bench/converge-<UTC time>/{report.md,figures.json}.
#
#   scripts/bench-converge.sh [--app-hosts 2,4,8] [--rerun] [--keep-going]
#                             [--playbook-timeout MIN (60)] [--total-timeout MIN (300)]
#   scripts/bench-converge.sh --cleanup   remove what an aborted run left (keel-lab-cb-*)
#
# Its hosts are containers keel-lab-cb-* on their own network (keel-converge-bench,
# 172.30.90.0/24) with no published ports: a running lab is not touched, but
# shares the CPU (the report notes what else ran). Every host is removed at the
# end of each N, also on failure, timeout or Ctrl-C. Details: scripts/bench_converge.py.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$KEEL_ROOT"

case " $* " in
  *" --cleanup "*|*" -h "*|*" --help "*)
    [ -x "$KEEL_VENV/bin/python" ] || die "no virtualenv: nothing was set up"
    exec "$KEEL_VENV/bin/python" scripts/bench_converge.py "$@" ;;
esac

# as scripts/lab.sh up does: controller, images and test mirror, then the app release
"$KEEL_ROOT/scripts/setup.sh"
step "application release"
"$KEEL_ROOT/scripts/build-app-release.sh" >/dev/null
step "converge benchmark"
exec "$KEEL_VENV/bin/python" scripts/bench_converge.py "$@"
