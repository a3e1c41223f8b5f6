"""Behaviour of the os_hardening role (after ssh_hardening) on Debian 12 and 13 containers.

Logins go over the network with the real ssh client; sudo, su and login go through the
real PAM stacks the role changed (pam-auth-update profiles). Controls that need the
host's own kernel are skipped in containers and checked by the VM scenario.
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

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from cases import host_for_case

KEYS = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "keys"
SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
PASSWORD = "keel-test-password"  # noqa: S105  test account carol's, set in prepare.yml
SYSCTL_FILE = "/etc/sysctl.d/99-zz-keel-hardening.conf"


def name(host) -> str:
    return host.ansible.get_variables()["inventory_hostname"]


def address(host) -> str:
    return host.ansible.get_variables()["keel_private_ip"]


def ssh(host, user: str, command: str = "true", key: str = "admin") -> subprocess.CompletedProcess:
    argv = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-i", str(KEYS / key), "-o", "IdentitiesOnly=yes", f"{user}@{address(host)}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


# su on a pseudo-terminal (su flushes what was typed before its prompt): the helper
# script is sent to the host and run there with python3 -c.
SU_ON_A_TERMINAL = (Path(__file__).resolve().parents[2] / "resources" / "su_on_a_terminal.py").read_text()


def su(host, user: str, target: str, password: str):
    """user runs su -c 'id -un' target and types password at the prompt."""
    return host.run(f"runuser -u {user} -- python3 -c {shlex.quote(SU_ON_A_TERMINAL)} {target} {shlex.quote(password)}")


def pamtester(host, service: str, user: str, password: str, *ops: str):
    operations = " ".join(ops or ("authenticate", "acct_mgmt", "open_session", "close_session"))
    return host.run(f"printf '%s\\n' {shlex.quote(password)} | pamtester {service} {user} {operations}")


def pam(host, stack: str) -> list[str]:
    lines = host.file(f"/etc/pam.d/{stack}").content_string.splitlines()
    return [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def index_of(lines: list[str], needle: str) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


# ---------------------------------------------------------------- packages and files
def test_packages(host):
    for package in ("aide", "auditd", "libpam-pwquality", "apparmor", "libpam-tmpdir", "debsums", "needrestart",
                    "acct"):
        assert host.package(package).is_installed, package
    assert not host.package("telnet").is_installed  # installed by prepare.yml, purged by the role


def test_kernel_parameters_file(host):
    f = host.file(SYSCTL_FILE)
    assert f.user == "root" and f.mode == 0o644
    values = dict(line.split(" = ") for line in f.content_string.splitlines() if " = " in line)
    assert values["net.ipv4.tcp_syncookies"] == "1"
    assert values["net.ipv4.conf.all.accept_redirects"] == "0"
    assert values["kernel.kptr_restrict"] == "2"
    assert values["kernel.yama.ptrace_scope"] == "1"
    assert values["fs.suid_dumpable"] == "0"
    assert len(values) >= 40


def test_unused_modules_cannot_load(host):
    text = host.file("/etc/modprobe.d/keel-disabled-modules.conf").content_string
    for module in ("cramfs", "squashfs", "udf", "usb-storage", "firewire-core", "dccp", "sctp", "rds", "tipc"):
        assert f"install {module} /bin/false" in text
        assert f"blacklist {module}" in text


@pytest.mark.parametrize("path,mode,group", [
    ("/etc/crontab", 0o600, "root"), ("/etc/cron.d", 0o700, "root"), ("/etc/cron.daily", 0o700, "root"),
    ("/etc/ssh/sshd_config", 0o600, "root"), ("/etc/sudoers", 0o440, "root"),
    ("/etc/sudoers.d", 0o750, "root"), ("/etc/shadow", 0o640, "shadow"), ("/etc/cron.allow", 0o600, "root"),
])
def test_permissions(host, path, mode, group):
    f = host.file(path)
    assert f.exists
    assert (f.mode, f.user, f.group) == (mode, "root", group)


def test_only_root_may_use_cron_and_at(host):
    assert host.file("/etc/cron.allow").content_string == "root\n"
    assert host.file("/etc/at.allow").content_string == "root\n"
    assert not host.file("/etc/cron.deny").exists
    refused = host.run("runuser -u carol -- crontab -l")
    assert refused.rc != 0
    assert "not allowed" in (refused.stderr + refused.stdout)


def test_banner(host):
    assert "Authorised access only" in host.file("/etc/issue").content_string
    assert host.file("/etc/issue.net").content_string.strip()  # ssh_hardening's, left alone


# ---------------------------------------------------------------- sessions
def test_core_dumps_off_in_login_sessions(host):
    login = ssh(host, "alice", "ulimit -Hc")
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == "0"
    assert "Storage=none" in host.file("/etc/systemd/coredump.conf.d/keel.conf").content_string
    shell = ssh(host, "alice", "bash -lc 'ulimit -Sc'")  # /etc/profile.d/keel-coredump.sh
    assert shell.stdout.strip() == "0", shell.stdout + shell.stderr


def test_each_login_gets_a_private_tmpdir(host):
    assert any("pam_tmpdir.so" in line for line in pam(host, "common-session"))
    login = ssh(host, "alice", "echo $TMPDIR; stat -c '%U %a' $TMPDIR")
    uid = host.user("alice").uid
    assert login.stdout.split() == [f"/tmp/user/{uid}", "alice", "700"], login.stdout + login.stderr


def test_needrestart_lists_and_never_restarts(host):
    conf = host.file("/etc/needrestart/conf.d/50-keel.conf").content_string
    assert "$nrconf{restart} = 'l';" in conf
    # batch mode prints what it would do; with 'l' it restarts nothing (NEEDRESTART-SVC lines are a list)
    run = host.run("needrestart -b")
    assert run.rc == 0, run.stderr


def test_session_umask_and_idle_timeout(host):
    # side_effect.yml changed the umask from 027 to 077: pam_umask gives it to every session
    login = ssh(host, "alice", "umask; rm -f ~/probe; touch ~/probe; stat -c %a ~/probe")
    assert login.returncode == 0, login.stderr
    assert login.stdout.split() == ["0077", "600"]
    shell = ssh(host, "alice", "bash -lc 'echo $TMOUT; readonly -p | grep -c TMOUT'")
    assert shell.stdout.split() == ["900", "1"], shell.stdout + shell.stderr


# ---------------------------------------------------------------- accounts
def test_login_defs(host):
    text = host.file("/etc/login.defs").content_string
    settings = dict(line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
                    and len(line.split()) == 2)
    ageing = [settings[f"PASS_{what}"] for what in ("MAX_DAYS", "MIN_DAYS", "WARN_AGE")]
    assert ageing == ["180", "1", "7"]  # 180: side_effect.yml's value
    assert settings["UMASK"] == "077"
    assert settings["ENCRYPT_METHOD"] == "YESCRYPT"
    assert settings["SHA_CRYPT_MIN_ROUNDS"] == settings["SHA_CRYPT_MAX_ROUNDS"] == "65536"
    assert "INACTIVE=45" in host.file("/etc/default/useradd").content_string.splitlines()


def test_existing_account_with_a_password_is_aged(host):
    fields = host.check_output("getent shadow carol").split(":")
    assert fields[3:7] == ["1", "180", "7", "45"]


def test_key_only_accounts_are_not_aged(host):
    for user in ("alice", "dave"):
        fields = host.check_output(f"getent shadow {user}").split(":")
        assert not fields[1].startswith("$"), user
    assert host.check_output("getent shadow alice").split(":")[4] in ("", "-1", "99999")
    assert host.check_output("getent shadow dave").split(":")[4] == "365"  # aged by prepare.yml, left alone


def test_account_with_an_empty_password_is_locked(host):
    assert host.check_output("getent shadow eve").split(":")[1].startswith("!")
    assert pamtester(host, "login", "eve", "").rc != 0


def test_key_only_admin_with_a_400_day_old_password_still_logs_in(host):
    host.check_output("chage -d \"$(date -d '400 days ago' +%F)\" alice")
    try:
        login = ssh(host, "alice", "id -un; sudo -n id -u")
        assert login.returncode == 0, login.stderr
        assert login.stdout.split() == ["alice", "0"]
    finally:
        host.check_output("chage -d \"$(date +%F)\" alice")


def test_an_aged_key_only_account_is_locked_out_which_is_why_the_role_never_ages_them(host):
    # The counter-proof: dave, aged by hand to 365 days, cannot log in with his key once
    # his (unusable) password is 400 days old.
    host.check_output("chage -d \"$(date -d '400 days ago' +%F)\" dave")
    try:
        refused = ssh(host, "dave", "id -un", key="aged")
        assert refused.returncode != 0
        assert "dave" not in refused.stdout
    finally:
        host.check_output("chage -d \"$(date +%F)\" dave")
    assert ssh(host, "dave", "id -un", key="aged").stdout.strip() == "dave"


# ---------------------------------------------------------------- PAM: sudo, su, login still work
def test_pam_stacks_in_the_expected_order(host):
    auth = pam(host, "common-auth")
    assert index_of(auth, "pam_faillock.so preauth") < index_of(auth, "pam_unix.so")
    assert index_of(auth, "pam_unix.so") < index_of(auth, "pam_faillock.so authfail") < index_of(auth, "pam_deny.so")
    assert any("pam_faillock.so" in line for line in pam(host, "common-account"))
    password = pam(host, "common-password")
    assert (index_of(password, "pam_pwquality.so") < index_of(password, "pam_pwhistory.so remember=5")
            < index_of(password, "pam_unix.so"))
    assert any("pam_umask.so" in line for line in pam(host, "common-session"))


def test_sudo_works_with_a_key_only_admin_and_with_a_password(host):
    admin = ssh(host, "alice", "sudo -n id -u")
    assert admin.returncode == 0 and admin.stdout.strip() == "0", admin.stderr
    with_password = host.run(f"printf '%s\\n' {PASSWORD} | runuser -u carol -- sudo -S -k id -u")
    assert with_password.rc == 0, with_password.stderr
    assert with_password.stdout.strip() == "0"
    wrong = host.run("printf 'nope\\n' | runuser -u carol -- sudo -S -k id -u")
    assert wrong.rc != 0
    host.run("faillock --user carol --reset")


def test_sudo_runs_commands_on_a_pty_and_logs_them_to_its_file(host):
    """CIS 5.2.2 and 5.2.3: use_pty, and a sudo log file (auditd watches it: 6.2.3.3)."""
    dropin = host.file("/etc/sudoers.d/50-keel-hardening")
    assert dropin.mode == 0o440 and dropin.user == "root"
    assert "Defaults use_pty" in dropin.content_string
    assert host.run("visudo -c").rc == 0
    marker = f"keel-sudo-{time.time_ns()}"
    admin = ssh(host, "alice", f"sudo -n /bin/echo {marker}")
    assert admin.returncode == 0, admin.stderr
    log = host.file("/var/log/sudo.log")
    assert log.user == "root" and not log.mode & 0o007
    assert any("alice" in line and f"COMMAND=/bin/echo {marker}" in line
               for line in host.check_output("cat /var/log/sudo.log").splitlines())
    # rotated: logrotate accepts the role's file and picks the log up (dry run)
    rotate = host.run("logrotate --debug /etc/logrotate.d/keel-sudo")
    assert rotate.rc == 0, rotate.stderr
    assert "considering log /var/log/sudo.log" in rotate.stdout + rotate.stderr


def test_su_works_with_the_right_password_only(host):
    host.run("faillock --user carol --reset")
    ok = su(host, "alice", "carol", PASSWORD)
    assert ok.rc == 0, ok.stdout + ok.stderr
    assert ok.stdout.split()[-1] == "carol"
    wrong = su(host, "alice", "carol", "not-the-password")
    assert wrong.rc != 0
    assert "carol" not in wrong.stdout.split()
    assert "su: " in wrong.stdout  # "Authentication failure" or, after pam_faillock's authfail, "Permission denied"
    host.run("faillock --user carol --reset")


def test_login_service_works(host):
    res = pamtester(host, "login", "carol", PASSWORD)
    assert res.rc == 0, res.stdout + res.stderr
    assert "successfully" in res.stdout + res.stderr


def test_failed_logins_lock_the_account_until_reset(host):
    host.run("faillock --user carol --reset")
    try:
        for _ in range(5):
            assert pamtester(host, "login", "carol", "wrong", "authenticate").rc != 0
        assert len(host.check_output("faillock --user carol").splitlines()) >= 6  # header + 5 failures
        locked = pamtester(host, "login", "carol", PASSWORD, "authenticate")
        assert locked.rc != 0  # the right password no longer opens a locked account
    finally:
        host.run("faillock --user carol --reset")
    assert pamtester(host, "login", "carol", PASSWORD).rc == 0


def test_password_quality(host):
    weak = host.run("printf 'password1\\n' | pwscore")
    assert weak.rc != 0
    short = host.run("printf 'Sh0rt!pw\\n' | pwscore")
    assert short.rc != 0  # under 14 characters
    strong = host.run("printf 'Tr4vel-Quiet-Lamp-92\\n' | pwscore")
    assert strong.rc == 0, strong.stderr


# ---------------------------------------------------------------- audit and integrity
def test_audit_rules_written_and_made_immutable(host):
    rules = host.file("/etc/audit/rules.d/50-keel.rules").content_string
    for key in ("identity", "time-change", "scope", "logins", "session", "perm_mod", "access", "mounts",
                "kernel_modules", "MAC-policy", "user_emulation", "privileged"):
        assert f"-k {key}" in rules, key
    assert "-w /etc/sudoers -p wa -k scope" in rules
    assert "-w /var/log/sudo.log -p wa -k sudo_log_file" in rules
    # set-uid programs found on this host are audited as privileged commands
    assert "-a always,exit -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=unset -k privileged" in rules
    assert "-a always,exit -F path=/usr/bin/su -F perm=x" in rules
    assert host.file("/etc/audit/rules.d/99-keel-finalize.rules").content_string.strip().endswith("-e 2")
    conf = host.file("/etc/audit/auditd.conf").content_string
    assert "max_log_file_action = ROTATE" in conf


def test_auditd_is_off_in_a_container(host):
    # the kernel's audit system belongs to the container host; the VM scenario runs auditd
    auditd = host.service("auditd")
    assert not auditd.is_running
    assert not auditd.is_enabled


def test_process_accounting_is_off_in_a_container(host):
    # accton needs CAP_SYS_PACCT, which a container lacks; the VM scenario runs it. Like
    # auditd's, the package's own start at install time fails here and stays listed.
    acct = host.service("acct")
    assert not acct.is_running and not acct.is_enabled


def test_aide_baseline_exists_and_sees_a_change(host):
    db = host.file("/var/lib/aide/aide.db")
    assert db.exists and db.user == "root" and db.size > 0
    host.check_output("echo probe > /etc/keel-aide-probe")
    try:
        check = host.run("aide --config /etc/aide/aide.conf --check --limit /etc/keel-aide-probe")
        assert check.rc != 0  # aide's exit code says something differs from the baseline
        assert "/etc/keel-aide-probe" in check.stdout
    finally:
        host.check_output("rm -f /etc/keel-aide-probe")
    unchanged = host.run("aide --config /etc/aide/aide.conf --check --limit /etc/hostname")
    assert unchanged.rc == 0, unchanged.stdout
    assert host.service("cron").is_enabled
    assert "Checksums = sha512" in host.file("/etc/aide/aide.conf").content_string.splitlines()


def test_aides_daily_check_reports_to_the_journal_and_node_exporter(host):
    """Security review M6: Debian's daily job mailed root (no mailer here), so a detected change
    reached nobody. keel's timer runs the check; its counts go to node_exporter's textfile
    collector (alerts KeelFileIntegrity*), AIDE's report to the journal (Loki)."""
    timer = host.service("keel-aide-check.timer")
    assert timer.is_enabled and timer.is_running
    assert "CRON_DAILY_RUN=no" in host.file("/etc/default/aide").content_string.splitlines()
    textfile = "/var/lib/node_exporter/textfile"
    host.check_output(f"mkdir -p {textfile} && echo probe > /opt/keel-m6-probe")
    try:
        host.check_output("systemctl start keel-aide-check.service")  # oneshot: returns when done
        metrics = host.file(f"{textfile}/keel_aide.prom").content_string
        assert "keel_aide_last_check_success 1" in metrics, metrics
        added = int(re.search(r'keel_aide_entries\{change="added"\} (\d+)', metrics).group(1))
        assert added >= 1, metrics
        journal = host.check_output("journalctl -u keel-aide-check --no-pager -o cat")
        assert "/opt/keel-m6-probe" in journal and "keel-aide-check: checked:" in journal
    finally:
        host.check_output(f"rm -f /opt/keel-m6-probe {textfile}/keel_aide.prom")


