#!/usr/bin/env python3
"""Build an air-gap mirror of every release archive in keel's artifact manifest.

    scripts/mirror.py --out DIR [--manifest FILE] [--from URL] [--name N]... [--arch A]...

Run it on a machine with internet access, copy DIR to the internal web server, and
set artifact_mirror to that server's URL: the roles then download from it with
the very same paths and checksums. Each file is downloaded from URL (default: the
manifest's artifact_mirror, https://github.com) to DIR/<path of the manifest>,
checked against the manifest's sha256 and only then renamed into place; files
already there with the right checksum are kept, so an interrupted run resumes.
A checksum mismatch deletes the download and makes the exit status 1. Where the
manifest says upstream signs an artifact (signed_by), the detached signature is
mirrored beside the archive and checked with gpgv against the pinned key
(roles/artifact/files/keys/<key>.gpg, primary key fingerprint as pinned); a bad
or missing signature deletes both and makes the exit status 1 as well.

The manifest is roles/artifact/defaults/main.yml (artifact_manifest), or any vars
file of the same schema (--manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = ROOT / "roles" / "artifact" / "defaults" / "main.yml"
DEFAULT_KEYS = ROOT / "roles" / "artifact" / "files" / "keys"
VALIDSIG = re.compile(r"^\[GNUPG:\] VALIDSIG .* ([0-9A-F]{40})$", re.MULTILINE)


def load(manifest: Path) -> tuple[str, dict]:
    data = yaml.safe_load(manifest.read_text())
    artifacts = data.get("artifact_manifest")
    if not isinstance(artifacts, dict) or not artifacts:
        raise SystemExit(f"{manifest}: no artifact_manifest manifest in this file")
    return str(data.get("artifact_mirror", "https://github.com")), artifacts


def entries(artifacts: dict, names: list[str], arches: list[str]) -> list[tuple[str, str, str, str]]:
    """(name, version, arch, path) of every file to mirror, with its sha256 in artifacts."""
    unknown = sorted(set(names) - artifacts.keys())
    if unknown:
        raise SystemExit(f"not in the manifest: {', '.join(unknown)} (it lists {', '.join(sorted(artifacts))})")
    out = []
    for name, spec in sorted(artifacts.items()):
        if names and name not in names:
            continue
        for version, by_arch in sorted(spec["sha256"].items()):
            for arch in sorted(by_arch):
                if not arches or arch in arches:
                    path = spec["path"].replace("{version}", str(version)).replace("{arch}", arch)
                    out.append((name, str(version), arch, path))
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, expected: str | None) -> str:
    """Download url to dest through a temporary file; return 'kept', 'downloaded' or an error.
    expected None (a signature, checked by gpgv instead): always downloaded anew."""
    if expected and dest.exists() and sha256_of(dest) == expected:
        return "kept"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        actual = sha256_of(tmp)
        if expected and actual != expected:
            return f"sha256 mismatch: got {actual}, the manifest says {expected}"
        tmp.chmod(0o644)
        tmp.replace(dest)
        return "downloaded"
    except OSError as exc:
        return f"download failed: {exc}"
    finally:
        tmp.unlink(missing_ok=True)


def verify_signature(archive: Path, signature: Path, keyring: Path, fingerprint: str) -> str:
    """'signature good' when gpgv finds a good signature by the pinned primary key, else why not."""
    if not keyring.is_file():
        return f"no keyring {keyring}"
    try:
        res = subprocess.run(["gpgv", "--status-fd=1", f"--keyring={keyring}", str(signature), str(archive)],
                             capture_output=True, text=True, timeout=120, check=False)
    except OSError as exc:
        return f"cannot run gpgv: {exc}"
    signers = VALIDSIG.findall(res.stdout)
    if res.returncode == 0 and signers == [fingerprint.upper()]:
        return "signature good"
    return f"signature NOT by {fingerprint}: " + " ".join(res.stderr.split())[-300:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="mirror directory")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--from", dest="source", help="base URL to download from (default: the manifest's)")
    parser.add_argument("--name", action="append", default=[], help="only this artifact (repeatable)")
    parser.add_argument("--arch", action="append", default=[], help="only this architecture (repeatable)")
    parser.add_argument("--keys", type=Path, default=DEFAULT_KEYS, help="directory of the pinned keyrings")
    args = parser.parse_args(argv)

    mirror, artifacts = load(args.manifest)
    base = (args.source or mirror).rstrip("/")
    failures = 0
    for name, version, arch, path in entries(artifacts, args.name, args.arch):
        expected = str(artifacts[name]["sha256"][version][arch])
        result = fetch(f"{base}/{path}", args.out / path, expected)
        ok = result in ("kept", "downloaded")
        signed_by = artifacts[name].get("signed_by")
        if signed_by and ok:
            signature = args.out / f"{path}{signed_by.get('suffix', '.asc')}"
            checked = fetch(f"{base}/{path}{signed_by.get('suffix', '.asc')}", signature, None)
            if checked == "downloaded":
                checked = verify_signature(args.out / path, signature, args.keys / f"{signed_by['key']}.gpg",
                                           str(signed_by["fingerprint"]))
            ok = checked == "signature good"
            if not ok:
                (args.out / path).unlink(missing_ok=True)
                signature.unlink(missing_ok=True)
            result = f"{result}, {checked}"
        failures += not ok
        print(f"{name} {version} {arch}: {result}", flush=True)
    print(f"mirror in {args.out}: set artifact_mirror to the URL that serves it"
          + (f"; {failures} file(s) FAILED" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
