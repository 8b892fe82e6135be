# Guest side of the QEMU interop test for `vfio-user serve gpio` (busybox sh, root).
# Protocol with the host test: the guest raises output 15 to ask the host for inputs
# 0xa5a5, and output 14 to ask it to toggle input 0 (a change-of-state interrupt).
fail=0
say() { echo "GPIOTEST: $*"; }
dev=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x494f ] && [ "$(cat $d/device)" = 0x0dc8 ] && dev=$d
done
[ -n "$dev" ] || { say "FAIL no 494f:0dc8 device"; exit 1; }
bdf=$(basename $dev)
drv=$(basename "$(readlink $dev/driver)" 2>/dev/null)
say "device $bdf driver=$drv irq=$(cat $dev/irq)"
[ "$drv" = pci-idio-16 ] || { say "FAIL driver not bound"; exit 1; }
chip=""
for c in /sys/class/gpio/gpiochip*; do
  case "$(readlink -f $c/device)" in *"$bdf"*) chip=$c;; esac
done
[ -n "$chip" ] || { say "FAIL no gpiochip"; exit 1; }
base=$(cat $chip/base); n=$(cat $chip/ngpio)
say "chip $(basename $chip) base=$base ngpio=$n label=$(cat $chip/label)"
# export a line; print its sysfs directory (idio-16 names lines OUT0.., IIN0..)
gp() {
  local before after e
  before=$(ls /sys/class/gpio)
  echo $1 > /sys/class/gpio/export 2>/dev/null
  for e in $(ls /sys/class/gpio); do
    case " $(echo $before) " in *" $e "*) ;; *) echo /sys/class/gpio/$e; return;; esac
  done
}
i=0; while [ $i -lt 32 ]; do eval "P$i=$(gp $((base+i)))"; i=$((i+1)); done
out() { eval "p=\$P$1"; echo out > $p/direction 2>/dev/null; echo $2 > $p/value; }
val() { eval "p=\$P$1"; cat $p/value; }
# 1. outputs written by the guest read back, and the host sees them
out 0 1; out 1 0; out 2 1; out 3 1
rb="$(val 0)$(val 1)$(val 2)$(val 3)"
say "outputs readback $rb"
[ "$rb" = 1011 ] || { say "FAIL readback"; fail=1; }
# 2. inputs set by the host
out 15 1
sleep 1
ins=""; i=16; while [ $i -lt 32 ]; do ins="$(val $i)$ins"; i=$((i+1)); done
say "inputs $ins"
[ "$ins" = 1010010110100101 ] || { say "FAIL inputs"; fail=1; }
# 3. change-of-state interrupt on input 0
eval "p=\$P16"
echo both > $p/edge || { say "FAIL cannot set edge"; fail=1; }
c0=$(grep -i idio /proc/interrupts | head -1)
say "interrupts before: $c0"
out 14 1
sleep 1
c1=$(grep -i idio /proc/interrupts | head -1)
say "interrupts after: $c1"
n0=$(echo $c0 | awk '{print $2}'); n1=$(echo $c1 | awk '{print $2}')
[ -n "$n1" ] && [ "$n1" -gt "${n0:-0}" ] || { say "FAIL no interrupt"; fail=1; }
say "input 0 now $(val 16)"
out 14 0; out 15 0
say "done fail=$fail"
exit $fail
