"""Security audit judgements that do not depend on the inventory (security review M7).

playbooks/security-audit.yml compares each host with what keel's roles render for its
inventory; an inventory that asks for something weak then audits clean. These filters
judge what a host does against a fixed baseline instead:

  keel_ssh_baseline(effective)            sshd -T settings (lower-case keys)
  keel_firewall_baseline(ruleset, ...)    nft list ruleset text: what the input chain of
                                          keel's table accepts from anywhere
  keel_firewall_sources(ruleset, decl)    nft list ruleset text: every source an accept rule
                                          admits lies within what the inventory declares
  keel_socket_findings(sockets, ...)      listening TCP and UDP sockets against the ports
                                          the firewall role declares open
  keel_unit_findings(results, limits, d)  systemd-analyze security of the units against each
                                          unit's exposure limit (none: rated for the record)
  keel_aide_findings(prom, now)           AIDE's last result from keel-aide-check's textfile metrics
  keel_audit_summary(hosts, audited_at)   the readable summary (Markdown) of every host's findings

Each returns findings {check, severity, message}; severities critical, high, medium, low.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

ROOT_LOGIN_WITH_KEY = {"prohibit-password", "without-password", "forced-commands-only"}


def _finding(check: str, severity: str, message: str) -> dict:
    return {"check": check, "severity": severity, "message": message, "baseline": True}


def keel_ssh_baseline(effective: object) -> list:
    """Judge sshd's effective settings, whatever the inventory asked for."""
    if not isinstance(effective, dict):
        raise AnsibleFilterError("keel_ssh_baseline needs sshd -T's settings as a mapping")
    get = {str(k).lower(): str(v).lower() for k, v in effective.items()}.get
    found = []
    for key, label in (("passwordauthentication", "PasswordAuthentication"),
                       ("kbdinteractiveauthentication", "KbdInteractiveAuthentication"),
                       ("permitemptypasswords", "PermitEmptyPasswords"),
                       ("hostbasedauthentication", "HostbasedAuthentication")):
        if get(key, "no") != "no":
            found.append(_finding("ssh", "critical", f"{label} is {get(key)}: a login without a key is possible "
                                                     "(baseline: no, whatever the inventory says)"))
    root = get("permitrootlogin", "no")
    if root not in {"no", *ROOT_LOGIN_WITH_KEY}:
        found.append(_finding("ssh", "critical", f"PermitRootLogin is {root}: root may log in with a password "
                                                 "(baseline: no)"))
    elif root != "no":
        found.append(_finding("ssh", "medium", f"PermitRootLogin is {root}: root may log in with a key "
                                               "(baseline: no; admins log in as themselves and use sudo)"))
    if get("pubkeyauthentication", "yes") != "yes":
        found.append(_finding("ssh", "high", "PubkeyAuthentication is off: keys, the only allowed login, do not work"))
    try:
        tries = int(get("maxauthtries", "6"))
    except ValueError:
        tries = 6
    if tries > 4:
        found.append(_finding("ssh", "low", f"MaxAuthTries is {tries} (baseline: 4 or fewer)"))
    for key, label in (("x11forwarding", "X11Forwarding"), ("allowagentforwarding", "AllowAgentForwarding"),
                       ("permittunnel", "PermitTunnel")):
        if get(key, "no") not in ("no",):
            found.append(_finding("ssh", "low", f"{label} is {get(key)} (baseline: no)"))
    return found


_TABLE = re.compile(r"(?ms)^table inet keel_filter \{$.*?^\}$")
_CHAIN = re.compile(r"(?ms)^\s*chain input \{$(.*?)^\s*\}$")
_DPORT = re.compile(r"\b(tcp|udp)\s+dport\s+(\{[^}]*\}|[0-9]+(?:-[0-9]+)?)")
_SADDR = re.compile(r"\b(ip6?)\s+saddr\s+(\{[^}]*\}|\S+)")
_WORLD = {"0.0.0.0/0", "::/0"}


