"""Grafana's log -> trace link (roles/grafana's Loki derived field) finds the trace ID in the app's real log lines."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from keel_app.logs import AccessLog, JsonFormatter, request_id_var
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

DATASOURCES = (Path(__file__).resolve().parents[3]
               / "roles/grafana/templates/etc/grafana/provisioning/datasources/keel.yml.j2")
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736


@pytest.fixture(scope="module")
def matcher() -> re.Pattern[str]:
    (regex,) = re.findall(r"matcherRegex: '(.+)'", DATASOURCES.read_text())
    return re.compile(regex)


@pytest.fixture
def access_lines():
    """Access lines are written at INFO (the app's default level)."""
    logger = logging.getLogger("keel_app.access")
    old = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(old)


def test_the_derived_field_finds_the_trace_id_of_an_access_line(matcher, capsys, access_lines):
    AccessLog("api")("GET", "/", 200, 1.5, TRACE_ID, 0x00F067AA0BA902B7, "rid-1")
    line = capsys.readouterr().out.strip()
    found = matcher.search(line)
    assert found and found.group(1) == f"{TRACE_ID:032x}", line


def test_the_derived_field_finds_the_trace_id_of_an_application_record(matcher):
    record = logging.LogRecord("keel_app", logging.ERROR, __file__, 1, "backend failed", (), None)
    span = NonRecordingSpan(SpanContext(TRACE_ID, 0x1, False, TraceFlags(TraceFlags.SAMPLED)))
    token = request_id_var.set("rid-2")
    try:
        with trace.use_span(span):
            line = JsonFormatter("backend").format(record)
    finally:
        request_id_var.reset(token)
    found = matcher.search(line)
    assert found and found.group(1) == f"{TRACE_ID:032x}", line


def test_lines_without_a_trace_link_to_nothing(matcher, capsys, access_lines):
    AccessLog("api")("GET", "/", 200, 1.5, 0, 0, "rid-3")
    line = capsys.readouterr().out.strip()
    assert '"trace_id":null' in line and matcher.search(line) is None, line
