"""common on a real Debian 12 kernel (qemu VM): what a container cannot show."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import yaml

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
KEYS = EPHEMERAL / "keys"


def instance(name: str) -> dict:
    config = yaml.safe_load((EPHEMERAL / "instance_config.yml").read_text())
    return next(item for item in config if item["instance"] == name)


def ssh(host, user: str, key: str, command: str) -> subprocess.CompletedProcess:
    vm = instance(host.ansible.get_variables()["inventory_hostname"])
    return subprocess.run(
        ["ssh", "-i", str(KEYS / key), "-p", str(vm["port"]), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", f"{user}@127.0.0.1", command],
        capture_output=True, text=True, timeout=120,
    )


def test_is_a_vm_not_a_container(host):
    assert host.check_output("systemd-detect-virt --container || true") == "none"
    assert host.check_output("systemd-detect-virt") in ("qemu", "kvm")


def name(host) -> str:
    return host.ansible.get_variables()["inventory_hostname"]


def test_hostname_set_by_the_role(host):
    # firstboot named it common-vm-vmN; the role renames it to its inventory name
    assert host.check_output("hostname") == name(host)
    assert host.file("/etc/hostname").content_string.strip() == name(host)


def test_hosts_file_lists_the_lab(host):
    hosts = host.file("/etc/hosts").content_string
    assert re.search(r"^10\.213\.250\.11 vm1$", hosts, re.M)
    assert re.search(r"^10\.213\.250\.12 vm2$", hosts, re.M)


def test_chrony_steers_the_clock(host):
    chrony = host.service("chrony")
    assert chrony.is_running and chrony.is_enabled
    assert "-x" not in host.file("/etc/default/chrony").content_string.split("DAEMON_OPTS=")[1]
    assert not host.file("/etc/systemd/system/chrony.service.d/keel.conf").exists


def test_chrony_synchronises_over_the_private_network(host):
    """vm2 must select vm1 (10.213.250.11) as its source, across the lab bridge (bound 120 s)."""
    if name(host) != "vm2":
        assert host.socket("udp://0.0.0.0:123").is_listening
        return
    host.run_test("chronyc -a 'burst 4/4'")
    deadline = time.monotonic() + 120
    sources = ""
    while time.monotonic() < deadline:
        sources = host.check_output("chronyc -n sources")
        if re.search(r"^\^\*\s+10\.213\.250\.11\s", sources, re.M):
            break
        time.sleep(3)
    assert re.search(r"^\^\*\s+10\.213\.250\.11\s", sources, re.M), sources
    assert "Leap status     : Normal" in host.check_output("chronyc -n tracking")


def test_journal_survives_reboot(host):
    boots = host.check_output("journalctl --list-boots --no-pager | wc -l")
    assert int(boots) >= 2, "side_effect rebooted the VM: expected at least two boots in the journal"
    earlier = host.run("journalctl -t keeltest -b -1 --no-pager -o cat")
    assert "keel-before-reboot" in earlier.stdout


def test_timezone_and_locale_after_reboot(host):
    assert host.check_output("timedatectl show -p Timezone --value") == "Europe/Berlin"
    assert host.check_output("localectl status | grep 'System Locale'").endswith("LANG=en_US.UTF-8")


def test_admin_key_login_and_sudo(host):
    res = ssh(host, "alice", "admin", "sudo -n id -u")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"


def test_non_admin_cannot_sudo(host):
    res = ssh(host, "mallory", "user", "id -un && sudo -n true")
    assert res.stdout.strip() == "mallory", res.stderr
    assert res.returncode != 0


def test_security_updates_timer_active(host):
    assert host.service("apt-daily-upgrade.timer").is_running
