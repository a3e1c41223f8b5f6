"""AWX readiness: the execution environment, the job templates and surveys, scripts/awx_run.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("awx_run", ROOT / "scripts" / "awx_run.py")
awx_run = importlib.util.module_from_spec(_spec)
sys.modules["awx_run"] = awx_run
_spec.loader.exec_module(awx_run)

EE_FILE = ROOT / "execution-environment.yml"
TEMPLATES_FILE = ROOT / "awx" / "job_templates.yml"
EXPECTED_PLAYBOOKS = {
    "playbooks/site.yml",
    "playbooks/deploy.yml",
    "playbooks/rollback.yml",
    "playbooks/add-node.yml",
    "playbooks/remove-node.yml",
    "playbooks/forget-node.yml",
    "playbooks/security-audit.yml",
}
# Fields of AWX's /api/v2/job_templates/ (and awx.awx.job_template); credentials and
# survey_spec go to their own endpoints. A misspelt key would be ignored by AWX.
JOB_TEMPLATE_FIELDS = {
    "name", "description", "job_type", "inventory", "project", "playbook", "scm_branch", "forks", "limit",
    "verbosity", "extra_vars", "job_tags", "force_handlers", "skip_tags", "start_at_task", "timeout",
    "use_fact_cache", "execution_environment", "host_config_key", "ask_scm_branch_on_launch",
    "ask_diff_mode_on_launch", "ask_variables_on_launch", "ask_limit_on_launch", "ask_tags_on_launch",
    "ask_skip_tags_on_launch", "ask_job_type_on_launch", "ask_verbosity_on_launch", "ask_inventory_on_launch",
    "ask_credential_on_launch", "ask_execution_environment_on_launch", "ask_labels_on_launch",
    "ask_forks_on_launch", "ask_job_slice_count_on_launch", "ask_timeout_on_launch",
    "ask_instance_groups_on_launch", "survey_enabled", "become_enabled", "diff_mode", "allow_simultaneous",
    "job_slice_count", "webhook_service", "webhook_credential", "prevent_instance_group_fallback",
    "credentials", "survey_spec",
}
SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}
SURVEY_ITEM_FIELDS = {
    "question_name", "question_description", "variable", "type", "required", "default", "choices", "min", "max",
    "new_question",
}
EE_TOP_LEVEL = {
    "version", "images", "build_arg_defaults", "dependencies", "options", "additional_build_files",
    "additional_build_steps",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads Ansible's tags (!vault, !unsafe) as plain values."""


_Loader.add_multi_constructor("!", lambda loader, _suffix, node: loader.construct_scalar(node)
                              if isinstance(node, yaml.ScalarNode) else None)


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506  a SafeLoader subclass


def _norm(name: str) -> str:
    """PEP 503 normalised package name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file's lines; fails on anything but name==version."""
    pins = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"{path.name}: '{line}' is not pinned as name==version"
        pins[_norm(match.group(1))] = match.group(2)
    return pins


def _templates() -> list[dict[str, Any]]:
    return _load(TEMPLATES_FILE)["job_templates"]


TEMPLATES = _templates()
EXISTING = [t for t in TEMPLATES if (ROOT / t["playbook"]).is_file()]


def _ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    return str(beside) if beside.exists() else "ansible-playbook"


# --- (a) execution environment ------------------------------------------------


def test_ee_definition_is_version_3_with_a_build_arg_base_image():
    ee = _load(EE_FILE)
    assert ee["version"] == 3
    assert set(ee) <= EE_TOP_LEVEL, f"unknown top-level keys: {set(ee) - EE_TOP_LEVEL}"
    base = ee["images"]["base_image"]["name"]
    # ansible-builder 3 turns it into the default of ARG EE_BASE_IMAGE; it needs a tag.
    assert re.fullmatch(r"[^\s:]+(:[^\s:]+)+", base), base
    for entry in ee.get("additional_build_files", []):
        assert (ROOT / entry["src"]).exists(), entry["src"]
    for key in ("galaxy", "python"):
        assert (ROOT / ee["dependencies"][key]).is_file(), ee["dependencies"][key]


def test_ee_collections_equal_requirements_yml():
    ee = _load(EE_FILE)
    galaxy = ee["dependencies"]["galaxy"]
    ee_reqs = _load(ROOT / galaxy) if isinstance(galaxy, str) else galaxy
    project = {c["name"]: str(c["version"]) for c in _load(ROOT / "requirements.yml")["collections"]}
    in_ee = {c["name"]: str(c["version"]) for c in ee_reqs["collections"]}
    assert in_ee == project
    for name, version in project.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: '{version}' is not an exact version"
    # no unpinned collection dependencies either: exactly the list above gets installed
    assert "--no-deps" in ee["build_arg_defaults"]["ANSIBLE_GALAXY_CLI_COLLECTION_OPTS"].split()


