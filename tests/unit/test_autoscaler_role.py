"""roles/autoscaler without a host: its configuration rendered from the role's defaults
(and from an AWX/command variant) is accepted by the package's own validation, the
unit is sandboxed as the project's other units, and preflight refuses bad policy input
with a message naming the variable to change (issue 23: target 0, min > max, a window
out of range, an executor without its credentials, ...). The role on a real host:
molecule/monitoring.
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
ROLE = ROOT / "roles" / "autoscaler"
PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"
sys.path.insert(0, str(ROOT / "autoscaler" / "src"))
config_module = pytest.importorskip("keel_autoscaler.config")

AWX = {"autoscaler_mode": "act", "autoscaler_token": "t" * 24, "autoscaler_executor": "awx",
       "autoscaler_awx_url": "https://awx.example.test", "autoscaler_awx_token": "a" * 30,
       "autoscaler_inventory_writer": "awx", "autoscaler_awx_inventory_id": 3, "autoscaler_provider": "command",
       "autoscaler_provider_command": ["/usr/local/bin/provision-node", "--site", "x"]}
# case -> (variables, a part of the message that must name what to fix)
BAD_INPUTS = {
    "target_zero": ({"autoscaler_target_requests_per_node": 0}, "a target above 0: fix target 0.0."),
    "min_above_max": ({"autoscaler_min_nodes": 5, "autoscaler_max_nodes": 3},
                      "at most autoscaler_max_nodes (at most 1000) (got min 5, max 3)"),
    "min_zero": ({"autoscaler_min_nodes": 0}, "autoscaler_min_nodes must be at least 1"),
    "window_out_of_range": ({"autoscaler_scale_down_stabilization_window": 7200},
                            "autoscaler_scale_down_stabilization_window 0-3600 s (got 0, 7200)"),
    "period_out_of_range": ({"autoscaler_scale_up_policies": [{"type": "nodes", "value": 2, "period": 3600}]},
                            "period: 1-1800 s}: fix period 3600."),
    "policy_type_unknown": ({"autoscaler_scale_down_policies": [{"type": "hosts", "value": 1, "period": 60}]},
                            "fix type hosts."),
    "policy_value_zero": ({"autoscaler_scale_down_policies": [{"type": "nodes", "value": 0, "period": 60}]},
                          "fix value 0.0."),
    "tolerance_one": ({"autoscaler_tolerance_up": 1.5}, "fractions from 0 to below 1 (got 1.5, 0.1)"),
    "interval_zero": ({"autoscaler_evaluation_interval": 0}, "autoscaler_evaluation_interval 1-600 s (got 0)"),
    "backoff_initial_above_max": ({"autoscaler_backoff_initial": 3600, "autoscaler_backoff_max": 600},
                                  "at most autoscaler_backoff_max 1-86400 (got 3600, 600)"),
    "awx_without_token": ({**AWX, "autoscaler_awx_token": ""},
                          "The awx executor needs autoscaler_awx_url (http(s)://..., got 'https://awx.example.test'),"
                          " autoscaler_awx_token (an AWX OAuth2 token with execute on the templates, from the vault:"
                          " empty)"),
    "awx_url_without_scheme": ({**AWX, "autoscaler_awx_url": "awx.example.test"}, "got 'awx.example.test'"),
    "runner_without_inventory": ({"autoscaler_runner_inventory": []},
                                 "autoscaler_runner_inventory (a list of absolute inventory paths there, got [])"),
    "command_provider_without_argv": ({"autoscaler_provider": "command"},
                                      "the argv of the operator's program starting with its absolute path; got []"),
    "spare_pool_without_group": ({"autoscaler_spare_group": ""}, "autoscaler_spare_group, an inventory group name"),
    "file_writer_without_path": ({"autoscaler_inventory_file": ""}, "autoscaler_inventory_file, an absolute path"),
    "act_without_token": ({"autoscaler_mode": "act"}, "and set explicitly in act mode"),
    "short_token": ({"autoscaler_token": "short"}, "must be 16 characters or more without spaces (5 given)"),
    "sample_placeholder_token": ({"autoscaler_token": "REPLACE-with-openssl-rand-hex-24"},
                                 "not the sample's REPLACE placeholder"),
    "webhook_without_the_same_token": (
        {"autoscaler_token": "t" * 24, "alertmanager_webhook_url": "http://10.0.0.31:9180/v1/alertmanager",
         "alertmanager_webhook_bearer_token": "x" * 24},
        "set autoscaler_token and alertmanager_webhook_bearer_token to the same secret"),
    "act_without_the_checkout": ({"autoscaler_mode": "act", "autoscaler_token": "t" * 24},
                                 "/srv/keel/playbooks/add-node.yml, /srv/keel/inventories/production,"
                                 " /srv/keel/inventories/production is missing on"),
    "mode_unknown": ({"autoscaler_mode": "on"}, "autoscaler_mode must be off, dry-run or act (got 'on')"),
    "no_prometheus": ({"autoscaler_prometheus_url": ""}, "autoscaler_prometheus_url an http(s) URL (got ''"),
}
GOOD = {"good_defaults": {}, "good_awx": {**AWX, "autoscaler_awx_ca_file": "/etc/ssl/awx-ca.pem"}}
PLAY = """
- name: Render the autoscaler's files
  hosts: good
  gather_facts: true
  gather_subset: [min]
  vars_files: [{role}/vars/main.yml]
  tasks:
    - name: Render
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item }}}}.j2"
        dest: "{out}/{{{{ inventory_hostname }}}}-{{{{ item | basename }}}}"
        mode: "0600"
      loop: [etc/keel-autoscaler/config.json, etc/systemd/system/keel-autoscaler.service]

