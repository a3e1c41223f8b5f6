"""The base and hardening layers on a real Debian 12 kernel (qemu VM): what a container cannot show.

Order of the scenario: converge, side effect (the session opened before hardening
survived; alice's password aged 400 days; reboot), idempotence on the rebooted VM,
then these tests. Logins go through qemu's port forward, so sshd sees them from
10.0.2.2, the only admin network of this scenario.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
PROJECT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
KEYS = EPHEMERAL / "keys"
REPORT_DIR = PROJECT / "reports" / "hardening"
PASSWORD = "keel-test-password"  # noqa: S105  test account carol's, set in prepare.yml
SYSCTL_FILE = "/etc/sysctl.d/99-zz-keel-hardening.conf"
POLICY = "Hardened Debian 12 (version 2)"


def instance(name: str) -> dict:
    config = yaml.safe_load((EPHEMERAL / "instance_config.yml").read_text())
    return next(item for item in config if item["instance"] == name)


def name(host) -> str:
    return host.ansible.get_variables()["inventory_hostname"]


def ssh(host, user: str, key: str | None, command: str = "true",
        options: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    vm = instance(name(host))
    argv = ["ssh", "-p", str(vm["port"]), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "-o", "ControlMaster=no", "-o", "ControlPath=none"]
    if key:
        argv += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(KEYS / key)]
    argv += (options or []) + [f"{user}@127.0.0.1", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)


# su on a pseudo-terminal (su flushes what was typed before its prompt): the helper
# script is sent to the host and run there with python3 -c.
SU_ON_A_TERMINAL = (Path(__file__).resolve().parents[2] / "resources" / "su_on_a_terminal.py").read_text()


def test_is_a_vm_not_a_container(host):
    assert host.check_output("systemd-detect-virt --container || true") == "none"
    assert host.check_output("systemd-detect-virt") in ("qemu", "kvm")


def test_hostname_set_by_the_role(host):
    # firstboot named it common-vm-vmN; the role renames it to its inventory name
    assert host.check_output("hostname") == name(host)
    assert host.file("/etc/hostname").content_string.strip() == name(host)


def test_hosts_file_lists_the_lab(host):
    hosts = host.file("/etc/hosts").content_string
    assert re.search(r"^10\.213\.250\.11 vm1$", hosts, re.M)


def test_chrony_steers_the_clock(host):
    chrony = host.service("chrony")
    assert chrony.is_running and chrony.is_enabled
    assert "-x" not in host.file("/etc/default/chrony").content_string.split("DAEMON_OPTS=")[1]
    assert not host.file("/etc/systemd/system/chrony.service.d/keel.conf").exists


def test_chrony_uses_the_configured_server(host):
    assert "server 10.213.250.1 iburst" in host.file("/etc/chrony/chrony.conf").content_string
    assert "10.213.250.1" in host.check_output("chronyc -n sources")


def test_journal_survives_reboot(host):
    boots = host.check_output("journalctl --list-boots --no-pager | wc -l")
    assert int(boots) >= 2, "side_effect rebooted the VM: expected at least two boots in the journal"
    earlier = host.run("journalctl -t keeltest -b -1 --no-pager -o cat")
    assert "keel-before-reboot" in earlier.stdout


def test_timezone_and_locale_after_reboot(host):
    assert host.check_output("timedatectl show -p Timezone --value") == "Europe/Berlin"
    assert host.check_output("localectl status | grep 'System Locale'").endswith("LANG=en_US.UTF-8")


def test_key_only_admin_aged_400_days_logs_in_and_uses_sudo(host):
    """side_effect.yml set alice's last password change 400 days back, then rebooted."""
    # shadow's third field: the day of the last password change, in days since 1970
    # (chage -l pads its labels with tabs and prints the date in the locale's format)
    changed = int(host.check_output("getent shadow alice | cut -d: -f3"))
    age_days = time.time() / 86400 - changed
    assert 399 <= age_days <= 402, changed
    res = ssh(host, "alice", "admin", "sudo -n id -u")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"


def test_non_admin_cannot_sudo(host):
    res = ssh(host, "mallory", "user", "id -un && sudo -n true")
    assert res.stdout.strip() == "mallory", res.stderr
    assert res.returncode != 0


def test_security_updates_timer_active(host):
    assert host.service("apt-daily-upgrade.timer").is_running


# ---------------------------------------------------------------- lockout safety and logins
def test_session_opened_before_hardening_survived(host):
    """prepare.yml opened an SSH session with its own connection; side_effect.yml checked its heartbeat."""
    record = EPHEMERAL / f"held-{name(host)}.survived"
    assert record.exists(), "side_effect.yml did not record that the session held before hardening survived"
    assert record.read_text().startswith("heartbeat ")


