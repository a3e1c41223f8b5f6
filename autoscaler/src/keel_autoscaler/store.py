"""Persistence: the state file (atomic: temp file, fsync, rename, fsync of the directory) and the
audit log (one JSON line per evaluation, rotated by size, a bounded number of old files)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .decide import State


class CorruptState(Exception):
    """The state file exists but cannot be read: scaling freezes, nothing is reset."""


def atomic_write(path: Path, text: str, mode: int = 0o640) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    VERSION = 1

    def __init__(self, directory: Path | str) -> None:
        self.path = Path(directory) / "state.json"

    def load(self) -> State:
        """A missing file is a fresh start; anything unreadable raises CorruptState."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise CorruptState(f"{self.path}: {exc}") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != self.VERSION:
                raise ValueError(f"unknown state version {data.get('version') if isinstance(data, dict) else '?'}")
            return State.from_dict(data["state"])
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptState(f"{self.path}: {exc}") from exc

    def save(self, state: State) -> None:
        atomic_write(self.path, json.dumps({"version": self.VERSION, "state": state.to_dict()}, sort_keys=True))


class AuditLog:
    """decisions.jsonl: every evaluation with its inputs, results, gate, action and outcome."""

    def __init__(self, directory: Path | str, max_bytes: int = 10 * 1024 * 1024, keep: int = 3) -> None:
        self.path = Path(directory) / "decisions.jsonl"
        self.max_bytes = max_bytes
        self.keep = keep

    def write(self, entry: dict[str, Any]) -> str:
        line = json.dumps(entry, sort_keys=True, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size + len(line) > self.max_bytes:
                self._rotate()
        with self.path.open("a") as out:
            out.write(line + "\n")
        return line

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        last = self.path.with_name(f"{self.path.name}.{self.keep + 1}")
        with contextlib.suppress(FileNotFoundError):
            last.unlink()

    def tail(self, n: int = 50) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text().splitlines()[-n:]
        except FileNotFoundError:
            return []
        return [json.loads(x) for x in lines if x.strip()]
