"""The monitoring side of the node autoscaler (issue 23), without the services.

The prometheus role's configuration is rendered by ansible-playbook with the
role's defaults and vars for inventories with and without an autoscaler group,
and checked by the real promtool; the alertmanager role's configuration with and
without the webhook's bearer token, checked by the real amtool (both from the
test mirror's archives, the previous and the current version); the preflights
run against bad input. molecule/monitoring converges both roles for real.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"
PLAYBOOK = ROOT / ".venv" / "bin" / "ansible-playbook"
CACHE = Path(os.environ.get("KEEL_CACHE") or Path.home() / ".cache" / "keel")
MIRROR = CACHE / "test-mirror" / "prometheus"
TOKEN = "s3cret-t0ken-of-the-autoscaler"  # noqa: S105  a test value, looked for in every output
WEBHOOK = "http://10.0.0.31:9180/v1/alertmanager"

# Prometheus renderings: host -> its variables (every one is a monitoring host).
PROMETHEUS_CASES = {
    "p_autoscaler": {},                                        # the inventory's autoscaler group (2 hosts)
    "p_empty": {"prometheus_autoscaler_group": "empty"},       # a group without hosts
    "p_absent": {"prometheus_autoscaler_group": "nosuchgroup"},
    "p_off": {"prometheus_autoscaler_group": ""},
    "p_port": {"prometheus_autoscaler_port": 9999},            # default port for hosts without autoscaler_port
}
ALERTMANAGER_CASES = {
    "a_token": {"alertmanager_webhook_url": WEBHOOK, "alertmanager_webhook_bearer_token": TOKEN},
    "a_url": {"alertmanager_webhook_url": WEBHOOK},
    "a_none": {},
}
BAD_INPUTS = {
    "token_without_url": ("alertmanager", {"alertmanager_webhook_bearer_token": TOKEN},
                          "alertmanager_webhook_bearer_token is set but would go nowhere"),
    "token_with_a_newline": ("alertmanager", {"alertmanager_webhook_url": WEBHOOK,
                                              "alertmanager_webhook_bearer_token": TOKEN + "\n"},
                             "give the token without spaces or line breaks"),
    "webhook_not_http": ("alertmanager", {"alertmanager_webhook_url": "ftp://10.0.0.31/hook"},
                         "an http(s) URL (got 'ftp://10.0.0.31/hook')"),
    "autoscaler_port_out_of_range": ("prometheus", {"prometheus_autoscaler_group": "autoscaler_bad"},
                                     "is a scrape target of job autoscaler on port '70000', which is not a port"),
    "autoscaler_job_name_taken": ("prometheus", {"prometheus_scrape_jobs_extra": [
        {"name": "autoscaler", "group": "app", "port": 9180}]}, "job names must be unique"),
    "edge_probe_job_name_taken": ("prometheus", {"prometheus_scrape_jobs_extra": [
        {"name": "blackbox_edge", "group": "app", "port": 9180}]}, "job names must be unique"),
    "edge_check_without_a_url": ("prometheus", {"prometheus_edge_probe_checks": [{"module": "edge_https_policy"}]},
                                 "prometheus_edge_probe_checks items {module: a module name, url: an http(s):// URL"),
    "edge_check_url_not_a_url": ("prometheus", {"prometheus_edge_probe_checks": [
        {"module": "edge_https_policy", "url": "{host}:443"}]}, '\\"url\\": \\"{host}:443\\"}])'),  # JSON-escaped
    "edge_probe_host_not_a_name": ("prometheus", {"prometheus_edge_probe_hosts": ["lb1 lb2"]},
                                   'prometheus_edge_probe_hosts host names (got [\\"lb1 lb2\\"])'),
}
GOOD_INPUTS = {
    "good_prometheus": ("prometheus", {}),
    "good_alertmanager": ("alertmanager", {"alertmanager_webhook_url": WEBHOOK,
                                           "alertmanager_webhook_bearer_token": TOKEN}),
}
PLAY = """
- name: Render the prometheus role
  hosts: prometheus_cases
  gather_facts: false
  vars_files: [{roles}/prometheus/vars/main.yml]
  tasks:
    - name: Output directory
      ansible.builtin.file:
        path: "{out}/{{{{ inventory_hostname }}}}"
        state: directory
        mode: "0700"
    - name: Render prometheus.yml
      ansible.builtin.template:
        src: "{roles}/prometheus/templates/etc/prometheus/prometheus.yml.j2"
        dest: "{out}/{{{{ inventory_hostname }}}}/prometheus.yml"
        mode: "0600"
    - name: The rule files the role installs
      ansible.builtin.copy:
        content: "{{{{ __prometheus_rules | to_json }}}}"
        dest: "{out}/{{{{ inventory_hostname }}}}/rules.json"
        mode: "0600"

