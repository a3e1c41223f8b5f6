"""The autoscaler against a real scenario: run it, read what it did, compare what the hosts say.

The autoscaler runs on this machine (the controller: it runs keel's playbooks through
ansible-runner with the scenario's inventory, the `runner` executor), reads the scenario's
Prometheus, and takes hosts from the scenario's spare pool (group `app_spare`). Its windows are
time-scaled so that a scenario fits in minutes; the unit tests pin the default numbers.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "autoscaler" / "src"))
from keel_autoscaler.config import DEFAULT_METRIC_QUERY, DEFAULTS

# requests/s per serving app host that the lab's policy aims at (a fixed arrival rate: on a 2-core
# machine more containers add no CPU, so the metric is the load each host takes, not CPU)
TARGET = 10.0


def policy(**over: Any) -> dict[str, Any]:
    """The package's default policy, time-scaled for a test: a 30 s rate window, a 60 s scale-down
    window and period, 120 s after a scale-up, 30 s of grace for a new host."""
    base = copy.deepcopy(DEFAULTS["policy"])
    base["metrics"] = [{"name": "requests_per_node", "target": TARGET,
                        "query": DEFAULT_METRIC_QUERY.replace("[1m]", "[30s]")}]
    base["scale_down"].update(stabilization_window=60,
                              policies=[{"type": "nodes", "value": 1, "period": 60}])
    base.update(delay_after_scale_up=120, new_node_grace=30, drain_timeout=60)
    base.update(over)
    return base


@dataclass
class Lab:
    project: Path
    ephemeral: Path
    prometheus: str  # http://obs1:9090
    workdir: Path

    @property
    def overlay(self) -> Path:
        return self.ephemeral / "inventory" / "autoscaler.yml"

    def config(self, mode: str = "act", evaluation_interval: float = 5, **policy_over: Any) -> dict[str, Any]:
        token = self.workdir / "token"
        if not token.exists():
            token.write_text(secrets.token_urlsafe(24))
            token.chmod(0o600)
        return {
            "mode": mode,
            "listen": {"address": "127.0.0.1", "port": free_port()},
            "token_file": str(token),
            "state_dir": str(self.workdir / "state"),
            "evaluation_interval": evaluation_interval,
            "prometheus": {"url": self.prometheus, "timeout": 5, "max_staleness": 60,
                           "freshness_query": 'time() - max(timestamp(up{job="app"}))'},
            "policy": policy(**policy_over),
            "executor": {"type": "runner", "project_dir": str(self.project),
                         "inventory": [str(self.ephemeral / "inventory")],
                         # this scenario's app hosts run the app role alone (hardening is proven in the
                         # roles' own scenarios), and so do its spares; keel's firewall does not run here
                         "add_skip_tags": "common,hardening",
                         "envvars": {"ANSIBLE_CONFIG": str(self.project / "ansible.cfg")}},
            "provider": {"type": "spare-pool", "group": "app_spare"},
            "inventory": {"type": "file", "path": str(self.overlay), "group": "app"},
            "lock": {"owner": "keel-autoscaler"},
        }


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """One autoscaler process (python -m keel_autoscaler run) with its log and audit file."""

    def __init__(self, lab: Lab, cfg: dict[str, Any], name: str = "autoscaler") -> None:
        self.lab, self.cfg = lab, cfg
        self.config_path = lab.workdir / f"{name}.json"
        self.config_path.write_text(json.dumps(cfg, indent=2))
        self.log_path = lab.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def audit_path(self) -> Path:
        return Path(self.cfg["state_dir"]) / "decisions.jsonl"

    def start(self) -> Running:
        env = {**os.environ, "PYTHONPATH": str(self.lab.project / "autoscaler" / "src"), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "keel_autoscaler", "--config", str(self.config_path),
                                      "run"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=False)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if "keel_autoscaler_up 1" in self.metrics_text():
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(f"the autoscaler exited: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"the autoscaler did not answer: {self.log_path.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def stop(self, wait_jobs: float = 1200) -> None:
        """Stop the service, then wait for a playbook job it left running (jobs run in their own
        session and outlive it, by design): the next test must not meet a half-done action."""
        self.kill(signal.SIGTERM)
        jobs = Path(self.cfg["state_dir"]) / "jobs"
        deadline = time.monotonic() + wait_jobs
        def running(job: Path) -> bool:
            if (job / "rc").exists():
                return False
            try:
                os.kill(int((job / "pid").read_text()), 0)
            except (OSError, ValueError):
                return False
            return True
        while jobs.exists() and any(running(j) for j in jobs.iterdir()) and time.monotonic() < deadline:
            time.sleep(2)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.cfg['listen']['port']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str) -> float | None:
        """An unlabelled series' value."""
        for line in self.metrics_text().splitlines():
            if line.split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
        return None

    def labelled(self, name: str, **labels: str) -> float | None:
        want = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        for line in self.metrics_text().splitlines():
            if line.startswith(name + want + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def audit(self) -> list[dict[str, Any]]:
        try:
            return [json.loads(x) for x in self.audit_path.read_text().splitlines() if x.strip()]
        except FileNotFoundError:
            return []

    def actions(self) -> list[dict[str, Any]]:
        return [e for e in self.audit() if e.get("event") == "action"]

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def keep_evidence(self, dest: Path, lb: str, since: float) -> Path:
        """Copy what explains a failed request before Molecule prunes the scenario's files: the
        autoscaler's log and audit, each job's output, and the load balancer's journal for
        haproxy since `since` (epoch s) without its status-200 access lines."""
        dest.mkdir(parents=True, exist_ok=True)
        for src in (self.log_path, self.audit_path):
            if src.exists():
                shutil.copy(src, dest / src.name)
        jobs = Path(self.cfg["state_dir"]) / "jobs"
        for job in sorted(jobs.iterdir()) if jobs.exists() else ():
            for name in ("output.log", "rc"):
                if (job / name).exists():
                    shutil.copy(job / name, dest / f"job-{job.name}-{name}")
        journal = subprocess.run(["docker", "exec", lb, "journalctl", "-u", "haproxy", "--no-pager",
                                  "-o", "short-iso-precise", "--since", f"@{int(since)}"],
                                 capture_output=True, text=True, timeout=120, check=False).stdout
        (dest / f"{lb}-haproxy-journal.txt").write_text(
            "".join(line + "\n" for line in journal.splitlines() if '"status":200,' not in line))
        return dest


def prometheus_query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the scenario's own host
        return json.load(resp)["data"]["result"]


def prometheus_app_hosts(base: str) -> set[str]:
    """Hosts of the app job Prometheus scrapes now (its targets come from the inventory)."""
    url = f"{base}/api/v1/targets?state=active"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the scenario's own host
        targets = json.load(resp)["data"]["activeTargets"]
    return {t["labels"]["host"] for t in targets if t["labels"].get("job") == "app"}


def inventory_app_hosts(project: Path, inventory: Path) -> set[str]:
    tool = Path(sys.executable).parent / "ansible-inventory"
    out = subprocess.run([str(tool), "-i", str(inventory), "--list"], capture_output=True, text=True, check=True,
                         timeout=120, cwd=project, env={**os.environ, "ANSIBLE_CONFIG": str(project / "ansible.cfg")})
    data = json.loads(out.stdout)
    return set(data.get("app", {}).get("hosts", []))


def wait_until(predicate, timeout: float, step: float = 2.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)
