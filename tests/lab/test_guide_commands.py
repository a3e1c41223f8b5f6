"""Deployment guide commands that need real hosts, run as written against the
running lab (`scripts/lab.sh check`), on top of what the other lab tests run:

- one layer at a time: `site.yml --tags common` and `--tags hardening` alone
  (a converged lab: they run their roles and change nothing);
- `--limit` without the app hosts stops in the preflight, before HAProxy's or
  Prometheus' configuration is rendered with a wrong port list, and names the
  limit to use; with that limit, the layer runs;
- the HAProxy package upgrade with `--limit 'localhost:lb1:app'`: lb1 is first
  taken back to the previous Debian package version by hand, the guide's command
  with the version pinned upgrades it, HAProxy serves afterwards;
- the Runtime API's `show servers state app` lists every app instance;
- the troubleshooting section's Prometheus and Alertmanager commands on the
  monitoring host (`promtool check config`/`check rules`, `amtool check-config`,
  the targets through the API): valid, every target up;
- secrets from ansible-vault in a whole layer (`--tags haproxy`), the password
  typed at `--ask-vault-pass`'s prompt: the vaulted stats password is the one
  the stats page takes; a wrong password stops the run before any change.

The lab is left as it was found (each test puts its change back).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pexpect
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv" / "bin"
LAB = ROOT / "inventories" / "lab"
INVENTORY = LAB / "hosts.yml"
SITE = str(ROOT / "playbooks" / "site.yml")
CA = ROOT / ".credentials" / "lab-ca" / "ca.crt"
APP_HOSTS = {"app1": "172.30.80.21", "app2": "172.30.80.22"}
STATS = "http://127.0.0.1:8404/stats"
LB = "https://172.30.80.11"
# bookworm's HAProxy package and the bookworm-security update after it
HAPROXY_PREVIOUS, HAPROXY_CURRENT = "2.6.12-1+deb12u3", "2.6.12-1+deb12u4"


def playbook(*args: str) -> subprocess.CompletedProcess:
    """site.yml against the lab inventory."""
    return subprocess.run([str(VENV / "ansible-playbook"), "-i", str(INVENTORY), SITE, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200, check=False)


def recap(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.split("PLAY RECAP")[-1].splitlines() if " : ok=" in line}


def on(host: str, command: str) -> str:
    return subprocess.run(["docker", "exec", f"keel-lab-{host}", "sh", "-c", command], capture_output=True,
                          text=True, check=True, timeout=300).stdout


def sha256_of(host: str, path: str) -> str:
    return on(host, f"sha256sum {path}").split()[0]


def through_lb(count: int = 20) -> int:
    """Requests to the app through HAProxy over TLS (bounded: count requests, 5 s each); how many got 200."""
    context = ssl.create_default_context(cafile=str(CA))
    served = 0
    for _ in range(count):
        try:
            with urllib.request.urlopen(f"{LB}/", timeout=5, context=context) as resp:  # noqa: S310
                served += resp.status == 200
        except (urllib.error.URLError, OSError):
            pass
    return served


def stats_status(user: str, password: str) -> int:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(STATS, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (loopback)
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


# a task of the layer (not a preflight, which is tagged always) and one of another layer
COMMON_TASK = "common : Install the baseline packages"
HARDENING_TASK = "os_hardening : Set the lockout after failed logins"
LAYER_TASKS = {"common": (COMMON_TASK, HARDENING_TASK), "hardening": (HARDENING_TASK, COMMON_TASK)}


@pytest.mark.parametrize("tag", ["common", "hardening"])
def test_one_layer_alone_runs_its_roles_and_changes_nothing(tag):
    res = playbook("--tags", tag)
    assert res.returncode == 0, res.stdout[-3000:]
    ran, other = LAYER_TASKS[tag]
    assert f"TASK [{ran}" in res.stdout
    assert f"TASK [{other}" not in res.stdout and "TASK [haproxy : Configure HAProxy" not in res.stdout
    lines = recap(res.stdout)
    assert set(lines) >= {"lb1", "app1", "app2", "mon1"}, lines
    assert all("changed=0" in line and "failed=0" in line for line in lines.values()), lines


@pytest.mark.parametrize(("limit", "tag", "host", "config"), [
    ("lb1", "haproxy", "lb1", "/etc/haproxy/haproxy.cfg"),
    ("mon1", "prometheus", "mon1", "/etc/prometheus/prometheus.yml"),
])
def test_a_limit_without_the_app_hosts_stops_before_rendering(limit, tag, host, config):
    before = sha256_of(host, config)
    res = playbook("--tags", tag, "--limit", limit)
    output = " ".join(res.stdout.split())
    assert res.returncode != 0
    assert "the instance ports of app1, app2 are unknown" in output, res.stdout[-3000:]
    assert f"--limit 'localhost:{host}:app'" in output
    assert f"TASK [{tag} :" not in res.stdout
    assert sha256_of(host, config) == before
    # the limit the message names runs the layer (and changes nothing on a converged lab)
    res = playbook("--tags", tag, "--limit", f"localhost:{host}:app")
    assert res.returncode == 0, res.stdout[-3000:]
    assert all("changed=0" in line for line in recap(res.stdout).values()), recap(res.stdout)
    assert sha256_of(host, config) == before


def installed_haproxy() -> str:
    return on("lb1", "dpkg-query -W -f '${Version}' haproxy")


@pytest.fixture
def previous_haproxy():
    """lb1 taken back to the previous package version, as a host that has not been upgraded yet."""
    assert installed_haproxy() == HAPROXY_CURRENT, "the lab's HAProxy is not Debian's current package"
    on("lb1", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
              f"-o Dpkg::Options::=--force-confold haproxy={HAPROXY_PREVIOUS} >/dev/null")
    on("lb1", "systemctl is-active --quiet haproxy || systemctl start haproxy")
    yield
    if installed_haproxy() != HAPROXY_CURRENT:  # the test failed half-way: put the lab back
        on("lb1", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confold "
                  f"haproxy={HAPROXY_CURRENT} >/dev/null")


def test_haproxy_upgrade_with_the_guides_limit(previous_haproxy):
    assert installed_haproxy() == HAPROXY_PREVIOUS
    config = sha256_of("lb1", "/etc/haproxy/haproxy.cfg")
    res = playbook("--tags", "haproxy", "--limit", "localhost:lb1:app",
                   "-e", f"haproxy_package_version={HAPROXY_CURRENT}")
    assert res.returncode == 0, res.stdout[-3000:]
    assert installed_haproxy() == HAPROXY_CURRENT
    assert "haproxy : Install HAProxy" in res.stdout
    assert re.search(r"changed: \[lb1\]", res.stdout.split("Install HAProxy")[1].split("TASK [")[0])
    assert sha256_of("lb1", "/etc/haproxy/haproxy.cfg") == config  # keel's configuration survived the upgrade
    assert on("lb1", "systemctl is-active haproxy").strip() == "active"
    assert through_lb(20) == 20


def test_show_servers_state_lists_every_app_instance():
    out = on("lb1", "echo 'show servers state app' | socat stdio /run/haproxy/admin.sock").splitlines()
    assert out[0].strip() == "1", out[:3]  # format version
    header = out[1].lstrip("# ").split()
    rows = [dict(zip(header, line.split(), strict=False)) for line in out[2:] if line.strip()]
    assert rows, out
    for row in rows:
        host = row["srv_name"].rsplit("-", 1)[0]
        assert row["srv_addr"] == APP_HOSTS[host], row
        assert row["srv_op_state"] == "2", row  # SRV_ST_RUNNING
        assert row["srv_admin_state"] == "0", row
    assert {row["srv_name"] for row in rows} == {f"{h}-{p}" for h in APP_HOSTS for p in (8000, 8001)}, rows


def test_the_monitoring_hosts_troubleshooting_commands():
    """The guide's four Prometheus/Alertmanager commands, as written, on mon1 (PRIVATE_IP: its address)."""
    config = on("mon1", "promtool check config /etc/prometheus/prometheus.yml 2>&1")
    assert "SUCCESS: /etc/prometheus/prometheus.yml is valid prometheus config file syntax" in config, config
    rules = on("mon1", "promtool check rules /etc/prometheus/rules/*.yml 2>&1")
    found = [int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", rules)]
    assert found and all(n > 0 for n in found) and "FAILED" not in rules, rules
    alertmanager = on("mon1", "amtool check-config /etc/alertmanager/alertmanager.yml 2>&1")
    assert "SUCCESS" in alertmanager and "Found:" in alertmanager, alertmanager
    targets = on("mon1", "curl -s http://172.30.80.31:9090/api/v1/targets | python3 -m json.tool"
                         " | grep -E '\"(instance|health|lastError)\"'")
    health = re.findall(r'"health": "(\w+)"', targets)
    instances = re.findall(r'"instance": "([^"]+)"', targets)
    assert health and set(health) == {"up"}, targets
    # every lab host among them (node_exporter's targets carry the inventory name as their instance)
    assert {*APP_HOSTS, "lb1", "mon1"} <= set(instances), instances


@pytest.fixture
def vaulted_lab(tmp_path):
    """A copy of the lab inventory with the HAProxy stats password in an encrypted vault.yml
    and the plain file referring to it, as the guide's section 3 writes them."""
    inventory = tmp_path / "lab"
    shutil.copytree(LAB, inventory)
    stats_password = secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")
    vault_password = secrets.token_urlsafe(24)
    (tmp_path / "pass").write_text(vault_password + "\n")
    vault = inventory / "group_vars" / "all" / "vault.yml"
    vault.write_text(yaml.safe_dump({"vault_haproxy_stats_password": stats_password}))
    (inventory / "group_vars" / "all" / "secrets.yml").write_text(
        'haproxy_stats_password: "{{ vault_haproxy_stats_password }}"\n')
    subprocess.run([str(VENV / "ansible-vault"), "encrypt", "--vault-password-file", str(tmp_path / "pass"),
                    str(vault)], cwd=ROOT, check=True, capture_output=True, timeout=120)
    assert stats_password not in vault.read_text()
    yield {"hosts": inventory / "hosts.yml", "stats_password": stats_password, "vault_password": vault_password}
    # back to the lab's generated password
    res = playbook("--tags", "haproxy")
    assert res.returncode == 0, res.stdout[-3000:]


def ask_vault_pass(hosts: Path, password: str, *args: str) -> tuple[int, str]:
    child = pexpect.spawn(str(VENV / "ansible-playbook"), ["-i", str(hosts), "--ask-vault-pass", SITE, *args],
                          cwd=str(ROOT), encoding="utf-8", timeout=900)
    child.expect("Vault password:")
    child.sendline(password)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def test_a_layer_with_secrets_from_the_vault(vaulted_lab):
    lab_password = (ROOT / ".credentials" / "haproxy-stats-lb1").read_text().strip()
    assert stats_status("admin", lab_password) == 200
    config = sha256_of("lb1", "/etc/haproxy/haproxy.cfg")
    status, output = ask_vault_pass(vaulted_lab["hosts"], "not-" + vaulted_lab["vault_password"], "--tags", "haproxy")
    assert status != 0
    assert "decrypt" in output.lower(), output[-2000:]
    assert sha256_of("lb1", "/etc/haproxy/haproxy.cfg") == config
    status, output = ask_vault_pass(vaulted_lab["hosts"], vaulted_lab["vault_password"], "--tags", "haproxy")
    assert status == 0, output[-3000:]
    assert vaulted_lab["stats_password"] not in output  # no_log keeps it out of the output
    deadline = time.monotonic() + 10  # the reload hands the stats page to the new process
    while stats_status("admin", vaulted_lab["stats_password"]) != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stats_status("admin", vaulted_lab["stats_password"]) == 200
    assert stats_status("admin", lab_password) == 401
    assert hashlib.sha256(vaulted_lab["stats_password"].encode()).hexdigest() not in output
