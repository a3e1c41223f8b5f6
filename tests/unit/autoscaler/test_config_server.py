"""The configuration checks (what an operator gets told) and the HTTP surface."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from keel_autoscaler import cli
from keel_autoscaler.config import DEFAULTS, _merge, validate
from keel_autoscaler.server import serve
from test_loop import FakeExecutor, FakeProm, FakeProvider, config


def good(tmp_path: Path) -> dict:
    return config(tmp_path)


def test_good_config_passes(tmp_path):
    assert validate(good(tmp_path)) == []


@pytest.mark.parametrize(("change", "message"), [
    ({"policy": {"metrics": [{"name": "rps", "target": 0, "query": "q"}]}}, "target must be a number > 0"),
    ({"policy": {"min_nodes": 5, "max_nodes": 3}}, "must not exceed policy.max_nodes"),
    ({"policy": {"min_nodes": 0}}, "min_nodes must be an integer >= 1"),
    ({"policy": {"scale_down": {"stabilization_window": 7200}}}, "stabilization_window must be 0-3600"),
    ({"policy": {"scale_up": {"policies": [{"type": "nodes", "value": 2, "period": 3600}]}}}, "period must be 1-1800"),
    ({"policy": {"tolerance_up": 1.5}}, "tolerance_up must be 0 <= x < 1"),
    ({"mode": "yes"}, "mode must be one of"),
    ({"executor": {"type": "awx", "url": "https://awx.example"}}, "executor awx needs token_file"),
    ({"executor": {"type": "runner"}}, "executor runner needs project_dir"),
    ({"provider": {"type": "command"}}, "provider command needs argv"),
    ({"prometheus": {"url": "ftp://x"}}, "prometheus.url must be an http(s) URL"),
    ({"evaluation_interval": 0}, "evaluation_interval must be 1-600"),
])
def test_bad_config_says_what_to_fix(tmp_path, change, message):
    cfg = _merge(good(tmp_path), change)
    problems = validate(cfg)
    assert any(message in p for p in problems), problems


def test_check_config_cli(tmp_path, capsys):
    cfg = good(tmp_path)
    (tmp_path / "token").write_text("0123456789abcdef0123")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert cli.main(["--config", str(path), "check-config"]) == 0
    (tmp_path / "token").write_text("short")
    assert cli.main(["--config", str(path), "check-config"]) == 2
    assert "16 characters" in capsys.readouterr().err
    path.write_text(json.dumps(_merge(cfg, {"policy": {"min_nodes": 9}})))
    assert cli.main(["--config", str(path), "check-config", "--no-files"]) == 2
    assert cli.main(["check-config", "--no-files", "--config", str(path)]) == 2  # either place


def test_http_surface(tmp_path):
    from keel_autoscaler.actuators import FileInventory
    from keel_autoscaler.config import policy_from
    from keel_autoscaler.loop import Autoscaler
    cfg = config(tmp_path)
    scaler = Autoscaler(cfg, policy_from(cfg), FakeProm(), FakeExecutor(), FakeProvider([]),
                        FileInventory(cfg["inventory"]), log=lambda line: None)
    token = "t" * 24
    httpd = serve(scaler, "127.0.0.1", 0, token)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def call(method, path, body=None, auth=True):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(base + path, method=method, data=data,  # noqa: S310 - loopback http
                                     headers={"Authorization": f"Bearer {token}"} if auth else {})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert call("GET", "/metrics", auth=False)[0] == 200
        assert "keel_autoscaler_up 1" in call("GET", "/metrics", auth=False)[1]
        assert call("POST", "/v1/alertmanager", {"groupKey": "g"}, auth=False)[0] == 401
        code, body = call("POST", "/v1/alertmanager", {"groupKey": "g", "status": "firing", "alerts": []})
        assert code == 200 and json.loads(body)["duplicate"] is False
        assert json.loads(call("POST", "/v1/alertmanager", {"groupKey": "g", "status": "firing", "alerts": []})[1])[
            "duplicate"] is True
        assert call("POST", "/v1/freeze", {})[0] == 400
        assert call("POST", "/v1/freeze", {"reason": "maintenance"})[0] == 200
        assert scaler.state.frozen_reason == "maintenance"
        assert call("GET", "/v1/status", auth=False)[0] == 401
        assert json.loads(call("GET", "/v1/status")[1])["state"]["frozen_reason"] == "maintenance"
        assert call("POST", "/v1/unfreeze", {})[0] == 200 and scaler.state.frozen_reason is None
        assert call("POST", "/v1/alertmanager", "not an object")[0] == 400
    finally:
        httpd.shutdown()


def test_defaults_match_the_documented_policy():
    pol = DEFAULTS["policy"]
    assert (pol["min_nodes"], pol["max_nodes"], pol["tolerance_up"], pol["tolerance_down"]) == (2, 4, 0.1, 0.1)
    assert pol["scale_down"]["stabilization_window"] == 300 and pol["scale_up"]["stabilization_window"] == 0
    assert pol["delay_after_scale_up"] == 600 and (pol["backoff_initial"], pol["backoff_max"]) == (180, 1800)
    assert DEFAULTS["evaluation_interval"] == 15 and DEFAULTS["mode"] == "dry-run"
