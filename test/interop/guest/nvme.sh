# Guest side of the QEMU interop test for `vfio-user serve nvme` (busybox sh, root).
# The Linux nvme driver binds to our controller; the namespace gets an ext4 filesystem,
# files are written, synced, read back with checksums (also after a remount); then a known
# pattern goes raw to the disk at 60 MiB, where the host test looks for it in the image.
fail=0
say() { echo "NVMETEST: $*"; }
dev=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x4e58 ] && [ "$(cat $d/device)" = 0x0002 ] && dev=$d
done
[ -n "$dev" ] || { say "FAIL no 4e58:0002 device"; exit 1; }
say "device $(basename $dev) class=$(cat $dev/class)"
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done
drv=$(basename "$(readlink $dev/driver)" 2>/dev/null)
say "driver=$drv"
[ -b /dev/nvme0n1 ] || { say "FAIL no /dev/nvme0n1"; dmesg | grep -i nvme | tail -20; exit 1; }
say "nvme0n1 sectors=$(cat /sys/block/nvme0n1/size) model=$(cat /sys/class/nvme/nvme0/model 2>/dev/null) serial=$(cat /sys/class/nvme/nvme0/serial 2>/dev/null)"
say "queues: $(ls /sys/block/nvme0n1/mq 2>/dev/null | wc -l) irqs: $(grep -c nvme /proc/interrupts)"
grep nvme /proc/interrupts | head -4
MKFS=$(command -v mkfs.ext4 || echo /sbin/mkfs.ext4)
$MKFS -F -q /dev/nvme0n1 || { say "FAIL mkfs.ext4"; exit 1; }
say "mkfs.ext4 ok"
mkdir -p /mnt/n
mount -t ext4 /dev/nvme0n1 /mnt/n || { say "FAIL mount"; exit 1; }
say "mounted: $(grep nvme0n1 /proc/mounts)"
dd if=/dev/urandom of=/mnt/n/random.bin bs=65536 count=64 2>/dev/null
i=0; while [ $i -lt 50 ]; do echo "file $i $(date) line" > /mnt/n/small$i.txt; i=$((i+1)); done
mkdir -p /mnt/n/dir/sub
cp /mnt/n/random.bin /mnt/n/dir/sub/copy.bin
sync
sum1=$(cat /mnt/n/random.bin /mnt/n/small*.txt /mnt/n/dir/sub/copy.bin | md5sum | cut -d' ' -f1)
say "written md5 $sum1"
echo 3 > /proc/sys/vm/drop_caches
sum2=$(cat /mnt/n/random.bin /mnt/n/small*.txt /mnt/n/dir/sub/copy.bin | md5sum | cut -d' ' -f1)
say "after drop_caches md5 $sum2"
[ "$sum1" = "$sum2" ] || { say "FAIL checksum after drop_caches"; fail=1; }
cmp /mnt/n/random.bin /mnt/n/dir/sub/copy.bin || { say "FAIL copy differs"; fail=1; }
df /mnt/n | tail -1
umount /mnt/n || { say "FAIL umount"; fail=1; }
mount -t ext4 /dev/nvme0n1 /mnt/n || { say "FAIL remount"; exit 1; }
sum3=$(cat /mnt/n/random.bin /mnt/n/small*.txt /mnt/n/dir/sub/copy.bin | md5sum | cut -d' ' -f1)
say "after remount md5 $sum3"
[ "$sum1" = "$sum3" ] || { say "FAIL checksum after remount"; fail=1; }
umount /mnt/n
# raw pattern at 60 MiB (past what the small filesystem content uses)
yes NVME-VFIO-USER-PATTERN | head -c 1048576 > /tmp/pattern
dd if=/tmp/pattern of=/dev/nvme0n1 bs=4096 seek=15360 2>/dev/null
sync
rsum=$(dd if=/dev/nvme0n1 bs=4096 skip=15360 count=256 2>/dev/null | md5sum | cut -d' ' -f1)
psum=$(md5sum < /tmp/pattern | cut -d' ' -f1)
say "raw pattern md5 $rsum (want $psum)"
[ "$rsum" = "$psum" ] || { say "FAIL raw pattern"; fail=1; }
say "smart: $(cat /sys/class/nvme/nvme0/state 2>/dev/null)"
say "done fail=$fail"
exit $fail
