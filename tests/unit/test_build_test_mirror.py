"""scripts/build_test_mirror.py: parsing, the trust chain's checks, the deterministic repack."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import build_test_mirror as btm
import pytest
import yaml

PACKAGES = """\
Package: prometheus-node-exporter
Source: prometheus-node-exporter (1.5.0-1)
Version: 1.5.0-1+b6
Architecture: amd64
Description: Prometheus exporter for machine metrics
 Prometheus exporter for machine metrics, written in Go
 .
 with pluggable metric collectors.
Filename: pool/main/p/prometheus-node-exporter/prometheus-node-exporter_1.5.0-1+b6_amd64.deb
Size: 4079352
SHA256: 8CB5B39627595EA2CF3CD27BE593E0E9AF87023D29E1C5B8487E2F9510097E09

Package: prometheus-node-exporter-collectors
Version: 0.0~git20230203.6f710f8-1
Architecture: all
Filename: pool/main/p/prometheus-node-exporter-collectors/x_all.deb
Size: 1
SHA256: 00

Package: promtool
Source: prometheus
Version: 2.53.3+ds1-2
Architecture: amd64
Filename: pool/main/p/prometheus/promtool_2.53.3+ds1-2_amd64.deb
Size: 15560452
SHA256: ff27654eacc95abd846d344e91fe4ba3b4f0588a50d606ed1d2f09ad3408722f
"""

INRELEASE = """\
Origin: Debian
Suite: oldstable
Codename: bookworm
Date: Sat, 11 Jul 2026 10:16:37 UTC
MD5Sum:
 b838d31986207780a596ce3e8010f90f  8790396 main/binary-amd64/Packages.xz
 0123456789abcdef0123456789abcdef   123456 main/binary-arm64/Packages.xz
SHA256:
 1111111111111111111111111111111111111111111111111111111111111111   123456 main/binary-arm64/Packages.xz
 9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5  8790396 main/binary-amd64/Packages.xz
 2222222222222222222222222222222222222222222222222222222222222222      999 main/binary-amd64/Packages.xz.bak
