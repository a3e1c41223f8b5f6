#!/bin/sh
# Runs inside the debootstrapped tree (chroot) of the keel VM image.
set -eu
suite="$1" mirror="$2" security="$3"
cat > /etc/apt/sources.list.d/debian.sources <<SRC
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
rm -f /etc/apt/sources.list
echo '/dev/vda / ext4 errors=remount-ro 0 1' > /etc/fstab
# Default cloud user, key injected at first boot, passwordless sudo like cloud images.
useradd -m -s /bin/bash -G sudo debian
passwd -l root >/dev/null
passwd -l debian >/dev/null
echo 'debian ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-user
chmod 0440 /etc/sudoers.d/90-cloud-user
# NAT NIC (qemu user networking, eth0 with net.ifnames=0) uses DHCP.
cat > /etc/systemd/network/10-uplink.network <<NET
[Match]
Name=eth0

[Network]
DHCP=ipv4
NET
systemctl enable systemd-networkd.service >/dev/null 2>&1
# Weekly ext4 scrub costs 25 s of boot under emulation and has nothing to check here.
systemctl mask e2scrub_reap.service >/dev/null 2>&1
install -m 0755 /tmp/keel-firstboot.sh /usr/local/sbin/keel-firstboot
cat > /etc/systemd/system/keel-firstboot.service <<UNIT
[Unit]
Description=keel cloud-style first boot (seed on /dev/vdb)
DefaultDependencies=no
After=local-fs.target
Before=systemd-networkd.service ssh.service network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/keel-firstboot
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable keel-firstboot.service >/dev/null 2>&1
rm -f /etc/ssh/ssh_host_* /etc/hostname
: > /etc/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/*
