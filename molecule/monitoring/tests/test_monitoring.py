"""Prometheus, Alertmanager, node_exporter and blackbox_exporter from the test mirror: wiring from inventory, upgrade,
reload, sandboxing, and bad input rejected before anything changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "molecule" / "resources"))
from polling import wait_for

SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
PROMETHEUS = "http://172.30.85.31:9090"
ALERTMANAGER = "http://172.30.85.31:9093"
CURRENT = {"prometheus": "2.53.3", "node_exporter": "1.9.0", "alertmanager": "0.28.1", "blackbox_exporter": "0.26.0"}
PREVIOUS = {"prometheus": "2.42.0", "node_exporter": "1.5.0", "alertmanager": "0.25.0", "blackbox_exporter": "0.23.0"}


def name(host) -> str:
    return host.ansible.get_variables()["inventory_hostname"]


def api(path: str, **params: str) -> dict:
    url = f"{PROMETHEUS}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  the scenario's own host
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def alertmanager(path: str):
    with urllib.request.urlopen(f"{ALERTMANAGER}{path}", timeout=10) as response:  # noqa: S310  the scenario's own host
        return json.load(response)


def query(expr: str) -> list[dict]:
    return api("/api/v1/query", query=expr)["result"]




# ---------------------------------------------------------------- node_exporter (both hosts)
def test_node_exporter_runs_the_current_version_sandboxed(host):
    unit = host.file("/etc/systemd/system/node_exporter.service").content_string
    assert f"/opt/keel/node_exporter/{CURRENT['node_exporter']}/node_exporter" in unit
    assert host.service("node_exporter").is_running
    assert host.service("node_exporter").is_enabled
    rating = host.check_output("systemd-analyze security --no-pager node_exporter.service | tail -1")
    assert float(rating.split()[-3]) <= 2.0, rating  # "→ Overall exposure level for ...: 1.9 OK 🙂"


def test_node_exporter_listens_on_the_private_address_only(host):
    address = host.ansible.get_variables()["keel_private_ip"]
    listening = host.check_output("ss -Htlnp 'sport = :9100'")
    assert f"{address}:9100" in listening and "0.0.0.0:9100" not in listening, listening


def test_binaries_root_owned_and_not_writable_by_the_service_user(host):
    binary = host.file(f"/opt/keel/node_exporter/{CURRENT['node_exporter']}/node_exporter")
    assert binary.user == "root" and binary.group == "root"
    assert binary.mode & 0o022 == 0, oct(binary.mode)
    assert host.run(f"runuser -u node-exp -- test -w {binary.path}").rc != 0
    assert host.user("node-exp").shell == "/usr/sbin/nologin"


def test_previous_version_kept_for_a_rollback(host):
    assert host.file(f"/opt/keel/node_exporter/{PREVIOUS['node_exporter']}/node_exporter").exists


# ---------------------------------------------------------------- prometheus (mon1)
@pytest.fixture
def mon1(host):
    if name(host) != "mon1":
        pytest.skip("Prometheus runs on the monitoring host mon1")
    return host


def test_prometheus_upgraded_in_place(mon1):
    running = api("/api/v1/status/buildinfo")["version"]  # Debian's builds say e.g. 2.53.3+ds1
    assert running.split("+")[0] == CURRENT["prometheus"], running
    assert mon1.file(f"/opt/keel/prometheus/{PREVIOUS['prometheus']}/prometheus").exists  # kept for a rollback


def test_data_written_by_the_previous_version_survived_the_upgrade(mon1):
    old = query(f'count_over_time(prometheus_build_info{{version=~"{PREVIOUS["prometheus"]}.*"}}[1h])')
    assert old and float(old[0]["value"][1]) >= 1, old


def test_node_exporters_report_the_current_version(mon1):
    result = wait_for(lambda: query("node_exporter_build_info"))
    versions = {r["metric"]["instance"]: r["metric"]["version"].split("+")[0] for r in result}
    assert versions == {"mon1": CURRENT["node_exporter"], "node1": CURRENT["node_exporter"]}, versions


def test_scrape_targets_come_from_the_inventory(mon1):
    targets = api("/api/v1/targets")["activeTargets"]
    # every target of an inventory host carries it as the label host (Alertmanager's
    # inhibition matches on it); the probes name URLs, not hosts
    hosts = {t["labels"]["instance"]: t["labels"].get("host") for t in targets
             if not t["labels"]["job"].startswith("blackbox")}
    assert hosts == {instance: instance.split(":")[0] for instance in hosts}, hosts
    seen = {(t["labels"]["job"], t["labels"]["instance"], t["scrapeUrl"]) for t in targets}
    assert seen == {
        ("node", "mon1", "http://172.30.85.31:9100/metrics"),
        ("node", "node1", "http://172.30.85.21:9100/metrics"),
        ("prometheus", "mon1", "http://172.30.85.31:9090/metrics"),
        ("haproxy", "node1", "http://172.30.85.21:8404/metrics"),
        ("app", "node1:8000", "http://172.30.85.21:8000/metrics"),  # app_instance_ports of node1
        ("app", "node1:8001", "http://172.30.85.21:8001/metrics"),
        ("alertmanager", "mon1", "http://172.30.85.31:9093/metrics"),
        ("blackbox_exporter", "mon1", "http://172.30.85.31:9115/metrics"),
        ("autoscaler", "mon1", "http://172.30.85.31:9180/metrics"),  # the group autoscaler
        # the load balancers' public endpoint, probed through mon1's blackbox_exporter
        ("blackbox", "https://node1/", "http://172.30.85.31:9115/probe?module=http_2xx&target=https%3A%2F%2Fnode1%2F"),
        # and the edge's policy, one module per probe
        ("blackbox_edge", "https://node1/",
         "http://172.30.85.31:9115/probe?module=edge_https_policy&target=https%3A%2F%2Fnode1%2F"),
        ("blackbox_edge", "https://node1/metrics",
         "http://172.30.85.31:9115/probe?module=edge_internal_hidden&target=https%3A%2F%2Fnode1%2Fmetrics"),
        ("blackbox_edge", "http://node1/",
         "http://172.30.85.31:9115/probe?module=edge_http_redirect&target=http%3A%2F%2Fnode1%2F"),
    }, seen


def test_running_exporters_are_up(mon1):
    def up() -> dict:
        return {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1] for r in query("up")}
    expected_up = [("node", "mon1"), ("node", "node1"), ("prometheus", "mon1"), ("alertmanager", "mon1"),
                   ("blackbox_exporter", "mon1"), ("blackbox", "https://node1/")]
    wait_for(lambda: all(up().get(k) == "1" for k in expected_up))
    status = up()
    assert status[("node", "mon1")] == "1" and status[("node", "node1")] == "1", status
    assert status[("prometheus", "mon1")] == "1", status
    assert status[("alertmanager", "mon1")] == "1" and status[("blackbox_exporter", "mon1")] == "1", status
    # the probe itself is answered by blackbox_exporter (up) and fails: node1 serves no HTTPS here
    assert status[("blackbox", "https://node1/")] == "1", status
    # nothing listens on node1's app and HAProxy ports in this scenario: down, and said so
    assert status[("app", "node1:8000")] == "0" and status[("haproxy", "node1")] == "0", status


def test_alert_rules_loaded(mon1):
    groups = {g["name"]: g for g in api("/api/v1/rules")["groups"]}
    assert {"keel-app-recording", "keel-app-alerts", "keel-platform-alerts"} <= groups.keys(), groups.keys()
    alerts = {r["name"] for g in groups.values() for r in g["rules"] if r["type"] == "alerting"}
    assert {"KeelInstanceDown", "KeelHAProxyBackendDown", "KeelAppErrorBudgetBurn"} <= alerts


def test_down_targets_raise_instance_down(mon1):
    def firing() -> set[tuple[str, str]]:
        return {(a["labels"]["job"], a["labels"]["instance"]) for a in api("/api/v1/alerts")["alerts"]
                if a["labels"]["alertname"] == "KeelInstanceDown" and a["state"] == "firing"}
    expected = {("app", "node1:8000"), ("app", "node1:8001"), ("haproxy", "node1")}
    assert wait_for(lambda: firing() >= expected, timeout=90), firing()
    assert ("node", "node1") not in firing()


def served_blackbox_config() -> str:
    with urllib.request.urlopen("http://172.30.85.31:9115/config", timeout=10) as response:
        return response.read().decode()


# What the side effect changed in each service's files, as the live service serves it
SIDE_EFFECT_LOADED = {
    "prometheus": lambda: "keel-test-side-effect" in {g["name"] for g in api("/api/v1/rules")["groups"]},
    "alertmanager": lambda: "repeat_interval: 2h" in alertmanager("/api/v2/status")["config"]["original"],
    "blackbox_exporter": lambda: "tcp_side_effect:" in served_blackbox_config(),
}


@pytest.mark.parametrize("unit", SIDE_EFFECT_LOADED)
def test_side_effect_change_loaded_by_a_reload_not_a_restart(mon1, unit):
    """The side effect's change is served by the process that ran before it: the handler's SIGHUP,
    confirmed by keel_reload_seen (a check that can never pass fails the side effect's run)."""
    before = mon1.file(f"/root/{unit}-pid-before-side-effect").content_string.strip()
    assert mon1.check_output(f"systemctl show -p MainPID --value {unit}") == before
    assert SIDE_EFFECT_LOADED[unit]()


def test_runtime_settings(mon1):
    flags = api("/api/v1/status/flags")
    assert flags["storage.tsdb.retention.time"] == "30d"
    assert flags["storage.tsdb.path"] == "/var/lib/prometheus"
    # links name the public URL with its path; the routes stay at / (this API call, the self-scrape)
    assert (flags["web.external-url"], flags["web.route-prefix"]) == ("https://ops.example.test/prometheus/", "/")
    assert api("/api/v1/status/config")["yaml"].count("site: molecule") == 1


def assert_sandboxed(host, unit: str, user: str, config: str) -> None:
    """Unit rated <= 2.0, binary root-owned and not writable by the service user, nor its configuration."""
    rating = host.check_output(f"systemd-analyze security --no-pager {unit}.service | tail -1")
    assert float(rating.split()[-3]) <= 2.0, rating  # "→ Overall exposure level for ...: 1.9 OK 🙂"
    binary = host.file(f"/opt/keel/{unit}/{CURRENT[unit]}/{unit}")
    assert binary.user == "root" and binary.mode & 0o022 == 0
    assert host.run(f"runuser -u {user} -- test -w {binary.path}").rc != 0
    assert host.run(f"runuser -u {user} -- test -w {config}").rc != 0


def test_prometheus_sandboxed(mon1):
    assert_sandboxed(mon1, "prometheus", "prometheus", "/etc/prometheus/prometheus.yml")
    assert mon1.file("/usr/local/bin/promtool").linked_to == f"/opt/keel/prometheus/{CURRENT['prometheus']}/promtool"


# ---------------------------------------------------------------- alertmanager (mon1)
def test_alertmanager_upgraded_in_place_and_sandboxed(mon1):
    status = alertmanager("/api/v2/status")
    assert status["versionInfo"]["version"].split("+")[0] == CURRENT["alertmanager"], status["versionInfo"]
    assert status["cluster"]["status"] == "disabled"  # one monitoring host: no cluster listener
    assert mon1.file(f"/opt/keel/alertmanager/{PREVIOUS['alertmanager']}/alertmanager").exists
    assert_sandboxed(mon1, "alertmanager", "alertmanager", "/etc/alertmanager/alertmanager.yml")
    assert mon1.file("/usr/local/bin/amtool").linked_to == f"/opt/keel/alertmanager/{CURRENT['alertmanager']}/amtool"


def test_silence_made_by_the_previous_alertmanager_survived_the_upgrade(mon1):
    silences = [s for s in alertmanager("/api/v2/silences")
                if s["comment"] == "made by the previous Alertmanager before the upgrade"]
    assert [s["status"]["state"] for s in silences] == ["active"], silences


def test_prometheus_sends_alerts_to_the_inventory_alertmanagers(mon1):
    # Right after a configuration reload (the side effect makes one) Prometheus' notifier
    # lists no Alertmanager until its discovery has run again: a few seconds. Seen in
    # stop 14's CI: [] once, the right list on the next attempt.
    def active() -> list[str]:
        return [a["url"] for a in api("/api/v1/alertmanagers")["activeAlertmanagers"]]
    assert wait_for(active, timeout=60) == ["http://172.30.85.31:9093/api/v2/alerts"], active()


def test_down_target_alert_reaches_alertmanager_and_the_webhook(mon1):
    def notified() -> set[tuple[str, str, str]]:
        lines = mon1.run("cat /root/webhook.jsonl").stdout.splitlines()
        return {(a["labels"]["alertname"], a["labels"]["instance"], a["status"])
                for line in lines for a in json.loads(line)["body"]["alerts"]}
    assert wait_for(lambda: ("KeelInstanceDown", "node1:8000", "firing") in notified(), timeout=120), notified()
    alerts = alertmanager("/api/v2/alerts")
    in_alertmanager = {(a["labels"]["alertname"], a["labels"]["instance"]) for a in alerts}
    assert ("KeelInstanceDown", "node1:8000") in in_alertmanager
    # the alert links to the graph on the public URL (prometheus_external_url)
    links = {a["generatorURL"].split("?")[0] for a in alerts
             if (a["labels"]["alertname"], a["labels"]["instance"]) == ("KeelInstanceDown", "node1:8000")}
    assert links == {"https://ops.example.test/prometheus/graph"}, links


def post_alerts(alerts: list[dict]) -> None:
    request = urllib.request.Request(f"{ALERTMANAGER}/api/v2/alerts", data=json.dumps(alerts).encode(),  # noqa: S310
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  the scenario's own host
        assert response.status == 200


def test_a_down_host_mutes_the_alerts_of_what_runs_on_it(mon1):
    """The role's inhibition rules on the live Alertmanager: a down host (KeelHostDown)
    mutes its other alerts and the down alerts of each of its targets (matched on the
    host label Prometheus gives every target); another host's alerts, the host's own
    down alert, and a node_exporter down alone on a serving host (which must not
    hide that host's app alerts) stay active; alerts are grouped by alertname, job, instance."""
    stamp = f"keel-test-{time.time_ns()}"
    ends = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()

    def alert(alertname: str, job: str, instance: str, host: str, severity: str) -> dict:
        return {"labels": {"alertname": alertname, "job": job, "instance": instance, "host": host,
                           "severity": severity, "keel_test": stamp}, "endsAt": ends}

    post_alerts([
        {"labels": {"alertname": "KeelHostDown", "host": "ghost1", "severity": "critical",  # the host is down
                    "keel_test": stamp}, "endsAt": ends},
        alert("KeelInstanceDown", "node", "ghost1", "ghost1", "critical"),        # ... so are its targets
        alert("KeelInstanceDown", "app", "ghost1:8000", "ghost1", "critical"),
        alert("KeelDiskFillingUp", "node", "ghost1", "ghost1", "warning"),  # ... and what it said before
        alert("KeelInstanceDown", "app", "ghost2:8000", "ghost2", "critical"),    # another host's instance
        alert("KeelDiskFillingUp", "node", "ghost2", "ghost2", "warning"),
        alert("KeelInstanceDown", "node", "ghost3", "ghost3", "critical"),  # only ghost3's node_exporter died
        alert("KeelAppHighErrorRatio", "app", "ghost3:8000", "ghost3", "critical"),  # ... its app still reports
    ])

    def states() -> dict[tuple[str, str], str]:
        found = alertmanager(f"/api/v2/alerts?filter={urllib.parse.quote(f'keel_test={stamp}')}")
        return {(a["labels"]["alertname"], a["labels"].get("instance", "")): a["status"]["state"] for a in found}

    expected = {
        ("KeelHostDown", ""): "active",
        ("KeelInstanceDown", "ghost1"): "suppressed",
        ("KeelInstanceDown", "ghost1:8000"): "suppressed",
        ("KeelDiskFillingUp", "ghost1"): "suppressed",
        ("KeelInstanceDown", "ghost2:8000"): "active",
        ("KeelDiskFillingUp", "ghost2"): "active",
        ("KeelInstanceDown", "ghost3"): "active",
        ("KeelAppHighErrorRatio", "ghost3:8000"): "active",
    }
    assert wait_for(lambda: states() == expected, timeout=30), states()
    def grouped() -> list[tuple[str, str]]:
        groups = alertmanager(f"/api/v2/alerts/groups?filter={urllib.parse.quote(f'keel_test={stamp}')}")
        return sorted((g["labels"]["alertname"], g["labels"].get("instance", "")) for g in groups)
    # one group per alertname, job and instance (groups are built asynchronously)
    assert wait_for(lambda: grouped() == sorted(expected), timeout=30), grouped()


def test_amtool_accepts_the_live_configuration(mon1):
    assert mon1.run("amtool check-config /etc/alertmanager/alertmanager.yml").rc == 0


# ---------------------------------------------------------------- blackbox_exporter (mon1)
def test_blackbox_exporter_upgraded_in_place_and_sandboxed(mon1):
    result = wait_for(lambda: query("blackbox_exporter_build_info"))
    assert result and result[0]["metric"]["version"].split("+")[0] == CURRENT["blackbox_exporter"], result
    assert mon1.file(f"/opt/keel/blackbox_exporter/{PREVIOUS['blackbox_exporter']}/blackbox_exporter").exists
    assert_sandboxed(mon1, "blackbox_exporter", "blackbox-exp", "/etc/blackbox_exporter/blackbox.yml")
    listening = mon1.check_output("ss -Htlnp 'sport = :9115'")
    assert "172.30.85.31:9115" in listening and "0.0.0.0:9115" not in listening, listening


def test_probe_of_a_dead_endpoint_fails_and_says_why(mon1):
    """node1 (a load balancer of this inventory) serves no HTTPS here: the probe runs and fails."""
    result = wait_for(lambda: query('probe_success{job="blackbox"}'))
    assert [(r["metric"]["instance"], r["value"][1]) for r in result] == [("https://node1/", "0")], result


# ---------------------------------------------------------------- the autoscaler (mon1, dry-run)
AUTOSCALER = "http://172.30.85.31:9180"


def autoscaler(path: str, method: str = "GET", token: str | None = None,
               body: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of a request to the autoscaler, with the bearer token when given."""
    request = urllib.request.Request(f"{AUTOSCALER}{path}", method=method,  # noqa: S310  the scenario's own host
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def autoscaler_metrics() -> dict[str, float]:
    """Series (name with labels) -> value, from the autoscaler's /metrics."""
    status, body = autoscaler("/metrics")
    assert status == 200
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in body.decode().splitlines() if line and not line.startswith("#")}


def test_autoscaler_runs_sandboxed(mon1):
    assert mon1.service("keel-autoscaler").is_running and mon1.service("keel-autoscaler").is_enabled
    rating = mon1.check_output("systemd-analyze security --no-pager keel-autoscaler.service | tail -1")
    assert float(rating.split()[-3]) <= 2.0, rating  # "→ Overall exposure level for ...: 1.9 OK 🙂"
    program = mon1.file("/opt/keel-autoscaler/bin/keel-autoscaler")
    assert program.user == "root" and program.mode & 0o022 == 0
    assert mon1.user("keel-autoscaler").shell == "/usr/sbin/nologin"
    for path in (program.path, "/etc/keel-autoscaler/config.json", "/opt/keel-autoscaler/lib"):
        assert mon1.run(f"runuser -u keel-autoscaler -- test -w {path}").rc != 0, path
    token = mon1.file("/etc/keel-autoscaler/token")
    assert (token.user, token.group, token.mode) == ("root", "keel-autoscaler", 0o640)
    state = mon1.file("/var/lib/keel-autoscaler")
    assert (state.user, state.mode) == ("keel-autoscaler", 0o750)
    # the live file passes the installed checker (the role's validate: runs it on every candidate)
    check = "/opt/keel-autoscaler/bin/keel-autoscaler --config /etc/keel-autoscaler/config.json check-config"
    assert mon1.run(check).rc == 0


def test_autoscaler_config_follows_the_role_variables(mon1):
    config = json.loads(mon1.file("/etc/keel-autoscaler/config.json").content_string)
    assert (config["mode"], config["listen"]) == ("dry-run", {"address": "172.30.85.31", "port": 9180})
    # the first monitoring host's Prometheus by default
    assert config["prometheus"]["url"] == "http://172.30.85.31:9090"
    assert config["evaluation_interval"] == 5 and config["policy"]["min_nodes"] == 2
    assert [(m["name"], m["target"]) for m in config["policy"]["metrics"]] == [("requests_per_node", 100.0)]
    assert config["policy"]["scale_down"] == {"stabilization_window": 300, "select": "min",
                                              "policies": [{"type": "nodes", "value": 1.0, "period": 300}]}
    assert (config["executor"]["type"], config["provider"]["type"], config["inventory"]["type"]) == (
        "runner", "spare-pool", "file")
    assert config["token_file"] == "/etc/keel-autoscaler/token"  # noqa: S105  a path
    assert not mon1.file("/etc/keel-autoscaler/awx-token").exists  # nothing here talks to AWX


def test_autoscaler_serves_metrics_on_the_private_address_only(mon1):
    listening = mon1.check_output("ss -Htlnp 'sport = :9180'")
    assert "172.30.85.31:9180" in listening and "0.0.0.0:9180" not in listening, listening
    metrics = autoscaler_metrics()
    assert metrics["keel_autoscaler_up"] == 1 and metrics["keel_autoscaler_dry_run"] == 1, metrics


def test_autoscaler_evaluates_against_prometheus_and_is_scraped(mon1):
    """Dry-run evaluates every 5 s against the scenario's Prometheus; Prometheus scrapes it (job autoscaler)."""
    def last_evaluation() -> float:
        return autoscaler_metrics().get("keel_autoscaler_last_evaluation_timestamp_seconds", 0)
    assert wait_for(lambda: time.time() - last_evaluation() < 30, timeout=60), last_evaluation()
    # one app host (node1) against min_nodes 2: it would scale to 2, and being a dry run it does not
    metrics = autoscaler_metrics()
    assert (metrics["keel_autoscaler_current_nodes"], metrics["keel_autoscaler_desired_nodes"]) == (1, 2), metrics
    assert metrics['keel_autoscaler_decisions_total{action="scale_up",gate="dry_run"}'] >= 1, metrics
    assert sum(v for k, v in metrics.items() if k.startswith("keel_autoscaler_actions_total")) == 0, metrics
    assert not mon1.file("/var/lib/keel-autoscaler/jobs").exists  # no playbook was started
    def scraped() -> list:
        return [(r["metric"]["instance"], r["value"][1]) for r in query('keel_autoscaler_up{job="autoscaler"}')]
    assert wait_for(lambda: scraped() == [("mon1", "1")], timeout=90), scraped()


def test_autoscaler_webhook_and_api_need_the_token(mon1):
    token = mon1.file("/etc/keel-autoscaler/token").content_string.strip()
    assert len(token) >= 16
    notification = {"version": "4", "status": "firing", "receiver": "autoscaler", "groupKey": "molecule",
                    "alerts": [{"status": "firing", "labels": {"alertname": "KeelTest"}, "fingerprint": "f00d"}]}
    received = autoscaler_metrics()["keel_autoscaler_webhook_received_total"]
    assert autoscaler("/v1/alertmanager", "POST", body=notification)[0] == 401
    wrong = "not-the-token-0123456789"
    assert autoscaler("/v1/alertmanager", "POST", token=wrong, body=notification)[0] == 401
    assert autoscaler("/v1/status")[0] == 401
    status, body = autoscaler("/v1/alertmanager", "POST", token=token, body=notification)
    assert status == 200, body
    assert autoscaler_metrics()["keel_autoscaler_webhook_received_total"] == received + 1
    status, body = autoscaler("/v1/status", token=token)
    assert status == 200, body


def test_autoscaler_restarted_for_the_side_effect_config_change(mon1):
    """The side effect changed autoscaler_max_nodes: the handler restarted it (new PID) and it serves the value."""
    before = mon1.file("/root/keel-autoscaler-pid-before-side-effect").content_string.strip()
    assert mon1.check_output("systemctl show -p MainPID --value keel-autoscaler") not in (before, "0")
    assert autoscaler_metrics()["keel_autoscaler_max_nodes"] == 5


# ---------------------------------------------------------------- bad input (once, on mon1)
SNAPSHOT = (
    "{ find /opt/keel /opt/keel-autoscaler /etc/prometheus /etc/alertmanager /etc/blackbox_exporter"
    " /etc/keel-autoscaler /etc/systemd/system -xdev -printf '%p %s %m %T@\\n' | LC_ALL=C sort;"
    " systemctl show -p MainPID --value prometheus node_exporter alertmanager blackbox_exporter keel-autoscaler; }"
    " | sha256sum"
)
BROKEN_RULE = {"broken": {"groups": [{"name": "broken", "rules": [{"alert": "Broken", "expr": "sum(up"}]}]}}
BAD_INPUTS = {
    "scrape_group_that_does_not_exist": (
        {"prometheus_scrape_jobs_extra": [{"name": "db", "group": "databases", "port": 9187}]},
        ["the scrape jobs name inventory groups that do not exist: databases"]),
    "retention_not_a_duration": (
        {"prometheus_retention_time": "15 days"},
        ["prometheus_retention_time a duration such as 15d, 12h or 1y (got '15 days')"]),
    "checksum_mismatch_on_the_mirror": (
        {"artifact_manifest": "{{ (lookup('ansible.builtin.file', keel_test_mirror ~ '/artifacts.yml') | from_yaml)"
                           ".artifact_manifest | combine({'prometheus': {'sha256': {'2.53.3': {'amd64': '" + "0" * 64
                           + "'}}}}, recursive=true) }}"},
        ["prometheus 2.53.3: the archive from", "does not match the sha256 of the manifest", "nothing was installed"]),
    "external_url_without_a_scheme": (
        {"prometheus_external_url": "ops.example.test/prometheus"},
        ["prometheus_external_url empty or an http(s) URL such as https://ops.example.com/prometheus/",
         "(got 'ops.example.test/prometheus')"]),
    "alertmanager_route_to_an_unknown_receiver": (
        {"alertmanager_route": {"receiver": "pager"}},
        ["alertmanager_route.receiver must name one of alertmanager_receivers (default)"]),
    "alertmanager_config_amtool_rejects": (
        {"alertmanager_receivers": [{"name": "default", "webhook_configs": [{"url": "ftp://example.org/hook"}]}]},
        ["amtool check-config", "unsupported scheme"]),
    "probe_module_blackbox_exporter_rejects": (
        {"blackbox_exporter_modules_extra": {"broken": {"prober": "http", "http": {"no_such_option": True}}}},
        ["blackbox_exporter --config.check", "field no_such_option not found"]),
    "broken_rule_file": (
        {"prometheus_rules_extra": BROKEN_RULE},
        ["promtool check rules", "broken"]),
    "autoscaler_target_zero": (
        {"autoscaler_target_requests_per_node": 0},
        ["autoscaler_metrics must list at least one", "target 0.0", "scripts/bench.sh"]),
}


# Cases the roles' preflights catch (tagged always, first in each role) run the
# preflights only; the others need the whole converge (download, promtool, amtool).
PREFLIGHT_CASES = {"scrape_group_that_does_not_exist", "retention_not_a_duration", "external_url_without_a_scheme",
                   "alertmanager_route_to_an_unknown_receiver", "autoscaler_target_zero"}
PREFLIGHT_ONLY = ("--tags", "keel_no_such_tag")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_rejected_and_prometheus_keeps_running(mon1, case, tmp_path):
    overrides, messages = BAD_INPUTS[case]
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"keel_test_side_effect": True, **overrides}))  # the state verify sees
    rules_before = sorted(g["name"] for g in api("/api/v1/rules")["groups"])
    before = mon1.check_output(SNAPSHOT)
    res = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "converge.yml"),
         "-e", f"@{extra}", *(PREFLIGHT_ONLY if case in PREFLIGHT_CASES else ())],
        capture_output=True, text=True, timeout=600,
    )
    output = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, output[-3000:]
    for message in messages:
        assert message in output, output[-3000:]
    recap = [line for line in res.stdout.splitlines() if " : ok=" in line]
    assert recap and all("changed=0" in line for line in recap), recap
    assert mon1.check_output(SNAPSHOT) == before
    assert sorted(g["name"] for g in api("/api/v1/rules")["groups"]) == rules_before
    assert mon1.service("prometheus").is_running


