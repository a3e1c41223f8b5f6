#!/bin/sh
# Cloud-style first boot for keel VMs (a small NoCloud stand-in written for this
# project). The seed is a JSON document on the second virtio disk (/dev/vdb),
# written by scripts/vm.py for each VM. Applied once per instance id: hostname,
# private NIC address, SSH key of the default user, fresh SSH host keys.
set -eu
[ -b /dev/vdb ] || exit 0
state=/var/lib/keel-firstboot
mkdir -p "$state"
# One interpreter start (slow under emulation) turns the seed into shell variables.
head -c 65536 /dev/vdb | tr -d '\000' | python3 -c '
import json, shlex, sys
seed = json.load(sys.stdin)
for key in ("instance_id", "hostname", "private_cidr", "user"):
    print(f"{key}={shlex.quote(seed[key])}")
print("keys=" + shlex.quote("\n".join(seed["authorized_keys"])))
' > "$state/seed.env"
. "$state/seed.env"
[ "$(cat "$state/instance-id" 2>/dev/null)" = "$instance_id" ] && exit 0
echo "$hostname" > /etc/hostname
hostname "$hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$hostname" > /etc/hosts
cat > /etc/systemd/network/20-private.network <<NET
[Match]
Name=eth1

[Network]
Address=$private_cidr
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
printf '%s\n' "$keys" > "$home/.ssh/authorized_keys"
chown "$user:$user" "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
ssh-keygen -q -t ecdsa -N '' -f /etc/ssh/ssh_host_ecdsa_key
ssh-keygen -q -t rsa -b 3072 -N '' -f /etc/ssh/ssh_host_rsa_key
echo "$instance_id" > "$state/instance-id"
