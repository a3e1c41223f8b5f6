"""Security review L8: admins have no password, so sudo asks none (a CIS deviation). With
common_admin_require_security_keys, the common role's preflight refuses a human admin with a
key file; hardware security keys (sk-*) pass, and so do the automation accounts it exempts.

One ansible-playbook run of the role's preflight on this machine, one host per case (named after
it, "-" for "_": a hostname).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
SOFT = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcG9pbnRsZXNzLXRlc3Qta2V5LW9ubHk alice@laptop"
HARDWARE_KEY = ("sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIBcG9pbnRsZXNz"
         "AAAABHNzaDo= alice@yubikey")
CASES = {
    "soft_key_refused": ({"common_admin_users": [{"name": "alice", "ssh_keys": [HARDWARE_KEY, SOFT]}]},
                         "admin 'alice' has a key that is a file, not a hardware security key: ssh-ed25519"),
    "security_key_accepted": ({"common_admin_users": [{"name": "alice", "ssh_keys": [HARDWARE_KEY]}]}, None),
    "automation_exempt": ({"common_admin_users": [{"name": "alice", "ssh_keys": [HARDWARE_KEY]},
                                                  {"name": "awx", "ssh_keys": [SOFT]}],
                           "common_admin_automation_users": ["awx"]}, None),
    "removed_admin_ignored": ({"common_admin_users": [{"name": "bob", "ssh_keys": [SOFT], "state": "absent"}]}, None),
    "off_by_default": ({"common_admin_require_security_keys": False,
                        "common_admin_users": [{"name": "alice", "ssh_keys": [SOFT]}]}, None),
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("l8")
    hosts = {name: {"common_admin_require_security_keys": True, **extra} for name, (extra, _) in CASES.items()}
    (work / "inventory.yml").write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "hosts": {name.replace("_", "-"): v for name, v in hosts.items()}}}))
    (work / "play.yml").write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": True, "tasks": [
        {"ansible.builtin.include_role": {"name": "common", "tasks_from": "preflight"}}]}]))
    res = subprocess.run([str(PLAYBOOK), "-i", str(work / "inventory.yml"), str(work / "play.yml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False,
                         env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                              "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    per_host: dict[str, str] = {}
    for line in (res.stdout + res.stderr).splitlines():
        found = re.match(r"^(?:fatal|failed|ok|changed|skipping): \[([^\]]+)\]", line)
        if found:
            per_host[found.group(1)] = per_host.get(found.group(1), "") + " " + line
    per_host["__all__"] = res.stdout + res.stderr
    return per_host


@pytest.mark.parametrize("case", sorted(CASES))
def test_human_admins_need_security_keys_when_required(outputs, case):
    says = CASES[case][1]
    output = outputs.get(case.replace("_", "-"), "")
    assert output, outputs["__all__"][-3000:]
    if says is None:
        assert "failed:" not in output and "fatal:" not in output, output[-3000:]
    else:
        assert ("failed:" in output or "fatal:" in output) and says in output, output[-3000:]
