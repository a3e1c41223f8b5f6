from __future__ import annotations

import keel_facts
import keel_metrics
import keel_validators as v
import pytest
from ansible.errors import AnsibleFilterError

KEY_RE = r"^(ssh-ed25519|ssh-rsa) [A-Za-z0-9+/]+={0,3}( .*)?$"


@pytest.mark.parametrize("name", ["Etc/UTC", "Europe/Berlin", "America/New_York", "UTC"])
def test_known_timezones_pass(name):
    assert v.keel_timezone_valid(name)


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "Europe/", "../etc/passwd", None, 3])
def test_unknown_timezones_fail(name):
    assert not v.keel_timezone_valid(name)


def test_valid_keys_give_no_findings():
    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOx alice@laptop", "ssh-rsa AAAAB3NzaC1yc2E= bob"]
    assert v.keel_invalid_ssh_keys(keys, KEY_RE) == []


@pytest.mark.parametrize(
    "bad",
    ["", "not a key", "ssh-ed25519", "ssh-ed25519 AAAA\nssh-rsa BBBB", "-----BEGIN OPENSSH PRIVATE KEY-----", 42],
)
def test_invalid_keys_are_reported(bad):
    assert v.keel_invalid_ssh_keys(["ssh-ed25519 AAAAC3Nz ok", bad], KEY_RE) == [bad]


def test_non_list_is_reported():
    assert v.keel_invalid_ssh_keys("ssh-ed25519 AAAA", KEY_RE) == ["ssh-ed25519 AAAA"]


def test_filters_are_registered():
    assert set(v.FilterModule().filters()) == {
        "keel_timezone_valid", "keel_invalid_ssh_keys", "keel_invalid_settings", "keel_inventory_problems",
        "keel_placeholder_secrets", "keel_port_clashes"}


def test_invalid_settings_are_reported_with_key_and_value():
    key, value = r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$", r"^[-0-9 ]+$|^[A-Za-z0-9_./:-]+$"
    good = {"net.ipv4.tcp_syncookies": 1, "kernel.kptr_restrict": "2", "net.ipv4.ip_local_port_range": "32768 60999"}
    assert v.keel_invalid_settings(good, key, value) == []
    bad = {"net.ipv4.tcp syncookies": 1, "kernel": 1, "fs.suid_dumpable": "0; reboot", **good}
    assert v.keel_invalid_settings(bad, key, value) == [
        "'net.ipv4.tcp syncookies' = '1'", "'kernel' = '1'", "'fs.suid_dumpable' = '0; reboot'"]
    assert v.keel_invalid_settings(["not", "a", "mapping"], key, value) == ["['not', 'a', 'mapping']"]


@pytest.mark.parametrize(("facts", "expected"), [
    ({"virtualization_role": "guest", "virtualization_type": "docker"}, True),
    ({"virtualization_role": "guest", "virtualization_type": "systemd-nspawn"}, True),
    ({"virtualization_role": "guest", "virtualization_type": "containerd"}, True),
    ({"virtualization_role": "guest", "virtualization_type": "kvm"}, False),  # a VM has its own kernel
    ({"virtualization_role": "host", "virtualization_type": "docker"}, False),  # a machine that runs containers
    ({}, False),  # facts not gathered: treated as a host of its own
])
def test_in_container_reads_the_virtualization_facts(facts, expected):
    assert keel_facts.keel_in_container(facts) is expected


def test_in_container_wants_the_facts_dict():
    with pytest.raises(AnsibleFilterError, match="expects ansible_facts"):
        keel_facts.keel_in_container("docker")


# Alertmanager's /metrics around a reload, as 0.27 writes them (values changed by hand)
AM_BEFORE = """\
# HELP alertmanager_config_hash Hash of the currently loaded alertmanager configuration.
# TYPE alertmanager_config_hash gauge
alertmanager_config_hash 2.0571e+14
# HELP alertmanager_config_last_reload_success_timestamp_seconds Timestamp of the last successful configuration reload.
alertmanager_config_last_reload_success_timestamp_seconds 1.7947e+09
alertmanager_config_last_reload_successful 1
alertmanager_config_hash_other{x="1"} 5
"""
AM_STATE = ["alertmanager_config_hash", "alertmanager_config_last_reload_success_timestamp_seconds"]
AM_SUCCESS = "alertmanager_config_last_reload_successful"


def test_metric_samples_are_whole_lines_of_the_named_metrics_only():
    assert keel_metrics.keel_metric_samples(AM_BEFORE, AM_STATE) == [
        "alertmanager_config_hash 2.0571e+14", "alertmanager_config_last_reload_success_timestamp_seconds 1.7947e+09"]


@pytest.mark.parametrize(("after", "seen"), [
    (AM_BEFORE.replace("2.0571e+14", "9.9e+13"), True),  # new config hash
    (AM_BEFORE.replace("1.7947e+09", "1.7948e+09"), True),  # same file reloaded: only the time moved
    (AM_BEFORE, False),  # the SIGHUP not handled yet: nothing moved (a regex with a group saw names only: always this)
    (AM_BEFORE.replace("2.0571e+14", "9.9e+13").replace("successful 1", "successful 0"), False),  # rejected
    (AM_BEFORE.replace("alertmanager_config_hash 2.0571e+14\n", ""), True),  # a state metric appeared/vanished
    ("", False),  # the service answered nothing
    (AM_BEFORE.replace("alertmanager_config_hash_other{x=\"1\"} 5", "alertmanager_config_hash_other{x=\"1\"} 6"),
     False),  # another metric whose name starts the same moved: not a state metric
])
def test_reload_seen_needs_success_and_a_moved_state(after, seen):
    assert keel_metrics.keel_reload_seen(after, AM_BEFORE, AM_SUCCESS, AM_STATE) is seen


def test_reload_success_sample_may_carry_labels_and_a_timestamp():
    after = "x_hash 2\nx_last_reload_successful{instance=\"a\"} 1 1794700000000\n"
    assert keel_metrics.keel_reload_seen(after, "x_hash 1\n", "x_last_reload_successful", ["x_hash"]) is True
    assert keel_metrics.keel_reload_seen(after.replace("} 1 ", "} 0 "), "x_hash 1\n",
                                         "x_last_reload_successful", ["x_hash"]) is False


@pytest.mark.parametrize(("after", "before", "state", "message"), [
    (None, AM_BEFORE, AM_STATE, "metrics text after the reload must be a string, got NoneType"),
    (AM_BEFORE, {"json": 1}, AM_STATE, "metrics text before the reload must be a string, got dict"),
    (AM_BEFORE, AM_BEFORE, "alertmanager_config_hash", "state must be a non-empty list"),
    (AM_BEFORE, AM_BEFORE, [], "state must be a non-empty list"),
])
def test_reload_seen_says_what_is_wrong_with_its_input(after, before, state, message):
    with pytest.raises(AnsibleFilterError, match=message):
        keel_metrics.keel_reload_seen(after, before, AM_SUCCESS, state)


def test_metrics_filters_are_registered():
    assert set(keel_metrics.FilterModule().filters()) == {"keel_reload_seen", "keel_metric_samples"}
