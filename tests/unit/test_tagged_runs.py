"""A run by tag of a layer playbook (issue 25): Ansible skips a play's own fact gathering when
the play has tags and none of them was asked for, and the roles then found no facts
(`object of type 'dict' has no attribute 'distribution'`: scripts/bench.sh's
`loadbalancers.yml --tags haproxy_config` stopped there). Each layer play gathers them
first, tagged always, when no earlier play of the run did."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
LAYERS = {"app.yml": "app_config", "common.yml": "common", "hardening.yml": "firewall",
          "loadbalancers.yml": "haproxy_config", "monitoring.yml": "prometheus"}


def inventory(tmp_path: Path) -> Path:
    """Every group on one host of this machine (local connection)."""
    path = tmp_path / "hosts.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "keel_private_ip": "127.0.0.1"}
    groups = ["loadbalancers", "app", "monitoring", "autoscaler"]
    path.write_text("all:\n  children:\n" + "".join(
        f"    {g}:\n      hosts:\n        tagged: {host}\n" for g in groups))
    return path


@pytest.mark.parametrize(("playbook", "tag"), sorted(LAYERS.items()))
def test_every_play_of_a_layer_gathers_facts_first_in_a_run_by_tag(tmp_path, playbook, tag):
    res = subprocess.run([PLAYBOOK, "-i", str(inventory(tmp_path)), f"playbooks/{playbook}", "--tags", tag,
                          "--list-tasks"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    plays = re.split(r"\n\s*play #\d+", res.stdout)[1:]
    assert plays, res.stdout
    for play in plays:
        tasks = [line.strip() for line in play.split("tasks:", 1)[1].splitlines() if line.strip()]
        assert tasks[0].startswith("Gather the facts a run by tag skipped"), play


def test_a_run_by_tag_has_the_facts_the_preflight_reads(tmp_path):
    """loadbalancers.yml --tags haproxy_config in check mode on this machine: the preflight
    finds the distribution (later tasks may stop on a machine without HAProxy's service)."""
    res = subprocess.run([PLAYBOOK, "-i", str(inventory(tmp_path)), "playbooks/loadbalancers.yml",
                          "--tags", "haproxy_config", "--check", "-e", "ansible_become=false",
                          "-e", f"haproxy_credentials_dir={tmp_path / 'credentials'}",
                          "-e", f"haproxy_tls_lab_ca_dir={tmp_path / 'ca'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    output = res.stdout + res.stderr
    assert "has no attribute 'distribution'" not in output, output[-3000:]
    assert re.search(r"TASK \[haproxy : Check the distribution is supported\][^\n]*\n[^\n]*\nok: \[tagged\]",
                     output), output[-3000:]
