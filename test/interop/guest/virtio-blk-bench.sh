# Guest side of bench/virtio/guest.ts: two virtio-blk disks in one guest, ours (serial
# VFU-BENCH) and QEMU's built-in one (serial QEMU-BENCH); fio (libaio, O_DIRECT) runs each job
# on one disk then the other, twice, so both see the same guest and host conditions: 4 KiB
# random and 128 KiB sequential reads and writes at QD 1 and 32. Each result is fio's JSON
# between markers. Seconds per job from the kernel command line (vblk_rt=S).
# A second disk of ours (serial VFU-BENCH2: another server configuration) joins the rounds
# when present; vblk_only=4k runs the 4 KiB jobs only.
rt=4; only=""
for a in $(cat /proc/cmdline); do case $a in vblk_rt=*) rt=${a#vblk_rt=};; vblk_only=*) only=${a#vblk_only=};; esac; done
for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do modprobe $m 2>/dev/null; done
i=0; while [ ! -b /dev/vdb ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
ours=""; qemu=""; ours2=""
for b in /sys/block/vd*; do
  case "$(cat $b/serial 2>/dev/null)" in
    VFU-BENCH) ours=/dev/$(basename $b);;
    VFU-BENCH2) ours2=/dev/$(basename $b);;
    QEMU-BENCH) qemu=/dev/$(basename $b);;
  esac
done
[ -n "$ours" ] && [ -n "$qemu" ] || { echo "VBLKBENCH: disks not found (ours=$ours qemu=$qemu)"; ls /sys/block; exit 1; }
echo "VBLKBENCH: ours=$ours ours2=$ours2 qemu=$qemu"
disks="ours"; [ -n "$ours2" ] && disks="$disks ours2"; disks="$disks qemu"
FIO=$(command -v fio || echo /usr/bin/fio)
# lay the data down first so reads hit written blocks
for d in $ours $ours2 $qemu; do $FIO --name=fill --filename=$d --direct=1 --ioengine=libaio --rw=write --bs=1M --iodepth=8 --size=48M >/dev/null 2>&1; done
jobs="randread 4k 1,randread 4k 32,randwrite 4k 1,randwrite 4k 32"
[ "$only" = 4k ] || jobs="$jobs,read 128k 1,read 128k 32,write 128k 1,write 128k 32"
IFS=,; set -- $jobs; unset IFS
for job in "$@"; do
  set -- $job
  for round in 1 2; do
    for which in $disks; do
      eval d=\$$which
      echo "VBLKBENCH-BEGIN $which $1 $2 $3"
      $FIO --name=j --filename=$d --direct=1 --ioengine=libaio --rw=$1 --bs=$2 --iodepth=$3 --size=48M \
        --runtime=$rt --time_based --ramp_time=1 --randrepeat=0 --output-format=json 2>&1
      echo "VBLKBENCH-END"
    done
  done
done
exit 0