def test_ee_ansible_core_and_runner_match_constraints():
    ee = _load(EE_FILE)["dependencies"]
    constraints = _pins(ROOT / "constraints.txt")
    for key, package in (("ansible_core", "ansible-core"), ("ansible_runner", "ansible-runner")):
        assert ee[key]["package_pip"] == f"{package}=={constraints[package]}"


def test_ee_system_packages_are_bindep_lines():
    system = _load(EE_FILE)["dependencies"]["system"]
    assert system, "the EE needs at least the ssh client"
    for line in system:
        assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]*( \[[a-z0-9:!_ -]+\])?", line), line
    names = {line.split()[0] for line in system}
    assert {"openssh-clients", "openssh-client", "tzdata"} <= names


# --- (b) Python requirements of the EE -----------------------------------------


def test_ee_python_requirements_pinned_and_match_constraints():
    ee_pins = _pins(ROOT / "requirements-ee.txt")
    assert ee_pins, "requirements-ee.txt lists nothing"
    constraints = _pins(ROOT / "constraints.txt")
    for name, version in ee_pins.items():
        if name in constraints:
            assert version == constraints[name], f"{name}=={version} but constraints.txt pins {constraints[name]}"


def _tasks_in(node: Any, delegate: str | None = None):
    """(task, effective delegate_to) of every task in a task list, blocks included."""
    for task in node or []:
        if not isinstance(task, dict):
            continue
        here = task.get("delegate_to", delegate)
        yield task, here
        for key in ("block", "rescue", "always"):
            yield from _tasks_in(task.get(key), here)


def _controller_side_packages() -> set[str]:
    """Python packages keel's content needs on the controller, from what it uses."""
    needed = set()
    task_files = [*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("roles/*/handlers/*.yml")]
    task_files += list(ROOT.glob("playbooks/tasks/*.yml"))
    task_lists = [(_load(path), None) for path in task_files]
    for path in ROOT.glob("playbooks/*.yml"):
        for play in _load(path) or []:
            play_delegate = "localhost" if play.get("hosts") == "localhost" else None
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                task_lists.append((play.get(key), play_delegate))
    for tasks, delegate in task_lists:
        for task, where in _tasks_in(tasks, delegate):
            if where in ("localhost", "127.0.0.1") and any(k.startswith("community.crypto.") for k in task):
                needed.add("cryptography")
    text = "\n".join(
        p.read_text(encoding="utf-8")
        for pattern in ("roles/**/*.yml", "roles/**/*.j2", "playbooks/**/*.yml", "group_vars/**/*.yml")
        for p in ROOT.glob(pattern)
    )
    if "json_query" in text:
        needed.add("jmespath")
    if re.search(r"ansible\.utils\.(ip\w*|network_in_\w+|nthhost|cidr_merge|hwaddr|macaddr)|\|\s*ipaddr\b", text):
        needed.add("netaddr")
    return needed


def test_ee_python_requirements_are_exactly_what_the_content_uses():
    assert set(_pins(ROOT / "requirements-ee.txt")) == _controller_side_packages()


def test_no_job_template_playbook_uses_community_docker():
    # the EE leaves out community.docker's Python dependencies (lab only)
    for template in EXISTING:
        files, roles = _playbook_sources(ROOT / template["playbook"])
        for path in files | _role_files(roles):
            assert "community.docker." not in path.read_text(encoding="utf-8"), path


# --- (c) job templates and their playbooks -------------------------------------


def test_job_templates_name_the_expected_playbooks():
    assert {t["playbook"] for t in TEMPLATES} == EXPECTED_PLAYBOOKS
    names = [t["name"] for t in TEMPLATES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t["name"])
def test_job_template_fields_are_awx_fields(template):
    assert set(template) <= JOB_TEMPLATE_FIELDS, f"not AWX fields: {set(template) - JOB_TEMPLATE_FIELDS}"
    assert template["job_type"] in ("run", "check")
    assert template["execution_environment"] and template["project"] and template["inventory"]
    assert isinstance(template["forks"], int) and template["forks"] >= 0
    assert template["become_enabled"] is False, "the plays declare become themselves"


def _placeholder(question: dict[str, Any]) -> Any:
    """A valid answer to a question without a default."""
    if question["type"] in ("integer", "float"):
        return question.get("min", 0)
    if question["type"] == "multiplechoice":
        return question["choices"][0]
    if question["type"] == "multiselect":
        return question["choices"][:1]
    return "x" * max(int(question.get("min", 1)), 1)


