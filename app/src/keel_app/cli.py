"""The ``keel-app`` command: serve (default) or ``check-config``.

Shutdown sequence on the first SIGTERM or SIGINT:
  1. the app turns draining: /readyz answers 503, every other request is still served;
  2. after KEEL_APP_DRAIN_SECONDS uvicorn stops accepting connections and lets in-flight
     requests finish, for at most KEEL_APP_SHUTDOWN_TIMEOUT seconds;
  3. the process exits 0.
A second signal skips what is left of the drain; a third stops without waiting for requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Generator, Sequence

import uvicorn

from keel_app import __version__
from keel_app.app import KeelApp
from keel_app.config import Config, ConfigError, load_config
from keel_app.logs import configure_logging

EXIT_BAD_CONFIG = 2
log = logging.getLogger("keel_app.server")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server with keel's signal handling: drain first, then a graceful stop, then exit 0."""

    def __init__(self, config: uvicorn.Config, app: KeelApp, drain_seconds: float) -> None:
        super().__init__(config)
        self.keel_app = app
        self.drain_seconds = drain_seconds
        self.signals_received = 0
        self._drain_task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Unlike uvicorn's own handling, the signal is not re-raised afterwards: a drained stop exits 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        handled = (signal.SIGTERM, signal.SIGINT)
        for sig in handled:
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            yield
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    def on_signal(self, sig: int) -> None:
        self.signals_received += 1
        name = signal.Signals(sig).name
        if self.signals_received == 1:
            log.info(
                "%s received: draining for %gs, then stopping (in-flight requests get up to %gs)",
                name,
                self.drain_seconds,
                self.config.timeout_graceful_shutdown,
                extra={"signal": name},
            )
            self.keel_app.begin_drain()
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_stop())
        elif self.signals_received == 2:
            log.info("%s received again: stopping now", name, extra={"signal": name})
            if self._drain_task is not None:
                self._drain_task.cancel()
            self.keel_app.begin_drain()
            self.should_exit = True
        else:
            log.warning("%s received a third time: not waiting for in-flight requests", name, extra={"signal": name})
            self.should_exit = True
            self.force_exit = True

    async def _drain_then_stop(self) -> None:
        await asyncio.sleep(self.drain_seconds)
        log.info("drain period over: no new connections, finishing in-flight requests")
        self.should_exit = True


def build_server(config: Config) -> DrainingServer:
    app = KeelApp(config)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        ws="none",
        lifespan="on",
        interface="asgi3",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=config.shutdown_timeout,  # type: ignore[arg-type]
        timeout_keep_alive=5,
        backlog=2048,
    )
    return DrainingServer(uv_config, app, config.drain_seconds)


def _config_or_exit(env: dict[str, str] | None = None) -> Config:
    try:
        return load_config(os.environ if env is None else env)
    except ConfigError as exc:
        print(f"keel-app: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="keel-app",
        description="Serve keel's api or backend service; configured by KEEL_APP_* and OTEL_* variables.",
    )
    parser.add_argument("--version", action="version", version=f"keel-app {__version__}")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "check-config"),
        help="serve (default), or check-config: validate the environment and exit (0 = valid, 2 = not)",
    )
    args = parser.parse_args(argv)

    config = _config_or_exit()
    if args.command == "check-config":
        print(f"keel-app: configuration OK: {config.summary()}")
        return 0

    configure_logging(config.service, config.log_level)
    log.info("configuration: %s", config.summary(), extra={"version": config.version})
    server = build_server(config)
    server.run()
    if server.started:
        log.info("exited cleanly")
        return 0
    return 1  # could not start; uvicorn has logged why (it exits 3 itself when binding or startup fails)
