"""The sample production inventory, its secrets, and the playbooks' first plays.

* inventories/production parses, has the three groups, and every host has the
  variables the playbooks need (documentation addresses only);
* every variable it sets is a variable of some role (argument_specs/defaults),
  a keel_* variable the project reads, or an ansible_* connection variable:
  a typo fails here instead of being silently ignored by the roles;
* every secret a role reads is listed in group_vars/all/vault.yml.example and
  the plain files refer to it only through "{{ vault_<name> }}";
* a site run against an inventory that lacks a required group or variable stops
  in the first play (on the controller) and names what is missing, before any
  host is contacted; the lifecycle playbooks refuse bad requests the same way.

Hosts of the throw-away inventories point at 192.0.2.1 (TEST-NET-1) and reach
SSH only through "ProxyCommand=/bin/false", so no packet leaves this machine even
if a play did try to connect: such an attempt shows as UNREACHABLE, which the
control case proves and the other cases rule out.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROD = ROOT / "inventories" / "production"
PROD_HOSTS = PROD / "hosts.yml"
PROD_VARS = PROD / "group_vars"
VAULT_EXAMPLE = PROD_VARS / "all" / "vault.yml.example"
BIN = ROOT / ".venv" / "bin"
REQUIRED_GROUPS = ("loadbalancers", "app", "monitoring")
DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
SECRET_NAME = re.compile(r"_(password|secret|token|private_key|api_key)$")
VAULT_REF = re.compile(r"^\{\{ *(vault_[a-z0-9_]+) *\}\}$")
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=\d+", re.MULTILINE)


# ----------------------------------------------------------------- helpers
def ansible_env(tmp_path: Path) -> dict[str, str]:
    """The repository's ansible.cfg, with a private fact cache and short timeouts."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_TIMEOUT": "5",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    })
    return env


def run_playbook(tmp_path: Path, inventory: Path, playbook: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), f"playbooks/{playbook}", *args],
        cwd=ROOT, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)


def recap_hosts(output: str) -> set[str]:
    recap = output.split("PLAY RECAP", 1)
    assert len(recap) == 2, f"no PLAY RECAP in the output:\n{output[-3000:]}"
    return set(RECAP_LINE.findall(recap[1]))


def write_inventory(tmp_path: Path, groups: dict[str, dict[str, dict]]) -> Path:
    """A lab-shaped inventory (one parent group holding the connection settings,
    as inventories/lab and inventories/production do) of hosts nobody can reach,
    with the production sample's group_vars/all/keel.yml."""
    inv = tmp_path / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "group_vars" / "all" / "keel.yml").write_text((PROD_VARS / "all" / "keel.yml").read_text())
    hosts = {"all": {"children": {"keeltest": {
        "vars": {
            "ansible_connection": "ssh",
            "ansible_host": "192.0.2.1",
            "ansible_user": "keel-test",
            "ansible_ssh_common_args": "-o ProxyCommand=/bin/false -o ConnectTimeout=2",
        },
        # each host its own (unreachable) machine: validate.yml refuses two names for one
        "children": {group: {"hosts": {name: {"ansible_host": (v or {}).get("keel_private_ip") or f"192.0.2.{200 + i}",
                                               **(v or {})} for i, (name, v) in enumerate(members.items())}}
                     for group, members in groups.items()},
    }}}}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    return inv / "hosts.yml"


def lab_groups() -> dict[str, dict[str, dict]]:
    """The lab's group structure: one load balancer, two app hosts, one monitoring host."""
    return {
        "loadbalancers": {"lb1": {"keel_private_ip": "192.0.2.11"}},
        "app": {"app1": {"keel_private_ip": "192.0.2.21"}, "app2": {"keel_private_ip": "192.0.2.22"}},
        "monitoring": {"mon1": {"keel_private_ip": "192.0.2.31"}},
    }


def assert_stopped_on_the_controller(res: subprocess.CompletedProcess[str], *expected: str,
                                     recap: set[str] | None = None) -> None:
    """Failed, said what was expected, and no host was contacted: the recap lists
    only the hosts of the refusing play (localhost unless told), nothing UNREACHABLE."""
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    for text in expected:
        assert text in out, f"{text!r} not in the output:\n{out[-3000:]}"
    assert recap_hosts(out) == (recap or {"localhost"}), out[-3000:]
    assert "UNREACHABLE" not in out, "a host was contacted:\n" + out[-3000:]


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text()) or {}


