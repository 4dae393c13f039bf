# The Catenary kernel ELF (and the in-kernel test build), built with the same xtask driver and
# kernel-only flags as the non-Nix path (docs/boot.md). Crates are vendored from Cargo.lock.
#
#   $out/catenary.elf        the appliance kernel (PVH note, Multiboot2 header, Limine requests)
#   $out/catenary-test.elf   the in-kernel test build
# `rustPlatform` is built by flake.nix from rust-toolchain.toml (never nixpkgs' own rustc).
{ pkgs, src, rustPlatform }:
rustPlatform.buildRustPackage {
  pname = "catenary-kernel";
  version = "0.1.0";
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  # binutils: the test guests are assembled with `as`; lld comes with rustc.
  nativeBuildInputs = [ pkgs.binutils pkgs.python3 ];
  doCheck = false;
  buildPhase = ''
    runHook preBuild
    export HOME=$TMPDIR
    cargo run --offline --release -p xtask -- build
    cargo run --offline --release -p xtask -- build --test
    runHook postBuild
  '';
  installPhase = ''
    runHook preInstall
    mkdir -p $out
    cp build/catenary.elf build/catenary-test.elf $out/
    runHook postInstall
  '';
}
