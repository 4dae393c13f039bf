#!/usr/bin/env bash
# Host packages Catenary's build and tests need on Debian 12 (run as root, or with sudo).
# Idempotent: skips apt-get entirely when everything is already installed.
set -euo pipefail
PKGS=(
  qemu-system-x86 ovmf ipxe-qemu                # boot tests (TCG), UEFI path, PXE option ROMs
  grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools   # hybrid BIOS+UEFI ISO
  bochs bochsbios vgabios                       # Intel VT-x path (Bochs emulates VMX+EPT)
  busybox-static cpio                           # guest initramfs
  gcc make flex bison bc libelf-dev libssl-dev xz-utils  # guest kernel build
  vde2 iproute2 iputils-ping wireguard-go wireguard-tools python3  # cluster networking, fabric interop tests
  nix-bin                                       # the flake and nix/*.nix must parse (nix-instantiate --parse)
  umoci skopeo squashfs-tools                   # catenary image pack tests (real OCI images, unsquashfs)
)
# cargo-fuzz (crates.io) runs the fuzz smoke tests of `cargo xtask test`.
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz" ]; then
  echo "ci: installing cargo-fuzz"
  cargo install cargo-fuzz --locked -q
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "ci: all host packages present"
  exit 0
fi
echo "ci: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