def plain_var_files() -> list[Path]:
    """The inventory's variable files Ansible reads (not vault.yml.example)."""
    return sorted(p for p in PROD_VARS.rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml"))


def hosts_yml_vars(node: dict, out: dict[str, object]) -> None:
    """Every variable hosts.yml sets, in host entries and group vars."""
    for value in (node.get("hosts") or {}).values():
        out.update(value or {})
    out.update(node.get("vars") or {})
    for child in (node.get("children") or {}).values():
        hosts_yml_vars(child or {}, out)


def role_options() -> dict[str, dict]:
    """Every option of every role's argument_specs (all entry points), and every default."""
    options: dict[str, dict] = {}
    for role in sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir()):
        spec = load_yaml(role / "meta" / "argument_specs.yml")
        for entry in (spec.get("argument_specs") or {}).values():
            for name, option in ((entry or {}).get("options") or {}).items():
                options.setdefault(name, option or {})
        defaults = role / "defaults" / "main.yml"
        if defaults.exists():
            for name in load_yaml(defaults):
                options.setdefault(name, {})
    return options


def project_keel_vars() -> set[str]:
    """keel_* names the project's playbooks, roles, project group_vars and plugins read or set."""
    names: set[str] = set()
    for base in ("playbooks", "roles", "group_vars", "plugins"):
        for path in (ROOT / base).rglob("*"):
            if path.is_file() and path.suffix in (".yml", ".yaml", ".j2", ".py"):
                names.update(re.findall(r"\bkeel_[a-z0-9_]+", path.read_text(errors="replace")))
    return names


def unknown_variables(names: set[str], known_roles: set[str], known_keel: set[str]) -> list[str]:
    return sorted(n for n in names
                  if n not in known_roles and n not in known_keel and not n.startswith("ansible_"))


def role_secrets() -> set[str]:
    """Variables the roles read that are secrets: marked no_log, described as
    vault material, or named like a password, secret, token or private key."""
    secrets = set()
    for name, option in role_options().items():
        if (option.get("no_log") or "vault" in str(option.get("description", "")).lower()
                or SECRET_NAME.search(name)):
            secrets.add(name)
    return secrets


# ------------------------------------------------- (a) the inventory parses
@pytest.fixture(scope="module")
def inventory_list(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("inventory")
    res = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(PROD_HOSTS), "--list"],
                         cwd=ROOT, env=ansible_env(tmp), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "[WARNING]" not in res.stderr, res.stderr
    return json.loads(res.stdout)


def test_production_inventory_has_the_three_groups(inventory_list):
    for group in REQUIRED_GROUPS:
        assert inventory_list.get(group, {}).get("hosts"), f"group {group} has no hosts"


def test_every_production_host_has_its_private_address_and_connection(inventory_list):
    hostvars = inventory_list["_meta"]["hostvars"]
    hosts = {h for g in REQUIRED_GROUPS for h in inventory_list[g]["hosts"]}
    assert hosts == set(hostvars), "hosts outside the three groups, or groups without vars"
    private = []
    for host in sorted(hosts):
        hv = hostvars[host]
        for var in ("keel_private_ip", "ansible_host", "ansible_user"):
            assert hv.get(var), f"{host} has no {var}"
        for var in ("keel_private_ip", "ansible_host"):
            address = ipaddress.ip_address(hv[var])
            assert any(address in net for net in DOC_NETS), f"{host} {var} {address} is not a documentation address"
        private.append(hv["keel_private_ip"])
    assert len(private) == len(set(private)), "two hosts share a keel_private_ip"


def test_vault_example_is_not_read_as_inventory_variables(tmp_path):
    res = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(PROD_HOSTS), "--host", "lb1"],
                         cwd=ROOT, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert not [k for k in json.loads(res.stdout) if k.startswith("vault_")]


