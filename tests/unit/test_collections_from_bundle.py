from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import collections_from_bundle as cfb
import pytest

ROOT = Path(__file__).resolve().parents[2]


def fake_wheel(path: Path, versions: dict[str, str]) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for fqcn, version in versions.items():
            ns, name = fqcn.split(".")
            z.writestr(f"ansible_collections/{ns}/{name}/MANIFEST.json",
                       json.dumps({"collection_info": {"version": version}}))
            z.writestr(f"ansible_collections/{ns}/{name}/plugins/modules/x.py", "# module\n")
        z.writestr("ansible_collections/other/thing/MANIFEST.json", "{}")
    path.write_bytes(buf.getvalue())
    return path


def test_project_requirements_are_pinned_with_a_bundle():
    spec, sha, pins = cfb.read_requirements(ROOT / "requirements.yml")
    assert spec.startswith("ansible==")
    assert len(sha) == 64
    assert pins and all(v.count(".") == 2 for v in pins.values())


def test_extracts_only_the_pinned_collections(tmp_path):
    wheel = fake_wheel(tmp_path / "a.whl", {"community.general": "1.2.3", "ansible.posix": "2.0.0"})
    dest = tmp_path / "collections"
    cfb.extract(wheel, {"community.general": "1.2.3"}, dest)
    assert (dest / "ansible_collections/community/general/plugins/modules/x.py").exists()
    assert not (dest / "ansible_collections/ansible/posix").exists()
    assert not (dest / "ansible_collections/other").exists()


def test_version_mismatch_fails_and_keeps_the_old_tree(tmp_path):
    wheel = fake_wheel(tmp_path / "a.whl", {"community.general": "1.2.4"})
    dest = tmp_path / "collections"
    (dest / "ansible_collections").mkdir(parents=True)
    (dest / "keep-me").write_text("x")
    with pytest.raises(SystemExit, match=r"pins 1\.2\.3 but a\.whl carries 1\.2\.4"):
        cfb.extract(wheel, {"community.general": "1.2.3"}, dest)
    assert (dest / "keep-me").exists()


def test_missing_collection_fails(tmp_path):
    wheel = fake_wheel(tmp_path / "a.whl", {"community.general": "1.2.3"})
    with pytest.raises(SystemExit, match=r"community\.docker is not in"):
        cfb.extract(wheel, {"community.docker": "1.0.0"}, tmp_path / "c")


def test_cached_wheel_with_wrong_checksum_is_not_used(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ansible-1.0.0-py3-none-any.whl").write_bytes(b"tampered")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "ansible-1.0.0-py3-none-any.whl").write_bytes(b"genuine")

    monkeypatch.setattr(cfb.subprocess, "run", fake_run)
    good = hashlib.sha256(b"genuine").hexdigest()
    path = cfb.fetch_wheel("ansible==1.0.0", good, cache)
    assert path.read_bytes() == b"genuine" and calls
    with pytest.raises(SystemExit, match="does not match the pinned"):
        cfb.fetch_wheel("ansible==1.0.0", "0" * 64, cache)
