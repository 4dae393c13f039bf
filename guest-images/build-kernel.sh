#!/usr/bin/env bash
# Build Catenary's minimal Linux guest kernel from Debian's linux-source-6.1.
#
#   guest-images/build-kernel.sh OUTDIR
#
# tinyconfig + guest-images/kernel/catenary-guest.config, with guest-images/kernel/patches/*.patch
# applied (-p1, in name order) -> vmlinux (stripped, PVH ELF note
# kept) and bzImage. Results are cached under
#   ${CATENARY_CACHE:-$HOME/.cache/catenary}/guest-kernel-<hash>/
# where <hash> covers the source package version, the config fragment, the patches and this script, so a
# machine builds each configuration once. OUTDIR receives vmlinux, bzImage, config, System.map
# (hard links into the cache when possible, else copies); the script prints their paths.
#
# Environment:
#   CATENARY_CACHE       cache root (default $HOME/.cache/catenary)
#   CATENARY_JOBS        make -j value (default: nproc)
#   CATENARY_LINUX_DEB   use this linux-source-6.1 .deb instead of `apt-get download`
#   CATENARY_KEEP_BUILD  1 = keep the build tree (for debugging the config)
set -euo pipefail

die() { echo "build-kernel.sh: error: $*" >&2; exit 1; }
log() { echo "build-kernel.sh: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUTDIR=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$HERE/$(basename "${BASH_SOURCE[0]}")"
FRAGMENT="$HERE/kernel/catenary-guest.config"
SRCPKG=linux-source-6.1
CACHE_ROOT=${CATENARY_CACHE:-$HOME/.cache/catenary}
JOBS=${CATENARY_JOBS:-$(nproc 2>/dev/null || echo 2)}

[ -f "$FRAGMENT" ] || die "config fragment not found: $FRAGMENT"

# --- tools: name -> Debian package that provides it ---
need_tool() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install the Debian package '$2' (apt-get install $2)"; }
need_file() { [ -e "$1" ] || die "'$1' not found: install the Debian package '$2' (apt-get install $2)"; }
need_tool sha256sum coreutils
need_tool dpkg-deb dpkg
need_tool tar tar
need_tool xz xz-utils

# --- source package version (part of the cache key) ---
if [ -n "${CATENARY_LINUX_DEB:-}" ]; then
    [ -f "$CATENARY_LINUX_DEB" ] || die "CATENARY_LINUX_DEB=$CATENARY_LINUX_DEB does not exist"
    VERSION=$(dpkg-deb -f "$CATENARY_LINUX_DEB" Version)
else
    need_tool apt-cache apt
    VERSION=$(apt-cache policy "$SRCPKG" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    if [ -z "$VERSION" ] || [ "$VERSION" = "(none)" ]; then
        # No apt lists (e.g. offline CI): fall back to the newest .deb fetched earlier.
        CATENARY_LINUX_DEB=$(ls "$CACHE_ROOT/debs/${SRCPKG}_"*.deb 2>/dev/null | sort -V | tail -n1 || true)
        [ -n "$CATENARY_LINUX_DEB" ] \
            || die "no candidate version of the Debian package '$SRCPKG' (run apt-get update; is the Debian main archive in sources.list?)"
        VERSION=$(dpkg-deb -f "$CATENARY_LINUX_DEB" Version)
        log "apt knows no $SRCPKG; using cached $CATENARY_LINUX_DEB"
    fi
fi

PATCHES=("$HERE"/kernel/patches/*.patch)
[ -e "${PATCHES[0]}" ] || PATCHES=()
HASH=$( { printf 'pkg=%s\nversion=%s\n' "$SRCPKG" "$VERSION"; cat "$FRAGMENT" "$SCRIPT" ${PATCHES[@]+"${PATCHES[@]}"}; } \
        | sha256sum | cut -c1-16)
CACHED="$CACHE_ROOT/guest-kernel-$HASH"

publish() {
    mkdir -p "$OUTDIR"
    local f
    for f in vmlinux bzImage config System.map; do
        rm -f "$OUTDIR/$f"
        ln "$CACHED/$f" "$OUTDIR/$f" 2>/dev/null || cp "$CACHED/$f" "$OUTDIR/$f"
    done
    log "kernel $SRCPKG $VERSION, cache $CACHED"
    local out
    out=$(cd "$OUTDIR" && pwd)
    echo "$out/vmlinux"
    echo "$out/bzImage"
}

if [ -f "$CACHED/.complete" ]; then
    publish
    exit 0
fi

# --- build tools (only needed when we actually build) ---
need_tool apt-get apt
need_tool make make
need_tool gcc gcc
need_tool ld binutils
need_tool strip binutils
need_tool readelf binutils
need_tool flex flex
need_tool bison bison
need_tool bc bc
need_tool perl perl
need_tool lz4 lz4
need_tool gzip gzip
need_tool cpio cpio
need_file /usr/include/gelf.h libelf-dev
need_file /usr/include/openssl/opensslv.h libssl-dev

mkdir -p "$CACHE_ROOT"
# One builder per configuration: a concurrent caller waits, then finds the cache filled.
exec 9>"$CACHED.lock"
if ! flock -n 9; then
    log "another build of guest-kernel-$HASH is running; waiting for it"
    flock 9
fi
if [ -f "$CACHED/.complete" ]; then
    publish
    exit 0
fi

BUILD="$CACHE_ROOT/build-guest-kernel-$HASH"
rm -rf "$BUILD"
mkdir -p "$BUILD"
cleanup() { [ "${CATENARY_KEEP_BUILD:-0}" = 1 ] || rm -rf "$BUILD"; }
trap cleanup EXIT

# --- fetch + unpack the source ---
if [ -n "${CATENARY_LINUX_DEB:-}" ]; then
    DEB=$CATENARY_LINUX_DEB
else
    DEBDIR="$CACHE_ROOT/debs"
    mkdir -p "$DEBDIR"
    chmod 755 "$DEBDIR" 2>/dev/null || true
    DEB=$(ls "$DEBDIR/${SRCPKG}_${VERSION//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$DEB" ]; then
        log "apt-get download $SRCPKG=$VERSION"
        (cd "$DEBDIR" && apt-get download "$SRCPKG=$VERSION" >&2) \
            || die "apt-get download $SRCPKG=$VERSION failed (Debian package '$SRCPKG' must be reachable)"
        DEB=$(ls "$DEBDIR/${SRCPKG}_"*"${VERSION##*:}"*.deb | head -n1)
    fi
fi
log "unpacking $DEB"
dpkg-deb -x "$DEB" "$BUILD/pkg"
TARBALL="$BUILD/pkg/usr/src/$SRCPKG.tar.xz"
[ -f "$TARBALL" ] || die "$TARBALL missing from $DEB"
tar -C "$BUILD" -xf "$TARBALL"
rm -rf "$BUILD/pkg"
SRC="$BUILD/$SRCPKG"
[ -f "$SRC/Makefile" ] || die "unexpected source layout in $TARBALL"
for p in ${PATCHES[@]+"${PATCHES[@]}"}; do
    need_tool patch patch
    log "applying $(basename "$p")"
    patch -d "$SRC" -p1 --forward --quiet <"$p" || die "patch $p did not apply"
done

# --- configure ---
# Reproducible build identity (shows up in the `Linux version` banner).
export KBUILD_BUILD_USER=catenary KBUILD_BUILD_HOST=catenary KBUILD_BUILD_VERSION=1
export KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970"
MAKE=(make -C "$SRC" -j"$JOBS" ARCH=x86_64)
log "configuring: tinyconfig + $(basename "$FRAGMENT")"
"${MAKE[@]}" tinyconfig >"$BUILD/config.log" 2>&1 || { cat "$BUILD/config.log" >&2; die "make tinyconfig failed"; }
(cd "$SRC" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") >>"$BUILD/config.log" 2>&1 \
    || { cat "$BUILD/config.log" >&2; die "merge_config.sh failed"; }
"${MAKE[@]}" olddefconfig >>"$BUILD/config.log" 2>&1 || { cat "$BUILD/config.log" >&2; die "make olddefconfig failed"; }

# Every option the fragment sets must have survived olddefconfig (a missing dependency would
# silently drop it); every option it turns off must be off.
bad=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*)
            key=${line%%=*}; want=${line#*=}
            got=$(grep -E "^$key=" "$SRC/.config" | cut -d= -f2- || true)
            if [ "$got" != "$want" ]; then log "config: $key wanted $want, got ${got:-unset}"; bad=1; fi ;;
        "# CONFIG_"*" is not set")
            key=${line#\# }; key=${key%% *}
            if grep -qE "^$key=" "$SRC/.config"; then log "config: $key wanted off, is on"; bad=1; fi ;;
    esac
done <"$FRAGMENT"
[ $bad = 0 ] || die "config fragment did not apply cleanly (see above)"

# --- build ---
log "building vmlinux + bzImage with -j$JOBS (several minutes)"
"${MAKE[@]}" vmlinux bzImage >"$BUILD/build.log" 2>&1 \
    || { tail -n 60 "$BUILD/build.log" >&2; die "kernel build failed (full log: $BUILD/build.log; set CATENARY_KEEP_BUILD=1 to keep it)"; }

STAGE="$CACHED.tmp"
rm -rf "$STAGE"
mkdir -p "$STAGE"
strip --strip-all -o "$STAGE/vmlinux" "$SRC/vmlinux"
# The PVH entry note (Xen ELF note type 0x12, XEN_ELFNOTE_PHYS32_ENTRY) must survive stripping.
readelf -n "$STAGE/vmlinux" | grep -q 'Xen.*0x00000012' \
    || readelf -n "$STAGE/vmlinux" | grep -qi 'Xen.*PHYS32_ENTRY' \
    || die "stripped vmlinux has no PVH (XEN_ELFNOTE_PHYS32_ENTRY) note"
cp "$SRC/arch/x86/boot/bzImage" "$STAGE/bzImage"
cp "$SRC/.config" "$STAGE/config"
# Symbols for the stripped vmlinux: lets the hypervisor symbolize guest RIPs in crash dumps.
cp "$SRC/System.map" "$STAGE/System.map"
{
    echo "package=$SRCPKG"
    echo "version=$VERSION"
    echo "hash=$HASH"
    echo "kernelrelease=$("${MAKE[@]}" -s kernelrelease 2>/dev/null)"
    (cd "$STAGE" && sha256sum vmlinux bzImage config System.map)
} >"$STAGE/manifest"
# OUTDIR gets hard links to these files: make them read-only so nobody edits the cache through them.
chmod a-w "$STAGE/vmlinux" "$STAGE/bzImage" "$STAGE/config" "$STAGE/System.map" "$STAGE/manifest"
touch "$STAGE/.complete"
rm -rf "$CACHED"
mv "$STAGE" "$CACHED"
publish