# ------------------------------------- (b) every variable is a known variable
def test_every_production_variable_is_known():
    known_roles = set(role_options())
    known_keel = project_keel_vars()
    problems = []
    for path in plain_var_files():
        data = load_yaml(path)
        assert isinstance(data, dict), f"{path} is not a mapping"
        for name in unknown_variables(set(data), known_roles, known_keel):
            problems.append(f"{path.relative_to(ROOT)}: {name}")
    from_hosts: dict[str, object] = {}
    hosts_yml_vars(load_yaml(PROD_HOSTS)["all"], from_hosts)
    problems += [f"hosts.yml: {n}" for n in unknown_variables(set(from_hosts), known_roles, known_keel)]
    assert problems == [], "variables no role or playbook reads (typos?): " + ", ".join(problems)


def test_the_known_variable_check_catches_a_typo():
    known_roles = set(role_options())
    known_keel = project_keel_vars()
    names = {"haproxy_stats_pasword", "keel_required_group", "prometheus_retention_time", "ansible_user"}
    assert unknown_variables(names, known_roles, known_keel) == ["haproxy_stats_pasword", "keel_required_group"]


def test_each_topic_file_is_not_empty_and_is_split_per_topic():
    files = {p.name for p in (PROD_VARS / "all").iterdir()}
    for name in ("keel.yml", "common.yml", "hardening.yml", "app.yml", "haproxy.yml", "monitoring.yml",
                 "grafana.yml", "vault.yml.example"):
        assert name in files, name
    assert "vault.yml" not in files, "an unencrypted vault.yml must not be in the sample"
    for path in plain_var_files():
        assert load_yaml(path), f"{path} sets nothing"


# ------------------------------------------------------------- (c) secrets
def test_the_secret_detection_finds_the_known_secrets():
    secrets = role_secrets()
    assert {"grafana_admin_password", "haproxy_stats_password", "haproxy_tls_private_key"} <= secrets
    # settings that merely mention passwords are not secrets
    assert not {"ssh_hardening_password_authentication", "os_hardening_password_max_days"} & secrets


def test_vault_example_lists_every_secret_of_the_roles():
    example = load_yaml(VAULT_EXAMPLE)
    missing = sorted(s for s in role_secrets() if f"vault_{s}" not in example)
    assert missing == [], f"secrets missing from vault.yml.example: {missing}"


def test_vault_example_lists_only_variables_the_plain_files_use():
    example = load_yaml(VAULT_EXAMPLE)
    options = role_options()
    referenced = set()
    for path in plain_var_files():
        for value in load_yaml(path).values():
            if isinstance(value, str):
                referenced.update(re.findall(r"\bvault_[a-z0-9_]+", value))
    for name in example:
        assert name.startswith("vault_"), f"{name}: vault variables are named vault_<role variable>"
        assert name[len("vault_"):] in options, f"{name}: {name[len('vault_'):]} is no role variable"
        assert name in referenced, f"{name} is listed but no plain file refers to it"


def test_plain_files_refer_to_secrets_only_through_the_vault():
    secrets = role_secrets()
    wired = {}
    for path in plain_var_files():
        text = path.read_text()
        assert "PRIVATE KEY-----" not in text, f"{path}: a private key in a plain file"
        assert not text.startswith("$ANSIBLE_VAULT"), f"{path}: encrypted files are named vault.yml"
        for name, value in load_yaml(path).items():
            assert not name.startswith("vault_"), f"{path}: {name} belongs in vault.yml"
            if name in secrets:
                ref = VAULT_REF.match(str(value).strip())
                assert ref and ref.group(1) == f"vault_{name}", (
                    f'{path}: {name} must be "{{{{ vault_{name} }}}}", not {value!r}')
                wired[name] = path
    assert sorted(secrets - set(wired)) == [], "secrets the sample does not wire to the vault"


def test_vault_example_gives_the_ansible_vault_commands():
    text = VAULT_EXAMPLE.read_text()
    assert "ansible-vault encrypt" in text and "ansible-vault create" in text
    assert "--ask-vault-pass" in text or "--vault-id" in text


# ------------------------------------ (d) validation before any host is touched
def test_control_a_complete_inventory_passes_validation_and_then_contacts_hosts(tmp_path):
    """The trick the other cases rely on: past the first play, hosts are contacted and show as UNREACHABLE."""
    inv = write_inventory(tmp_path, lab_groups())
    res = run_playbook(tmp_path, inv, "site.yml")
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "UNREACHABLE" in out, out[-3000:]
    assert {"lb1", "app1", "app2", "mon1"} <= recap_hosts(out)


