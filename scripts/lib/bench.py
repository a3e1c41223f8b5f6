"""Lab benchmark (run through scripts/bench.sh, which installs the tools).

Measures, in one run on the lab:
  ceiling  HAProxy answering a static response itself (TLS, no app)
  lb_app   through HAProxy (TLS) to the app's api instances: /hello
  direct   one api instance without the load balancer (plain HTTP): /hello
Peak throughput: wrk, closed loop, median of N rounds. CPU budget: CPU time each
component (the generator, HAProxy, the app instances, the other lab hosts, and
what no process of those accounts for: the kernel's network path, Docker) spends
per request through the load balancer, and the request rate the machine's CPUs
could carry at that cost. Latency at fixed arrival
rates: tools/loadgen (open loop, corrected for coordinated omission). Profile:
py-spy flame graph of one api instance while wrk loads the load balancer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
CA = ROOT / ".credentials" / "lab-ca" / "ca.crt"
TARGET_RPS = 10_000
FIXED_RATE = 5_000
TARGET_P99_MS = 25.0


def lab_addresses() -> dict[str, str]:
    inv = yaml.safe_load(INVENTORY.read_text())
    out: dict[str, str] = {}

    def walk(node: dict) -> None:
        for name, hostvars in (node.get("hosts") or {}).items():
            out[name] = (hostvars or {}).get("keel_private_ip", "")
        for child in (node.get("children") or {}).values():
            walk(child or {})

    walk(inv["all"])
    return out


def run(cmd: list[str], timeout: float) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout).stdout


def wrk(url: str, seconds: int, connections: int) -> dict:
    out = run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url], timeout=seconds + 60)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


def lb_dropped_logs(container: str = "keel-lab-lb1") -> int:
    """Access log lines HAProxy's current worker dropped because the journal did not take them."""
    info = run(["docker", "exec", container, "sh", "-c", "echo 'show info' | socat stdio /run/haproxy/admin.sock"],
               timeout=30)
    found = re.search(r"^DroppedLogs:\s*(\d+)", info, re.M)
    return int(found.group(1)) if found else 0


def reconfigure_lb(log_normal_requests: bool | None) -> None:
    """Rewrite the load balancer's configuration through the haproxy role (validated,
    reloaded), with or without a log line for every request; None: as the lab
    inventory says."""
    extra = [] if log_normal_requests is None else [
        "-e", json.dumps({"haproxy_log_normal_requests": log_normal_requests})]
    subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(INVENTORY),
                    str(ROOT / "playbooks" / "loadbalancers.yml"), "--tags", "haproxy_config", *extra],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)


def lab_logs_every_request() -> bool:
    """haproxy_log_normal_requests as the lab inventory sets it (role default: true)."""
    found = yaml.safe_load((INVENTORY.parent / "group_vars" / "all" / "haproxy.yml").read_text()) or {}
    return bool(found.get("haproxy_log_normal_requests", True))


def peak_rounds(urls: dict[str, str], rounds: int, seconds: int, connections: int) -> dict[str, dict]:
    """wrk rounds, the targets taken in turn within each round (a drift of the
    machine's speed touches every target alike), with the access log lines
    HAProxy dropped during each."""
    out: dict[str, dict] = {name: {"rounds": []} for name in urls}
    for round_ in range(rounds):
        for name, url in urls.items():
            before = lb_dropped_logs()
            res = wrk(url, seconds, connections)
            res["dropped_logs"] = lb_dropped_logs() - before
            out[name]["rounds"].append(res)
            print(f"[bench] round {round_ + 1} {name}: {res['rps']:.0f} req/s, "
                  f"{res['dropped_logs']} log lines dropped", flush=True)
    for peak in out.values():
        peak["median_rps"] = statistics.median(r["rps"] for r in peak["rounds"])
    return out