def _ports(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in spec.strip("{} ").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            out.append((int(low), int(high or low)))
        except ValueError:
            continue
    return out


def _judged_accepts(ruleset: str) -> tuple[str, list[str]] | None:
    """keel's table text and the accept rules of its input chain that a judgement looks at
    (not established traffic, loopback, ICMP or the DHCPv6 client's replies); None without the
    table."""
    table = _TABLE.search(ruleset)
    chain = _CHAIN.search(table.group(0)) if table else None
    if chain is None:
        return None
    rules = []
    for raw in chain.group(1).splitlines():
        rule = raw.split(" comment ", 1)[0].strip()
        if not re.search(r"\baccept$", rule) or rule.startswith(("type ", "policy ")):
            continue
        if re.search(r"\bct state (established|related|invalid)(,(established|related|invalid))*\b"
                     r"|\biif(name)? \"?lo\"?(\s|$)|\bicmp(v6)?\b|\budp sport 547 udp dport 546\b", rule):
            continue
        rules.append(rule)
    return table.group(0), rules


def keel_firewall_baseline(ruleset: object, public_ports: object = (80, 443), ssh_ports: object = (22,)) -> list:
    """What the input chain of inet keel_filter accepts from any source address.

    Only public_ports (default 80 and 443) may be open to the world: SSH (ssh_ports, from
    sshd -T) open to anyone is high, any other port open to anyone is high, an accept of
    everything from anyone is critical. Rules for established traffic, loopback and ICMP are
    not judged. A rule restricted by source (an address, a set) is not "the world" unless
    the source is 0.0.0.0/0 or ::/0.
    """
    if not isinstance(ruleset, str):
        raise AnsibleFilterError("keel_firewall_baseline needs nft list ruleset's text")
    judged = _judged_accepts(ruleset)
    if judged is None:
        return []  # no table: the existing critical finding says so
    public = {int(p) for p in public_ports or []}
    ssh = {int(p) for p in ssh_ports or []}
    found = []
    for rule in judged[1]:
        sources = [m.group(2).strip("{} ") for m in _SADDR.finditer(rule)]
        world = not sources or any(s.strip() in _WORLD for src in sources for s in src.split(","))
        if not world:
            continue
        ports = [(proto, span) for proto, spec in _DPORT.findall(rule) for span in _ports(spec)]
        if not ports:
            found.append(_finding("firewall", "critical", f"the input chain accepts everything from anywhere: {rule}"))
            continue
        for proto, (low, high) in ports:
            opened = set(range(low, min(high, low + 65535) + 1))
            if opened & ssh and proto == "tcp":
                found.append(_finding("firewall", "high", f"SSH ({proto} {low}) is open to the world: {rule} "
                                                          "(baseline: admin networks only)"))
            elif not opened <= public:
                span = str(low) if low == high else f"{low}-{high}"
                found.append(_finding("firewall", "high", f"{proto} {span} is open to the world: {rule} "
                                                          f"(baseline: only {', '.join(map(str, sorted(public)))})"))
    return found


_SET = re.compile(r"(?ms)^\s*set (\S+) \{$(.*?)^\s*\}$")
_ELEMENTS = re.compile(r"(?s)elements = \{(.*?)\}")


def _networks(items: object) -> list:
    """ip_network objects of CIDRs, addresses and a-b ranges; what does not parse is skipped."""
    import ipaddress

    out = []
    for item in items or []:
        text = str(item).strip()
        if "-" in text and "/" not in text:
            low, _, high = text.partition("-")
            try:
                out += list(ipaddress.summarize_address_range(ipaddress.ip_address(low.strip()),
                                                              ipaddress.ip_address(high.strip())))
            except ValueError:
                continue
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            continue
    return out


def _within(net, allowed: list) -> bool:
    return any(net.version == a.version and net.subnet_of(a) for a in allowed)


def keel_firewall_sources(ruleset: object, declared: object) -> list:
    """Every source an accept rule of keel's input chain admits, within what the inventory declares.

    declared is the firewall role's firewall_exposure for this host: {service, port, proto,
    sources}. A rule admitting an address (inline or through a named set) beyond the declared
    sources of its port, or admitting every port from an address, is medium: the loaded table is
    not the one the inventory describes (a hand edit, a stale rule). Rules open to the world are
    keel_firewall_baseline's; established traffic, loopback, ICMP and the DHCPv6 client's replies
    are not judged.
    """
    if not isinstance(ruleset, str) or not isinstance(declared, list):
        raise AnsibleFilterError("keel_firewall_sources needs nft list ruleset's text and firewall_exposure's list")
    judged = _judged_accepts(ruleset)
    if judged is None:
        return []
    table, rules = judged
    sets = {}
    for match in _SET.finditer(table):
        elements = _ELEMENTS.search(match.group(2))
        sets[match.group(1)] = [e for e in elements.group(1).replace("\n", " ").split(",")] if elements else []
    allowed: dict = {}
    for item in declared:
        if isinstance(item, dict):
            for low, high in _ports(str(item.get("port"))):
                for port in range(low, min(high, low + 65535) + 1):
                    allowed.setdefault((str(item.get("proto")), port), []).extend(_networks(item.get("sources")))
    found = []
    for rule in rules:
        names: list = []
        for _family, spec in _SADDR.findall(rule):
            if spec.startswith("@"):
                if spec[1:] not in sets:
                    found.append(_finding("firewall", "low", f"a rule admits the set {spec}, which the table does not "
                                                             f"define: {rule}"))
                names += sets.get(spec[1:], [])
            else:
                names += spec.strip("{} ").split(",")
        sources = [net for net in _networks(names) if net.prefixlen > 0]  # the world: the baseline's
        if not sources:
            continue
        ports = [(proto, span) for proto, spec in _DPORT.findall(rule) for span in _ports(spec)]
        if not ports:  # no inventory declares "every port"
            found.append(_finding("firewall", "medium", f"the input chain accepts every port from "
                                                        f"{', '.join(map(str, sources))}: {rule}"))
            continue
        for proto, (low, high) in ports:
            for port in range(low, min(high, low + 1024) + 1):
                outside = [str(net) for net in sources if not _within(net, allowed.get((proto, port), []))]
                if outside:
                    declared_here = ", ".join(map(str, allowed.get((proto, port), []))) or "nothing"
                    found.append(_finding("firewall", "medium",
                                          f"{proto} {port} accepts {', '.join(outside)}, beyond what the inventory "
                                          f"declares for it ({declared_here}): {rule}"))
                    break  # one finding per rule and protocol
    return found


# UDP client sockets a host may hold open without serving anything (DHCP clients).
_UDP_CLIENT_PORTS = {68, 546}


def keel_socket_findings(sockets: object, declared: object, enforcing: object) -> list:
    """Listening TCP and UDP sockets on a non-loopback address that the firewall role does not
    declare open: medium when keel's firewall drops them anyway, critical when nothing does;
    a DHCP client's UDP socket is low. Declared ports nobody listens on are info."""
    if not isinstance(sockets, list) or not isinstance(declared, list):
        raise AnsibleFilterError("keel_socket_findings needs the socket list and the declared exposure list")
    enforcing = bool(enforcing)
    open_ = set()
    for item in declared:
        if isinstance(item, dict):
            for low, high in _ports(str(item.get("port"))):
                open_ |= {(str(item.get("proto")), port) for port in range(low, high + 1)}
    found = []
    for sock in sockets:
        proto, address, port = str(sock.get("proto")), str(sock.get("address")), int(sock.get("port"))
        if address.startswith("127.") or address == "::1" or (proto, port) in open_:
            continue
        name = sock.get("name") or "(a program of another namespace)"
        client = proto == "udp" and port in _UDP_CLIENT_PORTS
        severity = "low" if client else ("medium" if enforcing else "critical")
        found.append(_finding("sockets", severity,
                              f"{name} listens on {address}:{port}/{proto}, which the firewall role does not declare "
                              f"open{' (the firewall drops it)' if enforcing else ' and no keel firewall drops it'}"))
    listening = {(str(s.get("proto")), int(s.get("port"))) for s in sockets}
    for proto, port in sorted(open_):
        if (proto, port) not in listening and proto == "tcp":  # a UDP service may bind only when asked
            found.append({"check": "sockets", "severity": "info",
                          "message": f"the firewall opens {port}/{proto} but nothing listens there"})
    return found


_EXPOSURE = re.compile(r"Overall exposure level for (\S+): ([0-9]+(?:\.[0-9]+)?)")


def keel_unit_findings(results: object, limits: object, default_limit: object) -> dict:
    """{'units': [{unit, exposure, limit}], 'findings': [...]} from the registered results of
    `systemd-analyze security UNIT` (a loop over unit names). A unit above its limit is high
    (its sandbox was loosened), a unit that could not be rated medium; a unit whose limit is
    None (sshd: it starts login sessions and cannot be sandboxed) is rated for the record."""
    if not isinstance(results, list) or not isinstance(limits, dict):
        raise AnsibleFilterError("keel_unit_findings needs the loop's results and a unit -> limit mapping")
    units, found = [], []
    for result in results:
        if not isinstance(result, dict) or "item" not in result:
            continue
        unit = str(result["item"])
        match = _EXPOSURE.search(str(result.get("stdout") or ""))
        exposure = float(match.group(2)) if match else None
        limit = limits.get(unit, default_limit)
        limit = None if limit is None else float(limit)
        units.append({"unit": unit, "exposure": exposure, "limit": limit})
        if exposure is None:
            found.append(_finding("units", "medium", f"systemd-analyze security could not rate {unit}"))
        elif limit is None:
            found.append(_finding("units", "info", f"{unit} is rated {exposure} by systemd-analyze security "
                                                   "(no limit: rated for the record)"))
        elif exposure > limit:
            found.append(_finding("units", "high", f"{unit} is rated {exposure} by systemd-analyze security "
                                                   f"(limit {limit}): its sandbox was loosened"))
    return {"units": units, "findings": found}


_PROM_LINE = re.compile(r'^(keel_aide_[a-z_]+)(?:\{change="([a-z]+)"\})? ([0-9.eE+-]+)$')


def keel_aide_findings(prom: object, now: object, max_age: object = 2 * 86400) -> list:
    """AIDE's last result (security review M6/M7) from the textfile keel-aide-check writes
    (None or "" when the file is missing): differences from the baseline and a failed check
    are medium, a check older than max_age seconds or none at all low."""
    if not prom:
        return [_finding("aide", "low", "AIDE's check has not reported yet (no keel_aide.prom): "
                                        "systemctl list-timers keel-aide-check.timer")]
    values: dict[str, float] = {}
    entries: dict[str, int] = {}
    for line in str(prom).splitlines():
        match = _PROM_LINE.match(line.strip())
        if match and match.group(2):
            entries[match.group(2)] = int(float(match.group(3)))
        elif match:
            values[match.group(1)] = float(match.group(3))
    found = []
    if values.get("keel_aide_last_check_success") != 1:
        found.append(_finding("aide", "medium", "AIDE's last check failed (journalctl -u keel-aide-check)"))
    elif sum(entries.values()):
        found.append(_finding("aide", "medium", "AIDE finds " + ", ".join(
            f"{entries.get(c, 0)} {c}" for c in ("added", "removed", "changed"))
            + " since its baseline: review its report (journalctl -u keel-aide-check), then re-baseline"))
    checked = values.get("keel_aide_last_check_timestamp_seconds")
    if checked is None or float(now) - checked > float(max_age):
        found.append(_finding("aide", "low", "AIDE's last check is older than "
                                             f"{float(max_age) / 86400:g} days (keel-aide-check.timer)"))
    return found


SEVERITIES = ("critical", "high", "medium", "low", "info")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def keel_audit_summary(hosts: object, audited_at: object) -> str:
    """Markdown for people: per host the count of findings by severity, then every finding
    from the most severe down. `hosts` are the hosts' variables (inventory_hostname,
    group_names, __keel_findings); hosts the audit did not reach have no findings list and
    are named as not audited. Findings the accepted-risk register accepts (marked
    `accepted`, plugins/filter/keel_risks.py) are not counted: they are listed apart, each
    with its entry, owner and review date."""
    if not isinstance(hosts, list):
        raise AnsibleFilterError("keel_audit_summary needs a list of the hosts' variables")
    rows, details, accepted_rows, missing = [], [], [], []
    total = dict.fromkeys(SEVERITIES, 0)
    rank = {sev: i for i, sev in enumerate(SEVERITIES)}
    for host in hosts:
        name = str(host.get("inventory_hostname", "?"))
        findings = host.get("__keel_findings")
        if not isinstance(findings, list):
            missing.append(name)
            continue
        counted = [f for f in findings if not f.get("accepted")]
        accepted = [f for f in findings if f.get("accepted")]
        counts = {sev: sum(1 for f in counted if f.get("severity") == sev) for sev in SEVERITIES}
        for sev in SEVERITIES:
            total[sev] += counts[sev]
        groups = ", ".join(sorted(host.get("group_names") or []))
        rows.append(f"| {_cell(name)} | {_cell(groups)} | " + " | ".join(str(counts[s]) for s in SEVERITIES)
                    + f" | {len(accepted)} |")
        for finding in sorted(counted, key=lambda f: rank.get(f.get("severity"), len(SEVERITIES))):
            details.append(f"| {_cell(name)} | {_cell(finding.get('severity'))} | {_cell(finding.get('check'))} | "
                           f"{_cell(finding.get('message'))} |")
        for finding in accepted:
            entry = finding["accepted"]
            accepted_rows.append(
                f"| {_cell(name)} | {_cell(finding.get('severity'))} | {_cell(finding.get('check'))} | "
                f"{_cell(finding.get('message'))} | {_cell(entry.get('id'))} | {_cell(entry.get('owner'))} | "
                f"{_cell(entry.get('review_by'))} | {_cell(entry.get('reason'))} |")
    if not rows:
        verdict = "**NO DATA**: no host was audited"
    elif total["critical"]:
        verdict = f"**FAIL**: {total['critical']} critical finding(s)"
    else:
        verdict = "**PASS**: no critical finding"
    lines = [f"# Security audit, {audited_at}", "", verdict + ".", "",
             "| host | groups | " + " | ".join(SEVERITIES) + " | accepted |",
             "|---|---|" + "---|" * (len(SEVERITIES) + 1), *rows]
    if missing:
        lines += ["", "Not audited (unreachable or failed before the audit): " + ", ".join(sorted(missing)) + "."]
    lines += ["", "## Findings", ""]
    lines += ["| host | severity | check | finding |", "|---|---|---|---|", *details] if details else ["None."]
    if accepted_rows:
        lines += ["", "## Accepted risks (keel_accepted_risks: not counted above)", "",
                  "| host | severity | check | finding | entry | owner | review by | reason |",
                  "|---|---|---|---|---|---|---|---|", *accepted_rows]
    return "\n".join(lines) + "\n"


class FilterModule:
    def filters(self):
        return {
            "keel_ssh_baseline": keel_ssh_baseline,
            "keel_firewall_baseline": keel_firewall_baseline,
            "keel_firewall_sources": keel_firewall_sources,
            "keel_socket_findings": keel_socket_findings,
            "keel_unit_findings": keel_unit_findings,
            "keel_audit_summary": keel_audit_summary,
            "keel_aide_findings": keel_aide_findings,
        }
