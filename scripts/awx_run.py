#!/usr/bin/env python3
"""Run a keel playbook the way an AWX job runs it: through ansible-runner.

Like AWX, it builds a private data directory (env/extravars, env/envvars,
env/cmdline), runs ansible-playbook from the project directory (the repository)
with the playbook named relative to it, and reads the result from the runner's
events: status, rc, wall time and per-host stats. With --template it takes the
playbook, job type, limit, forks and survey of a job template of
awx/job_templates.yml, and checks the answers as AWX checks a launch.

  scripts/awx_run.py -i inventories/lab/hosts.yml playbooks/site.yml
  scripts/awx_run.py -i inventories/lab/hosts.yml --template "keel rollback" \\
      -e rollback_to=1.0.0 --report reports/awx-rollback.json
  scripts/awx_run.py -i INV playbooks/site.yml --expect-changed 0   # prove a no-op rerun

Exit code: the runner's rc (ansible-playbook's); 1 when it passed but
--expect-changed did not hold; 64 for bad arguments or survey answers (nothing ran).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXIT_USAGE = 64  # sysexits EX_USAGE: apart from ansible-playbook's own codes
TEMPLATES_FILE = ROOT / "awx" / "job_templates.yml"
# AWX appends these to the project's roles_path / collections_path (ANSIBLE_*_PATH).
AWX_DEFAULT_ROLES_PATH = ["~/.ansible/roles", "/usr/share/ansible/roles", "/etc/ansible/roles"]
AWX_DEFAULT_COLLECTIONS_PATH = ["~/.ansible/collections", "/usr/share/ansible/collections"]
# Runner stats category -> the name AWX and ansible's recap use.
STAT_NAMES = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failed",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}


class UsageError(Exception):
    """Bad arguments or survey answers: nothing was run."""


def parse_extra_vars(items: list[str]) -> dict[str, Any]:
    """Merge -e values in order: @FILE (YAML or JSON), an inline mapping, or key=value words."""
    merged: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            path = Path(item[1:])
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise UsageError(f"cannot read extra vars file {path}: {exc.strerror}") from exc
            if not isinstance(data, dict):
                raise UsageError(f"extra vars file {path} must hold a mapping")
        elif item.lstrip().startswith("{"):
            data = yaml.safe_load(item)
            if not isinstance(data, dict):
                raise UsageError(f"extra vars {item!r} must be a mapping")
        else:
            data = {}
            for word in shlex.split(item):
                key, sep, value = word.partition("=")
                if not sep or not key:
                    raise UsageError(f"extra vars {word!r}: expected key=value, @FILE or a JSON/YAML mapping")
                data[key] = value
        merged.update(data)
    return merged


def load_template(name: str, path: Path = TEMPLATES_FILE) -> dict[str, Any]:
    """The job template called name in awx/job_templates.yml."""
    templates = yaml.safe_load(path.read_text(encoding="utf-8"))["job_templates"]
    for template in templates:
        if template["name"] == name:
            return template
    known = ", ".join(t["name"] for t in templates)
    raise UsageError(f"no job template {name!r} in {path} (known: {known})")


def _check_answer(question: dict[str, Any], value: Any) -> str | None:
    """AWX's launch-time check of one survey answer; an error message or None."""
    kind, var = question["type"], question["variable"]
    if kind in ("text", "textarea", "password"):
        if not isinstance(value, str):
            return f"{var}: expected text, got {value!r}"
        low, high = question.get("min"), question.get("max")
        if low is not None and len(value) < int(low):
            return f"{var}: at least {low} characters"
        if high is not None and len(value) > int(high):
            return f"{var}: at most {high} characters"
    elif kind in ("integer", "float"):
        cast = int if kind == "integer" else float
        try:
            number = cast(value)
        except (TypeError, ValueError):
            return f"{var}: expected {kind}, got {value!r}"
        if "min" in question and number < question["min"]:
            return f"{var}: at least {question['min']}"
        if "max" in question and number > question["max"]:
            return f"{var}: at most {question['max']}"
    elif kind == "multiplechoice":
        if value not in question["choices"]:
            return f"{var}: one of {question['choices']}, got {value!r}"
    elif kind == "multiselect":
        values = value if isinstance(value, list) else [value]
        wrong = [v for v in values if v not in question["choices"]]
        if wrong:
            return f"{var}: {wrong} not among {question['choices']}"
    return None


