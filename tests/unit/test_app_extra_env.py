"""app_extra_env (security review M5): common.env is read by systemd and, for the readiness gate,
sourced by bash as root. A secret with `$(...)`, a backtick, a quote or a backslash must reach
the app unchanged and run nothing; a key that is not a name, or a value with a line break, is
refused by the role's preflight before anything changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from keel_test_helpers import local_play

ROOT = Path(__file__).resolve().parents[2]
NASTY = {
    "DB_PASSWORD": 'p$(touch CANARY)a`touch CANARY`s"s\\w\'o$HOME rd;touch CANARY',
    "PLAIN": "postgresql://keel:s3cret@db.internal/keel",
    "SPACES": "  two  spaces  ",
    "EMPTY": "",
}


def render(tmp_path: Path, extra_env: dict) -> Path:
    dest = tmp_path / "common.env"
    res = local_play(tmp_path, [{"ansible.builtin.template": {
        "src": str(ROOT / "roles/app/templates/etc/keel-app/common.env.j2"), "dest": str(dest), "mode": "0600"}}],
        {"ansible_managed": "test", "__app_version": "1.0.0", "app_drain_seconds": 1, "app_shutdown_timeout": 5,
         "app_log_level": "info", "app_trace_sample_ratio": 1, "app_otlp_endpoint": "", "app_extra_env": extra_env})
    assert res.returncode == 0, res.stdout[-2000:]
    return dest


def test_values_reach_bash_unchanged_and_run_nothing(tmp_path):
    env_file = render(tmp_path, NASTY)
    script = "set -a; . ./common.env; set +a; " + "; ".join(f'printf "%s\\0" "${k}"' for k in NASTY)
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, timeout=30, check=True).stdout
    assert out.decode().split("\0")[:-1] == list(NASTY.values())
    assert not (tmp_path / "CANARY").exists(), "a value ran a command"
    assert "touch CANARY" in env_file.read_text()  # written, escaped, not dropped


def systemd_env_parse(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile rules for KEY="..." lines (double quotes: \\ escapes \\ " ` $)."""
    result = {}
    for line in text.splitlines():
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, raw = line.split("=", 1)
        if raw.startswith('"') and raw.endswith('"'):
            value, i, body = "", 0, raw[1:-1]
            while i < len(body):
                if body[i] == "\\" and i + 1 < len(body):
                    nxt = body[i + 1]
                    value += nxt if nxt in '"\\`$' else "\\" + nxt
                    i += 2
                else:
                    value += body[i]
                    i += 1
            result[key] = value
        else:
            result[key] = raw.strip()
    return result


def test_systemd_reads_the_same_values(tmp_path):
    parsed = systemd_env_parse(render(tmp_path, NASTY).read_text())
    assert {k: parsed[k] for k in NASTY} == NASTY


@pytest.mark.parametrize(("extra_env", "says"), [
    ({"BAD KEY": "x"}, "BAD KEY"),
    ({"X;touch /tmp/owned": "x"}, "X;touch /tmp/owned"),
    ({"1ST": "x"}, "1ST"),
    ({"MULTI": "line one\nline two"}, "MULTI"),
    ({"CR": "a\rb"}, "CR"),
])
def test_preflight_refuses_names_and_line_breaks(tmp_path, extra_env, says):
    res = local_play(tmp_path, [{"ansible.builtin.include_role": {"name": "app", "tasks_from": "preflight"}}],
              {"app_extra_env": extra_env, "app_release_version": "1.0.0", "app_release_file": "/tmp/x.tar.gz",
               "app_release_sha256": "0" * 64}, facts=True)
    out = " ".join(res.stdout.split())
    assert res.returncode != 0 and "app_extra_env must map variable names" in out, out[-2000:]
    assert says in out
    assert "line two" not in out  # values are not shown


def test_preflight_accepts_secrets_with_any_other_character(tmp_path):
    res = local_play(tmp_path, [{"ansible.builtin.include_role": {"name": "app", "tasks_from": "preflight"}}],
              {"app_extra_env": NASTY, "app_release_version": "1.0.0", "app_release_file": "/tmp/x.tar.gz",
               "app_release_sha256": "0" * 64}, facts=True)
    assert "app_extra_env must map" not in res.stdout, res.stdout[-2000:]
