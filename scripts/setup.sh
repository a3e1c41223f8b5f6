#!/usr/bin/env bash
# One-command set-up of a controller for keel: host packages, a pinned Python
# virtualenv, the pinned Ansible collections, a container engine that answers,
# and the locally built test images. Safe to re-run: every step checks whether
# its inputs changed and skips itself otherwise.
#
# Usage: scripts/setup.sh [--no-images] [--with-vm-image]
# Environment:
#   KEEL_DEBIAN_MIRROR     Debian mirror for debootstrap/apt (default deb.debian.org)
#   KEEL_COLLECTIONS_FROM  pypi (default: from the PyPI "ansible" bundle) or galaxy
#   KEEL_CACHE             download/build cache (default ~/.cache/keel)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

with_images=1
with_vm=0
for arg in "$@"; do
  case "$arg" in
    --no-images) with_images=0 ;;
    --with-vm-image) with_vm=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown option: $arg (see --help)" ;;
  esac
done

mkdir -p "$KEEL_CACHE"
exec 9>"$KEEL_CACHE/setup.lock"
flock 9 || die "another setup holds $KEEL_CACHE/setup.lock"

# ---------------------------------------------------------------- host packages
# haproxy and socat: unit tests drive a real HAProxy through its Runtime API
# (tests/unit/test_node_playbooks.py: drain, drain timeout, remove-node.yml)
HOST_PACKAGES=(docker.io debootstrap qemu-system-x86 qemu-utils e2fsprogs iproute2
  openssh-client rsync ca-certificates curl debian-archive-keyring haproxy socat)
step "host packages"
missing=()
for p in "${HOST_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  need_root "installing ${missing[*]}"
  log "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "all ${#HOST_PACKAGES[@]} present"
fi

# ---------------------------------------------------------------- python venv
step "python virtualenv ($KEEL_VENV)"
venv_hash=$(hash_files "$KEEL_ROOT/requirements-dev.txt" "$KEEL_ROOT/constraints.txt" "$KEEL_ROOT/app/requirements.in")
if [ -x "$KEEL_VENV/bin/ansible-playbook" ] && [ "$(cat "$KEEL_VENV/.keel-stamp" 2>/dev/null)" = "$venv_hash" ]; then
  log "up to date ($venv_hash)"
else
  log "creating with pinned requirements (tooling + the reference app's runtime, for its tests)"
  python3 -m venv "$KEEL_VENV"
  "$KEEL_VENV/bin/pip" install -q --disable-pip-version-check \
    -r "$KEEL_ROOT/requirements-dev.txt" -r "$KEEL_ROOT/app/requirements.in" -c "$KEEL_ROOT/constraints.txt" 2> >(grep -v "^WARNING: Location" >&2)
  printf '%s' "$venv_hash" > "$KEEL_VENV/.keel-stamp"
  log "installed: $("$KEEL_VENV/bin/ansible" --version | head -1)"
fi

# ---------------------------------------------------------------- collections
step "ansible collections (requirements.yml)"
coll_dir="$KEEL_ROOT/collections"
coll_hash=$(hash_files "$KEEL_ROOT/requirements.yml")
if [ "$(cat "$coll_dir/.keel-stamp" 2>/dev/null)" = "$coll_hash" ]; then
  log "up to date ($coll_hash)"
else
  case "${KEEL_COLLECTIONS_FROM:-pypi}" in
    galaxy)
      "$KEEL_VENV/bin/ansible-galaxy" collection install -r "$KEEL_ROOT/requirements.yml" -p "$coll_dir" ;;
    pypi)
      "$KEEL_VENV/bin/python" "$KEEL_ROOT/scripts/lib/collections_from_bundle.py" \
        --requirements "$KEEL_ROOT/requirements.yml" --dest "$coll_dir" --cache "$KEEL_CACHE/wheels" ;;
    *) die "KEEL_COLLECTIONS_FROM must be pypi or galaxy" ;;
  esac
  printf '%s' "$coll_hash" > "$coll_dir/.keel-stamp"
fi

# ---------------------------------------------------------------- container engine
step "container engine"
if docker_ok; then
  log "docker answers: $(docker version -f '{{.Server.Version}}' 2>/dev/null)"
else
  need_root "starting dockerd"
  if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
    log "started docker.service"
  else
    log "no init system manages docker here: starting dockerd in the background (log: /var/log/keel-dockerd.log)"
    # 9>&-: the daemon must not inherit (and hold forever) the setup lock; setsid: nor the
    # caller's process group, or stopping the command that ran setup (a test run killed
    # with its group) stops Docker and every container of every other run with it
    setsid nohup dockerd >/var/log/keel-dockerd.log 2>&1 </dev/null 9>&- &
  fi
  for _ in $(seq 1 60); do docker_ok && break; sleep 1; done
  docker_ok || die "dockerd did not answer within 60 s; see /var/log/keel-dockerd.log"
  log "docker answers: $(docker version -f '{{.Server.Version}}')"
fi

# ---------------------------------------------------------------- test images
if [ "$with_images" = 1 ]; then
  step "test images"
  "$KEEL_ROOT/scripts/build-image.sh" debian12 debian13
  # Prometheus-family release archives for the tests and the lab: the real
  # binaries of Debian's packages in the upstream layout (no GitHub here).
  step "test mirror of release archives"
  "$KEEL_VENV/bin/python" "$KEEL_ROOT/scripts/build_test_mirror.py"
fi
if [ "$with_vm" = 1 ]; then
  step "VM image"
  "$KEEL_VENV/bin/python" "$KEEL_ROOT/scripts/vm.py" build
fi

step "setup done"
