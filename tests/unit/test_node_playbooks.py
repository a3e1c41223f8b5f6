"""playbooks/add-node.yml and remove-node.yml: what they refuse, and how, before any host changes.

* The list forms (keel_new_nodes / keel_remove_nodes: a list, or a comma-separated
  string as an AWX survey passes it) are validated on the controller: every name a
  host of the app group, none named twice, a name the inventory does not know named
  as such, at least one app host left after a removal. Hosts of these throw-away
  inventories are unreachable (TEST-NET-1 behind "ProxyCommand=/bin/false"): a
  refusal must show no UNREACHABLE host and a recap of localhost only.
* The release a new node gets: every host is this machine (connection local) with its
  own app_root in tmp_path, holding a current link, the release record and the
  tarball as the app role leaves them. keel_add_node_plan_only=true ends the run
  after the decision (no host changes; --skip-tags of every changing layer as a
  second guard). The serving hosts agree: the tarball is copied from one of them; they
  disagree, or nothing says which artifact they run, or one did not answer: refused,
  lock released, nothing changed; no serving host: the inventory's release.
* tasks/drain-node.yml against a real HAProxy (Debian's haproxy, skipped without
  it): a drain that does not finish in time puts the server back UP; one that does
  leaves it in MAINT.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
PROD_KEEL_VARS = ROOT / "inventories" / "production" / "group_vars" / "all" / "keel.yml"
# every tag of a play that changes hosts: a second guard for the runs on this machine
CHANGING_TAGS = "common,hardening,app,monitoring,loadbalancers,firewall,haproxy,prometheus,remove_node"


# ----------------------------------------------------------------- helpers
def ansible_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_TIMEOUT": "5",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "USER": "keel-test",
    })
    return env


def run_playbook(tmp_path: Path, inventory: Path, playbook: str, *args: str,
                 timeout: int = 300) -> subprocess.CompletedProcess[str]:
    playbook_path = playbook if playbook.startswith("/") else f"playbooks/{playbook}"
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), playbook_path, *args],
        cwd=ROOT, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=timeout, check=False)


def recap(output: str) -> dict[str, dict[str, int]]:
    """Host -> counters of the PLAY RECAP."""
    assert "PLAY RECAP" in output, output[-3000:]
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[1].splitlines()[1:]:
        if " : " not in line:
            break
        host, counters = line.split(" : ", 1)
        hosts[host.strip()] = {k: int(v) for k, v in (c.split("=") for c in counters.split())}
    return hosts


def unreachable_inventory(tmp_path: Path, app: tuple[str, ...] = ("app1", "app2")) -> Path:
    """Hosts nobody can reach, shaped like the lab (lb1, app hosts, mon1)."""
    inv = tmp_path / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "group_vars" / "all" / "keel.yml").write_text(PROD_KEEL_VARS.read_text())
    groups = {
        "loadbalancers": {"lb1": {"keel_private_ip": "192.0.2.11"}},
        "app": {name: {"keel_private_ip": f"192.0.2.{21 + i}"} for i, name in enumerate(app)},
        "monitoring": {"mon1": {"keel_private_ip": "192.0.2.31"}},
    }
    hosts = {"all": {"children": {"keeltest": {
        "vars": {"ansible_connection": "ssh", "ansible_host": "192.0.2.1", "ansible_user": "keel-test",
                 "ansible_ssh_common_args": "-o ProxyCommand=/bin/false -o ConnectTimeout=2"},
        # each host its own (unreachable) machine: validate.yml refuses two names for one
        "children": {group: {"hosts": {name: {"ansible_host": (v or {}).get("keel_private_ip") or f"192.0.2.{200 + i}",
                                               **(v or {})} for i, (name, v) in enumerate(members.items())}}
                     for group, members in groups.items()},
    }}}}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    return inv / "hosts.yml"


def assert_refused_on_the_controller(res: subprocess.CompletedProcess[str], *expected: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    for text in expected:
        assert text in " ".join(out.split()), f"{text!r} not in the output:\n{out[-3000:]}"
    assert set(recap(out)) == {"localhost"}, out[-3000:]
    assert "UNREACHABLE" not in out, "a host was contacted:\n" + out[-3000:]


# ------------------------------------------------------------ syntax checks
@pytest.mark.parametrize("playbook, extra", [
    ("add-node.yml", []),
    ("add-node.yml", ["-e", '{"keel_new_nodes": ["app3", "app4"]}']),
    ("remove-node.yml", []),
    ("remove-node.yml", ["-e", "keel_remove_nodes=app3,app4"]),
    ("tasks/drain-node.yml", None),
])
def test_syntax(tmp_path, playbook, extra):
    if extra is None:  # a task file: through a play that includes it
        play = tmp_path / "play.yml"
        play.write_text(yaml.safe_dump([{"name": "Drain", "hosts": "all", "gather_facts": False, "tasks": [
            {"name": "Drain", "ansible.builtin.include_tasks": str(ROOT / "playbooks" / playbook)}]}]))
        playbook, extra = str(play), []
    res = run_playbook(tmp_path, ROOT / "inventories" / "production" / "hosts.yml", playbook, "--syntax-check", *extra)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------- the request, on the controller
@pytest.mark.parametrize("args, says", [
    ([], ["add-node.yml needs -e keel_new_node=HOST or -e keel_new_nodes=HOST1,HOST2", "No node was named."]),
    (["-e", "keel_new_nodes="], ["No node was named."]),
    (["-e", "keel_new_nodes=app2,app9"], ["Not in the inventory at all: app9", "add each to the app group",
                                         "got 'app2,app9'"]),
    (["-e", '{"keel_new_nodes": "app2, lb1"}'], ["Not in the app group: lb1 (in keeltest, loadbalancers)"]),
    (["-e", '{"keel_new_nodes": ["app2", "app1", "app2"]}'], ["Named more than once: app2"]),
    (["-e", "keel_new_node=app2", "-e", "keel_new_nodes=app2"], ["Named more than once: app2"]),
    (["-e", '{"keel_new_nodes": "app9 mon1 app9"}'],
     ["Not in the inventory at all: app9", "Not in the app group: mon1", "Named more than once: app9"]),
])
def test_add_node_refuses_a_bad_request_before_touching_hosts(tmp_path, args, says):
    res = run_playbook(tmp_path, unreachable_inventory(tmp_path), "add-node.yml", *args)
    assert_refused_on_the_controller(res, "Check the new nodes", *says, "No host was touched.")


@pytest.mark.parametrize("args, says", [
    ([], ["remove-node.yml needs -e keel_remove_node=HOST or -e keel_remove_nodes=HOST1,HOST2", "No node was named."]),
    (["-e", "keel_remove_nodes=app2,app9"], ["Not in the inventory at all: app9", "already removed and forgotten?"]),
    (["-e", "keel_remove_nodes=lb1"], ["got 'lb1'", "Not in the app group: lb1"]),
    (["-e", '{"keel_remove_nodes": ["app2", "app2"]}'], ["Named more than once: app2"]),
    (["-e", "keel_remove_nodes=app1,app2"],
     ["app1, app2 are all the hosts of the app group: removing them would leave no host to serve."]),
    (["-e", "keel_remove_node=app1", "-e", '{"keel_remove_nodes": ["app2"]}'], ["are all the hosts of the app group"]),
])
def test_remove_node_refuses_a_bad_request_before_touching_hosts(tmp_path, args, says):
    res = run_playbook(tmp_path, unreachable_inventory(tmp_path), "remove-node.yml", *args)
    assert_refused_on_the_controller(res, "Check the nodes to remove", *says, "No host was touched.")


def test_remove_node_refuses_to_remove_the_only_app_host(tmp_path):
    res = run_playbook(tmp_path, unreachable_inventory(tmp_path, app=("app1",)), "remove-node.yml",
                       "-e", "keel_remove_nodes=app1")
    assert_refused_on_the_controller(res, "app1 is the only host of the app group")


@pytest.mark.parametrize("playbook, var", [("add-node.yml", "keel_new_nodes"),
                                           ("remove-node.yml", "keel_remove_nodes")])
def test_a_valid_list_passes_the_controller_checks_and_goes_on(tmp_path, playbook, var):
    """Control case: a valid list passes the controller's checks; the next plays contact the hosts."""
    res = run_playbook(tmp_path, unreachable_inventory(tmp_path, app=("app1", "app2", "app3")), playbook,
                       "-e", json.dumps({var: "app2, app3"}))
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "UNREACHABLE" in out, out[-3000:]