def test_site_without_the_monitoring_group_stops_in_the_first_play(tmp_path):
    groups = lab_groups()
    del groups["monitoring"]
    res = run_playbook(tmp_path, write_inventory(tmp_path, groups), "site.yml")
    assert_stopped_on_the_controller(res, "Validate the controller and the inventory",
                                     "inventory group 'monitoring' is missing or empty")


def test_site_with_a_host_without_keel_private_ip_stops_in_the_first_play(tmp_path):
    groups = lab_groups()
    groups["app"]["app2"] = {}
    res = run_playbook(tmp_path, write_inventory(tmp_path, groups), "site.yml")
    assert_stopped_on_the_controller(res, "Validate the controller and the inventory",
                                     "host app2 has no value for 'keel_private_ip'")


def collections_with(tmp_path: Path, name: str, version: str | None) -> Path:
    """A collections path holding the project's collections, except `name`, whose
    MANIFEST.json says `version` (None: the collection is absent)."""
    real = ROOT / "collections" / "ansible_collections"
    fake = tmp_path / "collections" / "ansible_collections"
    for ns in real.iterdir():
        for coll in ns.iterdir():
            if f"{ns.name}.{coll.name}" != name:
                (fake / ns.name).mkdir(parents=True, exist_ok=True)
                (fake / ns.name / coll.name).symlink_to(coll)
            elif version:
                (fake / ns.name / coll.name).mkdir(parents=True)
                for entry in coll.iterdir():
                    if entry.name != "MANIFEST.json":
                        (fake / ns.name / coll.name / entry.name).symlink_to(entry)
                manifest = json.loads((coll / "MANIFEST.json").read_text())
                manifest["collection_info"]["version"] = version
                (fake / ns.name / coll.name / "MANIFEST.json").write_text(json.dumps(manifest))
    return fake.parent


def test_the_collections_ansible_loads_are_the_pinned_ones(tmp_path):
    """The check reads the collection the loader resolves: here, the project's collections/ folder."""
    pinned = {c["name"]: str(c["version"]) for c in load_yaml(ROOT / "requirements.yml")["collections"]}
    res = run_playbook(tmp_path, write_inventory(tmp_path, lab_groups()), "validate.yml", "-v")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    for name, version in pinned.items():
        assert f"{name} {version}" in res.stdout, res.stdout[-3000:]


@pytest.mark.parametrize("version, says", [
    ("10.5.0", "collection community.general 10.5.0 (from "),
    ("12.0.0", "collection community.general 12.0.0 (from "),
    (None, "collection community.general is not installed"),
])
def test_site_with_an_incompatible_collection_stops_in_the_first_play(tmp_path, version, says):
    env_path = collections_with(tmp_path, "community.general", version)
    env = ansible_env(tmp_path)
    env["ANSIBLE_COLLECTIONS_PATH"] = str(env_path)
    inv = write_inventory(tmp_path, lab_groups())
    # validate.yml alone: site.yml would not even parse without community.general
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), "playbooks/validate.yml"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    pinned = next(str(c["version"]) for c in load_yaml(ROOT / "requirements.yml")["collections"]
                  if c["name"] == "community.general")
    assert_stopped_on_the_controller(res, "Validate the controller and the inventory", says,
                                     f"keel needs {pinned} or a later {pinned.split('.')[0]}.x",
                                     "ansible-galaxy collection install -r requirements.yml")


# ----------------------------------------- (e) the lifecycle playbooks
@pytest.mark.parametrize("playbook", ["add-node.yml", "remove-node.yml", "security-audit.yml"])
def test_lifecycle_playbook_syntax(tmp_path, playbook):
    res = run_playbook(tmp_path, PROD_HOSTS, playbook, "--syntax-check")
    assert res.returncode == 0, res.stdout + res.stderr


def test_remove_node_without_keel_remove_node_stops_before_touching_hosts(tmp_path):
    res = run_playbook(tmp_path, write_inventory(tmp_path, lab_groups()), "remove-node.yml")
    assert_stopped_on_the_controller(res, "remove-node.yml needs -e keel_remove_node=HOST")