def test_su_works_with_the_right_password_only(host):
    script = shlex.quote(SU_ON_A_TERMINAL)
    good = ssh(host, "alice", "admin", f"python3 -c {script} carol {shlex.quote(PASSWORD)}")
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.strip().splitlines()[-1].strip() == "carol", good.stdout
    bad = ssh(host, "alice", "admin", f"python3 -c {script} carol wrong-password")
    assert bad.returncode != 0, bad.stdout
    assert "carol" not in bad.stdout.strip().splitlines()[-1], bad.stdout


def test_password_login_refused(host, tmp_path):
    """carol has a valid password and is in ssh-users; the server must not even offer passwords."""
    marker = tmp_path / "askpass-called"
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {marker}\necho {PASSWORD}\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    res = ssh(host, "carol", None, options=["-o", "PreferredAuthentications=password,keyboard-interactive",
                                             "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"],
              env=env)
    assert res.returncode == 255, res.stdout + res.stderr
    assert "Permission denied (publickey)" in res.stderr, res.stderr
    assert not marker.exists(), "the client was asked for a password: the server offered password logins"


def test_root_login_refused(host):
    """root has the admin key and is in ssh-users (prepare.yml): only PermitRootLogin no stops it."""
    res = ssh(host, "root", "admin", "id -u")
    assert res.returncode == 255, res.stdout
    assert "Permission denied" in res.stderr


# ---------------------------------------------------------------- kernel, after the reboot
def test_kernel_parameters_in_force_after_reboot(host):
    configured = {}
    for line in host.file(SYSCTL_FILE).content_string.splitlines():
        if " = " in line and not line.startswith("#"):
            key, value = line.split(" = ", 1)
            configured[key.strip()] = " ".join(value.split())
    assert len(configured) >= 40
    runtime = {}
    for line in host.check_output("sysctl -e " + " ".join(configured)).splitlines():
        key, value = line.split(" = ", 1)
        runtime[key.strip()] = " ".join(value.split())
    differ = {k: (v, runtime.get(k)) for k, v in configured.items() if runtime.get(k) != v}
    assert not differ, f"configured != running after the reboot: {differ}"


def test_disabled_modules_do_not_load(host):
    for module in ("cramfs", "squashfs", "udf", "firewire-core", "sctp", "dccp", "tipc", "rds"):
        res = host.run(f"modprobe {module}")
        assert res.rc != 0, f"modprobe {module} succeeded"
        assert not host.run(f"grep -qw '^{module.replace('-', '_')}' /proc/modules").succeeded


def test_tmp_and_shm_mounted_without_exec_suid_dev(host):
    for path in ("/tmp", "/dev/shm"):
        options = host.check_output(f"findmnt -no OPTIONS {path}").split(",")
        for option in ("nodev", "nosuid", "noexec"):
            assert option in options, (path, options)
    host.check_output("printf '#!/bin/sh\\necho ran\\n' > /tmp/keel-exec-probe && chmod 0755 /tmp/keel-exec-probe")
    try:
        res = host.run("/tmp/keel-exec-probe")
        assert res.rc != 0 and "ran" not in res.stdout
        assert "Permission denied" in res.stderr
    finally:
        host.run("rm -f /tmp/keel-exec-probe")


def test_core_dumps_off_in_login_sessions(host):
    res = ssh(host, "alice", "admin", "ulimit -c; cat /proc/sys/fs/suid_dumpable; umask")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "0", "0027"], res.stdout


def test_apparmor_enabled(host):
    assert host.file("/sys/module/apparmor/parameters/enabled").content_string.strip() == "Y"
    assert host.run("aa-enabled").stdout.strip() == "Yes"


def test_process_accounting_records_commands_after_reboot(host):
    assert host.service("acct").is_running and host.service("acct").is_enabled
    host.check_output("/usr/bin/true keel-acct-probe")
    assert host.file("/var/log/account/pacct").size > 0
    # lastcomm ORs its criteria unless told to match them all
    recorded = host.check_output("lastcomm --strict-match --command true --user root | head -5")
    assert recorded.split() and recorded.split()[0] == "true", recorded


# ---------------------------------------------------------------- audit, after the reboot
def test_audit_rules_loaded_and_locked_after_reboot(host):
    assert host.service("auditd").is_running
    status = host.check_output("auditctl -s")
    assert re.search(r"^enabled 2$", status, re.M), status
    loaded = host.check_output("auditctl -l")
    written = host.file("/etc/audit/rules.d/50-keel.rules").content_string
    keys = set(re.findall(r"-k (\S+)", written))
    assert {"identity", "time-change", "scope", "privileged", "kernel_modules", "mounts", "logins"} <= keys
    missing = sorted(k for k in keys if f"key={k}" not in loaded and f"-k {k}" not in loaded)
    assert not missing, f"rules written but not loaded after the reboot: {missing}"
    assert len(loaded.splitlines()) >= 40


