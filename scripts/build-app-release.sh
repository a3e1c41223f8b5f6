#!/usr/bin/env bash
# Build a release of the reference app: a tarball holding the keel-app wheel and
# every pinned dependency as wheels (a wheelhouse), so app hosts install it with
# no package index. Prints the tarball path and its sha256.
# The dependencies are fetched with --require-hashes --only-binary :all: against
# app/requirements.txt (locked by scripts/lock-app-requirements.sh): a file the
# index serves that is not the locked one stops the build. The release records
# the sha256 of every wheel it holds (requirements.lock), and the app role
# installs it with --require-hashes (security review M9).
#
# Usage: scripts/build-app-release.sh [VERSION]   (default: the package version)
# KEEL_RELEASE_ENV="KEY=value ..." ships release-specific environment in the
# release (release.env, read by every instance); tests use it to build a release
# that never becomes ready (KEEL_APP_FAIL_READINESS=1).
# Output: $KEEL_CACHE/releases/keel-app-VERSION.tar.gz (+ .sha256, and .cdx.json: its SBOM)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
version="${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$KEEL_ROOT/app/pyproject.toml")}"
[[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$ ]] || die "bad version '$version'"
out="$KEEL_CACHE/releases"
tarball="$out/keel-app-$version.tar.gz"
mkdir -p "$out"
# The release is rebuilt only when its sources change (build output such as
# *.egg-info is not a source), so deploying the same version twice is a no-op.
mapfile -t sources < <(cd "$KEEL_ROOT/app" && find src -name '*.py' | LC_ALL=C sort)
src_hash=$( (cd "$KEEL_ROOT/app" && sha256sum "${sources[@]}" pyproject.toml requirements.txt README.md;
  echo "layout: requirements.lock";
  echo "release-env: ${KEEL_RELEASE_ENV:-}") | sha256sum | cut -c1-16)
if [ -s "$tarball" ] && [ "$(cat "$tarball.src" 2>/dev/null)" = "$src_hash" ]; then
  log "release $version up to date"
else
  work=$(mktemp -d "$out/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/keel-app-$version/wheels"
  log "building the wheelhouse for keel-app $version"
  # Build from a copy: the source tree stays free of build output.
  mkdir -p "$work/src"
  (cd "$KEEL_ROOT/app" && cp -r --parents "${sources[@]}" pyproject.toml requirements.txt README.md "$work/src/")
  wheels="$work/keel-app-$version/wheels"
  "$KEEL_VENV/bin/pip" wheel -q --disable-pip-version-check --require-hashes --only-binary :all: \
    -w "$wheels" -r "$KEEL_ROOT/app/requirements.txt" 2> >(grep -v "^WARNING: Location" >&2) \
    || die "the dependencies do not match app/requirements.txt's hashes (or are not wheels); see above"
  # keel-app itself, from source; the build backend is this venv's setuptools when
  # pyproject.toml accepts it (no index), else pip's isolated build fetches one.
  read -r -a isolation <<< "$(build_isolation_flag "$KEEL_VENV/bin/python")"
  SOURCE_DATE_EPOCH=315532800 "$KEEL_VENV/bin/pip" wheel -q --disable-pip-version-check --no-deps \
    "${isolation[@]}" -w "$wheels" "$work/src" 2> >(grep -v "^WARNING: Location" >&2)
  cp "$KEEL_ROOT/app/requirements.txt" "$work/keel-app-$version/requirements.txt"
  # requirements.lock: each wheel of the release with its sha256 (keel-app's too)
  "$KEEL_VENV/bin/python" - "$wheels" > "$work/keel-app-$version/requirements.lock" <<'PY'
import hashlib, pathlib, sys
print("# every wheel of this release and its sha256: pip install --no-index --require-hashes -r requirements.lock")
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    print(f"{name}=={version} --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}")
PY
  echo "$version" > "$work/keel-app-$version/VERSION"
  : > "$work/keel-app-$version/release.env"
  for kv in ${KEEL_RELEASE_ENV:-}; do echo "$kv" >> "$work/keel-app-$version/release.env"; done
  tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@315532800 -cf - "keel-app-$version" \
    | gzip -n > "$tarball.partial"
  mv "$tarball.partial" "$tarball"
  printf '%s' "$src_hash" > "$tarball.src"
fi
sha256sum "$tarball" | cut -d' ' -f1 > "$tarball.sha256"
# the release's bill of materials beside it (CycloneDX: its wheels, keel's pinned binaries)
"$KEEL_VENV/bin/python" "$KEEL_ROOT/scripts/sbom.py" --release "$tarball" --out "${tarball%.tar.gz}.cdx.json" >/dev/null
echo "$tarball $(cat "$tarball.sha256")"
