#!/usr/bin/env python3
"""Build a local mirror of Prometheus release archives from Debian's packages.

    scripts/build_test_mirror.py [--out DIR] [--arch amd64] [--suites bookworm,trixie]

Why: keel's observability roles install Prometheus, Alertmanager, node_exporter and
blackbox_exporter from the upstream release archives
(https://github.com/prometheus/<name>/releases/download/v<V>/<name>-<V>.linux-<arch>.tar.gz),
checked against sha256 sums from the project's manifest. The test machines cannot reach
GitHub, only Debian's package mirror. So that the tests still run the real install path
with real binaries, this script takes the binaries Debian ships, repacks them in the
upstream archive layout and writes a vars file (DIR/artifacts.yml) that points the roles at
the local mirror and carries the checksums this script computed. Debian 12 (bookworm)
supplies version N-1 and Debian 13 (trixie) version N, for an upgrade test.

Trust chain: dists/<suite>/InRelease is verified with gpgv against the Debian archive
keyring and only the signed text is used; it gives the sha256 of Packages.xz, which gives
the sha256 of each .deb. Any mismatch stops the script with a non-zero exit status.

The archives are repacked deterministically (sorted members, fixed mtime and owner, fixed
modes, gzip header without name or time), so the same .debs always give the same bytes and
the same checksums. Every output is written to a temporary file and renamed into place,
under an fcntl lock on DIR/.lock, so concurrent runs are safe; a run whose inputs have not
changed only re-checks the archives and prints "up to date".

Environment: KEEL_CACHE (default ~/.cache/keel; DIR defaults to $KEEL_CACHE/test-mirror),
KEEL_DEBIAN_MIRROR (default http://deb.debian.org/debian). Standard library only, plus the
gpgv and dpkg-deb commands.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITES = "bookworm,trixie"
MTIME = 0  # every archive member; the gzip header carries no time at all
CHUNK = 1 << 20
TIMEOUT = 60
# Debian architecture -> the name upstream uses in its archive names.
UPSTREAM_ARCH = {"amd64": "amd64", "arm64": "arm64", "armhf": "armv7", "i386": "386",
                 "ppc64el": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


class MirrorError(Exception):
    """A download, signature, checksum or layout problem; the message says which file."""


@dataclass(frozen=True)
class Component:
    """How one upstream archive is made from Debian packages."""

    name: str                                  # upstream name, e.g. node_exporter
    package: str                               # main Debian package; LICENSE comes from it
    binaries: dict[str, str]                   # archive name -> path in the extracted tree
    extra_packages: tuple[str, ...] = ()       # split out in some suites (promtool in trixie)
    configs: dict[str, str] = field(default_factory=dict)    # archive name -> tree path
    fallbacks: dict[str, str] = field(default_factory=dict)  # archive name -> minimal config
    dirs: dict[str, str] = field(default_factory=dict)       # archive dir -> tree dir


COMPONENTS: tuple[Component, ...] = (
    Component(
        name="prometheus",
        package="prometheus",
        binaries={"prometheus": "usr/bin/prometheus", "promtool": "usr/bin/promtool"},
        extra_packages=("promtool",),
        configs={"prometheus.yml": "etc/prometheus/prometheus.yml"},
        fallbacks={"prometheus.yml": "global:\n  scrape_interval: 15s\nscrape_configs:\n"
                                     "  - job_name: prometheus\n    static_configs:\n"
                                     "      - targets: ['localhost:9090']\n"},
        dirs={"consoles": "usr/share/doc/prometheus/examples/consoles",
              "console_libraries": "usr/share/doc/prometheus/examples/console_libraries",
              # Debian's build has no embedded web UI; it serves its classic UI from this
              # absolute path (links into Debian's libjs-* packages). The lab puts it there
              # (playbooks/tasks/test-mirror-quirks.yml) so a browser can open it.
              "debian-web": "usr/share/prometheus/web"},
    ),
    Component(
        name="alertmanager",
        package="prometheus-alertmanager",
        binaries={"alertmanager": "usr/bin/prometheus-alertmanager", "amtool": "usr/bin/amtool"},
        configs={"alertmanager.yml": "etc/prometheus/alertmanager.yml"},
        fallbacks={"alertmanager.yml": "route:\n  receiver: default\nreceivers:\n  - name: default\n"},
        # Debian's build reads its notification templates from this absolute path
        # (upstream embeds them): playbooks/tasks/test-mirror-quirks.yml puts them there.
        dirs={"debian-templates": "usr/share/prometheus/alertmanager"},
    ),
    Component(
        name="node_exporter",
        package="prometheus-node-exporter",
        binaries={"node_exporter": "usr/bin/prometheus-node-exporter"},
    ),
    Component(
        name="blackbox_exporter",
        package="prometheus-blackbox-exporter",
        binaries={"blackbox_exporter": "usr/bin/prometheus-blackbox-exporter"},
        configs={"blackbox.yml": "etc/prometheus/blackbox.yml"},
        fallbacks={"blackbox.yml": "modules:\n  http_2xx:\n    prober: http\n"},
    ),
)


@dataclass(frozen=True)
class Deb:
    """One binary package as the signed Packages index describes it."""

    package: str
    version: str
    filename: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Build:
    """One archive to make: a component at one upstream version, from one suite's debs."""

    component: Component
    suite: str
    version: str          # upstream version
    debs: tuple[Deb, ...]  # main package first

    def relpath(self, arch: str) -> str:
        return archive_path(self.component.name, self.version, arch)