# --------------------------------------- the release a new node gets (local)
TARBALL = b"a release tarball, as build-app-release.sh makes it\n"
SHA = hashlib.sha256(TARBALL).hexdigest()


class Fleet:
    """Every host is this machine (connection local, no become), each with its own app_root."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path / "hosts"
        self.base.mkdir()
        self.hosts: dict[str, dict[str, dict]] = {"loadbalancers": {}, "app": {}}
        self.local = {"ansible_connection": "local", "ansible_become": False,
                      "ansible_python_interpreter": sys.executable}  # keel_private_ip: one per host, below
        self.lb("lb1")

    def _address(self) -> str:
        """A loopback address of its own per host (validate.yml refuses two hosts with one)."""
        self.addresses = getattr(self, "addresses", 0) + 1
        return f"127.0.0.{10 + self.addresses}"

    def lb(self, name: str) -> None:
        self.hosts["loadbalancers"][name] = {**self.local, "keel_private_ip": self._address()}

    def app(self, name: str, version: str | None = None, sha: str = SHA, record: bool = True,
            tarball: bytes | None = TARBALL) -> Path:
        root = self.base / name
        (root / "downloads").mkdir(parents=True)
        if version:
            release = root / "releases" / version
            release.mkdir(parents=True)
            (root / "current").symlink_to(release)
            if record:
                (release / ".keel-release.json").write_text(json.dumps({
                    "version": version, "sha256": sha, "artifact": f"keel-app-{version}.tar.gz",
                    "format": "wheelhouse", "command": "", "strip_components": 1, "url": ""}))
            if tarball is not None:
                (root / "downloads" / f"keel-app-{version}.tar.gz").write_bytes(tarball)
        self.hosts["app"][name] = {**self.local, "app_root": str(root), "keel_private_ip": self._address()}
        return root

    def unreachable_app(self, name: str) -> None:
        last = 100 + len(self.hosts["app"])  # one machine and one address per host
        self.hosts["app"][name] = {"ansible_connection": "ssh", "ansible_host": f"192.0.2.{last}",
                                   "keel_private_ip": f"192.0.2.{last}",
                                   "ansible_ssh_common_args": "-o ProxyCommand=/bin/false -o ConnectTimeout=2"}

    @property
    def lock(self) -> Path:
        return self.base / "lock.json"

    def inventory(self) -> Path:
        inv = {"all": {
            "vars": {"keel_logs_and_traces": False, "app_release_version": "1.0.0",
                     "app_release_url": "https://artifacts.example.com/keel-app-1.0.0.tar.gz",
                     "app_release_sha256": "0" * 64, "keel_lifecycle_lock_path": str(self.lock),
                     "keel_lifecycle_lock_textfile_dir": str(self.base / "no-textfile-dir")},
            "children": {group: {"hosts": members} for group, members in self.hosts.items()}}}
        path = self.base / "hosts.yml"
        path.write_text(yaml.safe_dump(inv, sort_keys=False))
        return path

    def plan(self, tmp_path: Path, *nodes: str) -> tuple[subprocess.CompletedProcess[str], str]:
        res = run_playbook(tmp_path, self.inventory(), "add-node.yml", "-e", f"keel_new_nodes={','.join(nodes)}",
                           "-e", "keel_add_node_plan_only=true", "--skip-tags", CHANGING_TAGS)
        out = res.stdout + res.stderr
        # no host changed: only the controller (tarball copy in its temp dir) reports changes
        assert all(c["changed"] == 0 for host, c in recap(out).items() if host != "localhost"), out[-3000:]
        assert "PLAY [Baseline the new nodes]" not in out or "skipping: no hosts matched" in out, out[-3000:]
        assert not self.lock.exists(), f"the lock is still held: {self.lock.read_text()}"
        return res, " ".join(out.split())


@pytest.fixture
def fleet(tmp_path) -> Fleet:
    return Fleet(tmp_path)


def test_a_new_node_gets_the_release_the_serving_hosts_run(tmp_path, fleet):
    fleet.app("app1", "1.0.1")
    fleet.app("app2", "1.0.1", record=False)  # installed before the record existed: its tarball says
    fleet.app("app3")
    res, out = fleet.plan(tmp_path, "app3")
    assert res.returncode == 0, out[-3000:]
    assert (f"The serving app hosts (app1, app2) run release 1.0.1 (sha256 {SHA}): the new nodes get it, "
            "copied from app1.") in out
    assert "Copy the tarball from a serving host to the controller" in out and "changed: [localhost -> app1]" in out
    assert "Plan only (keel_add_node_plan_only=true): app3 would get the release above" in out
    assert not list(Path(tmp_path / "ansible-tmp").glob("**/keel-app-1.0.1.tar.gz"))


def test_the_inventory_release_for_the_first_app_host(tmp_path, fleet):
    fleet.app("app1")
    res, out = fleet.plan(tmp_path, "app1")
    assert res.returncode == 0, out[-3000:]
    assert "No other app host serves a release (no other app host): the new nodes get the inventory's release." in out


@pytest.mark.parametrize("setup, says", [
    ({"app2": {"version": "1.0.2"}},
     ["the serving app hosts run different releases (app1: 1.0.1 sha256", "app2: 1.0.2 sha256"]),
    ({"app2": {"version": "1.0.1", "sha": "f" * 64}}, ["the serving app hosts run different releases"]),
    ({"app1": {"version": "1.0.1", "record": False, "tarball": None},
      "app2": {"version": "1.0.1", "record": False, "tarball": None}},
     ["run release 1.0.1, but neither a record", "nor its tarball in downloads/ says which artifact it was"]),
    ({"app1": {"version": "1.0.1", "tarball": None}, "app2": {"version": "1.0.1", "tarball": b"corrupted"}},
     ["no host keeps its tarball with that checksum in downloads/ and no URL is recorded"]),
    ({"app2": None}, ["app2 failed earlier in this run or did not answer"]),
])
def test_a_scale_out_is_refused_when_the_release_cannot_be_determined(tmp_path, fleet, setup, says):
    for name in ("app1", "app2"):
        spec = setup.get(name, {"version": "1.0.1"})
        if spec is None:
            fleet.unreachable_app(name)
        else:
            fleet.app(name, **spec)
    fleet.app("app3")
    res, out = fleet.plan(tmp_path, "app3")
    assert res.returncode != 0
    assert "add-node.yml: scale-out refused (keel-release-mismatch):" in out, out[-3000:]
    for text in says:
        assert text in out, out[-3000:]
    assert "No host was changed and the lifecycle lock was released." in out
    assert "Copy the tarball from a serving host" not in out


# ------------------------------------------ drain timeout against HAProxy
RELEASE_SLOW = threading.Event()  # a /slow request is answered once this is set (or after 120 s)


class SlowBackend(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            RELEASE_SLOW.wait(timeout=120)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_stat(sock: Path) -> dict[str, dict[str, str]]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    lines = data.decode().lstrip("# ").splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {r["svname"]: r for r in rows if r.get("pxname") == "app"}


def start_haproxy(tmp_path: Path, hosts: list[str], slow_to: str) -> tuple[subprocess.Popen, dict]:
    """HAProxy with backend app: one server <host>-<port> per host, all on one local
    backend server; requests for /slow/* go to slow_to's server."""
    binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if not binary:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowBackend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port, front = backend.server_address[1], free_port()
    sock = tmp_path / "admin.sock"
    servers = "\n".join(f"    server {h}-{port} 127.0.0.1:{port} check inter 300ms fall 2 rise 1" for h in hosts)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""global
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend web
    bind 127.0.0.1:{front}
    default_backend app
backend app
    option httpchk GET /readyz
    use-server {slow_to}-{port} if {{ path_beg /slow/ }}
{servers}
""")
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lb = {"sock": sock, "port": port, "front": front, "server": f"{slow_to}-{port}", "backend": backend}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if sock.exists() and all(haproxy_stat(sock)[f"{h}-{port}"]["status"] == "UP" for h in hosts):
                return proc, lb
        except (OSError, KeyError):
            pass
        time.sleep(0.2)
    stop_haproxy(proc, lb)
    pytest.fail("HAProxy did not report its servers UP")


def stop_haproxy(proc: subprocess.Popen, lb: dict) -> None:
    RELEASE_SLOW.set()
    proc.terminate()
    proc.wait(timeout=10)
    lb["backend"].shutdown()


@pytest.fixture
def haproxy(tmp_path):
    proc, lb = start_haproxy(tmp_path, ["app3"], slow_to="app3")
    yield lb
    stop_haproxy(proc, lb)


@pytest.fixture
def haproxy3(tmp_path):
    """app2 stays, app3 (holding a long request) and app4 leave."""
    proc, lb = start_haproxy(tmp_path, ["app2", "app3", "app4"], slow_to="app3")
    yield lb
    stop_haproxy(proc, lb)


def hold_a_long_request(lb: dict) -> tuple[threading.Thread, list[int]]:
    """A request to lb's slow server, answered once RELEASE_SLOW is set; returns once HAProxy counts it."""
    answers: list[int] = []
    RELEASE_SLOW.clear()

    def long_request():
        with urllib.request.urlopen(f"http://127.0.0.1:{lb['front']}/slow/", timeout=150) as resp:
            answers.append(resp.status)

    client = threading.Thread(target=long_request)
    client.start()
    deadline = time.monotonic() + 5
    while haproxy_stat(lb["sock"])[lb["server"]]["scur"] == "0" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert haproxy_stat(lb["sock"])[lb["server"]]["scur"] == "1"
    return client, answers


def drain(tmp_path: Path, lb: dict, timeout: int) -> tuple[subprocess.CompletedProcess[str], str]:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inv = tmp_path / "drain-hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {
        "loadbalancers": {"hosts": {"lb1": {**local, "haproxy_runtime_api_socket": str(lb["sock"])}}},
        "app": {"hosts": {"app3": local}}}}}))
    play = tmp_path / "drain.yml"
    play.write_text(yaml.safe_dump([{"name": "Drain app3", "hosts": "app3", "gather_facts": False,
                                     "vars": {"app_instance_ports": [lb["port"]], "__keel_drain_timeout": timeout},
                                     "tasks": [
        {"name": "Drain", "ansible.builtin.include_tasks": str(ROOT / "playbooks" / "tasks" / "drain-node.yml")},
        {"name": "Report", "ansible.builtin.debug": {"msg": "DRAIN FAILED: {{ __keel_drain_failed | default('no') }}"}},
    ]}]))
    res = run_playbook(tmp_path, inv, str(play))
    return res, " ".join((res.stdout + res.stderr).split())


def test_a_drain_that_times_out_puts_the_server_back(tmp_path, haproxy):
    client, answers = hold_a_long_request(haproxy)

    res, out = drain(tmp_path, haproxy, timeout=3)
    assert res.returncode == 0, out[-3000:]  # rescued: the including play decides what fails
    assert "DRAIN FAILED: Take the host out of rotation" in out or "DRAIN FAILED: Set this host" in out, out[-3000:]
    assert "not status 'DRAIN'" in out, out[-3000:]
    assert "Put the host's servers back to ready on every load balancer" in out
    assert haproxy_stat(haproxy["sock"])[haproxy["server"]]["status"] == "UP"
    RELEASE_SLOW.set()
    client.join(timeout=30)
    assert answers == [200]  # the long request finished normally


def test_a_drain_that_finishes_leaves_the_server_in_maintenance(tmp_path, haproxy):
    res, out = drain(tmp_path, haproxy, timeout=10)
    assert res.returncode == 0, out[-3000:]
    assert "DRAIN FAILED: no" in out, out[-3000:]
    assert haproxy_stat(haproxy["sock"])[haproxy["server"]]["status"] == "MAINT"


FAKE_SERVICE_FACTS = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={"names": {"type": "list", "elements": "str"}})
module.exit_json(changed=False, ansible_facts={"services": {
    n: {"name": n, "state": "running", "status": "enabled", "source": "systemd"} for n in module.params["names"]}})
"""


def test_remove_node_puts_every_node_back_when_one_drain_times_out(tmp_path, haproxy3):
    """remove-node.yml as shipped, but for the one read it cannot make here (systemd's units:
    a module in the test's library returns them): app3 holds a long request past the drain
    timeout, app4 drains at once; both return to service, nothing is stopped, the lock is
    released, the run fails saying so."""
    if not shutil.which("socat"):
        pytest.skip("socat is not installed (the load balancer check reads the Runtime API with it)")
    books = tmp_path / "playbooks"
    books.mkdir()
    for name in ("tasks", "validate.yml"):
        (books / name).symlink_to(ROOT / "playbooks" / name)
    plays = yaml.safe_load((ROOT / "playbooks" / "remove-node.yml").read_text())
    replaced = 0
    for play in plays:
        for task in play.get("tasks") or []:
            if "ansible.builtin.service_facts" in task:
                del task["ansible.builtin.service_facts"]
                task["fake_service_facts"] = {"names": "{{ fake_units }}"}
                replaced += 1
            if "ansible.builtin.systemd_service" in task:  # never reached here; never on this machine either
                del task["ansible.builtin.systemd_service"]
                task["ansible.builtin.debug"] = {"msg": "would stop {{ item }}"}
                replaced += 1
    assert replaced == 2
    (books / "remove-node.yml").write_text(yaml.safe_dump(plays, sort_keys=False))
    library = tmp_path / "library"
    library.mkdir()
    (library / "fake_service_facts.py").write_text(FAKE_SERVICE_FACTS)

    port, lock = haproxy3["port"], tmp_path / "lock.json"
    local = {"ansible_connection": "local", "ansible_become": False, "ansible_python_interpreter": sys.executable}
    units = [f"keel-app@api-{port}.service", "keel-app@backend-9000.service"]
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {
        "vars": {"keel_lifecycle_lock_path": str(lock), "keel_lifecycle_lock_textfile_dir": str(tmp_path / "none")},
        "children": {
            "loadbalancers": {"hosts": {"lb1": {**local, "keel_private_ip": "127.0.0.11",
                                                "haproxy_runtime_api_socket": str(haproxy3["sock"])}}},
            "app": {"hosts": {h: {**local, "keel_private_ip": f"127.0.0.{20 + i}", "fake_units": units}
                              for i, h in enumerate(("app2", "app3", "app4"))}}}}}))
    client, answers = hold_a_long_request(haproxy3)

    env = ansible_env(tmp_path)
    env["ANSIBLE_LIBRARY"] = f"{ROOT / 'plugins' / 'modules'}:{library}"
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), str(books / "remove-node.yml"),
                          "-e", "keel_remove_nodes=app3,app4", "-e", "keel_remove_drain_timeout=3"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, out[-3000:]
    assert "remove-node.yml: scale-in aborted (drain): app3 did not finish draining within 3 s per server" in out, \
        out[-3000:]
    assert "Every node of this run (app3, app4) is back in rotation on every load balancer and nothing was stopped; " \
        "the lifecycle lock was released." in out, out[-3000:]
    assert "Stop and disable the app instances" not in out
    stat = haproxy_stat(haproxy3["sock"])
    assert {h: stat[f"{h}-{port}"]["status"] for h in ("app2", "app3", "app4")} == \
        {"app2": "UP", "app3": "UP", "app4": "UP"}
    assert not lock.exists(), lock.read_text()
    RELEASE_SLOW.set()
    client.join(timeout=30)
    assert answers == [200]
    print(out[out.index("remove-node.yml: scale-in aborted"):][:900])
