"""The lifecycle lock (issue 23): plugins/modules/keel_lifecycle_lock.py and its wiring.

The module's logic runs directly on temporary files (run()); two processes racing
for the lock show the flock decides; the playbook tests run the module through
ansible-playbook (the library path of ansible.cfg) with the lock host on a local
connection, through playbooks/lifecycle-lock.yml and the lock plays of deploy.yml
and rollback.yml.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "modules"))

import keel_lifecycle_lock as lock  # noqa: E402

PLAYBOOK = str(ROOT / ".venv" / "bin" / "ansible-playbook")
NOW = 1_800_000_000


@pytest.fixture
def paths(tmp_path):
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    return tmp_path / "keel" / "lifecycle-lock.json", textfile


def take(path, owner, textfile=None, now=NOW, **kw):
    return lock.run(str(path), "acquired", owner, kw.pop("purpose", "deploy.yml"), kw.pop("ttl", 600),
                    kw.pop("brk", False), str(textfile) if textfile else None, now=now, **kw)


def give(path, owner, textfile=None, now=NOW, **kw):
    return lock.run(str(path), "released", owner, "", 600, kw.pop("brk", False),
                    str(textfile) if textfile else None, now=now, **kw)


def record(path):
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------ the module's logic
def test_a_free_lock_is_taken_and_its_directory_created(paths):
    path, textfile = paths
    res = take(path, "alice@ctl", textfile)
    assert res["changed"] and res["held"] and res["previous"] == {}
    assert record(path) == {"owner": "alice@ctl", "purpose": "deploy.yml", "acquired": NOW, "expires": NOW + 600}
    assert res["lock"] == record(path)
    assert oct(path.parent.stat().st_mode & 0o777) == "0o755"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "a temporary file was left behind"


def test_the_same_owner_reenters_without_a_change_and_pushes_the_expiry_out(paths):
    path, _ = paths
    take(path, "alice@ctl")
    res = take(path, "alice@ctl", purpose="rollback.yml", now=NOW + 100)
    assert not res["changed"]
    assert record(path) == {"owner": "alice@ctl", "purpose": "rollback.yml", "acquired": NOW, "expires": NOW + 700}


def test_another_owner_is_refused_with_who_what_since_when_and_how_to_break(paths):
    path, _ = paths
    take(path, "alice@ctl", purpose="deploy.yml")
    before = path.read_text()
    with pytest.raises(lock.LockError) as err:
        take(path, "keel-autoscaler", purpose="add-node.yml", now=NOW + 125)
    msg = str(err.value)
    for part in ("alice@ctl holds it", "for deploy.yml", "(2m05s ago)", "expires in 7m55s",
                 "-e keel_lifecycle_lock_break=true", "wait until it ends"):
        assert part in msg, msg
    assert err.value.record["owner"] == "alice@ctl"
    assert path.read_text() == before


def test_an_expired_lock_is_taken(paths):
    path, _ = paths
    take(path, "alice@ctl", ttl=60)
    res = take(path, "keel-autoscaler", now=NOW + 60)
    assert res["changed"] and res["previous"]["owner"] == "alice@ctl" and "broken" not in res
    assert record(path)["owner"] == "keel-autoscaler" and record(path)["acquired"] == NOW + 60


def test_an_expired_lock_of_the_same_owner_counts_from_now(paths):
    path, _ = paths
    take(path, "alice@ctl", ttl=60)
    res = take(path, "alice@ctl", now=NOW + 61)
    assert res["changed"] and record(path)["acquired"] == NOW + 61


def test_break_takes_a_lock_another_owner_holds(paths):
    path, _ = paths
    take(path, "alice@ctl")
    res = take(path, "bob@ctl", brk=True, now=NOW + 5)
    assert res["changed"] and res["broken"]["owner"] == "alice@ctl"
    assert record(path)["owner"] == "bob@ctl"


def test_release_by_another_owner_is_refused_and_the_lock_stays(paths):
    path, textfile = paths
    take(path, "alice@ctl", textfile)
    before = path.read_text()
    with pytest.raises(lock.LockError, match=r"cannot release the keel lifecycle lock .* alice@ctl holds it"):
        give(path, "bob@ctl", textfile)
    assert path.read_text() == before
    assert 'owner="alice@ctl"' in (textfile / "keel_lifecycle_lock.prom").read_text()


def test_release_by_the_owner_by_break_and_of_a_free_or_expired_lock(paths):
    path, textfile = paths
    take(path, "alice@ctl", textfile)
    res = give(path, "alice@ctl", textfile)
    assert res["changed"] and not res["held"] and not path.exists()
    assert not give(path, "alice@ctl", textfile)["changed"], "releasing a free lock is fine and changes nothing"
    take(path, "alice@ctl")
    assert give(path, "bob@ctl", brk=True)["broken"]["owner"] == "alice@ctl" and not path.exists()
    take(path, "alice@ctl", ttl=10)
    assert give(path, "bob@ctl", now=NOW + 10)["changed"] and not path.exists()


def test_the_textfile_says_who_holds_it_and_is_zero_when_free(paths):
    path, textfile = paths
    prom = textfile / "keel_lifecycle_lock.prom"
    take(path, 'ev"il\\op\n', textfile, purpose="deploy.yml")
    text = prom.read_text()
    assert 'keel_lifecycle_lock_held{owner="ev\\"il\\\\op\\n",purpose="deploy.yml"} 1\n' in text
    assert f"keel_lifecycle_lock_acquired_timestamp_seconds {NOW}\n" in text
    assert f"keel_lifecycle_lock_expires_timestamp_seconds {NOW + 600}\n" in text
    assert "# TYPE keel_lifecycle_lock_held gauge" in text
    give(path, 'ev"il\\op\n', textfile)
    text = prom.read_text()
    assert 'keel_lifecycle_lock_held{owner="",purpose=""} 0\n' in text
    assert "keel_lifecycle_lock_expires_timestamp_seconds 0\n" in text
    assert [p.name for p in textfile.iterdir()] == ["keel_lifecycle_lock.prom"], "temporary files left behind"


def test_the_textfile_is_parsed_by_prometheus_rules(paths):
    """The exposition format the textfile collector accepts: every sample line is name{labels} value."""
    path, textfile = paths
    take(path, "alice@ctl", textfile)
    for line in (textfile / "keel_lifecycle_lock.prom").read_text().splitlines():
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \d+', line)


def test_no_textfile_without_the_collector_directory(tmp_path):
    path = tmp_path / "keel" / "lifecycle-lock.json"
    take(path, "alice@ctl", tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_check_mode_reads_and_refuses_but_writes_nothing(paths):
    path, textfile = paths
    res = take(path, "alice@ctl", textfile, check=True)
    assert res["changed"] and not path.parent.exists() and not list(textfile.iterdir())
    take(path, "alice@ctl", textfile)
    before, prom = path.read_text(), (textfile / "keel_lifecycle_lock.prom").read_text()
    with pytest.raises(lock.LockError, match="alice@ctl holds it"):
        take(path, "bob@ctl", textfile, check=True, now=NOW + 1)
    assert give(path, "alice@ctl", textfile, check=True)["changed"]
    assert not take(path, "alice@ctl", textfile, check=True, now=NOW + 50)["changed"]
    assert path.read_text() == before and (textfile / "keel_lifecycle_lock.prom").read_text() == prom


def test_a_corrupt_record_stops_until_broken(paths):
    path, _ = paths
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(lock.LockError, match="is not a lifecycle lock record"):
        take(path, "alice@ctl")
    assert take(path, "alice@ctl", brk=True)["changed"] and record(path)["owner"] == "alice@ctl"


def test_refuses_an_empty_owner_and_a_ttl_below_one(paths):
    path, _ = paths
    with pytest.raises(lock.LockError, match="owner is empty"):
        take(path, "")
    with pytest.raises(lock.LockError, match="ttl must be a positive"):
        take(path, "alice@ctl", ttl=0)


# ------------------------------------------------------------------ two processes at once
def _contend(path, owner, barrier, results, flock):
    lock._between_read_and_write = lambda: time.sleep(0.3)  # a wide window between reading and writing
    if not flock:
        lock.fcntl.flock = lambda *_: None
    barrier.wait()
    try:
        lock.run(str(path), "acquired", owner, "race", 600, False, None, now=NOW)
        results.put((owner, "won"))
    except lock.LockError as exc:
        results.put((owner, str(exc)))


def race(path, flock=True):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(path, owner, barrier, results, flock)) for owner in ("one", "two")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    return dict(results.get(timeout=5) for _ in procs)


def test_two_processes_at_once_one_wins_the_other_is_told_who(tmp_path):
    path = tmp_path / "keel" / "lifecycle-lock.json"
    path.parent.mkdir()
    outcome = race(path)
    winners = [owner for owner, said in outcome.items() if said == "won"]
    assert len(winners) == 1, outcome
    loser = ({"one", "two"} - set(winners)).pop()
    assert f"{winners[0]} holds it" in outcome[loser]
    assert record(path)["owner"] == winners[0]


def test_the_race_test_catches_a_lock_without_flock(tmp_path):
    """Control: without the flock both processes win the same window (so the test above has teeth)."""
    path = tmp_path / "keel" / "lifecycle-lock.json"
    path.parent.mkdir()
    assert set(race(path, flock=False).values()) == {"won"}


# ------------------------------------------------------------------ through ansible-playbook
def inventory(tmp_path: Path, **extra) -> Path:
    """Every host on a local connection; the lock and the textfile under tmp_path."""
    (tmp_path / "textfile").mkdir(exist_ok=True)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}

    def at(last: int) -> dict:  # validate.yml refuses two hosts with one keel_private_ip
        return {**local, "keel_private_ip": f"127.0.0.{last}"}
    inv = {"all": {
        "vars": {"ansible_become": False, "keel_lifecycle_lock_path": str(tmp_path / "keel" / "lock.json"),
                 "keel_lifecycle_lock_textfile_dir": str(tmp_path / "textfile"), **extra},
        "children": {"loadbalancers": {"hosts": {"lb1": at(11)}},
                     "app": {"hosts": {"app1": at(21), "app2": at(22)}},
                     "monitoring": {"hosts": {"mon1": at(31)}}}}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inv))
    return path


def play(tmp_path: Path, playbook: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", USER="tester")
    env.pop("AWX_JOB_ID", None)
    return subprocess.run([PLAYBOOK, "-i", str(inventory(tmp_path)), f"playbooks/{playbook}", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_playbook_takes_shows_refuses_breaks_and_releases(tmp_path):
    held = tmp_path / "keel" / "lock.json"
    res = play(tmp_path, "lifecycle-lock.yml", "-e", "keel_lifecycle_lock_state=acquired", "--limit", "app1")
    assert res.returncode == 0, res.stdout[-3000:]
    # --limit app1 left the lock host (mon1) out: delegation reaches it all the same
    assert "app1 -> mon1" in res.stdout
    assert record(held)["owner"] == f"tester@{socket.gethostname()}"
    assert record(held)["purpose"] == "lifecycle-lock.yml"
    assert "mon1: lock of tester@" in play(tmp_path, "lifecycle-lock.yml").stdout

    refused = play(tmp_path, "lifecycle-lock.yml", "-e", "keel_lifecycle_lock_state=acquired",
                   "-e", "keel_lifecycle_lock_owner=keel-autoscaler")
    assert refused.returncode != 0
    assert f"tester@{socket.gethostname()} holds it for lifecycle-lock.yml" in refused.stdout
    assert "-e keel_lifecycle_lock_break=true" in refused.stdout

    broke = play(tmp_path, "lifecycle-lock.yml", "-e", "keel_lifecycle_lock_state=acquired",
                 "-e", "keel_lifecycle_lock_owner=keel-autoscaler", "-e", "keel_lifecycle_lock_break=true")
    assert broke.returncode == 0, broke.stdout[-3000:]
    assert record(held)["owner"] == "keel-autoscaler"
    assert 'owner="keel-autoscaler"' in (tmp_path / "textfile" / "keel_lifecycle_lock.prom").read_text()

    released = play(tmp_path, "lifecycle-lock.yml", "-e", "keel_lifecycle_lock_state=released",
                    "-e", "keel_lifecycle_lock_owner=keel-autoscaler")
    assert released.returncode == 0, released.stdout[-3000:]
    assert not held.exists()
    assert "mon1: free" in play(tmp_path, "lifecycle-lock.yml").stdout


def test_under_awx_the_owner_is_the_awx_user_and_the_purpose_names_the_job(tmp_path):
    res = play(tmp_path, "lifecycle-lock.yml", "-e", "keel_lifecycle_lock_state=acquired",
               "-e", "awx_job_id=42", "-e", "awx_user_name=alice")
    assert res.returncode == 0, res.stdout[-3000:]
    assert record(tmp_path / "keel" / "lock.json") | {"acquired": 0, "expires": 0} == {
        "owner": "alice@awx", "purpose": "lifecycle-lock.yml (AWX job 42)", "acquired": 0, "expires": 0}


@pytest.mark.parametrize("playbook, first_change", [("deploy.yml", "Rolling deploy"),
                                                    ("rollback.yml", "Rolling rollback")])
def test_a_held_lock_stops_the_playbook_before_any_host_changes(tmp_path, playbook, first_change):
    take(tmp_path / "keel" / "lock.json", "keel-autoscaler", purpose="add-node.yml", now=time.time(), ttl=600)
    for check in ([], ["--check"]):
        res = play(tmp_path, playbook, *check)
        assert res.returncode != 0
        assert "keel-autoscaler holds it for add-node.yml" in res.stdout, res.stdout[-3000:]
        assert f"PLAY [{first_change}]" not in res.stdout, "the playbook went on past the lock"
        assert record(tmp_path / "keel" / "lock.json")["owner"] == "keel-autoscaler"


@pytest.mark.parametrize("playbook", ["deploy.yml", "rollback.yml"])
def test_a_tagged_run_takes_the_lock_and_releases_it_at_the_end(tmp_path, playbook):
    """--tags selects none of the playbook's work here: the lock plays (tagged always) still run."""
    res = play(tmp_path, playbook, "--tags", "no_such_tag", "-e", "keel_lifecycle_lock_release=false")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "TASK [Lifecycle lock acquired]" in res.stdout
    assert record(tmp_path / "keel" / "lock.json")["purpose"] == playbook, "keel_lifecycle_lock_release=false keeps it"
    res = play(tmp_path, playbook, "--tags", "no_such_tag")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "TASK [Lifecycle lock released]" in res.stdout
    assert not (tmp_path / "keel" / "lock.json").exists()
    recap = re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", res.stdout, re.M)
    assert recap and set(recap) == {"0"}, "the lock is bookkeeping: a converged run still reports changed=0"


def test_an_unreachable_lock_host_stops_the_playbook_before_any_host_changes(tmp_path, monkeypatch):
    real = inventory

    def with_mon1_unreachable(tmp: Path, **extra) -> Path:
        path = real(tmp, **extra)
        inv = yaml.safe_load(path.read_text())
        inv["all"]["children"]["monitoring"]["hosts"]["mon1"] = {
            "ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 1,
            "keel_private_ip": "192.0.2.31"}
        path.write_text(yaml.safe_dump(inv))
        return path

    monkeypatch.setattr(sys.modules[__name__], "inventory", with_mon1_unreachable)
    res = play(tmp_path, "deploy.yml")
    assert res.returncode != 0
    assert "UNREACHABLE" in res.stdout
    # the later plays start, but no host is left to run them
    assert "TASK [Check the release and this host's settings" not in res.stdout, res.stdout[-3000:]
    assert "TASK [Lifecycle lock released]" not in res.stdout
