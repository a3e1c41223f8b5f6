from __future__ import annotations

from pathlib import Path

import check_argument_specs as cas
import yaml

ROOT = Path(__file__).resolve().parents[2]


def make_role(tmp_path: Path, defaults: dict, options: dict) -> Path:
    role = tmp_path / "demo"
    (role / "defaults").mkdir(parents=True)
    (role / "meta").mkdir()
    (role / "defaults" / "main.yml").write_text(yaml.safe_dump(defaults))
    spec = {"argument_specs": {"main": {"options": options}}}
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(spec))
    return role


def test_every_role_of_the_project_agrees():
    roles = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())
    assert roles
    for role in roles:
        assert cas.check_role(role) == [], role.name


def test_matching_role_passes(tmp_path):
    role = make_role(tmp_path, {"demo_port": 80}, {"demo_port": {"type": "int", "description": "Port."}})
    assert cas.check_role(role) == []


def test_default_without_option_is_reported(tmp_path):
    role = make_role(tmp_path, {"demo_port": 80, "demo_extra": 1},
                     {"demo_port": {"type": "int", "description": "Port."}})
    assert cas.check_role(role) == ["demo: default demo_extra has no option in meta/argument_specs.yml"]


def test_option_without_default_is_reported(tmp_path):
    role = make_role(tmp_path, {}, {"demo_port": {"type": "int", "description": "Port."}})
    assert cas.check_role(role) == ["demo: option demo_port is neither required nor given a default"]


def test_required_option_needs_no_default(tmp_path):
    role = make_role(tmp_path, {}, {"demo_port": {"type": "int", "required": True, "description": "Port."}})
    assert cas.check_role(role) == []


def test_type_mismatch_is_reported(tmp_path):
    role = make_role(tmp_path, {"demo_port": "80"}, {"demo_port": {"type": "int", "description": "Port."}})
    assert "not of the declared type int" in cas.check_role(role)[0]


def test_bool_is_not_an_int(tmp_path):
    role = make_role(tmp_path, {"demo_port": True}, {"demo_port": {"type": "int", "description": "Port."}})
    assert "is a bool" in cas.check_role(role)[0]


def test_choice_outside_choices_is_reported(tmp_path):
    role = make_role(tmp_path, {"demo_mode": "fast"},
                     {"demo_mode": {"type": "str", "choices": ["a", "b"], "description": "Mode."}})
    assert "is not one of" in cas.check_role(role)[0]


def test_missing_spec_is_reported(tmp_path):
    role = tmp_path / "bare"
    (role / "defaults").mkdir(parents=True)
    (role / "defaults" / "main.yml").write_text("bare_x: 1\n")
    assert cas.check_role(role) == ["bare: meta/argument_specs.yml is missing"]
