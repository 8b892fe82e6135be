# Guest side of the QEMU interop test with two GPIO devices served by one `vfio-user serve`
# process (each device on its own worker thread). The host starts them with inputs 0x00ff
# and 0xff00; the guest finds both, checks both are bound to gpio-pci-idio-16 with a gpiochip
# each, prints each one's inputs, and raises output line k on device k, which the host sees
# as an `outputs` event of that device.
say() { echo "GPIO2: $*"; }
devs=""
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x494f ] && [ "$(cat $d/device)" = 0x0dc8 ] && devs="$devs $d"
done
n=$(echo $devs | wc -w)
say "devices $n"
[ "$n" = 2 ] || { say "FAIL expected 2 devices"; exit 1; }
# export gpio line $1; print its sysfs directory (idio-16 names lines OUT0.., IIN0..)
gp() {
  local before e
  before=$(ls /sys/class/gpio)
  echo $1 > /sys/class/gpio/export 2>/dev/null
  for e in $(ls /sys/class/gpio); do
    case " $(echo $before) " in *" $e "*) ;; *) echo /sys/class/gpio/$e; return;; esac
  done
}
fail=0; k=0
for dev in $devs; do
  bdf=$(basename $dev)
  drv=$(basename "$(readlink $dev/driver)" 2>/dev/null)
  [ "$drv" = pci-idio-16 ] || { say "FAIL $bdf driver=$drv"; fail=1; continue; }
  chip=""
  for c in /sys/class/gpio/gpiochip*; do
    case "$(readlink -f $c/device)" in *"$bdf"*) chip=$c;; esac
  done
  [ -n "$chip" ] || { say "FAIL $bdf no gpiochip"; fail=1; continue; }
  base=$(cat $chip/base)
  ins=""; i=16
  # (unexported after use: both chips name their lines IIN0.., which sysfs cannot show twice)
  while [ $i -lt 32 ]; do p=$(gp $((base+i))); ins="$(cat $p/value)$ins"; echo $((base+i)) > /sys/class/gpio/unexport; i=$((i+1)); done
  say "device $k $bdf chip $(basename $chip) inputs $ins"
  p=$(gp $((base+k))); echo out > $p/direction 2>/dev/null; echo 1 > $p/value
  say "device $k output $k raised, reads $(cat $p/value)"
  echo $((base+k)) > /sys/class/gpio/unexport
  k=$((k+1))
done
exit $fail
