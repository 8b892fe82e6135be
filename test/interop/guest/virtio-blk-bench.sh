# Guest side of bench/virtio/guest.ts: fio (libaio, O_DIRECT) on /dev/vda, 4 KiB random and
# 128 KiB sequential reads and writes at QD 1 and 32; each job's JSON result is printed between
# markers for the host to parse. Runtime per job from the kernel command line (vblk_rt=S).
rt=4
for a in $(cat /proc/cmdline); do case $a in vblk_rt=*) rt=${a#vblk_rt=};; esac; done
for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do modprobe $m 2>/dev/null; done
d=/dev/vda
i=0; while [ ! -b $d ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
[ -b $d ] || { echo "VBLKBENCH: no $d"; exit 1; }
FIO=$(command -v fio || echo /usr/bin/fio)
# lay the data down first so reads hit written blocks
$FIO --name=fill --filename=$d --direct=1 --ioengine=libaio --rw=write --bs=1M --iodepth=8 --size=48M >/dev/null 2>&1
for job in "randread 4k 1" "randread 4k 32" "randwrite 4k 1" "randwrite 4k 32" "read 128k 1" "read 128k 32" "write 128k 1" "write 128k 32"; do
  set -- $job
  echo "VBLKBENCH-BEGIN $1 $2 $3"
  $FIO --name=j --filename=$d --direct=1 --ioengine=libaio --rw=$1 --bs=$2 --iodepth=$3 --size=48M \
    --runtime=$rt --time_based --ramp_time=1 --randrepeat=0 --output-format=json 2>&1
  echo "VBLKBENCH-END"
done
exit 0
