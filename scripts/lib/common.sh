# shellcheck shell=bash
# Shared helpers for keel's shell scripts. Source it, do not execute it.

KEEL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KEEL_CACHE="${KEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keel}"
KEEL_VENV="${KEEL_VENV:-$KEEL_ROOT/.venv}"
KEEL_DEBIAN_MIRROR="${KEEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KEEL_DEBIAN_SECURITY_MIRROR="${KEEL_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
export KEEL_ROOT KEEL_CACHE KEEL_VENV KEEL_DEBIAN_MIRROR KEEL_DEBIAN_SECURITY_MIRROR

_keel_t0=$(date +%s)

log() { printf '[keel %4ss] %s\n' "$(($(date +%s) - _keel_t0))" "$*" >&2; }
step() { printf '\n[keel %4ss] == %s\n' "$(($(date +%s) - _keel_t0))" "$*" >&2; }
die() { printf '[keel] ERROR: %s\n' "$*" >&2; exit 1; }

# hash_files FILE... : one sha256 over the content of the given files/dirs (sorted, stable)
hash_files() {
  local f
  for f in "$@"; do
    if [ -d "$f" ]; then
      find "$f" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    else
      sha256sum "$f"
    fi
  done | sed "s#  $KEEL_ROOT/#  #" | sha256sum | cut -c1-16
}

# stamp_ok NAME HASH : true when the stamp file holds HASH
stamp_ok() { [ -f "$KEEL_CACHE/stamps/$1" ] && [ "$(cat "$KEEL_CACHE/stamps/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$KEEL_CACHE/stamps" && printf '%s' "$2" > "$KEEL_CACHE/stamps/$1"; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (run with sudo)"; }

docker_ok() { docker info >/dev/null 2>&1; }
# pip wheel's build-isolation flag for keel's packages (pyproject: setuptools >= 77):
# --no-build-isolation when PYTHON ($1) has such a setuptools, so the build needs
# no index for its backend; nothing (pip fetches one) otherwise.
build_isolation_flag() {
  "$1" -c 'import sys, setuptools; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null \
    && echo --no-build-isolation
  return 0
}
