"""Converge-time benchmark (issue 6): a fresh site.yml with 2, 4 and 8 app hosts.

Run it through scripts/bench-converge.sh (which sets up the controller and
builds the app release first):

    scripts/bench-converge.sh [--app-hosts 2,4,8] [--rerun] [--keep-going]

For each N it generates an inventory under .lab/converge-bench/n<N>/inventory:
hosts cb-lb1, cb-app1..cb-appN and cb-mon1 in the lab's groups (lab >
converge_bench > loadbalancers/app/monitoring), the lab's group_vars linked in,
and the group converge_bench overriding what must differ: its own Docker network
and subnet (keel-converge-bench, 172.30.90.0/24; a deeper group's group_vars win
over those of its parent group lab), its own lab CA, stats password, fact cache
and artifact cache under .lab/converge-bench/n<N>/ (so every N starts from the
same nothing), and no published ports (it never collides with a running lab).
Then: playbooks/lab-create.yml (containers keel-lab-cb-*), playbooks/site.yml
timed (the figure), a check that the stack serves (every backend server UP in
HAProxy's stats on the load balancer's private address, and an HTTPS request
through it verified against the run's CA), optionally site.yml once more
(--rerun: seconds and changed count), and playbooks/lab-destroy.yml in a
finally block, also on failure, timeout or Ctrl-C.

Every ansible-playbook call has a timeout and the whole run a total bound.
Writes reports/bench/converge-<UTC time>/{report.md,figures.json,*.log}.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import contextlib
import csv
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Network, ip_address, ip_network
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LAB_GROUP_VARS = ROOT / "inventories" / "lab" / "group_vars"
BENCH_ROOT = ROOT / ".lab" / "converge-bench"
REPORTS = ROOT / "reports" / "bench"
VENV_BIN = Path(os.environ.get("KEEL_VENV", str(ROOT / ".venv"))) / "bin"

NETWORK = "keel-converge-bench"
SUBNET = ip_network("172.30.90.0/24")
HOST_PREFIX = "cb-"
CONTAINER_PREFIX = "keel-lab-"  # playbooks/lab-create.yml and group_vars/lab/connection.yml name them so
BENCH_GROUP = "converge_bench"
LB_HOST, MON_HOST = f"{HOST_PREFIX}lb1", f"{HOST_PREFIX}mon1"
LB_IP, MON_IP, FIRST_APP_IP = 11, 31, 101  # last octet; app hosts .101 .. .(100 + N)
MAX_APP_HOSTS = 100
DEFAULT_APP_HOSTS = (2, 4, 8)
HAPROXY_BACKEND = "app"  # roles/haproxy/templates/etc/haproxy/haproxy.cfg.j2: "backend app"


class BenchError(Exception):
    """A step failed; the message says which and why."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP: handled like Ctrl-C (the finally blocks clean up)."""


# ------------------------------------------------------------------ inventory


def parse_app_hosts(text: str) -> list[int]:
    """'2,4,8' -> [2, 4, 8] (sorted, unique); each between 1 and MAX_APP_HOSTS."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--app-hosts wants numbers separated by commas, not {text!r}") from None
    if not values or values[0] < 1 or values[-1] > MAX_APP_HOSTS:
        raise argparse.ArgumentTypeError(f"--app-hosts: each count between 1 and {MAX_APP_HOSTS} ({text!r})")
    return values


def app_host_names(n: int) -> list[str]:
    return [f"{HOST_PREFIX}app{i}" for i in range(1, n + 1)]


def host_layout(n: int) -> dict[str, dict[str, str]]:
    """Group -> {host: private IP} for N app hosts, all inside SUBNET."""
    base = SUBNET.network_address
    return {
        "loadbalancers": {LB_HOST: str(base + LB_IP)},
        "app": {name: str(base + FIRST_APP_IP + i) for i, name in enumerate(app_host_names(n))},
        "monitoring": {MON_HOST: str(base + MON_IP)},
    }


def bench_group_vars(state: Path) -> dict:
    """What the benchmark's hosts get instead of the lab's (group converge_bench)."""
    credentials = state / "credentials"
    return {
        "keel_lab_network": NETWORK,
        "keel_lab_subnet": str(SUBNET),
        # Docker's gateway on the network (the first address): this machine's source
        # address towards the hosts, the lab's admin network (firewall)
        "keel_lab_gateway": str(SUBNET.network_address + 1),
        # a CA, a stats password and an artifact cache of this run's own: every N does
        # the same work a first "lab up" does, and the lab's .credentials stay untouched
        "haproxy_tls_lab_ca_dir": str(credentials / "lab-ca"),
        "haproxy_credentials_dir": str(credentials),
        "artifact_cache_dir": str(state / "artifacts"),
    }


def inventory_data(n: int) -> dict:
    """hosts.yml: the lab's groups (lab > loadbalancers/app/monitoring) with the
    benchmark's group in between, private addresses only (no published ports)."""
    groups = {
        # each host names its container (a templated ansible_host in group_vars would be
        # resolved with the name of a delegating host: see inventories/lab/hosts.yml)
        group: {"hosts": {host: {"ansible_host": f"{CONTAINER_PREFIX}{host}", "keel_private_ip": ip}
                          for host, ip in hosts.items()}}
        for group, hosts in host_layout(n).items()
    }
    return {"all": {"children": {"lab": {"children": {BENCH_GROUP: {"children": groups}}}}}}


