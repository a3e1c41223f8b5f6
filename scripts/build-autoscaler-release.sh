#!/usr/bin/env bash
# Build the autoscaler's wheel (autoscaler/, package keel-autoscaler: standard
# library only, so one wheel is the whole release) on the controller. The
# autoscaler role runs this once per play and installs the wheel with
# pip --no-index into /opt/keel-autoscaler on the autoscaler host.
# Prints the wheel's path and its sha256.
#
# Usage: scripts/build-autoscaler-release.sh
# Environment: KEEL_PYTHON, the Python whose pip builds the wheel (default
# .venv/bin/python, else python3: AWX's execution environment has no .venv).
# Output: $KEEL_CACHE/releases/keel_autoscaler-VERSION-py3-none-any.whl (+ .sha256, .src)
#
# Deterministic: the same sources give the same bytes (SOURCE_DATE_EPOCH, sorted
# copy), and the wheel is rebuilt only when a source changes, so a second run of
# the role installs nothing.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
src="$KEEL_ROOT/autoscaler"
[ -f "$src/pyproject.toml" ] || die "no autoscaler package at $src"
python="${KEEL_PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$KEEL_VENV/bin/python" ]; then python="$KEEL_VENV/bin/python"; else python=python3; fi
fi
out="$KEEL_CACHE/releases"
mkdir -p "$out"
mapfile -t sources < <(cd "$src" && { find src -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -name '*.pyc'; find . -maxdepth 1 -type f \
  \( -name pyproject.toml -o -name README.md -o -name LICENSE \) -printf '%P\n'; } | LC_ALL=C sort)
src_hash=$( (cd "$src" && sha256sum "${sources[@]}") | sha256sum | cut -c1-16)
stamp="$out/keel-autoscaler.src"
wheel="$(cat "$out/keel-autoscaler.wheel" 2>/dev/null || true)"
if [ -n "$wheel" ] && [ -s "$out/$wheel" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$src_hash" ]; then
  log "autoscaler wheel $wheel up to date"
else
  work=$(mktemp -d "$out/build-autoscaler.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # Build from a copy: the source tree stays free of build output (*.egg-info, build/).
  mkdir -p "$work/src" "$work/dist"
  (cd "$src" && cp -r --parents "${sources[@]}" "$work/src/")
  log "building the keel-autoscaler wheel"
  # The backend is taken from this Python when its setuptools is one
  # pyproject.toml accepts (>= 77: no index needed); otherwise pip fetches it, as
  # scripts/build-app-release.sh does.
  read -r -a isolation <<< "$(build_isolation_flag "$python")"
  SOURCE_DATE_EPOCH=315532800 PYTHONHASHSEED=0 "$python" -m pip wheel -q --disable-pip-version-check --no-deps \
    "${isolation[@]}" -w "$work/dist" "$work/src" 2> >(grep -v "^WARNING: Location" >&2)
  built=("$work"/dist/keel_autoscaler-*.whl)
  [ -f "${built[0]}" ] || die "pip wheel produced no keel_autoscaler wheel"
  wheel="$(basename "${built[0]}")"
  mv "${built[0]}" "$out/$wheel.partial"
  mv "$out/$wheel.partial" "$out/$wheel"
  printf '%s' "$wheel" > "$out/keel-autoscaler.wheel"
  printf '%s' "$src_hash" > "$stamp"
fi
sha256sum "$out/$wheel" | cut -d' ' -f1 > "$out/$wheel.sha256"
echo "$out/$wheel $(cat "$out/$wheel.sha256")"