def test_aide_excludes_whole_directories_and_watches_keels_programs(host):
    """Security review H2: "!/opt/keel" was a prefix regex, so /opt/keel-app (the internet-facing
    app's code) and every keel binary were outside file-integrity monitoring."""
    excludes = host.file("/etc/aide/aide.conf.d/99_keel_exclude").content_string
    assert "!/var/lib/keel(/|$)" in excludes and "/opt/keel" not in excludes, excludes
    host.check_output("mkdir -p /opt/keel-app-probe /opt/keel/probe /var/lib/keel /var/lib/keel-other-probe && "
                      "echo x > /opt/keel-app-probe/code.py && echo x > /opt/keel/probe/bin && "
                      "echo x > /var/lib/keel/state-probe && echo x > /var/lib/keel-other-probe/f")
    try:
        for watched in ("/opt/keel-app-probe/code.py", "/opt/keel/probe/bin", "/var/lib/keel-other-probe/f"):
            seen = host.run(f"aide --config /etc/aide/aide.conf --check --limit {watched}")
            assert seen.rc != 0 and watched in seen.stdout, (watched, seen.stdout)
        ignored = host.run("aide --config /etc/aide/aide.conf --check --limit /var/lib/keel/")
        assert ignored.rc == 0, ignored.stdout
    finally:
        host.check_output("rm -rf /opt/keel-app-probe /opt/keel/probe /var/lib/keel/state-probe "
                          "/var/lib/keel-other-probe")


