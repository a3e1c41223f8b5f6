"""Security review M9: the app's dependencies are hash-locked from index to host.

app/requirements.in holds the pins; app/requirements.txt (scripts/lock-app-requirements.sh)
the same pins with sha256 hashes. scripts/build-app-release.sh fetches them with
--require-hashes and records every wheel of the release in requirements.lock; the app
role's install task (run here exactly as the role writes it) installs with
--require-hashes, so a wheel changed after the build is refused on the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    return {normal(m[1]): m[2] for m in map(PIN.match, path.read_text().splitlines()) if m}


def test_every_locked_pin_has_hashes_and_the_lock_matches_the_pins():
    lock = (ROOT / "app/requirements.txt").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 2)[2].strip())
    assert entries, lock[:500]
    for entry in entries:
        assert PIN.match(entry) and "--hash=sha256:" in entry, f"not pinned with a hash: {entry[:200]}"
    assert pins(ROOT / "app/requirements.txt") == pins(ROOT / "app/requirements.in"), (
        "app/requirements.txt does not lock app/requirements.in: run scripts/lock-app-requirements.sh")


def install_command(release_dir: Path) -> list[str]:
    tasks = yaml.safe_load((ROOT / "roles/app/tasks/install.yml").read_text())
    task = next(t for t in tasks if t.get("name") == "Install the release from its wheelhouse (no package index)")
    argv = task["ansible.builtin.command"]["argv"]
    return [str(arg).replace("{{ __app_release_dir }}", str(release_dir)) for arg in argv]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    out = subprocess.run([str(ROOT / "scripts/build-app-release.sh"), "0.0.1-locktest"], capture_output=True,
                         text=True, timeout=600, check=False, env={**os.environ, "KEEL_CACHE": str(cache)})
    assert out.returncode == 0, out.stdout + out.stderr
    tarball = Path(out.stdout.strip().splitlines()[-1].split()[0])
    sbom = json.loads(tarball.with_name(tarball.name.replace(".tar.gz", ".cdx.json")).read_text())
    assert "pkg:pypi/keel-app@1.0.0" in {c["purl"] for c in sbom["components"]}  # its SBOM beside it
    dest = tmp_path_factory.mktemp("release")
    with tarfile.open(tarball) as tar:
        tar.extractall(dest, filter="data")
    return dest / "keel-app-0.0.1-locktest"


def test_the_release_records_every_wheel_it_holds_with_its_sha256(release):
    lock = [line for line in (release / "requirements.lock").read_text().splitlines() if not line.startswith("#")]
    wheels = sorted((release / "wheels").glob("*.whl"))
    assert len(lock) == len(wheels) == len(pins(ROOT / "app/requirements.in")) + 1  # + keel-app itself
    for line, wheel in zip(lock, wheels, strict=True):
        name, version = wheel.name.split("-")[:2]
        assert line == f"{name}=={version} --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}"
    assert any(w.name.startswith("keel_app-") for w in wheels)


def venv(path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)


def test_the_roles_install_takes_the_locked_wheels_and_refuses_a_changed_one(release, tmp_path):
    venv(release / "venv")
    res = subprocess.run(install_command(release), capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (release / "venv/bin/keel-app").exists()

    # the same release with one wheel changed after the build: pip stops, nothing installs
    changed = tmp_path / release.name
    shutil.copytree(release, changed, ignore=shutil.ignore_patterns("venv"))
    wheel = next((changed / "wheels").glob("idna-*.whl"))
    with zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("idna/planted.py", "print('not what was locked')\n")
    venv(changed / "venv")
    res = subprocess.run(install_command(changed), capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in res.stdout + res.stderr, res.stdout + res.stderr
    assert not (changed / "venv/bin/keel-app").exists()
