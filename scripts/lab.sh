#!/usr/bin/env bash
# README command 1: the whole stack on a local lab of hosts on this machine.
#
#   scripts/lab.sh up     set up the controller, create the lab hosts (systemd
#                         containers), run playbooks/site.yml, smoke-check
#   scripts/lab.sh down   remove the lab hosts and their network
#   scripts/lab.sh status what runs
#   scripts/lab.sh check  on a running lab: tests/lab (the browser check: headless
#                         Chromium opens Prometheus' UI and HAProxy's stats page,
#                         screenshots and assertions; adding and removing an app
#                         host under traffic; the security audit) and site.yml once
#                         more through ansible-runner, as AWX runs it, which must
#                         change nothing
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
    mkdir -p reports/lab
    playbook playbooks/site.yml "$@" | tee reports/lab/site-run.log
    site_s=$(($(date +%s) - t0))
    # tasks that changed something, over every host of the PLAY RECAP (0 on a re-run)
    changed=$(awk '/PLAY RECAP/ {recap = 1; next} recap && /changed=/ {
                 for (i = 1; i <= NF; i++) if ($i ~ /^changed=/) { split($i, kv, "="); sum += kv[2] } }
               END { print sum + 0 }' reports/lab/site-run.log)
    log "site.yml took $site_s s, changed=$changed"
    step "smoke check"
    playbook playbooks/smoke.yml
    total_s=$(($(date +%s) - _keel_t0))
    printf '%s lab up: serving after %s s (site.yml %s s, changed=%s)\n' \
      "$(date -u +%FT%TZ)" "$total_s" "$site_s" "$changed" | tee -a reports/lab/lab-up.txt >&2
    step "lab is up"
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
    [ -x "$KEEL_VENV/bin/ansible-playbook" ] || die "no virtualenv: nothing was set up"
    playbook playbooks/lab-destroy.yml
    left=$(docker ps -a --filter name=keel-lab- -q | wc -l)
    [ "$left" = 0 ] || die "$left lab container(s) still exist"
    log "lab removed"
    ;;
  check)
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
    docker ps -a --filter name=keel-lab- --format 'table {{.Names}}\t{{.Status}}'
    ;;
  *) die "usage: $0 up|down|status|check [ansible-playbook options for up]" ;;
esac