def write_inventory(n: int, state: Path, lab_group_vars: Path = LAB_GROUP_VARS) -> Path:
    """Write state/inventory (hosts.yml + group_vars) for N app hosts; return its path.

    group_vars/<each lab group> are relative symlinks to the lab's own, so any value
    added to the lab applies here too; group_vars/converge_bench.yml overrides. Ansible
    merges group_vars of a child group over those of its parent (converge_bench under lab).
    """
    inventory = state / "inventory"
    if inventory.exists():
        shutil.rmtree(inventory)
    (inventory / "group_vars").mkdir(parents=True)
    for entry in sorted(lab_group_vars.iterdir()):
        if entry.name.startswith(BENCH_GROUP):
            raise BenchError(f"{entry} would clash with the benchmark's own group {BENCH_GROUP}")
        link = inventory / "group_vars" / entry.name
        link.symlink_to(os.path.relpath(entry.resolve(), link.parent))
    header = (f"# Generated by scripts/bench_converge.py for {n} app host(s); rewritten on every run.\n"
              "# Reuses inventories/lab/group_vars (symlinks); converge_bench.yml overrides.\n")
    (inventory / "hosts.yml").write_text(
        "---\n" + header + yaml.safe_dump(inventory_data(n), sort_keys=False, default_flow_style=False))
    (inventory / "group_vars" / f"{BENCH_GROUP}.yml").write_text(
        "---\n" + header + yaml.safe_dump(bench_group_vars(state), sort_keys=False, default_flow_style=False))
    return inventory


def lab_subnet(lab_group_vars: Path = LAB_GROUP_VARS) -> IPv4Network:
    """The running lab's subnet, as its group_vars set it."""
    for path in sorted(lab_group_vars.rglob("*.yml")):
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data, dict) and "keel_lab_subnet" in data:
            return ip_network(data["keel_lab_subnet"])
    raise BenchError(f"no keel_lab_subnet in {lab_group_vars}")


def _group_hosts(listing: Mapping, group: str) -> set[str]:
    node = listing.get(group) or {}
    hosts = set(node.get("hosts", []))
    for child in node.get("children", []):
        hosts |= _group_hosts(listing, child)
    return hosts


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


_IPV4 = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?![\d.])")


def inventory_problems(listing: Mapping, n: int, lab: IPv4Network) -> list[str]:
    """What is wrong with an `ansible-inventory --list` of the generated inventory:
    the groups and hosts, addresses inside SUBNET and unique, the benchmark's own
    network winning over the lab's, no published port, no address of the lab."""
    problems = []
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    expected = {"loadbalancers": {LB_HOST}, "app": set(app_host_names(n)), "monitoring": {MON_HOST}}
    for group, hosts in expected.items():
        if _group_hosts(listing, group) != hosts:
            problems.append(f"group {group}: {sorted(_group_hosts(listing, group))}, want {sorted(hosts)}")
    every = set().union(*expected.values())
    for group in ("all", "lab", BENCH_GROUP):
        if _group_hosts(listing, group) != every:
            problems.append(f"group {group} does not hold exactly the benchmark's hosts")
    seen: dict[str, str] = {}
    want = {"keel_lab_network": NETWORK, "keel_lab_subnet": str(SUBNET)}
    for host in sorted(every):
        hv = hostvars.get(host, {})
        ip = str(hv.get("keel_private_ip", ""))
        try:
            inside = ip_address(ip) in SUBNET and ip_address(ip) not in (SUBNET.network_address,
                                                                        SUBNET.network_address + 1,
                                                                        SUBNET.broadcast_address)
        except ValueError:
            inside = False
        if not inside:
            problems.append(f"{host}: keel_private_ip {ip!r} is not a host address of {SUBNET}")
        if ip in seen:
            problems.append(f"{host}: keel_private_ip {ip} is also {seen[ip]}'s")
        seen[ip] = host
        problems += [f"{host}: {var} is {hv.get(var)!r}, want {value!r}" for var, value in want.items()
                     if hv.get(var) != value]
        if hv.get("keel_lab_published_ports"):
            problems.append(f"{host}: publishes ports {hv['keel_lab_published_ports']}")
        for text in _strings(hv):
            for addr in _IPV4.findall(text):
                with contextlib.suppress(ValueError):
                    if ip_address(addr) in lab:
                        problems.append(f"{host}: a value points into the lab's subnet {lab}: {text[:80]!r}")
    return problems


