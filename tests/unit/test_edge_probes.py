"""The edge's policy probes (security review L7): the blackbox_exporter role's edge_* modules,
rendered from the role, in the test mirror's real blackbox_exporter, against the haproxy role's
public frontend in a real HAProxy (test_haproxy_edge's fixtures).

With the role's defaults every probe succeeds; undo one part of the edge's policy (internal
paths forwarded, HSTS off, no redirect) and the probe that watches it fails, which is what
KeelEdgePolicyProbeFailed (tests/promtool) turns into an alert.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_haproxy_edge import HAPROXY, free_port, render_template, start

CACHE = Path(os.environ.get("KEEL_CACHE") or Path.home() / ".cache" / "keel")
MIRROR = CACHE / "test-mirror" / "prometheus" / "blackbox_exporter" / "releases" / "download"

pytestmark = pytest.mark.skipif(not Path(HAPROXY).exists(), reason="haproxy is not installed")


def newest_archive() -> Path:
    found = sorted(MIRROR.glob("v*/blackbox_exporter-*.linux-amd64.tar.gz"),
                   key=lambda p: tuple(int(x) for x in p.parent.name[1:].split(".")))
    assert found, f"no blackbox_exporter archive in {MIRROR}: run scripts/build_test_mirror.py (scripts/setup.sh does)"
    return found[-1]


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    yield from start(tmp_path_factory.mktemp("edge"))


@pytest.fixture(scope="module")
def blackbox(tmp_path_factory, edge):
    """blackbox_exporter with the role's modules; its CA is the edge's certificate."""
    work = tmp_path_factory.mktemp("blackbox")
    with tarfile.open(newest_archive()) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/blackbox_exporter"))
        member.name = "blackbox_exporter"
        tar.extract(member, work, filter="data")
    ca = Path(edge["cert"])
    config = render_template(work, "etc/blackbox_exporter/blackbox.yml.j2", work / "blackbox.yml",
                             {"blackbox_exporter_ca_certificate": ca.read_text(),
                              "__blackbox_exporter_ca_file": str(ca)}, role="blackbox_exporter")
    modules = yaml.safe_load(config.read_text())["modules"]
    assert {"edge_https_policy", "edge_internal_hidden", "edge_http_redirect"} <= modules.keys()
    port = free_port()
    proc = subprocess.Popen([str(work / "blackbox_exporter"), f"--config.file={config}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/-/healthy", timeout=2).read()  # noqa: S310 (http to loopback)
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("blackbox_exporter did not start: " + proc.stderr.read().decode()[-2000:])
    yield base
    proc.terminate()
    proc.wait(10)


def probe(blackbox: str, module: str, target: str) -> dict[str, float]:
    query = urllib.parse.urlencode({"module": module, "target": target, "debug": "false"})
    text = urllib.request.urlopen(f"{blackbox}/probe?{query}", timeout=15).read().decode()  # noqa: S310
    found = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            found[series.split("{")[0]] = float(value)
    return found


def urls(ports: dict) -> dict[str, str]:
    return {"edge_https_policy": f"https://127.0.0.1:{ports['haproxy_https_port']}/",
            "edge_internal_hidden": f"https://127.0.0.1:{ports['haproxy_https_port']}/metrics",
            "edge_http_redirect": f"http://127.0.0.1:{ports['haproxy_http_port']}/"}


@pytest.mark.parametrize("module", ["edge_https_policy", "edge_internal_hidden", "edge_http_redirect"])
def test_the_roles_edge_passes_each_policy_probe(blackbox, edge, module):
    result = probe(blackbox, module, urls(edge)[module])
    assert result["probe_success"] == 1, result
    if module == "edge_https_policy":
        assert result["probe_ssl_earliest_cert_expiry"] > time.time()


@pytest.mark.parametrize(("overrides", "module"), [
    ({"haproxy_internal_paths": []}, "edge_internal_hidden"),  # /metrics forwarded to the app
    ({"haproxy_hsts_max_age": 0}, "edge_https_policy"),  # HSTS switched off
])
def test_an_edge_that_undoes_part_of_the_policy_fails_the_probe_that_watches_it(blackbox, edge, tmp_path, overrides,
                                                                                 module):
    changed = start(tmp_path, Path(edge["cert"]).parent, **overrides)  # the certificate the exporter trusts
    ports = next(changed)
    try:
        result = probe(blackbox, module, urls(ports)[module])
        assert result["probe_success"] == 0, result
        others = [m for m in urls(ports) if m != module]
        assert all(probe(blackbox, m, urls(ports)[m])["probe_success"] == 1 for m in others)
    finally:
        next(changed, None)


def test_plain_http_that_does_not_redirect_fails(blackbox, edge):
    """The app's own port answers plain HTTP 200 with no redirect: what an edge without the
    redirect would do."""
    assert probe(blackbox, "edge_http_redirect", f"http://127.0.0.1:{edge['backend']}/")["probe_success"] == 0
