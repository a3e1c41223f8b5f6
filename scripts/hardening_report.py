#!/usr/bin/env python3
"""Write keel's hardening report from what the hardening_vm scenario collected.

    scripts/hardening_report.py DIR [--out reports/hardening-report.md]

DIR holds (written by molecule/hardening_vm):
- lynis-before.dat, lynis-after.dat: Lynis report files of vm1 before any keel role
  ran and after the hardening layer and a reboot (only with KEEL_HARDENING_REPORT=1,
  see scripts/hardening-report.sh); lynis-after.log (optional): Lynis' log of the
  after run, from which the report lists the tests that did not get all their points;
- ssh-audit.txt: ssh-audit against vm1, policy "Hardened Debian 12 (version 2)";
- ports.json: listening sockets of each VM and whether the lab host (on the VM's
  private network, not an admin network) could open a TCP connection to each;
- exposure-<host>.json: what the firewall role declares each host accepts.

Writes DIR/figures.json and the Markdown report; exit status 0 unless an input is
missing. Standard library only.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path

TARGET_INDEX = 90


def read_lynis(path: Path) -> dict:
    data: dict = {"warnings": [], "suggestions": []}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "warning[]":
            data["warnings"].append(value.rstrip("|").split("|"))
        elif key == "suggestion[]":
            data["suggestions"].append(value.rstrip("|").split("|"))
        elif key in ("hardening_index", "lynis_version", "tests_executed", "os_fullname", "report_datetime_start"):
            data[key] = value
    if "hardening_index" not in data:
        raise ValueError(f"{path}: no hardening_index (not a Lynis report file?)")
    data["hardening_index"] = int(data["hardening_index"])
    return data


def lynis_points_lost(path: Path) -> list[tuple[str, str, int, int]]:
    """(test ID, description, points got, points possible) of every test of a Lynis
    log that got fewer hardening points than it could, most points lost first."""
    import re

    test, lost = ("", ""), []
    for line in path.read_text(errors="replace").splitlines():
        started = re.search(r"Performing test ID (\S+) \((.*)\)$", line)
        if started:
            test = (started.group(1), started.group(2))
            continue
        partial = re.search(r"Hardening: assigned partial number of hardening points \((\d+) of (\d+)\)", line)
        if partial and int(partial.group(1)) < int(partial.group(2)):
            lost.append((*test, int(partial.group(1)), int(partial.group(2))))
    return sorted(lost, key=lambda t: (t[2] - t[3], t[0]))


def allowed(source: str, declared: list[dict], proto: str, port: int) -> bool:
    address = ipaddress.ip_address(source)
    for item in declared:
        if item["proto"] != proto or int(item["port"]) != port:
            continue
        for net in item["sources"]:
            network = ipaddress.ip_network(net, strict=False)
            if network.version == address.version and address in network:
                return True
    return False


def exposure(ports: dict, declared: dict[str, list[dict]]) -> tuple[list[dict], list[str]]:
    rows, unexpected = [], []
    for host, sockets in sorted(ports.items()):
        for sock in sockets:
            reach = sock.get("reachable_from", {})
            reached_by = [who for who, ok in reach.items() if ok]
            for who in reached_by:
                source = who.split()[-1]
                if not allowed(source, declared.get(host, []), sock["proto"], sock["port"]):
                    unexpected.append(f"{host} {sock['proto']}/{sock['port']} reached from {who}")
            decl = [", ".join(i["sources"]) for i in declared.get(host, [])
                    if i["proto"] == sock["proto"] and int(i["port"]) == sock["port"]]
            rows.append({"host": host, "socket": f"{sock['proto']} {sock['address']}:{sock['port']}",
                         "declared": "; ".join(decl) or "nobody (not opened)",
                         "probed": ", ".join(f"{who}: {'open' if ok else 'dropped'}" for who, ok in reach.items())
                         or "not probed (UDP)"})
    return rows, unexpected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/hardening-report.md"))
    args = parser.parse_args()
    d: Path = args.dir
    try:
        lynis_run = (d / "lynis-after.dat").exists()
        before = read_lynis(d / "lynis-before.dat") if lynis_run else None
        after = read_lynis(d / "lynis-after.dat") if lynis_run else None
        ssh_audit = (d / "ssh-audit.txt").read_text()
        ports = json.loads((d / "ports.json").read_text())
        declared = {p.stem.removeprefix("exposure-"): json.loads(p.read_text()) for p in d.glob("exposure-*.json")}
    except (OSError, ValueError) as exc:
        sys.exit(f"hardening report: {exc}")
    rows, unexpected = exposure(ports, declared)
    ssh_passed = "Passed" in ssh_audit and "Failed" not in ssh_audit
    figures = {
        "lynis_before": before["hardening_index"] if before else None,
        "lynis_after": after["hardening_index"] if after else None,
        "lynis_warnings_after": len(after["warnings"]) if after else None,
        "lynis_suggestions_after": len(after["suggestions"]) if after else None,
        "ssh_audit_passed": ssh_passed, "unexpected_exposure": unexpected,
    }
    (d / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")

    out = [
        "# Hardening report",
        "",
        "Written by `scripts/hardening_report.py` from what `scripts/test.sh --scenario hardening_vm` "
        "collected on a Debian 12 qemu VM (vm1: load balancer and monitoring host) after `common`, "
        "`ssh_hardening`, `firewall` and `os_hardening` and a reboot.",
        "",
        "| figure | before | after | target |",
        "|---|---|---|---|",
    ]
    if before and after:
        out += [
            f"| Lynis hardening index (vm1) | {before['hardening_index']} | {after['hardening_index']} "
            f"| >= {TARGET_INDEX} {'(met)' if after['hardening_index'] >= TARGET_INDEX else '(not met)'} |",
            f"| Lynis warnings | {len(before['warnings'])} | {len(after['warnings'])} | 0 the roles could fix |",
            f"| Lynis suggestions | {len(before['suggestions'])} | {len(after['suggestions'])} | |",
        ]
    else:
        out += [f"| Lynis hardening index (vm1) | not run | not run | >= {TARGET_INDEX} |"]
    out += [
        f"| ssh-audit, policy \"Hardened Debian 12 (version 2)\" | | {'passed' if ssh_passed else 'FAILED'} "
        "| no fail, no warn |",
        f"| ports reachable beyond what the inventory declares | | {len(unexpected)} | 0 |",
        "",
    ]
    if after:
        out += [
            f"Lynis {after.get('lynis_version', '?')}, {after.get('tests_executed', '').count('|')} tests. "
            "\"Before\" is the VM image (a minimal Debian 12 cloud image with the packages the roles install, "
            "see `images/vm/packages.txt`), before any keel role ran.",
            "", "## Lynis warnings after hardening", "",
        ]
        out += [f"- `{w[0]}` {w[1]}" for w in after["warnings"]] or ["none"]
        out += ["", "## Lynis suggestions after hardening", ""]
        out += [f"- `{s[0]}` {s[1]}" + (f" ({s[2]})" if len(s) > 2 and s[2] not in ("", "-") else "")
                for s in after["suggestions"]] or ["none"]
        if (d / "lynis-after.log").exists():
            lost = lynis_points_lost(d / "lynis-after.log")
            out += ["", "## Lynis tests that did not get all their points (after)", "",
                    f"{sum(b - a for _, _, a, b in lost)} points lost in {len(lost)} checks; "
                    "one test ID can score several checks.", "",
                    "| test | what | points | lost |", "|---|---|---|---|"]
            out += [f"| {t} | {what} | {a} of {b} | {b - a} |" for t, what, a, b in lost]
    else:
        out += ["Lynis was not run: an audit takes about 20 minutes per run under software emulation, so the "
                "test suite leaves it out. `scripts/hardening-report.sh` runs the same scenario with Lynis "
                "before and after."]
    out += ["", "## Listening sockets and who reaches them", "",
            "Probed with a TCP connect from the lab host (on the VM's bridge, not an admin network); "
            "declared = the firewall role's `firewall_exposure` (from inventory). Loopback-only "
            "sockets are left out.", "",
            "| host | socket | declared sources | probe |", "|---|---|---|---|"]
    out += [f"| {r['host']} | {r['socket']} | {r['declared']} | {r['probed']} |" for r in rows]
    out += ["", "Unexpected: " + ("; ".join(unexpected) if unexpected else "none"), "",
            "## ssh-audit output", "", "```", ssh_audit.strip(), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(out))
    print(json.dumps(figures, indent=2))
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
