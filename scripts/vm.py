#!/usr/bin/env python3
"""Debian 12 VMs with qemu: keel's stand-in for bare metal.

    vm.py build                       build (or reuse) the VM base image
    vm.py up   --lab NAME --count N   boot N VMs on a private network, write an inventory
               [--names a,b,..]       inventory names of the VMs (default vm1, vm2, ...)
               [--forward NAME:PORT:GUEST]  also forward 127.0.0.1:PORT to the VM's GUEST port
    vm.py down --lab NAME             stop them, remove their network and state
    vm.py status [--lab NAME]         what runs

Each VM has two NICs: eth0 on qemu user networking (NAT to the Debian mirror, SSH
forwarded to 127.0.0.1:PORT) and eth1 on a bridge this script creates for the lab
(10.213.<lab>.0/24, no forwarding, no NAT). Acceleration: KVM when a probe boot
shows it works, software emulation (TCG) otherwise; KEEL_VM_ACCEL=kvm|tcg forces it;
KEEL_VM_CPU sets the CPU model under TCG (default max; qemu64 measured about 10 % faster here).
Only the Python standard library is used, so this runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "images" / "vm"
CACHE = Path(os.environ.get("KEEL_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "keel"))
MIRROR = os.environ.get("KEEL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("KEEL_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
STATE = Path(os.environ.get("KEEL_VM_STATE", ROOT / ".lab" / "vm"))
SUITE = "bookworm"
DISK_SIZE = "4G"
USER = "debian"
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[vm {time.monotonic() - T0:5.0f}s] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a tool; its output goes to stderr, since stdout carries this script's JSON."""
    kw.setdefault("stdout", sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------- image
def recipe_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(RECIPE.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(f"{SUITE} {MIRROR} {SECURITY} {DISK_SIZE}".encode())
    image_part = Path(__file__).read_bytes().split(b"# " + b"-" * 64 + b" lab")[0]
    digest.update(image_part)
    return digest.hexdigest()[:16]


def image_dir() -> Path:
    return CACHE / "vm-image" / recipe_hash()


def build(force: bool = False) -> Path:
    target = image_dir()
    if (target / "done").exists() and not force:
        log(f"image up to date: {target}")
        return target
    if os.geteuid() != 0:
        sys.exit("building the VM image needs root (debootstrap, chroot)")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=target.parent))
    tree = work / "tree"
    try:
        packages = [
            line.strip() for line in (RECIPE / "packages.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        log(f"debootstrap {SUITE} with {len(packages)} packages (2-3 minutes)")
        with open(work / "debootstrap.log", "w") as out:
            res = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, str(tree), MIRROR],
                stdout=out, stderr=subprocess.STDOUT,
            )
        if res.returncode:
            sys.stderr.write((work / "debootstrap.log").read_text()[-3000:])
            sys.exit("debootstrap failed")
        shutil.copy(RECIPE / "keel-firstboot.sh", tree / "tmp" / "keel-firstboot.sh")
        shutil.copy(RECIPE / "customize.sh", tree / "tmp" / "customize.sh")
        # /tmp of the chroot being built, not of this host
        run(["chroot", str(tree), "/bin/sh", "/tmp/customize.sh", SUITE, MIRROR, SECURITY])  # noqa: S108
        for name in ("customize.sh", "keel-firstboot.sh"):
            (tree / "tmp" / name).unlink()
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        initrds = sorted((tree / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            sys.exit("no kernel/initrd in the VM tree")
        shutil.copy(kernels[-1], work / "vmlinuz")
        shutil.copy(initrds[-1], work / "initrd.img")
        log("packing the root filesystem (mkfs.ext4 -d)")
        run(["mkfs.ext4", "-q", "-F", "-L", "keelroot", "-d", str(tree), str(work / "rootfs.img"), DISK_SIZE])
        shutil.rmtree(tree)
        (work / "done").write_text(recipe_hash())
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
        for old in target.parent.iterdir():  # keep only the current recipe's image
            if old != target and not old.name.startswith("build-"):
                shutil.rmtree(old, ignore_errors=True)
        log(f"image built: {target}")
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- lab
def lab_index(lab: str) -> int:
    """A stable /24 per lab name, so two labs never share addresses or device names."""
    return 100 + zlib.crc32(lab.encode()) % 100


def dev_names(lab: str, count: int) -> tuple[str, list[str]]:
    tag = f"{lab_index(lab)}"
    return f"kbr{tag}", [f"kt{tag}-{i}" for i in range(1, count + 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def detect_accel() -> str:
    forced = os.environ.get("KEEL_VM_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    cached = CACHE / "vm-accel"
    if cached.exists():
        return cached.read_text().strip()
    accel = "tcg"
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        # Probe: boot the kernel with no root disk; it must reach its panic quickly.
        img = build()
        log("probing KVM (a kernel boot that must panic within 20 s)")
        cmd = ["qemu-system-x86_64", "-accel", "kvm", "-m", "256", "-nographic", "-no-reboot",
               "-kernel", str(img / "vmlinuz"), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"]
        try:
            out = subprocess.run(cmd, capture_output=True, timeout=20, text=True, errors="replace")
            if "Kernel panic" in out.stdout or "VFS" in out.stdout:
                accel = "kvm"
        except subprocess.TimeoutExpired:
            pass
    log(f"acceleration: {accel}")
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(accel)
    return accel


def lab_dir(lab: str) -> Path:
    return STATE / lab


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, stderr=subprocess.DEVNULL if not check else None)


def bridge_forwarding(bridge: str, allow: bool) -> None:
    """Let frames between the lab's VMs cross the bridge.

    Docker loads br_netfilter and sets the FORWARD policy to DROP, which would also
    drop bridged traffic between VMs; one rule scoped to this bridge lets it pass.
    """
    if not shutil.which("iptables"):
        return
    rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT", "-m", "comment", "--comment", "keel-vm-lab"]
    if allow:
        subprocess.run(["iptables", "-I", *rule], check=True)
    else:
        while subprocess.run(["iptables", "-D", *rule], capture_output=True).returncode == 0:
            pass


def up(lab: str, count: int, memory: int, cpus: int, timeout: int, net: str | None = None,
       names: list[str] | None = None, forwards: dict[str, list[tuple[int, int]]] | None = None) -> dict:
    if os.geteuid() != 0:
        sys.exit("starting VMs needs root (bridge and tap devices)")
    img = build()
    accel = detect_accel()
    state = lab_dir(lab)
    if (state / "lab.json").exists():
        sys.exit(f"lab {lab} already runs; 'vm.py down --lab {lab}' first")
    state.mkdir(parents=True, exist_ok=True)
    key = state / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"keel-{lab}", "-f", str(key)])
    pubkey = key.with_suffix(".pub").read_text().strip()
    net = net or f"10.213.{lab_index(lab)}"
    bridge, taps = dev_names(lab, count)
    ip("link", "add", bridge, "type", "bridge")
    ip("addr", "add", f"{net}.1/24", "dev", bridge)
    ip("link", "set", bridge, "up")
    bridge_forwarding(bridge, allow=True)
    info = {"lab": lab, "bridge": bridge, "accel": accel, "key": str(key), "vms": []}
    names = names or [f"vm{i}" for i in range(1, count + 1)]
    forwards = forwards or {}
    for i, tap in enumerate(taps, start=1):
        host = names[i - 1]
        name = f"{lab}-{host}"
        ip("tuntap", "add", "dev", tap, "mode", "tap")
        ip("link", "set", tap, "master", bridge)
        ip("link", "set", tap, "up")
        disk = state / f"{name}.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(img / "rootfs.img"), str(disk)])
        seed = state / f"{name}.seed"
        private_ip = f"{net}.{10 + i}"
        seed_doc = {
            "instance_id": f"{name}-{int(time.time())}",
            "hostname": name,
            "private_cidr": f"{private_ip}/24",
            "user": USER,
            "authorized_keys": [pubkey],
        }
        seed.write_bytes(json.dumps(seed_doc).encode().ljust(65536, b"\0"))
        port = free_port()
        cmd = [
            "qemu-system-x86_64", "-name", name, "-accel", accel, "-m", str(memory), "-smp", str(cpus),
            "-cpu", "host" if accel == "kvm" else os.environ.get("KEEL_VM_CPU", "max"),
            "-kernel", str(img / "vmlinuz"), "-initrd", str(img / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 audit=1 audit_backlog_limit=8192",
            "-drive", f"file={disk},if=virtio,format=qcow2",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
            "-netdev", ",".join([f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
                                 *(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in forwards.get(host, []))]),
            "-device", f"virtio-net-pci,netdev=n0,mac=52:54:00:4b:{i:02x}:01",
            "-netdev", f"tap,id=n1,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n1,mac=52:54:00:4b:{i:02x}:02",
            "-display", "none", "-serial", f"file:{state / (name + '.console')}",
            "-pidfile", str(state / f"{name}.pid"), "-daemonize",
        ]
        run(cmd)
        info["vms"].append({"name": name, "host": host, "port": port, "private_ip": private_ip, "tap": tap,
                            "forwards": [f"127.0.0.1:{h}->{g}" for h, g in forwards.get(host, [])]})
        log(f"{name}: booting ({accel}), ssh 127.0.0.1:{port}, private {private_ip}")
    (state / "lab.json").write_text(json.dumps(info, indent=2))
    write_inventory(state, info)
    wait_ssh(state, info, timeout)
    return info


def ssh_base(info: dict, vm: dict) -> list[str]:
    return ["ssh", "-i", info["key"], "-p", str(vm["port"]), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", f"{USER}@127.0.0.1"]


def wait_ssh(state: Path, info: dict, timeout: int) -> None:
    deadline = time.monotonic() + timeout
    pending = list(info["vms"])
    while pending:
        for vm in list(pending):
            res = subprocess.run([*ssh_base(info, vm), "true"], capture_output=True)
            if res.returncode == 0:
                log(f"{vm['name']}: ssh answers")
                pending.remove(vm)
        if pending and time.monotonic() > deadline:
            for vm in pending:
                console = state / f"{vm['name']}.console"
                tail = console.read_text(errors="replace")[-2000:] if console.exists() else ""
                log(f"{vm['name']}: no ssh after {timeout}s; console tail:\n{tail}")
            sys.exit(1)
        if pending:
            time.sleep(2)


def write_inventory(state: Path, info: dict) -> None:
    hosts = {}
    for vm in info["vms"]:
        hosts[vm.get("host", vm["name"])] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": vm["port"],
            "ansible_user": USER,
            "ansible_become": True,
            "ansible_ssh_private_key_file": info["key"],
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "keel_private_ip": vm["private_ip"],
        }
    inventory = {"all": {"children": {"vms": {"hosts": hosts}}}}
    # JSON is valid YAML: Ansible's YAML inventory plugin reads it.
    (state / "inventory.yml").write_text(json.dumps(inventory, indent=2) + "\n")


def qemu_pids(state: Path) -> list[int]:
    """Every qemu process whose command line points into this lab's state dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"qemu-system" in cmdline[0] and any(str(state).encode() in arg for arg in cmdline):
            pids.append(int(proc.name))
    return pids


def down(lab: str) -> None:
    state = lab_dir(lab)
    info = json.loads((state / "lab.json").read_text()) if (state / "lab.json").exists() else None
    pids = qemu_pids(state)
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while qemu_pids(state) and time.monotonic() < deadline:
        time.sleep(0.3)
    for pid in qemu_pids(state):
        os.kill(pid, signal.SIGKILL)
    count = len(info["vms"]) if info else 16
    bridge, taps = dev_names(lab, count)
    bridge_forwarding(bridge, allow=False)
    for dev in [*taps, bridge]:
        ip("link", "del", dev, check=False)
    shutil.rmtree(state, ignore_errors=True)
    log(f"lab {lab}: stopped {len(pids)} VM(s), removed {bridge} and its taps")


def lab_devices(lab: str) -> list[str]:
    bridge, _ = dev_names(lab, 0)
    prefix = bridge.replace("kbr", "kt") + "-"
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line]
    return [n for n in names if n == bridge or n.startswith(prefix)]


def status(lab: str | None, as_json: bool = False) -> int:
    if as_json:
        if not lab:
            sys.exit("--json needs --lab")
        state = lab_dir(lab)
        print(json.dumps({"lab": lab, "processes": len(qemu_pids(state)), "devices": lab_devices(lab),
                          "state_exists": state.exists()}))
        return 0
    labs = [lab] if lab else sorted(p.name for p in STATE.iterdir()) if STATE.exists() else []
    for name in labs:
        state = lab_dir(name)
        print(f"{name}: {len(qemu_pids(state))} qemu process(es), state {state}")
    return 0


def parse_names_and_forwards(names_arg: str | None, forward_args: list[str],
                             count: int) -> tuple[list[str] | None, dict[str, list[tuple[int, int]]]]:
    """Check --names and --forward before anything is created; exit with what to fix."""
    names = None
    if names_arg is not None:
        names = names_arg.split(",")
        if len(names) != count or len(set(names)) != count:
            sys.exit(f"--names must list {count} different names, one per VM (got {names_arg!r})")
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}", name):
                sys.exit(f"--names: {name!r} is not a host name (lower-case letters, digits, '-')")
    known = names or [f"vm{i}" for i in range(1, count + 1)]
    forwards: dict[str, list[tuple[int, int]]] = {}
    used: set[int] = set()
    for spec in forward_args:
        match = re.fullmatch(r"([a-z][a-z0-9-]*):(\d{1,5}):(\d{1,5})", spec)
        if not match or match.group(1) not in known:
            sys.exit(f"--forward {spec!r}: use NAME:PORT:GUEST with NAME one of {', '.join(known)}")
        host_port, guest_port = int(match.group(2)), int(match.group(3))
        if not (1024 <= host_port <= 65535 and 1 <= guest_port <= 65535) or host_port in used:
            sys.exit(f"--forward {spec!r}: PORT must be a free port from 1024 to 65535, once per lab")
        used.add(host_port)
        forwards.setdefault(match.group(1), []).append((host_port, guest_port))
    return names, forwards


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--force", action="store_true")
    u = sub.add_parser("up")
    u.add_argument("--lab", default="vmlab")
    u.add_argument("--count", type=int, default=1)
    u.add_argument("--memory", type=int, default=2048, help="MiB per VM")
    u.add_argument("--cpus", type=int, default=1)
    u.add_argument("--timeout", type=int, default=600, help="seconds to wait for ssh")
    u.add_argument("--net", help="first three octets of the lab's private /24 (default 10.213.<from lab name>)")
    u.add_argument("--names", help="comma-separated inventory names of the VMs, one per VM (default vm1, vm2, ...)")
    u.add_argument("--forward", action="append", default=[], metavar="NAME:PORT:GUEST",
                   help="forward 127.0.0.1:PORT on this machine to port GUEST of VM NAME (repeatable)")
    d = sub.add_parser("down")
    d.add_argument("--lab", default="vmlab")
    s = sub.add_parser("status")
    s.add_argument("--lab")
    s.add_argument("--json", action="store_true", help="machine-readable: processes, devices, state")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.force)
    elif args.cmd == "up":
        if not 1 <= args.count <= 16:
            sys.exit("--count must be between 1 and 16")
        if args.net and not re.fullmatch(r"(10\.\d{1,3}|192\.168|172\.(1[6-9]|2\d|3[01]))\.\d{1,3}", args.net):
            sys.exit("--net must be the first three octets of a private /24, for example 10.213.50")
        names, forwards = parse_names_and_forwards(args.names, args.forward, args.count)
        info = up(args.lab, args.count, args.memory, args.cpus, args.timeout, args.net, names, forwards)
        print(json.dumps(info))
        print(f"inventory: {lab_dir(args.lab) / 'inventory.yml'}", file=sys.stderr)
    elif args.cmd == "down":
        down(args.lab)
    else:
        return status(args.lab, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
