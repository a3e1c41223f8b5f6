"""The loki, alloy and jaeger roles without their binaries (they cannot be
downloaded here): rendered configuration parsed and checked, preflight against
bad input. Their checkers (loki -verify-config, alloy fmt, jaeger validate) run
in the roles before every change and in the opt-in online scenario.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"
PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"
TEMPLATES = {
    "loki": ["etc/loki/config.yml", "etc/systemd/system/loki.service.d/keel.conf"],
    "alloy": ["etc/alloy/config.alloy", "etc/systemd/system/alloy.service.d/keel.conf"],
    "jaeger": ["etc/jaeger/config.yaml", "etc/systemd/system/jaeger.service"],
}
BAD_INPUTS = {
    "loki_retention_in_words": ("loki", {"loki_retention": "31 days"}, "loki_retention hours or days such as 744h"),
    "loki_same_ports": ("loki", {"loki_grpc_port": 3100}, "loki_http_port and loki_grpc_port different ports"),
    "loki_burst_below_rate": ("loki", {"loki_ingestion_burst_size_mb": 1},
                              "loki_ingestion_burst_size_mb at least as large"),
    "jaeger_retention_in_days": ("jaeger", {"jaeger_retention": "7d"}, "jaeger_retention a duration in h, m or s"),
    "jaeger_two_ports_alike": ("jaeger", {"jaeger_query_port": 4318}, "must be 1-65535 and all different"),
    "jaeger_version_latest": ("jaeger", {"jaeger_version": "latest"}, "jaeger_version must be X.Y.Z (got latest)"),
    "alloy_loki_group_missing": ("alloy", {"alloy_loki_group": "logs"}, "alloy_loki_group must be an inventory group"),
    "alloy_bad_max_age": ("alloy", {"alloy_journal_max_age": "1 day"}, "alloy_journal_max_age a duration such as 12h"),
}
PLAY = """
- name: Render {role}
  hosts: render
  gather_facts: false
  vars_files: [{roles}/{role}/vars/main.yml]
  tasks:
    - name: Output directory
      ansible.builtin.file:
        path: "{out}/{role}"
        state: directory
        mode: "0700"
    - name: Render
      ansible.builtin.template:
        src: "{roles}/{role}/templates/{{{{ item }}}}.j2"
        dest: "{out}/{role}/{{{{ item | basename }}}}"
        mode: "0600"
      loop: {templates}
