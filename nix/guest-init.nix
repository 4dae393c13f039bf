# catenary-init (guest-init/init), the guest's PID 1 for Catenary images, built as the non-Nix
# path builds it (xtask/src/build.rs `build_guest_init`): static glibc, small, with the
# toolchain from rust-toolchain.toml (`rustPlatform` comes from flake.nix).
#
#   $out/bin/catenary-init   static executable
{ pkgs, src, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "catenary-init";
  version = "0.1.0";
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "-p" "catenary-init" ];
  buildInputs = [ pkgs.glibc.static ];
  RUSTFLAGS = "-C target-feature=+crt-static";
  CARGO_PROFILE_RELEASE_OPT_LEVEL = "s";
  CARGO_PROFILE_RELEASE_LTO = "true";
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS = "1";
  CARGO_PROFILE_RELEASE_DEBUG = "0";
  doCheck = false;
}
