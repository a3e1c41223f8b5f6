"""The keel_* actions (plugins/action) against their builtins, on temporary files.

Each keel_* action answers a no-op with one shell command and hands everything
else to the builtin module. The tests run both on the same files (implicit
localhost, local connection, only files under pytest's temporary directory; the
apt cases in check mode) and check that:
- the keel action reports the same "changed" as the builtin, in check mode and
  for real, and leaves the same file behind;
- the no-op really took the fast path (its result says keel_fast_path) and every
  other case really ran the builtin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "action"))

import keel_apt  # noqa: E402
import keel_systemd_service  # noqa: E402

PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")


def run_tasks(tmp_path: Path, tasks: list[dict], check: bool = False) -> dict[str, dict]:
    """Run tasks on the implicit localhost; each registers 'r<index>'. Returns the results by task name."""
    for n, task in enumerate(tasks):
        task["register"] = f"r{n}"
    names = [t["name"] for t in tasks]
    everything = "{{ [" + ", ".join(f"r{n}" for n in range(len(tasks))) + "] | to_json }}"
    tasks = [*tasks, {"name": "results", "check_mode": False,
                      "ansible.builtin.copy": {"dest": str(tmp_path / "results.json"), "content": everything}}]
    book = tmp_path / "book.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "connection": "local",
                                 "tasks": tasks}]))
    # An empty inventory: the play runs on the implicit localhost, which is in no group.
    inventory = tmp_path / "empty.yml"
    inventory.write_text("all: {}\n")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="false")
    cmd = [PLAYBOOK, "-i", str(inventory), str(book), *(["--check", "--diff"] if check else [])]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    return dict(zip(names, json.loads((tmp_path / "results.json").read_text()), strict=True))


def fast(result: dict) -> bool:
    """The keel action answered by itself, without the builtin."""
    return result.get("keel_fast_path", False)


def pair(files: Path, name: str, keel: str, builtin: str, args: dict) -> list[dict]:
    """The same task as keel_<x> on files/keel/... and as the builtin on files/builtin/..."""
    tasks = []
    for kind, action in (("keel", keel), ("builtin", builtin)):
        spec = json.loads(json.dumps(args).replace("@DIR@", str(files / kind)))
        tasks.append({"name": f"{name} {kind}", action: spec})
    return tasks


def twin(files: Path, setup) -> None:
    """Make the same starting files in files/keel and files/builtin."""
    for kind in ("keel", "builtin"):
        (files / kind).mkdir(parents=True, exist_ok=True)
        setup(files / kind)


CASES = {
    # name: (setup of the directory, keel action, builtin, arguments, fast path expected)
    "copy same content and mode": (
        lambda d: ((d / "a").write_text("x\n"), (d / "a").chmod(0o640)),
        "keel_copy", "ansible.builtin.copy", {"dest": "@DIR@/a", "content": "x\n", "mode": "0640"}, True),
    "copy same content, other mode": (
        lambda d: ((d / "a").write_text("x\n"), (d / "a").chmod(0o644)),
        "keel_copy", "ansible.builtin.copy", {"dest": "@DIR@/a", "content": "x\n", "mode": "0640"}, False),
    "copy other content": (
        lambda d: (d / "a").write_text("y\n"),
        "keel_copy", "ansible.builtin.copy", {"dest": "@DIR@/a", "content": "x\n"}, False),
    "copy missing file": (
        lambda d: None, "keel_copy", "ansible.builtin.copy", {"dest": "@DIR@/a", "content": "x\n"}, False),
    "copy onto a link": (
        lambda d: ((d / "t").write_text("x\n"), (d / "a").symlink_to("t")),
        "keel_copy", "ansible.builtin.copy", {"dest": "@DIR@/a", "content": "x\n"}, False),
    "copy owner by name and id": (
        lambda d: (d / "a").write_text("x\n"),
        "keel_copy", "ansible.builtin.copy", {"dest": "@DIR@/a", "content": "x\n", "owner": "root", "group": "0"},
        True),
    "template same": (
        lambda d: (d / "a").write_text("hello localhost\n"),
        "keel_template", "ansible.builtin.template", {"src": "@DIR@/../t.j2", "dest": "@DIR@/a"}, True),
    "template other": (
        lambda d: (d / "a").write_text("hello there\n"),
        "keel_template", "ansible.builtin.template", {"src": "@DIR@/../t.j2", "dest": "@DIR@/a"}, False),
    "directory as asked": (
        lambda d: ((d / "dir").mkdir(), (d / "dir").chmod(0o750)),
        "keel_file", "ansible.builtin.file", {"path": "@DIR@/dir", "state": "directory", "mode": "0750"}, True),
    "directory, other mode": (
        lambda d: ((d / "dir").mkdir(), (d / "dir").chmod(0o755)),
        "keel_file", "ansible.builtin.file", {"path": "@DIR@/dir", "state": "directory", "mode": "0750"}, False),
    "directory missing": (
        lambda d: None, "keel_file", "ansible.builtin.file", {"path": "@DIR@/dir", "state": "directory"}, False),
    "absent and gone": (
        lambda d: None, "keel_file", "ansible.builtin.file", {"path": "@DIR@/gone", "state": "absent"}, True),
    "absent but there": (
        lambda d: (d / "gone").write_text(""),
        "keel_file", "ansible.builtin.file", {"path": "@DIR@/gone", "state": "absent"}, False),
    "absent but a dangling link": (
        lambda d: (d / "gone").symlink_to("nowhere"),
        "keel_file", "ansible.builtin.file", {"path": "@DIR@/gone", "state": "absent"}, False),
    "link as asked": (
        lambda d: ((d / "target").write_text(""), (d / "l").symlink_to("target")),
        "keel_file", "ansible.builtin.file", {"path": "@DIR@/l", "src": "target", "state": "link", "force": False},
        True),
    "link elsewhere": (
        lambda d: ((d / "target").write_text(""), (d / "l").symlink_to("other")),
        "keel_file", "ansible.builtin.file", {"path": "@DIR@/l", "src": "target", "state": "link", "force": True},
        False),
    "existing file's mode, no state": (
        lambda d: ((d / "f").write_text(""), (d / "f").chmod(0o600)),
        "keel_file", "ansible.builtin.file", {"path": "@DIR@/f", "mode": "0600"}, True),
    "existing file, other mode": (
        lambda d: ((d / "f").write_text(""), (d / "f").chmod(0o644)),
        "keel_file", "ansible.builtin.file", {"path": "@DIR@/f", "mode": "0600"}, False),
    "line in place": (
        lambda d: (d / "defs").write_text("# UMASK is set here\nUMASK\t027\nPASS_MAX_DAYS\t99\n"),
        "keel_lineinfile", "ansible.builtin.lineinfile", {"path": "@DIR@/defs", "regexp": r"^\s*UMASK\s",
                                                          "line": "UMASK\t027"}, True),
    "line differs": (
        lambda d: (d / "defs").write_text("UMASK\t022\n"),
        "keel_lineinfile", "ansible.builtin.lineinfile", {"path": "@DIR@/defs", "regexp": r"^\s*UMASK\s",
                                                          "line": "UMASK\t027"}, False),
    "last of two matches in place": (
        lambda d: (d / "defs").write_text("UMASK\t022\nUMASK\t027\n"),
        "keel_lineinfile", "ansible.builtin.lineinfile", {"path": "@DIR@/defs", "regexp": r"^UMASK\s",
                                                          "line": "UMASK\t027"}, True),
    "first of two matches in place": (
        lambda d: (d / "defs").write_text("UMASK\t027\nUMASK\t022\n"),
        "keel_lineinfile", "ansible.builtin.lineinfile", {"path": "@DIR@/defs", "regexp": r"^UMASK\s",
                                                          "line": "UMASK\t027"}, False),
    "no match, exact line there": (
        lambda d: (d / "defs").write_text("a\nINACTIVE=30\n"),
        "keel_lineinfile", "ansible.builtin.lineinfile", {"path": "@DIR@/defs", "regexp": "^#INACTIVE=",
                                                          "line": "INACTIVE=30"}, True),
    "no match, line missing": (
        lambda d: (d / "defs").write_text("a\n"),
        "keel_lineinfile", "ansible.builtin.lineinfile", {"path": "@DIR@/defs", "regexp": "^INACTIVE=",
                                                          "line": "INACTIVE=30"}, False),
    "line in place, CRLF file": (
        lambda d: (d / "defs").write_bytes(b"UMASK\t027\r\n"),
        "keel_lineinfile", "ansible.builtin.lineinfile", {"path": "@DIR@/defs", "regexp": r"^UMASK\s",
                                                          "line": "UMASK\t027"}, False),
}


@pytest.fixture
def case_files(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "t.j2").write_text("hello {{ inventory_hostname }}\n")
    for n, (setup, *_rest) in enumerate(CASES.values()):
        twin(files / str(n), setup)
    return files


def _tasks(files: Path) -> list[dict]:
    tasks = []
    for n, (name, (_setup, keel, builtin, args, _fast)) in enumerate(CASES.items()):
        args = json.loads(json.dumps(args).replace("@DIR@/../", str(files) + "/"))
        tasks += pair(files / str(n), name, keel, builtin, args)
    return tasks


def _tree(path: Path) -> dict[str, tuple]:
    """Every path under path with its type, mode and content or link target."""
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        body = os.readlink(p) if kind == "link" else p.read_bytes() if kind == "file" else b""
        out[str(p.relative_to(path))] = (kind, oct(st.st_mode & 0o7777), body)
    return out


@pytest.mark.parametrize("check", [True, False], ids=["check_mode", "for_real"])
def test_keel_actions_report_what_the_builtins_report(tmp_path, case_files, check):
    results = run_tasks(tmp_path, _tasks(case_files), check=check)
    for n, (name, (*_rest, expect_fast)) in enumerate(CASES.items()):
        keel, builtin = results[f"{name} keel"], results[f"{name} builtin"]
        assert keel.get("failed", False) is False and builtin.get("failed", False) is False, (name, keel, builtin)
        assert keel["changed"] == builtin["changed"], (name, keel, builtin)
        assert keel["changed"] is not expect_fast, (name, keel)
        assert fast(keel) is expect_fast, (name, "fast path" if expect_fast else "builtin expected", keel)
        # Same file left behind (in check mode: both unchanged).
        assert _tree(case_files / str(n) / "keel") == _tree(case_files / str(n) / "builtin"), name


def test_a_second_run_takes_the_fast_path_for_every_file_the_first_wrote(tmp_path, case_files):
    tasks = [t for t in _tasks(case_files) if t["name"].endswith(" keel")]
    first = run_tasks(tmp_path, [dict(t) for t in tasks])
    second = run_tasks(tmp_path, [dict(t) for t in tasks])
    for name, result in second.items():
        assert result["changed"] is False, (name, result)
        # The CRLF file keeps its other line; lineinfile leaves it as it is.
        if "CRLF" not in name:
            assert fast(result), (name, "second run not on the fast path", first[name], result)


def test_apt_answers_installed_and_absent_packages_without_the_module(tmp_path):
    if not shutil.which("dpkg-query"):
        pytest.skip("no dpkg on this machine")
    tasks = [
        {"name": "installed", "keel_apt": {"name": ["coreutils", "dpkg"], "state": "present"}},
        {"name": "absent", "keel_apt": {"name": ["keel-no-such-package"], "state": "absent", "purge": True}},
        {"name": "not installed", "keel_apt": {"name": ["keel-no-such-package"], "state": "present"},
         "ignore_errors": True},
        {"name": "a version", "keel_apt": {"name": ["coreutils=0"], "state": "present"}, "ignore_errors": True},
        {"name": "cache always updated", "keel_apt": {"name": ["coreutils"], "update_cache": True}},
    ]
    results = run_tasks(tmp_path, tasks, check=True)
    assert results["installed"]["changed"] is False and fast(results["installed"])
    assert results["absent"]["changed"] is False and fast(results["absent"])
    # Everything else is the module's: it fails on the unknown package and the version.
    assert not fast(results["not installed"]) and results["not installed"].get("failed")
    assert not fast(results["a version"])
    assert not fast(results["cache always updated"])


def test_apt_probe_output_read_as_the_module_would():
    names = ["nftables", "iptables"]
    out = "1000\n900\nnftables\tinstall ok installed\niptables\tdeinstall ok config-files\n"
    assert keel_apt.unchanged(out, ["nftables"], "present", None)
    assert not keel_apt.unchanged(out, names, "present", None)
    assert keel_apt.unchanged(out, ["iptables", "telnet"], "absent", None)
    assert not keel_apt.unchanged(out, ["iptables"], "absent", None, purge=True)  # its configuration is left
    assert keel_apt.unchanged(out, ["nftables"], "present", 3600)  # indexes 100 s old
    assert not keel_apt.unchanged(out, ["nftables"], "present", 60)  # older than cache_valid_time
    assert not keel_apt.unchanged("", ["nftables"], "present", None)
    assert keel_apt.packages({"name": "ab, cd"}) == ["ab", "cd"]
    for other in ({"name": "haproxy=2.6*"}, {"name": "./x.deb"}, {"name": "lib*"}, {"name": []}):
        assert keel_apt.packages(other) is None


def test_systemd_answers_read_as_the_module_would():
    assert keel_systemd_service.unchanged("enabled\nactive\n", True, "started")
    assert keel_systemd_service.unchanged("active\n", None, "started")
    for answer in ("static\nactive\n", "enabled\nactivating\n", "masked\ninactive\n", "enabled\nfailed\n",
                   "Failed to get unit file state\nactive\n", ""):
        assert not keel_systemd_service.unchanged(answer, True, "started"), answer
    assert keel_systemd_service.probe("ssh", True, "started") == (
        "systemctl is-enabled -- ssh; systemctl is-active -- ssh; true")
    # stopped and disabled: the module counts "failed" as not running, and only "disabled" as
    # not enabled that it would leave alone (static, masked, ... go to the builtin)
    assert keel_systemd_service.unchanged("disabled\ninactive\n", False, "stopped")
    assert keel_systemd_service.unchanged("disabled\nfailed\n", False, "stopped")
    for answer in ("enabled\ninactive\n", "disabled\nactive\n", "static\ninactive\n", "masked\ninactive\n",
                   "disabled\ndeactivating\n", "disabled\n"):
        assert not keel_systemd_service.unchanged(answer, False, "stopped"), answer
    # daemon_reload: only when systemd says the unit (or, without a name, no loaded unit) needs
    # none and has loaded exactly the drop-ins under /etc/systemd/system that are on disk
    probe = keel_systemd_service.probe("x", True, "started", True)
    assert "systemctl show -p NeedDaemonReload --value -- x " in probe
    assert "ls -1d /etc/systemd/system/x.service.d/*.conf" in probe
    assert "ls -1d /etc/systemd/system/x.socket.d/*.conf" in keel_systemd_service.probe("x.socket", None, None, True)
    assert "-- '*' " in keel_systemd_service.probe(None, None, None, True)
    same = "reload=0\nloaded=/etc/systemd/system/x.service.d/a.conf \nfiles=/etc/systemd/system/x.service.d/a.conf \n"
    assert keel_systemd_service.unchanged("enabled\nactive\n" + same, True, "started", True)
    assert keel_systemd_service.unchanged(same, None, None, True)
    assert keel_systemd_service.unchanged("reload=0\nloaded=\nfiles=\n", None, None, True)
    for answer in (same.replace("reload=0", "reload=1"),  # a unit file changed since it was loaded
                   "reload=0\nloaded=\nfiles=/etc/systemd/system/x.service.d/a.conf \n",  # a new drop-in
                   "reload=0\nloaded=/etc/systemd/system/x.service.d/a.conf \nfiles=\n",  # a drop-in removed
                   "enabled\nactive\n", "reload=0\n", ""):
        assert not keel_systemd_service.unchanged(answer, None, None, True), answer
    assert not keel_systemd_service.unchanged("enabled\nactive\nreload=0\nloaded=\n", True, "started", True)


def test_apt_updates_the_cache_when_the_module_would():
    """A cache_valid_time alone updates the cache (modules/apt.py): a fresh host then gets its indexes."""
    assert keel_apt.updates_cache({"name": "gpg", "cache_valid_time": 3600})
    assert keel_apt.updates_cache({"name": "gpg", "update_cache": "yes"})
    assert not keel_apt.updates_cache({"name": "gpg", "update_cache": False, "cache_valid_time": 0})
    assert not keel_apt.updates_cache({"name": "gpg"})
    # on a host without indexes: modules/apt.py updates when update_cache is true, whatever the time says
    forced = keel_apt.fresh_host_args({"name": "gpg", "cache_valid_time": 3600})
    assert forced == {"name": "gpg", "update_cache": True, "cache_valid_time": 0}


def test_apt_index_count_read_as_a_number_or_not_at_all():
    assert keel_apt.index_count("0\n") == 0
    assert keel_apt.index_count("12\r\n") == 12  # a -tt SSH session's line end
    assert keel_apt.index_count("") is None
    assert keel_apt.index_count("ls: cannot access\n0") is None  # anything else: not trusted
