"""Install the collections pinned in requirements.yml from the PyPI "ansible" bundle.

Ansible Galaxy is not reachable from every controller (this project's CI cannot
reach it). The "ansible" package on PyPI carries the same collections, so this
script downloads that one wheel (pinned and sha256-checked, cached per user),
extracts exactly the collections requirements.yml names, and fails when a
version in the bundle differs from the pin.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

BUNDLE_RE = re.compile(r"#\s*keel:\s*pypi_bundle=(?P<spec>\S+==\S+)\s+sha256=(?P<sha>[0-9a-f]{64})")


def read_requirements(path: Path) -> tuple[str, str, dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    match = BUNDLE_RE.search(text)
    if not match:
        raise SystemExit(f"{path}: missing '# keel: pypi_bundle=NAME==VERSION sha256=HEX' line")
    data = yaml.safe_load(text) or {}
    pins = {}
    for item in data.get("collections", []):
        if "version" not in item:
            raise SystemExit(f"{path}: collection {item.get('name')} has no pinned version")
        pins[item["name"]] = str(item["version"])
    return match["spec"], match["sha"], pins


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(spec: str, expected_sha: str, cache: Path) -> Path:
    name, version = spec.split("==")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{name}-{version}-py3-none-any.whl"
    if target.exists() and sha256(target) == expected_sha:
        print(f"[keel] cached {target.name}", file=sys.stderr)
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        print(f"[keel] downloading {spec} from the Python package index", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
             "-d", tmp, spec],
            stderr=subprocess.DEVNULL,
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"expected one wheel for {spec}, got {wheels}")
        actual = sha256(wheels[0])
        if actual != expected_sha:
            raise SystemExit(f"{spec}: sha256 {actual} does not match the pinned {expected_sha}")
        os.replace(wheels[0], target)  # atomic: safe when several users share the cache
    return target


def extract(wheel: Path, pins: dict[str, str], dest: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            for fqcn, version in sorted(pins.items()):
                namespace, collection = fqcn.split(".")
                prefix = f"ansible_collections/{namespace}/{collection}/"
                members = [n for n in names if n.startswith(prefix)]
                if not members:
                    raise SystemExit(f"{fqcn} is not in {wheel.name}: install it from Galaxy instead")
                manifest = json.loads(archive.read(prefix + "MANIFEST.json"))
                found = manifest["collection_info"]["version"]
                if found != version:
                    raise SystemExit(
                        f"{fqcn}: requirements.yml pins {version} but {wheel.name} carries {found}; "
                        "change the pin or the bundle so they agree"
                    )
                archive.extractall(staging, members)
                print(f"[keel] {fqcn} {found}", file=sys.stderr)
        if dest.exists():
            shutil.rmtree(dest)
        (staging / "ansible_collections").mkdir(exist_ok=True)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requirements", type=Path, required=True)
    parser.add_argument("--dest", type=Path, required=True, help="collections path (holds ansible_collections/)")
    parser.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args()
    spec, expected_sha, pins = read_requirements(args.requirements)
    wheel = fetch_wheel(spec, expected_sha, args.cache)
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    extract(wheel, pins, args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