- name: Preflights
  hosts: cases:good
  gather_facts: true
  gather_subset: [min]
  tasks:
    - name: Preflight
      ansible.builtin.include_role:
        name: "{role}"
        tasks_from: preflight
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("autoscaler")
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
             "keel_private_ip": "10.0.0.31"}
    inventory = {"all": {
        # the role's defaults at the inventory's lowest precedence, as a role gives them
        "vars": {**defaults, "ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "children": {
            "monitoring": {"hosts": {"mon1": {"keel_private_ip": "10.0.0.31"}}},
            "app": {"hosts": {"app1": {"keel_private_ip": "10.0.0.21"}}},
            "good": {"hosts": {name: {**local, **extra} for name, extra in GOOD.items()}},
            "cases": {"hosts": {f"bad_{case}": {**local, **extra} for case, (extra, _) in BAD_INPUTS.items()}},
        }}}
    assert defaults["autoscaler_port"] == 9180
    (out / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (out / "play.yml").write_text(PLAY.format(role=ROLE, out=out))
    res = subprocess.run([str(PLAYBOOK), "-i", str(out / "inventory.yml"), str(out / "play.yml"), "-f", "30"],
                         capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    (out / "output.txt").write_text(res.stdout + res.stderr)
    per_host: dict[str, str] = {}
    for line in (res.stdout + res.stderr).splitlines():
        found = re.match(r"^(?:fatal|failed|ok|changed|skipping): \[([^\]]+)\]", line)
        if found:
            per_host[found.group(1)] = per_host.get(found.group(1), "") + " " + line
        recap = re.match(r"^(\S+)\s+: ok=.* failed=(\d+)", line)
        if recap:
            per_host[recap.group(1)] = per_host.get(recap.group(1), "") + f" recap failed={recap.group(2)}"
    return out, per_host


def rendered_config(run, host: str) -> dict:
    path = run[0] / f"{host}-config.json"
    assert path.exists(), (run[0] / "output.txt").read_text()[-3000:]
    return json.loads(path.read_text())


def test_default_config_is_the_interface_and_the_package_accepts_it(run):
    config = rendered_config(run, "good_defaults")
    assert config["mode"] == "dry-run"
    assert config["listen"] == {"address": "10.0.0.31", "port": 9180}
    assert config["prometheus"]["url"] == "http://10.0.0.31:9090"  # the first monitoring host
    assert config["token_file"] == "/etc/keel-autoscaler/token"  # noqa: S105  a path
    assert config["state_dir"] == "/var/lib/keel-autoscaler"
    policy = config["policy"]
    assert (policy["min_nodes"], policy["max_nodes"]) == (2, 4)
    assert (policy["tolerance_up"], policy["tolerance_down"]) == (0.1, 0.1)
    assert policy["metrics"][0]["name"] == "requests_per_node" and policy["metrics"][0]["target"] == 100.0
    assert policy["scale_up"] == {"stabilization_window": 0, "select": "max", "policies": [
        {"type": "nodes", "value": 2.0, "period": 300}, {"type": "percent", "value": 100.0, "period": 300}]}
    assert policy["scale_down"] == {"stabilization_window": 300, "select": "min",
                                    "policies": [{"type": "nodes", "value": 1.0, "period": 300}]}
    assert {k: policy[k] for k in ("delay_after_scale_up", "backoff_initial", "backoff_max", "new_node_grace",
                                   "provision_timeout", "drain_timeout")} == {
        "delay_after_scale_up": 600, "backoff_initial": 180, "backoff_max": 1800, "new_node_grace": 120,
        "provision_timeout": 900, "drain_timeout": 120}
    assert config["executor"]["type"] == "runner"
    assert config["executor"]["inventory"] == ["/srv/keel/inventories/production"]
    assert config["provider"] == {"type": "spare-pool", "group": "app_spare"}
    assert config["inventory"]["type"] == "file" and config["lock"] == {"owner": "keel-autoscaler"}
    assert config_module.validate(config_module._merge(config_module.DEFAULTS, config)) == []


def test_role_defaults_match_the_package_defaults(run):
    """The queries and policy the role renders by default are the package's own defaults (no drift)."""
    config = rendered_config(run, "good_defaults")
    package = config_module.DEFAULTS
    for key in ("nodes_query", "ready_query", "busy_query", "lock_query", "node_label", "timeout", "max_staleness"):
        assert config["prometheus"][key] == package["prometheus"][key], key
    assert config["policy"]["metrics"][0]["query"] == package["policy"]["metrics"][0]["query"]
    for key, value in package["policy"].items():
        if key != "metrics":
            assert config["policy"][key] == value, key


def test_awx_and_command_variant_is_accepted_by_the_package(run):
    config = rendered_config(run, "good_awx")
    assert config["executor"] == {
        "type": "awx", "url": "https://awx.example.test", "token_file": "/etc/keel-autoscaler/awx-token",
        "ca_file": "/etc/ssl/awx-ca.pem", "add_template": "keel add-node", "remove_template": "keel remove-node",
        "forget_template": "keel forget-node", "poll_interval": 10, "timeout": 3600}
    assert config["inventory"] == {"type": "awx", "url": "https://awx.example.test", "inventory_id": 3,
                                   "token_file": "/etc/keel-autoscaler/awx-token", "ca_file": "/etc/ssl/awx-ca.pem",
                                   "group": "app"}
    assert config["provider"] == {"type": "command", "argv": ["/usr/local/bin/provision-node", "--site", "x"],
                                  "timeout": 900}
    assert "t" * 24 not in json.dumps(config)  # tokens live in their files, never in the configuration
    assert config_module.validate(config_module._merge(config_module.DEFAULTS, config)) == []


def test_unit_is_sandboxed_like_the_other_units(run):
    path = run[0] / "good_defaults-keel-autoscaler.service"
    assert path.exists(), (run[0] / "output.txt").read_text()[-3000:]
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(path.read_text())
    service = unit["Service"]
    assert service["User"] == "keel-autoscaler"
    assert service["ExecStart"] == ("/opt/keel-autoscaler/bin/keel-autoscaler"
                                    " --config /etc/keel-autoscaler/config.json run")
    text = path.read_text()
    for line in ("ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=", "PrivateTmp=yes",
                 "PrivateDevices=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
                 "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
                 "MemoryDenyWriteExecute=yes", "ReadWritePaths=/var/lib/keel-autoscaler",
                 # the file inventory writer replaces its file atomically in that directory
                 "ReadWritePaths=-/srv/keel/inventories/production", "ProtectHome=yes"):
        assert line in text.splitlines(), line


def test_good_inputs_pass_preflight(run):
    for host in GOOD:
        assert "recap failed=0" in run[1].get(host, ""), (host, run[1].get(host, ""))


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_refused_in_preflight_with_what_to_fix(run, case):
    _, message = BAD_INPUTS[case]
    output = " ".join(run[1].get(f"bad_{case}", "").split())
    assert "recap failed=1" in output, output[-2000:]
    assert message in output, output[-2000:]
