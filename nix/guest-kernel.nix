# Catenary minimal guest kernel, built by Nix from the same config fragment and patches as
# guest-images/build-kernel.sh (tinyconfig + guest-images/kernel/catenary-guest.config,
# guest-images/kernel/patches/*.patch).
#
# Source: nixpkgs' linux_6_1 (kernel.org 6.1.y). The non-Nix build uses Debian's
# linux-source-6.1 (also 6.1.y, Debian patches); the configuration is identical.
#
# Output layout matches the non-Nix cache directory:
#   $out/vmlinux   stripped ELF with the PVH note (XEN_ELFNOTE_PHYS32_ENTRY)
#   $out/bzImage   Linux boot protocol image
#   $out/config    the resolved .config
#   $out/System.map symbols of the (stripped) vmlinux
#
# Usage (flake.nix): guest-kernel = import ./nix/guest-kernel.nix { inherit pkgs; };
{ pkgs }:
let
  lib = pkgs.lib;
  base = pkgs.linux_6_1;
  fragment = ../guest-images/kernel/catenary-guest.config;
  # The same patches build-kernel.sh applies (the console on hvc0 keeps the early boot log).
  patchDir = ../guest-images/kernel/patches;
  kernelPatches = map (n: { name = lib.removeSuffix ".patch" n; patch = patchDir + "/${n}"; })
    (builtins.sort builtins.lessThan (builtins.filter (lib.hasSuffix ".patch") (builtins.attrNames (builtins.readDir patchDir))));

  # tinyconfig + fragment -> resolved .config, failing if any requested option did not stick.
  configfile = pkgs.stdenv.mkDerivation {
    pname = "catenary-guest-kernel-config";
    inherit (base) version src;
    nativeBuildInputs = [ pkgs.bison pkgs.flex pkgs.perl pkgs.bc ];
    postPatch = ''
      patchShebangs scripts
    '';
    dontConfigure = true;
    buildPhase = ''
      runHook preBuild
      make ARCH=x86_64 tinyconfig
      scripts/kconfig/merge_config.sh -m .config ${fragment}
      make ARCH=x86_64 olddefconfig
      bad=0
      while IFS= read -r line; do
        case "$line" in
          CONFIG_*=*)
            key=''${line%%=*}; want=''${line#*=}
            got=$(grep -E "^$key=" .config | cut -d= -f2- || true)
            if [ "$got" != "$want" ]; then echo "config: $key wanted $want, got ''${got:-unset}"; bad=1; fi ;;
          "# CONFIG_"*" is not set")
            key=''${line#\# }; key=''${key%% *}
            if grep -qE "^$key=" .config; then echo "config: $key wanted off, is on"; bad=1; fi ;;
        esac
      done < ${fragment}
      [ "$bad" = 0 ] || { echo "config fragment did not apply cleanly"; exit 1; }
      runHook postBuild
    '';
    installPhase = ''
      cp .config $out
    '';
    dontFixup = true;
  };

  kernel = (pkgs.linuxManualConfig {
    inherit (base) src version modDirVersion;
    inherit configfile kernelPatches;
    # Given explicitly so evaluation needs no import-from-derivation of the .config.
    config = {
      CONFIG_MODULES = "n";
      CONFIG_64BIT = "y";
      CONFIG_PVH = "y";
      CONFIG_SERIAL_8250_CONSOLE = "y";
      CONFIG_BLK_DEV_INITRD = "y";
      CONFIG_VIRTIO_MMIO = "y";
    };
    allowImportFromDerivation = false;
  }).overrideAttrs (old: {
    # CONFIG_KERNEL_LZ4: the bzImage payload is compressed with lz4.
    nativeBuildInputs = (old.nativeBuildInputs or [ ]) ++ [ pkgs.lz4 ];
    # manual-config keeps vmlinux (in $dev) only for modular kernels; this one has no modules.
    # preInstall runs in the build directory, where vmlinux was linked.
    preInstall = (old.preInstall or "") + "\n" + ''
      mkdir -p $out
      cp vmlinux $out/vmlinux
    '';
  });
in
pkgs.runCommand "catenary-guest-kernel-${base.version}"
  {
    nativeBuildInputs = [ pkgs.binutils ];
    passthru = { inherit kernel configfile; };
    meta = {
      description = "Catenary minimal Linux guest kernel (PVH vmlinux + bzImage)";
      platforms = [ "x86_64-linux" ];
    };
  }
  ''
    mkdir -p $out
    strip --strip-all -o $out/vmlinux ${kernel}/vmlinux
    readelf -n $out/vmlinux | grep -q 'Xen' || { echo "vmlinux lost its PVH note"; exit 1; }
    cp ${kernel}/bzImage $out/bzImage
    cp ${configfile} $out/config
    cp ${kernel}/System.map $out/System.map
  ''