"""


def test_parse_paragraphs_joins_continuation_lines():
    paras = list(btm.parse_paragraphs(PACKAGES))
    assert [p["Package"] for p in paras] == ["prometheus-node-exporter", "prometheus-node-exporter-collectors",
                                             "promtool"]
    assert paras[0]["Description"] == ("Prometheus exporter for machine metrics\n"
                                       "Prometheus exporter for machine metrics, written in Go\n.\n"
                                       "with pluggable metric collectors.")
    assert paras[0]["Source"] == "prometheus-node-exporter (1.5.0-1)"


def test_find_debs_takes_wanted_packages_only():
    debs = btm.find_debs(PACKAGES, {"prometheus-node-exporter", "promtool", "prometheus"}, "amd64")
    assert sorted(debs) == ["prometheus-node-exporter", "promtool"]  # prometheus absent: left out
    node = debs["prometheus-node-exporter"]
    assert node == btm.Deb("prometheus-node-exporter", "1.5.0-1+b6",
                           "pool/main/p/prometheus-node-exporter/prometheus-node-exporter_1.5.0-1+b6_amd64.deb",
                           "8cb5b39627595ea2cf3cd27be593e0e9af87023d29e1c5b8487e2f9510097e09", 4079352)
    assert debs["promtool"].size == 15560452


def test_find_debs_refuses_a_package_listed_twice():
    with pytest.raises(btm.MirrorError, match="promtool twice"):
        btm.find_debs(PACKAGES + "\n" + PACKAGES.split("\n\n")[2], {"promtool"}, "amd64")


@pytest.mark.parametrize(("debian", "upstream"), [
    ("2.53.3+ds1-2", "2.53.3"),
    ("2.42.0+ds-5+deb12u1", "2.42.0"),
    ("0.25.0-1+b4", "0.25.0"),
    ("0.28.1+ds-1", "0.28.1"),
    ("1.9.0-1+b4", "1.9.0"),
    ("1:0.26.0-1", "0.26.0"),
    ("1.2.3+dfsg-1~bpo12+1", "1.2.3"),
])
def test_upstream_version(debian, upstream):
    assert btm.upstream_version(debian) == upstream


def test_upstream_version_refuses_what_is_not_a_release():
    with pytest.raises(btm.MirrorError, match=re.escape("0.0~git20230203")):
        btm.upstream_version("0.0~git20230203.6f710f8-1")


def test_release_checksum_reads_the_sha256_section_exact_path():
    assert btm.release_checksum(INRELEASE, "main/binary-amd64/Packages.xz") == (
        "9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5", 8790396)
    with pytest.raises(btm.MirrorError, match=re.escape("no SHA256 entry for main/binary-i386/Packages.xz")):
        btm.release_checksum(INRELEASE, "main/binary-i386/Packages.xz")


def test_release_checksum_ignores_md5_entries():
    md5_only = INRELEASE.split("SHA256:")[0]
    with pytest.raises(btm.MirrorError):
        btm.release_checksum(md5_only, "main/binary-amd64/Packages.xz")


def test_check_release_fields():
    btm.check_release_fields(INRELEASE, "bookworm")
    btm.check_release_fields(INRELEASE, "oldstable")
    with pytest.raises(btm.MirrorError, match="for trixie is for Codename 'bookworm'"):
        btm.check_release_fields(INRELEASE, "trixie")
    expiring = INRELEASE.replace("Date:", "Valid-Until: Sat, 18 Jul 2026 10:16:37 UTC\nDate:")
    btm.check_release_fields(expiring, "bookworm", now=datetime(2026, 7, 12, tzinfo=UTC))
    with pytest.raises(btm.MirrorError, match="expired"):
        btm.check_release_fields(expiring, "bookworm", now=datetime(2026, 7, 19, tzinfo=UTC))


def test_checksum_mismatch_names_the_file(tmp_path):
    deb = tmp_path / "prometheus_2.42.0+ds-5+deb12u1_amd64.deb"
    deb.write_bytes(b"not the real package")
    good = hashlib.sha256(b"not the real package").hexdigest()
    btm.check_sha256(deb, good.upper())
    with pytest.raises(btm.MirrorError, match=r"checksum mismatch for prometheus_2\.42\.0\+ds-5\+deb12u1_amd64\.deb"):
        btm.check_sha256(deb, "0" * 64)


def test_download_keeps_no_file_that_fails_its_checksum(tmp_path):
    source = tmp_path / "src.deb"
    source.write_bytes(b"payload")
    dest = tmp_path / "cache" / "x.deb"
    with pytest.raises(btm.MirrorError, match=re.escape("checksum mismatch for x.deb")):
        btm.download(source.as_uri(), dest, "0" * 64)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temp file left behind
    btm.download(source.as_uri(), dest, hashlib.sha256(b"payload").hexdigest(), 7)
    assert dest.read_bytes() == b"payload"
    assert dest.stat().st_mode & 0o777 == 0o644


def test_verify_inrelease_refuses_an_unsigned_file(tmp_path):
    if not btm.KEYRING.is_file():
        pytest.skip("no Debian archive keyring")
    with pytest.raises(btm.MirrorError, match="signature is NOT valid"):
        btm.verify_inrelease(INRELEASE.encode())


@pytest.mark.skipif(shutil.which("gpg") is None or shutil.which("gpgv") is None, reason="needs gpg and gpgv")
def test_verify_inrelease_returns_signed_text_and_refuses_tampering(tmp_path):
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    try:
        subprocess.run([*gpg, "--quick-gen-key", "test <t@example.org>", "ed25519", "sign", "never"],
                       check=True, capture_output=True)
        signed = subprocess.run([*gpg, "--clearsign"], input=INRELEASE.encode(), check=True,
                                capture_output=True).stdout
        keyring = tmp_path / "keyring.gpg"
        keyring.write_bytes(subprocess.run([*gpg, "--export"], check=True, capture_output=True).stdout)
    finally:  # gpg leaves an agent running per home
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, timeout=60)
    assert btm.verify_inrelease(signed, keyring) == INRELEASE
    tampered = signed.replace(b"9e0b5aab", b"9e0b5aac")
    with pytest.raises(btm.MirrorError, match="NOT valid"):
        btm.verify_inrelease(tampered, keyring)
    if btm.KEYRING.is_file():
        with pytest.raises(btm.MirrorError, match="NOT valid"):  # a good signature by a key Debian does not use
            btm.verify_inrelease(signed)


def _fake_tree(root: Path, with_configs: bool = True) -> Path:
    """What dpkg-deb -x of prometheus (bookworm layout) leaves behind, binaries as scripts."""
    for name in ("prometheus", "promtool"):
        binary = root / "usr/bin" / name
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text(f"#!/bin/sh\necho {name}, version 2.42.0+ds\n")
        binary.chmod(0o700)  # the archive's mode must not depend on the tree's
    doc = root / "usr/share/doc/prometheus"
    (doc / "examples/consoles").mkdir(parents=True)
    (doc / "examples/console_libraries").mkdir(parents=True)
    (doc / "copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n")
    (doc / "examples/consoles/node.html").write_text("<html>node</html>\n")
    (doc / "examples/consoles/index.html.example").write_text("<html>index</html>\n")
    (doc / "examples/console_libraries/prom.lib").write_bytes(gzip.compress(b"{{ define }}\n"))
    os.rename(doc / "examples/console_libraries/prom.lib", doc / "examples/console_libraries/prom.lib.gz")
    web = root / "usr/share/prometheus/web"  # Debian's classic UI: nested, with links into libjs-*
    (web / "templates").mkdir(parents=True)
    (web / "templates/_base.html").write_text("<html>{{ template }}</html>\n")
    (web / "static").mkdir()
    (web / "static/jquery").symlink_to("../../../javascript/jquery")
    if with_configs:
        (root / "etc/prometheus").mkdir(parents=True)
        (root / "etc/prometheus/prometheus.yml").write_text("# Sample config for Prometheus.\nglobal: {}\n")
    os.utime(root / "usr/bin/prometheus", (1_000_000_000, 1_000_000_000))
    return root


PROMETHEUS = next(c for c in btm.COMPONENTS if c.name == "prometheus")
DEBS = (btm.Deb("prometheus", "2.42.0+ds-5+deb12u1", "pool/p.deb", "ab" * 32, 1),)


def _repack(tree: Path) -> bytes:
    buffer = io.BytesIO()
    members = btm.plan_members(PROMETHEUS, "2.42.0", "amd64", tree, btm.notice_text(DEBS))
    btm.write_tar_gz(members, buffer)
    return buffer.getvalue()


def test_repack_is_byte_identical(tmp_path):
    first = _repack(_fake_tree(tmp_path / "a"))
    tree_b = _fake_tree(tmp_path / "b")
    os.utime(tree_b / "usr/bin/promtool", (1_700_000_000, 1_700_000_000))  # other mtimes, same content
    second = _repack(tree_b)
    assert first == second
    assert first[:2] == b"\x1f\x8b" and first[4:8] == b"\0\0\0\0"  # gzip, header mtime 0


def test_repack_layout_and_modes(tmp_path):
    data = _repack(_fake_tree(tmp_path / "t"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        top = "prometheus-2.42.0.linux-amd64"
        assert [m.name for m in members] == [
            top, f"{top}/LICENSE", f"{top}/NOTICE", f"{top}/console_libraries",
            f"{top}/console_libraries/prom.lib", f"{top}/consoles", f"{top}/consoles/index.html.example",
            f"{top}/consoles/node.html", f"{top}/debian-web", f"{top}/debian-web/static",
            f"{top}/debian-web/static/jquery", f"{top}/debian-web/templates", f"{top}/debian-web/templates/_base.html",
            f"{top}/prometheus", f"{top}/prometheus.yml", f"{top}/promtool"]
        modes = {m.name.removeprefix(top + "/"): (m.type, m.mode) for m in members}
        assert modes[top] == (tarfile.DIRTYPE, 0o755)
        assert modes["consoles"] == (tarfile.DIRTYPE, 0o755)
        assert modes["prometheus"] == (tarfile.REGTYPE, 0o755)
        assert modes["promtool"] == (tarfile.REGTYPE, 0o755)
        assert modes["LICENSE"] == (tarfile.REGTYPE, 0o644)
        assert modes["consoles/node.html"] == (tarfile.REGTYPE, 0o644)
        assert modes["debian-web/templates"] == (tarfile.DIRTYPE, 0o755)
        assert modes["debian-web/templates/_base.html"] == (tarfile.REGTYPE, 0o644)
        link = next(m for m in members if m.name.endswith("static/jquery"))
        assert link.issym() and link.linkname == "../../../javascript/jquery"  # kept a link, not followed
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "root", "root", 0)}
        read = {m.name.removeprefix(top + "/"): tar.extractfile(m).read() for m in members if m.isfile()}
    assert read["promtool"] == b"#!/bin/sh\necho promtool, version 2.42.0+ds\n"
    assert read["console_libraries/prom.lib"] == b"{{ define }}\n"  # Debian's .gz unpacked
    assert read["prometheus.yml"].startswith(b"# Sample config for Prometheus.")
    assert read["LICENSE"].startswith(b"Format: https://www.debian.org/")
    notice = read["NOTICE"].decode()
    assert notice.count("\n") == 1
    assert "repacked by keel's test mirror" in notice and "prometheus 2.42.0+ds-5+deb12u1" in notice


def test_repack_uses_a_minimal_config_when_the_package_has_none(tmp_path):
    data = _repack(_fake_tree(tmp_path / "t", with_configs=False))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        config = tar.extractfile("prometheus-2.42.0.linux-amd64/prometheus.yml").read()
    assert yaml.safe_load(config)["scrape_configs"][0]["job_name"] == "prometheus"


def test_repack_refuses_a_tree_without_a_binary(tmp_path):
    tree = _fake_tree(tmp_path / "t")
    (tree / "usr/bin/promtool").unlink()
    with pytest.raises(btm.MirrorError, match="no /usr/bin/promtool"):
        _repack(tree)


def test_render_artifacts_schema(tmp_path):
    table = {
        "prometheus": {"2.53.3": {"amd64": "b" * 64}, "2.42.0": {"amd64": "a" * 64}},
        "node_exporter": {"1.9.0": {"amd64": "d" * 64, "arm64": "e" * 64}, "1.10.0": {"amd64": "f" * 64}},
    }
    data = yaml.safe_load(btm.render_artifacts(tmp_path / "mirror dir", table))
    assert data["artifact_mirror"] == (tmp_path / "mirror dir").as_uri()
    assert data["artifact_mirror"].startswith("file:///")
    prometheus = data["artifact_manifest"]["prometheus"]
    assert prometheus == {
        "version": "2.53.3",
        "path": "prometheus/prometheus/releases/download/v{version}/prometheus-{version}.linux-{arch}.tar.gz",
        "sha256": {"2.42.0": {"amd64": "a" * 64}, "2.53.3": {"amd64": "b" * 64}},
    }
    node = data["artifact_manifest"]["node_exporter"]
    assert node["version"] == "1.10.0"  # compared as numbers, not strings
    assert node["sha256"]["1.9.0"] == {"amd64": "d" * 64, "arm64": "e" * 64}
    path = node["path"].format(version="1.9.0", arch="amd64")
    assert path == "prometheus/node_exporter/releases/download/v1.9.0/node_exporter-1.9.0.linux-amd64.tar.gz"


def test_sha256sums_text_is_in_upstream_format():
    assert btm.sha256sums_text({"b.tar.gz": "2" * 64, "a.tar.gz": "1" * 64}) == (
        f"{'1' * 64}  a.tar.gz\n{'2' * 64}  b.tar.gz\n")


def _offer(version: str, promtool: str | None = None) -> dict[str, btm.Deb]:
    names = {c.package: version for c in btm.COMPONENTS}
    offered = {n: btm.Deb(n, v, f"pool/{n}_{v}.deb", "00" * 32, 1) for n, v in names.items()}
    if promtool:
        offered["promtool"] = btm.Deb("promtool", promtool, f"pool/promtool_{promtool}.deb", "11" * 32, 1)
    return offered


def test_plan_builds_adds_split_packages_and_checks_versions():
    builds = btm.plan_builds(["bookworm", "trixie"], {"bookworm": _offer("2.42.0+ds-5"),
                                                       "trixie": _offer("2.53.3+ds1-2", "2.53.3+ds1-2")})
    by_key = {(b.component.name, b.version): b for b in builds}
    assert len(builds) == 8
    assert [d.package for d in by_key["prometheus", "2.42.0"].debs] == ["prometheus"]
    assert [d.package for d in by_key["prometheus", "2.53.3"].debs] == ["prometheus", "promtool"]
    assert by_key["node_exporter", "2.53.3"].relpath("amd64") == (
        "prometheus/node_exporter/releases/download/v2.53.3/node_exporter-2.53.3.linux-amd64.tar.gz")
    with pytest.raises(btm.MirrorError, match=re.escape("promtool 2.54.0-1 does not match")):
        btm.plan_builds(["trixie"], {"trixie": _offer("2.53.3+ds1-2", "2.54.0-1")})
    with pytest.raises(btm.MirrorError, match="different packages in bookworm and trixie"):
        btm.plan_builds(["bookworm", "trixie"], {"bookworm": _offer("2.53.3-1"), "trixie": _offer("2.53.3-2")})
