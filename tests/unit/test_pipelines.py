"""The forges' pipeline files (issue 27): .github/workflows/ci.yml and .gitlab-ci.yml.

Both pass their published schemas (check-jsonschema's bundled copies: the lint part runs the
same check), a broken copy does not, every job runs scripts/test.sh with arguments the runner
accepts, and the molecule matrices list exactly the default suite's container scenarios, so
a new scenario cannot be left out of the forges' runs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import run_tests  # noqa: E402

BIN = ROOT / ".venv" / "bin"
GITHUB = ROOT / ".github" / "workflows" / "ci.yml"
GITLAB = ROOT / ".gitlab-ci.yml"
SCHEMAS = {GITHUB: "vendor.github-workflows", GITLAB: "vendor.gitlab-ci"}


def validate(path: Path, schema: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("path", list(SCHEMAS), ids=lambda p: p.name)
def test_the_pipeline_file_passes_its_schema(path):
    res = validate(path, SCHEMAS[path])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(("path", "broken"), [
    (GITHUB, ("runs-on:", "run-on:")),
    (GITLAB, ("  stage: lint", "  stages: lint")),
], ids=["github", "gitlab"])
def test_a_broken_pipeline_file_fails_its_schema(tmp_path, path, broken):
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace(*broken, 1))
    assert validate(copy, SCHEMAS[path]).returncode != 0


def commands() -> list[str]:
    """Every scripts/test.sh command line of both files, matrix variables filled in."""
    found = []
    github = yaml.safe_load(GITHUB.read_text())
    for job in github["jobs"].values():
        matrix = job.get("strategy", {}).get("matrix", {})
        for step in job["steps"]:
            if "run" in step:
                found += [step["run"].replace("${{ matrix." + key + " }}", value)
                          for key, values in (matrix.items() or [("", [""])]) for value in values]
    gitlab = yaml.safe_load(GITLAB.read_text())
    for job in gitlab.values():
        if not isinstance(job, dict) or "script" not in job:
            continue
        for line in job["script"]:
            matrix = (job.get("parallel") or {}).get("matrix") or [{"": [""]}]
            for key, values in matrix[0].items():
                found += [line.replace(f'"${key}"', value) for value in values]
    return sorted(set(found))


def test_every_job_runs_scripts_test_sh_with_arguments_it_accepts():
    lines = commands()
    assert len(lines) >= 10, lines
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "scripts/test.sh", line
        assert "$" not in line and "${{" not in line, line  # every matrix value substituted
        res = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_tests.py"), *argv[1:], "--list"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, (line, res.stderr[-1000:])


def test_the_molecule_matrices_are_the_default_suites_container_scenarios():
    default = [s for s in run_tests.scenarios()
               if not s.startswith("integration") and not s.endswith(("_vm", "_online"))]
    github = yaml.safe_load(GITHUB.read_text())["jobs"]["molecule"]["strategy"]["matrix"]["scenario"]
    gitlab = yaml.safe_load(GITLAB.read_text())["molecule"]["parallel"]["matrix"][0]["SCENARIO"]
    assert github == gitlab == default
    integration = [s for s in run_tests.scenarios() if s.startswith("integration")]
    assert all(any(re.search(rf"--scenario {s}\b", c) for c in commands()) for s in integration)
