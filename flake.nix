{
  description = "Catenary: a bare-metal x86_64 microVM hypervisor appliance";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";
  # The Rust toolchain comes from rust-toolchain.toml (the one source of truth for its version),
  # not from nixpkgs: nixos-24.11's rustc is older than the toolchain the code is built and
  # tested with. `xtask` checks that this file, rust-toolchain.toml and CI agree (docs/boot.md).
  inputs.rust-overlay.url = "github:oxalica/rust-overlay";
  inputs.rust-overlay.inputs.nixpkgs.follows = "nixpkgs";

  outputs = { self, nixpkgs, rust-overlay }:
    let
      system = "x86_64-linux";
      pkgs = import nixpkgs { inherit system; overlays = [ rust-overlay.overlays.default ]; };
      toolchain = pkgs.rust-bin.fromRustupToolchainFile ./rust-toolchain.toml;
      rustPlatform = pkgs.makeRustPlatform { cargo = toolchain; rustc = toolchain; };
      src = pkgs.lib.cleanSource ./.;
      kernel = import ./nix/kernel.nix { inherit pkgs src rustPlatform; };
      guestKernel = import ./nix/guest-kernel.nix { inherit pkgs; };
      guestInit = import ./nix/guest-init.nix { inherit pkgs src rustPlatform; };
      guestInitramfs = import ./nix/guest-initramfs.nix { inherit pkgs guestInit; };
      guestBundle = import ./nix/guest-bundle.nix { inherit pkgs guestKernel guestInitramfs; };
      iso = import ./nix/iso.nix { inherit pkgs kernel guestBundle; };
      netboot = import ./nix/netboot.nix { inherit pkgs kernel guestBundle; };
      qemu = "${pkgs.qemu}/bin/qemu-system-x86_64";
      runNode = pkgs.writeShellScript "catenary-qemu" ''
        exec ${qemu} -M q35 -accel tcg -cpu max -smp 2 -m 1G -nographic -no-reboot \
          -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
          -kernel ${kernel}/catenary.elf -initrd ${guestBundle}/guest-bundle.cpio "$@"
      '';
      # N nodes on one vde_switch (no root needed); each console prefixed with its node name.
      runCluster = pkgs.writeShellScript "catenary-qemu-cluster" ''
        set -eu
        n=''${1:-3}
        dir=$(mktemp -d)
        ${pkgs.vde2}/bin/vde_switch -s "$dir/switch" -d
        for i in $(seq 1 "$n"); do
          ${qemu} -M q35 -accel tcg -cpu max -smp 2 -m 1G -display none -serial stdio -monitor none \
            -no-reboot -kernel ${kernel}/catenary.elf -initrd ${guestBundle}/guest-bundle.cpio \
            -append "node=$i" -netdev vde,id=n0,sock="$dir/switch" \
            -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:$(printf %02x "$i") \
            2>&1 | sed "s/^/[node$i] /" &
        done
        wait
      '';
    in
    {
      packages.${system} = {
        inherit kernel iso netboot;
        guest-kernel = guestKernel;
        guest-init = guestInit;
        guest-initramfs = guestInitramfs;
        guest-bundle = guestBundle;
        default = iso;
      };
      apps.${system} = {
        qemu = { type = "app"; program = "${runNode}"; };
        qemu-cluster = { type = "app"; program = "${runCluster}"; };
        default = self.apps.${system}.qemu;
      };
      checks.${system}.kernel = kernel;
      devShells.${system}.default = pkgs.mkShell {
        packages = with pkgs; [ toolchain qemu grub2 xorriso mtools OVMF bochs vde2 wireguard-go wireguard-tools busybox cpio ];
      };
    };
}
