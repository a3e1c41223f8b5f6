"""Shared pytest hooks for every Molecule scenario's testinfra tests."""

from __future__ import annotations

import os
import re

import pytest


def _inventory_hosts() -> list[str]:
    """The host names of the scenario's inventory (Molecule's, as the verifier sees it)."""
    path = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path or not os.path.exists(path):
        return []
    import yaml

    names: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "hosts" and isinstance(value, dict):
                    names.update(map(str, value))
                walk(value)
    with open(path) as handle:
        walk(yaml.safe_load(handle))
    return sorted(names, key=len, reverse=True)


def host_of(nodeid: str, hosts: list[str]) -> str:
    """The testinfra host a test runs on, from its id: the first parameter, e.g. the osh12 of
    test_x[ansible://osh12] or test_y[ansible://osh12-some_case] (a host name may hold "-":
    the inventory's names decide)."""
    found = re.search(r"\[[a-z]+://([^\]]*)\]", nodeid)
    if not found:
        return "no-host"
    rest = found.group(1)
    for name in hosts:
        if rest == name or rest.startswith(name + "-"):
            return name
    return rest.split("-", 1)[0]


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """`dist: loadgroup` in a scenario's verifier options (with `n: "2"`): each host's tests run
    on one worker, in their order, and the hosts side by side; for scenarios whose hosts share
    no state. (xdist's own loadgroup marks do not reach its scheduler under pytest 9, so the
    grouping is done here, by host, on the test ids.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    hosts = _inventory_hosts()

    class ByHost(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return host_of(nodeid, hosts)

    return ByHost(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed test, attach the host's recent journal and failed units to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    host = item.funcargs.get("host")
    if host is None:
        return
    try:
        failed = host.run("systemctl --failed --no-legend --no-pager").stdout
        journal = host.run("journalctl -b --no-pager -n 150 -o short-precise").stdout
    except Exception as exc:  # the host may be the thing that broke
        report.sections.append(("journal", f"could not read the journal: {exc}"))
        return
    report.sections.append(("failed units", failed or "(none)"))
    report.sections.append(("journal (last 150 lines)", journal))
