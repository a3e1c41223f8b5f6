"""How decisions reach the hosts: executors run keel's playbooks (ansible-runner on a controller,
or AWX job templates), providers hand out and take back hosts (a spare pool or an operator's
program), inventory writers add and remove the host (a file beside the inventory, or AWX's API)."""

from __future__ import annotations

from typing import Any

from .executors import AwxExecutor, Executor, JobFailed, RunnerExecutor
from .inventory import AwxInventory, FileInventory, InventoryWriter
from .providers import CommandProvider, Provider, ProviderError, SparePool

__all__ = ["AwxExecutor", "AwxInventory", "CommandProvider", "Executor", "FileInventory", "InventoryWriter",
           "JobFailed", "Provider", "ProviderError", "RunnerExecutor", "SparePool", "build"]


def build(cfg: dict[str, Any]) -> tuple[Executor, Provider, InventoryWriter]:
    ex, pv, inv = cfg["executor"], cfg["provider"], cfg["inventory"]
    executor: Executor = RunnerExecutor(ex, cfg["state_dir"]) if ex["type"] == "runner" else AwxExecutor(ex)
    inventory: InventoryWriter = FileInventory(inv) if inv["type"] == "file" else AwxInventory(inv)
    provider: Provider = SparePool(pv, executor, inventory) if pv["type"] == "spare-pool" else CommandProvider(pv)
    return executor, provider, inventory
