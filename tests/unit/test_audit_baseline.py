"""The security audit's baseline (plugins/filter/keel_audit.py, security review M7): judged
against fixed rules, not against what the inventory asked the roles for."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins" / "filter"))
from keel_audit import (
    keel_audit_summary,
    keel_firewall_baseline,
    keel_firewall_sources,
    keel_socket_findings,
    keel_ssh_baseline,
    keel_unit_findings,
)

STRICT_SSH = {"passwordauthentication": "no", "kbdinteractiveauthentication": "no", "permitemptypasswords": "no",
              "hostbasedauthentication": "no", "permitrootlogin": "no", "pubkeyauthentication": "yes",
              "maxauthtries": "3", "x11forwarding": "no", "allowagentforwarding": "no", "permittunnel": "no"}


def sev(findings: list) -> list[tuple[str, str]]:
    return sorted((f["severity"], f["message"].split()[0]) for f in findings)


def test_a_hardened_sshd_passes_the_baseline():
    assert keel_ssh_baseline(STRICT_SSH) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"passwordauthentication": "yes"}, [("critical", "PasswordAuthentication")]),
    ({"kbdinteractiveauthentication": "yes"}, [("critical", "KbdInteractiveAuthentication")]),
    ({"permitemptypasswords": "yes"}, [("critical", "PermitEmptyPasswords")]),
    ({"permitrootlogin": "yes"}, [("critical", "PermitRootLogin")]),
    ({"permitrootlogin": "prohibit-password"}, [("medium", "PermitRootLogin")]),
    ({"pubkeyauthentication": "no"}, [("high", "PubkeyAuthentication")]),
    ({"maxauthtries": "6"}, [("low", "MaxAuthTries")]),
    ({"x11forwarding": "yes", "permittunnel": "yes"}, [("low", "PermitTunnel"), ("low", "X11Forwarding")]),
])
def test_weak_sshd_settings_are_found_whatever_the_inventory_says(change, expected):
    assert sev(keel_ssh_baseline({**STRICT_SSH, **change})) == expected


def nft(*rules: str) -> str:
    body = "\n".join(f"\t\t{r}" for r in rules)
    return ("table inet other {\n\tchain input {\n\t\ttcp dport 9999 accept\n\t}\n}\n"
            "table inet keel_filter {\n\tset admin_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
            "\t\telements = { 10.0.0.0/24 }\n\t}\n"
            f"\tchain input {{\n\t\ttype filter hook input priority filter; policy drop;\n{body}\n\t}}\n"
            "\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t}\n}\n")


KEEL_EDGE = nft('ct state established,related accept', 'iif "lo" accept', 'ct state invalid drop',
                'tcp dport 22 ip saddr @admin_v4 accept comment "ssh: admin networks"',
                'tcp dport 22 drop comment "ssh: everyone else"',
                'icmp type echo-request limit rate 10/second burst 20 packets accept',
                'tcp dport { 80, 443 } accept comment "web"',
                'ip saddr @svc_node_exporter_v4 tcp dport 9100 accept comment "node_exporter"')


def test_keels_edge_ruleset_passes_the_baseline():
    assert keel_firewall_baseline(KEEL_EDGE) == []


@pytest.mark.parametrize(("rule", "expected"), [
    ('tcp dport 22 accept comment "ssh: anywhere"', [("high", "SSH")]),
    ("ip saddr 0.0.0.0/0 tcp dport 2222 accept", [("high", "SSH")]),
    ('meta nfproto ipv4 tcp dport 9090 accept comment "prometheus"', [("high", "tcp")]),
    ("tcp dport 8000-8003 accept", [("high", "tcp")]),
    ("udp dport 123 accept", [("high", "udp")]),
    ("ip6 saddr ::/0 tcp dport 3000 accept", [("high", "tcp")]),
    ("accept", [("critical", "the")]),
    ("ip saddr 10.0.0.0/8 tcp dport 9090 accept", []),
    ("ip saddr { 10.1.0.0/16, 192.0.2.7 } tcp dport 22 accept", []),
    ("tcp dport 443 accept", []),
    ("tcp dport 22 ct state new accept", [("high", "SSH")]),
])
def test_what_the_world_may_reach(rule, expected):
    assert sev(keel_firewall_baseline(nft(rule), [80, 443], [22, 2222])) == expected


def test_another_tables_rules_and_a_missing_table_are_not_judged_here():
    assert keel_firewall_baseline("table inet other {\n\tchain input {\n\t\taccept\n\t}\n}\n") == []


ANY = "0.0.0.0"  # noqa: S104  what ss shows for a socket on every address


def sock(proto: str, address: str, port: int, name: str = "x") -> dict:
    return {"proto": proto, "address": address, "port": port, "name": name}


DECLARED = [{"service": "ssh", "proto": "tcp", "port": 22}, {"service": "web", "proto": "tcp", "port": 443},
            {"service": "ntp", "proto": "udp", "port": 123}, {"service": "app", "proto": "tcp", "port": "8000-8001"}]


def test_udp_listeners_are_judged_like_tcp():
    sockets = [sock("tcp", ANY, 22), sock("tcp", ANY, 443), sock("udp", ANY, 123, "chronyd"),
               sock("tcp", "10.0.0.5", 8000), sock("tcp", "10.0.0.5", 8001), sock("udp", "127.0.0.1", 323, "chronyd"),
               sock("udp", ANY, 5353, "avahi"), sock("udp", ANY, 68, "dhclient"),
               sock("tcp", "::", 6379, "redis")]
    enforced = keel_socket_findings(sockets, DECLARED, True)
    assert sev(enforced) == [("low", "dhclient"), ("medium", "avahi"), ("medium", "redis")]
    open_ = keel_socket_findings(sockets, DECLARED, False)
    assert sev(open_) == [("critical", "avahi"), ("critical", "redis"), ("low", "dhclient")]


def test_a_declared_port_nobody_listens_on_is_info():
    found = keel_socket_findings([sock("tcp", ANY, 22)], DECLARED[:2], True)
    assert [(f["severity"], f["message"]) for f in found] == [
        ("info", "the firewall opens 443/tcp but nothing listens there")]


def rated(unit: str, exposure: str | None) -> dict:
    """A loop result of `systemd-analyze security UNIT` as the audit registers it."""
    stdout = "" if exposure is None else f"  NAME  EXPOSURE\n→ Overall exposure level for {unit}: {exposure} OK"
    return {"item": unit, "stdout": stdout, "rc": 0}


LIMITS = {"haproxy.service": 2.5, "ssh.service": None}


def test_units_within_their_limits_give_no_finding_and_sshd_is_rated_for_the_record():
    out = keel_unit_findings([rated("prometheus.service", "1.2"), rated("haproxy.service", "2.5"),
                              rated("ssh.service", "9.6")], LIMITS, 2.0)
    assert out["units"] == [{"unit": "prometheus.service", "exposure": 1.2, "limit": 2.0},
                            {"unit": "haproxy.service", "exposure": 2.5, "limit": 2.5},
                            {"unit": "ssh.service", "exposure": 9.6, "limit": None}]
    assert sev(out["findings"]) == [("info", "ssh.service")]


@pytest.mark.parametrize(("result", "expected"), [
    (rated("haproxy.service", "2.6"), [("high", "haproxy.service")]),   # its own limit
    (rated("loki.service", "2.1"), [("high", "loki.service")]),         # the default limit
    (rated("alloy.service", None), [("medium", "systemd-analyze")]),    # not rated at all
])
def test_a_loosened_or_unrated_unit_is_a_finding(result, expected):
    assert sev(keel_unit_findings([result], LIMITS, 2.0)["findings"]) == expected


def test_unit_findings_refuse_what_is_not_a_loop_result():
    with pytest.raises(AnsibleFilterError):
        keel_unit_findings("not a list", LIMITS, 2.0)


def test_the_summary_counts_by_severity_lists_the_worst_first_and_names_hosts_not_audited():
    hosts = [
        {"inventory_hostname": "lb1", "group_names": ["loadbalancers"], "__keel_findings": [
            {"check": "units", "severity": "info", "message": "ssh.service is rated 9.6"},
            {"check": "ssh", "severity": "critical", "message": "PasswordAuthentication yes | bad"}]},
        {"inventory_hostname": "app1", "group_names": ["app"], "__keel_findings": []},
        {"inventory_hostname": "app2", "group_names": ["app"]},  # unreachable: no findings list
    ]
    text = keel_audit_summary(hosts, "2026-12-07T12:00:00Z")
    assert text.startswith("# Security audit, 2026-12-07T12:00:00Z\n\n**FAIL**: 1 critical finding(s).")
    assert "| lb1 | loadbalancers | 1 | 0 | 0 | 0 | 1 |" in text
    assert "| app1 | app | 0 | 0 | 0 | 0 | 0 |" in text
    assert "Not audited (unreachable or failed before the audit): app2." in text
    findings = text.split("## Findings", 1)[1]
    assert findings.index("critical") < findings.index("info")
    assert "PasswordAuthentication yes \\| bad" in findings  # a | in a message does not break the table


def test_the_summary_never_says_pass_without_data():
    assert "**NO DATA**" in keel_audit_summary([{"inventory_hostname": "x"}], "t")
    assert "**PASS**" in keel_audit_summary([{"inventory_hostname": "x", "__keel_findings": []}], "t")


NOW = 1_800_000_000.0


def aide_prom(success: int = 1, added: int = 0, removed: int = 0, changed: int = 0, at: float = NOW - 3600) -> str:
    """What keel-aide-check writes (its own metrics() function, so the two cannot drift apart)."""
    import importlib.machinery
    import importlib.util
    path = Path(__file__).resolve().parents[2] / "roles/os_hardening/files/usr/local/sbin/keel-aide-check"
    loader = importlib.machinery.SourceFileLoader("keel_aide_check", str(path))
    spec = importlib.util.spec_from_loader("keel_aide_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.metrics(bool(success), {"added": added, "removed": removed, "changed": changed}, at)


@pytest.mark.parametrize(("prom", "expected"), [
    (aide_prom(), []),
    (aide_prom(added=1, changed=2), [("medium", "AIDE")]),
    (aide_prom(success=0), [("medium", "AIDE's")]),
    (aide_prom(at=NOW - 3 * 86400), [("low", "AIDE's")]),
    ("", [("low", "AIDE's")]),  # never reported
])
def test_aides_last_result_is_judged(prom, expected):
    from keel_audit import keel_aide_findings
    found = keel_aide_findings(prom, NOW)
    assert sev(found) == expected, found
    assert all(f["check"] == "aide" for f in found)


# ---------------------------------------------------------------- accept rules' sources (M7)
def keel_table(*rules: str, svc_elements: str = "10.0.1.10, 10.0.1.11") -> str:
    """keel's table as nft list ruleset prints it: named sets (one wraps over two lines), rules."""
    body = "\n".join(f"\t\t{r}" for r in rules)
    return ("table inet keel_filter {\n\tset admin_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
            "\t\telements = { 10.0.0.0/24,\n\t\t\t     192.0.2.7 }\n\t}\n"
            "\tset admin_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { 2001:db8::/64 }\n\t}\n"
            f"\tset svc_node_exporter_v4 {{\n\t\ttype ipv4_addr\n\t\tflags interval\n"
            f"\t\telements = {{ {svc_elements} }}\n\t}}\n"
            f"\tchain input {{\n\t\ttype filter hook input priority filter; policy drop;\n{body}\n\t}}\n}}\n")


