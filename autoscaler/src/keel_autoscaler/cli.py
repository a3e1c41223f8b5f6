"""keel-autoscaler: run the service, check a configuration, or talk to the running service."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

from . import config as c
from .actuators import build
from .loop import Autoscaler
from .prom import Prometheus
from .server import serve

DEFAULT_CONFIG = "/etc/keel-autoscaler/config.json"


def cmd_check(args: argparse.Namespace) -> int:
    try:
        c.Settings.from_file(args.config, check_files=not args.no_files)
    except c.ConfigError as exc:
        for p in exc.problems:
            print(f"keel-autoscaler: {args.config}: {p}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        s = c.Settings.from_file(args.config)
    except c.ConfigError as exc:
        for p in exc.problems:
            print(f"keel-autoscaler: {args.config}: {p}", file=sys.stderr)
        return 2
    cfg = s.cfg
    executor, provider, inventory = build(cfg)
    prom = Prometheus(cfg["prometheus"]["url"], cfg["prometheus"]["timeout"])
    scaler = Autoscaler(cfg, s.policy, prom, executor, provider, inventory)
    token = c.read_secret(cfg["token_file"]) if cfg.get("token_file") else None
    scaler.restore()  # a restart's cooldown and back-off are in /metrics from its first answer
    httpd = serve(scaler, cfg["listen"]["address"], int(cfg["listen"]["port"]), token)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        scaler._wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(json.dumps({"event": "start", "mode": scaler.mode, "listen": cfg["listen"],
                      "policy": {"min": s.policy.min_nodes, "max": s.policy.max_nodes,
                                 "metrics": [m.name for m in s.policy.metrics]}}), flush=True)
    try:
        scaler.run(stop)
    finally:
        httpd.shutdown()
    # an action under way is left to its journal: the next start reconciles it
    return 0


def _api(args: argparse.Namespace, method: str, path: str, body: Any = None) -> int:
    try:
        cfg = c.load(args.config, check_files=False)
    except c.ConfigError as exc:
        print(f"keel-autoscaler: {exc}", file=sys.stderr)
        return 2
    token = c.read_secret(cfg["token_file"]) if cfg.get("token_file") else None
    if not token:
        print(f"keel-autoscaler: cannot read the token file {cfg.get('token_file')!r}", file=sys.stderr)
        return 2
    host = cfg["listen"]["address"]
    host = f"[{host}]" if ":" in host else host
    req = urllib.request.Request(f"http://{host}:{cfg['listen']['port']}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the configured local service
            print(json.dumps(json.loads(resp.read()), indent=2))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"keel-autoscaler: HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"keel-autoscaler: the service does not answer: {exc}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keel-autoscaler", description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    # --config is taken before or after the command (keel-autoscaler check-config --config FILE)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the service", parents=[common])
    chk = sub.add_parser("check-config", help="validate a configuration file (exit 2 with what to fix)",
                         parents=[common])
    chk.add_argument("--no-files", action="store_true", help="do not read the token file it names")
    sub.add_parser("status", help="the running service's state and last evaluation", parents=[common])
    fr = sub.add_parser("freeze", help="stop scaling until unfreeze (audited)", parents=[common])
    fr.add_argument("--reason", required=True)
    sub.add_parser("unfreeze", help="resume scaling", parents=[common])
    sub.add_parser("evaluate", help="ask the running service for an evaluation now", parents=[common])
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return cmd_check(args)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "status":
        return _api(args, "GET", "/v1/status")
    if args.command == "freeze":
        return _api(args, "POST", "/v1/freeze", {"reason": args.reason})
    if args.command == "unfreeze":
        return _api(args, "POST", "/v1/unfreeze", {})
    return _api(args, "POST", "/v1/evaluate", {})
