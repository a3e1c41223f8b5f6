"""The real Grafana, Loki, Alloy and Jaeger (installed from upstream by the roles):
they run sandboxed, Grafana has its datasources and dashboards and refuses
anonymous users and sign-up, a journal line reaches Loki with the bounded labels,
an app's JSON line is found by its trace_id and request ID, an OTLP span reaches
Jaeger and Grafana finds it through its datasource, and the deployment guide's
Grafana backup brings back a lost database."""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "molecule" / "resources"))
from polling import wait_for

PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
HOST = "172.30.86.31"
GRAFANA = f"http://{HOST}:3000"
PASSWORD = (Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "grafana-admin-password").read_text().split()[0]


def get(url: str, auth: bool = False):
    request = urllib.request.Request(url)  # noqa: S310  http URLs of the scenario's own host
    if auth:
        token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  the scenario's own host
        return json.load(response)




@pytest.mark.parametrize("unit", ["grafana-server", "loki", "alloy", "jaeger", "prometheus", "alertmanager",
                                  "node_exporter", "blackbox_exporter"])
def test_units_run_sandboxed(host, unit):
    assert host.service(unit).is_running and host.service(unit).is_enabled
    rating = host.check_output(f"systemd-analyze security --no-pager {unit}.service | tail -1")
    assert float(rating.split()[-3]) <= 2.0, rating


def test_versions_are_the_pinned_ones(host):
    for package in ("grafana", "loki", "alloy"):
        defaults = yaml.safe_load((PROJECT / "roles" / package / "defaults" / "main.yml").read_text())
        assert host.package(package).version.startswith(defaults[f"{package}_version"]), package
        assert host.file(f"/etc/apt/preferences.d/keel-{package}").contains("Pin-Priority: 1001")


