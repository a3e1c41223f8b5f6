"""The converge benchmark's pure parts: the generated inventory (parsed by the real
ansible-inventory, so variable precedence is Ansible's own), the growth figures,
the parsers of ansible-playbook's output and the serving check's decisions."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from ipaddress import ip_address, ip_network
from pathlib import Path

import bench_converge as bc
import pytest

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_INVENTORY = ROOT / ".venv" / "bin" / "ansible-inventory"
needs_ansible = pytest.mark.skipif(not ANSIBLE_INVENTORY.exists(), reason="no .venv (scripts/setup.sh)")


def _listing(inventory: Path, *args: str) -> dict:
    res = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(inventory), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(res.stdout)


@pytest.fixture(scope="module", params=[2, 8], ids=["n2", "n8"])
def generated(request, tmp_path_factory):
    n = request.param
    state = tmp_path_factory.mktemp(f"n{n}")
    inventory = bc.write_inventory(n, state)
    listing = _listing(inventory, "--list") if ANSIBLE_INVENTORY.exists() else {}
    return n, state, inventory, listing


# ------------------------------------------------------------------ inventory


@needs_ansible
def test_inventory_has_n_app_hosts_one_lb_one_mon_in_the_labs_groups(generated):
    n, _, _, listing = generated
    assert bc._group_hosts(listing, "app") == {f"cb-app{i}" for i in range(1, n + 1)}
    assert bc._group_hosts(listing, "loadbalancers") == {"cb-lb1"}
    assert bc._group_hosts(listing, "monitoring") == {"cb-mon1"}
    every = {"cb-lb1", "cb-mon1"} | {f"cb-app{i}" for i in range(1, n + 1)}
    assert bc._group_hosts(listing, "lab") == every
    assert set(listing["_meta"]["hostvars"]) == every


@needs_ansible
def test_addresses_are_unique_inside_the_bench_subnet_and_outside_the_labs(generated):
    n, _, _, listing = generated
    bench, lab = ip_network("172.30.90.0/24"), bc.lab_subnet()
    assert lab == ip_network("172.30.80.0/24")  # read from inventories/lab
    assert not bench.overlaps(lab)
    ips = [hv["keel_private_ip"] for hv in listing["_meta"]["hostvars"].values()]
    assert len(ips) == n + 2
    assert len(set(ips)) == len(ips)
    for ip in map(ip_address, ips):
        assert ip in bench and ip not in lab
        assert ip not in (bench.network_address, bench.network_address + 1, bench.broadcast_address)


@needs_ansible
def test_no_host_publishes_a_port(generated):
    _, _, _, listing = generated
    for host, hv in listing["_meta"]["hostvars"].items():
        assert "keel_lab_published_ports" not in hv, host
    # the lab's own load balancer does publish: the variable name checked above is the real one
    lab = _listing(ROOT / "inventories" / "lab", "--host", "lb1")
    assert lab["keel_lab_published_ports"]


@needs_ansible
def test_the_bench_network_wins_over_the_labs_group_vars_for_every_host(generated):
    n, state, inventory, listing = generated
    for host, hv in listing["_meta"]["hostvars"].items():
        assert hv["keel_lab_network"] == "keel-converge-bench", host
        assert hv["keel_lab_subnet"] == "172.30.90.0/24", host
        assert hv["keel_lab_gateway"] == "172.30.90.1", host
        assert hv["haproxy_tls_lab_ca_dir"] == str(state / "credentials" / "lab-ca"), host
        # the lab's own values still arrive through the linked group_vars
        assert hv["ansible_connection"] == "community.docker.docker", host
        assert hv["app_instances"] == 2, host
    one = _listing(inventory, "--host", f"cb-app{n}")
    assert one["keel_lab_network"] == "keel-converge-bench"
    assert bc.inventory_problems(listing, n, bc.lab_subnet()) == []


@needs_ansible
def test_inventory_check_catches_the_lab_network_winning(tmp_path, monkeypatch):
    real = bc.bench_group_vars

    def without_overrides(state):
        kept = real(state)
        del kept["keel_lab_network"], kept["keel_lab_gateway"]
        return kept

    monkeypatch.setattr(bc, "bench_group_vars", without_overrides)
    listing = _listing(bc.write_inventory(2, tmp_path), "--list")
    problems = bc.inventory_problems(listing, 2, bc.lab_subnet())
    assert any("keel_lab_network is 'keel-lab'" in p for p in problems), problems
    assert any("172.30.80.0/24" in p for p in problems), problems  # the lab's gateway leaks in


@needs_ansible
def test_inventory_check_rejects_the_labs_own_inventory():
    problems = bc.inventory_problems(_listing(ROOT / "inventories" / "lab", "--list"), 2, bc.lab_subnet())
    assert any("group app" in p for p in problems)


RENDER = """
import json, sys
from ansible.plugins.loader import init_plugin_loader
init_plugin_loader([])
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible.vars.manager import VariableManager
loader = DataLoader()
inventory = InventoryManager(loader=loader, sources=[sys.argv[1]])
variables = VariableManager(loader=loader, inventory=inventory).get_vars(host=inventory.get_host(sys.argv[2]))
variables["playbook_dir"] = sys.argv[3]
templar = Templar(loader=loader, variables=variables)
print(json.dumps({name: templar.template(variables[name]) for name in sys.argv[4:] if name in variables}))
"""


@needs_ansible
def test_lab_group_vars_render_through_the_links(generated, tmp_path):
    """Templates of the lab's group_vars (KEEL_CACHE lookups, the lab's subnet and
    gateway) render for the benchmark's hosts as Ansible renders them in a play."""
    _, state, inventory, _ = generated
    env = dict(os.environ, KEEL_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", RENDER, str(inventory), "cb-mon1",
                          str(ROOT / "playbooks"), "keel_lab_mirror", "keel_lab_release_dir", "common_chrony_allow",
                          "firewall_admin_networks", "haproxy_stats_bind_address", "ansible_host",
                          "artifact_cache_dir"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    values = json.loads(res.stdout.strip().splitlines()[-1])
    assert values["keel_lab_mirror"] == f"{tmp_path}/cache/test-mirror"
    assert values["keel_lab_release_dir"] == f"{tmp_path}/cache/releases"
    assert values["common_chrony_allow"] == ["172.30.90.0/24"]
    if "firewall_admin_networks" in values:
        assert values["firewall_admin_networks"] == ["172.30.90.1/32"]
    assert values["haproxy_stats_bind_address"] == "172.30.90.31"
    assert values["ansible_host"] == "keel-lab-cb-mon1"
    assert values["artifact_cache_dir"] == str(state / "artifacts")


def test_inventory_links_the_labs_group_vars_relatively(tmp_path):
    inventory = bc.write_inventory(4, tmp_path)
    for link in (inventory / "group_vars").iterdir():
        if link.name == "converge_bench.yml":
            continue
        assert link.is_symlink() and not os.readlink(link).startswith("/")
        assert link.resolve() == (bc.LAB_GROUP_VARS / link.name).resolve()
    # rewriting replaces the previous inventory (a smaller N leaves no extra host)
    bc.write_inventory(2, tmp_path)
    assert "cb-app3" not in (inventory / "hosts.yml").read_text()


def test_parse_app_hosts():
    assert bc.parse_app_hosts("2,4,8") == [2, 4, 8]
    assert bc.parse_app_hosts("8, 2,2") == [2, 8]
    for bad in ("", "0,2", "a", "2,101"):
        with pytest.raises(Exception, match="app-hosts"):
            bc.parse_app_hosts(bad)


def test_app_addresses_never_meet_the_lb_mon_or_gateway():
    layout = bc.host_layout(bc.MAX_APP_HOSTS)
    ips = [ip for hosts in layout.values() for ip in hosts.values()]
    assert len(set(ips)) == len(ips) == bc.MAX_APP_HOSTS + 2
    assert "172.30.90.1" not in ips


# ------------------------------------------------------------------ growth


def test_growth_below_linear():
    g = bc.growth({2: 600.0, 4: 720.0, 8: 960.0})
    rows = {r["app_hosts"]: r for r in g["rows"]}
    assert g["base_app_hosts"] == 2
    assert rows[2]["ratio"] == 1.0 and rows[2]["below_linear"] is None
    assert rows[4]["ratio"] == 1.2 and rows[4]["linear"] == 2.0 and rows[4]["below_linear"] is True
    assert rows[8]["ratio"] == 1.6 and rows[8]["linear"] == 4.0 and rows[8]["ratio_of_linear"] == 0.4
    assert rows[8]["exponent"] == round(math.log(1.6) / math.log(4), 3)
    assert rows[8]["seconds_per_app_host"] == 120.0
    assert rows[8]["marginal_seconds_per_app_host"] == 60.0
    assert g["fit"] == {"fixed_seconds": 480.0, "seconds_per_app_host": 60.0}
    assert g["verdict"] == "below linear"


def test_growth_exactly_linear_is_not_below_linear():
    g = bc.growth({2: 100.0, 4: 200.0, 8: 400.0})
    assert [r["exponent"] for r in g["rows"]] == [None, 1.0, 1.0]
    assert g["fit"] == {"fixed_seconds": 0.0, "seconds_per_app_host": 50.0}
    assert g["verdict"] == "not below linear"


def test_growth_one_superlinear_point_fails_the_verdict():
    g = bc.growth({2: 100.0, 4: 150.0, 8: 500.0})
    assert [r["below_linear"] for r in g["rows"]] == [None, True, False]
    assert g["verdict"] == "not below linear"


def test_growth_is_against_the_smallest_n_and_skips_missing_figures():
    g = bc.growth({8: 900.0, 4: None, 3: 300.0})
    assert g["base_app_hosts"] == 3
    assert [r["app_hosts"] for r in g["rows"]] == [3, 8]
    assert g["rows"][1]["linear"] == round(8 / 3, 3)
    assert bc.growth({2: 500.0})["verdict"] == "incomplete: one N only"
    assert bc.growth({})["verdict"] == "no figures"


def test_only_converges_that_then_served_are_figures():
    runs = [
        {"app_hosts": 2, "site_seconds": 500.0, "serving": {"status": "ok"}, "status": "ok"},
        {"app_hosts": 4, "site_seconds": 610.0, "serving": {"status": "ok"}, "status": "failed"},  # rerun failed
        {"app_hosts": 8, "site_seconds": 90.0, "status": "failed"},  # site.yml failed early
        {"app_hosts": 16, "status": "skipped"},
    ]
    assert bc.converge_seconds(runs) == {2: 500.0, 4: 610.0}


# ------------------------------------------------------------------ ansible output

SITE_LOG = """\
PLAY [Validate the controller and the inventory] *******************************

TASK [Check the ansible-core version] ******************************************
Friday 27 November 2026  04:00:00 +0000 (0:00:00.020)       0:00:00.020 *******
ok: [localhost]

PLAY [Check the inputs of the later layers] ************************************

PLAY [Baseline every host] *****************************************************

TASK [Gathering Facts] *********************************************************
Friday 27 November 2026  04:00:01 +0000 (0:00:01.000)       0:00:01.020 *******
ok: [cb-app1]

TASK [common : Install the baseline packages] **********************************
Friday 27 November 2026  04:00:05 +0000 (0:00:04.000)       0:00:05.020 *******
changed: [cb-app1]

PLAY [Application instances] ***************************************************

TASK [app : Unpack the release] ************************************************
Friday 27 November 2026  04:01:05 +0000 (0:01:00.000)       0:01:05.020 *******
changed: [cb-app1]

RUNNING HANDLER [app : Restart the instances] **********************************
Friday 27 November 2026  04:02:05 +0000 (0:01:00.000)       0:02:05.020 *******
changed: [cb-app1]

PLAY RECAP *********************************************************************
cb-app1                    : ok=40   changed=25   unreachable=0    failed=0    skipped=3    rescued=0    ignored=0
cb-lb1                     : ok=30   changed=17   unreachable=0    failed=0    skipped=2    rescued=0    ignored=0
localhost                  : ok=3    changed=0    unreachable=0    failed=0    skipped=0    rescued=0    ignored=0


TASKS RECAP ********************************************************************
Friday 27 November 2026  04:02:35 +0000 (0:00:30.000)       1:02:35.520 *******
===============================================================================
app : Unpack the release ----------------------------------------------- 60.00s
common : Install the baseline packages ---------------------------------- 60.00s
a task whose name is far too long to leave any room for the dashes at all 1234.56s
Gathering Facts ---------------------------------------------------------- 4.00s
Playbook run took 0 days, 0 hours, 2 minutes, 35 seconds
"""


def test_parse_recap_and_totals():
    recap = bc.parse_recap(SITE_LOG)
    assert set(recap) == {"cb-app1", "cb-lb1", "localhost"}
    assert recap["cb-app1"]["changed"] == 25
    assert bc.recap_total(recap, "changed") == 42
    assert bc.recap_total(recap, "failed") == 0


def test_parse_recap_keeps_the_last_recap_only():
    twice = SITE_LOG.replace("changed=25", "changed=1") + "\nPLAY RECAP ***\ncb-app1 : ok=1 changed=0 failed=0\n"
    assert bc.recap_total(bc.parse_recap(twice), "changed") == 0


def test_parse_play_times():
    plays = bc.parse_play_times(SITE_LOG)
    assert [p["name"] for p in plays] == [
        "Validate the controller and the inventory", "Check the inputs of the later layers",
        "Baseline every host", "Application instances"]
    seconds = [p["seconds"] for p in plays]
    # validate: 0.02 -> 1.02; a play with no task: 0; baseline: 1.02 -> 65.02; the last play
    # up to the TASKS RECAP clock (1 h 02 min 35.52 s)
    assert seconds == [1.0, 0.0, 64.0, 3690.5]


def test_parse_top_tasks():
    tasks = bc.parse_top_tasks(SITE_LOG)
    assert tasks[0] == {"task": "app : Unpack the release", "seconds": 60.0}
    assert {"task": "a task whose name is far too long to leave any room for the dashes at all",
            "seconds": 1234.56} in tasks
    assert len(tasks) == 4
    assert bc.parse_top_tasks("no recap here") == []


# ------------------------------------------------------------------ serving check

STATS = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act
http,FRONTEND,,,0,1,8000,3,0,0,0,0,0,,,,,OPEN,,
app,cb-app1-8000,0,0,0,1,1000,5,0,0,,0,,0,0,0,0,UP,1,1
app,cb-app1-8001,0,0,0,1,1000,5,0,0,,0,,0,0,0,0,UP,1,1
app,cb-app2-8000,0,0,0,1,1000,5,0,0,,0,,0,0,0,0,UP,1,1
app,cb-app2-8001,0,0,0,1,1000,5,0,0,,0,,0,0,0,0,DOWN 1/2,1,1
app,BACKEND,0,0,0,1,800,20,0,0,0,0,,0,0,0,0,UP,4,4
stats,FRONTEND,,,1,1,8000,2,0,0,0,0,0,,,,,OPEN,,
"""


def test_backend_servers_from_the_stats_csv():
    servers = bc.backend_servers(STATS)
    assert servers == {"cb-app1-8000": "UP", "cb-app1-8001": "UP", "cb-app2-8000": "UP", "cb-app2-8001": "DOWN 1/2"}


def test_serving_problems():
    servers = bc.backend_servers(STATS)
    assert bc.serving_problems(servers, ["cb-app1", "cb-app2"]) == ["cb-app2-8001 is DOWN 1/2"]
    up = {name: "UP" for name in servers}
    assert bc.serving_problems(up, ["cb-app1", "cb-app2"]) == []
    assert bc.serving_problems(up, ["cb-app1", "cb-app2", "cb-app3"]) == ["no server of cb-app3 in backend app"]
    assert bc.serving_problems(up, ["cb-app1"]) == ["unexpected server host cb-app2"]
    assert bc.serving_problems({}, ["cb-app1"]) == ["backend app has no servers"]


def test_answer_problem():
    assert bc.answer_problem(json.dumps({"service": "api", "backend": {"service": "backend"}})) is None
    assert bc.answer_problem('{"service": "api"}')
    assert bc.answer_problem("<html>503</html>")


def test_haproxy_stats_settings_come_from_the_role():
    assert bc.haproxy_stats_settings() == (8404, "admin")


# ------------------------------------------------------------------ report


def test_report_and_summary_render(tmp_path):
    runs = [
        {"app_hosts": 2, "hosts": 4, "status": "ok", "site_seconds": 600.0, "serving": {"status": "ok",
         "servers_up": 4}, "rerun": {"seconds": 200.0, "changed": 0}, "destroy": {"left": []},
         "plays": [{"name": "Baseline every host", "seconds": 300.0}],
         "top_tasks": [{"task": "common : a | b", "seconds": 99.0}]},
        {"app_hosts": 4, "hosts": 6, "status": "failed", "error": "site.yml failed with rc 2", "site_seconds": 50.0,
         "destroy": {"left": ["keel-lab-cb-app3"]}},
    ]
    (tmp_path / "n2-site.log").write_text("x")
    figures = {"started": "2026-11-27T04:00:00Z", "finished": "2026-11-27T05:00:00Z", "app_hosts": [2, 4],
               "rerun": True, "forks": 20, "playbook_timeout_min": 40, "total_timeout_min": 240,
               "report_dir": str(tmp_path), "runs": runs, "growth": bc.growth(bc.converge_seconds(runs)),
               "machine": {"nproc": 2, "cpus": 2, "memory_gib": 23.4, "kernel": "6.1", "load_average_at_start": [0.1],
                           "containers_running_at_start": 0, "ansible": "ansible-playbook [core 2.19.14]",
                           "docker": "26.1", "git": "abc123"}}
    report = bc.render_report(figures)
    assert "| 2 | 4 | 600.0 | 300.0 | 1.00 | 1.00 | 1.00 | - | 4 servers UP | 200.0 (0) | ok |" in report
    assert "| 4 | 6 | 50.0 | - |" in report and "failed: site.yml failed with rc 2" in report
    assert "incomplete: one N only" in report
    assert "nproc 2" in report and "forks: 20" in report
    assert "| common : a / b | 99.0 |" in report
    assert "`n2-site.log`" in report and "LEFT keel-lab-cb-app3" in report
    assert "incomplete" in bc.summary_table(figures)


def test_help_runs_without_docker():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_converge.py"), "--help"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0 and "--app-hosts" in res.stdout


# ------------------------------------------------------------------ orchestration (fake ansible-playbook)

FAKE_PLAYBOOK = """\
import os, sys, time
playbook = os.path.basename(sys.argv[-1]).removesuffix(".yml")
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(playbook + "\\n")
with open(os.environ["FAKE_CALLS"] + ".pids", "a") as pids:
    pids.write(str(os.getpid()) + "\\n")
print("PLAY [" + playbook + "] ***", flush=True)
print("TASK [t] ***\\nFriday 27 November 2026  04:00:00 +0000 (0:00:00.010)       0:00:00.010 ***")
time.sleep(float(os.environ.get("FAKE_SLEEP_" + playbook.replace("-", "_"), "0")))
print("PLAY RECAP ***\\ncb-app1 : ok=3 changed=" + os.environ.get("FAKE_CHANGED", "2") + " failed=0", flush=True)
sys.exit(int(os.environ.get("FAKE_RC_" + playbook.replace("-", "_"), "0")))
"""


@pytest.fixture
def fake_bench(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ansible-playbook"
    fake.write_text(f"#!{sys.executable}\n{FAKE_PLAYBOOK}")
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setattr(bc, "VENV_BIN", bin_dir)
    monkeypatch.setattr(bc, "BENCH_ROOT", tmp_path / "state")
    monkeypatch.setattr(bc, "ansible_inventory_list", lambda *a, **k: {})
    monkeypatch.setattr(bc, "inventory_problems", lambda *a, **k: [])
    monkeypatch.setattr(bc, "leftovers", lambda: {"containers": [], "networks": []})
    monkeypatch.setattr(bc, "check_serving", lambda n, state, timeout: {"status": "ok", "servers_up": 2 * n})

    def make(app_hosts, **kw):
        settings = {"forks": 20, "rerun": False, "keep_going": False, "playbook_timeout": 60,
                    "destroy_timeout": 60, "check_timeout": 5, "deadline": bc.time.monotonic() + 600,
                    "out": tmp_path / "report"} | kw
        return bc.Bench(app_hosts=app_hosts, **settings)

    return make, lambda: calls.read_text().split() if calls.exists() else []


def test_every_n_is_created_converged_and_destroyed(fake_bench):
    make, calls = fake_bench
    bench = make([2, 4], rerun=True)
    bench.run()
    assert calls() == ["lab-create", "site", "site", "lab-destroy"] * 2
    assert [r["status"] for r in bench.runs] == ["ok", "ok"]
    assert bench.runs[0]["site_changed"] == 2 and bench.runs[0]["rerun"]["changed"] == 2
    assert bench.runs[1]["serving"]["servers_up"] == 8
    assert all(r["destroy"]["left"] == [] and r["destroy"]["rc"] == 0 for r in bench.runs)


def test_a_failed_converge_is_destroyed_and_stops_the_run(fake_bench, monkeypatch):
    make, calls = fake_bench
    monkeypatch.setenv("FAKE_RC_site", "2")
    bench = make([2, 4, 8])
    bench.run()
    assert calls() == ["lab-create", "site", "lab-destroy"]
    assert [r["status"] for r in bench.runs] == ["failed", "skipped", "skipped"]
    assert "site.yml failed with rc 2" in bench.runs[0]["error"]
    assert bc.converge_seconds(bench.runs) == {}


def test_keep_going_runs_the_other_n(fake_bench, monkeypatch):
    make, calls = fake_bench
    monkeypatch.setenv("FAKE_RC_lab_create", "1")
    bench = make([2, 4], keep_going=True)
    bench.run()
    assert calls() == ["lab-create", "lab-destroy"] * 2


def test_a_converge_over_its_timeout_is_stopped_and_destroyed(fake_bench, monkeypatch):
    make, calls = fake_bench
    monkeypatch.setenv("FAKE_SLEEP_site", "60")
    bench = make([2], playbook_timeout=2)
    t0 = bc.time.monotonic()
    bench.run()
    assert bc.time.monotonic() - t0 < 40
    assert calls() == ["lab-create", "site", "lab-destroy"]
    assert "timed out" in bench.runs[0]["error"]
    assert "stopped after the 2 s timeout" in (bench.out / "n2-site.log").read_text()


def test_ctrl_c_still_destroys(fake_bench, monkeypatch):
    make, calls = fake_bench

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(bc, "check_serving", interrupted)
    bench = make([2, 4])
    with pytest.raises(KeyboardInterrupt):
        bench.run()
    assert calls() == ["lab-create", "site", "lab-destroy"]
    assert bench.runs[0]["status"] == "interrupted"


def test_ctrl_c_while_ansible_runs_stops_it_and_destroys(fake_bench, monkeypatch, tmp_path):
    make, calls = fake_bench
    monkeypatch.setenv("FAKE_SLEEP_site", "60")
    bench = make([2])
    # A shell's background job (CI, nohup ... &) starts with SIGINT ignored, and then
    # Python raises no KeyboardInterrupt: act as a terminal's Ctrl-C would.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    t0 = bc.time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            bench.run()
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert bc.time.monotonic() - t0 < 40
    assert calls() == ["lab-create", "site", "lab-destroy"]
    site_pid = int((tmp_path / "calls.pids").read_text().split()[1])
    with pytest.raises(ProcessLookupError):
        os.kill(site_pid, 0)  # the interrupted ansible-playbook is gone


def test_the_total_bound_skips_what_is_left(fake_bench):
    make, calls = fake_bench
    bench = make([2, 4], deadline=bc.time.monotonic() - 1)
    bench.run()
    assert calls() == []
    assert [r["status"] for r in bench.runs] == ["skipped", "skipped"]


def test_destroy_falls_back_to_docker_when_something_is_left(fake_bench, monkeypatch):
    make, _ = fake_bench
    state = iter([{"containers": ["keel-lab-cb-app1"], "networks": []}])
    monkeypatch.setattr(bc, "leftovers", lambda: next(state))
    monkeypatch.setattr(bc, "remove_leftovers", lambda: {"containers": [], "networks": []})
    bench = make([2])
    bench.run()
    assert bench.runs[0]["destroy"]["left"] == []


def test_main_writes_the_report_and_figures(fake_bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bc, "preflight", lambda: None)
    monkeypatch.setattr(bc, "machine", lambda: {"nproc": 2, "cpus": 2, "memory_gib": 23.4, "kernel": "6.1",
                                                "load_average_at_start": [0.1], "containers_running_at_start": 0,
                                                "ansible": "ansible-playbook [core 2.19.14]", "docker": "26.1",
                                                "git": "abc"})
    monkeypatch.setattr(bc, "REPORTS", tmp_path / "reports")
    monkeypatch.setenv("FAKE_SLEEP_site", "0.3")
    assert bc.main(["--app-hosts", "2,4"]) == 0
    (report_dir,) = (tmp_path / "reports").iterdir()
    figures = json.loads((report_dir / "figures.json").read_text())
    assert figures["forks"] == 20 and [r["status"] for r in figures["runs"]] == ["ok", "ok"]
    assert [r["app_hosts"] for r in figures["growth"]["rows"]] == [2, 4]
    assert "# Converge time by number of app hosts" in (report_dir / "report.md").read_text()
    assert {p.name for p in report_dir.glob("*.log")} >= {"n2-site.log", "n4-lab-destroy.log"}
