"""Executors run one of keel's playbooks and report whether it succeeded.

Every launch is journalled by the caller (``on_launch`` receives a handle: the AWX job id, or
the runner's process and directory) before the executor waits on it; ``poll(handle)`` answers
for a handle found in the journal after a restart, so a job is never launched twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from .http import ApiError, JsonApi

RUNNING, SUCCESSFUL, FAILED, LOST = "running", "successful", "failed", "lost"


class JobFailed(Exception):
    def __init__(self, message: str, handle: dict[str, Any] | None = None, output: str = "") -> None:
        super().__init__(message)
        self.handle = handle
        self.output = output


class Executor:
    kind = "executor"

    def launch(self, job: str, extra_vars: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def poll(self, handle: dict[str, Any]) -> str:
        raise NotImplementedError

    def output(self, handle: dict[str, Any]) -> str:
        return ""

    def wait(self, handle: dict[str, Any], timeout: float, interval: float = 2.0,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> str:
        deadline = clock() + timeout
        while True:
            status = self.poll(handle)
            if status != RUNNING:
                return status
            if clock() > deadline:
                self.cancel(handle)
                return FAILED
            sleep(interval)

    def cancel(self, handle: dict[str, Any]) -> None:
        pass

    def run(self, job: str, extra_vars: dict[str, Any], timeout: float,
            on_launch: Callable[[dict[str, Any]], None], handle: dict[str, Any] | None = None) -> dict[str, Any]:
        """Launch (or, given a journalled handle, only wait for) one job; raise JobFailed unless it succeeds."""
        if handle is None:
            handle = self.launch(job, extra_vars)
            on_launch(handle)
        status = self.wait(handle, timeout)
        if status != SUCCESSFUL:
            raise JobFailed(f"{job} job {handle.get('id')} ended {status}", handle, self.output(handle))
        return handle


class RunnerExecutor(Executor):
    """ansible-runner on this host (a controller: SSH keys, vault password and a keel checkout),
    through scripts/awx_run.py, the way an AWX job runs a playbook. Each job runs in its own
    session and writes its exit code to a file, so a restarted autoscaler finds the job still
    running, or its result, instead of launching it again."""

    kind = "runner"
    PLAYBOOKS: ClassVar[dict[str, str]] = {
        "add": "add_playbook", "remove": "remove_playbook", "forget": "forget_playbook", "lock": "lock_playbook"}

    def __init__(self, cfg: dict[str, Any], state_dir: str) -> None:
        self.cfg = cfg
        self.project = Path(cfg["project_dir"])
        inv = cfg["inventory"]
        self.inventory = inv if isinstance(inv, list) else [inv]
        self.jobs = Path(state_dir) / "jobs"
        self.python = cfg.get("python") or (str(self.project / ".venv" / "bin" / "python")
                                            if (self.project / ".venv" / "bin" / "python").exists()
                                            else sys.executable)

    def playbook(self, job: str) -> str:
        defaults = {"add": "playbooks/add-node.yml", "remove": "playbooks/remove-node.yml",
                    "forget": "playbooks/forget-node.yml", "lock": "playbooks/lifecycle-lock.yml"}
        return self.cfg.get(self.PLAYBOOKS[job]) or defaults[job]

    def argv(self, job: str, jobdir: Path) -> list[str]:
        argv = [self.python, str(self.project / "scripts" / "awx_run.py")]
        for inv in self.inventory:
            argv += ["-i", inv]
        argv += [self.playbook(job), "-e", f"@{jobdir / 'extravars.json'}", "--report", str(jobdir / "report.json"),
                 "--private-data-dir", str(jobdir / "pdd")]
        if job == "forget" and self.cfg.get("forget_tags"):
            argv += ["--tags", self.cfg["forget_tags"]]
        if job == "add" and self.cfg.get("add_skip_tags"):
            # a warm pool whose hosts site.yml already baselined and hardened may skip those layers
            argv += ["--skip-tags", self.cfg["add_skip_tags"]]
        return argv

    def launch(self, job: str, extra_vars: dict[str, Any]) -> dict[str, Any]:
        job_id = f"{job}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        jobdir = self.jobs / job_id
        jobdir.mkdir(parents=True, mode=0o750)
        (jobdir / "extravars.json").write_text(json.dumps({**self.cfg.get("extra_vars", {}), **extra_vars}))
        log = (jobdir / "output.log").open("wb")
        env = {**os.environ, **{k: str(v) for k, v in self.cfg.get("envvars", {}).items()}}
        # sh records the exit code beside the output: the result survives this process
        import subprocess
        proc = subprocess.Popen(["/bin/sh", "-c", '"$@"; echo $? > "$0.partial" && mv "$0.partial" "$0"',
                                 str(jobdir / "rc"), *self.argv(job, jobdir)],
                                cwd=self.project, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        log.close()
        (jobdir / "pid").write_text(f"{proc.pid}\n")
        return {"executor": self.kind, "id": job_id, "job": job, "pid": proc.pid, "dir": str(jobdir)}

    def poll(self, handle: dict[str, Any]) -> str:
        jobdir = Path(handle["dir"])
        rc = jobdir / "rc"
        if rc.exists():
            self._reap(handle)
            return SUCCESSFUL if rc.read_text().strip() == "0" else FAILED
        if self._alive(handle.get("pid")):
            return RUNNING
        if rc.exists():  # finished between the two checks
            return SUCCESSFUL if rc.read_text().strip() == "0" else FAILED
        return LOST

    @staticmethod
    def _alive(pid: int | None) -> bool:
        if not pid:
            return False
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
        except ChildProcessError:
            pass  # not our child (a job found in the journal after a restart)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # a zombie or a recycled pid is not the job
            stat = Path(f"/proc/{pid}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    @staticmethod
    def _reap(handle: dict[str, Any]) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(handle.get("pid") or 0, os.WNOHANG)

    def cancel(self, handle: dict[str, Any]) -> None:
        with contextlib.suppress(ProcessLookupError, KeyError, ValueError, PermissionError):
            os.killpg(int(handle["pid"]), signal.SIGTERM)

    def output(self, handle: dict[str, Any]) -> str:
        try:
            return (Path(handle["dir"]) / "output.log").read_text(errors="replace")[-20000:]
        except OSError:
            return ""


class AwxExecutor(Executor):
    """AWX job templates (keel add-node / remove-node / site): launched once through the API, the
    job id journalled, then polled; a restart polls the same job, never launches another."""

    kind = "awx"
    TEMPLATES: ClassVar[dict[str, str]] = {
        "add": "add_template", "remove": "remove_template", "forget": "forget_template", "lock": "lock_template"}

    def __init__(self, cfg: dict[str, Any], api: JsonApi | None = None) -> None:
        self.cfg = cfg
        self.api = api or JsonApi(cfg["url"], cfg["token_file"], cfg.get("ca_file", ""))

    def launch(self, job: str, extra_vars: dict[str, Any]) -> dict[str, Any]:
        template = self.cfg.get(self.TEMPLATES[job])
        if not template and job == "lock":
            template = "keel lifecycle lock"
        if not template:
            raise JobFailed(f"no AWX template configured for {job}")
        tid = self.api.find_id("job_templates", template)
        # AWX surveys ask for the node lists as text (a survey cannot take a list)
        extra_vars = {k: ",".join(v) if isinstance(v, list) and k in ("keel_new_nodes", "keel_remove_nodes") else v
                      for k, v in extra_vars.items()}
        body: dict[str, Any] = {"extra_vars": {**self.cfg.get("extra_vars", {}), **extra_vars}}
        if job == "forget" and self.cfg.get("forget_tags"):
            body["job_tags"] = self.cfg["forget_tags"]
        if job == "add" and self.cfg.get("add_skip_tags"):
            body["skip_tags"] = self.cfg["add_skip_tags"]
        try:
            answer = self.api.post(f"/api/v2/job_templates/{tid}/launch/", body)
        except ApiError as exc:
            raise JobFailed(f"launching {template!r}: {exc}") from exc
        job_id = answer.get("job") or answer.get("id")
        if not job_id:
            raise JobFailed(f"launching {template!r}: no job id in AWX's answer")
        return {"executor": self.kind, "id": int(job_id), "job": job, "template": template}

    def poll(self, handle: dict[str, Any]) -> str:
        try:
            status = self.api.get(f"/api/v2/jobs/{handle['id']}/").get("status")
        except ApiError as exc:
            if exc.status == 404:
                return LOST
            return RUNNING  # AWX unreachable: keep waiting (the timeout bounds it), never relaunch
        if status in ("new", "pending", "waiting", "running"):
            return RUNNING
        return SUCCESSFUL if status == "successful" else FAILED

    def cancel(self, handle: dict[str, Any]) -> None:
        with contextlib.suppress(ApiError):
            self.api.post(f"/api/v2/jobs/{handle['id']}/cancel/", {})

    def output(self, handle: dict[str, Any]) -> str:
        try:
            return str(self.api.call("GET", f"/api/v2/jobs/{handle['id']}/stdout/?format=txt")[1])[-20000:]
        except (ApiError, ValueError):
            return ""
