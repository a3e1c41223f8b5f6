"""The baseline and hardening layers' inputs are checked in the first plays (playbooks/preflight.yml).

site.yml ran common on every host before ssh_hardening, firewall and os_hardening checked
their inputs: a bad os_hardening value was refused minutes into the run, after the baseline
had changed every host. Now site.yml checks them on every host, and add-node.yml on the new
nodes, in the preflight play, before the lifecycle lock is taken and any host changes.

A host refused in the preflight stops every host (site.yml), not only itself: the others
would have gone on to change their hosts.

Every host is this machine (connection local, no become; test_node_playbooks.Fleet), and
every play that changes hosts is skipped by tag as a second guard: a value the preflight
let through would end the run with rc 0, which the tests catch.
"""

from __future__ import annotations

import json

import pytest
from test_node_playbooks import CHANGING_TAGS, Fleet, recap, run_playbook

BAD = {
    "common": ({"common_timezone": "Mars/Olympus"}, "common_timezone 'Mars/Olympus' is not an IANA time zone"),
    "ssh_hardening": ({"ssh_hardening_permit_root_login": "yes"},
                      "ssh_hardening_permit_root_login must be \"no\" or \"prohibit-password\""),
    "firewall": ({"firewall_admin_networks": []}, "firewall_admin_networks is empty"),
    "os_hardening": ({"os_hardening_umask": 27}, "os_hardening_umask must be an octal string"),
}
FIRST_CHANGING_PLAY = "PLAY [Take the lifecycle lock]"


@pytest.fixture
def fleet(tmp_path) -> Fleet:
    fleet = Fleet(tmp_path)
    fleet.app("app1", "1.0.1")
    fleet.app("app2")
    return fleet


def site(tmp_path, fleet: Fleet, extra: dict | None = None):
    (tmp_path / "extra.json").write_text(json.dumps(extra or {}))
    res = run_playbook(tmp_path, fleet.inventory(), "site.yml", "-e", f"@{tmp_path / 'extra.json'}",
                       "--skip-tags", CHANGING_TAGS)
    return res, " ".join((res.stdout + res.stderr).split())


# each bad value on a host of its own (its host_vars): every host is refused by its own
# check, and app4, whose values are good, is stopped too: in one run, before the lock
ON_HOST = {"common": "lb1", "ssh_hardening": "app1", "firewall": "app2", "os_hardening": "app3"}


def test_site_refuses_each_hosts_bad_hardening_layer_value_and_stops_every_host(tmp_path, fleet):
    fleet.app("app3")
    fleet.app("app4")
    for role, host in ON_HOST.items():
        fleet.hosts["loadbalancers" if host.startswith("lb") else "app"][host].update(BAD[role][0])
    res, out = site(tmp_path, fleet)
    assert res.returncode != 0, out[-3000:]
    stopped = out.split("PLAY [Check the inputs of every layer]", 1)[1]
    for role, host in ON_HOST.items():
        assert f"fatal: [{host}]" in stopped and BAD[role][1] in stopped, (role, out[-3000:])
    assert "fatal: [app4]" not in stopped.split("TASK [Stop every host when one failed its checks]")[0]
    assert ("app1, app2, app3, lb1 failed the checks above (each one's error is printed there): the run stops "
            "on every host.") in stopped, out[-3000:]
    assert FIRST_CHANGING_PLAY not in out, out[-3000:]  # app4 stopped too
    assert not fleet.lock.exists()


def test_site_with_good_values_passes_the_preflight_and_takes_the_lock(tmp_path, fleet):
    res, out = site(tmp_path, fleet)
    assert res.returncode == 0, out[-3000:]
    for role in BAD:
        assert f"{role} : Check" in out, role  # the role's checks ran in the preflight play
    assert FIRST_CHANGING_PLAY in out


def add_node_plan(tmp_path, bad_on: str):
    fleet = Fleet(tmp_path)
    fleet.app("app1", "1.0.1")
    fleet.app("app3")
    fleet.hosts["app"][bad_on]["os_hardening_umask"] = 27
    res = run_playbook(tmp_path, fleet.inventory(), "add-node.yml", "-e", "keel_new_nodes=app3",
                       "-e", "keel_add_node_plan_only=true", "--skip-tags", CHANGING_TAGS)
    return fleet, res, " ".join((res.stdout + res.stderr).split())


def test_add_node_checks_the_hardening_layer_on_the_new_nodes_before_any_change(tmp_path):
    """The new node's bad value refuses it in the preflight; the roll call then refuses the
    scale-out (the autoscaler's keel-release-mismatch), and no host changed."""
    fleet, res, out = add_node_plan(tmp_path, bad_on="app3")
    assert res.returncode != 0, out[-3000:]
    stopped = out.split("PLAY [Check the inputs of every layer]", 1)[1].split("PLAY [", 1)[0]
    assert "fatal: [app3]" in stopped and BAD["os_hardening"][1] in stopped, out[-3000:]
    assert "scale-out refused (keel-release-mismatch): app3 failed earlier in this run" in out, out[-3000:]
    assert all(c["changed"] == 0 for host, c in recap(res.stdout).items() if host != "localhost"), out[-3000:]
    assert "No host was changed and the lifecycle lock was released." in out
    assert not fleet.lock.exists()


def test_add_node_leaves_the_serving_hosts_hardening_values_alone(tmp_path):
    """add-node.yml does not harden the serving hosts: their values do not stop a scale-out."""
    _, res, out = add_node_plan(tmp_path, bad_on="app1")
    assert res.returncode == 0, out[-3000:]
    assert "Plan only (keel_add_node_plan_only=true): app3 would get the release above" in out, out[-3000:]
