"""Browser check of the running lab (`scripts/lab.sh check`).

Headless Chromium (Debian's package) opens Prometheus' web UI and HAProxy's
stats page through the ports the lab publishes on 127.0.0.1, saves a screenshot
of each under reports/lab/, and the tests assert on what the rendered pages show,
against what the lab inventory declares: every job and every host listed, every
target up; every app host's servers UP in the backend, the stats page refusing
a visitor without the password.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from html import unescape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
REPORT_DIR = ROOT / "reports" / "lab"
PROMETHEUS = "http://127.0.0.1:9090"
STATS = "http://127.0.0.1:8404/stats"
# Every scrape job Prometheus gets from the lab inventory (roles/prometheus).
EXPECTED_JOBS = {"node", "prometheus", "alertmanager", "blackbox_exporter", "haproxy", "app", "blackbox"}


def _groups() -> dict[str, list[str]]:
    out = subprocess.run([str(ROOT / ".venv/bin/ansible-inventory"), "-i", str(INVENTORY), "--list"],
                         capture_output=True, text=True, check=True, timeout=120, cwd=ROOT).stdout
    data = json.loads(out)

    def hosts(group: str) -> list[str]:
        entry = data.get(group, {})
        found = list(entry.get("hosts", []))
        for child in entry.get("children", []):
            found += hosts(child)
        return sorted(set(found))

    return {group: hosts(group) for group in ("all", "loadbalancers", "app", "monitoring")}


@pytest.fixture(scope="module")
def groups() -> dict[str, list[str]]:
    return _groups()


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed: `scripts/lab.sh check` installs it")
    return path


def _text(html: str) -> str:
    """The visible text of an HTML page, one space between elements."""
    html = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", html)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def render(chromium: str, url: str, name: str, height: int = 1600) -> str:
    """Open url in headless Chromium; save reports/lab/<name>.png; return the rendered DOM."""
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--no-first-run", "--virtual-time-budget=5000", f"--window-size=1400,{height}"]
    png = REPORT_DIR / f"{name}.png"
    png.unlink(missing_ok=True)
    subprocess.run([*common, f"--screenshot={png}", url], capture_output=True, check=True, timeout=120)
    assert png.is_file() and png.stat().st_size > 10_000, f"no screenshot of {url}"
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    (REPORT_DIR / f"{name}.html").write_text(dom)
    return dom


def test_prometheus_ui_lists_every_job_and_host_all_up(chromium, groups):
    dom = render(chromium, f"{PROMETHEUS}/classic/targets", "prometheus-targets", height=3000)
    text = _text(dom)
    assert "Targets" in text, text[:500]
    # One heading per job: "node (4/4 up)".
    jobs = {job: (int(up), int(total)) for job, up, total in re.findall(r"(\w+) \((\d+)/(\d+) up\)", text)}
    assert set(jobs) == EXPECTED_JOBS, jobs
    assert jobs["node"][1] == len(groups["all"]), jobs
    assert all(up == total > 0 for up, total in jobs.values()), jobs
    for host in groups["all"]:
        assert f'instance="{host}"' in text, f"{host} not on the targets page"
    assert not re.search(r"\bDOWN\b", text), "a target is down"


def test_prometheus_ui_shows_the_alert_rules(chromium):
    text = _text(render(chromium, f"{PROMETHEUS}/classic/alerts", "prometheus-alerts"))
    for alert in ("KeelHostDown", "KeelInstanceDown", "KeelHAProxyBackendDown", "KeelAppErrorBudgetBurn",
                  "KeelEndpointProbeFailed"):
        assert alert in text, alert


def _stats_credentials() -> tuple[str, str]:
    lb = _groups()["loadbalancers"][0]
    password = (ROOT / ".credentials" / f"haproxy-stats-{lb}").read_text().strip()
    return "admin", password


def test_stats_page_refuses_a_visitor_without_the_password():
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(STATS, timeout=10)
    assert refused.value.code == 401


def test_haproxy_stats_page_shows_every_app_host_up(chromium, groups):
    user, password = _stats_credentials()
    # Chromium takes the credentials of a top-level navigation from the URL.
    dom = render(chromium, f"http://{user}:{password}@127.0.0.1:8404/stats", "haproxy-stats", height=2400)
    text = _text(dom)
    assert "Statistics Report" in text, text[:300]
    for proxy in ("https", "app", "stats"):
        assert re.search(rf'name="?{proxy}"?', dom) or f">{proxy}<" in dom, proxy
    server_name = re.compile(r"\b((?:{})-\d+)\b".format("|".join(map(re.escape, groups["app"]))))
    servers = server_name.findall(text)
    assert {s.rsplit("-", 1)[0] for s in servers} == set(groups["app"]), servers
    # Each server's row: HAProxy names its class after the state (active_up,
    # active_down, maintain, ...) and writes the state in the Status column.
    rows = {name: cls for cls, name in re.findall(r'<tr class="(\w+)"><td class="ac"><a name="app/([\w-]+)">', dom)
            if server_name.fullmatch(name)}  # not the backend's own summary row
    assert set(rows) == set(servers), (rows, servers)  # every server of the page has a row
    assert all(cls == "active_up" for cls in rows.values()), rows
    assert len(re.findall(r">(?:\d+[smhd])+ UP<", dom)) >= len(rows), "fewer 'UP' status cells than servers"
