"""Shared by the unit tests (imported by name: tests/unit is on sys.path while they
run; not named conftest, which tests/unit/app has too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def local_play(tmp_path: Path, tasks: list[dict], extra: dict, facts: bool = False,
               vars_files: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """A throwaway play on this machine (localhost, local connection, keel's ansible.cfg):
    the tasks with the extra variables (and, when given, a role's defaults/vars files)."""
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": facts, "tasks": tasks,
                                     **({"vars_files": vars_files} if vars_files else {})}]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_NOCOLOR="1")
    return subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(play),
                           "-e", f"@{tmp_path / 'extra.json'}", "-e", f"ansible_python_interpreter={sys.executable}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)

# The roles read the architecture from ansible_facts (ansible.cfg turns off the
# facts as top-level variables). Tests whose hosts are not contacted (gather_facts
# off) give each host its inventory variable test_arch as that fact: a cacheable
# set_fact lands in ansible_facts (run them with ANSIBLE_CACHE_PLUGIN=memory).
FAKE_ARCHITECTURE = {"name": "Give the host its test architecture as a fact",
                     "ansible.builtin.set_fact": {"ansible_architecture": "{{ test_arch }}", "cacheable": True}}
