from __future__ import annotations

import keel_facts
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
    assert set(v.FilterModule().filters()) == {"keel_timezone_valid", "keel_invalid_ssh_keys", "keel_invalid_settings"}


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
