"""JSON logs: one object per line on stdout, carrying trace and request IDs."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

from opentelemetry import trace

# The request ID of the request being handled (None outside a request).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("keel_request_id", default=None)

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
# RFC 4122 version 4: version nibble 0100, variant bits 10 (as uuid.UUID(version=4) sets them).
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured copy of the message
}


def new_request_id() -> str:
    """A random (version 4) UUID as 32 hex digits; the same as ``uuid.uuid4().hex``, at a third of the cost."""
    n = int.from_bytes(os.urandom(16), "big")
    n = (n & _UUID4_CLEAR) | _UUID4_SET
    return f"{n:032x}"


def sanitize_request_id(value: str | bytes | None) -> str | None:
    """Return ``value`` if it is an acceptable request ID (1-128 of ``[A-Za-z0-9._-]``), else None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if _REQUEST_ID_RE.fullmatch(value) else None


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds; the part up to the second is cached."""

    def __init__(self) -> None:
        self._cache: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        cached_second, prefix = self._cache
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cache = (second, prefix)
        return f"{prefix}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Format records as single-line JSON objects.

    Always present: timestamp (RFC 3339, UTC, milliseconds), level, service,
    logger, message, trace_id, span_id, request_id. Anything passed through
    ``extra=`` (method, route, status, duration_ms, ...) is added as is.
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._timestamp = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            trace_id: str | None = format(ctx.trace_id, "032x")
            span_id: str | None = format(ctx.span_id, "016x")
        else:
            trace_id = span_id = None
        data: dict[str, Any] = {
            "timestamp": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": trace_id,
            "span_id": span_id,
            "request_id": request_id_var.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"), default=str)


class AccessLog:
    """Access lines, in the same JSON shape as :class:`JsonFormatter`'s, written straight to stdout.

    They skip the logging machinery (LogRecord, caller lookup, handler locks) and the JSON encoder
    because they are written for every request. While ``autoflush`` is off (the server turns it
    off and flushes stdout every 100 ms instead) lines are written in blocks, not one syscall each.
    Every field is either a number, a hex ID, a route
    template, a sanitised request ID or an HTTP method, none of which needs escaping (methods that
    are not plain letters are escaped anyway). They obey the level of the ``keel_app.access`` logger.
    """

    def __init__(self, service: str) -> None:
        self.logger = logging.getLogger("keel_app.access")
        self._timestamp = _Clock()
        self._service = json.dumps(service)
        self.autoflush = True

    def __call__(
        self,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        trace_id: int,
        span_id: int,
        request_id: str,
    ) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        if not method.isalpha():
            method = json.dumps(method)[1:-1]
        if trace_id:
            ids = f'"trace_id":"{trace_id:032x}","span_id":"{span_id:016x}"'
        else:
            ids = '"trace_id":null,"span_id":null'
        out = sys.stdout
        out.write(
            f'{{"timestamp":"{self._timestamp(time.time())}","level":"info","service":{self._service},'
            f'"logger":"keel_app.access","message":"{method} {route} {status}",{ids},'
            f'"request_id":"{request_id}","method":"{method}","route":"{route}","status":{status},'
            f'"duration_ms":{duration_ms}}}\n'
        )
        if self.autoflush:
            out.flush()


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever ``sys.stdout`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(service: str, level: str = "info") -> logging.Handler:
    """Send every log record of the process (keel_app, uvicorn, OpenTelemetry) as JSON to stdout."""
    handler = StdoutHandler()
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    quiet_opentelemetry()
    return handler


def quiet_opentelemetry() -> None:
    """OpenTelemetry's own failure logs repeat on every export; keel_app reports export trouble itself, once."""
    logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    logging.getLogger("opentelemetry.sdk._shared_internal").setLevel(logging.ERROR)
    # httpx logs every request at INFO; the access lines already say all of it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
