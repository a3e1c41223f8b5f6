"""The artifact manifest against the architectures of the inventory: the artifact
role's check (run by every binary-installing role's preflight) stops a host whose
architecture has no sha256 for the pinned version, naming what is missing, and
lets the others through; every role's default version is in the manifest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from keel_test_helpers import FAKE_ARCHITECTURE

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"
MANIFEST = yaml.safe_load((ROOT / "roles/artifact/defaults/main.yml").read_text())["artifact_manifest"]
# roles that install a manifest artifact of their own name
ROLES = ("alertmanager", "blackbox_exporter", "jaeger", "node_exporter", "prometheus")


@pytest.mark.parametrize("role", ROLES)
def test_every_role_default_version_is_in_the_manifest(role):
    version = str(yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text())[f"{role}_version"])
    assert version in MANIFEST[role]["sha256"], (role, version, list(MANIFEST[role]["sha256"]))
    assert "amd64" in MANIFEST[role]["sha256"][version]


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> str:
    """The check for jaeger and prometheus on two hosts: one x86_64, one aarch64."""
    tmp = tmp_path_factory.mktemp("arch")
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                         "hosts": {"amd": {"test_arch": "x86_64"}, "arm": {"test_arch": "aarch64"}}}}
    (tmp / "inventory.yml").write_text(yaml.safe_dump(inventory))
    plays = [{"name": f"Check {name}", "hosts": "all", "gather_facts": False,
              "tasks": [FAKE_ARCHITECTURE,
                        {"name": "Check", "ansible.builtin.include_role": {"name": "artifact", "tasks_from": "check"},
                         "vars": {"artifact_name": name, "artifact_version": str(version)}}]}
             for name, version in (("prometheus", "2.55.1"), ("jaeger", "2.20.0"))]
    (tmp / "play.yml").write_text(yaml.safe_dump(plays))
    res = subprocess.run([str(PLAYBOOK), "-i", str(tmp / "inventory.yml"), str(tmp / "play.yml")],
                         capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
                         env={**os.environ, "ANSIBLE_CACHE_PLUGIN": "memory"})
    assert res.returncode != 0, res.stdout[-3000:]
    return res.stdout + res.stderr


def test_an_architecture_without_a_checksum_is_stopped_with_what_to_add(checked):
    assert "has no sha256 for jaeger 2.20.0 on arm64" in checked, checked[-3000:]
    assert "Pick a listed version, or add the version with its sha256" in checked


def test_architectures_with_a_checksum_pass(checked):
    recap = {line.split()[0]: line for line in checked.split("PLAY RECAP")[-1].splitlines() if ":" in line}
    assert "failed=0" in recap["amd"], recap
    # arm passed prometheus (listed for arm64) and failed only jaeger
    assert "failed=1" in recap["arm"], recap
    assert "has no sha256 for prometheus" not in checked