- name: Render the alertmanager role
  hosts: alertmanager_cases
  gather_facts: false
  vars_files: [{roles}/alertmanager/vars/main.yml]
  tasks:
    - name: Output directory
      ansible.builtin.file:
        path: "{out}/{{{{ inventory_hostname }}}}"
        state: directory
        mode: "0700"
    - name: Render alertmanager.yml
      ansible.builtin.template:
        src: "{roles}/alertmanager/templates/etc/alertmanager/alertmanager.yml.j2"
        dest: "{out}/{{{{ inventory_hostname }}}}/alertmanager.yml"
        mode: "0600"

# one play for every case (a play whose hosts all fail would end the run)
- name: Preflights
  hosts: cases
  gather_facts: true  # the artifact check at the end of a preflight reads the architecture
  gather_subset: [min]
  tasks:
    - name: Preflight
      ansible.builtin.include_role:
        name: "{roles}/{{{{ case_role }}}}"
        tasks_from: preflight
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    """(output dir, host -> its output lines, the whole output)."""
    out = tmp_path_factory.mktemp("autoscaler-monitoring")
    defaults: dict = {}
    for role in ("prometheus", "alertmanager"):
        defaults |= yaml.safe_load((ROLES / role / "defaults/main.yml").read_text())
    mon = {"keel_private_ip": "10.0.0.31"}
    cases = {f"bad_{name}": {"keel_private_ip": "10.0.1.1", "case_role": role, **extra}
             for name, (role, extra, _) in BAD_INPUTS.items()}
    cases |= {name: {"keel_private_ip": "10.0.1.2", "case_role": role, **extra}
              for name, (role, extra) in GOOD_INPUTS.items()}
    inventory = {"all": {
        "vars": {**defaults, "ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        "children": {
            "monitoring": {"hosts": {"mon1": mon}},
            "app": {"hosts": {"app1": {"keel_private_ip": "10.0.0.21"}}},
            "loadbalancers": {"hosts": {"lb1": {"keel_private_ip": "10.0.0.11"}}},
            "autoscaler": {"hosts": {"mon1": {}, "ctl1": {"keel_private_ip": "10.0.0.5", "autoscaler_port": 9181}}},
            "autoscaler_bad": {"hosts": {"ctl2": {"keel_private_ip": "10.0.0.6", "autoscaler_port": 70000}}},
            "empty": {"hosts": {}},
            "prometheus_cases": {"hosts": {n: {"keel_private_ip": "10.0.0.31", **v}
                                           for n, v in PROMETHEUS_CASES.items()}},
            "alertmanager_cases": {"hosts": {n: {"keel_private_ip": "10.0.0.31", **v}
                                             for n, v in ALERTMANAGER_CASES.items()}},
            "cases": {"hosts": cases},
        }}}
    (out / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (out / "play.yml").write_text(PLAY.format(roles=ROLES, out=out))
    res = subprocess.run([str(PLAYBOOK), "-i", str(out / "inventory.yml"), str(out / "play.yml")],
                         capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    output = res.stdout + res.stderr
    (out / "output.txt").write_text(output)
    per_host: dict[str, str] = {}
    for line in output.splitlines():
        found = re.match(r"^(?:fatal|failed|ok|changed|skipping): \[([^\]]+)\]", line)
        if found:
            per_host[found.group(1)] = per_host.get(found.group(1), "") + " " + line
    return out, per_host, output


def rendered(run, host: str, name: str) -> Path:
    path = run[0] / host / name
    assert path.exists(), run[2][-3000:]
    return path


def jobs(run, host: str) -> dict[str, dict]:
    config = yaml.safe_load(rendered(run, host, "prometheus.yml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def archives(name: str) -> list[Path]:
    found = sorted((MIRROR / name / "releases" / "download").glob(f"v*/{name}-*.linux-amd64.tar.gz"))
    assert found, f"no {name} archive in {MIRROR}: run scripts/build_test_mirror.py (scripts/setup.sh does)"
    return found


def extract(archive: Path, tool: str, out: Path) -> Path:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(f"/{tool}"))
        member.name = tool
        tar.extract(member, out, filter="data")
    return out / tool


@pytest.fixture(scope="module", params=archives("prometheus"), ids=lambda p: p.parent.name)
def promtool(request, tmp_path_factory) -> Path:
    return extract(request.param, "promtool", tmp_path_factory.mktemp("promtool"))


@pytest.fixture(scope="module", params=archives("alertmanager"), ids=lambda p: p.parent.name)
def amtool(request, tmp_path_factory) -> Path:
    return extract(request.param, "amtool", tmp_path_factory.mktemp("amtool"))


# ---------------------------------------------------------------- prometheus
def test_the_autoscaler_group_becomes_job_autoscaler_by_host_with_each_hosts_port(run):
    job = jobs(run, "p_autoscaler")["autoscaler"]
    assert job["metrics_path"] == "/metrics"
    targets = [(c["targets"], c["labels"]) for c in job["static_configs"]]
    assert targets == [
        (["10.0.0.5:9181"], {"instance": "ctl1", "host": "ctl1"}),   # its own autoscaler_port
        (["10.0.0.31:9180"], {"instance": "mon1", "host": "mon1"}),  # the default 9180
    ]
    assert ["10.0.0.31:9999"] in [c["targets"] for c in jobs(run, "p_port")["autoscaler"]["static_configs"]]


def test_every_load_balancer_gets_the_edge_policy_probes_each_with_its_module(run):
    """Security review L7: job blackbox_edge, one target per probe, the module as URL parameter
    and as the label policy (what KeelEdgePolicyProbeFailed names)."""
    job = jobs(run, "p_autoscaler")["blackbox_edge"]
    assert job["metrics_path"] == "/probe"
    assert [(c["targets"], c["labels"]) for c in job["static_configs"]] == [
        (["https://lb1/"], {"__param_module": "edge_https_policy", "policy": "edge_https_policy"}),
        (["https://lb1/metrics"], {"__param_module": "edge_internal_hidden", "policy": "edge_internal_hidden"}),
        (["http://lb1/"], {"__param_module": "edge_http_redirect", "policy": "edge_http_redirect"}),
    ]
    assert job["relabel_configs"][-1]["replacement"] == "10.0.0.31:9115"  # the monitoring host's exporter


@pytest.mark.parametrize("host", ["p_empty", "p_absent", "p_off"])
def test_no_autoscaler_hosts_no_job_and_no_autoscaler_rules(run, host):
    assert "autoscaler" not in jobs(run, host)
    assert {"node", "app", "prometheus"} <= set(jobs(run, host))
    assert yaml.safe_load(rendered(run, host, "rules.json").read_text()) == ["keel-app"]


def test_the_autoscaler_rules_are_installed_with_its_job(run):
    assert yaml.safe_load(rendered(run, "p_autoscaler", "rules.json").read_text()) == ["keel-app", "keel-autoscaler"]


@pytest.mark.parametrize("host", list(PROMETHEUS_CASES))
def test_promtool_accepts_the_rendered_configuration(run, promtool, host):
    res = subprocess.run([str(promtool), "check", "config", str(rendered(run, host, "prometheus.yml"))],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------- alertmanager
def webhooks(run, host: str) -> list[dict]:
    config = yaml.safe_load(rendered(run, host, "alertmanager.yml").read_text())
    (default,) = [r for r in config["receivers"] if r["name"] == "default"]
    return default.get("webhook_configs", [])


def test_the_webhook_authenticates_with_the_token_file_never_the_token(run):
    (hook,) = webhooks(run, "a_token")
    assert hook["url"] == WEBHOOK and hook["send_resolved"] is True
    assert hook["http_config"] == {
        "authorization": {"type": "Bearer", "credentials_file": "/etc/alertmanager/webhook-token"}}
    assert TOKEN not in rendered(run, "a_token", "alertmanager.yml").read_text()


def test_without_a_token_no_authorization_and_without_a_url_no_webhook(run):
    (hook,) = webhooks(run, "a_url")
    assert "http_config" not in hook
    assert webhooks(run, "a_none") == []


@pytest.mark.parametrize("host", list(ALERTMANAGER_CASES))
def test_amtool_accepts_the_rendered_configuration(run, amtool, host):
    res = subprocess.run([str(amtool), "check-config", str(rendered(run, host, "alertmanager.yml"))],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_token_task_is_secret():
    tasks = yaml.safe_load((ROLES / "alertmanager/tasks/configure.yml").read_text())
    (task,) = [t for t in tasks if "alertmanager_webhook_bearer_token" in str(t.get("keel_copy", {}).get("content"))]
    assert task["no_log"] is True and task["diff"] is False
    assert task["keel_copy"]["mode"] == "0640"
    spec = yaml.safe_load((ROLES / "alertmanager/meta/argument_specs.yml").read_text())
    assert spec["argument_specs"]["main"]["options"]["alertmanager_webhook_bearer_token"]["no_log"] is True


# ---------------------------------------------------------------- preflight
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_rejected_by_the_preflight_with_what_to_fix(run, case):
    output = run[1].get(f"bad_{case}", "")
    assert "fatal:" in output or "failed:" in output, output or run[2][-3000:]
    assert BAD_INPUTS[case][2] in output, output


@pytest.mark.parametrize("case", list(GOOD_INPUTS))
def test_good_input_passes_the_preflight(run, case):
    output = run[1].get(case, "")
    assert "fatal:" not in output and f"ok: [{case}]" in output, output or run[2][-3000:]


def test_the_token_never_shows_in_the_output(run):
    assert TOKEN not in run[2]
