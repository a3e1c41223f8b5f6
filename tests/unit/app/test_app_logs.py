"""JSON log lines: shape, timestamps, IDs."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import pytest
from keel_app.logs import AccessLog, new_request_id, request_id_var, sanitize_request_id
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def test_record_is_one_json_line_with_ids(json_logs: Any) -> None:
    span = NonRecordingSpan(SpanContext(0x1234, 0x5678, False, TraceFlags(TraceFlags.SAMPLED)))
    token = request_id_var.set("rid-1")
    try:
        with trace.use_span(span):
            logging.getLogger("keel_app").warning("multi\nline %s", "message", extra={"route": "/x"})
    finally:
        request_id_var.reset(token)
    (line,) = json_logs()
    assert RFC3339_UTC.match(line["timestamp"])
    assert line["level"] == "warning"
    assert line["message"] == "multi\nline message"
    assert line["trace_id"] == f"{0x1234:032x}"
    assert line["span_id"] == f"{0x5678:016x}"
    assert line["request_id"] == "rid-1"
    assert line["route"] == "/x"
    assert set(line) >= {"timestamp", "level", "service", "message", "trace_id", "span_id", "request_id"}


def test_record_outside_a_request_has_null_ids(json_logs: Any) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("keel_app").exception("failed")
    (line,) = json_logs()
    assert line["trace_id"] is None
    assert line["request_id"] is None
    assert "ValueError: boom" in line["exception"]


def test_access_line_shape(json_logs: Any) -> None:
    access = AccessLog("api")
    access("GET", "/hello", 200, 0.125, 0xABC, 0xDEF, "rid")
    access('M"E\\TH', "other", 405, 1.5, 0, 0, "rid2")
    first, second = json_logs()
    assert RFC3339_UTC.match(first["timestamp"])
    assert first == first | {
        "level": "info",
        "service": "api",
        "message": "GET /hello 200",
        "trace_id": f"{0xABC:032x}",
        "span_id": f"{0xDEF:016x}",
        "request_id": "rid",
        "method": "GET",
        "route": "/hello",
        "status": 200,
        "duration_ms": 0.125,
    }
    assert second["method"] == 'M"E\\TH'
    assert second["trace_id"] is None


def test_access_lines_follow_the_logger_level(json_logs: Any) -> None:
    logger = logging.getLogger("keel_app.access")
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        AccessLog("api")("GET", "/hello", 200, 0.1, 1, 1, "rid")
    finally:
        logger.setLevel(old)
    AccessLog("api")("GET", "/readyz", 200, 0.1, 1, 1, "rid")
    assert [line["route"] for line in json_logs()] == ["/readyz"]


def test_generated_request_ids_are_uuid4_hex() -> None:
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ok-ID_1.2", "ok-ID_1.2"),
        (b"bytes-id", "bytes-id"),
        ("x" * 128, "x" * 128),
        ("x" * 129, None),
        ("", None),
        ("a b", None),
        ("a\nb", None),
        ("<script>", None),
        (b"\xff\xfe", None),
        (None, None),
    ],
)
def test_sanitize_request_id(raw: str | bytes | None, expected: str | None) -> None:
    assert sanitize_request_id(raw) == expected