def ansible_inventory_list(inventory: Path, env: Mapping[str, str] | None = None) -> dict:
    res = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(inventory), "--list"], cwd=ROOT,
                         env=None if env is None else dict(env), capture_output=True, text=True, timeout=300,
                         check=False)
    if res.returncode != 0:
        raise BenchError(f"ansible-inventory -i {inventory} --list: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout)


# ------------------------------------------------------------------ figures


def growth(seconds_by_n: Mapping[int, float]) -> dict:
    """Growth of converge time with the number of app hosts, against the smallest N.

    ratio = t(N) / t(N0) and linear = N / N0: growth is below linear when
    ratio < linear. exponent = log(ratio) / log(linear): 1 is linear, 0 flat.
    The least-squares line t = fixed + per_app_host * N splits the time into a
    part that does not grow with N and one that does.
    """
    points = sorted((n, float(s)) for n, s in seconds_by_n.items() if s is not None and s > 0)
    if not points:
        return {"base_app_hosts": None, "rows": [], "fit": None, "verdict": "no figures"}
    n0, t0 = points[0]
    rows = []
    for n, t in points:
        ratio, linear = t / t0, n / n0
        rows.append({
            "app_hosts": n,
            "seconds": round(t, 1),
            "seconds_per_app_host": round(t / n, 1),
            "ratio": round(ratio, 3),
            "linear": round(linear, 3),
            "ratio_of_linear": round(ratio / linear, 3),
            "exponent": round(math.log(ratio) / math.log(linear), 3) if n != n0 else None,
            "marginal_seconds_per_app_host": round((t - t0) / (n - n0), 1) if n != n0 else None,
            "below_linear": ratio < linear if n != n0 else None,
        })
    fit = None
    if len(points) >= 2:
        mean_n = sum(n for n, _ in points) / len(points)
        mean_t = sum(t for _, t in points) / len(points)
        slope = (sum((n - mean_n) * (t - mean_t) for n, t in points)
                 / sum((n - mean_n) ** 2 for n, _ in points))
        fit = {"fixed_seconds": round(mean_t - slope * mean_n, 1), "seconds_per_app_host": round(slope, 1)}
    compared = [row["below_linear"] for row in rows[1:]]
    if not compared:
        verdict = "incomplete: one N only"
    elif all(compared):
        verdict = "below linear"
    else:
        verdict = "not below linear"
    return {"base_app_hosts": n0, "rows": rows, "fit": fit, "verdict": verdict}


# ------------------------------------------------------------------ ansible output

_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")
_PLAY_BANNER = re.compile(r"^PLAY \[(?P<name>.*)\] \*+\s*$")
# profile_tasks, at every task start: "<date> (0:00:01.234)       0:00:05.678 ****"
_TASK_CLOCK = re.compile(r"\((\d+):(\d\d):(\d\d\.\d+)\)\s+(\d+):(\d\d):(\d\d\.\d+) \*")
# profile_tasks' recap: "role : task name ---------------- 12.34s"
_TASK_TIME = re.compile(r"^(?P<name>.*?)(?:\s-+)?\s(?P<seconds>\d+\.\d\d)s\s*$")


def parse_recap(text: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, unreachable, failed, ...} (the last recap)."""
    hosts: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in text.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap, hosts = True, {}
            continue
        if in_recap:
            match = _RECAP_LINE.match(line.strip())
            if match:
                hosts[match["host"]] = {k: int(v) for k, v in
                                        (kv.split("=") for kv in match["counts"].split())}
            elif line.strip():
                in_recap = False
    return hosts


def recap_total(recap: Mapping[str, Mapping[str, int]], key: str) -> int:
    return sum(counts.get(key, 0) for counts in recap.values())


def parse_play_times(text: str) -> list[dict]:
    """Seconds per play, from profile_tasks' running clock (printed at every task
    start): a play runs from its first task's start to the first task of a later
    play (or the final clock of the TASKS RECAP). Plays without tasks get 0."""
    events: list[tuple[str, float]] = []  # ("play", index into names) or ("clock", seconds)
    names: list[str] = []
    for line in text.splitlines():
        banner = _PLAY_BANNER.match(line)
        if banner:
            events.append(("play", len(names)))
            names.append(banner["name"])
            continue
        clock = _TASK_CLOCK.search(line)
        if clock:
            h, m, s = clock.group(4, 5, 6)
            events.append(("clock", int(h) * 3600 + int(m) * 60 + float(s)))
    banners = [i for i, (kind, _) in enumerate(events) if kind == "play"]
    plays = []
    for k, i in enumerate(banners):
        own = events[i + 1:banners[k + 1]] if k + 1 < len(banners) else events[i + 1:]
        after = events[banners[k + 1] + 1:] if k + 1 < len(banners) else []
        start = next((v for kind, v in own if kind == "clock"), None)
        end = next((v for kind, v in after if kind == "clock"), None)
        if end is None:  # the last play: its last clock (the TASKS RECAP's)
            end = next((v for kind, v in reversed(own) if kind == "clock"), None)
        seconds = max(0.0, end - start) if start is not None and end is not None else 0.0
        plays.append({"name": names[k], "seconds": round(seconds, 1)})
    return plays


def parse_top_tasks(text: str) -> list[dict]:
    """profile_tasks' slowest tasks (after TASKS RECAP)."""
    _, sep, tail = text.partition("TASKS RECAP")
    if not sep:
        return []
    tasks = []
    for line in tail.splitlines():
        if _TASK_CLOCK.search(line) or set(line.strip()) <= {"=", "*"}:
            continue
        match = _TASK_TIME.match(line.rstrip())
        if match and match["name"].strip():
            tasks.append({"task": match["name"].strip(), "seconds": float(match["seconds"])})
    return tasks


