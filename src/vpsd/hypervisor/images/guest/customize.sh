#!/bin/sh
# Turn an mmdebstrap tree ($1) into a vpsd guest: boots with root=/dev/vda (no partition
# table, direct kernel boot), DHCP on the virtio NIC, key-only SSH for root, the QEMU guest
# agent, and no identity of its own: host keys and machine-id are made on first boot.
set -eu
root=$1
here=$(dirname "$0")

install -m 0755 "$here/vpsd-firstboot" "$root/usr/local/sbin/vpsd-firstboot"
install -m 0644 "$here/vpsd-firstboot.service" "$root/etc/systemd/system/vpsd-firstboot.service"
install -m 0644 "$here/80-vpsd-dhcp.network" "$root/etc/systemd/network/80-vpsd-dhcp.network"
install -m 0644 "$here/sshd-vpsd.conf" "$root/etc/ssh/sshd_config.d/vpsd.conf"

cat > "$root/etc/fstab" <<'FSTAB'
# The root filesystem fills the whole disk: systemd-growfs grows it when the disk is bigger.
/dev/vda  /  ext4  defaults,errors=remount-ro,x-systemd.growfs  0  1
FSTAB
echo debian > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"

chroot "$root" systemctl enable vpsd-firstboot.service systemd-networkd.service >/dev/null 2>&1
# Units that only cost boot time on a small VM without a network to wait for.
chroot "$root" systemctl mask e2scrub_reap.service e2scrub_all.timer apt-daily.timer \
    apt-daily-upgrade.timer systemd-networkd-wait-online.service getty@tty1.service \
    >/dev/null 2>&1
# No password: login is by SSH key only ('*' is not a lock, so sshd accepts keys).
chroot "$root" usermod -p '*' root

# No identity baked in: each server makes its own on first boot.
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# Caches and lists that only make the image bigger.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
rm -rf "$root"/var/log/*.log "$root"/tmp/* "$root"/var/tmp/*
