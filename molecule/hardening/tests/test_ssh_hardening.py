"""Behaviour of the ssh_hardening role on Debian 12 (osh12) and 13 (osh13) containers (scenario `hardening`).

Every login test goes over the network from the controller to the container's address
with the real ssh client, so what is checked is what sshd does, not what a file says.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from cases import host_for_case

KEYS = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "keys"
SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
DROPIN = "/etc/ssh/sshd_config.d/00-keel-hardening.conf"
POLICY = "Hardened Debian 12 (version 2)"

KEX = [
    "sntrup761x25519-sha512@openssh.com", "curve25519-sha256", "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512", "diffie-hellman-group-exchange-sha256",
]
CIPHERS = [
    "chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes256-ctr", "aes192-ctr",
    "aes128-gcm@openssh.com", "aes128-ctr",
]
MACS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "umac-128-etm@openssh.com"]
HOST_KEY_ALGORITHMS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]
# Pseudo-algorithms the server adds to its KEXINIT by itself (strict KEX, RFC 8308).
KEX_MARKERS = {"kex-strict-s-v00@openssh.com", "ext-info-s"}


def name(host) -> str:
    return host.ansible.get_variables()["inventory_hostname"]


def address(host) -> str:
    return host.ansible.get_variables()["keel_private_ip"]


def ssh(host, user: str, command: str = "true", key: str | None = "admin", options: list[str] | None = None,
        env: dict | None = None, log_level: str = "ERROR") -> subprocess.CompletedProcess:
    argv = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10", "-o", f"LogLevel={log_level}"]
    if key:
        argv += ["-i", str(KEYS / key), "-o", "IdentitiesOnly=yes"]
    argv += options if options is not None else ["-o", "BatchMode=yes"]
    return subprocess.run([*argv, f"{user}@{address(host)}", command], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)


def effective(host) -> dict[str, list[str]]:
    """sshd -T: every keyword with all its values (some keywords repeat)."""
    values: dict[str, list[str]] = {}
    for line in host.check_output("sshd -T").splitlines():
        keyword, _, value = line.partition(" ")
        values.setdefault(keyword, []).append(value)
    return values


def main_pid(host) -> str:
    return host.check_output("systemctl show --property=MainPID --value ssh")


def journal_since(host, since: float, pattern: str, timeout: float = 15) -> str:
    """Wait until the journal has a line matching pattern after since; return the matching lines."""
    deadline = time.monotonic() + timeout
    found = ""
    while time.monotonic() < deadline:
        out = host.run("journalctl --no-pager -o cat --since @%s", str(int(since))).stdout
        found = "\n".join(line for line in out.splitlines() if re.search(pattern, line))
        if found:
            return found
        time.sleep(1)
    return found


# ---------------------------------------------------------------- configuration in effect
def test_sshd_installed_and_running(host):
    assert host.package("openssh-server").is_installed
    ssh_service = host.service("ssh")
    assert ssh_service.is_running
    assert ssh_service.is_enabled
    assert host.socket("tcp://0.0.0.0:22").is_listening


def test_effective_authentication_settings(host):
    cfg = effective(host)
    assert cfg["passwordauthentication"] == ["no"]
    assert cfg["kbdinteractiveauthentication"] == ["no"]
    assert cfg["pubkeyauthentication"] == ["yes"]
    assert cfg["authenticationmethods"] == ["publickey"]
    assert cfg["permitrootlogin"] == ["no"]
    assert cfg["permitemptypasswords"] == ["no"]
    assert sorted(cfg["allowgroups"]) == ["admins", "ssh-users"]


def test_effective_limits_and_session_settings(host):
    cfg = effective(host)
    assert cfg["maxauthtries"] == ["2"]  # side_effect.yml changed it from 3
    assert cfg["logingracetime"] == ["60"]
    assert cfg["maxsessions"] == ["2"]
    assert cfg["maxstartups"] == ["10:30:60"]
    assert cfg["clientaliveinterval"] == ["300"]
    assert cfg["clientalivecountmax"] == ["2"]
    assert cfg["tcpkeepalive"] == ["no"] and cfg["compression"] == ["no"]
    for keyword in ("x11forwarding", "allowagentforwarding", "allowtcpforwarding", "permituserenvironment",
                    "usedns", "permittunnel"):
        assert cfg[keyword] == ["no"], keyword
    assert cfg["disableforwarding"] == ["yes"]
    assert cfg["loglevel"] == ["VERBOSE"]
    assert cfg["banner"] == ["/etc/issue.net"]


def test_effective_algorithms(host):
    cfg = effective(host)
    assert cfg["kexalgorithms"] == [",".join(KEX)]
    assert cfg["ciphers"] == [",".join(CIPHERS)]
    assert cfg["macs"] == [",".join(MACS)]
    assert cfg["hostkeyalgorithms"] == [",".join(HOST_KEY_ALGORITHMS)]
    assert "ecdsa" not in cfg["pubkeyacceptedalgorithms"][0]
    assert cfg["hostkey"] == ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key"]


def test_server_offers_only_the_hardened_algorithms(host):
    """What the server really proposes on the wire (its KEXINIT, as the client logs it)."""
    res = ssh(host, "alice", log_level="DEBUG2")
    assert res.returncode == 0, res.stderr[-2000:]
    proposal = res.stderr.split("peer server KEXINIT proposal", 1)[1]

    def offered(label: str) -> list[str]:
        match = re.search(rf"^debug2: {label}: (.*)$", proposal, re.M)
        assert match, f"no '{label}' in the server proposal"
        return match.group(1).split(",")

    assert [a for a in offered("KEX algorithms") if a not in KEX_MARKERS] == KEX
    assert offered("host key algorithms") == HOST_KEY_ALGORITHMS
    assert offered("ciphers ctos") == CIPHERS
    assert offered("MACs ctos") == MACS


def test_cloud_init_dropin_does_not_win(host):
    """prepare.yml's 50-cloud-init.conf turns passwords and root on; the 00- drop-in is read first."""
    cloud = host.file("/etc/ssh/sshd_config.d/50-cloud-init.conf")
    assert cloud.exists
    assert "PasswordAuthentication yes" in cloud.content_string
    cfg = effective(host)
    assert cfg["passwordauthentication"] == ["no"]
    assert cfg["permitrootlogin"] == ["no"]


