#!/usr/bin/env bash
# README command 1: the whole stack on a local lab of hosts on this machine.
#
#   scripts/lab.sh up     set up the controller, create the lab hosts (systemd
#                         containers), run playbooks/site.yml, smoke-check
#   scripts/lab.sh up --vm  the same four hosts as qemu VMs (scripts/vm.py,
#                         inventories/lab-vm): a real kernel, sshd and Ansible
#                         over SSH; under software emulation far slower
#   scripts/lab.sh down   remove the lab hosts (containers or VMs) and their network
#   scripts/lab.sh status what runs
#   scripts/lab.sh check  on a running lab: tests/lab (the browser check: headless
#                         Chromium opens Prometheus' UI and HAProxy's stats page,
#                         screenshots and assertions; adding and removing an app
#                         host under traffic; the security audit) and site.yml once
#                         more through ansible-runner, as AWX runs it, which must
#                         change nothing
#
# Re-running "up" (with the same kind of hosts) converges idempotently;
# KEEL_LAB_EXPECT_CHANGED=0 makes "up" fail unless site.yml changed nothing.
# Inventory: inventories/lab (containers), inventories/lab-vm (VMs).
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$KEEL_ROOT"
inventory=inventories/lab/hosts.yml
vm_inventory=inventories/lab-vm/hosts.yml
vm_lab=keel-lab
action="${1:-up}"
shift || true
kind=containers
if [ "${1:-}" = "--vm" ]; then kind=vms; inventory=$vm_inventory; shift; fi
playbook() { "$KEEL_VENV/bin/ansible-playbook" -i "$inventory" "$@"; }
containers_run() { command -v docker >/dev/null && [ "$(docker ps -aq --filter name=keel-lab- | wc -l)" -gt 0 ]; }
vms_run() { [ -f "$KEEL_ROOT/.lab/vm/$vm_lab/lab.json" ]; }

# The VMs of inventories/lab-vm, booted in its order (VM n gets 10.213.80.(10+n),
# which the inventory must say), with the forwards it lists.
boot_vms() {
  local args
  args=$("$KEEL_VENV/bin/ansible-inventory" -i "$vm_inventory" --list | "$KEEL_VENV/bin/python" -c '
import json, sys
inv = json.load(sys.stdin)
hosts = [h for g in ("loadbalancers", "app", "monitoring") for h in inv[g]["hosts"]]
hv = inv["_meta"]["hostvars"]
args = ["--count", str(len(hosts)), "--names", ",".join(hosts), "--net", "10.213.80"]
for n, host in enumerate(hosts, start=1):
    if hv[host]["keel_private_ip"] != f"10.213.80.{10 + n}":
        sys.exit(f"{host}: keel_private_ip must be 10.213.80.{10 + n} (VM {n} of the lab)")
    args += [f"--forward={host}:{fwd}" for fwd in hv[host].get("keel_lab_vm_forwards", [])]
print(" ".join(args))')
  # shellcheck disable=SC2086  # one word per argument, none has spaces
  "$KEEL_VENV/bin/python" scripts/vm.py up --lab "$vm_lab" --memory 2048 $args
}

case "$action" in
  up)
    if [ "$kind" = vms ]; then
      containers_run && die "the container lab runs (its ports are the VM lab's): scripts/lab.sh down first"
      "$KEEL_ROOT/scripts/setup.sh" --with-vm-image
    else
      vms_run && die "the VM lab runs (its ports are the container lab's): scripts/lab.sh down first"
      "$KEEL_ROOT/scripts/setup.sh"
    fi
    step "application release"
    "$KEEL_ROOT/scripts/build-app-release.sh" >/dev/null
    if [ "$kind" = vms ]; then
      step "lab hosts (VMs, $(cat "$KEEL_CACHE/vm-accel" 2>/dev/null || echo "acceleration probed now"))"
      if vms_run; then log "the VM lab runs already"; else boot_vms >/dev/null; fi
    else
      step "lab hosts (containers)"
    fi
    playbook playbooks/lab-create.yml
    step "site.yml"
    t0=$(date +%s)
    mkdir -p reports/lab
    playbook playbooks/site.yml "$@" | tee reports/lab/site-run.log
    site_s=$(($(date +%s) - t0))
    # tasks that changed something, over every host of the PLAY RECAP (0 on a re-run)
    changed=$(awk '/PLAY RECAP/ {recap = 1; next} recap && /changed=/ {
                 for (i = 1; i <= NF; i++) if ($i ~ /^changed=/) { split($i, kv, "="); sum += kv[2] } }
               END { print sum + 0 }' reports/lab/site-run.log)
    log "site.yml took $site_s s, changed=$changed"
    if [ -n "${KEEL_LAB_EXPECT_CHANGED:-}" ] && [ "$changed" != "$KEEL_LAB_EXPECT_CHANGED" ]; then
      die "site.yml changed $changed things, expected $KEEL_LAB_EXPECT_CHANGED (KEEL_LAB_EXPECT_CHANGED): see reports/lab/site-run.log"
    fi
    step "smoke check"
    playbook playbooks/smoke.yml
    total_s=$(($(date +%s) - _keel_t0))
    printf '%s lab up (%s): serving after %s s (site.yml %s s, changed=%s)\n' \
      "$(date -u +%FT%TZ)" "$kind" "$total_s" "$site_s" "$changed" | tee -a reports/lab/lab-up.txt >&2
    step "lab is up"
    ca="$KEEL_ROOT/.credentials/lab-ca/ca.crt"
    if [ "$kind" = vms ]; then
      cat <<URLS