def _launch_answers(template: dict[str, Any]) -> dict[str, Any]:
    """Extra vars of a launch with every survey question answered (AWX always sends them)."""
    spec = template["survey_spec"]["spec"] if template["survey_enabled"] else []
    answers = {q["variable"]: _placeholder(q) for q in spec if q["required"]}
    return awx_run.apply_survey(template, answers)


@pytest.mark.parametrize("template", EXISTING, ids=lambda t: t["name"])
def test_job_template_playbook_passes_syntax_check(template):
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    command = [_ansible_playbook(), "--syntax-check", "-i", "inventories/lab/hosts.yml", template["playbook"]]
    answers = _launch_answers(template)
    if answers:  # plays may name their hosts after an answer (add-node.yml: hosts: "{{ keel_new_node }}")
        command += ["-e", json.dumps(answers)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- (d) surveys ---------------------------------------------------------------


def _arg(task: dict[str, Any], action: str) -> Any:
    return task.get(action, task.get(f"ansible.builtin.{action}"))


def _playbook_sources(playbook: Path) -> tuple[set[Path], set[str]]:
    """Files a playbook reads (imported playbooks, included task files) and the roles it runs."""
    files: set[Path] = set()
    roles: set[str] = set()

    def visit_tasks(tasks: Any, base: Path, playbook_dir: Path) -> None:
        for task, _ in _tasks_in(tasks):
            role = _arg(task, "include_role") or _arg(task, "import_role")
            if isinstance(role, dict) and "{{" not in str(role.get("name", "{{")):
                roles.add(role["name"])
            included = _arg(task, "include_tasks") or _arg(task, "import_tasks")
            if isinstance(included, dict):
                included = included.get("file")
            if isinstance(included, str) and "{{" not in included:
                path = next((d / included for d in (base, playbook_dir) if (d / included).is_file()), None)
                if path and path not in files:
                    files.add(path)
                    visit_tasks(_load(path), path.parent, playbook_dir)

    def visit_playbook(path: Path) -> None:
        if path in files:
            return
        files.add(path)
        for entry in _load(path) or []:
            target = _arg(entry, "import_playbook")
            if target:
                visit_playbook(path.parent / target)
                continue
            for role in entry.get("roles") or []:
                roles.add(role if isinstance(role, str) else role.get("role", role.get("name")))
            for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                visit_tasks(entry.get(key), path.parent, path.parent)

    visit_playbook(playbook)
    return files, roles


def _role_files(roles: set[str]) -> set[Path]:
    found = set()
    for role in roles:
        for sub in ("defaults", "vars", "tasks", "handlers", "templates", "meta"):
            found |= {p for p in (ROOT / "roles" / role / sub).rglob("*") if p.is_file()}
    return found


SURVEY_VARIABLES = [
    (t, q) for t in EXISTING if t.get("survey_enabled") for q in t["survey_spec"]["spec"]
]


@pytest.mark.parametrize(
    ("template", "question"), SURVEY_VARIABLES, ids=[f"{t['name']}:{q['variable']}" for t, q in SURVEY_VARIABLES]
)
def test_survey_variable_is_read_by_the_playbook_or_its_roles(template, question):
    files, roles = _playbook_sources(ROOT / template["playbook"])
    word = re.compile(rf"(?<![\w.]){re.escape(question['variable'])}(?!\w)")
    readers = [p for p in files | _role_files(roles) if word.search(p.read_text(encoding="utf-8"))]
    assert readers, f"{question['variable']} is read by neither {template['playbook']} nor roles {sorted(roles)}"


def _set_by_playbook(files: set[Path]) -> set[str]:
    """Variables the playbook's own files set: play, import and task vars, set_fact."""
    names: set[str] = set()
    for path in files:
        for entry in _load(path) or []:
            names |= set(entry.get("vars") or {})
            if "hosts" in entry:
                tasks = [t for key in ("pre_tasks", "tasks", "post_tasks", "handlers") for t in entry.get(key) or []]
            else:
                tasks = [entry]  # a task of an included task file (or an import_playbook entry)
            for task, _ in _tasks_in(tasks):
                names |= set(task.get("vars") or {})
                names |= set(_arg(task, "set_fact") or {}) - {"cacheable"}
    return names


@pytest.mark.parametrize(
    ("template", "question"), SURVEY_VARIABLES, ids=[f"{t['name']}:{q['variable']}" for t, q in SURVEY_VARIABLES]
)
def test_survey_variable_does_not_override_what_the_playbook_sets(template, question):
    # survey answers are extra vars, which beat every vars: and set_fact: of the playbook
    # (e.g. app_rollback_to, which rollback.yml computes per host)
    files, _ = _playbook_sources(ROOT / template["playbook"])
    assert question["variable"] not in _set_by_playbook(files)


def test_set_by_playbook_sees_the_rollback_target():
    files, _ = _playbook_sources(ROOT / "playbooks/rollback.yml")
    assert {"app_rollback_to", "__keel_target", "__keel_switch_to"} <= _set_by_playbook(files)


def test_playbook_sources_follow_imports_includes_and_roles():
    files, roles = _playbook_sources(ROOT / "playbooks/deploy.yml")
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"playbooks/validate.yml", "playbooks/tasks/others-serving.yml", "playbooks/tasks/lb-servers.yml"} <= names
    assert roles == {"app"}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t["name"])
