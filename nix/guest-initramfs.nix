# Catenary guest initramfs, built by Nix with the same script and /init as the non-Nix build
# (guest-images/build-initramfs.sh), using nixpkgs' static busybox.
#
#   $out/initramfs.cpio.gz   gzip'd newc cpio: /init, /sbin/catenary-init, /bin/busybox + applet symlinks,
#                            /dev/console, /dev/null (reproducible: sorted, mtime 0, gzip -n)
#
# Usage (flake.nix): guest-initramfs = import ./nix/guest-initramfs.nix { inherit pkgs guestInit; };
{ pkgs, guestInit }:
let
  guestImages = builtins.path {
    name = "catenary-guest-images-src";
    path = ../guest-images;
  };
in
pkgs.runCommand "catenary-guest-initramfs"
  {
    # gcc + static glibc build the hostile-guest test program (guest-images/hostile/hostile.c).
    nativeBuildInputs = [ pkgs.python3 pkgs.gzip pkgs.binutils pkgs.gcc ];
    NIX_CFLAGS_LINK = "-L${pkgs.glibc.static}/lib";
    CATENARY_BUSYBOX = "${pkgs.pkgsStatic.busybox}/bin/busybox";
    # The PID 1 of Catenary images (/sbin/catenary-init), as in `cargo xtask guest`.
    CATENARY_INIT = "${guestInit}/bin/catenary-init";
    SOURCE_DATE_EPOCH = "0";
    meta = {
      description = "Catenary guest initramfs (static busybox + /init)";
      platforms = [ "x86_64-linux" ];
    };
  }
  ''
    bash ${guestImages}/build-initramfs.sh $out
    test -s $out/initramfs.cpio.gz
  ''
