#!/bin/sh
# Runs inside the debootstrapped tree (chroot) of a systemd test container.
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
# Units that have no business in a container (no consoles, no real disks, no udev).
for unit in getty@tty1.service serial-getty@.service console-getty.service \
  systemd-remount-fs.service sys-kernel-config.mount sys-kernel-debug.mount \
  systemd-udevd.service systemd-udev-trigger.service systemd-firstboot.service \
  e2scrub_reap.service; do
  ln -sf /dev/null "/etc/systemd/system/$unit"
done
# Fresh identity on first boot, like a cloud image.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/hostname
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