def apply_survey(template: dict[str, Any], extravars: dict[str, Any]) -> dict[str, Any]:
    """Extra vars of a launch of template: answers checked, defaults filled in, as AWX does."""
    spec = template.get("survey_spec", {}).get("spec", []) if template.get("survey_enabled") else []
    asked = {question["variable"] for question in spec}
    if not template.get("ask_variables_on_launch"):
        refused = sorted(set(extravars) - asked)
        if refused:
            raise UsageError(f"template {template['name']!r} takes no extra variables but its survey's: {refused}")
    result = dict(extravars)
    errors = []
    for question in spec:
        var = question["variable"]
        if var not in result:
            if question.get("required"):
                errors.append(f"{var}: required ({question['question_name']})")
                continue
            default = question.get("default", "")
            if default == "":
                continue  # AWX passes nothing for an empty optional answer
            result[var] = default
        if question["type"] in ("integer", "float") and isinstance(result[var], str):
            # key=value answers arrive as text (AWX's form sends numbers); a bad one is reported below
            with contextlib.suppress(ValueError):
                result[var] = int(result[var]) if question["type"] == "integer" else float(result[var])
        error = _check_answer(question, result[var])
        if error:
            errors.append(error)
    if errors:
        raise UsageError(f"survey of {template['name']!r}: " + "; ".join(errors))
    return result


def read_ansible_cfg(project: Path) -> configparser.ConfigParser:
    """The project's ansible.cfg, as ansible reads it (no interpolation)."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(project / "ansible.cfg", encoding="utf-8")
    return config


def _paths(value: str, project: Path, defaults: list[str]) -> str:
    """ansible.cfg path list resolved against the project, then AWX's defaults."""
    paths = [str((project / p).resolve()) if not p.startswith(("/", "~")) else p for p in value.split(":") if p]
    return ":".join(paths + [p for p in defaults if p not in paths])


