from __future__ import annotations

import json

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
