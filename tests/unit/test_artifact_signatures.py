"""Upstream signatures: the artifact role (and scripts/mirror.py) accept an archive
only when its detached signature was made by the pinned key, checked with gpgv on
the controller. Keys are made here with gpg; the role runs for real on localhost
against a file:// mirror."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
KEYS = ROOT / "roles" / "artifact" / "files" / "keys"
PATH = "acme/tool/releases/download/v{version}/tool-{version}-linux-{arch}.tar.gz"

pytestmark = pytest.mark.skipif(not shutil.which("gpg") or not shutil.which("gpgv"), reason="needs gpg and gpgv")


def gpg(home: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", *args],
                          input=data, capture_output=True, check=True, timeout=60).stdout


def new_key(home: Path, uid: str) -> str:
    """Make a signing key in its own home; return its fingerprint."""
    home.mkdir(mode=0o700, parents=True)
    gpg(home, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
    colons = gpg(home, "--with-colons", "--list-keys").decode()
    return next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))


@pytest.fixture(scope="module")
def signers(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("gpg")
    yield {name: {"home": base / name, "fpr": new_key(base / name, f"{name} <{name}@example.org>")}
           for name in ("upstream", "attacker")}
    for name in ("upstream", "attacker"):  # gpg leaves an agent running per home
        subprocess.run(["gpgconf", "--homedir", str(base / name), "--kill", "all"], check=False, timeout=60)


@pytest.fixture
def site(tmp_path, signers) -> dict:
    """A mirror with tool 1.0.0 signed by upstream, the keyring dir and a manifest pinning upstream's key."""
    mirror = tmp_path / "mirror"
    archive = mirror / PATH.replace("{version}", "1.0.0").replace("{arch}", "amd64")
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"the real tool 1.0.0")
    sign(signers["upstream"], archive)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "upstream.gpg").write_bytes(gpg(signers["upstream"]["home"], "--export"))
    return {"tmp": tmp_path, "mirror": mirror, "archive": archive, "keys": keys,
            "manifest": manifest_for(archive, signers["upstream"]["fpr"])}


def sign(signer: dict, archive: Path) -> None:
    Path(f"{archive}.asc").unlink(missing_ok=True)
    gpg(signer["home"], "--armor", "--detach-sign", "--output", f"{archive}.asc", str(archive))


def manifest_for(archive: Path, fingerprint: str) -> dict:
    return {"tool": {"path": PATH, "sha256": {"1.0.0": {"amd64": hashlib.sha256(archive.read_bytes()).hexdigest()}},
                     "signed_by": {"key": "upstream", "fingerprint": fingerprint, "suffix": ".asc"}}}


def download(site: dict) -> subprocess.CompletedProcess[str]:
    """The artifact role's download entry point, on localhost, as a playbook run."""
    tmp = site["tmp"]
    playbook = tmp / "download.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Download tool", "hosts": "localhost", "connection": "local", "gather_facts": True,
        "gather_subset": ["min"],
        "tasks": [{"ansible.builtin.include_role": {"name": "artifact", "tasks_from": "download"}}],
    }]))
    extra = tmp / "extra.json"
    extra.write_text(json.dumps({
        "artifact_name": "tool", "artifact_version": "1.0.0", "artifact_manifest": site["manifest"],
        "artifact_mirror": site["mirror"].as_uri(), "artifact_cache_dir": str(tmp / "cache"),
        "artifact_signing_keys_dir": str(site["keys"]), "artifact_arch_map": {os.uname().machine: "amd64"},
        "ansible_python_interpreter": str(BIN / "python")}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp / "facts"), "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp")}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), "-e", f"@{extra}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def cached(site: dict) -> Path:
    return site["tmp"] / "cache" / site["archive"].name


def test_an_archive_signed_by_the_pinned_key_is_accepted(site):
    res = download(site)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert cached(site).read_bytes() == b"the real tool 1.0.0"
    assert "Check the signature with the pinned key: tool 1.0.0" in res.stdout


def test_an_archive_signed_by_another_key_is_refused(site, signers):
    sign(signers["attacker"], site["archive"])
    res = download(site)
    out = " ".join(res.stdout.split())
    assert res.returncode != 0
    assert f"is not signed by the pinned key {signers['upstream']['fpr']}" in out, out[-3000:]
    assert "nothing was installed" in out


