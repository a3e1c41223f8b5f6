#!/usr/bin/env python3
"""Check that every role's meta/argument_specs.yml agrees with its defaults/main.yml.

For each role: every default has an option in the 'main' entry point and every
option of that entry point has a default (required options excepted), and each
default's value has the declared type. Exit 1 with one line per disagreement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

TYPES = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
    "path": (str,),
    "raw": (object,),
}


def check_role(role: Path) -> list[str]:
    problems = []
    defaults_file = role / "defaults" / "main.yml"
    spec_file = role / "meta" / "argument_specs.yml"
    if not spec_file.exists():
        return [f"{role.name}: meta/argument_specs.yml is missing"]
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
    defaults = defaults or {}
    spec = yaml.safe_load(spec_file.read_text()) or {}
    options = (spec.get("argument_specs", {}).get("main", {}) or {}).get("options", {}) or {}
    for name in sorted(set(defaults) - set(options)):
        problems.append(f"{role.name}: default {name} has no option in meta/argument_specs.yml")
    for name, option in sorted(options.items()):
        if name not in defaults and not option.get("required"):
            problems.append(f"{role.name}: option {name} is neither required nor given a default")
        if not option.get("description"):
            problems.append(f"{role.name}: option {name} has no description")
        if name in defaults:
            value = defaults[name]
            declared = option.get("type", "str")
            is_template = isinstance(value, str) and "{{" in value
            if declared in ("int", "float") and isinstance(value, bool):
                problems.append(f"{role.name}: default {name} is a bool but the spec says {declared}")
            elif not is_template and not isinstance(value, TYPES.get(declared, (object,))):
                problems.append(f"{role.name}: default {name}={value!r} is not of the declared type {declared}")
            choices = option.get("choices")
            if choices and not is_template and value not in choices and str(value) not in map(str, choices):
                problems.append(f"{role.name}: default {name}={value!r} is not one of {choices}")
    return problems


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or sorted(p for p in (Path(__file__).resolve().parent.parent / "roles").iterdir()
                                               if p.is_dir())
    problems = [line for role in roots for line in check_role(role)]
    for line in problems:
        print(line)
    print(f"checked {len(roots)} role(s): {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
