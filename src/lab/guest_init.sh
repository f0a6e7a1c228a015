#!/bin/busybox sh
# PID 1 of the lab's real guests (busybox-static initramfs, built by
# src/lab/guest_image.rs). Loads the virtio NIC driver, brings eth0 up with
# the address from the kernel command line (hvf.ip=A.B.C.D/N hvf.gw=GW
# hvf.ping=1), answers ping and ARP (the kernel does that), optionally pings
# the gateway once a second (traffic for the detector), and powers off when
# the ACPI power button is pressed (`virsh shutdown`). Must never exit: PID 1
# exiting panics the kernel.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in @MODULES@; do
  insmod /lib/modules/$m.ko || echo "hvflight-guest: insmod $m failed"
done
ip=; gw=; ping=0
for a in $(cat /proc/cmdline); do
  case "$a" in
    hvf.ip=*) ip=${a#hvf.ip=} ;;
    hvf.gw=*) gw=${a#hvf.gw=} ;;
    hvf.ping=*) ping=${a#hvf.ping=} ;;
  esac
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set lo up
ip addr add "$ip" dev eth0
ip link set eth0 up
[ -n "$gw" ] && ip route add default via "$gw"
echo "hvflight-guest: eth0 $(cat /sys/class/net/eth0/address) up with $ip via $gw"
for e in /sys/class/input/event*; do
  if grep -q "Power Button" "$e/device/name" 2>/dev/null; then
    ( dd if=/dev/input/${e##*/} of=/dev/null bs=24 count=1 2>/dev/null
      echo "hvflight-guest: power button pressed, powering off"
      poweroff -f ) &
  fi
done
if [ "$ping" = 1 ] && [ -n "$gw" ]; then
  ping -q -i 1 "$gw" >/dev/null 2>&1 &
fi
while true; do sleep 3600; done
