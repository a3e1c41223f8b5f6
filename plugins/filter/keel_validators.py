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


class FilterModule:
    def filters(self):
        return {
            "keel_timezone_valid": keel_timezone_valid,
            "keel_invalid_ssh_keys": keel_invalid_ssh_keys,
            "keel_invalid_settings": keel_invalid_settings,
        }
