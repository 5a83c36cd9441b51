#!/bin/bash
# PID 1 of a simulated host's fresh pid+mount+uts+ipc+cgroup namespaces (already inside its netns).
# Builds the host's root — an overlay of this machine's / with the host's own "disk" as upper
# layer, fresh /proc /sys /dev /run /tmp and cgroup mounts — pivots into it and execs systemd.
# usage: host-init.sh HOST_DIR BIN_DIR OCI_DIR [IMAGE_ROOT]
set -euo pipefail
HD=$1; BIN=$2; OCI=$3; IMG=${4:-}
M=$HD/merged
mount --make-rprivate /
mount -t overlay overlay -o lowerdir=/,upperdir=$HD/upper,workdir=$HD/work $M
mount -t proc proc $M/proc
# /proc/sys read-only (kernel.* and fs.* are machine-wide), except net (per netns)
mount --bind $M/proc/sys $M/proc/sys; mount -o remount,ro,bind $M/proc/sys
cat /proc/sys/kernel/random/uuid > $HD/boot_id; mount --bind $HD/boot_id $M/proc/sys/kernel/random/boot_id
mount --bind $M/proc/sys/net $M/proc/sys/net; mount -o remount,rw,bind $M/proc/sys/net
mount --bind /dev/null $M/proc/sysrq-trigger 2>/dev/null || true
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs $M/sys
if grep -q '^0::/$' /proc/self/cgroup && [ "$(wc -l < /proc/self/cgroup)" = 1 ]; then
  mount -t cgroup2 -o nsdelegate cgroup2 $M/sys/fs/cgroup            # pure cgroup v2 machine
else
  mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs $M/sys/fs/cgroup # hybrid, as this machine
  while IFS= read -r line; do
    hier=${line#*:}; ctrl=${hier%%:*}
    if [ -z "$ctrl" ]; then mkdir -p $M/sys/fs/cgroup/unified; mount -t cgroup2 -o nsdelegate cgroup2 $M/sys/fs/cgroup/unified
    elif [ "$ctrl" = name=systemd ]; then mkdir -p $M/sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup $M/sys/fs/cgroup/systemd
    else mkdir -p $M/sys/fs/cgroup/$ctrl; mount -t cgroup -o $ctrl cgroup $M/sys/fs/cgroup/$ctrl; fi
  done < /proc/self/cgroup
  mount -o remount,ro,bind $M/sys/fs/cgroup 2>/dev/null || true
fi
mount -t tmpfs -o mode=755,nosuid,size=8m tmpfs $M/dev
for d in "null c 1 3" "zero c 1 5" "full c 1 7" "random c 1 8" "urandom c 1 9" "tty c 5 0"; do
  set -- $d; mknod -m 666 $M/dev/$1 $2 $3 $4; done
mkdir -p $M/dev/pts $M/dev/shm $M/dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts $M/dev/pts; ln -s pts/ptmx $M/dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $M/dev/shm
mount -t mqueue mqueue $M/dev/mqueue 2>/dev/null || true
ln -s /proc/self/fd $M/dev/fd; ln -s /proc/self/fd/0 $M/dev/stdin; ln -s /proc/self/fd/1 $M/dev/stdout; ln -s /proc/self/fd/2 $M/dev/stderr
touch $M/dev/console; mount --bind $HD/console.log $M/dev/console
mount -t tmpfs -o mode=755,nosuid,nodev,size=256m tmpfs $M/run
mount -t tmpfs -o mode=1777,nosuid,nodev,size=1g tmpfs $M/tmp
# the machine's own work and home folders are not the host's business
for d in /work /mnt /root /var/tmp/runc-etcd-lab; do [ -d $M$d ] && mount -t tmpfs -o mode=700,size=64m tmpfs $M$d; done
# the runc-etcd binaries and the local OCI image layout, read-only
mkdir -p $M/opt/lab/bin $M/opt/lab/oci
mount --bind $BIN $M/opt/lab/bin; mount -o remount,ro,bind $M/opt/lab/bin
[ -d "$OCI" ] && { mount --bind $OCI $M/opt/lab/oci; mount -o remount,ro,bind $M/opt/lab/oci; }
# the image the pods run from (the kubelet stand-in mounts an overlay of it per pod)
[ -n "$IMG" ] && [ -d "$IMG" ] && { mkdir -p $M/opt/lab/image; mount --bind $IMG $M/opt/lab/image; mount -o remount,ro,bind $M/opt/lab/image; }
cd $M; mkdir -p .oldroot; pivot_root . .oldroot; cd /
umount -l /.oldroot; rmdir /.oldroot
exec env -i container=lxc TERM=dumb /lib/systemd/systemd --system --show-status=no
