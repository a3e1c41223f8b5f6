#!/usr/bin/env bash
# README command 1: the whole stack on a local lab of hosts on this machine.
#
#   scripts/lab.sh up     set up the controller, create the lab hosts (systemd
#                         containers), run playbooks/site.yml, smoke-check
#   scripts/lab.sh down   remove the lab hosts and their network
#   scripts/lab.sh status what runs
#
# Re-running "up" converges idempotently. Inventory: inventories/lab.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$KEEL_ROOT"
inventory=inventories/lab/hosts.yml
action="${1:-up}"
shift || true
playbook() { "$KEEL_VENV/bin/ansible-playbook" -i "$inventory" "$@"; }

case "$action" in
  up)
    "$KEEL_ROOT/scripts/setup.sh"
    step "application release"
    "$KEEL_ROOT/scripts/build-app-release.sh" >/dev/null
    step "lab hosts (containers)"
    playbook playbooks/lab-create.yml
    step "site.yml"
    t0=$(date +%s)
    playbook playbooks/site.yml "$@"
    log "site.yml took $(($(date +%s) - t0)) s"
    step "smoke check"
    playbook playbooks/smoke.yml
    step "lab is up"
    ca="$KEEL_ROOT/.credentials/lab-ca/ca.crt"
    cat <<URLS
Hosts: $(docker ps --filter name=keel-lab- --format '{{.Names}}' | sort | tr '\n' ' ')
  App through HAProxy (TLS):  https://127.0.0.1:8443/   (CA: $ca)
                              curl --cacert $ca https://127.0.0.1:8443/
  HTTP (redirects to HTTPS):  http://127.0.0.1:8080/
  HAProxy stats:              http://127.0.0.1:8404/stats   user admin, password in .credentials/haproxy-stats-lb1
  HAProxy Prometheus metrics: http://127.0.0.1:8404/metrics
  Prometheus (API; Debian's build in the lab has no web UI): http://127.0.0.1:9090/api/v1/targets
  Alertmanager:               http://127.0.0.1:9093/
  Shell into a host:          docker exec -it keel-lab-app1 bash
Grafana and Jaeger join this list when their roles land.
URLS
    ;;
  down)
    [ -x "$KEEL_VENV/bin/ansible-playbook" ] || die "no virtualenv: nothing was set up"
    playbook playbooks/lab-destroy.yml
    left=$(docker ps -a --filter name=keel-lab- -q | wc -l)
    [ "$left" = 0 ] || die "$left lab container(s) still exist"
    log "lab removed"
    ;;
  status)
    docker ps -a --filter name=keel-lab- --format 'table {{.Names}}\t{{.Status}}'
    ;;
  *) die "usage: $0 up|down|status [ansible-playbook options for up]" ;;
esac
