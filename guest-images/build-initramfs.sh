#!/usr/bin/env bash
# Build Catenary's guest initramfs: a gzip'd newc cpio holding a static busybox, a symlink for
# every busybox applet, /dev/console + /dev/null nodes, guest-images/initramfs/init and the
# hostile-guest test program /usr/libexec/catenary-hostile (guest-images/hostile/hostile.c),
# and, when CATENARY_INIT names it, the static catenary-init binary as /sbin/catenary-init (the
# PID 1 for Catenary images: `rdinit=/sbin/catenary-init`, docs/guest-init.md; `cargo xtask
# guest` builds it).
#
#   guest-images/build-initramfs.sh OUTDIR      -> OUTDIR/initramfs.cpio.gz (path printed)
#
# Reproducible: entries sorted, mtimes fixed ($SOURCE_DATE_EPOCH, default 0), uid/gid 0,
# gzip -n. No root needed. Environment: CATENARY_BUSYBOX (default /bin/busybox, must be
# static: Debian package busybox-static), CATENARY_INIT (a static catenary-init; optional).
set -euo pipefail

die() { echo "build-initramfs.sh: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUTDIR=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INIT="$HERE/initramfs/init"
GEN="$HERE/initramfs/gen-cpio.py"
BUSYBOX=${CATENARY_BUSYBOX:-/bin/busybox}

command -v python3 >/dev/null 2>&1 || die "'python3' not found: install the Debian package 'python3'"
command -v gzip >/dev/null 2>&1 || die "'gzip' not found: install the Debian package 'gzip'"
command -v readelf >/dev/null 2>&1 || die "'readelf' not found: install the Debian package 'binutils'"
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: install the Debian package 'busybox-static'"
if readelf -l "$BUSYBOX" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    die "$BUSYBOX is dynamically linked: install the Debian package 'busybox-static' (replaces 'busybox')"
fi
[ -f "$INIT" ] || die "$INIT missing"
CC=${CC:-gcc}
command -v "$CC" >/dev/null 2>&1 || die "'$CC' not found: install the Debian package 'gcc' (builds the hostile-guest test program)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The attacker for the hostile-guest tests (guest-images/hostile/hostile.c), static so it runs
# on the busybox userland. Test code: it only pokes the guest's own virtual hardware.
"$CC" -static -O2 -Wall -o "$WORK/hostile" "$HERE/hostile/hostile.c" || die "building hostile.c failed (static glibc: Debian libc6-dev)"
strip "$WORK/hostile" 2>/dev/null || true

if [ -n "${CATENARY_INIT:-}" ]; then
    [ -f "$CATENARY_INIT" ] || die "CATENARY_INIT=$CATENARY_INIT: no such file"
    if readelf -l "$CATENARY_INIT" 2>/dev/null | grep -q 'Requesting program interpreter'; then
        die "$CATENARY_INIT is dynamically linked (build it with -C target-feature=+crt-static)"
    fi
    cp "$CATENARY_INIT" "$WORK/catenary-init"
    strip "$WORK/catenary-init" 2>/dev/null || true
fi

printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$WORK/passwd"
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$WORK/group"

{
    for d in bin sbin usr usr/bin usr/sbin dev proc sys tmp run etc root mnt; do
        echo "dir /$d 0755 0 0"
    done
    echo "nod /dev/console 0600 0 0 c 5 1"
    echo "nod /dev/null 0666 0 0 c 1 3"
    echo "file /init $INIT 0755 0 0"
    echo "file /bin/busybox $BUSYBOX 0755 0 0"
    echo "file /etc/passwd $WORK/passwd 0644 0 0"
    echo "file /etc/group $WORK/group 0644 0 0"
    echo "file /etc/fstab $HERE/initramfs/fstab 0644 0 0"
    echo "dir /usr/libexec 0755 0 0"
    echo "file /usr/libexec/catenary-hostile $WORK/hostile 0755 0 0"
    if [ -f "$WORK/catenary-init" ]; then
        echo "file /sbin/catenary-init $WORK/catenary-init 0755 0 0"
    fi
    # One symlink per applet, at the path busybox itself expects (bin/sh, sbin/poweroff, ...).
    "$BUSYBOX" --list-full | LC_ALL=C sort | while read -r applet; do
        [ "$applet" = bin/busybox ] && continue
        echo "slink /$applet /bin/busybox 0777 0 0"
    done
} >"$WORK/spec"

grep -q '^slink /bin/sh ' "$WORK/spec" || die "$BUSYBOX has no sh applet"
grep -q '^slink /sbin/poweroff ' "$WORK/spec" || die "$BUSYBOX has no poweroff applet"

mkdir -p "$OUTDIR"
python3 "$GEN" <"$WORK/spec" | gzip -n -9 >"$WORK/initramfs.cpio.gz"
mv "$WORK/initramfs.cpio.gz" "$OUTDIR/initramfs.cpio.gz"
echo "$(cd "$OUTDIR" && pwd)/initramfs.cpio.gz"
