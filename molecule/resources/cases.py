"""Spreading a scenario's parametrised cases over its hosts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def host_for_case(cases: Iterable[str], case: str, hosts: Sequence[str]) -> str:
    """The host that runs `case`: `hosts` in turn over the sorted case names. A case that changes
    or refuses a host's configuration runs once, and a verifier that runs the hosts' tests side by
    side (pytest-xdist, one worker per host) gets as much to do on each."""
    return hosts[sorted(cases).index(case) % len(hosts)]
