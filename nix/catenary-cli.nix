# The `catenary` host tool (tools/catenary): images, the operator CLI, and `catenary cluster
# new`, which the qemu-cluster app uses to make the node keys, the cluster file and the
# operator config. Built with the toolchain from rust-toolchain.toml (`rustPlatform` comes
# from flake.nix).
#
#   $out/bin/catenary
{ pkgs, src, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "catenary";
  version = "0.1.0";
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "-p" "catenary" ];
  doCheck = false;
}
