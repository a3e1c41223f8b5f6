#!/usr/bin/env python3
"""A software bill of materials (CycloneDX 1.5 JSON) of what keel deploys.

Components, each with a package URL so that a scanner elsewhere (grype, Dependency-Track,
OSV-Scanner) can match it against vulnerability data:
  - the app release's wheels, from its requirements.lock (name, version, sha256), when a
    release tarball is given (scripts/build-app-release.sh);
  - the release binaries keel downloads (roles/artifact's manifest at each role's pinned
    version: upstream URL path and sha256 per architecture);
  - the APT packages keel pins (Grafana, Loki, Alloy: version only);
  - the Ansible collections of requirements.yml.
Debian's own packages (HAProxy, OpenSSH, ...) come from each host's distribution: the
security audit reads what a host has (dpkg), not this file.

Usage: scripts/sbom.py [--release TARBALL] [--out FILE]   (stdout without --out)
The output is byte-for-byte reproducible: SOURCE_DATE_EPOCH (default: the newest commit's
time, else 0) gives its timestamp; the serial number is derived from the content.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# release binaries: artifact name -> the role whose <name>_version pins it
ARTIFACT_ROLES = ("prometheus", "alertmanager", "node_exporter", "blackbox_exporter", "jaeger")
APT_ROLES = {"grafana": "grafana", "loki": "loki", "alloy": "alloy"}  # role -> Debian package name


def role_default(role: str, name: str) -> str:
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    return str(defaults[name])


def wheel_components(tarball: Path) -> list[dict]:
    with tarfile.open(tarball) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/requirements.lock"))
        lock = tar.extractfile(member).read().decode()
    components = []
    for line in lock.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pin, _, digest = line.partition(" --hash=sha256:")
        name, _, version = pin.partition("==")
        purl_name = name.lower().replace("_", "-")
        components.append({
            "type": "library", "bom-ref": f"pypi:{purl_name}@{version}", "name": purl_name, "version": version,
            "purl": f"pkg:pypi/{purl_name}@{version}", "hashes": [{"alg": "SHA-256", "content": digest.strip()}],
        })
    return components


def artifact_components() -> list[dict]:
    manifest = yaml.safe_load((ROOT / "roles/artifact/defaults/main.yml").read_text())["artifact_manifest"]
    components = []
    for name in ARTIFACT_ROLES:
        version = role_default(name, f"{name}_version")
        entry = manifest[name]
        owner, repo = entry["path"].split("/")[:2]
        for arch, digest in sorted(entry["sha256"][version].items()):
            path = entry["path"].format(version=version, arch=arch)
            components.append({
                "type": "application", "bom-ref": f"artifact:{name}@{version}:{arch}", "name": name,
                "version": version, "purl": f"pkg:github/{owner}/{repo}@v{version}",
                "hashes": [{"alg": "SHA-256", "content": digest}],
                "externalReferences": [{"type": "distribution", "url": f"https://github.com/{path}"}],
                "properties": [{"name": "keel:arch", "value": arch}],
            })
    return components


def apt_components() -> list[dict]:
    return [{"type": "application", "bom-ref": f"deb:{package}@{version}", "name": package, "version": version,
             "purl": f"pkg:deb/grafana/{package}@{version}"}
            for role, package in sorted(APT_ROLES.items())
            for version in [role_default(role, f"{role}_version")]]


def collection_components() -> list[dict]:
    collections = yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]
    return [{"type": "library", "bom-ref": f"galaxy:{c['name']}@{c['version']}", "name": c["name"],
             "version": str(c["version"]), "purl": f"pkg:generic/ansible-collection/{c['name']}@{c['version']}"}
            for c in sorted(collections, key=lambda c: c["name"])]


def source_date() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        return int(subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], capture_output=True,
                                  text=True, check=True, timeout=30).stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return 0


def bom(release: Path | None) -> dict:
    components = (wheel_components(release) if release else []) + artifact_components() + apt_components() \
        + collection_components()
    stamp = datetime.datetime.fromtimestamp(source_date(), tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {
        "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
        "metadata": {
            "timestamp": stamp,
            "tools": {"components": [{"type": "application", "name": "keel scripts/sbom.py"}]},
            "component": {"type": "application", "bom-ref": "keel", "name": "keel",
                          "description": "what keel deploys to a site's hosts"},
        },
        "components": components,
        "dependencies": [{"ref": "keel", "dependsOn": [c["bom-ref"] for c in components]}],
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    return {"bomFormat": "CycloneDX", "specVersion": "1.5",
            "serialNumber": f"urn:uuid:{uuid.UUID(bytes=digest[:16], version=5)}", **body}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", type=Path, help="an app release tarball (its requirements.lock)")
    parser.add_argument("--out", type=Path, help="write here (default: stdout)")
    args = parser.parse_args(argv)
    if args.release and not args.release.is_file():
        print(f"sbom: {args.release}: no such release tarball", file=sys.stderr)
        return 2
    text = json.dumps(bom(args.release), indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"{args.out} ({len(json.loads(text)['components'])} components)")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
