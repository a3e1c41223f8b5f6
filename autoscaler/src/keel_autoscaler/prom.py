"""A small Prometheus HTTP API client (instant queries) on the standard library."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


class PromError(Exception):
    pass


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float
    at: float


class Prometheus:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[Sample]:
        """An instant query; a vector result as samples. Any failure raises PromError."""
        data = urllib.parse.urlencode({"query": expr}).encode()
        req = urllib.request.Request(f"{self.url}/api/v1/query", data=data, method="POST",  # noqa: S310 - http(s) only
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - configured http(s) URL
                body = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PromError(f"{self.url}: {exc}") from exc
        if body.get("status") != "success":
            raise PromError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        result = body.get("data", {})
        if result.get("resultType") != "vector":
            raise PromError(f"{expr}: expected a vector, got {result.get('resultType')}")
        out = []
        for item in result.get("result", []):
            try:
                at, value = item["value"]
                out.append(Sample(dict(item.get("metric", {})), float(value), float(at)))
            except (KeyError, ValueError, TypeError) as exc:
                raise PromError(f"{expr}: bad sample {item!r}") from exc
        return out
