"""Behaviour of the firewall role: what each host lets through, from whom, and what a bad change does.

Every host runs a listener on every service port (prepare.yml), so a connection
that the rules let through is answered and one they drop times out; nothing is
ever refused. The controller reaches the containers from the bridge address
172.30.83.1, the only admin network.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import testinfra

SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
ADDRESS = {"fw-lb": "172.30.83.11", "fw-app": "172.30.83.21", "fw-app13": "172.30.83.22", "fw-mon": "172.30.83.31"}
RULES = "/etc/nftables.d/keel.nft"
# The loaded table without its dynamic state (-s: no counters; -t: no set elements,
# among them the SSH rate meter's, which change with every connection), plus the
# files. The table's comment carries the hash of every rule and element it was
# loaded from, so a change to any of them still changes this snapshot.
SNAPSHOT = f"{{ nft -s -t list table inet keel_filter; cat {RULES} /etc/nftables.conf; }} | sha256sum"
DROPPED = 124  # timeout's exit status: the connection attempt got no answer


@functools.cache
def node(name: str):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")


def name_of(host) -> str:
    return host.ansible.get_variables()["inventory_hostname"]


def dial(src: str, dst: str, port: int, wait: float = 3) -> int:
    """Connect from host src to dst:port: 0 connected, 124 no answer within `wait` s (dropped), 1 refused."""
    return node(src).run(f"timeout {wait:g} bash -c '</dev/tcp/{ADDRESS[dst]}/{port}'").rc


def dial_from_controller(dst: str, port: int, timeout: float = 3) -> bytes | None:
    """What dst:port says first when the controller connects; None when the connection gets no answer."""
    try:
        with socket.create_connection((ADDRESS[dst], port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            return conn.recv(64)
    except TimeoutError:
        return None


def converge(extra: dict, tmp_path: Path, limit: str, playbook: str = "side_effect.yml") -> tuple[int, str, str]:
    """Run a playbook of the scenario with extra vars: (exit status, stdout, whitespace-normalised output)."""
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps(extra))
    res = subprocess.run(
        ["ansible-playbook", "-i", INVENTORY, str(SCENARIO / playbook), "--limit", limit, "-e", f"@{extra_file}"],
        capture_output=True, text=True, timeout=600,
    )
    output = res.stdout + res.stderr
    return res.returncode, res.stdout, " ".join(output.split())


# ------------------------------------------------------------------ the rules
def test_policies_and_base_chains(host):
    table = host.check_output("nft list table inet keel_filter")
    assert re.search(r"chain input \{\s+type filter hook input priority filter; policy drop;", table), table
    assert re.search(r"chain forward \{\s+type filter hook forward priority filter; policy drop;", table), table
    assert re.search(r"chain output \{\s+type filter hook output priority filter; policy accept;", table), table
    assert 'iif "lo" accept' in table
    assert "ct state established,related accept" in table
    assert "ct state invalid drop" in table


def test_ssh_comes_first(host):
    """The SSH rules precede every ICMP, service and extra rule of the input chain."""
    rules = host.check_output("nft list chain inet keel_filter input").splitlines()
    ssh = [i for i, line in enumerate(rules) if "tcp dport 22 " in line]
    others = [i for i, line in enumerate(rules) if "accept" in line and "tcp dport 22 " not in line
              and not re.search(r'iif "lo"|ct state', line)]
    assert ssh and others and max(ssh) < min(others), rules
    last = rules[max(ssh)].strip()
    assert last.startswith("tcp dport 22 drop") and 'comment "ssh: everyone else"' in last, last


def test_kernel_runs_the_confirmed_file(host):
    rules = host.file(RULES)
    assert rules.mode == 0o600
    marker = re.search(r"keel-rules [0-9a-f]{40}", rules.content_string).group(0)
    assert marker in host.check_output("nft list table inet keel_filter")
    # the last change was confirmed: it is the rollback target and no rollback is pending
    assert host.file(f"{RULES}.confirmed").content_string == rules.content_string
    assert host.run("systemctl is-active keel-firewall-rollback.timer").stdout.strip() != "active"


def test_loaded_at_boot_without_flushing_other_tables(host):
    conf = host.file("/etc/nftables.conf").content_string
    assert f'include "{RULES}"' in conf
    assert not re.search(r"^\s*flush\s+ruleset", conf, re.M)
    assert host.run("nft -c -f /etc/nftables.conf").rc == 0
    nftables = host.service("nftables")
    assert nftables.is_enabled
    assert nftables.is_running


def test_other_tables_are_left_alone():
    """fw-mon had a table of another tool before the role ran; converge and reloads kept it."""
    assert "table inet keel_test_foreign" in node("fw-mon").check_output("nft list tables")


def test_side_effect_was_loaded(host):
    """side_effect.yml added port 7070 for the monitoring host on the app hosts: the handler loaded it."""
    chain = host.check_output("nft list chain inet keel_filter input")
    assert ('comment "side_effect"' in chain) == (name_of(host) in ("fw-app", "fw-app13"))


# ------------------------------------------------------------ who reaches what
ALLOWED = [
    ("fw-mon", "fw-app", 9100, "node_exporter from monitoring"),
    ("fw-mon", "fw-app13", 9100, "node_exporter from monitoring (Debian 13)"),
    ("fw-mon", "fw-lb", 9100, "node_exporter on every host"),
    ("fw-mon", "fw-lb", 8404, "HAProxy stats from monitoring"),
    ("fw-lb", "fw-app", 8001, "app instance from the load balancer"),
    ("fw-lb", "fw-app", 8002, "second app instance"),
    ("fw-lb", "fw-app13", 8000, "fallback app port where app_instance_ports is unset"),
    ("fw-app", "fw-lb", 443, "HTTPS from anywhere"),
    ("fw-mon", "fw-lb", 443, "HTTPS from anywhere"),
    ("fw-app13", "fw-lb", 80, "HTTP from anywhere"),
    ("fw-mon", "fw-app", 7070, "side effect service"),
    ("fw-mon", "fw-app", 8001, "app /metrics scraped by monitoring"),
    ("fw-mon", "fw-app13", 8000, "app /metrics scraped by monitoring (Debian 13)"),
    ("fw-lb", "fw-mon", 3100, "every host's log shipper pushes to Loki"),
    ("fw-app13", "fw-mon", 3100, "every host's log shipper pushes to Loki"),
    ("fw-app", "fw-mon", 4317, "the app's spans to Jaeger (OTLP gRPC)"),
    ("fw-app13", "fw-mon", 4318, "the app's spans to Jaeger (OTLP HTTP)"),
]
BLOCKED = [
    ("fw-lb", "fw-app", 9100, "node_exporter: monitoring only"),
    ("fw-app", "fw-app13", 9100, "node_exporter: monitoring only"),
    ("fw-app", "fw-mon", 9090, "Prometheus: monitoring hosts and admin networks only"),
    ("fw-lb", "fw-mon", 9090, "Prometheus: monitoring hosts and admin networks only"),
    ("fw-app", "fw-app13", 8000, "app hosts do not call each other"),
    ("fw-lb", "fw-app", 8000, "only the host's own instance ports"),
    ("fw-lb", "fw-app13", 8001, "only the host's own instance ports"),
    ("fw-app", "fw-lb", 8404, "HAProxy stats: monitoring only"),
    ("fw-mon", "fw-app", 443, "HTTPS only on load balancers"),
    ("fw-lb", "fw-app13", 7070, "side effect service: monitoring only"),
    ("fw-mon", "fw-lb", 7070, "side effect service: app hosts only"),
    ("fw-mon", "fw-app", 22, "SSH: admin networks only"),
    ("fw-lb", "fw-mon", 4318, "Jaeger's OTLP: app hosts only"),
    ("fw-app", "fw-mon", 16686, "Jaeger's UI: monitoring hosts and admin networks only"),
    ("fw-app", "fw-mon", 3000, "Grafana: monitoring hosts and admin networks only"),
    ("fw-lb", "fw-mon", 9093, "Alertmanager: monitoring hosts and admin networks only"),
    ("fw-app", "fw-mon", 9115, "blackbox_exporter: monitoring hosts only"),
]


@pytest.mark.parametrize(("src", "dst", "port", "why"), ALLOWED, ids=[f"{s}->{d}:{p}" for s, d, p, _ in ALLOWED])
def test_allowed(src, dst, port, why):
    assert dial(src, dst, port) == 0, why


@pytest.mark.parametrize(("src", "dst", "port", "why"), BLOCKED, ids=[f"{s}->{d}:{p}" for s, d, p, _ in BLOCKED])
def test_dropped(src, dst, port, why):
    # 1 s is ample on the scenario's bridge: every allowed pair (test_allowed) connects in
    # milliseconds, and a closed port that is not dropped answers with a reset (rc 1), not silence
    assert dial(src, dst, port, wait=1) == DROPPED, why


@pytest.mark.parametrize("dst", sorted(ADDRESS))
def test_controller_reaches_ssh(dst):
    banner = dial_from_controller(dst, 22, timeout=5)
    assert banner and banner.startswith(b"SSH-2.0-"), banner


def test_controller_reaches_https_but_not_node_exporter():
    assert dial_from_controller("fw-lb", 443) == b"keel-test-listener 443\n"
    assert dial_from_controller("fw-app", 9100) is None


def test_ping_answers():
    assert node("fw-mon").run(f"ping -c 1 -W 2 {ADDRESS['fw-app13']}").rc == 0


# ------------------------------------------------------------ exposure summary
def test_exposure_summary(tmp_path):
    """exposure.yml collects firewall_exposure like a report script would."""
    rc, _, output = converge({"keel_exposure_dir": str(tmp_path)}, tmp_path, limit="all", playbook="exposure.yml")
    assert rc == 0, output[-2000:]
    exposure = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ADDRESS}
    ssh = {"service": "ssh", "port": 22, "proto": "tcp", "sources": ["172.30.83.1/32"]}
    node_exporter = {"service": "node_exporter", "port": 9100, "proto": "tcp", "sources": ["172.30.83.31/32"]}
    for name, items in exposure.items():
        assert items[0] == ssh, name
        assert node_exporter in items, name
    assert {"service": "http", "port": 443, "proto": "tcp", "sources": ["0.0.0.0/0", "::/0"]} in exposure["fw-lb"]
    stats = {"service": "haproxy_stats", "port": 8404, "proto": "tcp", "sources": ["172.30.83.31/32"]}
    assert stats in exposure["fw-lb"]
    app_ports = {name: sorted(i["port"] for i in items if i["service"] == "app") for name, items in exposure.items()}
    assert app_ports == {"fw-lb": [], "fw-app": [8001, 8002], "fw-app13": [8000], "fw-mon": []}
    # the load balancer sends requests, the monitoring host scrapes /metrics
    assert all(sorted(i["sources"]) == ["172.30.83.11/32", "172.30.83.31/32"]
               for i in exposure["fw-app"] if i["service"] == "app")
    prometheus = [i for i in exposure["fw-mon"] if i["service"] == "prometheus"]
    assert [(i["port"], sorted(i["sources"])) for i in prometheus] == [(9090, ["172.30.83.1/32", "172.30.83.31/32"])]
    assert not any(i["service"] == "prometheus" for name in ("fw-lb", "fw-app", "fw-app13") for i in exposure[name])
    # a Prometheus may probe through (and scrapes) another monitoring host's blackbox_exporter
    blackbox = {"service": "blackbox_exporter", "port": 9115, "proto": "tcp", "sources": ["172.30.83.31/32"]}
    assert blackbox in exposure["fw-mon"]


# ----------------------------------------------------------------- bad changes
# Each bad input rides on a change that would alter the rules if preflight let it through.
WOULD_CHANGE = {"firewall_extra_rules": ['tcp dport 6000 accept comment "would change the rules"']}
BAD_INPUTS = {
    "port_out_of_range": (
        {"firewall_services": [{"name": "too_high", "port": 70000, "from_groups": ["monitoring"]}]},
        "port(s) 70000 outside 1-65535"),
    "unknown_group": (
        {"firewall_services": [{"name": "typo", "port": 5000, "from_groups": ["monitor"]}]},
        "names unknown inventory group(s) monitor in on_groups/from_groups"),
    "malformed_cidr": (
        {"firewall_services": [{"name": "bad_net", "port": 5000, "from_networks": ["10.0.0.256/8"]}]},
        "10.0.0.256/8 are not IPv4 or IPv6 addresses or CIDRs"),
    "host_without_address": (
        {"firewall_address_var": "keel_public_ip"},
        "have no usable"),
    "controller_locked_out": (
        {"firewall_controller_address": "198.51.100.7"},
        "from 198.51.100.7, which is not inside firewall_admin_networks"),
    "no_admin_network": (
        {"firewall_admin_networks": []},
        "firewall_admin_networks is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_rejected_before_any_change(case, tmp_path):
    overrides, message = BAD_INPUTS[case]
    app = node("fw-app")
    before = app.check_output(SNAPSHOT)
    rc, stdout, output = converge({**WOULD_CHANGE, **overrides}, tmp_path, limit="fw-app")
    assert rc != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert "changed=0" in stdout, output[-3000:]  # the recap: nothing changed
    assert app.check_output(SNAPSHOT) == before


def test_rule_nft_rejects_changes_nothing(tmp_path):
    """A rule nft -c rejects fails the run; file and loaded rules stay, traffic flows as before."""
    app = node("fw-app")
    before = app.check_output(SNAPSHOT)
    rc, stdout, output = converge({"firewall_extra_rules": ["tcp dport 5555 acept"]}, tmp_path, limit="fw-app")
    assert rc != 0, output[-3000:]
    assert "failed to validate" in output, output[-3000:]
    assert "Error: syntax error" in output, output[-3000:]
    assert "changed=0" in stdout, output[-3000:]
    assert app.check_output(SNAPSHOT) == before
    assert dial("fw-mon", "fw-app", 9100) == 0


def test_rollback_when_the_controller_is_cut_off(tmp_path):
    """Admin networks that leave the controller out: the confirmation fails and the host rolls back."""
    app13 = node("fw-app13")
    before = app13.check_output(SNAPSHOT)
    rc, _, output = converge(
        {"firewall_admin_networks": ["192.0.2.0/24"], "firewall_rollback_timeout": 30, "firewall_confirm_timeout": 5},
        tmp_path, limit="fw-app13",
    )
    assert rc != 0, output[-3000:]
    assert "could not open a new connection to 172.30.83.22:22" in output, output[-3000:]
    assert "Load the firewall rules (one nft transaction)" in output  # the cut-off rules were loaded
    deadline = time.monotonic() + 60
    while app13.check_output(SNAPSHOT) != before and time.monotonic() < deadline:
        time.sleep(2)
    assert app13.check_output(SNAPSHOT) == before
    banner = dial_from_controller("fw-app13", 22, timeout=5)
    assert banner and banner.startswith(b"SSH-2.0-"), banner
    journal = app13.check_output("journalctl -u keel-firewall-rollback --no-pager -o cat")
    assert "restoring the last confirmed rules" in journal, journal


# Last: it uses up the controller's SSH allowance on fw-lb for a while.
def test_ssh_new_connections_are_rate_limited():
    """10/minute with a burst of 20 per source: a burst of new connections is cut off."""
    connected = 0
    for _ in range(40):
        try:
            socket.create_connection((ADDRESS["fw-lb"], 22), timeout=2).close()
        except TimeoutError:
            break
        connected += 1
    assert 20 <= connected < 40, connected