# ---------------------------------------------------------------- Grafana's APT key (grafana_apt, on mon1)
# Grafana's repository cannot be reached here; the key check before it can. Keys
# made here with gpg stand for a mirror that serves another key, or the pinned
# key with another beside it (apt would then trust both).
GRAFANA_APT_PLAY = """
- name: Grafana's APT repository with a key from {url}
  hosts: mon1
  gather_facts: false
  roles:
    - role: grafana_apt
      vars:
        grafana_apt_package: grafana
        grafana_apt_package_version: "12.3.0"
        grafana_apt_key_url: {url}
        grafana_apt_key_fingerprint: {fingerprint}
"""


def gpg_key(home: Path, uid: str) -> tuple[str, bytes]:
    """A new signing key in its own gpg home: (fingerprint, armoured public key)."""
    home.mkdir(mode=0o700, parents=True)
    run = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    subprocess.run([*run, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"],
                   check=True, capture_output=True, timeout=60)
    colons = subprocess.run([*run, "--with-colons", "--list-keys"], check=True, capture_output=True, text=True).stdout
    fingerprint = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    return fingerprint, subprocess.run([*run, "--armor", "--export"], check=True, capture_output=True).stdout


@pytest.mark.parametrize("case", ["another_key", "the_pinned_key_and_another"])
def test_a_grafana_apt_key_other_than_the_pinned_one_is_refused_before_apt_trusts_it(mon1, case, tmp_path):
    try:
        pinned, pinned_key = gpg_key(tmp_path / "pinned", "pinned <pinned@example.org>")
        other, other_key = gpg_key(tmp_path / "other", "other <other@example.org>")
    finally:  # gpg leaves an agent running per home
        for home in ("pinned", "other"):
            subprocess.run(["gpgconf", "--homedir", str(tmp_path / home), "--kill", "all"], check=False, timeout=60)
    if case == "another_key":
        served, fingerprint = other_key, pinned
    else:
        served, fingerprint = pinned_key + other_key, pinned
    key_file = tmp_path / "served.asc"
    key_file.write_bytes(served)
    subprocess.run(["docker", "cp", str(key_file), "mon1:/root/served-grafana-key.asc"], check=True, timeout=60)
    play = tmp_path / "grafana-apt.yml"
    play.write_text(GRAFANA_APT_PLAY.format(url="file:///root/served-grafana-key.asc", fingerprint=fingerprint))
    res = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(play)],
                         capture_output=True, text=True, timeout=600, env={
                             **os.environ, "ANSIBLE_ROLES_PATH": str(SCENARIO.parents[1] / "roles")})
    output = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, output[-3000:]
    assert f"not exactly the pinned {pinned} (one primary key). Nothing was installed." in output, output[-3000:]
    assert other in output  # the message names what was served
    for path in ("/etc/apt/keyrings/keel-grafana.asc", "/etc/apt/sources.list.d/keel-grafana.sources",
                 "/etc/apt/preferences.d/keel-grafana"):
        assert not mon1.file(path).exists, path