# ------------------------------------------------------------------ serving check


def backend_servers(stats_csv: str, backend: str = HAPROXY_BACKEND) -> dict[str, str]:
    """HAProxy's ';csv' stats -> {server name: status} of one backend."""
    text = stats_csv.lstrip()
    if text.startswith("# "):
        text = text[2:]
    servers = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND", None):
            servers[row["svname"]] = (row.get("status") or "").strip()
    return servers


def serving_problems(servers: Mapping[str, str], app_hosts: Sequence[str]) -> list[str]:
    """What keeps the load balancer from serving through every app host ([] = nothing).
    Server names are '<host>-<port>' (roles/haproxy/templates/servers.j2)."""
    problems = []
    if not servers:
        return [f"backend {HAPROXY_BACKEND} has no servers"]
    for host in app_hosts:
        if not any(name.rsplit("-", 1)[0] == host for name in servers):
            problems.append(f"no server of {host} in backend {HAPROXY_BACKEND}")
    problems += [f"{name} is {status or 'unknown'}" for name, status in sorted(servers.items()) if status != "UP"]
    unknown = sorted({name.rsplit("-", 1)[0] for name in servers} - set(app_hosts))
    problems += [f"unexpected server host {host}" for host in unknown]
    return problems


def answer_problem(body: str) -> str | None:
    """The api's answer through HAProxy must come from an api that reached its backend."""
    try:
        data = json.loads(body)
        if data["service"] == "api" and data["backend"]["service"] == "backend":
            return None
    except (ValueError, KeyError, TypeError):
        pass
    return f"unexpected answer through HAProxy: {body[:200]!r}"


def _http_get(url: str, timeout: float, auth: tuple[str, str] | None = None, cafile: Path | None = None) -> str:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]  # private addresses: no proxy
    if cafile is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(cafile))))
    request = urllib.request.Request(url)  # noqa: S310  fixed http/https URLs built by this script
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
        return response.read().decode("utf-8", "replace")


def haproxy_stats_settings() -> tuple[int, str]:
    defaults = yaml.safe_load((ROOT / "roles" / "haproxy" / "defaults" / "main.yml").read_text())
    return int(defaults["haproxy_stats_port"]), str(defaults["haproxy_stats_user"])


def check_serving(n: int, state: Path, timeout: float) -> dict:
    """Wait (bounded) until every backend server is UP and HTTPS through the LB answers."""
    layout = host_layout(n)
    lb_ip = layout["loadbalancers"][LB_HOST]
    port, user = haproxy_stats_settings()
    credentials = Path(bench_group_vars(state)["haproxy_credentials_dir"])
    ca = Path(bench_group_vars(state)["haproxy_tls_lab_ca_dir"]) / "ca.crt"
    t0 = time.monotonic()
    last = "not checked yet"
    while True:
        try:
            password = (credentials / f"haproxy-stats-{LB_HOST}").read_text().split()[0]
            servers = backend_servers(_http_get(f"http://{lb_ip}:{port}/stats;csv", 10, (user, password)))
            problems = serving_problems(servers, list(layout["app"]))
            if not problems:
                problem = answer_problem(_http_get(f"https://{lb_ip}/", 10, cafile=ca))
                if problem is None:
                    return {"status": "ok", "seconds": round(time.monotonic() - t0, 1),
                            "servers_up": len(servers), "checked": f"http://{lb_ip}:{port}/stats;csv, https://{lb_ip}/"}
                problems = [problem]
            last = "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        except (OSError, ValueError, IndexError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"the stack does not serve after {timeout:.0f} s: {last}")
        time.sleep(3)


# ------------------------------------------------------------------ processes


@dataclass
class Run:
    rc: int | None
    seconds: float
    timed_out: bool
    log: Path
    text: str = ""