def loadgen(binary: str, url: str, rate: int, seconds: int, connections: int, warmup: int) -> dict:
    """One open-loop run: `warmup` seconds at the same rate first (connections and TLS
    sessions opened, left out of the figures), then `seconds` measured."""
    cmd = [binary, "-url", url, "-rate", str(rate), "-duration", str(seconds), "-warmup", str(warmup),
           "-conns", str(connections)]
    if url.startswith("https"):
        cmd += ["-cacert", str(CA)]
    return json.loads(run(cmd, timeout=warmup + seconds + 120))


def slow_seconds(result: dict, limit_ms: float) -> list[dict]:
    """The seconds of a loadgen run whose own p99 is above limit_ms (from its timeline)."""
    return [s for s in result.get("timeline", []) if s["p99_ms"] > limit_ms]


def process_cpu_seconds(stat: str) -> float:
    """utime + stime of one /proc/PID/stat line, in seconds (fields 14 and 15; the
    command name in parentheses may hold spaces, so split after its closing one)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def container_cpu_seconds(container: str) -> float:
    """CPU seconds used so far by the processes of a container that are alive now."""
    total = 0.0
    for line in run(["docker", "top", container, "-eo", "pid"], timeout=30).splitlines()[1:]:
        try:
            total += process_cpu_seconds(Path(f"/proc/{int(line)}/stat").read_text())
        except (OSError, ValueError):
            continue  # gone since docker top listed it
    return total


def machine_busy_seconds(stat: str) -> tuple[float, float]:
    """(busy, total) CPU seconds of all CPUs from /proc/stat's first line."""
    values = [int(v) for v in stat.splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:8]) - idle) / tick, sum(values[:8]) / tick


def cpu_budget(url: str, seconds: int, connections: int, containers: dict[str, list[str]]) -> dict:
    """One wrk run through the load balancer with the CPU time of each component
    measured around it: ms of CPU per request, and the rate all CPUs could carry."""
    def snapshot() -> dict[str, float]:
        snap = {group: sum(container_cpu_seconds(c) for c in names) for group, names in containers.items()}
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        snap["load generator (wrk)"] = usage.ru_utime + usage.ru_stime
        snap["__busy"], snap["__total"] = machine_busy_seconds(Path("/proc/stat").read_text())
        return snap

    before = snapshot()
    res = wrk(url, seconds, connections)
    after = snapshot()
    requests = res["rps"] * seconds
    spent = {k: after[k] - before[k] for k in before}
    busy, total = spent.pop("__busy"), spent.pop("__total")
    spent["not attributed (kernel network path, Docker, the rest of the machine)"] = max(
        0.0, busy - sum(spent.values()))
    per_request_ms = {k: 1000 * v / requests for k, v in spent.items()}
    cpus = os.cpu_count() or 1
    return {"rps": res["rps"], "seconds": seconds, "requests": round(requests),
            "machine_busy_pct": 100 * busy / total, "cpu_ms_per_request": per_request_ms,
            "cpu_ms_per_request_total": sum(per_request_ms.values()),
            "max_rps_at_this_cost": cpus * 1000 / sum(per_request_ms.values())}


def api_pid(container: str, port: int) -> int:
    """Host PID of the api instance on that port inside the container."""
    out = run(["docker", "top", container, "-eo", "pid,args"], timeout=30)
    for line in out.splitlines()[1:]:
        pid = int(line.split()[0])
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"KEEL_APP_SERVICE=api" in env and f"KEEL_APP_PORT={port}".encode() in env:
            return pid
    raise SystemExit(f"no api instance on port {port} in {container}")