def test_main_config_untouched_and_includes_dropins(host):
    main = host.file("/etc/ssh/sshd_config")
    assert re.search(r"^Include /etc/ssh/sshd_config\.d/\*\.conf$", main.content_string, re.M)
    # the distribution's file is not rewritten (it still equals the packaged one), only made root-only (CIS 5.1.1)
    if host.file("/usr/share/openssh/sshd_config").exists:
        assert host.run("cmp -s /etc/ssh/sshd_config /usr/share/openssh/sshd_config").rc == 0
    assert "Ansible managed" not in main.content_string
    assert main.mode == 0o600
    dropin = host.file(DROPIN)
    assert dropin.user == "root"
    assert dropin.mode == 0o600


def test_host_keys(host):
    rsa = host.check_output("ssh-keygen -l -f /etc/ssh/ssh_host_rsa_key.pub")
    assert rsa.split()[0] == "4096", rsa
    ed25519 = host.check_output("ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub")
    assert ed25519.endswith("(ED25519)"), ed25519
    for path in ("/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ed25519_key"):
        assert host.file(path).mode == 0o600
        assert host.file(path).user == "root"


def test_moduli_has_only_large_groups(host):
    weak = host.check_output("awk '$1 !~ /^#/ && NF >= 7 && $5 < 3071' /etc/ssh/moduli | wc -l")
    strong = host.check_output("awk '$1 !~ /^#/ && NF >= 7 && $5 >= 3071' /etc/ssh/moduli | wc -l")
    assert int(weak) == 0
    assert int(strong) > 0
    # the original is kept (replace's backup: moduli.<timestamp>~) and had small groups
    backups = host.check_output("ls /etc/ssh/ | grep -E '^moduli\\..*~$' || true").split()
    assert backups, "no backup of /etc/ssh/moduli"
    old_weak = host.check_output(f"awk '$1 !~ /^#/ && NF >= 7 && $5 < 3071' '/etc/ssh/{backups[0]}' | wc -l")
    assert int(old_weak) > 0