# --- pure helpers -------------------------------------------------------------------------


def archive_path(name: str, version: str, arch: str) -> str:
    """Path of an archive below the mirror root, the same as below https://github.com."""
    return f"prometheus/{name}/releases/download/v{version}/{name}-{version}.linux-{arch}.tar.gz"


def upstream_version(debian_version: str) -> str:
    """2.53.3+ds1-2 -> 2.53.3; 1:0.25.0-1+b4 -> 0.25.0 (no epoch, repack suffix, revision)."""
    version = debian_version.split(":", 1)[1] if ":" in debian_version else debian_version
    version = version.rsplit("-", 1)[0]
    version = re.sub(r"[+~](ds|dfsg)[0-9.]*$", "", version)
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise MirrorError(f"cannot derive an upstream version from Debian version {debian_version!r}")
    return version


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def parse_paragraphs(text: str) -> Iterator[dict[str, str]]:
    """Yield the deb822 paragraphs of a Packages (or Release) file as field -> value."""
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            if line[0] in " \t" and key is not None:
                fields[key] += "\n" + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise MirrorError(f"malformed deb822 line: {line!r}")
            key = key.strip()
            fields[key] = value.strip()
        if fields:
            yield fields


def find_debs(packages_text: str, names: set[str], arch: str) -> dict[str, Deb]:
    """The entries of the wanted packages in a Packages file; absent names are left out."""
    found: dict[str, Deb] = {}
    for block in re.split(r"\n[ \t]*\n", packages_text):
        first = block.lstrip("\n").split("\n", 1)[0]
        if first.partition(":")[2].strip() not in names:  # cheap filter: Package comes first
            continue
        for para in parse_paragraphs(block):
            name = para.get("Package", "")
            if name not in names or para.get("Architecture") not in (arch, "all"):
                continue
            if name in found:
                raise MirrorError(f"Packages lists {name} twice ({found[name].version}, {para['Version']})")
            found[name] = Deb(name, para["Version"], para["Filename"], para["SHA256"].lower(), int(para["Size"]))
    return found


def release_checksum(release_text: str, path: str) -> tuple[str, int]:
    """(sha256, size) of `path` from the SHA256 section of a (verified) InRelease text."""
    in_sha256 = False
    for line in release_text.splitlines():
        if not line.startswith((" ", "\t")):
            in_sha256 = line.rstrip() == "SHA256:"
            continue
        if in_sha256:
            parts = line.split()
            if len(parts) == 3 and parts[2] == path:
                return parts[0].lower(), int(parts[1])
    raise MirrorError(f"InRelease has no SHA256 entry for {path}")


