"""The accepted-risk register (keel_accepted_risks, plugins/filter/keel_risks.py): what it
refuses, what it accepts, and that what it accepts stays visible."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "filter"))
from keel_audit import keel_audit_summary  # noqa: E402
from keel_risks import keel_accepted_risk_problems, keel_apply_accepted_risks  # noqa: E402
from test_inventories_and_validation import lab_groups, run_playbook, write_inventory  # noqa: E402

TODAY = "2026-12-08"
ENTRY = {"id": "R1", "check": "updates", "match": "package lists are \\d+ days old", "severity": "low",
         "reason": "the mirror is refreshed weekly", "owner": "ops team", "review_by": "2027-03-01"}
STALE_LISTS = {"check": "updates", "severity": "low", "message": "the package lists are 9 days old"}
PENDING = {"check": "updates", "severity": "high", "message": "3 security updates pending: openssl"}


def test_a_good_register_has_no_problem_and_dates_may_come_from_yaml():
    assert keel_accepted_risk_problems([ENTRY], TODAY) == []
    assert keel_accepted_risk_problems([{**ENTRY, "review_by": datetime.date(2027, 3, 1)}], TODAY) == []
    assert keel_accepted_risk_problems([], TODAY) == keel_accepted_risk_problems(None, TODAY) == []


@pytest.mark.parametrize("entries, says", [
    ("R1", "must be a list of entries"),
    (["R1"], "entry 1 is not a mapping"),
    ([{**ENTRY, "reason": ""}], "entry 1 (R1): reason missing or empty"),
    ([{k: v for k, v in ENTRY.items() if k != "owner"}], "owner missing or empty"),
    ([ENTRY, ENTRY], "entry 2 (R1): id R1 is used by another entry"),
    ([{**ENTRY, "check": "dns"}], "check must be one of ssh, firewall, sockets"),
    ([{**ENTRY, "severity": "critical"}], "a critical finding cannot be accepted: fix it"),
    ([{**ENTRY, "severity": "severe"}], "severity must be one of high, medium, low, info"),
    ([{**ENTRY, "match": "(unclosed"}], "match is not a regular expression"),
    ([{**ENTRY, "review_by": "next spring"}], "review_by must be a date (YYYY-MM-DD)"),
    ([{**ENTRY, "review_by": "2027-02-30"}], "review_by must be a date (YYYY-MM-DD)"),
    ([{**ENTRY, "review_by": "2029-01-01"}], "more than a year ahead"),
    ([{**ENTRY, "hosts": "app1"}], "hosts must be a list of host or group names"),
    ([{**ENTRY, "expires": "2027-01-01"}], "unknown key(s) expires"),
    ([{**ENTRY, "id": "R 1"}], "id must be letters, digits"),
])
def test_a_bad_register_is_named_by_entry_and_key(entries, says):
    problems = keel_accepted_risk_problems(entries, TODAY)
    assert any(says in p for p in problems), problems


def test_an_accepted_finding_is_marked_and_a_more_severe_one_is_not():
    out = keel_apply_accepted_risks([STALE_LISTS, PENDING], [{**ENTRY, "match": "."}], "app1", ["app"], TODAY)
    assert out[0]["accepted"] == {"id": "R1", "owner": "ops team", "reason": "the mirror is refreshed weekly",
                                  "review_by": "2027-03-01"}
    assert "accepted" not in out[1]  # high: more severe than the entry accepts
    assert len(out) == 2


def test_an_entry_for_other_hosts_or_checks_accepts_nothing_and_says_so():
    for entry in ({**ENTRY, "hosts": ["loadbalancers"]}, {**ENTRY, "check": "aide"}, {**ENTRY, "match": "weeks"}):
        out = keel_apply_accepted_risks([STALE_LISTS], [entry], "app1", ["app"], TODAY)
        assert "accepted" not in out[0]
        if entry.get("hosts"):
            assert len(out) == 1  # not for this host: nothing to say here
        else:
            assert out[1]["severity"] == "info" and "R1 matched no finding on this host" in out[1]["message"]
    out = keel_apply_accepted_risks([STALE_LISTS], [{**ENTRY, "hosts": ["app"]}], "app1", ["app"], TODAY)
    assert "accepted" in out[0]


def test_an_entry_past_its_review_date_accepts_nothing_and_is_a_finding():
    out = keel_apply_accepted_risks([STALE_LISTS], [{**ENTRY, "review_by": "2026-12-01"}], "app1", ["app"], TODAY)
    assert "accepted" not in out[0]
    assert out[1]["severity"] == "medium"
    assert "R1 (owner ops team) was due for review on 2026-12-01: its 1 finding(s) count again" in out[1]["message"]
    # due today: still accepted
    assert "accepted" in keel_apply_accepted_risks([STALE_LISTS], [{**ENTRY, "review_by": TODAY}], "a", [], TODAY)[0]


def test_a_bad_register_is_never_half_applied():
    with pytest.raises(AnsibleFilterError, match="a critical finding cannot be accepted"):
        keel_apply_accepted_risks([STALE_LISTS], [{**ENTRY, "severity": "critical"}], "app1", ["app"], TODAY)


def test_the_summary_lists_accepted_findings_apart_and_does_not_count_them():
    findings = keel_apply_accepted_risks([STALE_LISTS, PENDING], [ENTRY], "app1", ["app"], TODAY)
    text = keel_audit_summary([{"inventory_hostname": "app1", "group_names": ["app"], "__keel_findings": findings}],
                              "2026-12-08T10:00:00Z")
    assert "| app1 | app | 0 | 1 | 0 | 0 | 0 | 1 |" in text  # the pending updates counted, the stale lists not
    counted, accepted = text.split("## Findings", 1)[1].split("## Accepted risks", 1)
    assert "security updates pending" in counted and "package lists" not in counted
    assert ("| app1 | low | updates | the package lists are 9 days old | R1 | ops team | 2027-03-01 | "
            "the mirror is refreshed weekly |") in accepted


def test_site_and_the_audit_refuse_a_bad_register_before_touching_a_host(tmp_path):
    groups = lab_groups()
    inv = write_inventory(tmp_path, groups)
    (inv.parent / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    (inv.parent / "group_vars" / "all" / "risks.yml").write_text(
        yaml.safe_dump({"keel_accepted_risks": [{**ENTRY, "severity": "critical"}]}))
    res = run_playbook(tmp_path, inv, "site.yml")
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, out[-3000:]
    assert ("the accepted-risk register is wrong: keel_accepted_risks entry 1 (R1): a critical finding cannot be "
            "accepted: fix it") in out, out[-3000:]
    assert "UNREACHABLE" not in out, out[-3000:]
