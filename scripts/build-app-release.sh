#!/usr/bin/env bash
# Build a release of the reference app: a tarball holding the keel-app wheel and
# every pinned dependency as wheels (a wheelhouse), so app hosts install it with
# no package index. Prints the tarball path and its sha256.
#
# Usage: scripts/build-app-release.sh [VERSION]   (default: the package version)
# Output: $KEEL_CACHE/releases/keel-app-VERSION.tar.gz (+ .sha256)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
version="${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$KEEL_ROOT/app/pyproject.toml")}"
[[ "$version" =~ ^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$ ]] || die "bad version '$version'"
out="$KEEL_CACHE/releases"
tarball="$out/keel-app-$version.tar.gz"
mkdir -p "$out"
src_hash=$(hash_files "$KEEL_ROOT/app/src" "$KEEL_ROOT/app/pyproject.toml" "$KEEL_ROOT/app/requirements.txt")
if [ -s "$tarball" ] && [ "$(cat "$tarball.src" 2>/dev/null)" = "$src_hash" ]; then
  log "release $version up to date"
else
  work=$(mktemp -d "$out/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/keel-app-$version/wheels"
  log "building the wheelhouse for keel-app $version"
  "$KEEL_VENV/bin/pip" wheel -q --disable-pip-version-check -w "$work/keel-app-$version/wheels" \
    -r "$KEEL_ROOT/app/requirements.txt" "$KEEL_ROOT/app" 2> >(grep -v "^WARNING: Location" >&2)
  cp "$KEEL_ROOT/app/requirements.txt" "$work/keel-app-$version/requirements.txt"
  echo "$version" > "$work/keel-app-$version/VERSION"
  tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -czf "$tarball.partial" "keel-app-$version"
  mv "$tarball.partial" "$tarball"
  printf '%s' "$src_hash" > "$tarball.src"
fi
sha256sum "$tarball" | cut -d' ' -f1 > "$tarball.sha256"
echo "$tarball $(cat "$tarball.sha256")"
