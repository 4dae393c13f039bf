# `nix run .#qemu-cluster -- [N] [DIR]`: N QEMU nodes (default 3) on one vde_switch (no root),
# each console prefixed with its node name; stop with Ctrl-C. The cluster is made the way an
# operator makes one, by `catenary cluster new --nodes N --dir DIR` (default DIR ./cluster):
# node keys (DIR/nodeK.key, 0600), the cluster file and the operator config (DIR/operator).
# A DIR that already holds a cluster of N nodes is used again (its keys and operator stay).
# Node K gets MAC 52:54:00:ca:00:K (its underlay address in the cluster file) and one boot
# module (a newc cpio, mode 0600 in a private temporary directory removed at exit): the guest
# bundle's vmlinux and initramfs, the cluster file and its key as `node.key`. The key is never
# on a command line (the kernel logs its command line) and never printed.
# Once the switch is up, `catenary cluster relay` (in the background, stopped at exit) joins
# it through vde_plug and relays a localhost UDP port to node1's underlay address, written as
# DIR/operator's fabric endpoint: `CATENARY_CONFIG_DIR=DIR/operator catenary nodes` reaches
# node1 through the CLI's own fabric session (docs/api.md "A local cluster"; no root).
{ pkgs, kernel, guestKernel, guestInitramfs, catenary }:
let
  qemu = "${pkgs.qemu}/bin/qemu-system-x86_64";
in
pkgs.writeShellScript "catenary-qemu-cluster" ''
  set -eu
  export PATH=${pkgs.coreutils}/bin:${pkgs.gnused}/bin:${pkgs.gnugrep}/bin:$PATH
  n=''${1:-3}
  dir=''${2:-cluster}
  case "$n" in
    ""|*[!0-9]*) echo "usage: qemu-cluster [N] [DIR]  (N nodes, 1..200; DIR default ./cluster)" >&2; exit 2 ;;
  esac
  if [ "$n" -lt 1 ] || [ "$n" -gt 200 ]; then echo "qemu-cluster: N must be 1..200" >&2; exit 2; fi
  if [ -e "$dir/cluster.txt" ]; then
    have=$(grep -c '^node ' "$dir/cluster.txt" || true)
    if [ "$have" != "$n" ]; then
      echo "qemu-cluster: $dir holds a cluster of $have nodes, not $n (remove it, or give another DIR)" >&2
      exit 1
    fi
    echo "qemu-cluster: the cluster in $dir ($n nodes)"
  else
    ${catenary}/bin/catenary cluster new --nodes "$n" --dir "$dir"
  fi
  dir=$(cd "$dir" && pwd)
  umask 077
  run=$(mktemp -d)
  cleanup() {
    trap - EXIT INT TERM
    # the relay before the switch (it reports a vanished switch as an error)
    [ -n "$relay" ] && kill "$relay" 2>/dev/null || true
    [ -f "$run/switch.pid" ] && kill "$(cat "$run/switch.pid")" 2>/dev/null || true
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$run"
  }
  pids=""
  relay=""
  trap cleanup EXIT INT TERM
  ${pkgs.vde2}/bin/vde_switch -s "$run/switch" -d -p "$run/switch.pid"
  # the operator's way in: its own config, whatever CATENARY_CONFIG_DIR the caller has
  PATH=${pkgs.vde2}/bin:$PATH CATENARY_CONFIG_DIR="$dir/operator" \
    ${catenary}/bin/catenary cluster relay --switch "$run/switch" --dir "$dir" &
  relay=$!
  for i in $(seq 1 "$n"); do
    stage="$run/node$i"
    mkdir "$stage"
    cp ${guestKernel}/vmlinux ${guestInitramfs}/initramfs.cpio.gz "$stage/"
    cp "$dir/cluster.txt" "$stage/cluster.txt"
    cp "$dir/node$i.key" "$stage/node.key"
    (cd "$stage" && printf '%s\n' vmlinux initramfs.cpio.gz cluster.txt node.key \
      | ${pkgs.cpio}/bin/cpio --quiet -o -H newc > "$run/node$i.cpio")
    rm -rf "$stage"
    mac=$(printf '52:54:00:ca:%02x:%02x' $((i >> 8)) $((i & 255)))
    ${qemu} -M q35 -accel tcg -cpu max -smp 2 -m 1G -display none -serial stdio -monitor none \
      -no-reboot -kernel ${kernel}/catenary.elf -initrd "$run/node$i.cpio" -append "vm=none" \
      -netdev vde,id=n0,sock="$run/switch" -device virtio-net-pci,netdev=n0,mac="$mac" \
      > >(sed -u "s/^/[node$i] /") 2>&1 &
    pids="$pids $!"
  done
  echo "qemu-cluster: $n node(s); operator config $dir/operator (admin; API at node1's fabric address,"
  echo "qemu-cluster: reached through the relay above); in a second terminal:"
  echo "qemu-cluster:   CATENARY_CONFIG_DIR=$dir/operator catenary nodes"
  wait
''
