"""The controller's download cache of the artifact role: one download per run for
every host of the play, none when the cache holds the verified archive, one cache
per controller user (from the user's own XDG_CACHE_HOME or HOME, created 0700), a
tampered cached archive replaced by a verified download before any host gets it,
and two runs at once on one cache both ending with the verified archive.

The role's download entry point runs for real on localhost (three inventory hosts
of one architecture) against a mirror on a loopback HTTP server that counts the
requests it answers.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml
from keel_test_helpers import FAKE_ARCHITECTURE

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
ARCHIVE_PATH = "acme/tool/releases/download/v1.0.0/tool-1.0.0-linux-amd64.tar.gz"
CONTENT = b"the real tool 1.0.0\n" * 1000


class Mirror(http.server.ThreadingHTTPServer):
    """Serves files from a directory on 127.0.0.1 and counts GETs per path."""

    def __init__(self, root: Path) -> None:
        self.gets: Counter[str] = Counter()
        self.lock = threading.Lock()
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                with mirror.lock:
                    mirror.gets[self.path.lstrip("/")] += 1
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "mirror"
    (root / ARCHIVE_PATH).parent.mkdir(parents=True)
    (root / ARCHIVE_PATH).write_bytes(CONTENT)
    server = Mirror(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def download(tmp: Path, mirror: Mirror, home: Path, xdg_cache: Path | None = None) -> subprocess.CompletedProcess:
    """The artifact role's download entry point for three hosts, with the cache at
    its default: the calling user's XDG_CACHE_HOME, else HOME/.cache."""
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": str(BIN / "python"),
                                  "test_arch": "x86_64"},
                         "hosts": {"h1": {}, "h2": {}, "h3": {}}}}
    (tmp / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp / "play.yml").write_text(yaml.safe_dump([{
        "name": "Download tool", "hosts": "all", "gather_facts": False,
        "tasks": [FAKE_ARCHITECTURE,
                  {"ansible.builtin.include_role": {"name": "artifact", "tasks_from": "download"}}]}]))
    host, port = mirror.server_address[:2]
    (tmp / "extra.json").write_text(json.dumps({
        "artifact_name": "tool", "artifact_version": "1.0.0",
        "artifact_manifest": {"tool": {"path": ARCHIVE_PATH.replace("amd64", "{arch}").replace("1.0.0", "{version}"),
                                       "sha256": {"1.0.0": {"amd64": hashlib.sha256(CONTENT).hexdigest()}}}},
        "artifact_mirror": f"http://{host}:{port}/"}))
    env = {key: value for key, value in os.environ.items() if key != "XDG_CACHE_HOME"}
    env |= {"HOME": str(home), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_CACHE_PLUGIN": "memory", "ANSIBLE_LOCAL_TEMP": str(home / "ansible-tmp")}
    if xdg_cache is not None:
        env["XDG_CACHE_HOME"] = str(xdg_cache)
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp / "inventory.yml"), str(tmp / "play.yml"),
                           "-e", f"@{tmp / 'extra.json'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def test_one_download_per_run_for_every_host_and_none_from_a_verified_cache(tmp_path, mirror):
    home = tmp_path / "alice"
    home.mkdir()
    ok(download(tmp_path, mirror, home))
    assert mirror.gets[ARCHIVE_PATH] == 1  # three hosts, one download
    cache = home / ".cache" / "keel" / "artifacts"
    assert (cache / Path(ARCHIVE_PATH).name).read_bytes() == CONTENT
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700  # no other user reads or writes it
    ok(download(tmp_path, mirror, home))
    assert mirror.gets[ARCHIVE_PATH] == 1  # the cached archive matched the manifest: not fetched again


def test_each_controller_user_has_a_cache_of_their_own(tmp_path, mirror):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    bob.mkdir()
    ok(download(tmp_path, mirror, alice))
    ok(download(tmp_path, mirror, bob, xdg_cache=bob / "xdg"))
    name = Path(ARCHIVE_PATH).name
    assert (alice / ".cache" / "keel" / "artifacts" / name).read_bytes() == CONTENT
    assert (bob / "xdg" / "keel" / "artifacts" / name).read_bytes() == CONTENT  # XDG_CACHE_HOME honoured
    assert not (bob / ".cache").exists()
    assert mirror.gets[ARCHIVE_PATH] == 2  # nothing shared between the two


def test_a_tampered_cached_archive_is_replaced_by_a_verified_download(tmp_path, mirror):
    home = tmp_path / "alice"
    home.mkdir()
    ok(download(tmp_path, mirror, home))
    cached = home / ".cache" / "keel" / "artifacts" / Path(ARCHIVE_PATH).name
    cached.write_bytes(b"something else")
    ok(download(tmp_path, mirror, home))
    assert mirror.gets[ARCHIVE_PATH] == 2
    assert cached.read_bytes() == CONTENT


def test_two_runs_at_once_on_one_cache_both_end_with_the_verified_archive(tmp_path, mirror):
    home = tmp_path / "alice"
    home.mkdir()
    results: list[subprocess.CompletedProcess] = []
    runs = []
    for n in (1, 2):
        (tmp_path / f"run{n}").mkdir()
        runs.append(threading.Thread(target=lambda d=tmp_path / f"run{n}": results.append(download(d, mirror, home))))
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=320)
    assert len(results) == 2
    for result in results:
        ok(result)
    assert (home / ".cache" / "keel" / "artifacts" / Path(ARCHIVE_PATH).name).read_bytes() == CONTENT
    assert 1 <= mirror.gets[ARCHIVE_PATH] <= 2
