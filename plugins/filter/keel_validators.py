"""Validation filters for keel's preflight checks (controller side, no host access)."""

from __future__ import annotations

import zoneinfo

from ansible.errors import AnsibleFilterError


def _zones() -> set[str]:
    zones = zoneinfo.available_timezones()
    if not zones:
        raise AnsibleFilterError(
            "the controller has no time zone database: install the tzdata package "
            "(Debian: apt-get install tzdata; Python: pip install tzdata)"
        )
    return zones


def keel_timezone_valid(name: object) -> bool:
    """True when name is an IANA time zone known to the controller's database."""
    return isinstance(name, str) and name in _zones()


def keel_invalid_ssh_keys(keys: object, pattern: str) -> list:
    """Return the keys (or non-strings) that do not look like one OpenSSH public key each."""
    import re

    if not isinstance(keys, list):
        return [keys]
    regex = re.compile(pattern)
    return [key for key in keys if not isinstance(key, str) or "\n" in key or not regex.match(key.strip())]


def keel_invalid_settings(settings: object, key_pattern: str, value_pattern: str) -> list:
    """Return "'key' = 'value'" for each setting whose key or value (as a string) does not match.

    One evaluation for a whole mapping (a looped assert costs a template run per item).
    Both patterns are matched from the start, as Jinja's 'match' test does.
    """
    import re

    if not isinstance(settings, dict):
        return [repr(settings)]
    key_re, value_re = re.compile(key_pattern), re.compile(value_pattern)
    return [f"'{key}' = '{value}'" for key, value in settings.items()
            if not (isinstance(key, str) and key_re.match(key) and value_re.match(str(value)))]


def keel_inventory_problems(hosts: object, groups: object) -> list:
    """What makes an inventory inconsistent across hosts, one sentence per problem.

    hosts: a list of {name, ip, host, port, connection} (keel_private_ip, ansible_host,
    ansible_port, ansible_connection of each inventory host), or its JSON text;
    groups: the inventory's groups. Checked: every keel_private_ip is an IP address
    that can be reached from another host (not unspecified or multicast; not loopback
    unless the host is the controller itself, connection local), no
    two hosts share one, no two host names differ only in case, no two hosts are one
    machine (same connection, address and port). A host in both app and app_spare is
    a spare in service (the autoscaler's spare-pool provider hands out the spares that
    are not in app, and its inventory writer adds them to app): not a problem.
    """
    import ipaddress
    import json

    if isinstance(hosts, str):
        hosts = json.loads(hosts)
    if not isinstance(hosts, list) or not isinstance(groups, dict):
        raise AnsibleFilterError("keel_inventory_problems needs a list of hosts and the groups mapping")
    problems: list[str] = []

    def shared(kind: str, by: dict) -> None:
        for key, names in sorted(by.items()):
            if len(names) > 1:
                problems.append(f"hosts {', '.join(sorted(names))} share {kind} {key}")

    ips: dict[str, list[str]] = {}
    lowered: dict[str, list[str]] = {}
    machines: dict[str, list[str]] = {}
    for entry in hosts:
        name = str(entry.get("name"))
        lowered.setdefault(name.lower(), []).append(name)
        raw = str(entry.get("ip") or "").strip()
        connection = str(entry.get("connection") or "ssh").rsplit(".", 1)[-1]
        if raw:
            try:
                ip = ipaddress.ip_address(raw)
            except ValueError:
                problems.append(f"host {name}: keel_private_ip '{raw}' is not an IP address")
            else:
                remote_loopback = ip.is_loopback and len(hosts) > 1 and connection != "local"
                if ip.is_unspecified or ip.is_multicast or remote_loopback:
                    problems.append(f"host {name}: keel_private_ip {raw} cannot be reached from the other hosts "
                                    "(loopback, unspecified or multicast): give the host's private address")
                ips.setdefault(str(ip), []).append(name)
        if connection != "local":
            where = f"{connection}://{entry.get('host') or name}:{entry.get('port') or 'default'}"
            machines.setdefault(where, []).append(name)
    shared("keel_private_ip", ips)
    for names in lowered.values():
        if len(set(names)) > 1:
            problems.append(f"host names {', '.join(sorted(set(names)))} differ only in case "
                            "(DNS does not tell them apart)")
    for where, names in sorted(machines.items()):
        if len(names) > 1:
            problems.append(f"hosts {', '.join(sorted(names))} are the same machine ({where}): "
                            "one inventory name per host")
    return problems


# Inventory variables that hold secrets (by name), and what an unedited example value looks like.
_SECRET_NAME = r"(^vault_|_(password|passphrase|secret|token|private_key|api_key|webhook_url)$|^app_extra_env$)"  # noqa: S105
_PLACEHOLDER = r"replace|changeme|change[-_ ]me|example\.(com|org|net)\b|your[-_ ]?(password|secret|token)"


def _texts(value: object):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


def keel_placeholder_secrets(hostvars: object, hosts: object) -> list:
    """Secrets still holding an example's placeholder: "variable (host, host)" per variable.

    The sample vault's values ("REPLACE-with-a-long-random-password", a webhook URL on
    hooks.example.com) passed every preflight and would have been deployed: a password
    published in this repository. Looks at every inventory variable whose name says it is a
    secret (vault_*, *_password, *_token, *_secret, *_private_key, *_api_key, *_webhook_url,
    app_extra_env); a value that cannot be read here (undefined, a vault without its
    password) is left to the role that needs it. Names the variable, never the value.
    """
    import re

    name_re, placeholder_re = re.compile(_SECRET_NAME), re.compile(_PLACEHOLDER, re.IGNORECASE)
    found: dict[str, list[str]] = {}
    for host in hosts or []:
        try:
            variables = hostvars[host]
            names = [n for n in list(variables.keys()) if isinstance(n, str) and name_re.search(n)]
        except Exception:  # noqa: S112  a host whose variables cannot be listed is checked by its roles
            continue
        for name in names:
            try:
                value = variables[name]
            except Exception:  # noqa: S112  undefined, or vaulted without the password here
                continue
            if any(placeholder_re.search(text) for text in _texts(value)):
                found.setdefault(name, []).append(str(host))
    return [f"{name} ({', '.join(hosts_)})" for name, hosts_ in sorted(found.items())]


def keel_port_clashes(listeners: object) -> list:
    """Ports that two services of one host would both listen on: "port P: a, b" each.

    listeners: a list of {service: port, or a list of ports} mappings (one per role that
    runs on the host); a value that is not a port number is left to its role's checks.
    """
    by_port: dict[int, list[str]] = {}
    for mapping in listeners if isinstance(listeners, list) else []:
        for service, value in (mapping or {}).items() if isinstance(mapping, dict) else []:
            for port in value if isinstance(value, (list, tuple)) else [value]:
                try:
                    number = int(str(port))
                except ValueError:
                    continue
                by_port.setdefault(number, []).append(str(service))
    return [f"port {port}: {', '.join(services)}" for port, services in sorted(by_port.items()) if len(services) > 1]


class FilterModule:
    def filters(self):
        return {
            "keel_timezone_valid": keel_timezone_valid,
            "keel_invalid_ssh_keys": keel_invalid_ssh_keys,
            "keel_invalid_settings": keel_invalid_settings,
            "keel_inventory_problems": keel_inventory_problems,
            "keel_placeholder_secrets": keel_placeholder_secrets,
            "keel_port_clashes": keel_port_clashes,
        }
