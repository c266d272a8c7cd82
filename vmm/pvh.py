"""The uncompressed kernel inside a bzImage, for QEMU to boot through its PVH entry point.

Why: under TCG every instruction the guest runs is emulated, and a bzImage first decompresses and relocates
itself — ~0.5 s of a ~3 s boot measured here (docs/benchmarks.md). Debian's kernels are built with
`CONFIG_PVH`, so their ELF image carries a Xen `PHYS32_ENTRY` note, and QEMU's microvm loads such an ELF
directly and jumps to that entry: no decompressor runs in the guest. Extraction happens once, at
`ifc vm build`; a kernel without the note (or a payload we cannot unpack) keeps booting as a bzImage.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import zlib

XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4
MAX_TRIES = 8  # magic numbers found by chance in the setup code before the payload

# the payload compressions a bzImage may use, by magic; each gives the decompressed bytes or raises
_GZIP, _XZ, _LZ4, _ZSTD = b"\x1f\x8b\x08", b"\xfd7zXZ\x00", b"\x02\x21\x4c\x18", b"\x28\xb5\x2f\xfd"


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(data)


def _tool(argv: list[str]):
    def run(data: bytes) -> bytes:
        if shutil.which(argv[0]) is None:
            raise ValueError(f"{argv[0]} is not installed")
        # the payload is followed by the rest of the bzImage: the tool complains about it after writing
        # everything, so its exit status says nothing; the ELF check below does
        return subprocess.run(argv, input=data, capture_output=True).stdout

    return run


DECOMPRESSORS = ((_LZ4, _tool(["lz4", "-dc"])), (_ZSTD, _tool(["zstd", "-dc"])), (_GZIP, _gunzip), (_XZ, _unxz))


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has the Xen PHYS32_ENTRY note QEMU boots through."""
    if elf[:5] != b"\x7fELF\x02" or len(elf) < 64:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        base = phoff + i * phentsize
        if base + 56 > len(elf):
            return False
        p_type, = struct.unpack_from("<I", elf, base)
        if p_type != PT_NOTE:
            continue
        offset, = struct.unpack_from("<Q", elf, base + 8)
        size, = struct.unpack_from("<Q", elf, base + 32)
        at, end = offset, min(offset + size, len(elf))
        while at + 12 <= end:
            namesz, descsz, kind = struct.unpack_from("<III", elf, at)
            name = elf[at + 12:at + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and kind == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def extract(bzimage: bytes) -> bytes | None:
    """The PVH-bootable ELF inside `bzimage`, or None."""
    for magic, decompress in DECOMPRESSORS:
        at, tries = bzimage.find(magic), 0
        while at >= 0 and tries < MAX_TRIES:
            tries += 1
            try:
                elf = decompress(bzimage[at:])
            except (ValueError, OSError, zlib.error, lzma.LZMAError):
                elf = b""
            if has_pvh_entry(elf):
                return elf
            at = bzimage.find(magic, at + 1)
    return None
