"""Configuration, read only from environment variables and validated up front.

Every problem found is collected, so one run of ``keel-app check-config`` names
all of them in a single line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from keel_app import __version__

SERVICES = ("api", "backend")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_PORT = 8000


class ConfigError(ValueError):
    """The environment does not describe a valid configuration.

    ``str(error)`` is a single line that says what to fix.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True, slots=True)
class Config:
    service: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    instance: str = ""
    version: str = __version__
    backend_url: str | None = None
    backend_timeout: float = 2.0
    drain_seconds: float = 5.0
    shutdown_timeout: float = 20.0
    log_level: str = "info"
    fail_readiness: bool = False
    test_routes: bool = False
    otlp_endpoint: str | None = None
    sampler_ratio: float = 1.0
    otel_service_name: str = ""

    def __post_init__(self) -> None:
        if not self.instance:
            object.__setattr__(self, "instance", _host_port(self.host, self.port))
        if not self.otel_service_name:
            object.__setattr__(self, "otel_service_name", f"keel-{self.service}")

    def summary(self) -> str:
        parts = [
            f"service={self.service}",
            f"listen={self.host}:{self.port}",
            f"instance={self.instance}",
            f"version={self.version}",
        ]
        if self.backend_url:
            parts.append(f"backend={self.backend_url}")
        parts.append(f"otlp={self.otlp_endpoint or 'off'}")
        parts.append(f"sampler_ratio={self.sampler_ratio:g}")
        return " ".join(parts)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    problems: list[str],
    *,
    minimum: float,
    maximum: float,
    allow_minimum: bool = True,
) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    low_ok = value >= minimum if allow_minimum else value > minimum
    if math.isnan(value) or not low_ok or value > maximum:
        bound = ">=" if allow_minimum else ">"
        problems.append(f"{name} must be a number of seconds {bound} {minimum:g} and <= {maximum:g} (got {raw!r})")
        return default
    return value


def _http_url(raw: str) -> bool:
    try:
        parts = urlsplit(raw)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok


def load_config(env: Mapping[str, str]) -> Config:
    """Build a :class:`Config` from ``env`` or raise :class:`ConfigError`."""
    problems: list[str] = []

    service = (_get(env, "KEEL_APP_SERVICE") or "").lower()
    if service not in SERVICES:
        problems.append(f"KEEL_APP_SERVICE must be 'api' or 'backend' (got {env.get('KEEL_APP_SERVICE', '')!r})")

    host = _get(env, "KEEL_APP_HOST") or "127.0.0.1"
    if any(c.isspace() for c in host) or "/" in host:
        problems.append(f"KEEL_APP_HOST must be an IP address or host name (got {host!r})")

    port = DEFAULT_PORT
    raw_port = _get(env, "KEEL_APP_PORT")
    if raw_port is not None:
        if raw_port.isdigit() and 1 <= int(raw_port) <= 65535:
            port = int(raw_port)
        else:
            problems.append(f"KEEL_APP_PORT must be an integer 1-65535 (got {raw_port!r})")

    instance = _get(env, "KEEL_APP_INSTANCE") or _host_port(host, port)
    version = _get(env, "KEEL_APP_VERSION") or __version__
    if len(version) > 64 or any(c.isspace() or not c.isprintable() for c in version):
        problems.append(f"KEEL_APP_VERSION must be at most 64 printable characters without spaces (got {version!r})")

    backend_url = _get(env, "KEEL_APP_BACKEND_URL")
    if backend_url is not None:
        backend_url = backend_url.rstrip("/")
        if not _http_url(backend_url):
            problems.append(
                f"KEEL_APP_BACKEND_URL must be an http(s) URL such as http://127.0.0.1:9001 (got {backend_url!r})"
            )
    elif service == "api":
        problems.append("KEEL_APP_BACKEND_URL is required when KEEL_APP_SERVICE=api (e.g. http://127.0.0.1:9001)")

    backend_timeout = _number(
        env, "KEEL_APP_BACKEND_TIMEOUT", 2.0, problems, minimum=0, maximum=60, allow_minimum=False
    )
    drain_seconds = _number(env, "KEEL_APP_DRAIN_SECONDS", 5.0, problems, minimum=0, maximum=300)
    shutdown_timeout = _number(
        env, "KEEL_APP_SHUTDOWN_TIMEOUT", 20.0, problems, minimum=0, maximum=600, allow_minimum=False
    )

    log_level = (_get(env, "KEEL_APP_LOG_LEVEL") or "info").lower()
    if log_level not in LOG_LEVELS:
        problems.append(f"KEEL_APP_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (got {log_level!r})")

    raw_fail = _get(env, "KEEL_APP_FAIL_READINESS") or "0"
    if raw_fail not in ("0", "1"):
        problems.append(f"KEEL_APP_FAIL_READINESS must be '0' or '1' (got {raw_fail!r})")

    # /slow holds a connection for up to 5 s per request at no cost to the caller: only for
    # tests that need a request in flight (security review H4), never in production.
    raw_test_routes = _get(env, "KEEL_APP_TEST_ROUTES") or "0"
    if raw_test_routes not in ("0", "1"):
        problems.append(f"KEEL_APP_TEST_ROUTES must be '0' or '1' (got {raw_test_routes!r})")

    otlp_endpoint = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if otlp_endpoint is not None:
        otlp_endpoint = otlp_endpoint.rstrip("/")
        if not _http_url(otlp_endpoint):
            problems.append(
                "OTEL_EXPORTER_OTLP_ENDPOINT must be an http(s) URL of an OTLP/HTTP receiver "
                f"such as http://127.0.0.1:4318 (got {otlp_endpoint!r})"
            )

    sampler_ratio = 1.0
    raw_ratio = _get(env, "OTEL_TRACES_SAMPLER_ARG")
    if raw_ratio is not None:
        try:
            sampler_ratio = float(raw_ratio)
        except ValueError:
            sampler_ratio = math.nan
        if not 0.0 <= sampler_ratio <= 1.0:  # also rejects NaN
            problems.append(f"OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1 (got {raw_ratio!r})")
            sampler_ratio = 1.0

    otel_service_name = _get(env, "OTEL_SERVICE_NAME") or (f"keel-{service}" if service else "")

    if problems:
        raise ConfigError(problems)
    return Config(
        service=service,
        host=host,
        port=port,
        instance=instance,
        version=version,
        backend_url=backend_url,
        backend_timeout=backend_timeout,
        drain_seconds=drain_seconds,
        shutdown_timeout=shutdown_timeout,
        log_level=log_level,
        fail_readiness=raw_fail == "1",
        test_routes=raw_test_routes == "1",
        otlp_endpoint=otlp_endpoint,
        sampler_ratio=sampler_ratio,
        otel_service_name=otel_service_name,
    )
