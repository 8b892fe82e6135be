# Guest side of the switchover test (busybox sh, root): writers keep writing to our virtio-blk
# (or NVMe, with mig_dev=nvme) disk while the host moves the device from server A to server B through `vfio-user proxy`.
# A 56 MiB ext4 filesystem is made and mounted; three writers write files (each fsynced,
# content known from its name) and one writes numbered raw blocks at 58 MiB (outside the
# filesystem, fsynced), printing a line per write. The host moves the device after some
# writes, then puts SWITCHED at 63 MiB; the guest reads that block (caches dropped, so the
# read reaches the device) until it sees it, lets the writers do as many writes again, stops
# them, and checks every file after dropping caches and after a remount, then runs e2fsck.
fail=0
say() { echo "VMIG: $*"; }
# the disk under test: virtio-blk (default) or NVMe (mig_dev=nvme on the kernel command line)
kind=virtio
for a in $(cat /proc/cmdline); do case $a in mig_dev=*) kind=${a#mig_dev=};; esac; done
if [ "$kind" = nvme ]; then vendor=0x4e58; device=0x0002; disk=/dev/nvme0n1
else vendor=0x1af4; device=0x1042; disk=/dev/vda; fi
dev=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = $vendor ] && [ "$(cat $d/device)" = $device ] && dev=$d
done
[ -n "$dev" ] || { say "FAIL no $vendor:$device device"; exit 1; }
[ "$kind" = nvme ] || for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do modprobe $m 2>/dev/null; done
i=0
while [ ! -b $disk ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done
[ -b $disk ] || { say "FAIL no $disk"; exit 1; }
say "disk $disk"
MKFS=$(command -v mkfs.ext4 || echo /sbin/mkfs.ext4)
FSCK=$(command -v e2fsck || echo /sbin/e2fsck)
$MKFS -F -q $disk 56M || { say "FAIL mkfs.ext4"; exit 1; }
mkdir -p /mnt/v
mount -t ext4 $disk /mnt/v || { say "FAIL mount"; exit 1; }

content() { yes "$1 virtio-blk switchover" | head -c 65536; }
writer() {
  n=0
  while [ ! -e /tmp/stop ]; do
    content "w$1-$n" > /tmp/w$1
    dd if=/tmp/w$1 of=/mnt/v/w$1-$n bs=65536 conv=fsync 2>/dev/null || { say "FAIL write w$1-$n"; touch /tmp/failed; }
    say "wrote w$1-$n"
    n=$((n+1))
  done
  echo $n > /tmp/count$1
}
raw() {
  n=0
  while [ ! -e /tmp/stop ] && [ $n -lt 1200 ]; do
    yes "RAW-BLOCK-$n" | head -c 4096 > /tmp/rawblk
    dd if=/tmp/rawblk of=$disk bs=4096 seek=$((14848 + n)) conv=notrunc,fsync 2>/dev/null || { say "FAIL raw $n"; touch /tmp/failed; }
    say "raw $n"
    n=$((n+1))
  done
  echo $n > /tmp/countr
}
for w in 0 1 2; do writer $w & done
raw &
say "writers started"

# wait for the host's mark (at most 10 minutes), counting what was written meanwhile
t=0
while [ $t -lt 600 ]; do
  echo 1 > /proc/sys/vm/drop_caches
  if dd if=$disk bs=4096 skip=16128 count=1 2>/dev/null | grep -q SWITCHED; then break; fi
  sleep 1; t=$((t+1))
done
[ $t -lt 600 ] || { say "FAIL no switch mark from the host"; fail=1; }
before=$(ls /mnt/v | wc -l)
say "switch seen with $before files"
# as much again after the move
while [ "$(ls /mnt/v | wc -l)" -lt $((before * 2 + 6)) ]; do sleep 1; done
touch /tmp/stop
wait
[ -e /tmp/failed ] && fail=1
say "writers stopped: files $(ls /mnt/v | wc -l) raw $(cat /tmp/countr)"
sync

check() {
  bad=0
  for w in 0 1 2; do
    n=0
    while [ $n -lt $(cat /tmp/count$w) ]; do
      content "w$w-$n" > /tmp/expect
      cmp -s /tmp/expect /mnt/v/w$w-$n || { say "FAIL $1: w$w-$n differs"; bad=1; }
      n=$((n+1))
    done
  done
  return $bad
}
echo 3 > /proc/sys/vm/drop_caches
check "after drop_caches" && say "files ok after drop_caches" || fail=1
umount /mnt/v || { say "FAIL umount"; fail=1; }
mount -t ext4 $disk /mnt/v || { say "FAIL remount"; exit 1; }
check "after remount" && say "files ok after remount" || fail=1
umount /mnt/v
$FSCK -f -n $disk > /tmp/fsck 2>&1 && say "e2fsck clean" || { say "FAIL e2fsck"; cat /tmp/fsck; fail=1; }
say "done fail=$fail"
exit $fail