"""
# one play for every case (a play whose hosts all fail would end the run)
PREFLIGHT = """
- name: Preflights
  hosts: cases
  gather_facts: false
  tasks:
    - name: Preflight
      ansible.builtin.include_role:
        name: "{roles}/{{{{ case_role }}}}"
        tasks_from: preflight
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("observability")
    defaults: dict = {}
    for role in TEMPLATES:
        defaults |= yaml.safe_load((ROLES / role / "defaults/main.yml").read_text())
    defaults |= yaml.safe_load((ROLES / "grafana_apt/defaults/main.yml").read_text())
    bad_hosts = {f"bad_{role}_{case}": {"keel_private_ip": "10.0.1.1", "case_role": role, **extra}
                 for case, (role, extra, _) in BAD_INPUTS.items()}
    inventory = {"all": {
        "vars": {**defaults, "ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "children": {
            "monitoring": {"hosts": {"mon1": {"keel_private_ip": "10.0.0.31"}}},
            "app": {"hosts": {"app1": {"keel_private_ip": "10.0.0.21"}}},
            "render": {"hosts": {"app1": {}}},
            "cases": {"hosts": bad_hosts},
        }}}
    (out / "inventory.yml").write_text(yaml.safe_dump(inventory))
    plays = [PLAY.format(role=r, roles=ROLES, out=out, templates=t) for r, t in TEMPLATES.items()]
    plays.append(PREFLIGHT.format(roles=ROLES))
    (out / "play.yml").write_text("\n".join(plays))
    res = subprocess.run([str(PLAYBOOK), "-i", str(out / "inventory.yml"), str(out / "play.yml")],
                         capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    (out / "output.txt").write_text(res.stdout + res.stderr)
    per_host: dict[str, str] = {}
    for line in (res.stdout + res.stderr).splitlines():
        found = re.match(r"^(?:fatal|failed|ok|changed|skipping): \[([^\]]+)\]", line)
        if found:
            per_host[found.group(1)] = per_host.get(found.group(1), "") + " " + line
    return out, per_host


def rendered(run, role: str, name: str) -> str:
    path = run[0] / role / name
    assert path.exists(), (run[0] / "output.txt").read_text()[-3000:]
    return path.read_text()


# ---------------------------------------------------------------- loki
def test_loki_single_binary_with_retention_on_the_private_address(run):
    config = yaml.safe_load(rendered(run, "loki", "config.yml"))
    assert config["server"]["http_listen_address"] == "10.0.0.21" and config["server"]["http_listen_port"] == 3100
    assert config["auth_enabled"] is False and config["common"]["replication_factor"] == 1
    (schema,) = config["schema_config"]["configs"]
    assert (schema["store"], schema["schema"], schema["object_store"]) == ("tsdb", "v13", "filesystem")
    assert config["compactor"]["retention_enabled"] is True
    assert config["limits_config"]["retention_period"] == "744h"
    assert config["limits_config"]["deletion_mode"] == "disabled"  # review H3: no delete API for any host
    assert config["analytics"]["reporting_enabled"] is False
    assert "ReadWritePaths=/var/lib/loki" in rendered(run, "loki", "keel.conf").splitlines()


# ---------------------------------------------------------------- jaeger
def test_jaeger_pipeline_is_complete_and_listens_on_the_private_address(run):
    config = yaml.safe_load(rendered(run, "jaeger", "config.yaml"))
    service = config["service"]
    for name in service["extensions"]:
        assert name in config["extensions"], name
    for pipeline in service["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for name in pipeline[kind]:
                assert name in config[kind], (kind, name)
    otlp = config["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"] == "10.0.0.21:4317" and otlp["http"]["endpoint"] == "10.0.0.21:4318"
    storage = config["extensions"]["jaeger_storage"]["backends"]["main"]["badger"]
    assert storage["ttl"]["spans"] == "168h" and storage["ephemeral"] is False
    assert config["extensions"]["jaeger_query"]["storage"]["traces"] == "main"
    assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] == "main"
    unit = rendered(run, "jaeger", "jaeger.service")
    assert "ExecStart=/opt/keel/jaeger/2.20.0/jaeger --config=/etc/jaeger/config.yaml" in unit
    assert "User=jaeger" in unit and "ReadWritePaths=/var/lib/jaeger" in unit


def test_jaeger_unit_rated_2_or_lower_by_systemd_analyze(run, tmp_path, systemd_exposure):
    """The whole unit is the role's (Jaeger ships no package): systemd's own rating
    of the rendered file, offline, as on a host (the binary need not exist)."""
    exposure, report = systemd_exposure(tmp_path, "jaeger.service", rendered(run, "jaeger", "jaeger.service"))
    assert exposure <= 2.0, report[-3000:]


# The packages' units are Grafana's; the roles add a drop-in. The drop-in alone must
# bring the unit to 2.0 or lower: it is rated on a bare package unit (a user and a
# command, no sandboxing of its own), the worst the package could ship.
BARE_PACKAGE_UNIT = """[Unit]
Description=the package's unit, with no sandboxing
[Service]
User={user}
ExecStart={command}
[Install]
WantedBy=multi-user.target
"""
PACKAGE_UNITS = {
    "loki": ("loki.service", "loki", "/usr/bin/loki -config.file=/etc/loki/config.yml"),
    "alloy": ("alloy.service", "alloy", "/usr/bin/alloy run /etc/alloy/config.alloy"),
}


@pytest.mark.parametrize("role", sorted(PACKAGE_UNITS))
def test_package_unit_with_the_role_drop_in_rated_2_or_lower(run, tmp_path, systemd_exposure, role):
    unit, user, command = PACKAGE_UNITS[role]
    bare = BARE_PACKAGE_UNIT.format(user=user, command=command)
    exposure_bare, _ = systemd_exposure(tmp_path / "bare", unit, bare)
    exposure, report = systemd_exposure(tmp_path / "keel", unit, bare, rendered(run, role, "keel.conf"))
    assert exposure <= 2.0, report[-3000:]
    assert exposure_bare > 9.0  # the check can fail: the bare unit alone is rated unsafe


# ---------------------------------------------------------------- alloy
def test_alloy_ships_the_journal_to_the_inventory_loki_with_bounded_labels(run):
    config = rendered(run, "alloy", "config.alloy")
    assert config.count("{") == config.count("}")
    assert 'url = "http://10.0.0.31:3100/loki/api/v1/push"' in config  # monitoring's first host
    assert 'labels        = { host = "app1" }' in config
    targets = set(re.findall(r'target_label\s*=\s*"([^"]+)"', config))
    assert targets == {"unit", "service", "level"}
    assert 'values = ["unit"]' in config  # unit only routes the app's lines, then it is dropped
    assert 'values = { level = "", service = "app_service" }' in config
    assert 'selector = "{unit=~\\"keel-app@.+\\"}"' in config


def test_alloy_service_regex_names_units_without_instance():
    template = (ROLES / "alloy/templates/etc/alloy/config.alloy.j2").read_text()
    (literal,) = re.findall(r"regex\s+= \{\{ '(.+)' \| to_json \}\}", template)
    pattern = re.compile(literal.replace("\\\\", "\\"))
    assert pattern.fullmatch("keel-app@api-8000.service").group(1) == "keel-app"
    assert pattern.fullmatch("haproxy.service").group(1) == "haproxy"
    assert pattern.fullmatch("session-3.scope").group(1) == "session-3"


# ---------------------------------------------------------------- preflight
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_by_the_preflight_with_what_to_fix(run, case):
    role, _, message = BAD_INPUTS[case]
    output = " ".join(run[1].get(f"bad_{role}_{case}", "").split())
    assert "fatal:" in output, (run[0] / "output.txt").read_text()[-3000:]
    assert message in output, output[-2000:]
