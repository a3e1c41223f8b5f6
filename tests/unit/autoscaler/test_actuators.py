"""Executors, providers and inventory writers against real processes and a loopback HTTP API."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from keel_autoscaler.actuators import AwxExecutor, CommandProvider, FileInventory, ProviderError, RunnerExecutor
from keel_autoscaler.actuators.executors import FAILED, LOST, RUNNING, SUCCESSFUL, JobFailed


def fake_project(tmp_path: Path, body: str) -> Path:
    """A project whose scripts/awx_run.py is a stand-in playbook run (records its argv)."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    script = project / "scripts" / "awx_run.py"
    script.write_text("import json, sys, time, pathlib\n"
                      "pathlib.Path(sys.argv[sys.argv.index('--report') + 1]).write_text(json.dumps(sys.argv))\n"
                      + body)
    return project


def runner(tmp_path: Path, body: str) -> RunnerExecutor:
    project = fake_project(tmp_path, body)
    return RunnerExecutor({"project_dir": str(project), "inventory": [str(tmp_path / "inv")],
                           "python": sys.executable}, str(tmp_path / "state"))


def test_runner_success_and_its_command_line(tmp_path):
    ex = runner(tmp_path, "sys.exit(0)\n")
    handles = []
    handle = ex.run("add", {"keel_new_nodes": ["app3"]}, 30, on_launch=handles.append)
    assert handles == [handle] and ex.poll(handle) == SUCCESSFUL
    argv = json.loads((Path(handle["dir"]) / "report.json").read_text())
    assert "playbooks/add-node.yml" in argv and "-i" in argv
    extra = json.loads((Path(handle["dir"]) / "extravars.json").read_text())
    assert extra == {"keel_new_nodes": ["app3"]}


def test_runner_forget_runs_forget_node(tmp_path):
    ex = runner(tmp_path, "sys.exit(0)\n")
    handle = ex.run("forget", {}, 30, on_launch=lambda h: None)
    argv = json.loads((Path(handle["dir"]) / "report.json").read_text())
    assert "playbooks/forget-node.yml" in argv and "--tags" not in argv
    ex.cfg["forget_tags"] = "loadbalancers"
    handle = ex.run("forget", {}, 30, on_launch=lambda h: None)
    argv = json.loads((Path(handle["dir"]) / "report.json").read_text())
    assert argv[argv.index("--tags") + 1] == "loadbalancers"


def test_runner_failure_raises_with_output(tmp_path):
    ex = runner(tmp_path, "print('TASK failed: keel-release-mismatch'); sys.exit(2)\n")
    with pytest.raises(JobFailed) as err:
        ex.run("add", {}, 30, on_launch=lambda h: None)
    assert "keel-release-mismatch" in err.value.output


def test_runner_job_survives_its_launcher(tmp_path):
    """A second executor (the restarted service) polls the journalled handle: running, then the
    result; the job is never launched again."""
    ex = runner(tmp_path, "time.sleep(1.5); sys.exit(0)\n")
    handle = ex.launch("add", {})
    again = RunnerExecutor(ex.cfg, str(tmp_path / "state"))
    assert again.poll(handle) == RUNNING
    deadline = time.monotonic() + 20
    while again.poll(handle) == RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)
    assert again.poll(handle) == SUCCESSFUL
    assert len(list((tmp_path / "state" / "jobs").iterdir())) == 1


def test_runner_lost_job(tmp_path):
    ex = runner(tmp_path, "time.sleep(30)\n")
    handle = ex.launch("add", {})
    os.killpg(handle["pid"], 9)
    deadline = time.monotonic() + 10
    while ex.poll(handle) == RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ex.poll(handle) in (LOST, FAILED)


def test_runner_timeout_cancels(tmp_path):
    ex = runner(tmp_path, "time.sleep(30)\n")
    handle = ex.launch("add", {})
    assert ex.wait(handle, timeout=0.5, interval=0.1) == FAILED