def profile(url: str, pid: int, seconds: int, out: Path) -> str:
    """py-spy flame graph of one instance while wrk loads the load balancer."""
    load = threading.Thread(target=wrk, args=(url, seconds + 4, 64), daemon=True)
    load.start()
    time.sleep(2)
    spy = Path(sys.executable).parent / "py-spy"
    subprocess.run([str(spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                    "--nonblocking", "--format", "flamegraph", "--output", str(out)],
                   capture_output=True, text=True, check=True, timeout=seconds + 60)
    load.join()
    return out.name


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))

    def version(cmd: list[str]) -> str:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            return (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"

    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(),
            "haproxy": version(["docker", "exec", "keel-lab-lb1", "haproxy", "-v"]),
            "wrk": version(["wrk", "-v"]), "go": version(["go", "version"]),
            "app_python": version(["docker", "exec", "keel-lab-app1", "/opt/keel-app/current/venv/bin/python",
                                   "--version"])}


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(results["peak"])
    medians = [results["peak"][n]["median_rps"] for n in names]
    bars = left.bar([results["targets"][n]["label"] for n in names], medians, color=["#999", "#2a7", "#27a"])
    left.bar_label(bars, fmt="%.0f")
    left.axhline(TARGET_RPS, color="red", linestyle="--", label=f"target {TARGET_RPS} req/s")
    left.set_ylabel("requests/s (median of rounds, wrk)")
    left.set_title("Peak throughput")
    left.legend()
    left.tick_params(axis="x", labelsize=8)
    sweep = results["sweep"]
    rates = [s["rate_requested"] for s in sweep]
    right.plot(rates, [s["latency_ms"].get("p50", 0) for s in sweep], "o-", label="p50")
    right.plot(rates, [s["latency_ms"].get("p99", 0) for s in sweep], "s-", label="p99")
    right.axhline(TARGET_P99_MS, color="red", linestyle="--", label=f"p99 target {TARGET_P99_MS:g} ms")
    right.set_yscale("log")
    right.set_xlabel("offered rate (requests/s, fixed arrival)")
    right.set_ylabel("latency ms (corrected for coordinated omission)")
    right.set_title("Through HAProxy to the app: latency vs rate")
    right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def report(results: dict, out: Path) -> None:
    m = results["machine"]
    lines = [f"# keel lab benchmark, {results['started']}", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, kernel {m['kernel']}. "
             "Load generators, HAProxy and every app instance share these CPUs.",
             f"HAProxy: {m['haproxy']}. App: keel-app on {m['app_python']}, {results['instances']}.",
             f"Generators: {m['wrk']} (closed loop: latency NOT corrected for coordinated omission); "
             f"tools/loadgen built with {m['go']} (open loop, fixed arrival rate: latency measured from each "
             "request's due time, corrected for coordinated omission).", "",
             "## Peak throughput (wrk, "
             f"{results['params']['wrk_connections']} connections, {results['params']['wrk_seconds']} s x "
             f"{results['params']['rounds']} rounds, median)", "",
             "| target | URL | median req/s | rounds req/s | wrk p50 ms | wrk p99 ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for name, peak in results["peak"].items():
        t = results["targets"][name]
        rounds = peak["rounds"]
        socket_errors = "; ".join(filter(None, (r["socket_errors"] for r in rounds))) or "no socket errors"
        lines.append(f"| {t['label']} | `{t['url']}` | **{peak['median_rps']:.0f}** | "
                     f"{', '.join(format(r['rps'], '.0f') for r in rounds)} | "
                     f"{statistics.median(r['p50_ms'] for r in rounds):.2f} | "
                     f"{statistics.median(r['p99_ms'] for r in rounds):.2f} | "
                     f"{sum(r['non_2xx'] for r in rounds)} non-2xx; {socket_errors} |")
    lab_log, other = results["access_log"], results.get("other_log")

    def log_label(every_request: bool) -> str:
        return "a JSON line per request (role default)" if every_request else "failed requests only"

    lines += ["", f"The lab's HAProxy logged {log_label(lab_log['every_request'])} in every figure above and "
              "below unless a row says otherwise (`haproxy_log_normal_requests` in "
              "inventories/lab/group_vars/all/haproxy.yml)."]
    if other:
        rows = [(lab_log["every_request"], results["peak"]["lb_app"], results["fixed"]["lb_app"]),
                (other["every_request"], other["peak"], other["fixed"])]
        lines += ["", "## What the access log costs, through HAProxy to the app", "",
                  "A JSON line per request to the journal (`haproxy_log_normal_requests: true`), or only the "
                  "requests that went wrong (`false`: HAProxy's `option dontlog-normal`; Prometheus counts every "
                  "request either way). The second row ran after the rest, the load balancer reconfigured "
                  "through the haproxy role and set back afterwards.", "",
                  f"| access log | median req/s (wrk) | rounds req/s | log lines HAProxy dropped (journal too slow) "
                  f"| p99 ms at {FIXED_RATE} req/s (loadgen) |",
                  "|---|---|---|---|---|"]
        for every_request, peak, fixed in rows:
            lines.append(f"| {log_label(every_request)} | **{peak['median_rps']:.0f}** | "
                         f"{', '.join(format(r['rps'], '.0f') for r in peak['rounds'])} | "
                         f"{', '.join(str(r.get('dropped_logs', 0)) for r in peak['rounds'])} | "
                         f"{fixed['latency_ms'].get('p99', 0):.2f} |")
        by_setting = {every_request: peak["median_rps"] for every_request, peak, _ in rows}
        lines.append(f"\nRatio failed-requests-only / every request = **{by_setting[False] / by_setting[True]:.2f}**.")
    r = results["ratios"]
    lines += ["", f"Ratios (same run): through HAProxy / HAProxy static ceiling = **{r['lb_over_ceiling']:.2f}**; "
              f"through HAProxy (all instances) / one instance direct = **{r['lb_over_direct']:.2f}**.", "",
              f"## Fixed arrival rate {FIXED_RATE} req/s ({results['params']['fixed_seconds']} s measured after "
              f"{results['params']['fixed_warmup']} s of warm-up at the same rate, "
              f"{results['params']['loadgen_connections']} keep-alive connections, tools/loadgen)", "",
              f"Seconds over the target: the seconds of the measured window whose own p99 was above "
              f"{TARGET_P99_MS:g} ms (a tail from one stall shows as one or two; from queueing, as most).", "",
              "| target | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | non-2xx "
              "| seconds over the target |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, fx in results["fixed"].items():
        lat = fx["latency_ms"]
        lines.append(f"| {results['targets'][name]['label']} | {fx['rate_achieved']:.0f} | {lat.get('p50', 0):.2f} | "
                     f"{lat.get('p90', 0):.2f} | **{lat.get('p99', 0):.2f}** | {lat.get('p999', 0):.2f} | "
                     f"{lat.get('max', 0):.2f} | {fx['errors']} | {fx['non_2xx']} | "
                     f"{len(slow_seconds(fx, TARGET_P99_MS))} of {len(fx.get('timeline', []))} |")
    lines += ["", "## Latency against offered rate, through HAProxy to the app (tools/loadgen)", "",
              "| offered req/s | achieved | p50 ms | p99 ms | errors |", "|---|---|---|---|---|"]
    for s in results["sweep"]:
        lines.append(f"| {s['rate_requested']:.0f} | {s['rate_achieved']:.0f} | {s['latency_ms'].get('p50', 0):.2f} | "
                     f"{s['latency_ms'].get('p99', 0):.2f} | {s['errors']} |")
    budget = results.get("cpu_budget")
    if budget:
        lines += ["", "## CPU budget per request, through HAProxy to the app", "",
                  f"One more wrk run ({budget['seconds']} s, {budget['rps']:.0f} req/s, {budget['requests']} "
                  f"requests; the machine's CPUs {budget['machine_busy_pct']:.0f} % busy): CPU time (user + system, "
                  "from /proc) each component spent, per request.", "",
                  "| component | CPU ms per request |", "|---|---|"]
        lines += [f"| {name} | {ms:.3f} |" for name, ms in budget["cpu_ms_per_request"].items()]
        lines += [f"| **total** | **{budget['cpu_ms_per_request_total']:.3f}** |", "",
                  f"At this cost the machine's {results['machine']['cpus']} CPUs carry at most "
                  f"**{budget['max_rps_at_this_cost']:.0f} req/s** through the load balancer "
                  f"({TARGET_RPS} req/s needs at most {results['machine']['cpus'] * 1000 / TARGET_RPS:.3f} ms "
                  "per request, generator included)."]
    verdict = results["verdict"]
    lines += ["", "![throughput and latency](throughput.png)", "",
              "## Targets", "",
              f"- >= {TARGET_RPS} req/s through the load balancer: {verdict['rps']} "
              f"(median {results['peak']['lb_app']['median_rps']:.0f}, {log_label(lab_log['every_request'])})"
              + (f"; with {log_label(other['every_request'])}: "
                 f"{'met' if other['peak']['median_rps'] >= TARGET_RPS else 'NOT met'} "
                 f"(median {other['peak']['median_rps']:.0f})" if other else ""),
              f"- p99 < {TARGET_P99_MS:g} ms at a fixed {FIXED_RATE} req/s through the load balancer: {verdict['p99']} "
              f"(p99 {results['fixed']['lb_app']['latency_ms'].get('p99', 0):.2f} ms, "
              f"{log_label(lab_log['every_request'])})"
              + (f"; with {log_label(other['every_request'])}: p99 "
                 f"{other['fixed']['latency_ms'].get('p99', 0):.2f} ms" if other else ""), "",
              "## CPU profile", "",
              f"py-spy flame graph of `{results['profile']['instance']}` (host PID {results['profile']['pid']}) "
              f"sampled at 200 Hz for {results['profile']['seconds']} s while wrk loaded the load balancer: "
              f"[{results['profile']['file']}]({results['profile']['file']}).", ""]
    out.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loadgen", required=True)
    parser.add_argument("--quick", action="store_true", help="short rounds (a smoke run, not a measurement)")
    args = parser.parse_args()
    params = {"wrk_seconds": 5 if args.quick else 15, "rounds": 1 if args.quick else 3, "wrk_connections": 64,
              "fixed_seconds": 5 if args.quick else 20, "sweep_seconds": 3 if args.quick else 10,
              "fixed_warmup": 2 if args.quick else 5, "sweep_warmup": 1 if args.quick else 2,
              "loadgen_connections": 256, "profile_seconds": 5 if args.quick else 15}
    hosts = lab_addresses()
    lb, app1 = hosts["lb1"], hosts["app1"]
    targets = {
        "ceiling": {"label": "HAProxy static (ceiling)", "url": f"https://{lb}/__keel/static"},
        "lb_app": {"label": "through HAProxy to the app", "url": f"https://{lb}/hello"},
        "direct": {"label": "one app instance, no LB", "url": f"http://{app1}:8000/hello"},
    }
    started = datetime.now(UTC)
    out = ROOT / "reports" / "bench" / started.strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True)
    app_hosts = [h for h in hosts if h.startswith("app")]
    instances = len(run(["docker", "exec", "keel-lab-app1", "bash", "-c",
                         "ls /etc/keel-app/api-*.env"], timeout=30).split())
    results: dict = {"started": started.isoformat(timespec="seconds"), "params": params, "targets": targets,
                     "machine": machine(),
                     "instances": f"{len(app_hosts)} app hosts x {instances} api instances behind HAProxy"}
    print(f"[bench] report directory {out}", flush=True)
    for t in targets.values():  # warm up, and fail early when a target does not answer 2xx
        w = wrk(t["url"], 2, 16)
        if w["non_2xx"] or w["rps"] == 0:
            raise SystemExit(f"{t['url']} does not answer 2xx ({w}); is the lab up to date (scripts/lab.sh up)?")
    lab_every = lab_logs_every_request()
    results["access_log"] = {"every_request": lab_every}
    peak = peak_rounds({name: t["url"] for name, t in targets.items()}, params["rounds"], params["wrk_seconds"],
                       params["wrk_connections"])
    results["peak"] = peak
    results["ratios"] = {"lb_over_ceiling": peak["lb_app"]["median_rps"] / peak["ceiling"]["median_rps"],
                         "lb_over_direct": peak["lb_app"]["median_rps"] / peak["direct"]["median_rps"]}
    results["fixed"] = {}
    for name, t in targets.items():
        res = loadgen(args.loadgen, t["url"], FIXED_RATE, params["fixed_seconds"], params["loadgen_connections"],
                      params["fixed_warmup"])
        results["fixed"][name] = res
        print(f"[bench] fixed {FIXED_RATE}/s {name}: p99 {res['latency_ms'].get('p99')} ms, "
              f"{len(slow_seconds(res, TARGET_P99_MS))} seconds over {TARGET_P99_MS:g} ms", flush=True)
    results["sweep"] = []
    for rate in (1000, 2500, 5000, 7500, 10000, 12500):
        res = loadgen(args.loadgen, targets["lb_app"]["url"], rate, params["sweep_seconds"],
                      params["loadgen_connections"], params["sweep_warmup"])
        results["sweep"].append(res)
        print(f"[bench] sweep {rate}/s: achieved {res['rate_achieved']:.0f}, p99 {res['latency_ms'].get('p99')} ms",
              flush=True)
    # The same path with the other access log setting (haproxy_log_normal_requests),
    # configured through the haproxy role and set back as the inventory says.
    print(f"[bench] load balancer: access log of {'failed requests only' if lab_every else 'every request'} "
          "(haproxy role, --tags haproxy_config)", flush=True)
    reconfigure_lb(log_normal_requests=not lab_every)
    try:
        other = {"every_request": not lab_every,
                 "peak": peak_rounds({"lb_app, other access log setting": targets["lb_app"]["url"]},
                                     params["rounds"], params["wrk_seconds"], params["wrk_connections"]
                                     )["lb_app, other access log setting"],
                 "fixed": loadgen(args.loadgen, targets["lb_app"]["url"], FIXED_RATE, params["fixed_seconds"],
                                  params["loadgen_connections"], params["fixed_warmup"])}
        results["other_log"] = other
        print(f"[bench] fixed {FIXED_RATE}/s lb_app, other access log setting: "
              f"p99 {other['fixed']['latency_ms'].get('p99')} ms", flush=True)
    finally:
        print("[bench] load balancer: access log as the inventory says again", flush=True)
        reconfigure_lb(log_normal_requests=None)
    containers = {"HAProxy (lb hosts)": [f"keel-lab-{h}" for h in hosts if h.startswith("lb")],
                  "app instances (api + backend)": [f"keel-lab-{h}" for h in app_hosts],
                  "other lab hosts (monitoring)": [f"keel-lab-{h}" for h in hosts
                                                   if not h.startswith(("lb", "app"))]}
    results["cpu_budget"] = cpu_budget(targets["lb_app"]["url"], params["wrk_seconds"], params["wrk_connections"],
                                       containers)
    print(f"[bench] CPU per request through the LB: {results['cpu_budget']['cpu_ms_per_request_total']:.3f} ms "
          f"-> at most {results['cpu_budget']['max_rps_at_this_cost']:.0f} req/s on this machine", flush=True)
    pid = api_pid("keel-lab-app1", 8000)
    results["profile"] = {"instance": "app1 keel-app@api-8000", "pid": pid, "seconds": params["profile_seconds"],
                          "file": profile(targets["lb_app"]["url"], pid, params["profile_seconds"],
                                          out / "profile-api.svg")}
    p99 = results["fixed"]["lb_app"]["latency_ms"].get("p99", float("inf"))
    results["verdict"] = {
        "rps": "met" if peak["lb_app"]["median_rps"] >= TARGET_RPS else "NOT met",
        "p99": "met" if p99 < TARGET_P99_MS and not results["fixed"]["lb_app"]["errors"] else "NOT met"}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "throughput.png")
    report(results, out / "report.md")
    print((out / "report.md").read_text())
    print(f"[bench] wrote {out}/report.md, results.json, throughput.png, profile-api.svg", flush=True)


if __name__ == "__main__":
    main()