def check_release_fields(release_text: str, suite: str, now: datetime | None = None) -> None:
    """Refuse an InRelease of another suite (a replayed or swapped file) or one past Valid-Until."""
    head = next(parse_paragraphs(re.split(r"\n(?:MD5Sum|SHA1|SHA256):", release_text, maxsplit=1)[0]), {})
    if suite not in (head.get("Codename"), head.get("Suite")):
        raise MirrorError(f"InRelease for {suite} is for Codename {head.get('Codename')!r}, "
                          f"Suite {head.get('Suite')!r}")
    if "Valid-Until" in head:
        valid_until = email.utils.parsedate_to_datetime(head["Valid-Until"])
        if valid_until < (now or datetime.now(UTC)):
            raise MirrorError(f"InRelease for {suite} expired at {head['Valid-Until']}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, actual: str | None = None) -> None:
    """Raise MirrorError naming the file unless its sha256 is `expected`."""
    actual = actual or sha256_file(path)
    if actual != expected.lower():
        raise MirrorError(f"checksum mismatch for {path.name}: sha256 {actual}, expected {expected}")


def sha256sums_text(entries: dict[str, str]) -> str:
    """sha256sums.txt as upstream publishes it: '<sha256>  <filename>' per line."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items()))


def render_artifacts(mirror_dir: Path, builds: dict[str, dict[str, dict[str, str]]]) -> str:
    """artifacts.yml: builds maps component -> upstream version -> arch -> sha256."""
    q = json.dumps  # a JSON string is a valid double-quoted YAML scalar
    lines = [
        "---",
        "# Written by scripts/build_test_mirror.py: Debian's binaries repacked in the upstream",
        "# archive layout. Test-only overrides of the artifact manifest; do not edit.",
        f"artifact_mirror: {q(mirror_dir.resolve().as_uri())}",
        "artifact_manifest:",
    ]
    for name in sorted(builds):
        versions = builds[name]
        newest = max(versions, key=version_key)
        lines += [
            f"  {name}:",
            f"    version: {q(newest)}",
            f"    path: {q(archive_path(name, '{version}', '{arch}'))}",
            "    sha256:",
        ]
        for version in sorted(versions, key=version_key):
            sums = ", ".join(f"{q(arch)}: {q(digest)}" for arch, digest in sorted(versions[version].items()))
            lines.append(f"      {q(version)}: {{{sums}}}")
    return "\n".join(lines) + "\n"


def notice_text(debs: tuple[Deb, ...]) -> str:
    packages = ", ".join(f"{deb.package} {deb.version}" for deb in debs)
    return (f"This archive was repacked by keel's test mirror (scripts/build_test_mirror.py) from "
            f"Debian package {packages}; it is not an upstream release archive.\n")


# --- deterministic repack ------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One archive entry: a directory (source None), a file from disk, literal bytes or a link."""

    name: str
    mode: int
    source: Path | bytes | None = None
    link: str | None = None  # a symbolic link to this target (source unused)


def _doc_file(path: Path) -> tuple[str, bytes]:
    """Debian may gzip example files; the archive holds them plain, under their real name."""
    if path.suffix == ".gz":
        return path.stem, gzip.decompress(path.read_bytes())
    return path.name, path.read_bytes()


def plan_members(component: Component, version: str, arch: str, tree: Path, notice: str) -> list[Member]:
    """The entries of the upstream-layout archive, from a tree the .debs were extracted into."""
    top = f"{component.name}-{version}.linux-{arch}"
    members = [Member(top, 0o755)]
    for name, rel in component.binaries.items():
        if not (tree / rel).is_file():
            raise MirrorError(f"{component.name} {version}: the Debian packages have no /{rel}")
        members.append(Member(f"{top}/{name}", 0o755, tree / rel))
    license_file = tree / "usr/share/doc" / component.package / "copyright"
    if not license_file.is_file():
        raise MirrorError(f"{component.name} {version}: no /{license_file.relative_to(tree)}")
    members.append(Member(f"{top}/LICENSE", 0o644, license_file))
    members.append(Member(f"{top}/NOTICE", 0o644, notice.encode()))
    for name, rel in component.configs.items():
        source = tree / rel
        members.append(Member(f"{top}/{name}", 0o644,
                              source if source.is_file() else component.fallbacks[name].encode()))
    for name, rel in component.dirs.items():
        members.append(Member(f"{top}/{name}", 0o755))
        source_dir = tree / rel
        for path in sorted(source_dir.rglob("*")) if source_dir.is_dir() else []:
            inner = path.relative_to(source_dir)
            if path.is_symlink():  # relative links into other Debian packages stay links
                members.append(Member(f"{top}/{name}/{inner.as_posix()}", 0o777, link=os.readlink(path)))
            elif path.is_dir():
                members.append(Member(f"{top}/{name}/{inner.as_posix()}", 0o755))
            elif path.is_file():
                file_name, data = _doc_file(path)
                members.append(Member(f"{top}/{name}/{(inner.parent / file_name).as_posix()}", 0o644, data))
    return sorted(members, key=lambda m: m.name)


def write_tar_gz(members: list[Member], handle: io.BufferedIOBase) -> None:
    """Write members as a gzip'd tar, identical bytes for identical members."""
    with gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.mode, info.mtime = member.mode, MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if member.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, member.link
                tar.addfile(info)
            elif member.source is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(member.source, bytes):
                info.size = len(member.source)
                tar.addfile(info, io.BytesIO(member.source))
            else:
                info.size = member.source.stat().st_size
                with member.source.open("rb") as data:
                    tar.addfile(info, data)


# --- files, downloads and the trust chain -------------------------------------------------


@contextlib.contextmanager
def atomic_writer(dest: Path, mode: int = 0o644) -> Iterator[io.BufferedWriter]:
    """A temp file beside dest that replaces dest only when the block finishes without error."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; other users of a shared mirror must read it
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_if_changed(dest: Path, text: str) -> bool:
    if dest.is_file() and dest.read_text() == text:
        return False
    with atomic_writer(dest) as handle:
        handle.write(text.encode())
    return True


def download(url: str, dest: Path, sha256: str | None = None, size: int | None = None) -> None:
    """Fetch url to dest; with sha256, a file that does not match never lands at dest."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, atomic_writer(dest) as handle:  # noqa: S310  fixed http(s) mirror URL
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                handle.write(chunk)
            if sha256 is not None:
                check_sha256(dest, sha256, digest.hexdigest())
            if size is not None and handle.tell() != size:
                raise MirrorError(f"size mismatch for {dest.name}: {handle.tell()} bytes, expected {size}")
    except OSError as exc:  # URLError is an OSError
        raise MirrorError(f"cannot download {url}: {exc}") from exc


def cached_download(url: str, dest: Path, sha256: str, size: int) -> None:
    """Use dest if its sha256 still matches, else (re)download and verify."""
    if dest.is_file() and dest.stat().st_size == size and sha256_file(dest) == sha256:
        return
    print(f"  fetch {url}", flush=True)
    download(url, dest, sha256, size)


def verify_inrelease(signed: bytes, keyring: Path = KEYRING) -> str:
    """Check the clearsigned InRelease with gpgv and return only the signed text."""
    if not keyring.is_file():
        raise MirrorError(f"{keyring} is missing (apt-get install debian-archive-keyring)")
    with tempfile.NamedTemporaryFile(suffix=".InRelease") as tmp:
        tmp.write(signed)
        tmp.flush()
        result = subprocess.run(["gpgv", "--keyring", str(keyring), "--output", "-", tmp.name],
                                capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise MirrorError("InRelease signature is NOT valid:\n" + result.stderr.decode(errors="replace"))
    return result.stdout.decode()


def resolve_suite(base: str, suite: str, arch: str, out: Path, state: dict) -> tuple[str, dict[str, Deb]]:
    """(index key, the .debs a suite offers for the components), through the signed InRelease.

    What a Packages.xz offers is kept in state under its sha256, so a warm run downloads
    and verifies only InRelease.
    """
    names = sorted({c.package for c in COMPONENTS} | {p for c in COMPONENTS for p in c.extra_packages})
    inrelease = out / ".cache" / f"{suite}_InRelease"
    download(f"{base}/dists/{suite}/InRelease", inrelease)
    release = verify_inrelease(inrelease.read_bytes())
    check_release_fields(release, suite)
    index_path = f"main/binary-{arch}/Packages.xz"
    index_sha, index_size = release_checksum(release, index_path)
    print(f"{suite}: InRelease signature good, Packages.xz {index_sha[:12]}", flush=True)
    key = f"{index_sha}:{','.join(names)}"
    if key in state.get("indexes", {}):
        return key, {name: Deb(**deb) for name, deb in state["indexes"][key].items()}
    packages_xz = out / ".cache" / f"{suite}_{arch}_Packages.xz"
    cached_download(f"{base}/dists/{suite}/{index_path}", packages_xz, index_sha, index_size)
    debs = find_debs(lzma.decompress(packages_xz.read_bytes()).decode(), set(names), arch)
    state.setdefault("indexes", {})[key] = {name: deb.__dict__ for name, deb in debs.items()}
    return key, debs


def plan_builds(suites: list[str], offered: dict[str, dict[str, Deb]]) -> list[Build]:
    """One Build per component and upstream version; a version two suites disagree on is an error."""
    builds: dict[tuple[str, str], Build] = {}
    for suite in suites:
        for component in COMPONENTS:
            main = offered[suite].get(component.package)
            if main is None:
                raise MirrorError(f"{suite} has no package {component.package}")
            extras = tuple(offered[suite][p] for p in component.extra_packages if p in offered[suite])
            version = upstream_version(main.version)
            for extra in extras:
                if upstream_version(extra.version) != version:
                    raise MirrorError(f"{suite}: {extra.package} {extra.version} does not match {main.version}")
            build = Build(component, suite, version, (main, *extras))
            previous = builds.setdefault((component.name, version), build)
            if previous.debs != build.debs:
                raise MirrorError(f"{component.name} {version} comes from different packages in "
                                  f"{previous.suite} and {suite}")
    return list(builds.values())


def fingerprint(build: Build, arch: str) -> str:
    """Identifies everything an archive is made from: the .debs and this script's recipe."""
    recipe = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    data = json.dumps([recipe, arch, build.component.name, [d.__dict__ for d in build.debs]], sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def is_current(out: Path, build: Build, arch: str, state: dict) -> bool:
    entry = state.get("archives", {}).get(build.relpath(arch))
    archive = out / build.relpath(arch)
    return (entry is not None and entry["inputs"] == fingerprint(build, arch) and archive.is_file()
            and sha256_file(archive) == entry["sha256"])


def make_archive(base: str, out: Path, build: Build, arch: str) -> str:
    """Download and check the .debs, extract them, repack; return the archive's sha256.

    arch is the upstream architecture name, as in the archive's name.
    """
    for deb in build.debs:
        cached_download(f"{base}/{deb.filename}", out / ".debs" / Path(deb.filename).name, deb.sha256, deb.size)
    archive = out / build.relpath(arch)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=out) as tmp:
        tree = Path(tmp)
        for deb in build.debs:
            subprocess.run(["dpkg-deb", "-x", str(out / ".debs" / Path(deb.filename).name), str(tree)], check=True)
        members = plan_members(build.component, build.version, arch, tree, notice_text(build.debs))
        with atomic_writer(archive) as handle:
            write_tar_gz(members, handle)
    return sha256_file(archive)


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    # O_RDONLY is enough for flock, so a lock file another user created still works.
    fd = os.open(out / ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another build of {out} to finish", flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_state(out: Path) -> dict:
    try:
        return json.loads((out / ".state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def save_state(out: Path, state: dict) -> None:
    write_if_changed(out / ".state.json", json.dumps(state, indent=1, sort_keys=True) + "\n")


def build_mirror(out: Path, base: str, arch: str, suites: list[str]) -> bool:
    """Bring the mirror up to date; True when something had to be (re)written."""
    state = load_state(out)
    resolved = {suite: resolve_suite(base, suite, arch, out, state) for suite in suites}
    state["indexes"] = {key: state["indexes"][key] for key, _ in resolved.values()}  # drop superseded ones
    builds = plan_builds(suites, {suite: debs for suite, (_, debs) in resolved.items()})
    up_arch = UPSTREAM_ARCH[arch]
    changed = False
    sums: dict[str, dict[str, str]] = {}
    table: dict[str, dict[str, dict[str, str]]] = {}
    for build in builds:
        relpath = build.relpath(up_arch)
        if is_current(out, build, up_arch, state):
            digest = state["archives"][relpath]["sha256"]
        else:
            print(f"build {relpath} from {', '.join(d.package + ' ' + d.version for d in build.debs)}", flush=True)
            digest = make_archive(base, out, build, up_arch)
            state.setdefault("archives", {})[relpath] = {"inputs": fingerprint(build, up_arch), "sha256": digest}
            save_state(out, state)
            changed = True
        sums.setdefault(str(Path(relpath).parent), {})[Path(relpath).name] = digest
        table.setdefault(build.component.name, {}).setdefault(build.version, {})[up_arch] = digest
    for directory, entries in sums.items():
        changed |= write_if_changed(out / directory / "sha256sums.txt", sha256sums_text(entries))
    changed |= write_if_changed(out / "artifacts.yml", render_artifacts(out, table))
    save_state(out, state)
    return changed


def main(argv: list[str] | None = None) -> int:
    cache = Path(os.environ.get("KEEL_CACHE") or Path.home() / ".cache" / "keel")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=cache / "test-mirror", help="mirror directory (%(default)s)")
    parser.add_argument("--arch", default="amd64", choices=sorted(UPSTREAM_ARCH), help="Debian architecture")
    parser.add_argument("--suites", default=DEFAULT_SUITES, help="comma-separated Debian suites (%(default)s)")
    args = parser.parse_args(argv)
    base = os.environ.get("KEEL_DEBIAN_MIRROR", DEFAULT_MIRROR).rstrip("/")
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        with locked(out):
            changed = build_mirror(out, base, args.arch, suites)
    except (MirrorError, subprocess.CalledProcessError) as exc:
        print(f"build_test_mirror: error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"{'built' if changed else 'up to date'}: {out / 'artifacts.yml'} ({elapsed:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