def test_a_manifest_whose_sha256_was_taken_from_a_replaced_archive_is_still_refused(site, signers):
    """The mirror's archive was replaced and the manifest's sha256 copied from it: only the signature can tell."""
    site["archive"].write_bytes(b"a trojaned tool 1.0.0")
    site["manifest"] = manifest_for(site["archive"], signers["upstream"]["fpr"])
    res = download(site)
    out = " ".join(res.stdout.split())
    assert res.returncode != 0 and "is not signed by the pinned key" in out, out[-3000:]
    assert "BAD signature" in out, out[-3000:]


def test_a_good_signature_by_a_key_other_than_the_pinned_fingerprint_is_refused(site, signers):
    """The keyring holds a key, but the manifest pins another fingerprint: a good signature is not enough."""
    site["manifest"]["tool"]["signed_by"]["fingerprint"] = signers["attacker"]["fpr"]
    res = download(site)
    assert res.returncode != 0 and "is not signed by the pinned key" in " ".join(res.stdout.split())


def test_a_missing_signature_is_refused(site):
    Path(f"{site['archive']}.asc").unlink()
    res = download(site)
    out = " ".join(res.stdout.split())
    assert res.returncode != 0 and "could not be downloaded" in out, out[-3000:]


def test_a_missing_keyring_is_named_before_any_download(site):
    (site["keys"] / "upstream.gpg").unlink()
    res = download(site)
    out = " ".join(res.stdout.split())
    assert res.returncode != 0 and "upstream.gpg is missing" in out, out[-3000:]
    assert not cached(site).exists()


# ------------------------------------------------------------ the shipped keys
def dearmor(text: str) -> bytes:
    body = text.split("-----BEGIN PGP PUBLIC KEY BLOCK-----", 1)[1].split("-----END PGP PUBLIC KEY BLOCK-----")[0]
    lines = [line for line in body.strip().splitlines() if line and ":" not in line and not line.startswith("=")]
    return base64.b64decode("".join(lines))


def test_each_shipped_keyring_is_its_published_key_with_the_pinned_fingerprint(tmp_path):
    manifest = yaml.safe_load((ROOT / "roles" / "artifact" / "defaults" / "main.yml").read_text())["artifact_manifest"]
    signed = {spec["signed_by"]["key"]: spec["signed_by"]["fingerprint"]
              for spec in manifest.values() if "signed_by" in spec}
    assert signed == {"jaeger": "F927B2E5FDCA3301EA2C8707C043A4D2B3F2AC31"}
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    for key, fingerprint in signed.items():
        assert (KEYS / f"{key}.gpg").read_bytes() == dearmor((KEYS / f"{key}.asc").read_text())
        colons = gpg(home, "--with-colons", "--show-keys", str(KEYS / f"{key}.gpg")).decode().splitlines()
        primary = colons[colons.index(next(line for line in colons if line.startswith("pub:"))) + 1]
        assert primary.split(":")[9] == fingerprint
        assert "s" in colons[0].split(":")[11]  # the primary key may sign


# ------------------------------------------------------------ scripts/mirror.py
def mirror_run(site: dict, out: Path) -> tuple[int, str]:
    manifest = site["tmp"] / "manifest.yml"
    manifest.write_text(yaml.safe_dump({"artifact_mirror": site["mirror"].as_uri(),
                                        "artifact_manifest": site["manifest"]}))
    res = subprocess.run([str(BIN / "python"), str(ROOT / "scripts" / "mirror.py"), "--out", str(out),
                          "--manifest", str(manifest), "--keys", str(site["keys"])],
                         capture_output=True, text=True, timeout=120, check=False)
    return res.returncode, res.stdout + res.stderr


def test_mirror_keeps_a_signed_archive_with_its_signature(site):
    out = site["tmp"] / "air-gap"
    rc, printed = mirror_run(site, out)
    assert rc == 0 and "tool 1.0.0 amd64: downloaded, signature good" in printed, printed
    relative = site["archive"].relative_to(site["mirror"])
    assert (out / relative).exists() and Path(f"{out / relative}.asc").exists()  # the role finds both there


def test_mirror_drops_an_archive_signed_by_another_key(site, signers):
    sign(signers["attacker"], site["archive"])
    out = site["tmp"] / "air-gap"
    rc, printed = mirror_run(site, out)
    assert rc == 1 and f"signature NOT by {signers['upstream']['fpr']}" in printed and "1 file(s) FAILED" in printed
    assert not list(out.rglob("tool-*"))
