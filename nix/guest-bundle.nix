# The guest bundle boot module: a cpio (newc) archive with vmlinux, bzImage, initramfs.cpio.gz
# (same layout as `cargo xtask guest`, see docs/boot.md).
{ pkgs, guestKernel, guestInitramfs }:
pkgs.runCommand "catenary-guest-bundle" { nativeBuildInputs = [ pkgs.cpio ]; } ''
  mkdir stage && cd stage
  cp ${guestKernel}/vmlinux ${guestKernel}/bzImage ${guestInitramfs}/initramfs.cpio.gz .
  mkdir -p $out
  printf '%s\n' vmlinux bzImage initramfs.cpio.gz | cpio --quiet -o -H newc --reproducible > $out/guest-bundle.cpio
''
