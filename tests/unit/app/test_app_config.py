"""Configuration: defaults, validation messages, and the check-config command."""

from __future__ import annotations

import pytest
from keel_app import __version__
from keel_app.cli import main
from keel_app.config import ConfigError, load_config


def test_defaults_for_backend() -> None:
    config = load_config({"KEEL_APP_SERVICE": "backend"})
    assert config.service == "backend"
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    assert config.instance == "127.0.0.1:8000"
    assert config.version == __version__ == "1.0.0"
    assert config.drain_seconds == 5
    assert config.shutdown_timeout == 20
    assert config.otel_service_name == "keel-backend"
    assert config.otlp_endpoint is None
    assert config.fail_readiness is False


def test_overrides() -> None:
    config = load_config(
        {
            "KEEL_APP_SERVICE": "API",
            "KEEL_APP_HOST": "0.0.0.0",  # noqa: S104 - a value under test, nothing binds here
            "KEEL_APP_PORT": "9000",
            "KEEL_APP_VERSION": "2.0.0-rc1",
            "KEEL_APP_BACKEND_URL": "http://127.0.0.1:9001/",
            "KEEL_APP_BACKEND_TIMEOUT": "0.5",
            "KEEL_APP_FAIL_READINESS": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_SERVICE_NAME": "shop-api",
        }
    )
    assert config.service == "api"
    assert config.instance == "0.0.0.0:9000"
    assert config.version == "2.0.0-rc1"
    assert config.backend_url == "http://127.0.0.1:9001"
    assert config.backend_timeout == 0.5
    assert config.fail_readiness is True
    assert config.otlp_endpoint == "http://127.0.0.1:4318"
    assert config.sampler_ratio == 0.25
    assert config.otel_service_name == "shop-api"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "KEEL_APP_SERVICE"),
        ({"KEEL_APP_SERVICE": "frontend"}, "KEEL_APP_SERVICE"),
        ({"KEEL_APP_SERVICE": "api"}, "KEEL_APP_BACKEND_URL"),
        ({"KEEL_APP_SERVICE": "api", "KEEL_APP_BACKEND_URL": "ftp://x"}, "KEEL_APP_BACKEND_URL"),
        ({"KEEL_APP_SERVICE": "backend", "KEEL_APP_PORT": "http"}, "KEEL_APP_PORT"),
        ({"KEEL_APP_SERVICE": "backend", "KEEL_APP_PORT": "70000"}, "KEEL_APP_PORT"),
        ({"KEEL_APP_SERVICE": "backend", "KEEL_APP_DRAIN_SECONDS": "-1"}, "KEEL_APP_DRAIN_SECONDS"),
        ({"KEEL_APP_SERVICE": "backend", "KEEL_APP_SHUTDOWN_TIMEOUT": "0"}, "KEEL_APP_SHUTDOWN_TIMEOUT"),
        ({"KEEL_APP_SERVICE": "backend", "KEEL_APP_BACKEND_TIMEOUT": "nan"}, "KEEL_APP_BACKEND_TIMEOUT"),
        ({"KEEL_APP_SERVICE": "backend", "KEEL_APP_LOG_LEVEL": "loud"}, "KEEL_APP_LOG_LEVEL"),
        ({"KEEL_APP_SERVICE": "backend", "KEEL_APP_FAIL_READINESS": "yes"}, "KEEL_APP_FAIL_READINESS"),
        ({"KEEL_APP_SERVICE": "backend", "KEEL_APP_TEST_ROUTES": "yes"}, "KEEL_APP_TEST_ROUTES"),
        ({"KEEL_APP_SERVICE": "backend", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"KEEL_APP_SERVICE": "backend", "OTEL_EXPORTER_OTLP_ENDPOINT": "collector"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"KEEL_APP_SERVICE": "backend", "KEEL_APP_VERSION": "1 0"}, "KEEL_APP_VERSION"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env)
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message


def test_all_problems_in_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"KEEL_APP_SERVICE": "x", "KEEL_APP_PORT": "0", "KEEL_APP_LOG_LEVEL": "?"})
    assert len(caught.value.problems) == 3
    assert "\n" not in str(caught.value)


def test_check_config_rejects_bad_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEEL_APP_SERVICE", "backend")
    monkeypatch.setenv("KEEL_APP_PORT", "eighty")
    with pytest.raises(SystemExit) as caught:
        main(["check-config"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("keel-app: invalid configuration: KEEL_APP_PORT must be an integer 1-65535")


def test_check_config_accepts_good_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEEL_APP_SERVICE", "api")
    monkeypatch.setenv("KEEL_APP_BACKEND_URL", "http://127.0.0.1:9001")
    assert main(["check-config"]) == 0
    assert "configuration OK: service=api" in capsys.readouterr().out
