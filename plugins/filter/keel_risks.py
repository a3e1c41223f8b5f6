"""The accepted-risk register: audit findings an operator has decided to live with (issue 24).

The register is inventory data, `keel_accepted_risks` (group_vars of the site, or a host's
own), a list of entries:

  id          a short name of its own (R1, ssh-legacy-kex ...), unique
  check       the audit check the finding comes from (ssh, firewall, sockets, auditd,
              units, aide, updates)
  match       a regular expression searched in the finding's message
  severity    the most severe finding it accepts (high, medium, low, info): a finding
              that becomes more severe is not covered. A critical finding is never
              accepted: fix it.
  reason      why the risk is accepted
  owner       who answers for it
  review_by   the date (YYYY-MM-DD) it is reviewed again, at most a year ahead: after
              it the entry no longer accepts anything and the audit says so
  hosts       optional: host or group names it applies to (default: every host)

An accepted finding stays in the report, marked with its entry, and does not count
towards the verdict. An entry past its review date is reported (medium) and its findings
count again; an entry that matches nothing on a host is reported (info) so that a stale
entry is seen.

  keel_accepted_risk_problems(register, today)      what is wrong with a register (strings)
  keel_apply_accepted_risks(findings, register, host, groups, today)
                                                    the findings with the accepted ones marked,
                                                    plus the register's own findings
"""

from __future__ import annotations

import datetime
import re

from ansible.errors import AnsibleFilterError

CHECKS = ("ssh", "firewall", "sockets", "auditd", "units", "aide", "updates")
RANK = {sev: i for i, sev in enumerate(("critical", "high", "medium", "low", "info"))}
ACCEPTABLE = ("high", "medium", "low", "info")
REQUIRED = ("id", "check", "match", "severity", "reason", "owner", "review_by")
KEYS = (*REQUIRED, "hosts")
MAX_AHEAD_DAYS = 366


def _date(value: object) -> datetime.date | None:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        try:
            return datetime.date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _today(today: object) -> datetime.date:
    day = _date(today)
    if day is None:
        raise AnsibleFilterError(f"today must be a YYYY-MM-DD date, got {today!r}")
    return day


def keel_accepted_risk_problems(register: object, today: object) -> list:
    """Each problem of the register as a sentence naming the entry and the key to fix."""
    day = _today(today)
    if register is None or register == []:
        return []
    if not isinstance(register, list):
        return ["keel_accepted_risks must be a list of entries (keys: " + ", ".join(KEYS) + ")"]
    problems, seen = [], set()
    for i, entry in enumerate(register, 1):
        if not isinstance(entry, dict):
            problems.append(f"keel_accepted_risks entry {i} is not a mapping (keys: {', '.join(KEYS)})")
            continue
        name = f"keel_accepted_risks entry {i}" + (f" ({entry.get('id')})" if entry.get("id") else "")
        unknown = sorted(str(k) for k in entry if k not in KEYS)
        if unknown:
            problems.append(f"{name}: unknown key(s) {', '.join(unknown)} (keys: {', '.join(KEYS)})")
        missing = [k for k in REQUIRED if not str(entry.get(k) or "").strip()]
        if missing:
            problems.append(f"{name}: {', '.join(missing)} missing or empty")
        rid = str(entry.get("id") or "")
        if rid and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", rid):
            problems.append(f"{name}: id must be letters, digits, '.', '_' or '-'")
        if rid and rid in seen:
            problems.append(f"{name}: id {rid} is used by another entry")
        seen.add(rid)
        check = entry.get("check")
        if check and check not in CHECKS:
            problems.append(f"{name}: check must be one of {', '.join(CHECKS)}, got {check!r}")
        severity = entry.get("severity")
        if severity == "critical":
            problems.append(f"{name}: a critical finding cannot be accepted: fix it")
        elif severity and severity not in ACCEPTABLE:
            problems.append(f"{name}: severity must be one of {', '.join(ACCEPTABLE)}, got {severity!r}")
        if entry.get("match"):
            try:
                re.compile(str(entry["match"]))
            except re.error as err:
                problems.append(f"{name}: match is not a regular expression ({err})")
        if entry.get("review_by"):
            review = _date(entry["review_by"])
            if review is None:
                problems.append(f"{name}: review_by must be a date (YYYY-MM-DD), got {entry['review_by']!r}")
            elif (review - day).days > MAX_AHEAD_DAYS:
                problems.append(f"{name}: review_by {review} is more than a year ahead: review accepted risks "
                                f"at least once a year")
        hosts = entry.get("hosts", [])
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            problems.append(f"{name}: hosts must be a list of host or group names")
    return problems


def _applies(entry: dict, host: str, groups: list) -> bool:
    names = entry.get("hosts") or []
    return not names or host in names or any(g in names for g in groups)


def keel_apply_accepted_risks(findings: object, register: object, host: object, groups: object,
                              today: object) -> list:
    """The host's findings, each one an entry accepts marked `accepted` (id, owner, reason,
    review_by); then a medium finding per entry past its review date that matched a finding
    (which counts again) and an info finding per entry that matched nothing on this host."""
    day = _today(today)
    if not isinstance(findings, list):
        raise AnsibleFilterError("keel_apply_accepted_risks needs the list of findings")
    problems = keel_accepted_risk_problems(register, day.isoformat())
    if problems:  # the first play refuses such a register; never apply half of one
        raise AnsibleFilterError("; ".join(problems))
    groups = list(groups or [])
    entries = [e for e in register or [] if _applies(e, str(host), groups)]
    matched: dict[str, int] = {}
    out = []
    for finding in findings:
        finding = dict(finding)
        for entry in entries:
            if (entry["check"] == finding.get("check")
                    and RANK.get(finding.get("severity"), 0) >= RANK[entry["severity"]]
                    and re.search(str(entry["match"]), str(finding.get("message", "")))):
                matched[entry["id"]] = matched.get(entry["id"], 0) + 1
                if _date(entry["review_by"]) >= day:
                    finding["accepted"] = {k: str(entry[k]) for k in ("id", "owner", "reason", "review_by")}
                    break
        out.append(finding)
    for entry in entries:
        review = _date(entry["review_by"])
        if entry["id"] in matched and review < day:
            out.append({"check": "register", "severity": "medium",
                        "message": f"accepted risk {entry['id']} (owner {entry['owner']}) was due for review on "
                                   f"{review}: its {matched[entry['id']]} finding(s) count again until the register "
                                   f"is reviewed"})
        elif entry["id"] not in matched:
            out.append({"check": "register", "severity": "info",
                        "message": f"accepted risk {entry['id']} matched no finding on this host: remove it, or "
                                   f"correct its check, severity or match"})
    return out


class FilterModule:
    def filters(self):
        return {
            "keel_accepted_risk_problems": keel_accepted_risk_problems,
            "keel_apply_accepted_risks": keel_apply_accepted_risks,
        }
