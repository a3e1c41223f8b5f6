"""scripts/sbom.py: a CycloneDX 1.5 SBOM of what keel deploys (security review M8's inventory
of components, issue 27's release SBOM), valid against the CycloneDX schema (tests/unit/data,
offline), complete (every wheel of the release's lock, every pinned binary for each
architecture with its sha256, the APT pins, the collections) and reproducible."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jsonschema
import pytest
import referencing
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tests/unit/data/cyclonedx-1.5"
LOCK = ("# every wheel of this release and its sha256\n"
        "anyio==4.16.0 --hash=sha256:" + "a" * 64 + "\n"
        "keel_app==1.0.0 --hash=sha256:" + "b" * 64 + "\n"
        "opentelemetry_sdk==1.45.2 --hash=sha256:" + "c" * 64 + "\n")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    tarball = tmp_path_factory.mktemp("release") / "keel-app-1.0.0.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        data = LOCK.encode()
        info = tarfile.TarInfo("keel-app-1.0.0/requirements.lock")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return tarball


def sbom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts/sbom.py"), *args], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "SOURCE_DATE_EPOCH": "1796601600"})


@pytest.fixture(scope="module")
def bom(release) -> dict:
    res = sbom("--release", str(release))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_it_is_valid_cyclonedx_1_5(bom):
    resources = [(f"http://cyclonedx.org/schema/{p.name}",
                  referencing.Resource.from_contents(json.loads(p.read_text()))) for p in SCHEMAS.glob("*.json")]
    registry = referencing.Registry().with_resources(resources)
    schema = json.loads((SCHEMAS / "bom-1.5.SNAPSHOT.schema.json").read_text())
    jsonschema.Draft7Validator(schema, registry=registry).validate(bom)
    broken = {**bom, "components": [{**bom["components"][0], "type": "not-a-type"}]}
    with pytest.raises(jsonschema.ValidationError):  # the schema does judge
        jsonschema.Draft7Validator(schema, registry=registry).validate(broken)


def test_every_wheel_of_the_release_with_its_sha256(bom):
    wheels = {c["purl"]: c["hashes"][0]["content"] for c in bom["components"] if c["purl"].startswith("pkg:pypi/")}
    assert wheels == {"pkg:pypi/anyio@4.16.0": "a" * 64, "pkg:pypi/keel-app@1.0.0": "b" * 64,
                      "pkg:pypi/opentelemetry-sdk@1.45.2": "c" * 64}


def test_every_pinned_binary_for_each_architecture_and_the_apt_pins_and_collections(bom):
    manifest = yaml.safe_load((ROOT / "roles/artifact/defaults/main.yml").read_text())["artifact_manifest"]
    expected = set()
    for name in ("prometheus", "alertmanager", "node_exporter", "blackbox_exporter", "jaeger"):
        version = str(yaml.safe_load((ROOT / f"roles/{name}/defaults/main.yml").read_text())[f"{name}_version"])
        expected |= {(name, version, arch, digest) for arch, digest in manifest[name]["sha256"][version].items()}
    seen = {(c["name"], c["version"], c["properties"][0]["value"], c["hashes"][0]["content"])
            for c in bom["components"] if c["bom-ref"].startswith("artifact:")}
    assert seen == expected
    purls = {c["purl"] for c in bom["components"]}
    grafana = yaml.safe_load((ROOT / "roles/grafana/defaults/main.yml").read_text())["grafana_version"]
    assert f"pkg:deb/grafana/grafana@{grafana}" in purls
    for collection in yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]:
        assert f"pkg:generic/ansible-collection/{collection['name']}@{collection['version']}" in purls
    refs = [c["bom-ref"] for c in bom["components"]]
    assert len(refs) == len(set(refs)) and bom["dependencies"][0]["dependsOn"] == refs


def test_reproducible_and_refuses_a_missing_release(release, tmp_path):
    first, second = sbom("--release", str(release)).stdout, sbom("--release", str(release)).stdout
    assert first == second and json.loads(first)["metadata"]["timestamp"] == "2026-12-07T00:00:00Z"
    res = sbom("--release", str(tmp_path / "nope.tar.gz"))
    assert res.returncode == 2 and "no such release tarball" in res.stderr
