"""The grafana role without Grafana (it cannot be downloaded here): its inputs,
its rendered configuration and its dashboards.

The role's own templates are rendered by ansible-playbook with the role's
defaults and vars against a small inventory, then parsed and checked; the
dashboards' PromQL is parsed by the real promtool (test mirror); the preflight
runs against bad input. The opt-in online scenario (molecule/observability_online)
installs the real Grafana.
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "grafana"
DASHBOARDS = sorted((ROLE / "files" / "dashboards").glob("*.json"))
PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"
MIRROR = (Path.home() / ".cache" / "keel" / "test-mirror" / "prometheus" / "prometheus" / "releases" / "download")
UIDS = {"keel-prometheus", "keel-loki", "keel-jaeger"}
# One ansible-playbook run serves every test: each case is a host with its own variables.
RENDER_CASES = {
    "r_default": {"keel_private_ip": "10.0.0.32"},
    "r_extra": {"keel_private_ip": "10.0.0.33",
                "grafana_ini_extra": {"log": {"level": "warn"}, "server": {"domain": "grafana.example.org"}}},
    "r_https": {"keel_private_ip": "10.0.0.34", "grafana_root_url": "https://grafana.example.org/"},
    "r_logs": {"keel_private_ip": "10.0.0.35", "grafana_loki_group": "logs"},
    "r_nojaeger": {"keel_private_ip": "10.0.0.36", "grafana_jaeger_group": ""},
}
BAD_INPUTS = {
    "no_admin_password": ({"grafana_admin_password": ""}, "grafana_admin_password must be set, at least 12 characters"),
    "default_admin_password": ({"grafana_admin_password": "admin"}, "grafana_admin_password must be set"),
    "fingerprint_not_40_hex": ({"grafana_apt_key_fingerprint": "963FA27710458545"},
                               "grafana_apt_key_fingerprint 40 hex digits (got '963FA27710458545')"),
    "repository_not_a_url": ({"grafana_apt_repository_url": "apt.grafana.com"},
                             "grafana_apt_repository_url and grafana_apt_key_url must be URLs"),
    "version_latest": ({"grafana_version": "latest"},
                       "grafana_version must be a version such as 13.2.2 (got 'latest')"),
    "loki_group_missing": ({"grafana_loki_group": "loki"}, "these datasource groups do not exist, are empty"),
    "loki_group_empty": ({"grafana_loki_group": "empty"}, "these datasource groups do not exist, are empty"),
    "dashboard_named_like_a_role_one": ({"grafana_dashboards_extra": {"keel-app": {}}}, "not one of the role's"),
}
PLAYBOOK_TEXT = """
- name: Render the grafana role's templates
  hosts: monitoring
  gather_facts: false
  vars_files: [{role}/vars/main.yml]
  tasks:
    - name: Output directory
      ansible.builtin.file:
        path: "{out}/{{{{ inventory_hostname }}}}"
        state: directory
        mode: "0700"
    - name: Render
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item }}}}.j2"
        dest: "{out}/{{{{ inventory_hostname }}}}/{{{{ item | replace('/', '_') }}}}"
        mode: "0600"
      loop:
        - etc/grafana/grafana.ini
        - etc/grafana/provisioning/datasources/keel.yml
        - etc/grafana/provisioning/dashboards/keel.yml
        - etc/systemd/system/grafana-server.service.d/keel.conf

