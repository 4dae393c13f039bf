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
      catenary = import ./nix/catenary-cli.nix { inherit pkgs src rustPlatform; };
      # N nodes on one vde_switch (no root), keys and cluster file from `catenary cluster new`
      runCluster = import ./nix/qemu-cluster.nix { inherit pkgs kernel guestKernel guestInitramfs catenary; };
    in
    {
      packages.${system} = {
        inherit kernel iso netboot catenary;
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
