# PXE/netboot artifacts for appliances in a rack: iPXE boots the Multiboot2 kernel with the guest
# bundle as its module (iPXE's multiboot support is Multiboot1, so the chain loads GRUB's
# netboot image, which speaks Multiboot2).
#
#   $out/catenary.elf, $out/guest-bundle.cpio, $out/grub.cfg, $out/core.0 (GRUB PXE image),
#   $out/catenary.ipxe (chain script)
{ pkgs, kernel, guestBundle }:
pkgs.runCommand "catenary-netboot" { nativeBuildInputs = [ pkgs.grub2 ]; } ''
  mkdir -p $out
  cp ${kernel}/catenary.elf $out/
  cp ${guestBundle}/guest-bundle.cpio $out/
  cat > $out/grub.cfg <<CFG
  set timeout=0
  serial --unit=0 --speed=115200
  terminal_output serial console
  menuentry "Catenary (netboot)" {
      multiboot2 (pxe)/catenary.elf
      module2 (pxe)/guest-bundle.cpio guest-bundle
      boot
  }
  CFG
  grub-mknetdir --net-directory=netdir --subdir=boot/grub -d ${pkgs.grub2}/lib/grub/i386-pc
  cp netdir/boot/grub/i386-pc/core.0 $out/core.0
  cat > $out/catenary.ipxe <<IPXE
  #!ipxe
  dhcp
  chain core.0
  IPXE
''