def test_audit_records_a_change_to_sudoers(host):
    since = host.check_output("date +%T")
    host.check_output("touch /etc/sudoers.d/keel-audit-probe && rm -f /etc/sudoers.d/keel-audit-probe")
    deadline = time.monotonic() + 30
    found = ""
    while time.monotonic() < deadline and "keel-audit-probe" not in found:
        # --input-logs: without a terminal ausearch reads standard input, not the logs
        found = host.run(f"ausearch --input-logs -k scope -ts {since} -i").stdout
        time.sleep(1)
    assert "keel-audit-probe" in found, found[-2000:]


# ---------------------------------------------------------------- firewall, after the reboot
def test_firewall_ruleset_loaded_after_reboot(host):
    table = host.check_output("nft list table inet keel_filter")
    assert re.search(r"chain input \{\s*type filter hook input priority filter; policy drop;", table), table


def test_ssh_only_from_the_admin_network(host):
    """The lab host (10.213.250.1) is not an admin network: its SSH packets are dropped."""
    ip = host.ansible.get_variables()["keel_private_ip"]
    res = subprocess.run(["timeout", "8", "bash", "-c", f"exec 3<>/dev/tcp/{ip}/22"], capture_output=True)
    assert res.returncode != 0, "SSH answered on the private network, which is not an admin network"
    assert ssh(host, "alice", "admin").returncode == 0  # and through 10.0.2.2, the admin network, it answers


# ---------------------------------------------------------------- the report
def _listening(host) -> list[dict]:
    sockets = set()
    for line in host.check_output("ss -Hlntu").splitlines():
        proto, _state, _rq, _sq, local, *_ = line.split()
        address, _, port = local.rpartition(":")
        address = address.strip("[]").split("%")[0]
        if address.startswith("127.") or address == "::1":
            continue
        sockets.add((proto, address, int(port)))
    return [{"proto": p, "address": a, "port": n} for p, a, n in sorted(sockets)]


def _probe(ip: str, port: int) -> bool:
    """A TCP connect from the lab host (this machine, 10.213.250.1 on the VM's bridge)."""
    cmd = ["timeout", "5", "bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}"]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def test_hardening_report(host):
    """ssh-audit, listening ports and who reaches them (+ Lynis with KEEL_HARDENING_REPORT=1).

    Written by scripts/hardening_report.py to reports/hardening-report.md.
    """
    with_lynis = os.environ.get("KEEL_HARDENING_REPORT") == "1"  # about 20 min under emulation
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    for stale in ("lynis-after.dat", "lynis-after.log", "figures.json") + (() if with_lynis else ("lynis-before.dat",)):
        (REPORT_DIR / stale).unlink(missing_ok=True)
    if with_lynis:
        lynis = host.run("lynis audit system --quick --no-colors --report-file /root/lynis-after.dat")
        assert lynis.rc == 0, lynis.stderr
        (REPORT_DIR / "lynis-after.dat").write_text(host.file("/root/lynis-after.dat").content_string)
        # the log says which test got how many of its hardening points: what is left to do
        (REPORT_DIR / "lynis-after.log").write_text(host.file("/var/log/lynis.log").content_string)
    ssh_audit = subprocess.run(
        [sys.executable, "-m", "ssh_audit", "--no-colors", "-P", POLICY, "-p", str(instance("vm1")["port"]),
         "127.0.0.1"], capture_output=True, text=True, timeout=300, check=False)
    (REPORT_DIR / "ssh-audit.txt").write_text(ssh_audit.stdout + ssh_audit.stderr)
    ip = host.ansible.get_variables()["keel_private_ip"]
    entries = []
    for sock in _listening(host):
        reach = {"lab host 10.213.250.1": _probe(ip, sock["port"])} if sock["proto"] == "tcp" else {}
        entries.append({**sock, "reachable_from": reach})
    (REPORT_DIR / "ports.json").write_text(json.dumps({name(host): entries}, indent=2) + "\n")
    res = subprocess.run([sys.executable, str(PROJECT / "scripts" / "hardening_report.py"), str(REPORT_DIR),
                          "--out", str(PROJECT / "reports" / "hardening-report.md")],
                         capture_output=True, text=True, timeout=60, check=False)
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert ssh_audit.returncode == 0, ssh_audit.stdout
    figures = json.loads((REPORT_DIR / "figures.json").read_text())
    assert not figures["unexpected_exposure"], figures["unexpected_exposure"]
    assert any(e["port"] == 22 for e in entries), entries  # sshd listens: the probe had something to find
    if with_lynis:
        assert figures["lynis_after"] > figures["lynis_before"], figures