def _say(msg: str) -> None:
    print(f"[converge-bench {datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen) -> None:
    """End the ansible-playbook we started and its workers (its own process group)."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_logged(cmd: list[str], log: Path, timeout: float, env: Mapping[str, str], label: str) -> Run:
    """Run cmd with a timeout, output into log; play banners and failures echoed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    timed_out = False
    with log.open("w", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        except OSError as exc:
            raise BenchError(f"cannot run {cmd[0]}: {exc}") from exc

        def pump() -> None:
            assert proc.stdout is not None  # noqa: S101  Popen with stdout=PIPE
            for line in proc.stdout:
                out.write(line)
                if line.startswith("PLAY [") or line.startswith(("fatal:", "ERROR!", "[ERROR]")):
                    _say(f"{label}: {line.strip()[:160]}")
            out.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            _say(f"{label}: timeout after {timeout:.0f} s, stopping it")
            with shielded():
                _stop(proc)
        except BaseException:
            with shielded():
                _stop(proc)
            raise
        finally:
            reader.join(timeout=30)
        seconds = time.monotonic() - t0
        if timed_out:
            out.write(f"\n[converge-bench] stopped after the {timeout:.0f} s timeout\n")
    return Run(proc.returncode, round(seconds, 1), timed_out, log, log.read_text(encoding="utf-8", errors="replace"))


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Clean-up must finish: Ctrl-C, SIGTERM and SIGHUP only print a note meanwhile
    (the clean-up itself is bounded by its timeout)."""
    def note(signum: int, _frame: object) -> None:
        _say(f"signal {signum} ignored: removing the benchmark's hosts first (bounded)")

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def docker_lines(*args: str) -> list[str]:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise BenchError(f"docker {' '.join(args)}: {res.stderr.strip()}")
    return [line for line in res.stdout.splitlines() if line.strip()]


def leftovers() -> dict[str, list[str]]:
    """The benchmark's containers and network that exist now (from any N)."""
    names = docker_lines("ps", "-a", "--format", "{{.Names}}")
    networks = docker_lines("network", "ls", "--format", "{{.Name}}")
    return {"containers": sorted(n for n in names if n.startswith(CONTAINER_PREFIX + HOST_PREFIX)),
            "networks": [n for n in networks if n == NETWORK]}


def remove_leftovers() -> dict[str, list[str]]:
    """docker rm -f the benchmark's own containers (keel-lab-cb-*) and its network."""
    found = leftovers()
    if found["containers"]:
        subprocess.run(["docker", "rm", "-f", *found["containers"]], capture_output=True, timeout=300, check=False)
    if found["networks"]:
        subprocess.run(["docker", "network", "rm", NETWORK], capture_output=True, timeout=120, check=False)
    return leftovers()


# ------------------------------------------------------------------ the benchmark


@dataclass
class Bench:
    app_hosts: list[int]
    forks: int
    rerun: bool
    keep_going: bool
    playbook_timeout: float
    destroy_timeout: float
    check_timeout: float
    deadline: float
    out: Path
    runs: list[dict] = field(default_factory=list)

    def env(self, state: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("KEEL_CACHE", default_cache())  # the lab's group_vars look it up
        env.update({
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state / "facts"),  # fresh facts for every N
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks,ansible.posix.timer",
            "ANSIBLE_NOCOLOR": "1",
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("ANSIBLE_FORCE_COLOR", None)
        return env

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BenchError("the total time bound of the benchmark ran out")
        return left

    def playbook(self, n: int, inventory: Path, state: Path, playbook: str, tag: str, timeout: float) -> Run:
        cmd = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "-f", str(self.forks),
               f"playbooks/{playbook}"]
        _say(f"n{n}: {playbook} ({tag})")
        return run_logged(cmd, self.out / f"n{n}-{tag}.log", timeout, self.env(state), f"n{n} {tag}")

    def one(self, n: int) -> dict:
        state = BENCH_ROOT / f"n{n}"
        record: dict = {"app_hosts": n, "hosts": n + 2, "status": "running"}
        self.runs.append(record)
        try:
            if state.exists():
                shutil.rmtree(state)  # the previous run's facts, CA and inventory: start from nothing
            inventory = write_inventory(n, state)
            record["inventory"] = rel(inventory)
            problems = inventory_problems(ansible_inventory_list(inventory, self.env(state)), n, lab_subnet())
        except (BenchError, OSError) as exc:
            problems = [str(exc)]
        if problems:  # nothing created yet: nothing to clean up
            record.update(status="failed", error="generated inventory: " + "; ".join(problems[:5]))
            _say(f"n{n}: FAILED: {record['error']}")
            return record
        try:
            create = self.playbook(n, inventory, state, "lab-create.yml", "lab-create",
                                   min(self.playbook_timeout, self.remaining()))
            record["create_seconds"] = create.seconds
            ensure_ok(create, "lab-create.yml")

            site = self.playbook(n, inventory, state, "site.yml", "site", min(self.playbook_timeout, self.remaining()))
            recap = parse_recap(site.text)
            record.update({
                "site_seconds": site.seconds,
                "site_changed": recap_total(recap, "changed"),
                "site_failed": recap_total(recap, "failed") + recap_total(recap, "unreachable"),
                "plays": parse_play_times(site.text),
                "top_tasks": parse_top_tasks(site.text)[:10],
            })
            ensure_ok(site, "site.yml")
            record["serving"] = check_serving(n, state, min(self.check_timeout, self.remaining()))
            _say(f"n{n}: site.yml {site.seconds:.0f} s, changed={record['site_changed']}, "
                 f"serving ({record['serving']['servers_up']} servers UP)")

            if self.rerun:
                again = self.playbook(n, inventory, state, "site.yml", "site-rerun",
                                      min(self.playbook_timeout, self.remaining()))
                again_recap = parse_recap(again.text)
                record["rerun"] = {"seconds": again.seconds, "changed": recap_total(again_recap, "changed"),
                                   "failed": recap_total(again_recap, "failed")}
                ensure_ok(again, "site.yml (rerun)")
            record["status"] = "ok"
        except BenchError as exc:
            record.update(status="failed", error=str(exc))
            _say(f"n{n}: FAILED: {exc}")
        except KeyboardInterrupt:
            record.update(status="interrupted", error="interrupted")
            raise
        finally:
            with shielded():
                record["destroy"] = self.destroy(n, inventory, state)
        return record

    def destroy(self, n: int, inventory: Path, state: Path) -> dict:
        result: dict = {}
        try:
            run = self.playbook(n, inventory, state, "lab-destroy.yml", "lab-destroy", self.destroy_timeout)
            result.update(rc=run.rc, seconds=run.seconds, timed_out=run.timed_out)
        except (BenchError, OSError) as exc:
            result["error"] = str(exc)
        try:
            left = leftovers()
            if left["containers"] or left["networks"]:
                _say(f"n{n}: lab-destroy left {left}; removing them with docker")
                left = remove_leftovers()
            result["left"] = left["containers"] + left["networks"]
        except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
            result["left"] = [f"unknown: {exc}"]
        shutil.rmtree(state / "artifacts", ignore_errors=True)  # copies of the mirror's archives
        if result["left"]:
            _say(f"n{n}: STILL LEFT: {result['left']}")
        return result

    def run(self) -> None:
        for n in self.app_hosts:
            if time.monotonic() >= self.deadline:
                self.runs.append({"app_hosts": n, "hosts": n + 2, "status": "skipped", "error": "total bound reached"})
                continue
            record = self.one(n)
            if record["status"] != "ok" and not self.keep_going:
                for rest in self.app_hosts[self.app_hosts.index(n) + 1:]:
                    self.runs.append({"app_hosts": rest, "hosts": rest + 2, "status": "skipped",
                                      "error": f"n{n} failed (--keep-going runs the others anyway)"})
                break


def converge_seconds(runs: Sequence[Mapping]) -> dict[int, float]:
    """The figure of every N whose fresh site.yml passed and whose stack then served
    (a failed --rerun afterwards does not void it)."""
    return {r["app_hosts"]: r["site_seconds"] for r in runs
            if r.get("site_seconds") is not None and r.get("serving", {}).get("status") == "ok"}


def ensure_ok(run: Run, what: str) -> None:
    if run.timed_out:
        raise BenchError(f"{what} timed out after {run.seconds:.0f} s (log: {rel(run.log)})")
    if run.rc != 0:
        raise BenchError(f"{what} failed with rc {run.rc} (log: {rel(run.log)})")


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def default_cache() -> str:
    """scripts/lib/common.sh's KEEL_CACHE default."""
    return os.environ.get("KEEL_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "keel")


# ------------------------------------------------------------------ report


def machine() -> dict:
    def first_line(cmd: list[str]) -> str:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
            return ((res.stdout or res.stderr).strip().splitlines() or ["?"])[0]
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"MemTotal:\s+(\d+)", meminfo)
    try:
        running: int | None = len(docker_lines("ps", "-q"))
    except (BenchError, OSError, subprocess.TimeoutExpired):
        running = None
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "containers_running_at_start": running,
        "ansible": first_line([str(VENV_BIN / "ansible-playbook"), "--version"]),
        "docker": first_line(["docker", "version", "--format", "{{.Server.Version}}"]),
        "git": first_line(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def _fmt(value: object, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, int | float) else str(value)


def render_report(figures: dict) -> str:
    g = figures["growth"]
    by_n = {row["app_hosts"]: row for row in g["rows"]}
    m = figures["machine"]
    lines = [
        "# Converge time by number of app hosts",
        "",
        f"Run {figures['started']} .. {figures['finished']} (UTC), `scripts/bench-converge.sh "
        f"--app-hosts {','.join(map(str, figures['app_hosts']))}{' --rerun' if figures['rerun'] else ''}`.",
        "Each N: fresh containers (lb + N app + mon), then `playbooks/site.yml` timed from start to",
        "end (wall clock, ansible-playbook included), empty fact cache, a fresh lab CA, an empty artifact cache.",
        "",
        f"**Growth: {g['verdict']}** (against N = {_fmt(g['base_app_hosts'], 'd')}: below linear when "
        "t(N)/t(N0) < N/N0).",
        "",
        "| app hosts | hosts | site.yml s | s per app host | t(N)/t(N0) | N/N0 (linear) | ratio/linear "
        "| exponent | serving | rerun s (changed) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in figures["runs"]:
        row = by_n.get(run["app_hosts"], {})
        serving = run.get("serving", {})
        rerun = run.get("rerun")
        lines.append(
            f"| {run['app_hosts']} | {run['hosts']} | {_fmt(run.get('site_seconds'))} "
            f"| {_fmt(row.get('seconds_per_app_host'))} | {_fmt(row.get('ratio'), '.2f')} "
            f"| {_fmt(row.get('linear'), '.2f')} | {_fmt(row.get('ratio_of_linear'), '.2f')} "
            f"| {_fmt(row.get('exponent'), '.2f')} "
            f"| {(str(serving.get('servers_up')) + ' servers UP') if serving.get('status') == 'ok' else '-'} "
            f"| {(_fmt(rerun['seconds']) + ' (' + str(rerun['changed']) + ')') if rerun else '-'} "
            f"| {run['status']}{': ' + run['error'] if run.get('error') else ''} |")
    if g["fit"]:
        lines += ["", f"Least-squares line: t = {g['fit']['fixed_seconds']} s + {g['fit']['seconds_per_app_host']} s "
                      "x N (a part that does not grow with the app hosts, and one that does)."]
    lines += [
        "",
        "How to read it: with perfectly linear growth t(N)/t(N0) equals N/N0 (doubling the app hosts",
        "doubles the time); the exponent log(t(N)/t(N0)) / log(N/N0) is 1 then, and 0 when the time does",
        "not grow at all. Ansible runs each task on all hosts in parallel (forks below), so most of the",
        "time is per task, not per host; what grows is the controller's work per host and the CPU the",
        "hosts share on this machine.",
        "",
        "## Machine and settings",
        "",
        f"- nproc {m['nproc']} (cpus {m['cpus']}), memory {m['memory_gib']} GiB, kernel {m['kernel']}",
        f"- forks: {figures['forks']} (`-f`, at least the number of hosts of the largest N: forks are not the limit)",
        f"- {m['ansible']}; Docker {m['docker']}; keel {m['git']}",
        f"- at start: load average {m['load_average_at_start']}, {m['containers_running_at_start']} "
        "container(s) running (anything else running shares the CPU and inflates the figures)",
        "- timeouts: each ansible-playbook call "
        f"{figures['playbook_timeout_min']:.0f} min, the whole run {figures['total_timeout_min']:.0f} min",
    ]
    plays = [run for run in figures["runs"] if run.get("plays")]
    if plays:
        names = list(dict.fromkeys(p["name"] for run in plays for p in run["plays"]))
        lines += ["", "## Seconds per play of site.yml (profile_tasks clock)", "",
                  "| play | " + " | ".join(f"N={run['app_hosts']}" for run in plays) + " |",
                  "|---|" + "---|" * len(plays)]
        for name in names:
            cells = []
            for run in plays:
                secs = [p["seconds"] for p in run["plays"] if p["name"] == name]
                cells.append(_fmt(sum(secs)) if secs else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for run in figures["runs"]:
        if run.get("top_tasks"):
            lines += ["", f"## Slowest tasks, N = {run['app_hosts']}", "", "| task | s |", "|---|---|"]
            lines += [f"| {t['task'].replace('|', '/')} | {t['seconds']:.1f} |" for t in run["top_tasks"]]
    lines += ["", "## Logs", ""]
    lines += [f"- `{p.name}`" for p in sorted(Path(figures["report_dir"]).glob("*.log"))]
    lines += ["", "Clean-up: " + "; ".join(
        f"N={run['app_hosts']}: " + ("nothing left" if not run["destroy"].get("left") else
                                     "LEFT " + ", ".join(run["destroy"]["left"]))
        for run in figures["runs"] if "destroy" in run)]
    return "\n".join(lines) + "\n"


def summary_table(figures: dict) -> str:
    by_n = {row["app_hosts"]: row for row in figures["growth"]["rows"]}
    out = [f"{'app hosts':>9} {'site.yml s':>10} {'s/app host':>10} {'t/t0':>6} {'N/N0':>6}  status"]
    for run in figures["runs"]:
        row = by_n.get(run["app_hosts"], {})
        out.append(f"{run['app_hosts']:>9} {_fmt(run.get('site_seconds')):>10} "
                   f"{_fmt(row.get('seconds_per_app_host')):>10} {_fmt(row.get('ratio'), '.2f'):>6} "
                   f"{_fmt(row.get('linear'), '.2f'):>6}  {run['status']}")
    out.append(f"growth: {figures['growth']['verdict']}")
    return "\n".join(out)


# ------------------------------------------------------------------ main


def configured_forks() -> int:
    """forks of the project's ansible.cfg (Ansible's default 5 without one)."""
    cfg = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    cfg.read(ROOT / "ansible.cfg")
    return cfg.getint("defaults", "forks", fallback=5)


def preflight() -> None:
    if not (VENV_BIN / "ansible-playbook").exists():
        raise BenchError(f"no {VENV_BIN / 'ansible-playbook'}: run scripts/setup.sh (or scripts/bench-converge.sh)")
    cache = Path(default_cache())
    if not (cache / "test-mirror" / "artifacts.yml").exists():
        raise BenchError(f"no test mirror in {cache}/test-mirror: run scripts/setup.sh")
    if not list((cache / "releases").glob("keel-app-*.tar.gz")):
        raise BenchError(f"no app release in {cache}/releases: run scripts/build-app-release.sh")
    left = leftovers()
    if left["containers"] or left["networks"]:
        raise BenchError(f"left from an earlier run: {left['containers'] + left['networks']}; remove them with "
                         "scripts/bench-converge.sh --cleanup")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app-hosts", type=parse_app_hosts, default=list(DEFAULT_APP_HOSTS),
                        help="app host counts, comma-separated (default 2,4,8)")
    parser.add_argument("--rerun", action="store_true", help="time a second site.yml too (changed count, seconds)")
    parser.add_argument("--keep-going", action="store_true", help="run the other N after one failed")
    parser.add_argument("--forks", type=int, default=0,
                        help="ansible forks (default: ansible.cfg's; raised to the host count of the largest N)")
    parser.add_argument("--playbook-timeout", type=float, default=60,
                        help="minutes per ansible-playbook call (default 60)")
    parser.add_argument("--total-timeout", type=float, default=300,
                        help="minutes for the whole run (default 300); clean-ups run beyond it")
    parser.add_argument("--check-timeout", type=float, default=180,
                        help="seconds for the serving check (default 180)")
    parser.add_argument("--destroy-timeout", type=float, default=10, help="minutes for each clean-up (default 10)")
    parser.add_argument("--cleanup", action="store_true",
                        help="only remove containers/network left by an aborted run (keel-lab-cb-*, "
                             f"{NETWORK}), then exit")
    args = parser.parse_args(argv)

    if args.cleanup:
        try:
            left = remove_leftovers()
        except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"[converge-bench] ERROR: {exc}", file=sys.stderr)
            return 2
        print("nothing left" if not (left["containers"] or left["networks"]) else f"still left: {left}")
        return 0 if not (left["containers"] or left["networks"]) else 1

    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _main(args)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(args: argparse.Namespace) -> int:
    try:
        preflight()
    except BenchError as exc:
        print(f"[converge-bench] ERROR: {exc}", file=sys.stderr)
        return 2

    started = datetime.now(UTC)
    out = REPORTS / f"converge-{started:%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    forks = max(args.forks or configured_forks(), max(args.app_hosts) + 2)
    bench = Bench(app_hosts=args.app_hosts, forks=forks, rerun=args.rerun, keep_going=args.keep_going,
                  playbook_timeout=args.playbook_timeout * 60, destroy_timeout=args.destroy_timeout * 60,
                  check_timeout=args.check_timeout, deadline=time.monotonic() + args.total_timeout * 60, out=out)
    figures: dict = {"started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "app_hosts": args.app_hosts,
                     "rerun": args.rerun, "forks": forks, "playbook_timeout_min": args.playbook_timeout,
                     "total_timeout_min": args.total_timeout, "report_dir": str(out), "machine": machine()}
    _say(f"app hosts {args.app_hosts}, forks {forks}, nproc {figures['machine']['nproc']}; report in {rel(out)}")
    if figures["machine"]["containers_running_at_start"]:
        _say(f"note: {figures['machine']['containers_running_at_start']} container(s) already run here and share "
             "the CPU (a lab? scripts/lab.sh down first for clean figures)")
    rc = 0
    try:
        bench.run()
    except KeyboardInterrupt:
        _say("interrupted; the benchmark's hosts were removed")
        rc = 130
    finally:
        figures["finished"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        figures["runs"] = bench.runs
        figures["growth"] = growth(converge_seconds(bench.runs))
        (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
        (out / "report.md").write_text(render_report(figures))
        print(summary_table(figures))
        print(f"report: {rel(out / 'report.md')}")
    if rc == 0 and any(r.get("status") != "ok" for r in bench.runs):
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