def build_envvars(project: Path) -> dict[str, str]:
    """Environment of the job: what AWX derives from the project's ansible.cfg, plus its file."""
    config = read_ansible_cfg(project)
    defaults = config["defaults"] if config.has_section("defaults") else {}
    env = {
        # ansible-runner runs from project_dir, where ansible would find ansible.cfg
        # anyway unless the directory is world-writable: name it explicitly.
        "ANSIBLE_CONFIG": str(project / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": _paths(defaults.get("roles_path", ""), project, AWX_DEFAULT_ROLES_PATH),
        "ANSIBLE_COLLECTIONS_PATH": _paths(
            defaults.get("collections_path", ""), project, AWX_DEFAULT_COLLECTIONS_PATH
        ),
    }
    # ansible-runner turns host key checking off unless told; keep the project's choice.
    if "host_key_checking" in defaults:
        env["ANSIBLE_HOST_KEY_CHECKING"] = defaults["host_key_checking"]
    # The ansible-playbook beside this interpreter (the project's .venv), as the EE's is on PATH.
    bindir = Path(sys.executable).parent
    if (bindir / "ansible-playbook").exists():
        env["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


def build_cmdline(args: argparse.Namespace, template: dict[str, Any] | None) -> list[str]:
    """ansible-playbook options of the job (AWX writes them to env/cmdline)."""
    template = template or {}
    cmdline: list[str] = []
    if args.check or template.get("job_type") == "check":
        cmdline.append("--check")
    if args.become or template.get("become_enabled"):
        cmdline.append("--become")
    forks = args.forks if args.forks is not None else template.get("forks", 0)
    if forks:
        cmdline.append(f"--forks={int(forks)}")
    limit = args.limit if args.limit is not None else template.get("limit", "")
    if limit:
        cmdline.extend(["--limit", limit])
    if args.tags:
        cmdline.extend(["--tags", args.tags])
    if args.skip_tags:
        cmdline.extend(["--skip-tags", args.skip_tags])
    if args.vault_password_file:
        cmdline.extend(["--vault-password-file", str(Path(args.vault_password_file).resolve())])
    if args.verbose:
        cmdline.append("-" + "v" * args.verbose)
    return cmdline


def _refuse_unasked(args: argparse.Namespace, template: dict[str, Any]) -> None:
    """AWX ignores launch-time values a template does not ask for; say so instead."""
    asked = {
        "limit": template.get("ask_limit_on_launch"),
        "check": template.get("ask_job_type_on_launch"),
        "tags": template.get("ask_tags_on_launch"),
        "skip_tags": template.get("ask_skip_tags_on_launch"),
        "forks": template.get("ask_forks_on_launch"),
        "become": False,  # become_enabled is a template setting, never a launch prompt
    }
    given = [name for name, ok in asked.items() if getattr(args, name) not in (None, False, "") and not ok]
    if given:
        raise UsageError(f"template {template['name']!r} does not ask for {', '.join(given)} on launch")


def write_private_data_dir(pdd: Path, extravars: dict[str, Any], envvars: dict[str, str], cmdline: list[str]) -> None:
    """Lay out pdd/env/ as AWX does (files readable by the job's user only)."""
    env_dir = pdd / "env"
    env_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files = {
        "extravars": yaml.safe_dump(extravars, default_flow_style=False),
        "envvars": yaml.safe_dump(envvars, default_flow_style=False),
        "cmdline": shlex.join(cmdline),
    }
    for name, content in files.items():
        path = env_dir / name
        path.touch(mode=0o600)
        path.write_text(content, encoding="utf-8")


def host_stats(stats: dict[str, dict[str, int]] | None) -> dict[str, dict[str, int]]:
    """Per-host recap (ok/changed/failed/unreachable/...) from the runner's stats."""
    if not stats:
        return {}
    hosts = sorted({host for category in STAT_NAMES for host in stats.get(category, {})})
    return {
        host: {name: int(stats.get(category, {}).get(host, 0)) for category, name in STAT_NAMES.items()}
        for host in hosts
    }


def failure_messages(events: list[dict[str, Any]]) -> list[dict[str, str]]:
    """host, task and message of every failed or unreachable result (loop items included)."""
    found = []
    for event in events:
        if event.get("event") not in ("runner_on_failed", "runner_on_unreachable"):
            continue
        data = event.get("event_data", {})
        if data.get("ignore_errors"):
            continue
        res = data.get("res", {})
        messages = [item.get("msg", "") for item in res.get("results", []) if item.get("failed")]
        for msg in messages or [res.get("msg", "")]:
            found.append({"host": data.get("host", ""), "task": data.get("task", ""), "msg": str(msg)})
    return found


def print_summary(report: dict[str, Any]) -> None:
    """Human summary after the runner's own output."""
    print(f"\nstatus: {report['status']}  rc: {report['rc']}  wall time: {report['wall_seconds']:.1f} s")
    hosts = report["hosts"]
    if hosts:
        names = list(STAT_NAMES.values())
        width = max(len(h) for h in hosts) + 2
        print("host".ljust(width) + "".join(n.rjust(12) for n in names))
        for host, counts in hosts.items():
            print(host.ljust(width) + "".join(str(counts[n]).rjust(12) for n in names))
    for failure in report["failures"]:
        print(f"FAILED {failure['host']} | {failure['task']}: {failure['msg']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("playbook", nargs="?", help="playbook path relative to the project (e.g. playbooks/site.yml)")
    parser.add_argument("-i", "--inventory", required=True, help="inventory path (file or directory)")
    parser.add_argument("-t", "--template", help="name of a job template of awx/job_templates.yml")
    parser.add_argument("-e", "--extra-vars", action="append", default=[], help="@FILE, JSON/YAML mapping or key=value")
    parser.add_argument("-l", "--limit")
    parser.add_argument("--forks", type=int)
    parser.add_argument("-C", "--check", action="store_true", help="job type check (dry run)")
    parser.add_argument("--become", action="store_true", help="become_enabled")
    parser.add_argument("--tags")
    parser.add_argument("--skip-tags")
    parser.add_argument("--vault-password-file")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--project-dir", type=Path, default=ROOT, help="project directory (default: this repository)")
    parser.add_argument("--private-data-dir", type=Path, help="where to build it (kept; default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary private data dir (artifacts)")
    parser.add_argument("--prepare-only", action="store_true", help="build the private data dir, print it, run nothing")
    parser.add_argument("--expect-changed", type=int, metavar="N", help="exit 1 unless exactly N results changed")
    parser.add_argument("--report", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo ansible's output")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> tuple[str, Path, Path, dict[str, Any] | None]:
    """Check the arguments, build the private data dir; returns (playbook, inventory, pdd, template)."""
    project = args.project_dir.resolve()
    template = load_template(args.template) if args.template else None
    playbook = args.playbook
    if template:
        if playbook and playbook != template["playbook"]:
            raise UsageError(f"template {template['name']!r} runs {template['playbook']}, not {playbook}")
        playbook = template["playbook"]
        _refuse_unasked(args, template)
    if not playbook:
        raise UsageError("name a playbook or a --template")
    if Path(playbook).is_absolute() or ".." in Path(playbook).parts or not (project / playbook).is_file():
        raise UsageError(f"{playbook} is not a playbook inside the project {project}")
    inventory = Path(args.inventory).resolve()
    if not inventory.exists():
        raise UsageError(f"inventory {args.inventory} does not exist")

    extravars = parse_extra_vars(args.extra_vars)
    if template:
        extravars = apply_survey(template, extravars)

    if args.private_data_dir:
        pdd = args.private_data_dir.resolve()
        if pdd.exists() and any(pdd.iterdir()):
            raise UsageError(f"private data dir {pdd} is not empty")
    else:
        pdd = Path(tempfile.mkdtemp(prefix="keel-awx-run-"))
    write_private_data_dir(pdd, extravars, build_envvars(project), build_cmdline(args, template))
    return playbook, inventory, pdd, template


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        playbook, inventory, pdd, template = prepare(args)
    except UsageError as exc:
        print(f"awx_run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.prepare_only:
        print(pdd)
        return 0

    import ansible_runner  # only needed to run; --prepare-only works without it

    start = time.monotonic()
    # Extra vars, env vars and options come from pdd/env/ (written above, as AWX
    # writes them): passing them again as run(extravars=...) would add a second -e.
    runner = ansible_runner.run(
        private_data_dir=str(pdd),
        project_dir=str(args.project_dir.resolve()),
        playbook=playbook,
        inventory=str(inventory),
        quiet=args.quiet,
    )
    wall = time.monotonic() - start
    rc = runner.rc if isinstance(runner.rc, int) else 1
    hosts = host_stats(runner.stats)
    changed = sum(counts["changed"] for counts in hosts.values())
    report: dict[str, Any] = {
        "playbook": playbook,
        "template": template["name"] if template else None,
        "inventory": str(inventory),
        "status": runner.status,
        "rc": rc,
        "wall_seconds": round(wall, 3),
        "hosts": hosts,
        "totals": {name: sum(c[name] for c in hosts.values()) for name in STAT_NAMES.values()},
        "failures": failure_messages(list(runner.events)),
        "expect_changed": args.expect_changed,
        "expectation_met": None if args.expect_changed is None else changed == args.expect_changed,
        "private_data_dir": str(pdd),
    }
    print_summary(report)

    exit_code = rc
    if rc == 0 and report["expectation_met"] is False:
        print(f"expected {args.expect_changed} changed result(s), got {changed}", file=sys.stderr)
        exit_code = 1
    if not (args.keep or args.private_data_dir):
        shutil.rmtree(pdd, ignore_errors=True)
        report["private_data_dir"] = None
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
