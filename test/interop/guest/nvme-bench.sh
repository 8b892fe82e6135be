# Guest-side NVMe benchmark on the first namespace (O_DIRECT), for comparing our vfio-user
# controller with QEMU's built-in nvme on the same image (bench/nvme/guest.ts): busybox dd at
# queue depth 1, fio (libaio) at queue depth 32 when the image has it (vfu_fio=0 on the kernel
# command line: not; vfu_fio_secs=N: seconds per job), and 10 idle seconds with vfu_idle=1. "NVMEPHASE: <label>"
# marks where each job starts (the host samples the server's counters there and at the job's
# result line).
d=/dev/nvme0n1
i=0; while [ ! -b $d ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
[ -b $d ] || { echo "NVMEBENCH: no $d"; exit 1; }
# the guest's monotonic clock in ns (/proc/uptime has only 10 ms steps, 10% of a 0.1 s job)
now() { sed -n 's/^now at \([0-9]*\) nsecs/\1/p;/^now at/q' /proc/timer_list; }
t() { # label, dd args...
  l=$1; shift
  echo "NVMEPHASE: $l"
  s=$(now)
  dd "$@" 2>/dev/null
  e=$(now)
  echo "NVMEBENCH: $l $(awk "BEGIN{printf \"%.6f\", ($e-$s)/1e9}") s"
}
t "write 4K x2048 direct" if=/dev/zero of=$d bs=4096 count=2048 oflag=direct
t "read 4K x2048 direct" if=$d of=/dev/null bs=4096 count=2048 iflag=direct
t "write 128K x1024 direct" if=/dev/zero of=$d bs=131072 count=1024 oflag=direct
t "read 128K x1024 direct" if=$d of=/dev/null bs=131072 count=1024 iflag=direct
secs=$(sed -n 's/.*vfu_fio_secs=\([0-9]*\).*/\1/p' /proc/cmdline)
if command -v fio >/dev/null && ! grep -q vfu_fio=0 /proc/cmdline; then
  f() { # label, fio args...
    l=$1; shift
    echo "NVMEPHASE: $l"
    echo "NVMEFIO: $l $(fio --name=j --filename=$d --direct=1 --ioengine=libaio --time_based --runtime=${secs:-4} --size=48M --minimal "$@" 2>/dev/null | tail -1)"
  }
  f "randread 4K QD32" --rw=randread --bs=4k --iodepth=32
  f "randwrite 4K QD32" --rw=randwrite --bs=4k --iodepth=32
  f "read 128K QD32" --rw=read --bs=128k --iodepth=32
  f "write 128K QD32" --rw=write --bs=128k --iodepth=32
fi
if grep -q vfu_idle=1 /proc/cmdline; then
  echo "NVMEIDLE: start"
  sleep 10
  echo "NVMEIDLE: end"
fi
exit 0
