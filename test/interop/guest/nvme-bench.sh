# Guest-side throughput with busybox dd on the first NVMe namespace (O_DIRECT), for comparing
# our vfio-user controller with QEMU's built-in nvme on the same image (see bench/nvme).
d=/dev/nvme0n1
i=0; while [ ! -b $d ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
[ -b $d ] || { echo "NVMEBENCH: no $d"; exit 1; }
t() { # label, dd args...
  l=$1; shift
  s=$(cat /proc/uptime | cut -d' ' -f1)
  dd "$@" 2>/dev/null
  e=$(cat /proc/uptime | cut -d' ' -f1)
  echo "NVMEBENCH: $l $(awk "BEGIN{print $e-$s}") s"
}
t "write 4K x4096 direct" if=/dev/zero of=$d bs=4096 count=4096 oflag=direct
t "read 4K x4096 direct" if=$d of=/dev/null bs=4096 count=4096 iflag=direct
t "write 128K x256 direct" if=/dev/zero of=$d bs=131072 count=256 oflag=direct
t "read 128K x256 direct" if=$d of=/dev/null bs=131072 count=256 iflag=direct
exit 0
