"""scripts/mirror.py: an air-gap mirror from the artifact manifest, checked file by file."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mirror", ROOT / "scripts" / "mirror.py")
mirror = importlib.util.module_from_spec(spec)
sys.modules["mirror"] = mirror
spec.loader.exec_module(mirror)

PATH = "acme/tool/releases/download/v{version}/tool-{version}.linux-{arch}.tar.gz"


@pytest.fixture
def upstream(tmp_path) -> tuple[Path, Path]:
    """A fake upstream with two versions x two architectures, and a manifest of it."""
    source = tmp_path / "upstream"
    sha = {}
    for version in ("1.0.0", "1.1.0"):
        for arch in ("amd64", "arm64"):
            path = source / PATH.replace("{version}", version).replace("{arch}", arch)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{version}-{arch}".encode())
            sha.setdefault(version, {})[arch] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = tmp_path / "manifest.yml"
    manifest.write_text(yaml.safe_dump({"artifact_mirror": source.as_uri(),
                                        "artifact_manifest": {"tool": {"path": PATH, "sha256": sha}}}))
    return source, manifest


def test_the_project_manifest_is_complete():
    _, artifacts = mirror.load(mirror.DEFAULT_MANIFEST)
    files = mirror.entries(artifacts, [], [])
    assert {"prometheus", "alertmanager", "node_exporter", "blackbox_exporter", "jaeger"} <= artifacts.keys()
    for name, version, arch, path in files:
        assert len(str(artifacts[name]["sha256"][version][arch])) == 64
        assert path.endswith(".tar.gz") and version in path and arch in path
        assert "{" not in path


def test_mirror_downloads_checks_and_resumes(upstream, tmp_path, capsys):
    _, manifest = upstream
    out = tmp_path / "mirror"
    assert mirror.main(["--out", str(out), "--manifest", str(manifest), "--arch", "amd64"]) == 0
    mirrored = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tar.gz"))
    assert mirrored == [PATH.replace("{version}", v).replace("{arch}", "amd64") for v in ("1.0.0", "1.1.0")]
    assert capsys.readouterr().out.count("downloaded") == 2
    assert mirror.main(["--out", str(out), "--manifest", str(manifest), "--arch", "amd64"]) == 0
    assert capsys.readouterr().out.count(": kept") == 2


def test_a_file_that_does_not_match_the_manifest_is_not_kept(upstream, tmp_path, capsys):
    source, manifest = upstream
    tampered = source / PATH.replace("{version}", "1.1.0").replace("{arch}", "arm64")
    tampered.write_bytes(b"something else")
    out = tmp_path / "mirror"
    assert mirror.main(["--out", str(out), "--manifest", str(manifest), "--arch", "arm64"]) == 1
    printed = capsys.readouterr().out
    assert "tool 1.1.0 arm64: sha256 mismatch" in printed and "1 file(s) FAILED" in printed
    assert not (out / tampered.relative_to(source)).exists()
    assert not list(out.rglob(".tool-*"))  # no temporary file left behind


def test_unknown_name_is_refused(upstream, tmp_path):
    _, manifest = upstream
    with pytest.raises(SystemExit, match="not in the manifest: nope"):
        mirror.main(["--out", str(tmp_path / "m"), "--manifest", str(manifest), "--name", "nope"])
