#!/usr/bin/env bash
# Benchmark the lab: requests/s and latency through HAProxy to the app, beside
# HAProxy's static ceiling and the app without the load balancer, in one run,
# plus a CPU profile of one app instance under load. Writes
# reports/bench/<UTC time>/{report.md,results.json,throughput.png,profile-api.svg}.
#
#   scripts/bench.sh [--quick]        (the lab must be up: scripts/lab.sh up)
#
# Tools: wrk (Debian) for closed-loop peak throughput; tools/loadgen (Go,
# standard library, built here) for fixed-arrival-rate latency corrected for
# coordinated omission; py-spy for the profile. Traffic goes only to the lab's
# containers, every run is bounded in time.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$KEEL_ROOT"
[ -x "$KEEL_VENV/bin/python" ] || die "run scripts/setup.sh first"

missing=()
for pkg in wrk golang-go; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if [ ${#missing[@]} -gt 0 ]; then
  need_root "installing ${missing[*]}"
  step "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
stamp="$KEEL_VENV/.keel-bench-stamp"
want=$(hash_files requirements-bench.txt)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "installing requirements-bench.txt into .venv"
  "$KEEL_VENV/bin/pip" install -q --disable-pip-version-check -r requirements-bench.txt
  echo "$want" > "$stamp"
fi
bin="$KEEL_CACHE/bin"
mkdir -p "$bin"
src_hash=$(hash_files tools/loadgen/main.go tools/loadgen/go.mod)
if [ "$(cat "$bin/loadgen.src" 2>/dev/null)" != "$src_hash" ]; then
  step "building tools/loadgen"
  (cd tools/loadgen && GOCACHE="$KEEL_CACHE/go-build" GOFLAGS=-mod=mod CGO_ENABLED=0 go build -o "$bin/loadgen" .)
  echo "$src_hash" > "$bin/loadgen.src"
fi
docker ps --format '{{.Names}}' | grep -qx keel-lab-lb1 || die "the lab is not up: run scripts/lab.sh up"
exec "$KEEL_VENV/bin/python" scripts/lib/bench.py --loadgen "$bin/loadgen" "$@"
