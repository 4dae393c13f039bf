# PXE/netboot directory (a TFTP root) for appliances in a rack; the same layout as
# `cargo xtask netboot` (xtask/src/pxe.rs), which is its tested non-Nix twin:
#
#   $out/boot/grub/i386-pc/core.0        GRUB's PXE image for BIOS (DHCP bootfile)
#   $out/boot/grub/x86_64-efi/core.efi   GRUB's network image for UEFI (DHCP bootfile)
#   $out/boot/grub/grub.cfg              multiboot2 + module2, as the ISO's grub.cfg
#   $out/boot/catenary.elf, $out/boot/module0 (the guest bundle, module name guest-bundle)
#
# Nothing secret: no key is in the directory; a node makes its own at boot.
{ pkgs, kernel, guestBundle }:
pkgs.runCommand "catenary-netboot" { nativeBuildInputs = [ pkgs.grub2 ]; } ''
  mkdir -p $out/boot/grub
  grub-mknetdir --net-directory=$out --subdir=boot/grub -d ${pkgs.grub2}/lib/grub/i386-pc
  grub-mknetdir --net-directory=$out --subdir=boot/grub -d ${pkgs.grub2_efi}/lib/grub/x86_64-efi
  cp ${kernel}/catenary.elf $out/boot/catenary.elf
  cp ${guestBundle}/guest-bundle.cpio $out/boot/module0
  cat > $out/boot/grub/grub.cfg <<CFG
  set timeout=0
  set default=0
  serial --unit=0 --speed=115200
  terminal_output serial console

  menuentry "Catenary" {
      multiboot2 /boot/catenary.elf
      module2 /boot/module0 guest-bundle
      boot
  }
  CFG
''
