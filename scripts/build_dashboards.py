#!/usr/bin/env python3
"""Build keel's Grafana dashboards (roles/grafana/files/dashboards/*.json) from the specs below.

    scripts/build_dashboards.py          write the JSON files
    scripts/build_dashboards.py --check  exit 1 when a file differs from what the specs give

Dashboards are code: edit the specs here, run the script, commit both. The unit
tests (tests/unit/test_grafana_dashboards.py) check the files equal the specs'
output, that every PromQL expression parses (promtool), that every datasource
the panels name is one the grafana role provisions, and that the log/trace links
match the app's real log lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "roles" / "grafana" / "files" / "dashboards"
PROMETHEUS = {"type": "prometheus", "uid": "keel-prometheus"}
LOKI = {"type": "loki", "uid": "keel-loki"}
JAEGER = {"type": "jaeger", "uid": "keel-jaeger"}


def panel(title: str, exprs: list[tuple[str, str]] | str, unit: str = "short", kind: str = "timeseries",
          description: str = "", datasource: dict | None = None, width: int = 12, height: int = 8) -> dict:
    """A panel; exprs is [(legend, expression), ...] or one expression."""
    if isinstance(exprs, str):
        exprs = [("", exprs)]
    ds = datasource or PROMETHEUS
    targets = []
    for ref, (legend, expr) in zip("ABCDEFGH", exprs, strict=False):
        target = {"refId": ref, "datasource": ds, "expr": expr}
        if ds is JAEGER:
            target = {"refId": ref, "datasource": ds, "query": expr}  # a trace ID
        if legend:
            target["legendFormat"] = legend
        targets.append(target)
    return {
        "type": kind, "title": title, "description": description, "datasource": ds,
        "gridPos": {"w": width, "h": height},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {}, "targets": targets,
    }


def query_variable(name: str, label: str, query: str, multi: bool = True) -> dict:
    return {"type": "query", "name": name, "label": label, "datasource": PROMETHEUS,
            "query": {"query": query, "refId": "vars"}, "definition": query, "refresh": 2,
            "includeAll": multi, "multi": multi, "allValue": ".*", "current": {}}


def text_variable(name: str, label: str) -> dict:
    return {"type": "textbox", "name": name, "label": label, "query": "", "current": {"text": "", "value": ""}}


def annotation(name: str, expr: str, title: str, color: str, tags: str = "") -> dict:
    """Marks on every time series panel where expr has a sample (Prometheus annotation query)."""
    return {"name": name, "datasource": PROMETHEUS, "enable": True, "hide": False, "iconColor": color,
            "expr": expr, "step": "1m", "titleFormat": title, "tagKeys": tags, "textFormat": "",
            "useValueForTime": False}


def dashboard(uid: str, title: str, description: str, panels: list[dict], variables: list[dict],
              refresh: str = "30s", time_from: str = "now-3h", annotations: list[dict] | None = None) -> dict:
    x = y = row_height = 0
    for i, p in enumerate(panels, start=1):  # lay panels out left to right, 24 columns wide
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        p["id"] = i
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x, row_height = x + w, max(row_height, h)
    return {
        "uid": uid, "title": title, "description": description, "tags": ["keel"],
        "editable": False, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "timezone": "utc", "refresh": refresh, "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables}, "annotations": {"list": annotations or []}, "links": [
            {"type": "dashboards", "tags": ["keel"], "asDropdown": True, "title": "keel dashboards"}],
        "panels": panels,
    }


RATE = "$__rate_interval"
APP = 'job="app", instance=~"$instance"'


def hosts() -> dict:
    sel = 'instance=~"$instance"'
    fs = f'{sel}, fstype!~"tmpfs|ramfs|overlay|squashfs"'
    return dashboard("keel-hosts", "keel / Host health", "CPU, memory, disk, network and systemd of every host.", [
        panel("Targets up", [("{{job}} {{instance}}", f"up{{{sel}}}")], kind="stat", width=24, height=4),
        panel("CPU busy", [("{{instance}}", f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle", {sel}}}[{RATE}]))')],
              unit="percentunit"),
        panel("Load (1 m) per CPU", [("{{instance}}", f'node_load1{{{sel}}} / on (instance) '
                                      f'count by (instance) (node_cpu_seconds_total{{mode="idle", {sel}}})')]),
        panel("Memory available", [("{{instance}}", f"node_memory_MemAvailable_bytes{{{sel}}} / node_memory_MemTotal_bytes{{{sel}}}")],
              unit="percentunit"),
        panel("Disk space free", [("{{instance}} {{mountpoint}}", f"node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}}")],
              unit="percentunit"),
        panel("Network received / sent", [
            ("{{instance}} {{device}} in", f'rate(node_network_receive_bytes_total{{{sel}, device!="lo"}}[{RATE}])'),
            ("{{instance}} {{device}} out", f'rate(node_network_transmit_bytes_total{{{sel}, device!="lo"}}[{RATE}])')],
              unit="Bps"),
        panel("Disk I/O time", [("{{instance}} {{device}}", f"rate(node_disk_io_time_seconds_total{{{sel}}}[{RATE}])")],
              unit="percentunit"),
        panel("Failed systemd units", [("{{instance}} {{name}}", f'node_systemd_unit_state{{state="failed", {sel}}} == 1')],
              kind="table", width=24),
    ], [query_variable("instance", "Host", "label_values(node_uname_info, instance)")])


def haproxy() -> dict:
    sel = 'job="haproxy", instance=~"$instance"'
    return dashboard("keel-haproxy", "keel / HAProxy", "Traffic, errors, servers and sessions of the load balancers.", [
        panel("Requests per second (frontends)", [("{{proxy}}", f"sum by (proxy) (rate(haproxy_frontend_http_requests_total{{{sel}}}[{RATE}]))")],
              unit="reqps"),
        panel("Responses by class (backends)", [("{{code}}", f"sum by (code) (rate(haproxy_backend_http_responses_total{{{sel}}}[{RATE}]))")],
              unit="reqps"),
        panel("Healthy servers per backend", [("{{proxy}}", f"haproxy_backend_active_servers{{{sel}}}")], kind="stat"),
        panel("Server state (1 = UP)", [("{{proxy}}/{{server}}", f'haproxy_server_status{{{sel}, state="UP"}}')],
              kind="state-timeline"),
        panel("Backend response time (average of the last 1024 requests)", [
            ("{{proxy}}", f"haproxy_backend_response_time_average_seconds{{{sel}}}")], unit="s"),
        panel("Current sessions", [("{{proxy}}", f"sum by (proxy) (haproxy_frontend_current_sessions{{{sel}}})")]),
        panel("Retries and redispatches", [
            ("retries {{proxy}}", f"sum by (proxy) (rate(haproxy_backend_retry_warnings_total{{{sel}}}[{RATE}]))"),
            ("redispatches {{proxy}}", f"sum by (proxy) (rate(haproxy_backend_redispatch_warnings_total{{{sel}}}[{RATE}]))")],
              unit="ops"),
        panel("Connection errors to servers", [
            ("{{proxy}}", f"sum by (proxy) (rate(haproxy_backend_connection_errors_total{{{sel}}}[{RATE}]))")], unit="ops"),
    ], [query_variable("instance", "Load balancer", 'label_values(haproxy_process_start_time_seconds, instance)')])


def app() -> dict:
    budget = "(1 - 0.999)"
    slow_budget = "(1 - 0.99)"
    return dashboard("keel-app", "keel / App RED and SLOs",
                     "Rate, errors and duration of the app, and its two SLOs (99.9 % without 5xx; 99 % within 250 ms) "
                     "with the burn rates the alerts use.", [
        panel("Requests per second", [("{{instance}}", f"sum by (instance) (rate(keel_app_requests_total{{{APP}}}[{RATE}]))")],
              unit="reqps"),
        panel("Error ratio (5xx)", [("{{instance}}", f"sum by (instance) (rate(keel_app_request_errors_total{{{APP}}}[{RATE}])) / "
                                     f"sum by (instance) (rate(keel_app_requests_total{{{APP}}}[{RATE}]))")], unit="percentunit"),
        panel("Latency p50 / p99", [
            ("p50", f"histogram_quantile(0.5, sum by (le) (rate(keel_app_request_duration_seconds_bucket{{{APP}}}[{RATE}])))"),
            ("p99", f"histogram_quantile(0.99, sum by (le) (rate(keel_app_request_duration_seconds_bucket{{{APP}}}[{RATE}])))")],
              unit="s"),
        panel("Requests by route and status", [("{{route}} {{status}}", f"sum by (route, status) (rate(keel_app_requests_total{{{APP}}}[{RATE}]))")],
              unit="reqps"),
        panel("Availability SLO: burn rate (1 = budget lasts 30 days)", [
            ("1h", f"job:keel_app_request_errors:ratio_rate1h / {budget}"),
            ("6h", f"job:keel_app_request_errors:ratio_rate6h / {budget}"),
            ("page at 14.4x (1 h)", "vector(14.4)"), ("page at 6x (6 h)", "vector(6)")]),
        panel("Latency SLO: burn rate", [
            ("1h", f"job:keel_app_request_slow:ratio_rate1h / {slow_budget}"),
            ("6h", f"job:keel_app_request_slow:ratio_rate6h / {slow_budget}"),
            ("page at 14.4x (1 h)", "vector(14.4)"), ("page at 6x (6 h)", "vector(6)")]),
        panel("Availability error budget left (30 days)", [
            ("", f'1 - (sum(increase(keel_app_request_errors_total{{job="app"}}[30d])) / '
                 f'sum(increase(keel_app_requests_total{{job="app"}}[30d]))) / {budget}')], unit="percentunit", kind="stat"),
        panel("Latency error budget left (30 days)", [
            ("", f'1 - (1 - sum(increase(keel_app_request_duration_seconds_bucket{{job="app", le="0.25"}}[30d])) / '
                 f'sum(increase(keel_app_request_duration_seconds_count{{job="app"}}[30d]))) / {slow_budget}')],
              unit="percentunit", kind="stat"),
        panel("In flight and ready", [
            ("in flight {{instance}}", f"keel_app_requests_in_flight{{{APP}}}"),
            ("ready {{instance}}", f"keel_app_ready{{{APP}}}")]),
        panel("Firing alerts", [("{{alertname}} {{instance}}", 'ALERTS{alertstate="firing"}')], kind="table"),
    ], [query_variable("instance", "Instance", 'label_values(keel_app_requests_total{job="app"}, instance)')])


AUTOSCALER = 'job="autoscaler"'


def autoscaler_panels() -> list[dict]:
    """The node autoscaler (job "autoscaler", issue 23): what it sees, decides and does."""
    def nodes(kind: str) -> str:
        return f"max(keel_autoscaler_{kind}_nodes{{{AUTOSCALER}}})"
    window = "6h"  # actions are minutes apart: durations over a wide window
    return [
        panel("Autoscaler: app nodes (current, desired, min, max)", [
            ("current", nodes("current")), ("desired", nodes("desired")),
            ("min", nodes("min")), ("max", nodes("max"))],
              description="current: serving app hosts as Prometheus sees them; desired: what the last evaluation "
                          "asked for, after the rate policies and min/max."),
        panel("Autoscaler: scaling metric against its target", [
            ("{{metric}}", f"keel_autoscaler_metric_value{{{AUTOSCALER}}}"),
            ("target {{metric}}", f"keel_autoscaler_metric_target{{{AUTOSCALER}}}")],
              description="The metric per counted node; above the target (beyond the tolerance) asks for nodes."),
        panel("Autoscaler: decisions per minute, by the gate that stopped them", [
            ("{{action}} / {{gate}}", f"60 * sum by (action, gate) (rate(keel_autoscaler_decisions_total{{{AUTOSCALER}}}[{RATE}]))")],
              unit="opm",
              description="One decision per evaluation (and per webhook wake-up). gate none with an action: it acted; "
                          "dry_run: it would have acted; others: what held it (cooldown, backoff, lifecycle, frozen, ...)."),
        panel("Autoscaler: actions in the last hour, by direction and result", [
            ("{{direction}} {{result}}", f"sum by (direction, result) (increase(keel_autoscaler_actions_total{{{AUTOSCALER}}}[1h]))")]),
        panel(f"Autoscaler: action duration ({window} window)", [
            ("mean {{direction}}", f"sum by (direction) (increase(keel_autoscaler_action_duration_seconds_sum{{{AUTOSCALER}}}[{window}])) / "
                                   f"sum by (direction) (increase(keel_autoscaler_action_duration_seconds_count{{{AUTOSCALER}}}[{window}]))"),
            ("p90 {{direction}}", f"histogram_quantile(0.9, sum by (direction, le) "
                                  f"(increase(keel_autoscaler_action_duration_seconds_bucket{{{AUTOSCALER}}}[{window}])))")],
              unit="s", description="From the decision to the new host serving (up) or the old one released (down)."),
        panel("Autoscaler: frozen, dry-run, metrics missing (1 = yes)", [
            ("frozen {{reason}}", f"keel_autoscaler_frozen{{{AUTOSCALER}}}"),
            ("dry-run", f"keel_autoscaler_dry_run{{{AUTOSCALER}}}"),
            ("metrics missing", f"keel_autoscaler_metrics_missing{{{AUTOSCALER}}}")], kind="state-timeline"),
        panel("Autoscaler: cooldown and back-off left", [
            ("scale-in cooldown", f"keel_autoscaler_cooldown_remaining_seconds{{{AUTOSCALER}}}"),
            ("back-off", f"keel_autoscaler_backoff_remaining_seconds{{{AUTOSCALER}}}"),
            ("action under way for", f"keel_autoscaler_intent_age_seconds{{{AUTOSCALER}}}")], unit="s"),
        panel("Autoscaler: spare hosts left (-1: unknown)", [("", f"max(keel_autoscaler_spare_nodes{{{AUTOSCALER}}})")],
              kind="stat"),
    ]


def autoscaler_annotations() -> list[dict]:
    return [
        annotation("Autoscaler actions",
                   f"changes(keel_autoscaler_last_action_timestamp_seconds{{{AUTOSCALER}}}[1m]) > 0",
                   "autoscaler: scale-{{direction}}", "blue", tags="direction"),
        annotation("Autoscaler dry-run decisions",
                   f'sum by (action) (increase(keel_autoscaler_decisions_total{{{AUTOSCALER}, gate="dry_run"}}[1m])) > 0',
                   "autoscaler (dry-run) would {{action}}", "yellow", tags="action"),
    ]


def capacity() -> dict:
    return dashboard("keel-capacity", "keel / Capacity planning",
                     "Load per app instance against host resources, and the trends that say when to add nodes "
                     "(the autoscaler reads the same series); the autoscaler's view, decisions and actions.", [
        panel("Requests per second per serving app instance", [
            ("", 'sum(rate(keel_app_requests_total{job="app"}[$__rate_interval])) / count(up{job="app"} == 1)')], unit="reqps"),
        panel("App instances up", [("", 'count(up{job="app"} == 1)'), ("configured", 'count(up{job="app"})')], kind="stat"),
        panel("CPU busy per host", [("{{instance}}", '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[$__rate_interval]))')],
              unit="percentunit"),
        panel("Requests per CPU second (efficiency)", [
            ("", 'sum(rate(keel_app_requests_total{job="app"}[$__rate_interval])) / '
                 'sum(rate(process_cpu_seconds_total{job="app"}[$__rate_interval]))')], unit="short"),
        panel("Peak request rate over the last day (5 m average)", [("", 'max_over_time(job:keel_app_requests:rate5m[1d])')],
              unit="reqps"),
        panel("Memory available in 7 days (linear trend)", [
            ("{{instance}}", "predict_linear(node_memory_MemAvailable_bytes[1d], 7 * 86400)")], unit="bytes"),
        panel("Disk free in 30 days (linear trend)", [
            ("{{instance}} {{mountpoint}}", 'predict_linear(node_filesystem_avail_bytes{fstype!~"tmpfs|ramfs|overlay|squashfs"}[7d], 30 * 86400)')],
              unit="bytes"),
        panel("HAProxy sessions against the limit", [
            ("{{instance}}", 'sum by (instance) (haproxy_frontend_current_sessions) / on (instance) haproxy_process_max_connections')],
              unit="percentunit"),
        *autoscaler_panels(),
    ], [], refresh="5m", time_from="now-7d", annotations=autoscaler_annotations())


def correlation() -> dict:
    logs = [
        panel("Log lines of the request (all services and hosts)",
              '{service=~".+"} |= "$request_id" | json | request_id = "$request_id"', kind="logs", datasource=LOKI,
              width=24, height=10,
              description="Every JSON log line with this request ID; a line's trace_id links to its trace in Jaeger."),
        panel("Log lines of the trace", '{service=~".+"} |= "$trace_id" | json | trace_id = "$trace_id"', kind="logs",
              datasource=LOKI, width=24, height=10),
        panel("Trace", "$trace_id", kind="traces", datasource=JAEGER, width=24, height=12,
              description="The trace in Jaeger; each span links back to the log lines of the trace."),
        panel("Errors and slow requests of the last hour (pick a request ID)",
              '{service=~".+", level=~"error|warning"} | json | request_id != ""', kind="logs", datasource=LOKI,
              width=24, height=10),
    ]
    return dashboard("keel-request-correlation", "keel / Request correlation",
                     "From a request ID (the X-Request-ID response header or a log line) to its log lines in every "
                     "service and to its trace; from the trace back to the logs.", logs,
                     [text_variable("request_id", "Request ID"), text_variable("trace_id", "Trace ID")],
                     refresh="", time_from="now-1h")


DASHBOARDS = {"keel-hosts": hosts, "keel-haproxy": haproxy, "keel-app": app, "keel-capacity": capacity,
              "keel-request-correlation": correlation}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, sort_keys=True) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a file differs from the specs")
    args = parser.parse_args()
    differ = []
    for name, text in render().items():
        path = OUT / f"{name}.json"
        if args.check:
            if not path.exists() or path.read_text() != text:
                differ.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if differ:
        print("differ from scripts/build_dashboards.py (run it):", *differ, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