# ---------------------------------------------------------------- backup and restore (deployment guide, section 8)
def test_backup_and_restore_of_prometheus_and_alertmanager_data_as_the_guide_says(mon1):
    """The guide's commands as written: a copy with the service stopped; then the data
    is lost, and restored (stop, unpack to the same path, chown to the service's user,
    start). What the previous versions wrote is there again."""
    for service in ("prometheus", "alertmanager"):
        mon1.check_output(f"systemctl stop {service} && tar -C /var/lib -czf /var/backups/{service}-$(date +%F).tar.gz "
                          f"{service} && systemctl start {service}")
    for service in ("prometheus", "alertmanager"):  # the loss
        mon1.check_output(f"systemctl stop {service} && find /var/lib/{service} -mindepth 1 -delete "
                          f"&& systemctl start {service}")
    previous = PREVIOUS["prometheus"]
    old_data = f'count_over_time(prometheus_build_info{{version=~"{previous}.*"}}[3h])'
    assert wait_for(lambda: silences_of_the_previous_alertmanager() == [], timeout=30)
    assert wait_for(lambda: query_when_up(old_data) == [], timeout=60)  # Prometheus up, the old data gone
    for service in ("prometheus", "alertmanager"):  # the restore
        owner = mon1.check_output(f"stat -c %U:%G /var/lib/{service}")
        mon1.check_output(f"systemctl stop {service} && tar -C /var/lib -xzf /var/backups/{service}-$(date +%F).tar.gz "
                          f"&& chown -R {owner} /var/lib/{service} && systemctl start {service}")
    old = wait_for(lambda: query_when_up(old_data), timeout=90)
    assert old and float(old[0]["value"][1]) >= 1, old
    assert wait_for(lambda: silences_of_the_previous_alertmanager() == ["active"], timeout=60), \
        silences_of_the_previous_alertmanager()


def silences_of_the_previous_alertmanager() -> list[str]:
    try:
        return [s["status"]["state"] for s in alertmanager("/api/v2/silences")
                if s["comment"] == "made by the previous Alertmanager before the upgrade"]
    except OSError:  # restarting
        return ["unreachable"]


def query_when_up(expr: str) -> list[dict] | None:
    """The query's result, or None while Prometheus (re)starts."""
    try:
        return query(expr)
    except OSError:
        return None
