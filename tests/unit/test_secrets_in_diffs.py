"""No secret in a --check --diff run (security review M4).

AWX invites check-mode launches and keeps job output: a template task whose template
renders a secret (the HAProxy stats password, app_extra_env, the Alertmanager webhook
URL with its token) must carry `diff: false` (changed/ok stay visible) or `no_log`.
A static scan of every role, and a run showing keel_template honours `diff: false`
as the builtin does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
JINJA = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)
# a variable whose name ends in one of these holds a secret (names ending _file, _dir are paths to one)
SECRET = re.compile(r"\w*(password|extra_env|webhook_url|bearer_token|private_key|api_key|secret_key)")
LITERAL = re.compile(r"'[^']*'|\"[^\"]*\"")
TEMPLATE_ACTIONS = ("keel_template", "ansible.builtin.template", "template")


def secret_names(template: Path) -> set[str]:
    names = set()
    for match in JINJA.finditer(template.read_text()):
        code = LITERAL.sub("", "".join(g or "" for g in match.groups()))  # names, not string literals
        for full in re.findall(r"\b\w+\b", code):
            if SECRET.fullmatch(full) and not full.endswith(("_file", "_dir", "_path")):
                names.add(full)
    return names


def template_tasks():
    for tasks_file in sorted(ROOT.glob("roles/*/tasks/*.yml")):
        role = tasks_file.parts[-3]
        for task in yaml.safe_load(tasks_file.read_text()) or []:
            for action in TEMPLATE_ACTIONS:
                if isinstance(task, dict) and action in task and isinstance(task[action], dict):
                    src = str(task[action].get("src", ""))
                    path = ROOT / "roles" / role / "templates" / src
                    if path.is_file():
                        yield tasks_file.relative_to(ROOT), task, path


# Templates that render a secret through another variable (the scan sees only direct names):
# alertmanager.yml is built from __alertmanager_config, which holds the webhook URL and its token.
INDIRECT = {"roles/alertmanager/templates/etc/alertmanager/alertmanager.yml.j2"}


def test_every_template_task_that_renders_a_secret_hides_its_diff():
    offenders, checked = [], []
    for tasks_file, task, template in template_tasks():
        names = secret_names(template)
        rel = str(template.relative_to(ROOT))
        if not names and rel not in INDIRECT:
            continue
        checked.append(rel)
        if task.get("diff") is not False and task.get("no_log") is not True:
            offenders.append(f"{tasks_file}: {task.get('name')} renders {sorted(names) or 'a secret (indirectly)'}")
    assert not offenders, offenders
    # the three the review found are among those checked (the scan sees them)
    assert {"roles/haproxy/templates/etc/haproxy/haproxy.cfg.j2", "roles/app/templates/etc/keel-app/common.env.j2",
            *INDIRECT} <= set(checked), checked


def test_keel_template_prints_no_diff_when_told(tmp_path):
    (tmp_path / "t.j2").write_text("secret={{ s }}\n")
    (tmp_path / "out").write_text("old\n")
    play = tmp_path / "p.yml"
    for diff, expected in ((False, 0), (True, 1)):
        play.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "vars": {"s": "TOPSECRET-42"},
                                         "tasks": [{"keel_template": {"src": str(tmp_path / "t.j2"),
                                                                      "dest": str(tmp_path / "out"), "mode": "0600"},
                                                    "diff": diff}]}]))
        res = subprocess.run([str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(play), "--check", "--diff",
                              "-e", f"ansible_python_interpreter={sys.executable}"], cwd=ROOT,
                             env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1"),
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stdout[-2000:]
        assert res.stdout.count("TOPSECRET-42") == expected, (diff, res.stdout[-2000:])