# ---------------------------------------------------------------- inputs
def case_host(case: str) -> str:
    """The host a bad-input case runs on: osh12 and osh13 in turn, so each release sees half
    the cases (molecule/resources/cases.py)."""
    return host_for_case(BAD_INPUTS, case, ("osh12", "osh13"))


def _run_converge(extra: dict, tmp_path: Path, *args: str,
                  limit: str = "osh12") -> tuple[subprocess.CompletedProcess, str]:
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps({"keel_test_side_effect": True, **extra}))  # the state verify sees
    res = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "converge.yml"),
         "--limit", limit, "-e", f"@{extra_file}", *args],
        capture_output=True, text=True, timeout=900,
    )
    return res, " ".join((res.stdout + res.stderr).split())


def test_controls_skipped_in_a_container_are_reported_with_their_reason(host, tmp_path):
    if name(host) != "osh12":
        pytest.skip("run once, on osh12")
    playbook = tmp_path / "preflight.yml"
    playbook.write_text("- hosts: osh12\n  roles: [os_hardening]\n")
    res = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook),
         "--tags", "keel_no_such_tag"],  # only the preflight (tagged always) runs
        capture_output=True, text=True, timeout=600,
    )
    output = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 0, output[-3000:]
    for control in ("sysctl", "modules", "mounts", "auditd", "apparmor", "acct"):
        assert f"skipped in a container: {control}:" in output, control


