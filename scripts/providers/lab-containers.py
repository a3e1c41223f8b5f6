#!/usr/bin/env python3
"""A `command` provider for keel-autoscaler that creates lab hosts as systemd containers.

    lab-containers.py provision --id REQUEST_ID   # prints {"name", "ansible_host", "keel_private_ip", ...}
    lab-containers.py release NAME                # removes the container
    lab-containers.py capacity                    # how many more it may create

The same request id always gives the same host (the container carries it as a label), so a
retry after a crash creates nothing new. Containers join the lab's Docker network
(KEEL_LAB_NETWORK, default keel-lab, subnet KEEL_LAB_SUBNET 172.30.80.0/24) with an address
from KEEL_PROVIDER_FIRST (default .100) up to KEEL_PROVIDER_MAX hosts (default 4), and are run
exactly as playbooks/lab-create.yml runs the lab's own hosts (no --privileged).
An operator's provider does the same with a cloud CLI or an API: print the host, exit 0; exit
non-zero with a message on stderr when it cannot.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys

NETWORK = os.environ.get("KEEL_LAB_NETWORK", "keel-lab")
SUBNET = ipaddress.ip_network(os.environ.get("KEEL_LAB_SUBNET", "172.30.80.0/24"))
FIRST = int(os.environ.get("KEEL_PROVIDER_FIRST", "100"))
MAX = int(os.environ.get("KEEL_PROVIDER_MAX", "4"))
IMAGE = os.environ.get("KEEL_LAB_IMAGE", "keel/debian12:latest")
PREFIX = os.environ.get("KEEL_PROVIDER_PREFIX", "keel-lab-")
LABEL = "org.keel.autoscaler.request"


def docker(*args: str, check: bool = True) -> str:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300, check=False)
    if check and res.returncode != 0:
        sys.exit(f"docker {args[0]}: {res.stderr.strip()}")
    return res.stdout


def ours() -> dict[str, dict[str, str]]:
    """container name -> {request, ip} of the containers this provider created."""
    out = docker("ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}")
    found = {}
    for name in out.split():
        info = json.loads(docker("inspect", name))[0]
        ip = (info["NetworkSettings"]["Networks"].get(NETWORK) or {}).get("IPAddress", "")
        found[name] = {"request": info["Config"]["Labels"].get(LABEL, ""), "ip": ip}
    return found


def host(name: str, ip: str) -> dict[str, str]:
    return {"name": name.removeprefix(PREFIX), "ansible_host": name, "keel_private_ip": ip,
            "ansible_connection": "community.docker.docker"}


def provision(request: str) -> int:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", request):
        sys.exit(f"bad request id {request!r}")
    existing = ours()
    for name, info in existing.items():
        if info["request"] == request:
            print(json.dumps(host(name, info["ip"])))
            return 0
    if len(existing) >= MAX:
        sys.exit(f"capacity reached: {len(existing)} of {MAX} hosts exist")
    used = {info["ip"] for info in existing.values()}
    ips = [str(SUBNET.network_address + i) for i in range(FIRST, FIRST + MAX)]
    ip = next(a for a in ips if a not in used)
    name = f"{PREFIX}auto{ip.rsplit('.', 1)[1]}"
    docker("run", "-d", "--name", name, "--hostname", name.removeprefix(PREFIX), "--label", f"{LABEL}={request}",
           "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN", "--security-opt", "seccomp=unconfined",
           "--security-opt", "apparmor=unconfined", "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
           "--tmpfs", "/run", "--tmpfs", "/run/lock", "--network", NETWORK, "--ip", ip, IMAGE,
           "/lib/systemd/systemd")
    state = docker("exec", name, "systemctl", "is-system-running", "--wait", check=False).strip()
    if state not in ("running", "degraded"):
        docker("rm", "-f", name, check=False)
        sys.exit(f"{name}: systemd did not start ({state})")
    print(json.dumps(host(name, ip)))
    return 0


def release(name: str) -> int:
    container = name if name.startswith(PREFIX) else PREFIX + name
    if container not in ours():
        print(f"{name}: not a host of this provider (nothing to release)", file=sys.stderr)
        return 0
    docker("rm", "-f", container)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "provision" and argv[1] == "--id":
        return provision(argv[2])
    if len(argv) == 2 and argv[0] == "release":
        return release(argv[1])
    if argv == ["capacity"]:
        print(max(0, MAX - len(ours())))
        return 0
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
