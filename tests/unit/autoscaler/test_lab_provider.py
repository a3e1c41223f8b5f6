"""scripts/providers/lab-containers.py with a recording `docker` on PATH: the same request id gives
the same host, addresses come from the provider's range, capacity is enforced, release removes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROVIDER = Path(__file__).resolve().parents[3] / "scripts" / "providers" / "lab-containers.py"

FAKE_DOCKER = r'''#!/usr/bin/env python3
import json, os, sys
db = os.environ["FAKE_DOCKER_DB"]
state = json.load(open(db)) if os.path.exists(db) else {}
args = sys.argv[1:]
with open(db + ".log", "a") as log:
    log.write(" ".join(args) + "\n")
if args[0] == "ps":
    print("\n".join(state))
elif args[0] == "inspect":
    c = state[args[1]]
    print(json.dumps([{"Config": {"Labels": {"org.keel.autoscaler.request": c["request"]}},
                       "NetworkSettings": {"Networks": {"keel-lab": {"IPAddress": c["ip"]}}}}]))
elif args[0] == "run":
    name = args[args.index("--name") + 1]
    state[name] = {"request": args[args.index("--label") + 1].split("=", 1)[1], "ip": args[args.index("--ip") + 1]}
elif args[0] == "exec":
    print("running")
elif args[0] == "rm":
    state.pop(args[-1], None)
json.dump(state, open(db, "w"))
'''


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DOCKER_DB": str(tmp_path / "db.json"),
            "KEEL_PROVIDER_MAX": "2"}


def provider(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROVIDER), *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_provision_is_idempotent_by_request_and_bounded(env):
    first = provider(env, "provision", "--id", "req-a")
    assert first.returncode == 0, first.stderr
    host = json.loads(first.stdout)
    assert host == {"name": "auto100", "ansible_host": "keel-lab-auto100", "keel_private_ip": "172.30.80.100",
                    "ansible_connection": "community.docker.docker"}
    again = provider(env, "provision", "--id", "req-a")
    assert json.loads(again.stdout) == host  # a retry creates nothing new
    assert json.loads(provider(env, "provision", "--id", "req-b").stdout)["keel_private_ip"] == "172.30.80.101"
    assert provider(env, "capacity").stdout.strip() == "0"
    full = provider(env, "provision", "--id", "req-c")
    assert full.returncode != 0 and "capacity reached" in full.stderr
    runs = [line for line in Path(env["FAKE_DOCKER_DB"] + ".log").read_text().splitlines() if line.startswith("run")]
    assert len(runs) == 2 and all("--privileged" not in r and "--cap-add SYS_ADMIN" in r for r in runs)


def test_release_and_bad_input(env):
    provider(env, "provision", "--id", "req-a")
    assert provider(env, "release", "auto100").returncode == 0
    assert provider(env, "capacity").stdout.strip() == "2"
    assert provider(env, "release", "app1").returncode == 0  # not ours: nothing removed
    assert provider(env, "provision", "--id", "bad id;rm").returncode != 0
    assert provider(env, "frobnicate").returncode != 0
