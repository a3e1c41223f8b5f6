from __future__ import annotations

import json

import pytest
import vm


def test_lab_index_is_stable_and_in_range():
    assert vm.lab_index("common-vm") == vm.lab_index("common-vm")
    for name in ("a", "lab", "common-vm", "x" * 40):
        assert 100 <= vm.lab_index(name) < 200


def test_device_names_fit_the_kernel_limit():
    bridge, taps = vm.dev_names("a-rather-long-lab-name", 16)
    assert len(taps) == 16
    assert all(len(name) <= 15 for name in [bridge, *taps])
    assert len(set(taps)) == 16


def test_recipe_hash_changes_with_the_recipe(tmp_path, monkeypatch):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "packages.txt").write_text("sudo\n")
    monkeypatch.setattr(vm, "RECIPE", recipe)
    first = vm.recipe_hash()
    (recipe / "packages.txt").write_text("sudo\ncurl\n")
    assert vm.recipe_hash() != first


def test_inventory_lists_every_vm(tmp_path):
    info = {"key": "/k", "vms": [{"name": "l-vm1", "port": 2201, "private_ip": "10.213.1.11"},
                                 {"name": "l-vm2", "port": 2202, "private_ip": "10.213.1.12"}]}
    vm.write_inventory(tmp_path, info)
    inv = json.loads((tmp_path / "inventory.yml").read_text())
    hosts = inv["all"]["children"]["vms"]["hosts"]
    assert hosts["l-vm2"]["ansible_port"] == 2202
    assert hosts["l-vm1"]["keel_private_ip"] == "10.213.1.11"
    assert hosts["l-vm1"]["ansible_user"] == "debian"


def test_inventory_uses_the_names_given(tmp_path):
    info = {"key": "/k", "vms": [{"name": "l-lb1", "host": "lb1", "port": 2201, "private_ip": "10.213.80.11"}]}
    vm.write_inventory(tmp_path, info)
    hosts = json.loads((tmp_path / "inventory.yml").read_text())["all"]["children"]["vms"]["hosts"]
    assert list(hosts) == ["lb1"]


def test_names_and_forwards_are_parsed_per_vm():
    names, forwards = vm.parse_names_and_forwards("lb1,app1", ["lb1:8443:443", "lb1:8080:80"], 2)
    assert names == ["lb1", "app1"]
    assert forwards == {"lb1": [(8443, 443), (8080, 80)]}
    assert vm.parse_names_and_forwards(None, ["vm2:9000:22"], 2) == (None, {"vm2": [(9000, 22)]})


@pytest.mark.parametrize(("names", "forwards", "message"), [
    ("lb1", [], "must list 2 different names"),
    ("lb1,lb1", [], "must list 2 different names"),
    ("lb1,App_1", [], "is not a host name"),
    ("lb1,app1", ["mon1:9090:9090"], "NAME one of lb1, app1"),
    ("lb1,app1", ["lb1:80:80"], "PORT must be a free port"),
    ("lb1,app1", ["lb1:8443:443", "app1:8443:443"], "PORT must be a free port"),
])
def test_bad_names_and_forwards_are_refused_before_anything_starts(names, forwards, message):
    with pytest.raises(SystemExit, match=message):
        vm.parse_names_and_forwards(names, forwards, 2)
