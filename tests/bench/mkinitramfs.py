#!/usr/bin/env python3
"""Writes an initramfs (cpio "newc", uncompressed) whose /init is one static program.

usage: mkinitramfs.py INIT_PROGRAM OUTPUT

The archive holds /dev/console (so the kernel can give /init a console), /proc and /sys (mount
points; the program mounts them) and /init. Standard library only; no root needed, the device node
exists only inside the archive.
"""

import sys

# Mode bits (stat.h).
DIR, CHR, REG = 0o040000, 0o020000, 0o100000


def entry(ino, name, mode, data=b"", rdev=(0, 0)):
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 2 if mode & DIR else 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = head + name_b
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def archive(init_bytes):
    parts = [
        entry(1, "dev", DIR | 0o755),
        entry(2, "dev/console", CHR | 0o600, rdev=(5, 1)),
        entry(3, "proc", DIR | 0o755),
        entry(4, "sys", DIR | 0o755),
        entry(5, "init", REG | 0o755, init_bytes),
        entry(0, "TRAILER!!!", 0),
    ]
    return b"".join(parts)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], "rb") as f:
        init = f.read()
    with open(sys.argv[2], "wb") as f:
        f.write(archive(init))


if __name__ == "__main__":
    main()