def test_remove_node_of_a_host_outside_the_app_group_stops_before_touching_hosts(tmp_path):
    res = run_playbook(tmp_path, write_inventory(tmp_path, lab_groups()), "remove-node.yml",
                       "-e", "keel_remove_node=lb1")
    assert_stopped_on_the_controller(res, "remove-node.yml needs -e keel_remove_node=HOST", "got 'lb1'")


def test_remove_node_refuses_to_remove_the_last_app_host(tmp_path):
    groups = lab_groups()
    del groups["app"]["app2"]
    res = run_playbook(tmp_path, write_inventory(tmp_path, groups), "remove-node.yml", "-e", "keel_remove_node=app1")
    assert_stopped_on_the_controller(res, "app1 is the only host of the app group")


def test_add_node_without_keel_new_node_stops_before_touching_hosts(tmp_path):
    res = run_playbook(tmp_path, write_inventory(tmp_path, lab_groups()), "add-node.yml")
    assert_stopped_on_the_controller(res, "add-node.yml needs -e keel_new_node=HOST")


@pytest.mark.parametrize("playbook, var", [("add-node.yml", "keel_new_node"), ("remove-node.yml", "keel_remove_node")])
@pytest.mark.parametrize("limit", ["app2", "app2,localhost"])
def test_lifecycle_playbooks_refuse_limit_before_touching_hosts(tmp_path, playbook, var, limit):
    """--limit app2 leaves localhost (and so the controller's plays) out: the refusal
    then comes from an assert on app2 that runs on the controller."""
    res = run_playbook(tmp_path, write_inventory(tmp_path, lab_groups()), playbook,
                       "-e", f"{var}=app2", "--limit", limit)
    assert_stopped_on_the_controller(res, "run it without --limit",
                                     recap={"app2"} if limit == "app2" else {"app2", "localhost"})


AUDIT_CHECKS = ("ssh", "firewall", "sockets", "auditd", "units", "aide", "updates")


def test_security_audit_in_check_mode_changes_nothing_and_writes_its_report(tmp_path):
    """The audit's reads, comparisons and report on this machine (as a stand-in app host):
    whatever it finds here, the run changes nothing and the verdict matches the report."""
    groups = lab_groups()
    groups["app"]["localhost"] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                                  "ansible_become": False, "keel_private_ip": "192.0.2.29"}
    inv = write_inventory(tmp_path, groups)
    reports = tmp_path / "reports"
    # an accepted-risk register that accepts every non-critical finding of each check
    register = [{"id": f"all-{check}", "check": check, "match": ".", "severity": "high", "reason": "a test",
                 "owner": "keel tests", "review_by": time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))}
                for check in AUDIT_CHECKS]
    # (as JSON: a key=value -e gives a string, and the firewall role refused "['192.0.2.0/24']")
    (tmp_path / "extra.json").write_text(json.dumps({"keel_accepted_risks": register,
                                                     "firewall_admin_networks": ["192.0.2.0/24"]}))
    res = run_playbook(tmp_path, inv, "security-audit.yml", "--check", "--limit", "localhost",
                       "-e", f"keel_audit_report_dir={reports}", "-e", f"@{tmp_path / 'extra.json'}")
    out = res.stdout + res.stderr
    assert "UNREACHABLE" not in out, out[-3000:]
    assert re.search(r"^localhost\s+:\s+ok=\d+\s+changed=0\s", out, re.MULTILINE), out[-3000:]
    report = json.loads((reports / "localhost.json").read_text())
    assert report["host"] == "localhost"
    # they list each host's listeners and SSH settings: the operator's only (review I1)
    assert (reports.stat().st_mode & 0o777, (reports / "localhost.json").stat().st_mode & 0o777) == (0o700, 0o600)
    for key in ("ssh", "firewall", "sockets", "auditd", "units", "updates"):
        assert key in report, key
    assert {f["severity"] for f in report["findings"]} <= {"critical", "high", "medium", "low", "info"}
    assert {f["check"] for f in report["findings"]} <= {*AUDIT_CHECKS, "register"}
    # every non-critical finding accepted by its check's entry, and still in the report
    for finding in report["findings"]:
        if finding["check"] == "register":  # an entry whose check found nothing here says so
            assert finding["severity"] == "info" and "matched no finding on this host" in finding["message"]
        else:
            assert (finding.get("accepted", {}).get("id") == f"all-{finding['check']}") == (
                finding["severity"] != "critical"), finding
    assert report["accepted"] == sum(1 for f in report["findings"] if "accepted" in f)
    critical = [f for f in report["findings"] if f["severity"] == "critical"]
    assert report["critical"] == len(critical)
    assert (res.returncode != 0) == bool(critical), out[-3000:]
    if critical:
        assert "critical finding(s)" in out
    summary = (reports / "summary.md").read_text()  # the readable summary, for people
    assert (reports / "summary.md").stat().st_mode & 0o777 == 0o600
    assert re.search(rf"^\| localhost \| [^|]*app[^|]* \| {report['critical']} \|", summary, re.MULTILINE), summary
    assert ("**FAIL**" in summary) == bool(critical)
    assert ("## Accepted risks" in summary) == bool(report["accepted"])


