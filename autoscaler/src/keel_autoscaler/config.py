"""The configuration file (JSON, rendered by roles/autoscaler): load, validate, build the Policy.

``validate`` returns every problem at once, each saying what to change; the role runs
``keel-autoscaler check-config`` on the rendered file before it replaces the running one.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .decide import DirectionRules, MetricSpec, Policy, RatePolicy

MODES = ("off", "dry-run", "act")
EXECUTORS = ("runner", "awx")
PROVIDERS = ("spare-pool", "command")
INVENTORIES = ("file", "awx")

DEFAULT_METRIC_QUERY = ('sum by (host) (rate(keel_app_requests_total{job="app",'
                        'route!~"/healthz|/readyz|/metrics"}[1m]))')
DEFAULTS: dict[str, Any] = {
    "mode": "dry-run",
    "listen": {"address": "127.0.0.1", "port": 9180},
    "token_file": "",
    "state_dir": "/var/lib/keel-autoscaler",
    "evaluation_interval": 15,
    "prometheus": {
        "url": "http://127.0.0.1:9090", "timeout": 5, "max_staleness": 120,
        "nodes_query": 'max by (host) (up{job="app"})',
        "ready_query": 'min by (host) (keel_app_ready{job="app"})',
        "busy_query": 'sum by (host) (label_replace(haproxy_server_current_sessions{proxy="app"},'
                      ' "host", "$1", "server", "(.*)-[0-9]+"))',
        # held and not expired (an expired lock stays in the textfile until the next run rewrites it)
        "lock_query": "max by (owner) (keel_lifecycle_lock_held > 0 and on (instance)"
                      " (keel_lifecycle_lock_expires_timestamp_seconds > time()))",
        "node_label": "host",
    },
    "policy": {
        "min_nodes": 2, "max_nodes": 4,
        "metrics": [{"name": "requests_per_node", "target": 0, "query": DEFAULT_METRIC_QUERY}],
        "tolerance_up": 0.1, "tolerance_down": 0.1,
        "scale_up": {"stabilization_window": 0, "select": "max",
                     "policies": [{"type": "nodes", "value": 2, "period": 300},
                                  {"type": "percent", "value": 100, "period": 300}]},
        "scale_down": {"stabilization_window": 300, "select": "min",
                       "policies": [{"type": "nodes", "value": 1, "period": 300}]},
        "delay_after_scale_up": 600, "backoff_initial": 180, "backoff_max": 1800,
        "new_node_grace": 120, "provision_timeout": 900, "drain_timeout": 120,
    },
    "executor": {"type": "runner"},
    "provider": {"type": "spare-pool", "group": "app_spare"},
    "inventory": {"type": "file", "group": "app"},
    "lock": {"owner": "keel-autoscaler"},
}


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("executor", "provider",
                                                                                        "inventory"):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _url(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    u = urlparse(v)
    return u.scheme in ("http", "https") and bool(u.netloc)


def validate(cfg: dict[str, Any]) -> list[str]:
    p: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            p.append(msg)

    need(cfg.get("mode") in MODES, f"mode must be one of {', '.join(MODES)} (got {cfg.get('mode')!r})")
    listen = cfg.get("listen", {})
    try:
        ipaddress.ip_address(listen.get("address", ""))
    except ValueError:
        p.append(f"listen.address must be an IP address (got {listen.get('address')!r})")
    need(isinstance(listen.get("port"), int) and 1 <= listen.get("port", 0) <= 65535,
         f"listen.port must be 1-65535 (got {listen.get('port')!r})")
    ev = cfg.get("evaluation_interval")
    need(_num(ev) and 1 <= ev <= 600, f"evaluation_interval must be 1-600 s (got {ev!r})")
    prom = cfg.get("prometheus", {})
    need(_url(prom.get("url")), f"prometheus.url must be an http(s) URL (got {prom.get('url')!r})")
    need(_num(prom.get("timeout")) and 0 < prom["timeout"] <= 60, "prometheus.timeout must be 0-60 s")
    need(_num(prom.get("max_staleness")) and 0 < prom["max_staleness"] <= 3600,
         "prometheus.max_staleness must be 0-3600 s")
    for q in ("nodes_query", "ready_query", "node_label"):
        need(isinstance(prom.get(q), str) and prom[q].strip() != "", f"prometheus.{q} must be a non-empty string")
    pol = cfg.get("policy", {})
    mn, mx = pol.get("min_nodes"), pol.get("max_nodes")
    need(isinstance(mn, int) and not isinstance(mn, bool) and mn >= 1,
         f"policy.min_nodes must be an integer >= 1 (got {mn!r})")
    need(isinstance(mx, int) and not isinstance(mx, bool) and mx >= 1 and mx <= 1000,
         f"policy.max_nodes must be an integer 1-1000 (got {mx!r})")
    if isinstance(mn, int) and isinstance(mx, int):
        need(mn <= mx, f"policy.min_nodes ({mn}) must not exceed policy.max_nodes ({mx})")
    metrics = pol.get("metrics")
    need(isinstance(metrics, list) and len(metrics) >= 1, "policy.metrics must list at least one metric")
    names = set()
    for i, m in enumerate(metrics if isinstance(metrics, list) else []):
        name = m.get("name") if isinstance(m, dict) else None
        need(isinstance(name, str) and name.isidentifier(), f"policy.metrics[{i}].name must be an identifier")
        need(name not in names, f"policy.metrics[{i}].name {name!r} is used twice")
        names.add(name)
        t = m.get("target") if isinstance(m, dict) else None
        need(_num(t) and t > 0, f"policy.metrics[{i}] ({name}): target must be a number > 0 (got {t!r}); "
             "set it to about 70 % of the per-host capacity scripts/bench.sh measures")
        need(isinstance(m, dict) and isinstance(m.get("query"), str) and m["query"].strip() != "",
             f"policy.metrics[{i}] ({name}): query must be a PromQL expression")
    for key in ("tolerance_up", "tolerance_down"):
        v = pol.get(key)
        need(_num(v) and 0 <= v < 1, f"policy.{key} must be 0 <= x < 1 (got {v!r})")
    for d in ("scale_up", "scale_down"):
        rules = pol.get(d, {})
        w = rules.get("stabilization_window")
        need(_num(w) and 0 <= w <= 3600, f"policy.{d}.stabilization_window must be 0-3600 s (got {w!r})")
        need(rules.get("select") in ("max", "min", "disabled"),
             f"policy.{d}.select must be max, min or disabled (got {rules.get('select')!r})")
        pols = rules.get("policies")
        need(isinstance(pols, list) and len(pols) >= 1, f"policy.{d}.policies must list at least one policy")
        for j, rp in enumerate(pols if isinstance(pols, list) else []):
            where = f"policy.{d}.policies[{j}]"
            if not isinstance(rp, dict):
                p.append(f"{where} must be an object")
                continue
            need(rp.get("type") in ("nodes", "percent"), f"{where}.type must be nodes or percent")
            need(_num(rp.get("value")) and rp["value"] > 0, f"{where}.value must be > 0 (got {rp.get('value')!r})")
            need(_num(rp.get("period")) and 1 <= rp["period"] <= 1800,
                 f"{where}.period must be 1-1800 s (got {rp.get('period')!r})")
    for key, lo, hi in (("delay_after_scale_up", 0, 86400), ("backoff_initial", 1, 86400),
                        ("backoff_max", 1, 86400), ("new_node_grace", 0, 3600),
                        ("provision_timeout", 30, 86400), ("drain_timeout", 1, 3600)):
        v = pol.get(key)
        need(_num(v) and lo <= v <= hi, f"policy.{key} must be {lo}-{hi} s (got {v!r})")
    if _num(pol.get("backoff_initial")) and _num(pol.get("backoff_max")):
        need(pol["backoff_initial"] <= pol["backoff_max"], "policy.backoff_initial must not exceed backoff_max")
    need(isinstance(cfg.get("state_dir"), str) and cfg["state_dir"].startswith("/"),
         f"state_dir must be an absolute path (got {cfg.get('state_dir')!r})")
    acting = cfg.get("mode") == "act"
    ex = cfg.get("executor", {})
    need(ex.get("type") in EXECUTORS, f"executor.type must be one of {', '.join(EXECUTORS)}")
    if ex.get("type") == "runner":
        need(isinstance(ex.get("project_dir"), str) and ex["project_dir"] != "",
             "executor runner needs project_dir (a checkout of keel on this host)")
        need(isinstance(ex.get("inventory"), list) and len(ex["inventory"]) > 0,
             "executor runner needs inventory (a list of inventory paths)")
    elif ex.get("type") == "awx":
        need(_url(ex.get("url")), "executor awx needs url (https://AWX)")
        need(isinstance(ex.get("token_file"), str) and ex["token_file"] != "",
             "executor awx needs token_file (an AWX OAuth2 token with execute on the templates)")
        for t in ("add_template", "remove_template", "forget_template"):
            need(isinstance(ex.get(t), str | int) and str(ex.get(t)) != "", f"executor awx needs {t}")
    pv = cfg.get("provider", {})
    need(pv.get("type") in PROVIDERS, f"provider.type must be one of {', '.join(PROVIDERS)}")
    if pv.get("type") == "spare-pool":
        need(isinstance(pv.get("group"), str) and pv["group"] != "", "provider spare-pool needs group")
    elif pv.get("type") == "command":
        need(isinstance(pv.get("argv"), list) and len(pv["argv"]) > 0 and all(isinstance(a, str) for a in pv["argv"]),
             "provider command needs argv (the program and its first arguments)")
    inv = cfg.get("inventory", {})
    need(inv.get("type") in INVENTORIES, f"inventory.type must be one of {', '.join(INVENTORIES)}")
    if inv.get("type") == "file":
        need(isinstance(inv.get("path"), str) and inv["path"] != "",
             "inventory file needs path (a YAML file beside the inventory)")
    elif inv.get("type") == "awx":
        need(_url(inv.get("url")), "inventory awx needs url")
        need(isinstance(inv.get("inventory_id"), int), "inventory awx needs inventory_id")
        need(isinstance(inv.get("token_file"), str) and inv["token_file"] != "", "inventory awx needs token_file")
    if acting or cfg.get("token_file"):
        need(isinstance(cfg.get("token_file"), str) and cfg["token_file"] != "",
             "token_file is required in mode act (the webhook and API bearer token)")
    return p


def load(path: Path | str, check_files: bool = True) -> dict[str, Any]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the configuration must be a JSON object"])
    cfg = _merge(DEFAULTS, raw)
    problems = validate(cfg)
    if check_files and not problems and cfg.get("token_file"):
        tok = read_secret(cfg["token_file"])
        if tok is None or len(tok) < 16:
            problems.append(f"token_file {cfg['token_file']} must hold a token of 16 characters or more")
    if problems:
        raise ConfigError(problems)
    return cfg


def read_secret(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def policy_from(cfg: dict[str, Any]) -> Policy:
    pol = cfg["policy"]

    def rules(key: str, tol: float) -> DirectionRules:
        d = pol[key]
        return DirectionRules(float(d["stabilization_window"]),
                              tuple(RatePolicy(r["type"], float(r["value"]), float(r["period"]))
                                    for r in d["policies"]), d["select"], float(tol))

    return Policy(
        min_nodes=int(pol["min_nodes"]), max_nodes=int(pol["max_nodes"]),
        metrics=tuple(MetricSpec(m["name"], float(m["target"]), m["query"]) for m in pol["metrics"]),
        up=rules("scale_up", pol["tolerance_up"]), down=rules("scale_down", pol["tolerance_down"]),
        delay_after_scale_up=float(pol["delay_after_scale_up"]),
        backoff_initial=float(pol["backoff_initial"]), backoff_max=float(pol["backoff_max"]),
        new_node_grace=float(pol["new_node_grace"]), provision_timeout=float(pol["provision_timeout"]),
        drain_timeout=float(pol["drain_timeout"]), evaluation_interval=float(cfg["evaluation_interval"]),
    )


@dataclass
class Settings:
    """What the loop needs besides the policy."""
    cfg: dict[str, Any]
    policy: Policy

    @classmethod
    def from_file(cls, path: Path | str, check_files: bool = True) -> Settings:
        cfg = load(path, check_files)
        return cls(cfg, policy_from(cfg))
