"""The deployment guide's secrets procedure, run as written on a copy of the
production sample inventory: vault.yml made from vault.yml.example and encrypted
with ansible-vault (a password file, and a vault ID), then site.yml's inventory
check (playbooks/validate.yml) and lookups with the password. Every plain-file
reference to a vault_* variable resolves to the vaulted value; without the
password the run stops. The sample's hosts are never contacted: only plays and
ad-hoc calls on the implicit localhost (not an inventory host) run, and only the
controller-side debug module and asserts.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
PRODUCTION = ROOT / "inventories" / "production"
# plain-file variable -> the vault_* variable it must take its value from
REFERENCES = {"grafana_admin_password": "vault_grafana_admin_password"}


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp / "facts"), "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp")}


def run(tmp: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, env=env(tmp), capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module", params=["password_file", "vault_id"])
def site(request, tmp_path_factory) -> dict:
    """inventories/mysite: the sample copied, vault.yml filled from the example and encrypted."""
    tmp = tmp_path_factory.mktemp("vault")
    inventory = tmp / "mysite"
    shutil.copytree(PRODUCTION, inventory)
    # the sample's other placeholders, filled as an operator would (the validation refuses them)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "admin")], check=True, timeout=60)
    key = (tmp / "admin.pub").read_text().split()
    hardening = inventory / "group_vars/all/hardening.yml"
    hardening.write_text(hardening.read_text().replace("REPLACE_WITH_THE_CONTROLLERS_PUBLIC_KEY", key[1])
                         .replace("REPLACE_WITH_ALICES_PUBLIC_KEY", key[1]))
    app = inventory / "group_vars/all/app.yml"
    app.write_text(app.read_text().replace("REPLACE_WITH_THE_SHA256_OF_THE_RELEASE_TARBALL", "0" * 64))
    example = yaml.safe_load((inventory / "group_vars/all/vault.yml.example").read_text())
    values = {name: (secrets.token_urlsafe(18) if isinstance(value, str) and value else value)
              for name, value in example.items()}
    vault = inventory / "group_vars/all/vault.yml"
    vault.write_text(yaml.safe_dump(values))
    password = tmp / "keel-vault-pass"
    password.write_text(secrets.token_urlsafe(24) + "\n")
    password.chmod(0o600)
    secret = ["--vault-password-file", str(password)] if request.param == "password_file" \
        else ["--vault-id", f"mysite@{password}"]
    res = run(tmp, "ansible-vault", "encrypt", *(["--vault-id", f"mysite@{password}"]
                                                  if request.param == "vault_id" else secret), str(vault))
    assert res.returncode == 0, res.stderr
    return {"tmp": tmp, "hosts": inventory / "hosts.yml", "vault": vault, "values": values, "secret": secret,
            "kind": request.param}


def test_the_vault_file_is_encrypted_at_rest(site):
    text = site["vault"].read_text()
    header = "$ANSIBLE_VAULT;1.2;AES256;mysite" if site["kind"] == "vault_id" else "$ANSIBLE_VAULT;1.1;AES256"
    assert text.startswith(header), text[:60]
    assert not any(str(value) in text for value in site["values"].values() if isinstance(value, str) and value)


def test_every_reference_resolves_to_the_vaulted_value(site):
    for variable, vault_variable in REFERENCES.items():
        res = run(site["tmp"], "ansible", "-i", str(site["hosts"]), "localhost", "-m", "ansible.builtin.debug",
                  "-a", f"msg={{{{ hostvars[groups['monitoring'][0]].{variable} }}}}", *site["secret"])
        assert res.returncode == 0, res.stdout + res.stderr
        assert site["values"][vault_variable] in res.stdout, res.stdout


def test_the_inventory_check_passes_with_the_vault_password(site):
    """playbooks/validate.yml, the first play of site.yml and of every entry playbook
    (on the controller only; it reads every host's variables, the vault included).
    site.yml itself would go on to the sample's hosts, which are not this test's."""
    res = run(site["tmp"], "ansible-playbook", "-i", str(site["hosts"]), "playbooks/validate.yml", *site["secret"])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "Validate the controller and the inventory" in res.stdout


def test_without_the_vault_password_nothing_runs(site):
    res = run(site["tmp"], "ansible-playbook", "-i", str(site["hosts"]), "playbooks/validate.yml")
    assert res.returncode != 0
    output = " ".join((res.stdout + res.stderr).split())
    assert "no vault secrets" in output.lower() or "vault password" in output.lower(), output[-2000:]


def test_ansible_inventory_shows_the_vault_variables_only_with_the_password(site):
    res = run(site["tmp"], "ansible-inventory", "-i", str(site["hosts"]), "--host", "lb1", *site["secret"])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["vault_grafana_admin_password"] == site["values"]["vault_grafana_admin_password"]
