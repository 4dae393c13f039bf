# Bootable hybrid BIOS+UEFI ISO: GRUB (Multiboot2) and Limine (Limine protocol) entries, the
# kernel, and the guest bundle (minimal guest kernel + initramfs) as one boot module.
{ pkgs, kernel, guestBundle }:
pkgs.runCommand "catenary-iso"
  {
    nativeBuildInputs = [ pkgs.grub2 pkgs.xorriso pkgs.mtools pkgs.limine ];
    grubEfi = pkgs.grub2_efi;
  }
  ''
    mkdir -p iso/boot/grub iso/boot/limine iso/EFI/BOOT
    cp ${kernel}/catenary.elf iso/boot/catenary.elf
    cp ${guestBundle}/guest-bundle.cpio iso/boot/module0
    cat > iso/boot/grub/grub.cfg <<CFG
    set timeout=3
    serial --unit=0 --speed=115200
    terminal_output serial console
    menuentry "Catenary (GRUB, Multiboot2)" {
        multiboot2 /boot/catenary.elf
        module2 /boot/module0 guest-bundle
        boot
    }
    CFG
    cat > iso/boot/limine/limine.conf <<CFG
    timeout: 3
    /Catenary (Limine)
        protocol: limine
        path: boot():/boot/catenary.elf
        module_path: boot():/boot/module0
        module_string: guest-bundle
    CFG
    cp ${pkgs.limine}/share/limine/limine-bios.sys ${pkgs.limine}/share/limine/limine-bios-cd.bin \
       ${pkgs.limine}/share/limine/limine-uefi-cd.bin iso/boot/limine/
    cp ${pkgs.limine}/share/limine/BOOTX64.EFI iso/EFI/BOOT/
    # Limine image: BIOS (El Torito) + UEFI, then make it hybrid with limine bios-install.
    xorriso -as mkisofs -R -r -J -b boot/limine/limine-bios-cd.bin -no-emul-boot \
      -boot-load-size 4 -boot-info-table -hfsplus -apm-block-size 2048 \
      --efi-boot boot/limine/limine-uefi-cd.bin -efi-boot-part --efi-boot-image \
      --protective-msdos-label iso -o catenary-limine.iso
    limine bios-install catenary-limine.iso
    # GRUB image (Multiboot2), hybrid BIOS+UEFI.
    grub-mkrescue -d ${pkgs.grub2}/lib/grub/i386-pc -o catenary-grub.iso iso || \
      grub-mkrescue -o catenary-grub.iso iso
    mkdir -p $out
    cp catenary-limine.iso catenary-grub.iso $out/
  ''
