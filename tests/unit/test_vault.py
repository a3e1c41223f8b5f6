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

import pexpect
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


def _answer_prompts(tmp: Path, argv: list[str], password: str, prompts: int,
                    extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs argv on a terminal (the guide's prompting forms read from it) and types the
    password at each of its first `prompts` password prompts."""
    child = pexpect.spawn(str(BIN / argv[0]), argv[1:], cwd=str(ROOT), env={**env(tmp), **(extra_env or {})},
                          encoding="utf-8", timeout=240)
    for _ in range(prompts):
        child.expect(r"(?i)password[^:\n]*:")
        child.sendline(password)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def test_the_prompting_forms_read_the_password_from_the_terminal(site):
    """`--ask-vault-pass` (and `--vault-id mysite@prompt` for the vault ID form): the
    same inventory check as above, the password typed at the prompt."""
    password = (site["tmp"] / "keel-vault-pass").read_text().strip()
    asking = ["--ask-vault-pass"] if site["kind"] == "password_file" else ["--vault-id", "mysite@prompt"]
    status, output = _answer_prompts(site["tmp"], ["ansible-playbook", "-i", str(site["hosts"]), *asking,
                                                    "playbooks/validate.yml"], password, 1)
    assert status == 0, output[-3000:]
    assert "Validate the controller and the inventory" in output
    assert "failed=0" in output
    status, output = _answer_prompts(site["tmp"], ["ansible-playbook", "-i", str(site["hosts"]), *asking,
                                                    "playbooks/validate.yml"], "not-" + password, 1)
    assert status != 0
    assert "decrypt" in output.lower(), output[-2000:]


def test_ansible_vault_create_and_edit_as_the_guide_writes_them(tmp_path):
    """`ansible-vault create vault.yml` and `ansible-vault edit vault.yml` open $EDITOR
    on a plain temporary copy; the editor here is a script that writes what a person
    would type. The password is typed at the prompts (new, confirm; then the one for edit)."""
    vault = tmp_path / "vault.yml"
    first, second = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    editor = tmp_path / "editor"
    editor.write_text("#!/bin/sh\n"
                      f"grep -q vault_ \"$1\" && sed -i 's/{first}/{second}/' \"$1\" "
                      f"|| printf 'vault_grafana_admin_password: {first}\\n' > \"$1\"\n")
    editor.chmod(0o700)
    password = secrets.token_urlsafe(24)
    status, output = _answer_prompts(tmp_path, ["ansible-vault", "create", str(vault)], password, 2,
                                     {"EDITOR": str(editor)})
    assert status == 0, output
    created = vault.read_text()
    assert created.startswith("$ANSIBLE_VAULT;1.1;AES256") and first not in created
    status, output = _answer_prompts(tmp_path, ["ansible-vault", "edit", str(vault)], password, 1,
                                     {"EDITOR": str(editor)})
    assert status == 0, output
    edited = vault.read_text()
    assert edited.startswith("$ANSIBLE_VAULT;1.1;AES256") and second not in edited and edited != created
    password_file = tmp_path / "pass"
    password_file.write_text(password + "\n")
    res = run(tmp_path, "ansible-vault", "view", "--vault-password-file", str(password_file), str(vault))
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout) == {"vault_grafana_admin_password": second}


def test_the_unedited_example_is_refused_in_the_first_play(tmp_path):
    """`cp vault.yml.example vault.yml` and nothing else: the example's placeholders (a password
    published in this repository, a webhook on hooks.example.com) are refused before any host
    is contacted, by variable name, never by value."""
    inventory = tmp_path / "mysite"
    shutil.copytree(PRODUCTION, inventory)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "admin")], check=True,
                   timeout=60)
    key = (tmp_path / "admin.pub").read_text().split()
    hardening = inventory / "group_vars/all/hardening.yml"
    hardening.write_text(hardening.read_text().replace("REPLACE_WITH_THE_CONTROLLERS_PUBLIC_KEY", key[1])
                         .replace("REPLACE_WITH_ALICES_PUBLIC_KEY", key[1]))
    shutil.copy(inventory / "group_vars/all/vault.yml.example", inventory / "group_vars/all/vault.yml")
    res = run(tmp_path, "ansible-playbook", "-i", str(inventory / "hosts.yml"), "playbooks/site.yml")
    output = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, output[-3000:]
    assert "these secrets still hold the example's placeholder value" in output, output[-3000:]
    for name in ("grafana_admin_password", "vault_grafana_admin_password", "vault_haproxy_stats_password",
                 "vault_alertmanager_webhook_url", "vault_haproxy_tls_private_key"):
        assert f"{name} (" in output, name
    assert "REPLACE-with-a-long-random-password" not in output  # names, never values
    assert "UNREACHABLE" not in output and "PLAY [Validate the controller and the inventory]" in output


def test_a_filled_in_vault_passes_the_placeholder_check(site):
    res = run(site["tmp"], "ansible-playbook", "-i", str(site["hosts"]), "playbooks/validate.yml", *site["secret"])
    assert "still hold the example's placeholder" not in res.stdout, res.stdout[-3000:]
