"""The served inode numbers' permutation (`ifc.enforce.inodes`): a bijection that keeps the incarnation bits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ifc.enforce.inodes import InodeKey

keys = st.binary(min_size=32, max_size=32).map(InodeKey.from_bytes)


@given(key=keys, start=st.integers(min_value=0, max_value=2**48 - 4096))
def test_no_two_numbers_meet_and_a_run_of_numbers_is_no_run(key, start):
    """A run of consecutive backing numbers (files made one after another) is served as as many distinct numbers
    with no common step: nothing left of the order a later run could count."""
    served = [key.served(ino) for ino in range(start, start + 4096)]
    assert len(set(served)) == len(served)
    assert len({b - a for a, b in itertools.pairwise(served)}) > 1


@given(key=keys, ino=st.integers(min_value=0, max_value=2**64 - 1))
def test_the_bits_above_48_stay_where_they_are(key, ino):
    """Incarnations (`fs._EPOCH_SHIFT`) and a filesystem's own high bits are untouched; only the low 48 move."""
    assert key.served(ino) >> 48 == ino >> 48
    assert key.served(ino) < 2**64


def test_a_key_is_32_bytes():
    with pytest.raises(ValueError):
        InodeKey.from_bytes(b"short")
