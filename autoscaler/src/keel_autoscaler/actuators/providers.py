"""Providers hand out hosts for a scale-out and take them back after a scale-in.

``spare-pool``: an inventory group of pre-provisioned, already hardened idle hosts (a warm pool);
a spare is one of that group that is not in the app group now. ``command``: an operator's
program: ``PROGRAM provision --id ID`` prints ``{"name": ..., "ansible_host": ..., "keel_private_ip": ...}``
(the same id must give the same host: a retry after a crash creates nothing new), and
``PROGRAM release NAME`` gives it back; ``PROGRAM capacity`` (optional) prints how many it can
still create."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from .executors import Executor
from .inventory import InventoryWriter


class ProviderError(Exception):
    pass


class Provider:
    def acquire(self, count: int, request_id: str, exclude: set[str]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def release(self, names: list[str], request_id: str, failed: bool = False) -> None:
        raise NotImplementedError

    def spare(self, serving: set[str]) -> int:
        """How many hosts could still be added (-1: unknown)."""
        return -1


class SparePool(Provider):
    def __init__(self, cfg: dict[str, Any], executor: Executor, inventory: InventoryWriter,
                 lister: Any = None) -> None:
        self.group = cfg["group"]
        self.executor = executor
        self.inventory = inventory
        self.quarantine: set[str] = set(cfg.get("quarantined", []))
        self._lister = lister or self._ansible_inventory

    def _ansible_inventory(self) -> dict[str, Any]:
        project = getattr(self.executor, "project", None)
        if project is None:
            raise ProviderError("the spare-pool provider reads the inventory with ansible-inventory: "
                                "it needs the runner executor (AWX users: the command provider)")
        tool = Path(self.executor.python).parent / "ansible-inventory"  # type: ignore[attr-defined]
        argv = [str(tool) if tool.exists() else "ansible-inventory"]
        for inv in self.executor.inventory:  # type: ignore[attr-defined]
            argv += ["-i", inv]
        res = subprocess.run([*argv, "--list"], capture_output=True, text=True, timeout=120, cwd=project,
                             check=False)
        if res.returncode != 0:
            raise ProviderError(f"ansible-inventory failed: {res.stderr[-500:]}")
        return json.loads(res.stdout)

    def _members(self, data: dict[str, Any], group: str) -> set[str]:
        out = set(data.get(group, {}).get("hosts", []))
        for child in data.get(group, {}).get("children", []):
            out |= self._members(data, child)
        return out

    def candidates(self, serving: set[str]) -> list[str]:
        data = self._lister()
        pool = self._members(data, self.group)
        app = self._members(data, getattr(self.inventory, "group", "app"))
        return sorted(pool - app - serving - self.quarantine)

    def acquire(self, count: int, request_id: str, exclude: set[str]) -> list[dict[str, Any]]:
        free = self.candidates(exclude)
        if len(free) < count:
            raise ProviderError(f"spare pool {self.group!r} has {len(free)} free host(s), {count} needed")
        # spares are already in the inventory with their variables: joining the app group is enough
        return [{"name": n} for n in free[:count]]

    def release(self, names: list[str], request_id: str, failed: bool = False) -> None:
        if failed:
            self.quarantine |= set(names)  # not handed out again until the service restarts

    def spare(self, serving: set[str]) -> int:
        try:
            return len(self.candidates(serving))
        except (ProviderError, OSError, ValueError, subprocess.SubprocessError):
            return -1


class CommandProvider(Provider):
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.argv = list(cfg["argv"])
        self.timeout = float(cfg.get("timeout", 900))

    def _run(self, *args: str) -> str:
        try:
            res = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=self.timeout,
                                 check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ProviderError(f"{self.argv[0]} {args[0]}: {exc}") from exc
        if res.returncode != 0:
            raise ProviderError(f"{self.argv[0]} {' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
        return res.stdout

    def acquire(self, count: int, request_id: str, exclude: set[str]) -> list[dict[str, Any]]:
        hosts = []
        for i in range(count):
            out = self._run("provision", "--id", f"{request_id}-{i}")
            try:
                host = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError) as exc:
                raise ProviderError(f"provision printed no JSON host: {out[-300:]!r}") from exc
            if not isinstance(host, dict) or not host.get("name") or "keel_private_ip" not in host:
                raise ProviderError(f"provision must print name, ansible_host and keel_private_ip; got {host!r}")
            hosts.append(host)
        return hosts

    def release(self, names: list[str], request_id: str, failed: bool = False) -> None:
        for n in names:
            self._run("release", n)

    def spare(self, serving: set[str]) -> int:
        try:
            return int(self._run("capacity").strip())
        except (ProviderError, ValueError):
            return -1
