#!/usr/bin/env bash
# Build the systemd test container images (keel/<name>:latest) from a debootstrap
# tree, without any image registry. An image is rebuilt only when its recipe
# (images/container/*, this script) changed: the recipe hash is kept as the image
# label keel.recipe, and the root tarball is cached in $KEEL_CACHE/rootfs.
#
# Usage: scripts/build-image.sh NAME...   (NAME: debian12, debian13)
#        scripts/build-image.sh --force NAME...
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

force=0
names=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -*) die "unknown option $arg" ;;
    *) names+=("$arg") ;;
  esac
done
[ "${#names[@]}" -gt 0 ] || die "usage: $0 [--force] NAME..."
recipe_dir="$KEEL_ROOT/images/container"

build_one() {
  local name="$1" conf="$recipe_dir/$1.conf"
  [ -f "$conf" ] || die "no recipe $conf"
  # shellcheck disable=SC1090
  SUITE=""; . "$conf"
  local hash image="keel/$name:latest"
  hash=$(hash_files "$conf" "$recipe_dir/packages.txt" "$recipe_dir/customize.sh" "$0" \
    <(echo "$KEEL_DEBIAN_MIRROR $KEEL_DEBIAN_SECURITY_MIRROR"))
  local current
  current=$(docker image inspect -f '{{ index .Config.Labels "keel.recipe" }}' "$image" 2>/dev/null || true)
  if [ "$force" = 0 ] && [ "$current" = "$hash" ]; then
    log "$image up to date (recipe $hash)"
    return 0
  fi
  local tarball="$KEEL_CACHE/rootfs/$name-$hash.tar"
  if [ "$force" = 1 ] || [ ! -s "$tarball" ]; then
    need_root "debootstrap"
    local tree
    tree=$(mktemp -d "$KEEL_CACHE/rootfs-$name.XXXXXX")
    trap 'rm -rf "$tree"' RETURN
    local include
    include=$(grep -v '^\s*#' "$recipe_dir/packages.txt" | grep -v '^\s*$' | paste -sd, -)
    log "debootstrap $SUITE into $tree (about a minute)"
    debootstrap --variant=minbase --include="$include" "$SUITE" "$tree" "$KEEL_DEBIAN_MIRROR" \
      > "$tree.log" 2>&1 || { tail -20 "$tree.log" >&2; die "debootstrap $SUITE failed (log $tree.log)"; }
    install -m 0755 "$recipe_dir/customize.sh" "$tree/tmp/customize.sh"
    chroot "$tree" /tmp/customize.sh "$SUITE" "$KEEL_DEBIAN_MIRROR" "$KEEL_DEBIAN_SECURITY_MIRROR"
    rm -f "$tree/tmp/customize.sh" "$tree.log"
    mkdir -p "$KEEL_CACHE/rootfs"
    rm -f "$KEEL_CACHE/rootfs/$name-"*.tar
    tar --numeric-owner -C "$tree" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
  fi
  log "importing $image"
  docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change 'ENV container=docker' \
    --change "LABEL keel.recipe=$hash" \
    "$tarball" "$image" >/dev/null
  log "$image built (recipe $hash)"
}

for n in "${names[@]}"; do build_one "$n"; done