def test_survey_spec_is_valid_for_awx(template):
    if not template["survey_enabled"]:
        assert not template.get("survey_spec", {}).get("spec")
        return
    assert not template["ask_variables_on_launch"], "the survey is the whole launch interface"
    survey = template["survey_spec"]
    assert {"name", "description", "spec"} <= set(survey) and survey["spec"]
    variables = [q["variable"] for q in survey["spec"]]
    assert len(variables) == len(set(variables))
    for q in survey["spec"]:
        where = f"{template['name']}:{q['variable']}"
        assert set(q) <= SURVEY_ITEM_FIELDS, f"{where}: unknown keys {set(q) - SURVEY_ITEM_FIELDS}"
        assert q["type"] in SURVEY_TYPES, where
        assert re.fullmatch(r"[A-Za-z_]\w*", q["variable"]), where
        assert isinstance(q["required"], bool) and q["question_name"], where
        if q["required"]:
            assert "default" not in q, f"{where}: a required question with a default is never asked for real"
        else:
            assert "default" in q, f"{where}: an optional question says what it means when left alone"
        if "min" in q and "max" in q:
            assert q["min"] <= q["max"], where
        default = q.get("default")
        if q["type"] in ("multiplechoice", "multiselect"):
            assert isinstance(q["choices"], list) and q["choices"], where
            chosen = default if isinstance(default, list) else [default]
            assert default is None or set(chosen) <= set(q["choices"]), f"{where}: default not among choices"
        elif q["type"] in ("integer", "float") and default is not None:
            assert isinstance(default, int if q["type"] == "integer" else (int, float)), where
            assert q.get("min", default) <= default <= q.get("max", default), where
        elif default:  # text: AWX checks the length of what it passes
            assert q.get("min", 0) <= len(default) <= q.get("max", len(default)), where
        if default is not None:
            assert awx_run._check_answer(q, default) is None, where


# --- scripts/awx_run.py: survey handling and the private data dir -------------


def test_apply_survey_fills_defaults_and_refuses_what_awx_refuses():
    deploy = awx_run.load_template("keel deploy")
    answers = {
        "app_release_version": "1.0.1",
        "app_release_url": "https://a.example/r.tgz",
        "app_release_sha256": "a" * 64,
    }
    result = awx_run.apply_survey(deploy, {**answers, "deploy_max_fail_percentage": "10"})
    assert result["deploy_serial"] == "1" and result["deploy_allow_outage"] == "false"
    assert result["deploy_max_fail_percentage"] == 10
    with pytest.raises(awx_run.UsageError, match="app_release_sha256: required"):
        awx_run.apply_survey(deploy, {k: v for k, v in answers.items() if k != "app_release_sha256"})
    with pytest.raises(awx_run.UsageError, match="at least 64 characters"):
        awx_run.apply_survey(deploy, {**answers, "app_release_sha256": "abc"})
    with pytest.raises(awx_run.UsageError, match="one of"):
        awx_run.apply_survey(deploy, {**answers, "deploy_allow_outage": "maybe"})
    with pytest.raises(awx_run.UsageError, match="takes no extra variables"):
        awx_run.apply_survey(deploy, {**answers, "app_rollback_to": "0.9"})
    # an empty optional answer is not passed: rollback.yml then picks the previous release
    assert "rollback_to" not in awx_run.apply_survey(awx_run.load_template("keel rollback"), {})


def test_parse_extra_vars_merges_files_mappings_and_words(tmp_path):
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text("a: 1\nb: [x]\n", encoding="utf-8")
    merged = awx_run.parse_extra_vars([f"@{vars_file}", '{"b": ["y"], "c": true}', "d=4 e='two words'"])
    assert merged == {"a": 1, "b": ["y"], "c": True, "d": "4", "e": "two words"}
    with pytest.raises(awx_run.UsageError):
        awx_run.parse_extra_vars(["novalue"])


