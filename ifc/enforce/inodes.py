"""The inode numbers the mount serves: the backing filesystem's, through a permutation keyed per workspace.

A backing filesystem hands out inode numbers in order — tmpfs counts up, ext4 takes the first free one near the
parent — so the number of a file a run makes says how many were made before it. A run that read a key could make
as many files (kept, labelled, never looked at again) for the next run to read off its own new file's number.
Served through a keyed permutation, numbers say nothing of the order, and still name each file once. The key is
kept with the workspace's labels (`LabelStore.secret_key`, outside the sandbox), so a file keeps its number from
run to run (git's index records them). The permutation is a four-round Feistel network on the low 48 bits (the
bits above hold incarnations: `fs._EPOCH_SHIFT`); fastpath.c computes the same (`permuted`), with the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass

LOW = 24  # bits per half
HALF = (1 << LOW) - 1
U64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finalizer: every input bit moves every output bit."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & U64
    return x ^ (x >> 31)


@dataclass(frozen=True)
class InodeKey:
    rounds: tuple[int, int, int, int]  # one 64-bit key per round

    @classmethod
    def from_bytes(cls, key: bytes) -> InodeKey:
        if len(key) != 32:
            raise ValueError("an inode key is 32 bytes")
        return cls(tuple(int.from_bytes(key[i:i + 8], "little") for i in range(0, 32, 8)))

    def served(self, ino: int) -> int:
        """`ino` with its low 48 bits permuted (a bijection: no two files share a number)."""
        left, right = (ino >> LOW) & HALF, ino & HALF
        for k in self.rounds:
            left, right = right, left ^ (_mix(right ^ k) & HALF)
        return (ino & ~((1 << 2 * LOW) - 1)) | (left << LOW) | right