SNAPSHOT = (
    "{ getent passwd; getent group; getent shadow;"
    " find /etc -xdev -printf '%p %s %m %T@\\n' | LC_ALL=C sort; } | sha256sum"
)
BAD_INPUTS = {
    "umask_as_a_number": ({"os_hardening_umask": 27}, ["os_hardening_umask must be an octal string"]),
    "umask_leaving_others_write": ({"os_hardening_umask": "020"}, ["os_hardening_umask must be an octal string"]),
    # (a parameter the kernel does not have is refused on hosts with their own kernel: VM)
    "malformed_kernel_parameter": ({"os_hardening_sysctl_extra": {"net.ipv4.tcp syncookies": 1}},
                                   ["sysctl 'net.ipv4.tcp syncookies' = '1' is not a parameter name"]),
    "min_days_above_max_days": ({"os_hardening_password_min_days": 400},
                                ["must be below os_hardening_password_max_days"]),
    "audit_rule_that_disables_auditing": ({"os_hardening_audit_rules_extra": ["-e 0"]},
                                          ["os_hardening_audit_rules_extra must be one auditctl rule"]),
    "kernel_parameter_with_a_space": ({"os_hardening_kernel_cmdline": ["audit=1 quiet"]},
                                      ["os_hardening_kernel_cmdline takes kernel parameters"]),
    "sudo_log_outside_var_log": ({"os_hardening_sudo_logfile": "/etc/sudo.log"},
                                 ["os_hardening_sudo_logfile must be a file under /var/log/"]),
    "aide_schedule_in_words": ({"os_hardening_aide_check_schedule": "every day"},
                               ["is not a calendar expression systemd understands"]),
}


# Every case is caught by the role's preflight (tagged always, first in the role).
# One case runs the whole converge to show the preflight stops a full run before
# anything changes; the others run the preflights only (a full converge of the
# hardening layer costs about a minute per case).
FULL_RUN = "min_days_above_max_days"
PREFLIGHT_ONLY = ("--tags", "keel_no_such_tag")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_rejected_before_any_change(host, case, tmp_path):
    if name(host) != case_host(case):
        pytest.skip(f"run once, on {case_host(case)}")
    overrides, messages = BAD_INPUTS[case]
    before = host.check_output(SNAPSHOT)
    res, output = _run_converge(overrides, tmp_path, *(() if case == FULL_RUN else PREFLIGHT_ONLY), limit=name(host))
    assert res.returncode != 0, output[-3000:]
    for message in messages:
        assert message in output, output[-3000:]
    assert "changed=0" in res.stdout
    assert host.check_output(SNAPSHOT) == before