def test_prepare_only_lays_out_the_private_data_dir_like_awx(tmp_path):
    pdd = tmp_path / "pdd"
    result = _awx_run(tmp_path, "--template", "keel rollback", "-e", "rollback_to=1.0.0", "--private-data-dir",
                      str(pdd), "--prepare-only", inventory=ROOT / "inventories/lab/hosts.yml")
    assert result.returncode == 0, result.stderr
    assert _load(pdd / "env/extravars") == {"rollback_to": "1.0.0", "deploy_serial": "1"}
    envvars = _load(pdd / "env/envvars")
    assert envvars["ANSIBLE_CONFIG"] == str(ROOT / "ansible.cfg")
    assert envvars["ANSIBLE_ROLES_PATH"].split(":")[0] == str(ROOT / "roles")
    assert envvars["ANSIBLE_COLLECTIONS_PATH"].split(":")[0] == str(ROOT / "collections")
    assert envvars["ANSIBLE_HOST_KEY_CHECKING"] == "true"  # ansible.cfg's, not ansible-runner's False
    assert (pdd / "env/extravars").stat().st_mode & 0o077 == 0


def test_a_template_launch_without_required_answers_runs_nothing(tmp_path):
    result = _awx_run(tmp_path, "--template", "keel deploy", inventory=ROOT / "inventories/lab/hosts.yml")
    assert result.returncode == awx_run.EXIT_USAGE
    assert "app_release_version: required" in result.stderr


# --- (e) scripts/awx_run.py drives ansible-runner -------------------------------


def _inventory(tmp_path: Path, groups: list[str]) -> Path:
    """Inventory whose groups all hold the controller itself (local connection)."""
    host = {"ansible_connection": "local", "keel_private_ip": "127.0.0.1"}
    children = {group: {"hosts": {"localhost": host}} for group in groups}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"children": children}}), encoding="utf-8")
    return path


def _awx_run(tmp_path: Path, *args: str, inventory: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "scripts/awx_run.py"), "-i", str(inventory), *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)


REQUIRED = '{"keel_required_groups": ["app", "loadbalancers", "monitoring"]}'


def test_awx_run_validate_is_ok_and_changes_nothing(tmp_path):
    inventory = _inventory(tmp_path, ["app", "loadbalancers", "monitoring"])
    report_file, pdd = tmp_path / "report.json", tmp_path / "pdd"
    result = _awx_run(tmp_path, "playbooks/validate.yml", "-e", REQUIRED, "--expect-changed", "0",
                      "--report", str(report_file), "--private-data-dir", str(pdd), inventory=inventory)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["status"] == "successful" and report["rc"] == 0
    assert report["hosts"]["localhost"]["ok"] > 0
    assert report["hosts"]["localhost"]["changed"] == 0 and report["totals"]["failed"] == 0
    assert report["expectation_met"] is True and report["wall_seconds"] > 0
    # ansible-runner ran ansible-playbook from the project, with the playbook relative to it
    (command_file,) = pdd.glob("artifacts/*/command")
    command = json.loads(command_file.read_text(encoding="utf-8"))
    assert command["cwd"] == str(ROOT)
    assert command["command"][-1] == "playbooks/validate.yml"
    assert f"@{pdd}/env/extravars" in command["command"]
    # the project's ansible.cfg was in force: its callbacks_enabled (profile_tasks) printed the recap
    assert "TASKS RECAP" in ANSI.sub("", result.stdout)


def test_awx_run_expect_changed_fails_when_the_count_differs(tmp_path):
    inventory = _inventory(tmp_path, ["app", "loadbalancers", "monitoring"])
    result = _awx_run(tmp_path, "playbooks/validate.yml", "-e", REQUIRED, "--expect-changed", "1", "-q",
                      inventory=inventory)
    assert result.returncode == 1
    assert "expected 1 changed result(s), got 0" in result.stderr


def test_awx_run_reports_the_validate_failure_of_a_missing_group(tmp_path):
    inventory = _inventory(tmp_path, ["app", "loadbalancers"])
    report_file = tmp_path / "report.json"
    result = _awx_run(tmp_path, "playbooks/validate.yml", "-e", REQUIRED, "--report", str(report_file),
                      inventory=inventory)
    assert result.returncode != 0
    message = "inventory group 'monitoring' is missing or empty"
    assert message in ANSI.sub("", result.stdout)
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["status"] == "failed" and report["rc"] == result.returncode
    assert report["hosts"]["localhost"]["failed"] == 1
    assert any(message in failure["msg"] for failure in report["failures"])
