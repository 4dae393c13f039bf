#!/usr/bin/env python3
"""Write a reproducible newc cpio archive from a gen_init_cpio-style spec on stdin.

Spec lines (as the kernel's usr/gen_init_cpio):
    dir   <name> <mode> <uid> <gid>
    file  <name> <source> <mode> <uid> <gid>
    slink <name> <target> <mode> <uid> <gid>
    nod   <name> <mode> <uid> <gid> <c|b> <maj> <min>
Entries are written sorted by name (parents before children), with mtime fixed to
$SOURCE_DATE_EPOCH (default 0) and sequential inode numbers, so the same inputs give the same
bytes. No root needed (device nodes are only described, never created). Output: stdout.
"""
import os
import stat
import sys

MTIME = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def header(ino, mode, uid, gid, nlink, size, rmaj, rmin, name):
    fields = [ino, mode, uid, gid, nlink, MTIME, size, 0, 0, rmaj, rmin, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad4(n):
    return b"\0" * ((4 - n % 4) % 4)


def main():
    entries = {}
    for lineno, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        kind, name = f[0], f[1].lstrip("/")
        if kind == "dir":
            entries[name] = (stat.S_IFDIR | int(f[2], 8), int(f[3]), int(f[4]), b"", 0, 0)
        elif kind == "file":
            with open(f[2], "rb") as src:
                data = src.read()
            entries[name] = (stat.S_IFREG | int(f[3], 8), int(f[4]), int(f[5]), data, 0, 0)
        elif kind == "slink":
            entries[name] = (stat.S_IFLNK | int(f[3], 8), int(f[4]), int(f[5]), f[2].encode(), 0, 0)
        elif kind == "nod":
            typ = stat.S_IFCHR if f[5] == "c" else stat.S_IFBLK
            entries[name] = (typ | int(f[2], 8), int(f[3]), int(f[4]), b"", int(f[6]), int(f[7]))
        else:
            sys.exit(f"gen-cpio.py: line {lineno}: unknown entry type {kind!r}")

    out = sys.stdout.buffer
    total = 0

    def write(b):
        nonlocal total
        out.write(b)
        total += len(b)

    ino = 721
    # Sorting by path components puts every directory before its contents.
    for name in sorted(entries, key=lambda n: n.split("/")):
        mode, uid, gid, data, rmaj, rmin = entries[name]
        nlink = 2 if stat.S_ISDIR(mode) else 1
        bname = name.encode()
        hdr = header(ino, mode, uid, gid, nlink, len(data), rmaj, rmin, bname)
        write(hdr + bname + b"\0" + pad4(len(hdr) + len(bname) + 1))
        write(data + pad4(len(data)))
        ino += 1
    trailer = b"TRAILER!!!"
    hdr = b"070701" + b"".join(b"%08X" % v for v in [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(trailer) + 1, 0])
    write(hdr + trailer + b"\0" + pad4(len(hdr) + len(trailer) + 1))
    # Pad the archive to a 512-byte multiple like cpio(1) does.
    if total % 512:
        write(b"\0" * (512 - total % 512))


if __name__ == "__main__":
    main()
