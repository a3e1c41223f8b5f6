"""Lookup keel_collections: the collections keel's requirements.yml pins, beside the
version this controller would actually load.

    query('keel_collections')  ->  [{'name': 'community.general', 'required': '11.4.2',
                                      'found': '11.4.2', 'path': '/.../community/general'}, ...]

`found` is None when Ansible cannot import the collection. The version comes from the
MANIFEST.json of the copy Ansible's own collection loader resolves (the same search
order as the tasks that follow: collections_path, the playbook's collections/ folder,
the execution environment's), so a second, older copy elsewhere cannot mislead it.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import yaml
from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: keel_collections
short_description: pinned collections of keel's requirements.yml and the versions this controller loads
description:
  - Reads requirements.yml (keel's, or the path given) and, for each collection, imports it
    through Ansible's collection loader and reads the version from its MANIFEST.json.
options:
  _terms:
    description: Path of a requirements.yml (default the project's own).
    required: false
"""

PROJECT = Path(__file__).resolve().parents[2]


def requirements(path: Path) -> list[dict]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AnsibleLookupError(f"cannot read the collection requirements {path}: {exc}") from exc
    return [{"name": c["name"], "required": str(c["version"])} for c in data.get("collections", [])]


def installed(name: str) -> tuple[str | None, str | None]:
    """(version, path) of the collection the loader resolves, or (None, None)."""
    try:
        module = importlib.import_module(f"ansible_collections.{name}")
    except ImportError:
        return None, None
    for folder in getattr(module, "__path__", []):
        manifest = Path(folder) / "MANIFEST.json"
        if manifest.is_file():
            info = json.loads(manifest.read_text()).get("collection_info", {})
            return str(info.get("version")), folder
        galaxy = Path(folder) / "galaxy.yml"  # a source checkout
        if galaxy.is_file():
            return str((yaml.safe_load(galaxy.read_text()) or {}).get("version")), folder
    return None, None


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        path = Path(terms[0]) if terms else PROJECT / "requirements.yml"
        result = []
        for req in requirements(path):
            found, folder = installed(req["name"])
            result.append({**req, "found": found, "path": folder})
        return result
