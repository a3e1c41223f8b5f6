"""A bounded background load generator for integration tests.

Worker threads send GET requests through the load balancer with keep-alive
connections and record every outcome. Every loop is bounded by a request count
and a wall-clock limit, and it only dials the address it is given (the tests'
own containers).
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    at: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    version: str
    error: str = ""
    wall: float = 0.0  # time.time() when the outcome was known, to match against logs


@dataclass
class LoadLoop:
    url: str
    verify: ssl.SSLContext | bool
    workers: int = 4
    rate: float = 100.0  # requests/s over all workers (a paced loop leaves CPU to what is under test)
    max_requests: int = 200_000
    max_seconds: float = 600.0
    timeout: float = 45.0  # above HAProxy's server timeout, so its retries can finish
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sent = 0

    def __enter__(self) -> LoadLoop:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._deadline = time.monotonic() + self.max_seconds
        for _ in range(self.workers):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)

    def _take_ticket(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests or time.monotonic() > self._deadline:
                return False
            self._sent += 1
            return True

    def _run(self) -> None:
        interval = self.workers / self.rate
        next_at = time.monotonic()
        with httpx.Client(verify=self.verify, timeout=self.timeout) as client:
            while not self._stop.is_set() and self._take_ticket():
                next_at += interval
                now = time.monotonic()
                try:
                    resp = client.get(self.url)
                    version = ""
                    if resp.status_code == 200:
                        version = resp.json().get("version", "")
                    error = "" if resp.status_code == 200 else resp.text[:200]
                    outcome = Outcome(now, resp.status_code, version, error, time.time())
                except httpx.HTTPError as exc:
                    outcome = Outcome(now, 0, "", f"{type(exc).__name__}: {exc}"[:200], time.time())
                with self._lock:
                    self.outcomes.append(outcome)
                pause = next_at - time.monotonic()
                if pause > 0:
                    self._stop.wait(pause)
                else:
                    next_at = time.monotonic()  # behind (a slow answer): do not burst to catch up

    # -- results ----------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def versions(self) -> collections.Counter:
        return collections.Counter(o.version for o in self.outcomes if o.status == 200)

    def summary(self) -> str:
        statuses = collections.Counter(o.status for o in self.outcomes)
        errors = collections.Counter(o.error for o in self.failed)
        return (f"{self.total} requests, {len(self.failed)} failed, statuses {dict(statuses)}, "
                f"versions {dict(self.versions())}, errors {dict(errors.most_common(5))}")
