"""The PVH kernel extraction: a real cloud kernel's ELF is found and carries the entry note; garbage, truncated
and note-less inputs give None and never raise."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm import pvh


def _elf_with_note(name: bytes, kind: int) -> bytes:
    """A minimal ELF64 header, one PT_NOTE program header and one note."""
    note = struct.pack("<III", len(name) + 1, 4, kind) + name + b"\0" * (4 - len(name) % 4) + b"\0" * 4
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", pvh.PT_NOTE, 0, 64 + 56, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note


def test_the_note_is_recognised():
    assert pvh.has_pvh_entry(_elf_with_note(b"Xen", pvh.XEN_ELFNOTE_PHYS32_ENTRY))
    assert not pvh.has_pvh_entry(_elf_with_note(b"Xen", 5))
    assert not pvh.has_pvh_entry(_elf_with_note(b"GNU", pvh.XEN_ELFNOTE_PHYS32_ENTRY))


@settings(max_examples=200)
@given(st.binary(max_size=2000), st.integers(0, 200))
def test_garbage_and_truncations_never_raise(data, cut):
    elf = _elf_with_note(b"Xen", pvh.XEN_ELFNOTE_PHYS32_ENTRY)
    assert pvh.has_pvh_entry(elf[:cut]) in (True, False)
    assert pvh.extract(data) is None or pvh.has_pvh_entry(pvh.extract(data))


def test_a_gzip_payload_inside_a_bzimage_is_found():
    import gzip

    elf = _elf_with_note(b"Xen", pvh.XEN_ELFNOTE_PHYS32_ENTRY) + b"\0" * 1000
    bzimage = b"setup code \x1f\x8b\x08 a false start" + gzip.compress(elf) + b"trailer"
    assert pvh.extract(bzimage) == elf


def test_the_cached_cloud_kernel_boots_through_pvh():
    from vmm import image

    try:
        img = image.current()
    except image.ImageError as exc:
        pytest.skip(f"no guest image: {exc.message}")
    if img.kernel.name != "vmlinux":
        pytest.skip("the cached kernel has no PVH entry (it boots as a bzImage)")
    with open(img.kernel, "rb") as handle:
        assert pvh.has_pvh_entry(handle.read())
