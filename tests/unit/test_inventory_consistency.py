"""Inventory-wide checks of validate.yml (the first play): what no per-host check can see.

Two hosts given one keel_private_ip passed every preflight, and site.yml then changed
every host and never finished. The filter keel_inventory_problems is tested alone, and
site.yml with a bad inventory must stop in its first play, on the controller, naming
the hosts, before any host is contacted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "filter"))
from keel_validators import keel_inventory_problems  # noqa: E402
from test_inventories_and_validation import (  # noqa: E402
    assert_stopped_on_the_controller,
    lab_groups,
    run_playbook,
    write_inventory,
)


def host(name: str, ip: str, **extra) -> dict:
    return {"name": name, "ip": ip, "host": extra.get("host", ip), "port": extra.get("port", ""),
            "connection": extra.get("connection", "ssh")}


GOOD = [host("lb1", "10.0.0.11"), host("app1", "10.0.0.21"), host("app2", "10.0.0.22")]


def test_a_consistent_inventory_has_no_problem():
    assert keel_inventory_problems(GOOD, {"app": ["app1", "app2"], "app_spare": []}) == []


def test_json_text_is_read_too():
    import json

    assert keel_inventory_problems(json.dumps(GOOD), {}) == []


@pytest.mark.parametrize(("hosts", "groups", "says"), [
    ([*GOOD[:2], host("app2", "10.0.0.21", host="10.9.9.9")], {},
     "hosts app1, app2 share keel_private_ip 10.0.0.21"),
    ([*GOOD[:2], host("app2", "10.0.0.021")], {}, "keel_private_ip '10.0.0.021' is not an IP address"),
    ([*GOOD[:2], host("app2", "app2.example")], {}, "is not an IP address"),
    ([*GOOD[:2], host("app2", "0.0.0.0")], {}, "cannot be reached from the other hosts"),  # noqa: S104
    ([*GOOD[:2], host("app2", "127.0.0.1")], {}, "cannot be reached from the other hosts"),
    ([*GOOD[:2], host("app2", "224.0.0.5")], {}, "cannot be reached from the other hosts"),
    ([*GOOD[:2], host("app2", "10.0.0.22", host="10.0.0.21")], {},
     "hosts app1, app2 are the same machine (ssh://10.0.0.21:default)"),
    ([*GOOD[:2], host("App1", "10.0.0.22")], {}, "host names App1, app1 differ only in case"),
    ([*GOOD[:2], host("app2", "fd00::21"), host("app3", "fd00:0::21")], {}, "share keel_private_ip fd00::21"),
])
def test_inconsistent_inventories_are_named(hosts, groups, says):
    problems = keel_inventory_problems(hosts, groups)
    assert any(says in p for p in problems), problems


def test_same_address_on_other_ports_is_two_machines_and_local_hosts_may_use_loopback():
    vms = [host("app1", "10.0.0.21", host="127.0.0.1", port="2201"),
           host("app2", "10.0.0.22", host="127.0.0.1", port="2202")]
    assert keel_inventory_problems(vms, {}) == []
    local = [host("lb1", "127.0.0.11", connection="local"), host("app1", "127.0.0.12", connection="local")]
    assert keel_inventory_problems(local, {}) == []


def test_site_with_two_hosts_on_one_address_stops_in_the_first_play(tmp_path):
    groups = lab_groups()
    groups["app"]["app2"] = {"keel_private_ip": "192.0.2.21", "ansible_host": "192.0.2.122"}
    res = run_playbook(tmp_path, write_inventory(tmp_path, groups), "site.yml")
    assert_stopped_on_the_controller(res, "Validate the controller and the inventory",
                                     "hosts app1, app2 share keel_private_ip 192.0.2.21",
                                     "nothing was changed on any host")


def test_a_spare_in_service_is_not_a_problem():
    """The autoscaler's spare-pool provider hands out the spares not in app, and its inventory
    writer adds them to app: such a host is in both groups (found by the autoscaler's lab ramp:
    a check that refused it failed every scale-out)."""
    assert keel_inventory_problems(GOOD, {"app": ["app1", "app2"], "app_spare": ["app2"]}) == []


def test_add_node_of_a_spare_already_in_the_app_group_passes_validation(tmp_path):
    groups = lab_groups()
    groups["app_spare"] = {"app2": {}}
    res = run_playbook(tmp_path, write_inventory(tmp_path, groups), "add-node.yml", "-e", "keel_new_node=app2",
                       "--tags", "keel_no_such_tag")
    output = res.stdout + res.stderr
    assert "Check the hosts agree with each other" in output, output[-3000:]
    assert "is inconsistent" not in output, output[-3000:]


def test_placeholder_secrets_are_named_by_variable_never_by_value():
    from keel_validators import keel_placeholder_secrets

    hostvars = {
        "lb1": {"vault_haproxy_stats_password": "REPLACE-with-a-long-random-password", "keel_private_ip": "10.0.0.1",
                "haproxy_stats_password": "a-real-one-Xk29", "app_extra_env": {"DB_URL": "postgresql://db/keel"}},
        "mon1": {"alertmanager_webhook_url": "https://hooks.example.com/services/T/B/X",
                 "grafana_admin_password": "changeme-please", "some_setting": "REPLACE me but not a secret"},
        "app1": {"app_extra_env": {"API_TOKEN": "your-token-here", "OK": "fine"}, "vault_app_extra_env": {}},
    }
    found = keel_placeholder_secrets(hostvars, ["lb1", "mon1", "app1"])
    assert found == ["alertmanager_webhook_url (mon1)", "app_extra_env (app1)", "grafana_admin_password (mon1)",
                     "vault_haproxy_stats_password (lb1)"], found
    assert not any("REPLACE" in f or "example.com" in f for f in found)


def test_a_secret_that_cannot_be_read_is_left_to_its_role():
    from keel_validators import keel_placeholder_secrets

    class Vaulted(dict):
        def __getitem__(self, key):
            raise RuntimeError("Attempting to decrypt but no vault secrets found")

    vaulted = Vaulted(vault_x_password="?")  # noqa: S106
    assert keel_placeholder_secrets({"lb1": vaulted}, ["lb1"]) == []


def test_port_clashes_are_found_per_host():
    from keel_validators import keel_port_clashes

    listeners = [{"haproxy http": 80, "haproxy https": "443", "haproxy stats": 9100},
                 {"app api": [8000, 8001], "app backend": 8001}, {"node_exporter": 9100}, {}]
    assert keel_port_clashes(listeners) == ["port 8001: app api, app backend",
                                         "port 9100: haproxy stats, node_exporter"]
    assert keel_port_clashes([{"a": 1}, {"b": 2}, {"c": "{{ not a port }}"}]) == []


def preflight_on_this_machine(tmp_path, lb_vars: dict) -> subprocess.CompletedProcess[str]:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, "ansible_become": False}
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {
        "loadbalancers": {"hosts": {"lb1": {**local, "keel_private_ip": "127.0.0.11", **lb_vars}}},
        "app": {"hosts": {"app1": {**local, "keel_private_ip": "127.0.0.21", "app_release_version": "1.0.0",
                                   "app_release_file": "/tmp/keel-app-1.0.0.tar.gz",
                                   "app_release_sha256": "0" * 64}}}}}}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false")
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inv),
                           "playbooks/preflight.yml", "-e", "keel_logs_and_traces=false"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_two_services_on_one_port_of_a_host_stop_the_first_plays(tmp_path):
    res = preflight_on_this_machine(tmp_path, {"haproxy_stats_port": 9100})
    out = " ".join(res.stdout.split())
    assert res.returncode != 0, out[-3000:]
    assert "lb1 would run two services on one port (port 9100: haproxy stats, node_exporter)" in out, out[-3000:]


def test_a_host_without_clashes_passes_the_port_check(tmp_path):
    res = preflight_on_this_machine(tmp_path, {})
    out = " ".join(res.stdout.split())
    assert res.returncode == 0, out[-3000:]
    assert "Check no two services of this host listen on one port" in out