def test_grafana_refuses_anonymous_users_and_sign_up():
    with pytest.raises(urllib.error.HTTPError) as denied:
        get(f"{GRAFANA}/api/search")
    assert denied.value.code == 401
    settings = get(f"{GRAFANA}/api/frontend/settings", auth=True)
    assert settings["allowOrgCreate"] is False
    # sign-up itself, as an anonymous visitor would try it
    request = urllib.request.Request(f"{GRAFANA}/api/user/signup", method="POST",  # noqa: S310  the scenario's host
                                     data=json.dumps({"email": "visitor@example.org"}).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310  the scenario's own host
    assert refused.value.code in (401, 403), refused.value.read()[:500]


def test_grafana_has_the_provisioned_datasources_and_dashboards():
    uids = {d["uid"] for d in get(f"{GRAFANA}/api/datasources", auth=True)}
    assert uids >= {"keel-prometheus", "keel-loki", "keel-jaeger"}
    for uid in ("keel-prometheus", "keel-loki", "keel-jaeger"):
        health = get(f"{GRAFANA}/api/datasources/uid/{uid}/health", auth=True)
        assert health["status"] == "OK", (uid, health)
    boards = {d["uid"] for d in get(f"{GRAFANA}/api/search?tag=keel", auth=True)}
    assert boards == {"keel-hosts", "keel-haproxy", "keel-app", "keel-capacity", "keel-request-correlation"}


def test_a_journal_line_reaches_loki_with_the_bounded_labels(host):
    probe = secrets.token_hex(8)
    host.check_output(f"logger -t keel-online-probe 'probe {probe}'")
    query = urllib.parse.quote(f'{{host="obs-online"}} |= "{probe}"')

    def found():
        result = get(f"http://{HOST}:3100/loki/api/v1/query_range?query={query}&limit=10")["data"]["result"]
        return result
    result = wait_for(found, timeout=90, step=3)
    assert result, "the probe line did not reach Loki"
    assert set(result[0]["stream"]) <= {"host", "service", "level"} | {"service_name", "detected_level"}, result[0]


def test_an_otlp_span_reaches_jaeger(host):
    trace_id = secrets.token_hex(16)
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "keel-probe"}}]}
    span = {"resourceSpans": [{"resource": resource,
                               "scopeSpans": [{"spans": [{
                                   "traceId": trace_id, "spanId": secrets.token_hex(8), "name": "probe", "kind": 1,
                                   "startTimeUnixNano": str(time.time_ns() - 1_000_000),
                                   "endTimeUnixNano": str(time.time_ns())}]}]}]}
    request = urllib.request.Request(f"http://{HOST}:4318/v1/traces", data=json.dumps(span).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  the scenario's own host
        assert response.status == 200

    def found():
        try:
            return get(f"http://{HOST}:16686/api/traces/{trace_id}")["data"]
        except urllib.error.HTTPError:
            return None
    assert wait_for(found, timeout=90, step=3), "the span did not reach Jaeger's query API"
    # and Grafana finds it through its Jaeger datasource (what the correlation dashboard does)
    through_grafana = get(f"{GRAFANA}/api/datasources/proxy/uid/keel-jaeger/api/traces/{trace_id}", auth=True)
    assert through_grafana["data"][0]["traceID"] == trace_id, through_grafana


def test_an_app_log_line_is_found_in_loki_by_its_trace_id_and_request_id(host):
    """A JSON line from a keel-app@ unit (a transient one here: the app is not part of
    this scenario) gets the labels host/service/level from Alloy, and its trace_id and
    request_id stay fields of the line that LogQL's json parser finds."""
    trace_id, request_id = secrets.token_hex(16), secrets.token_hex(8)
    line = json.dumps({"level": "info", "service": "api", "message": "request done", "trace_id": trace_id,
                       "request_id": request_id})
    host.check_output(f"systemd-run --quiet --wait --unit keel-app@online-probe-{request_id[:6]} "
                      f"/bin/echo {json.dumps(line)}")

    def search(field: str, value: str):
        query = urllib.parse.quote(f'{{host="obs-online", service="api"}} | json | {field}="{value}"')
        return get(f"http://{HOST}:3100/loki/api/v1/query_range?query={query}&limit=10")["data"]["result"]
    by_trace = wait_for(lambda: search("trace_id", trace_id), timeout=90, step=3)
    assert by_trace, "the app line was not found by its trace_id"
    assert by_trace[0]["stream"]["level"] == "info"
    assert search("request_id", request_id), "the app line was not found by its request ID"


def post(url: str, body: dict) -> dict:
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",  # noqa: S310  own host
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  the scenario's own host
        return json.load(response)


def annotations_tagged(tag: str) -> list[str] | None:
    """The texts of the annotations with this tag, or None while Grafana (re)starts."""
    try:
        return [a["text"] for a in get(f"{GRAFANA}/api/annotations?tags={tag}", auth=True)]
    except OSError:
        return None


def test_backup_and_restore_of_grafana_as_the_guide_says(host):
    """The guide's Grafana commands as written (docs/deployment-guide.md, 8.): an annotation
    (kept in grafana.db only) survives the loss of the database through the backup."""
    tag = f"keel-backup-{secrets.token_hex(4)}"
    post(f"{GRAFANA}/api/annotations", {"text": "made before the backup", "tags": [tag]})
    host.check_output("systemctl stop grafana-server && tar -czf /var/backups/grafana-$(date +%F).tar.gz "
                      "/var/lib/grafana/grafana.db /etc/grafana/keel-secret-key && systemctl start grafana-server")
    listed = host.check_output("tar -tzf /var/backups/grafana-$(date +%F).tar.gz").split()
    assert sorted(listed) == ["etc/grafana/keel-secret-key", "var/lib/grafana/grafana.db"], listed
    owner = host.check_output("stat -c %U:%G /var/lib/grafana/grafana.db")
    host.check_output("systemctl stop grafana-server && rm /var/lib/grafana/grafana.db "
                      "&& systemctl start grafana-server")
    # a new, empty database (the admin password comes from keel's file again)
    assert wait_for(lambda: annotations_tagged(tag) == [], timeout=90, step=3), annotations_tagged(tag)
    host.check_output("systemctl stop grafana-server && tar -C / -xzf /var/backups/grafana-$(date +%F).tar.gz "
                      f"&& chown {owner} /var/lib/grafana/grafana.db && systemctl start grafana-server")
    assert wait_for(lambda: annotations_tagged(tag) == ["made before the backup"], timeout=90, step=3), \
        annotations_tagged(tag)