# The audit's comparisons, fed with made-up command output: its own tasks, taken
# from playbooks/security-audit.yml, run against hosts whose "sshd -T" and
# "nft list ruleset" results are given.
AUDIT_CASE_PLAY = """
- name: The security audit's comparisons
  hosts: cases
  gather_facts: false
  tasks:
    - name: Start with no findings
      ansible.builtin.set_fact:
        __keel_findings: []
        __keel_report: {{}}
    - name: Load the ssh_hardening role's settings
      block:
        - name: Preflight
          ansible.builtin.include_role:
            name: ssh_hardening
            tasks_from: preflight.yml
            public: true
      rescue:
        - name: Ignore the preflight's verdict on this machine
          ansible.builtin.set_fact:
            __keel_findings: []
    - name: sshd -T output of a host configured exactly as the role says
      ansible.builtin.set_fact:
        __keel_sshd:
          rc: 0
          stdout_lines: >-
            {{%- set out = [] -%}}
            {{%- for k, v in _ssh_hardening_options.items() if k != 'AllowGroups' -%}}
            {{%-   set _ = out.append(k | lower ~ ' '
                   ~ (_ssh_hardening_effective_aliases[k | lower][v | string] | default(v | string))) -%}}
            {{%- endfor -%}}
            {{{{ out + ssh_hardening_allow_groups | map('regex_replace', '^', 'allowgroups ') | list }}}}
      when: __keel_sshd is not defined
    - {compare}
    - {ssh_baseline}
    - {firewall}
    - {fw_baseline}
    - name: Write the findings
      ansible.builtin.copy:
        content: "{{{{ {{'findings': __keel_findings, 'report': __keel_report}} | to_json }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}.json"
        mode: "0600"
"""
NFT_DROP = (
    "table inet keel_filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n"
)
NFT_OTHER_DROPS = (
    "table inet other {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n"
    "table inet keel_filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n"
)
AUDIT_CASES = {
    "strict": {"__keel_nft": {"rc": 0, "stdout": NFT_DROP}},
    "weak_ssh": {
        "__keel_sshd": {"rc": 0, "stdout_lines": ["permitrootlogin yes", "passwordauthentication yes",
                                                  "kbdinteractiveauthentication no", "allowgroups admins"]},
        "__keel_nft": {"rc": 0, "stdout": NFT_DROP},
    },
    "no_keel_table": {"__keel_nft": {"rc": 0, "stdout": "table ip nat {\n}\n"}},
    "keel_accepts": {"__keel_nft": {"rc": 0, "stdout": NFT_OTHER_DROPS}},
    "no_nft": {"__keel_nft": {"rc": 1, "stdout": "", "stderr": "nft: command not found"}},
    # the inventory asks for password logins and SSH from anywhere: the roles' comparison finds
    # nothing (the host does what the inventory says), the baseline does (review M7)
    "weak_inventory": {
        "ssh_hardening_password_authentication": True, "ssh_hardening_permit_root_login": "prohibit-password",
        "__keel_nft": {"rc": 0, "stdout": NFT_DROP.replace(
            "policy drop;\n", "policy drop;\n\t\ttcp dport 22 accept comment \"ssh: anywhere\"\n")},
    },
}