- name: The grafana role's preflight
  hosts: cases
  gather_facts: false
  tasks:
    - name: Preflight
      ansible.builtin.include_role:
        name: {role}
        tasks_from: preflight
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Render every case, run the preflight of every bad input (and one good); (output dir, host -> its output)."""
    out = tmp_path_factory.mktemp("grafana")
    hosts = {name: {"grafana_admin_password": "a-vaulted-password", **v} for name, v in RENDER_CASES.items()}
    cases = {f"bad_{name}": {"keel_private_ip": "10.0.1.1", "grafana_admin_password": "a-vaulted-password", **v}
             for name, (v, _) in BAD_INPUTS.items()}
    cases["good"] = {"keel_private_ip": "10.0.1.2", "grafana_admin_password": "a-vaulted-password"}
    # the role's defaults as the inventory's "all" vars: the lowest precedence here, as in the role
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    inventory = {"all": {
        "vars": {**defaults, "ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "children": {
            "monitoring": {"hosts": hosts},
            "logs": {"hosts": {"log1": {"keel_private_ip": "10.0.0.41"}}},
            "empty": {"hosts": {}},
            "cases": {"hosts": cases},
        }}}
    (out / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (out / "play.yml").write_text(PLAYBOOK_TEXT.format(role=ROLE, out=out))
    res = subprocess.run([str(PLAYBOOK), "-i", str(out / "inventory.yml"), str(out / "play.yml")],
                         capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    per_host: dict[str, str] = {}
    for line in (res.stdout + res.stderr).splitlines():
        found = re.match(r"^(?:fatal|failed|ok|changed|skipping): \[([^\]]+)\]", line)
        if found:
            per_host[found.group(1)] = per_host.get(found.group(1), "") + " " + line
    (out / "output.txt").write_text(res.stdout + res.stderr)
    return out, per_host


def render(run, case: str) -> Path:
    out, per_host = run
    assert (out / case).is_dir(), per_host.get(case)
    return out / case


# ---------------------------------------------------------------- grafana.ini
def test_grafana_ini_turns_off_anonymous_access_and_sign_up(run):
    out = render(run, "r_extra")
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string((out / "etc_grafana_grafana.ini").read_text())
    assert ini["auth.anonymous"]["enabled"] == "false"
    assert ini["users"]["allow_sign_up"] == "false"
    assert ini["users"]["allow_org_create"] == "false"
    assert ini["server"]["http_addr"] == "10.0.0.33" and ini["server"]["http_port"] == "3000"
    assert ini["server"]["domain"] == "grafana.example.org"  # grafana_ini_extra merges
    assert ini["log"]["level"] == "warn" and ini["log"]["mode"] == "console"  # and wins, per key
    assert ini["analytics"]["reporting_enabled"] == "false"
    assert ini["snapshots"]["external_enabled"] == "false"


def test_admin_password_and_secret_key_are_read_from_files_never_written_into_the_config(run):
    text = (render(run, "r_default") / "etc_grafana_grafana.ini").read_text()
    assert "a-vaulted-password" not in text
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(text)
    assert ini["security"]["admin_password"] == "$__file{/etc/grafana/keel-admin-password}"  # noqa: S105
    assert ini["security"]["secret_key"] == "$__file{/etc/grafana/keel-secret-key}"  # noqa: S105
    assert ini["security"]["cookie_secure"] == "false"  # plain http root URL
    https = configparser.ConfigParser(interpolation=None)
    https.read_string((render(run, "r_https") / "etc_grafana_grafana.ini").read_text())
    assert https["security"]["cookie_secure"] == "true"
    assert https["server"]["root_url"] == "https://grafana.example.org/"


# ---------------------------------------------------------------- datasources
def datasources(out: Path) -> dict[str, dict]:
    document = yaml.safe_load((out / "etc_grafana_provisioning_datasources_keel.yml").read_text())
    assert document["apiVersion"] == 1
    return {ds["uid"]: ds for ds in document["datasources"]}


def test_datasources_come_from_the_inventory_and_link_logs_and_traces(run):
    ds = datasources(render(run, "r_logs"))
    assert set(ds) == UIDS
    # r_logs is in the monitoring group: its own Prometheus and Jaeger; Loki on the logs group's first host
    assert ds["keel-prometheus"]["url"] == "http://10.0.0.35:9090"
    assert ds["keel-prometheus"]["isDefault"] is True
    assert ds["keel-jaeger"]["url"] == "http://10.0.0.35:16686"
    assert ds["keel-loki"]["url"] == "http://10.0.0.41:3100"
    # log line -> trace
    (derived,) = ds["keel-loki"]["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == "keel-jaeger"
    assert derived["url"] == "$${__value.raw}"  # '$$' is a literal '$' (Grafana expands env variables)
    # span -> logs
    to_logs = ds["keel-jaeger"]["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == "keel-loki"
    assert "$${__trace.traceId}" in to_logs["query"]
    assert ds["keel-prometheus"]["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "keel-jaeger"}]
    for d in ds.values():
        assert d["editable"] is False and d["access"] == "proxy"


def test_a_datasource_group_set_to_empty_is_left_out_with_its_links(run):
    ds = datasources(render(run, "r_nojaeger"))
    assert set(ds) == {"keel-prometheus", "keel-loki"}
    assert "derivedFields" not in ds["keel-loki"]["jsonData"]
    assert "exemplarTraceIdDestinations" not in ds["keel-prometheus"]["jsonData"]


def test_dashboard_provider_and_unit_drop_in(run):
    out = render(run, "r_default")
    (provider,) = yaml.safe_load((out / "etc_grafana_provisioning_dashboards_keel.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards/keel"
    assert provider["allowUiUpdates"] is False and provider["disableDeletion"] is True
    unit = (out / "etc_systemd_system_grafana-server.service.d_keel.conf").read_text()
    for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=",
                 "ReadWritePaths=/var/lib/grafana /var/log/grafana", "PrivateUsers=yes"):
        assert line in unit.splitlines(), line


def test_package_unit_with_the_role_drop_in_rated_2_or_lower(run, tmp_path, systemd_exposure):
    """Grafana's package brings the unit, the role a drop-in: the drop-in alone brings a
    bare unit (a user and a command, no sandboxing of its own) to 2.0 or lower."""
    bare = ("[Service]\nUser=grafana\nExecStart=/usr/share/grafana/bin/grafana server "
            "--config=/etc/grafana/grafana.ini --homepath=/usr/share/grafana\n")
    drop_in = (render(run, "r_default") / "etc_systemd_system_grafana-server.service.d_keel.conf").read_text()
    exposure_bare, _ = systemd_exposure(tmp_path / "bare", "grafana-server.service", bare)
    exposure, report = systemd_exposure(tmp_path / "keel", "grafana-server.service", bare, drop_in)
    assert exposure <= 2.0, report[-3000:]
    assert exposure_bare > 9.0


# ---------------------------------------------------------------- preflight: bad input, clear message
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_by_the_preflight_with_what_to_fix(run, case):
    output = " ".join(run[1].get(f"bad_{case}", "").split())
    assert "fatal:" in output, output[-2000:]
    assert BAD_INPUTS[case][1] in output, output[-2000:]
    assert "a-vaulted-password" not in output  # the password check runs with no_log


def test_good_input_passes_the_preflight(run):
    output = run[1].get("good", "")
    assert "fatal:" not in output and "ok: [good]" in output, output[-2000:]


# ---------------------------------------------------------------- dashboards
def test_dashboards_are_the_output_of_their_specs():
    res = subprocess.run([sys.executable, str(ROOT / "scripts/build_dashboards.py"), "--check"],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    names = {p.stem for p in DASHBOARDS}
    role_vars = yaml.safe_load((ROLE / "vars/main.yml").read_text())
    assert names == set(role_vars["_grafana_role_dashboards"])
    assert names >= {"keel-hosts", "keel-haproxy", "keel-app", "keel-capacity", "keel-request-correlation"}


def targets() -> list[tuple[str, str, dict]]:
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for p in board["panels"]:
            for t in p["targets"]:
                found.append((f"{path.stem}: {p['title']}", t["datasource"]["uid"], t))
        for a in board["annotations"]["list"]:  # annotation queries: checked like the panels' queries
            found.append((f"{path.stem}: annotation {a['name']}", a["datasource"]["uid"], a))
    return found


def test_dashboards_are_unique_read_only_and_use_only_provisioned_datasources():
    boards = [json.loads(p.read_text()) for p in DASHBOARDS]
    assert len({b["uid"] for b in boards}) == len(boards)
    assert all(b["editable"] is False for b in boards)
    used = {uid for _, uid, _ in targets()}
    assert used <= UIDS, used - UIDS
    assert used == UIDS  # every datasource is used by some dashboard


def test_log_queries_select_only_the_bounded_labels():
    for where, uid, target in targets():
        if uid != "keel-loki":
            continue
        selector = re.match(r"\{([^}]*)\}", target["expr"])
        assert selector, where
        labels = {m.split("=")[0].strip(" !~") for m in selector.group(1).split(",")}
        assert labels <= {"host", "service", "level"}, (where, labels)


@pytest.fixture(scope="module")
def promtool(tmp_path_factory, extract_promtool) -> Path:
    archive = sorted(MIRROR.glob("v*/prometheus-*.linux-amd64.tar.gz"))[-1]
    return extract_promtool(archive, tmp_path_factory.mktemp("promtool"))


def test_every_dashboard_promql_expression_parses(promtool, tmp_path):
    """Each expression becomes a recording rule: promtool check rules parses it (Grafana's variables filled in)."""
    rules = []
    for i, (where, uid, target) in enumerate(targets()):
        if uid != "keel-prometheus":
            continue
        expr = target["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
        assert "$" not in expr, (where, expr)
        rules.append({"record": f"keel_dashboard:check:{i}", "expr": expr})
    assert len(rules) > 30
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    res = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
