"""Shared pytest hooks for every Molecule scenario's testinfra tests."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    """Group each test by the testinfra host it runs on (pytest-xdist's xdist_group). A
    scenario whose hosts are independent runs its verifier with `n: "2"` and
    `dist: loadgroup` (molecule.yml, verifier options): each host's tests then run on one
    worker in their order, and the hosts side by side. Without those options nothing changes."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        host = callspec.params.get("_testinfra_host") if callspec else None
        group = getattr(getattr(host, "backend", None), "host", None) or "no-host"
        item.add_marker(pytest.mark.xdist_group(name=str(group)))


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