EXPOSURE = [
    {"service": "ssh", "port": 22, "proto": "tcp", "sources": ["10.0.0.0/24", "192.0.2.7/32", "2001:db8::/64"]},
    {"service": "web", "port": 443, "proto": "tcp", "sources": ["0.0.0.0/0", "::/0"]},
    {"service": "node_exporter", "port": 9100, "proto": "tcp", "sources": ["10.0.1.10/32", "10.0.1.11/32"]},
]
KEEL_RULES = ('ct state established,related accept', 'iif "lo" accept',
              'tcp dport 22 ip saddr @admin_v4 accept comment "ssh: admin networks"',
              'tcp dport 22 ip6 saddr @admin_v6 accept comment "ssh: admin networks"',
              'tcp dport { 80, 443 } accept comment "web"',
              'ip saddr @svc_node_exporter_v4 tcp dport 9100 accept comment "node_exporter"',
              'ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept comment "dhcpv6 client"')


def test_a_table_that_matches_the_inventory_has_no_finding():
    assert keel_firewall_sources(keel_table(*KEEL_RULES), EXPOSURE) == []


@pytest.mark.parametrize(("change", "says"), [
    # a hand-added rule: a source the inventory never declared for the port
    ({"rule": "ip saddr 203.0.113.9 tcp dport 9100 accept"}, "tcp 9100 accepts 203.0.113.9/32, beyond"),
    # a stale set: a host removed from the inventory still in the loaded set
    ({"svc_elements": "10.0.1.10, 10.0.1.11, 10.0.1.99"}, "tcp 9100 accepts 10.0.1.99/32, beyond"),
    # a wider network than declared
    ({"rule": "ip saddr 10.0.0.0/16 tcp dport 22 accept"}, "tcp 22 accepts 10.0.0.0/16, beyond"),
    # a port the inventory does not open at all
    ({"rule": "ip saddr @admin_v4 tcp dport 5432 accept"}, "declares for it (nothing)"),
    # every port from one address
    ({"rule": "ip saddr 10.0.1.10 accept"}, "accepts every port from 10.0.1.10/32"),
    # an IPv6 source against IPv4-only declarations
    ({"rule": "ip6 saddr 2001:db8:1::/48 tcp dport 9100 accept"}, "accepts 2001:db8:1::/48, beyond"),
])
def test_a_source_beyond_the_inventory_is_medium(change, says):
    rules = (*KEEL_RULES, change["rule"]) if "rule" in change else KEEL_RULES
    found = keel_firewall_sources(keel_table(*rules, svc_elements=change.get("svc_elements", "10.0.1.10, 10.0.1.11")),
                                  EXPOSURE)
    assert [f["severity"] for f in found] == ["medium"], found
    assert says in found[0]["message"], found


def test_an_undefined_set_and_bad_arguments():
    found = keel_firewall_sources(keel_table(*KEEL_RULES, "ip saddr @nosuch tcp dport 22 accept"), EXPOSURE)
    assert [(f["severity"], "@nosuch" in f["message"]) for f in found] == [("low", True)]
    assert keel_firewall_sources("table inet other {\n}\n", EXPOSURE) == []
    with pytest.raises(AnsibleFilterError):
        keel_firewall_sources(None, EXPOSURE)