# ---------------------------------------------------------------- who can log in
def test_admin_logs_in_with_key(host):
    res = ssh(host, "alice", "id -un; id -Gn")
    assert res.returncode == 0, res.stderr
    user, groups = res.stdout.splitlines()
    assert user == "alice"
    assert "ssh-users" in groups.split()


def test_admin_has_no_password_and_no_password_ageing(host):
    shadow = host.check_output("getent shadow alice").split(":")
    assert shadow[1] == "*"
    assert shadow[4] == ""  # no maximum password age: ageing can never lock a key-only admin out


def test_banner_shown_before_login(host):
    res = ssh(host, "alice", log_level="INFO")
    assert res.returncode == 0, res.stderr
    assert "Authorised access only" in res.stderr


def test_password_login_refused(host, tmp_path):
    """carol has a valid password and an allowed group; the server must not even offer passwords."""
    marker = tmp_path / "askpass-called"
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {marker}\necho keel-test-password\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    res = ssh(host, "carol", key=None, env=env,
              options=["-o", "PreferredAuthentications=password,keyboard-interactive",
                       "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"])
    assert res.returncode == 255, res.stdout + res.stderr
    assert "Permission denied (publickey)" in res.stderr, res.stderr
    assert not marker.exists(), "the client was asked for a password: the server offered password logins"


def test_root_login_refused(host):
    """root has the admin key and is in ssh-users (prepare.yml): only PermitRootLogin no stops it."""
    since = time.time() - 1
    res = ssh(host, "root")
    assert res.returncode == 255, res.stdout
    assert "Permission denied" in res.stderr
    assert journal_since(host, since, r"ROOT LOGIN REFUSED"), "sshd did not log a refused root login"


def test_user_outside_login_groups_refused(host):
    since = time.time() - 1
    res = ssh(host, "mallory", key="user")
    assert res.returncode == 255, res.stdout
    assert "Permission denied" in res.stderr
    assert journal_since(host, since, r"mallory.*not allowed because none of user's groups are listed in AllowGroups")


def test_wrong_key_refused(host):
    res = ssh(host, "alice", key="user")
    assert res.returncode == 255
    assert "Permission denied" in res.stderr


# ---------------------------------------------------------------- reloads
def test_side_effect_reloaded_the_running_daemon(host):
    """side_effect.yml added VersionAddendum: only a reloaded daemon announces it."""
    with socket.create_connection((address(host), 22), timeout=10) as conn:
        ident = conn.makefile("rb").readline().decode().strip()
    assert ident.startswith("SSH-2.0-OpenSSH_")
    assert ident.endswith("keel-side-effect"), ident