@pytest.fixture(scope="module")
def audit_cases(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("audit")
    tasks = {t["name"]: t for t in load_yaml(ROOT / "playbooks" / "security-audit.yml")[0]["tasks"]}
    play = AUDIT_CASE_PLAY.format(
        compare=json.dumps(tasks["Compare sshd's settings with the role's"]),
        ssh_baseline=json.dumps(tasks["Judge sshd's settings against keel's baseline"]),
        firewall=json.dumps(tasks["Check keel's table is loaded and drops by default"]),
        fw_baseline=json.dumps(tasks["Judge what keel's table accepts from anywhere "
                                     "(only 80 and 443; SSH from admin networks)"]),
        out=tmp,
    )
    (tmp / "play.yml").write_text(play)
    hosts = {name: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable, **v}
             for name, v in AUDIT_CASES.items()}
    (tmp / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {"cases": {"hosts": hosts}}}}))
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp / "hosts.yml"), str(tmp / "play.yml")],
                         cwd=ROOT, env=ansible_env(tmp), capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return {name: json.loads((tmp / f"{name}.json").read_text()) for name in AUDIT_CASES}


def severities(case: dict, check: str) -> list[str]:
    return sorted(f["severity"] for f in case["findings"] if f["check"] == check)


def test_audit_finds_nothing_wrong_with_sshd_as_the_role_configures_it(audit_cases):
    assert severities(audit_cases["strict"], "ssh") == []
    assert audit_cases["strict"]["report"]["ssh"]["mismatches"] == 0


def test_audit_calls_root_and_password_logins_critical(audit_cases):
    critical = [f["message"] for f in audit_cases["weak_ssh"]["findings"] if f["severity"] == "critical"]
    assert sorted(m.split()[0] for m in critical) == ["PasswordAuthentication", "PermitRootLogin"]
    # the rest of the drop-in missing is reported, at lower severities
    assert "high" in severities(audit_cases["weak_ssh"], "ssh")


def test_a_weak_inventory_does_not_audit_clean(audit_cases):
    case = audit_cases["weak_inventory"]
    baseline = sorted((f["severity"], f["message"].split()[0]) for f in case["findings"] if f.get("baseline"))
    assert ("critical", "PasswordAuthentication") in baseline, case["findings"]
    assert ("medium", "PermitRootLogin") in baseline, case["findings"]
    assert ("high", "SSH") in baseline, case["findings"]
    # one finding per setting: the role's comparison and the baseline do not both report one
    ssh = [f["message"].split()[0] for f in case["findings"] if f["check"] == "ssh"]
    assert len(ssh) == len(set(ssh)), ssh


def test_the_strict_host_passes_the_baseline(audit_cases):
    assert [f for f in audit_cases["strict"]["findings"] if f.get("baseline")] == []


@pytest.mark.parametrize("case, critical", [("strict", False), ("no_keel_table", True),
                                            ("keel_accepts", True), ("no_nft", True)])
def test_audit_wants_keels_table_with_an_input_policy_of_drop(audit_cases, case, critical):
    assert ("critical" in severities(audit_cases[case], "firewall")) is critical
    assert audit_cases[case]["report"]["firewall"]["input_policy_drop"] is (not critical)


def _hosts_of(group: dict) -> dict:
    found = dict(group.get("hosts") or {})
    for child in (group.get("children") or {}).values():
        found |= _hosts_of(child or {})
    return found


def test_every_lab_host_names_its_own_container_literally():
    """The docker connection reaches a lab host through ansible_host. A templated
    value (keel-lab-{{ inventory_hostname }}) resolves with the delegating host's
    name in delegated tasks and runs them on the wrong container: the raw file
    must spell each name out."""
    hosts = _hosts_of(load_yaml(ROOT / "inventories" / "lab" / "hosts.yml")["all"])
    assert hosts
    wrong = {name: (v or {}).get("ansible_host") for name, v in hosts.items()
             if (v or {}).get("ansible_host") != f"keel-lab-{name}"}
    assert not wrong, wrong
