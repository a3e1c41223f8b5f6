"""JSON over HTTP with a bearer token (AWX's API), on the standard library."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class ApiError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class JsonApi:
    def __init__(self, url: str, token_file: str, ca_file: str = "", timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self.token_file = token_file
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=ca_file or None) if url.startswith("https") else None

    def _token(self) -> str:
        try:
            return Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise ApiError(f"cannot read the token file {self.token_file}: {exc}") from exc

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        # the URL is validated as http(s) in the configuration
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers={  # noqa: S310
            "Authorization": f"Bearer {self._token()}", "Content-Type": "application/json",
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.context) as resp:  # noqa: S310
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise ApiError(f"{method} {path}: HTTP {exc.code}: {detail}", exc.code) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ApiError(f"{method} {path}: {exc}") from exc

    def get(self, path: str) -> Any:
        return self.call("GET", path)[1]

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)[1]

    def find_id(self, collection: str, name: str | int) -> int:
        """The id of a named object (templates and groups are configured by name)."""
        if isinstance(name, int) or str(name).isdigit():
            return int(name)
        from urllib.parse import quote
        found = self.get(f"/api/v2/{collection}/?name={quote(str(name))}").get("results", [])
        if len(found) != 1:
            raise ApiError(f"{collection}: {len(found)} objects named {name!r} (expected exactly one)")
        return int(found[0]["id"])