def test_reload_keeps_open_sessions_and_pid(host):
    before = main_pid(host)
    session = subprocess.Popen(
        ["ssh", "-i", str(KEYS / "admin"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
         f"alice@{address(host)}", "echo started; sleep 6; echo still-here"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        assert session.stdout.readline().strip() == "started"
        assert host.run("systemctl reload ssh").rc == 0
        out, err = session.communicate(timeout=30)
    finally:
        session.kill()
    assert session.returncode == 0, err
    assert out.strip() == "still-here"
    assert main_pid(host) == before
    assert ssh(host, "alice").returncode == 0  # and new logins work after the reload


# ---------------------------------------------------------------- ssh-audit
def test_ssh_audit_hardened_debian12_policy(host):
    if name(host) != "osh12":
        pytest.skip(f"'{POLICY}' describes Debian 12's OpenSSH 9.2; this host runs Debian 13")
    if importlib.util.find_spec("ssh_audit") is None:
        pytest.skip("ssh-audit is not installed in the test environment (PyPI package ssh-audit): policy scan not run")
    res = subprocess.run(
        [sys.executable, "-m", "ssh_audit", "--no-colors", "-P", POLICY, address(host)],
        capture_output=True, text=True, timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Passed" in res.stdout, res.stdout


# ---------------------------------------------------------------- bad input
SNAPSHOT = (
    "{ getent passwd; getent group; getent shadow | cut -d: -f1,2,5;"
    " find /etc/ssh -xdev -printf '%p %s %m %T@\\n' | LC_ALL=C sort;"
    " sha256sum /etc/ssh/sshd_config /etc/ssh/sshd_config.d/*.conf /etc/ssh/moduli; } | sha256sum"
)
BAD_INPUTS = {
    # sshd rejects the value: validation stops the run before the live file changes
    "broken_extra_option": ({"ssh_hardening_extra_options": {"PerSourceMaxStartups": "banana"}},
                            ["sshd validation failed", "PerSourceMaxStartups"]),
    # valid alone, invalid with Debian's sshd_config (which defines sftp): only the
    # in-context check sees it
    "conflicts_with_main_config": ({"ssh_hardening_extra_options": {"Subsystem": "sftp internal-sftp"}},
                                   ["sshd validation failed", "Subsystem 'sftp' already defined"]),
    "no_admin_key": ({"ssh_hardening_admin_users": []},
                     ["no admin in ssh_hardening_admin_users has an SSH key"]),
    "unsupported_algorithm": (
        {"ssh_hardening_ciphers": ["chacha20-poly1305@openssh.com", "arcfour256"]},
        ["ssh_hardening_ciphers names algorithms this host's OpenSSH does not support: arcfour256"],
    ),
    "match_block": ({"ssh_hardening_extra_options": {"Match": "User alice"}},
                    ["ssh_hardening_extra_options: 'Match' cannot be used"]),
}


# Cases caught by the role's preflight (tagged always, first in the role) run the
# preflights only; the sshd -t cases need the whole converge (validation happens
# when the candidate drop-in is written), which also shows a full run stops there.
PREFLIGHT_CASES = {"no_admin_key", "unsupported_algorithm", "match_block"}
DEBIAN12_ONLY = {"conflicts_with_main_config"}
PREFLIGHT_ONLY = ("--tags", "keel_no_such_tag")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_rejected_before_any_change(host, case, tmp_path):
    """Each case on one host, osh12 and osh13 in turn (molecule/resources/cases.py), except
    the in-context case: Debian 13's OpenSSH accepts a second sftp Subsystem line (seen: that
    converge went through), so its premise holds on Debian 12 only."""
    runs_on = "osh12" if case in DEBIAN12_ONLY else host_for_case(BAD_INPUTS, case, ("osh12", "osh13"))
    if name(host) != runs_on:
        pytest.skip(f"run once, on {runs_on}")
    overrides, messages = BAD_INPUTS[case]
    extra_file = tmp_path / "extra.json"
    extra_file.write_text(json.dumps({"keel_test_side_effect": True, **overrides}))  # the state verify sees
    before = host.check_output(SNAPSHOT)
    dropin_before = host.check_output(f"sha256sum {DROPIN}")
    pid_before = main_pid(host)
    res = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(SCENARIO / "converge.yml"),
         "--limit", runs_on, "-e", f"@{extra_file}", *(PREFLIGHT_ONLY if case in PREFLIGHT_CASES else ())],
        capture_output=True, text=True, timeout=600,
    )
    output = " ".join((res.stdout + res.stderr).split())
    assert res.returncode != 0, output[-3000:]
    for message in messages:
        assert message in output, output[-3000:]
    assert "changed=0" in res.stdout  # the recap: nothing changed
    assert host.check_output(f"sha256sum {DROPIN}") == dropin_before
    assert host.check_output(SNAPSHOT) == before
    assert main_pid(host) == pid_before  # never restarted or reloaded
    assert host.service("ssh").is_running
    login = ssh(host, "alice", "id -un")
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == "alice"