Hosts (qemu VMs, lab $vm_lab): lb1 10.213.80.11, app1 .12, app2 .13, mon1 .14 (this machine: .1)
  App through HAProxy (TLS):  https://127.0.0.1:8443/   (CA: $ca)
                              curl --cacert $ca https://127.0.0.1:8443/
  HTTP (redirects to HTTPS):  http://127.0.0.1:8080/
  HAProxy stats:              http://10.213.80.11:8404/stats   user admin, password in .credentials/haproxy-stats-lb1
  HAProxy Prometheus metrics: http://10.213.80.11:8404/metrics
  Prometheus (Debian's classic UI): http://10.213.80.14:9090/classic/targets
  Alertmanager:               http://10.213.80.14:9093/
  Shell into a host:          ssh -i .credentials/lab-admin keel@10.213.80.12
The private addresses answer on this machine only (the lab bridge; no forwarding).
Grafana, Loki, Alloy and Jaeger are left out (keel_logs_and_traces: false), as in the container lab.
URLS
      exit 0
    fi
    ca="$KEEL_ROOT/.credentials/lab-ca/ca.crt"
    cat <<URLS
Hosts: $(docker ps --filter name=keel-lab- --format '{{.Names}}' | sort | tr '\n' ' ')
  App through HAProxy (TLS):  https://127.0.0.1:8443/   (CA: $ca)
                              curl --cacert $ca https://127.0.0.1:8443/
  HTTP (redirects to HTTPS):  http://127.0.0.1:8080/
  HAProxy stats:              http://127.0.0.1:8404/stats   user admin, password in .credentials/haproxy-stats-lb1
  HAProxy Prometheus metrics: http://127.0.0.1:8404/metrics
  Prometheus (Debian's classic UI): http://127.0.0.1:9090/classic/targets   API: http://127.0.0.1:9090/api/v1/targets
  Alertmanager:               http://127.0.0.1:9093/
  Shell into a host:          docker exec -it keel-lab-app1 bash
Grafana, Loki, Alloy and Jaeger are left out of the lab here (keel_logs_and_traces: false in
inventories/lab/group_vars/lab/monitoring.yml): they cannot be downloaded on this machine.
URLS
    ;;
  down)
    # Whatever kind runs (--vm is accepted and changes nothing here).
    if vms_run || [ -d "$KEEL_ROOT/.lab/vm/$vm_lab" ]; then
      python3 scripts/vm.py down --lab "$vm_lab"
      left=$(python3 scripts/vm.py status --lab "$vm_lab" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(s["processes"] + len(s["devices"]) + s["state_exists"])')
      [ "$left" = 0 ] || die "the VM lab left processes, devices or state behind"
    fi
    if containers_run || { command -v docker >/dev/null && docker network inspect keel-lab >/dev/null 2>&1; }; then
      [ -x "$KEEL_VENV/bin/ansible-playbook" ] || die "no virtualenv: nothing was set up"
      "$KEEL_VENV/bin/ansible-playbook" -i inventories/lab/hosts.yml playbooks/lab-destroy.yml
      left=$(docker ps -a --filter name=keel-lab- -q | wc -l)
      [ "$left" = 0 ] || die "$left lab container(s) still exist"
    fi
    log "lab removed"
    ;;
  check)
    [ "$kind" = containers ] || die "check runs on the container lab (its tests reach hosts through Docker)"
    [ "$(docker ps -q --filter name=keel-lab- | wc -l)" -gt 0 ] || die "no lab runs: scripts/lab.sh up first"
    if ! command -v chromium >/dev/null; then
      step "Debian's chromium (headless browser)"
      need_root "installing chromium"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
             --no-install-recommends chromium >/dev/null; } || die "could not install chromium"
    fi
    step "browser check (screenshots in reports/lab/)"
    "$KEEL_VENV/bin/pytest" -q -p no:cacheprovider tests/lab "$@"
    step "site.yml through ansible-runner, as AWX runs it: must change nothing"
    "$KEEL_VENV/bin/python" scripts/awx_run.py --inventory "$inventory" playbooks/site.yml \
      --expect-changed 0 --report reports/lab/awx-noop-run.json
    ;;
  status)
    if command -v docker >/dev/null; then docker ps -a --filter name=keel-lab- --format 'table {{.Names}}\t{{.Status}}'; fi
    python3 scripts/vm.py status --lab "$vm_lab"
    ;;
  *) die "usage: $0 up [--vm] [ansible-playbook options] | down | status | check" ;;
esac
