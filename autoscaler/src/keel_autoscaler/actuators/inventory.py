"""Inventory writers: the hosts the autoscaler added to the app group, and when.

``file``: one YAML file beside the operator's inventory (inside an inventory directory Ansible
reads it with the rest), rewritten atomically. Its hosts are the only ones the autoscaler ever
removes: hosts the operator listed stay. ``awx``: the same through AWX's inventory API."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ..store import atomic_write
from .http import ApiError, JsonApi

HEADER = ("# Managed by keel-autoscaler: the app hosts it added (host variables as the provider gave them).\n"
          "# Do not edit while it runs; freeze it first (keel-autoscaler freeze --reason ...).\n")


class InventoryWriter:
    group = "app"

    def managed(self) -> dict[str, dict[str, Any]]:
        """name -> host variables (keel_autoscaler_joined: when it was added)."""
        raise NotImplementedError

    def add(self, hosts: list[dict[str, Any]], joined: float) -> None:
        raise NotImplementedError

    def remove(self, names: list[str]) -> None:
        raise NotImplementedError


class FileInventory(InventoryWriter):
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.path = Path(cfg["path"])
        self.group = cfg.get("group", "app")
        self._lock = threading.Lock()

    def managed(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        data = json.loads(body) if body.strip() else {}
        hosts = data.get("all", {}).get("children", {}).get(self.group, {}).get("hosts", {}) or {}
        return {name: dict(v or {}) for name, v in hosts.items()}

    def _write(self, hosts: dict[str, dict[str, Any]]) -> None:
        data = {"all": {"children": {self.group: {"hosts": hosts}}}} if hosts else {"all": {}}
        atomic_write(self.path, HEADER + json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o644)

    def add(self, hosts: list[dict[str, Any]], joined: float) -> None:
        with self._lock:
            current = self.managed()
            for h in hosts:
                current[h["name"]] = {**{k: v for k, v in h.items() if k != "name"},
                                      "keel_autoscaler_joined": round(joined, 3)}
            self._write(current)

    def remove(self, names: list[str]) -> None:
        with self._lock:
            current = self.managed()
            for n in names:
                current.pop(n, None)
            self._write(current)


class AwxInventory(InventoryWriter):
    """AWX: hosts created in the inventory and associated with the group; removal disassociates
    the host from the group and deletes hosts the autoscaler created."""

    def __init__(self, cfg: dict[str, Any], api: JsonApi | None = None) -> None:
        self.api = api or JsonApi(cfg["url"], cfg["token_file"], cfg.get("ca_file", ""))
        self.inventory_id = int(cfg["inventory_id"])
        self.group = cfg.get("group", "app")

    def _group_id(self) -> int:
        found = self.api.get(f"/api/v2/inventories/{self.inventory_id}/groups/?name={self.group}").get("results", [])
        if len(found) != 1:
            raise ApiError(f"inventory {self.inventory_id} has no group {self.group!r}")
        return int(found[0]["id"])

    def managed(self) -> dict[str, dict[str, Any]]:
        gid = self._group_id()
        out = {}
        for h in self.api.get(f"/api/v2/groups/{gid}/hosts/?page_size=200").get("results", []):
            variables = json.loads(h.get("variables") or "{}") if str(h.get("variables", "")).startswith("{") else {}
            if "keel_autoscaler_joined" in variables:
                out[h["name"]] = variables
        return out

    def add(self, hosts: list[dict[str, Any]], joined: float) -> None:
        gid = self._group_id()
        for h in hosts:
            variables = {**{k: v for k, v in h.items() if k != "name"}, "keel_autoscaler_joined": round(joined, 3)}
            found = self.api.get(f"/api/v2/inventories/{self.inventory_id}/hosts/?name={h['name']}").get("results")
            if found:
                host_id = int(found[0]["id"])
                merged = {**(json.loads(found[0].get("variables") or "{}")), **variables}
                self.api.call("PATCH", f"/api/v2/hosts/{host_id}/", {"variables": json.dumps(merged)})
            else:
                host_id = int(self.api.post(f"/api/v2/inventories/{self.inventory_id}/hosts/",
                                            {"name": h["name"], "variables": json.dumps(variables)})["id"])
            self.api.post(f"/api/v2/groups/{gid}/hosts/", {"id": host_id})

    def remove(self, names: list[str]) -> None:
        gid = self._group_id()
        for n in names:
            found = self.api.get(f"/api/v2/inventories/{self.inventory_id}/hosts/?name={n}").get("results")
            if found:
                self.api.post(f"/api/v2/groups/{gid}/hosts/", {"id": int(found[0]["id"]), "disassociate": True})