class FakeAwx:
    """AWX's job template launch and job endpoints, on loopback, for the executor's protocol."""

    def __init__(self) -> None:
        self.launches: list[dict] = []
        self.jobs: dict[int, str] = {}
        self.auth: list[str] = []
        owner = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                owner.auth.append(self.headers.get("Authorization", ""))
                if self.path.startswith("/api/v2/job_templates/?name="):
                    self._json(200, {"results": [{"id": 7, "name": "keel add-node"}]})
                elif self.path.startswith("/api/v2/jobs/"):
                    jid = int(self.path.split("/")[4])
                    self._json(200, {"id": jid, "status": owner.jobs.get(jid, "running")})
                else:
                    self._json(404, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/api/v2/job_templates/7/launch/":
                    owner.launches.append(body)
                    jid = 100 + len(owner.launches)
                    owner.jobs[jid] = "pending"
                    self._json(201, {"job": jid, "id": jid})
                else:
                    self._json(404, {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


def test_awx_executor_launches_once_and_polls(tmp_path):
    awx = FakeAwx()
    token = tmp_path / "awx-token"
    token.write_text("s3cret-token-for-awx\n")
    cfg = {"url": awx.url, "token_file": str(token), "add_template": "keel add-node",
           "remove_template": "keel remove-node", "forget_template": "keel site"}
    ex = AwxExecutor(cfg)
    handle = ex.launch("add", {"keel_new_nodes": ["app3"]})
    assert handle["id"] == 101 and awx.launches == [{"extra_vars": {"keel_new_nodes": "app3"}}]
    assert ex.poll(handle) == RUNNING
    # the restarted service polls the journalled id
    again = AwxExecutor(cfg)
    awx.jobs[101] = "successful"
    assert again.poll(handle) == SUCCESSFUL
    awx.jobs[101] = "failed"
    assert again.poll(handle) == FAILED
    assert len(awx.launches) == 1
    assert set(awx.auth) == {"Bearer s3cret-token-for-awx"}
    awx.httpd.shutdown()


def provider_script(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "provider"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


def test_command_provider(tmp_path):
    argv = provider_script(tmp_path, 'case "$1" in\n'
                           'provision) echo creating >&2; echo \'{"name": "app9", "ansible_host": "10.0.0.9", '
                           '"keel_private_ip": "10.0.0.9"}\';;\n'
                           f'release) echo "$2" >> {tmp_path}/released;;\n'
                           'capacity) echo 3;;\nesac\n')
    p = CommandProvider({"argv": argv})
    hosts = p.acquire(1, "req1", set())
    assert hosts == [{"name": "app9", "ansible_host": "10.0.0.9", "keel_private_ip": "10.0.0.9"}]
    p.release(["app9"], "req1")
    assert (tmp_path / "released").read_text() == "app9\n"
    assert p.spare(set()) == 3


@pytest.mark.parametrize("body", ["exit 1\n", "echo not-json\n", "echo '{\"name\": \"x\"}'\n"])
def test_command_provider_refuses_failures_and_bad_answers(tmp_path, body):
    with pytest.raises(ProviderError):
        CommandProvider({"argv": provider_script(tmp_path, body)}).acquire(1, "r", set())


def test_file_inventory_is_valid_yaml_for_ansible(tmp_path):
    import yaml
    inv = FileInventory({"path": str(tmp_path / "autoscaler.yml"), "group": "app"})
    inv.add([{"name": "app3"}, {"name": "app9", "ansible_host": "10.0.0.9", "keel_private_ip": "10.0.0.9"}], 1000.0)
    data = yaml.safe_load((tmp_path / "autoscaler.yml").read_text())
    assert data["all"]["children"]["app"]["hosts"]["app9"]["keel_private_ip"] == "10.0.0.9"
    inv.remove(["app3", "app9"])
    assert inv.managed() == {}
    assert yaml.safe_load((tmp_path / "autoscaler.yml").read_text()) == {"all": {}}
    assert oct((tmp_path / "autoscaler.yml").stat().st_mode & 0o777) == "0o644"
