# Guest side of the QEMU interop test for `vfio-user serve virtio-blk` (busybox sh, root).
# Linux's virtio_pci and virtio_blk bind to our device; a 56 MiB ext4 filesystem is made on
# it, mounted, filled, checked after dropping caches and after a remount, and unmounted; a
# known pattern goes raw to the disk at 60 MiB (outside the filesystem), where the host test
# looks for it in the image; the host runs e2fsck -f on the image after power-off.
# The expected number of request queues comes from the kernel command line (vblk_queues=N, default 1).
fail=0
say() { echo "VBLKTEST: $*"; }
want_queues=1
for a in $(cat /proc/cmdline); do case $a in vblk_queues=*) want_queues=${a#vblk_queues=};; esac; done
dev=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1042 ] && dev=$d
done
[ -n "$dev" ] || { say "FAIL no 1af4:1042 device"; exit 1; }
say "device $(basename $dev) class=$(cat $dev/class) revision=$(cat $dev/revision)"
for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do modprobe $m 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done
say "driver=$(basename "$(readlink $dev/driver)" 2>/dev/null)"
[ -b /dev/vda ] || { say "FAIL no /dev/vda"; dmesg | grep -i virtio | tail -20; exit 1; }
vdev=$(ls -d $dev/virtio* | head -1)
say "virtio driver=$(basename "$(readlink $vdev/driver)") features=$(cat $vdev/features)"
say "vda sectors=$(cat /sys/block/vda/size) serial=$(cat /sys/block/vda/serial 2>/dev/null) ro=$(cat /sys/block/vda/ro)"
say "queues: $(ls /sys/block/vda/mq | wc -l) (want $want_queues) irqs: $(grep -c virtio /proc/interrupts)"
grep virtio /proc/interrupts | head -6
[ "$(ls /sys/block/vda/mq | wc -l)" = "$want_queues" ] || { say "FAIL queue count"; fail=1; }
MKFS=$(command -v mkfs.ext4 || echo /sbin/mkfs.ext4)
$MKFS -F -q /dev/vda 56M || { say "FAIL mkfs.ext4"; exit 1; }
say "mkfs.ext4 ok"
mkdir -p /mnt/v
mount -t ext4 /dev/vda /mnt/v || { say "FAIL mount"; exit 1; }
say "mounted: $(grep vda /proc/mounts)"
dd if=/dev/urandom of=/mnt/v/random.bin bs=65536 count=64 2>/dev/null
i=0; while [ $i -lt 50 ]; do echo "file $i $(date) line" > /mnt/v/small$i.txt; i=$((i+1)); done
mkdir -p /mnt/v/dir/sub
cp /mnt/v/random.bin /mnt/v/dir/sub/copy.bin
rm /mnt/v/small1*.txt
sync
sum1=$(cat /mnt/v/random.bin /mnt/v/small*.txt /mnt/v/dir/sub/copy.bin | md5sum | cut -d' ' -f1)
say "written md5 $sum1"
echo 3 > /proc/sys/vm/drop_caches
sum2=$(cat /mnt/v/random.bin /mnt/v/small*.txt /mnt/v/dir/sub/copy.bin | md5sum | cut -d' ' -f1)
say "after drop_caches md5 $sum2"
[ "$sum1" = "$sum2" ] || { say "FAIL checksum after drop_caches"; fail=1; }
cmp /mnt/v/random.bin /mnt/v/dir/sub/copy.bin || { say "FAIL copy differs"; fail=1; }
command -v fstrim >/dev/null && { fstrim -v /mnt/v && say "fstrim ok" || say "fstrim failed"; }
umount /mnt/v || { say "FAIL umount"; fail=1; }
mount -t ext4 /dev/vda /mnt/v || { say "FAIL remount"; exit 1; }
sum3=$(cat /mnt/v/random.bin /mnt/v/small*.txt /mnt/v/dir/sub/copy.bin | md5sum | cut -d' ' -f1)
say "after remount md5 $sum3"
[ "$sum1" = "$sum3" ] || { say "FAIL checksum after remount"; fail=1; }
umount /mnt/v
# raw pattern at 60 MiB (outside the 56 MiB filesystem)
yes VIRTIO-BLK-VFIO-USER-PATTERN | head -c 1048576 > /tmp/pattern
dd if=/tmp/pattern of=/dev/vda bs=4096 seek=15360 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
rsum=$(dd if=/dev/vda bs=4096 skip=15360 count=256 2>/dev/null | md5sum | cut -d' ' -f1)
psum=$(md5sum < /tmp/pattern | cut -d' ' -f1)
say "raw pattern md5 $rsum (want $psum)"
[ "$rsum" = "$psum" ] || { say "FAIL raw pattern"; fail=1; }
say "done fail=$fail"
exit $fail
