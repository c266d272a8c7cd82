"""The mount daemon's requests that decide nothing, answered in C (`fastpath.c`) without entering Python.

Every FUSE request through mfusepy costs a Python call: the GIL, ctypes' marshalling, the adapter. Most requests
decide nothing — attributes for each LOOKUP and GETATTR, the `security.capability` probe the kernel makes before
each write, reads and writes on descriptors already decided, flush, the release of a read-only descriptor,
listings: three quarters of the requests of sqlite's commits, about half of those of `tar x`, `rsync -a` and `rm
-rf` (docs/benchmarks.md, issue 16 part 6). And many opens repeat a decision already made: a build or `git status`
reads the same files again and again (part 7), and `tar x` or `rsync -a` set a new file's owner, mode and times one
request each, every one a `chmod` decision that repeats the first. `install` points those entries of libfuse's
operation table at `fastpath.c`'s functions, which answer the plain case with the same system calls `EnforcingFS`
makes and hand anything else to the Python callback they replaced.

Python stays the authority: `EnforcingFS` marks each descriptor it hands the kernel (`mark`: read only, writable
without a monitor, or writable as decided at the run's taint generation for one name), unmarks it before closing it,
mirrors its inode incarnations and open secret-file views, and the monitor bumps the taint generation
(`taint_moved`) whenever the run's taint rises — so a write after a rise, or after a rename, reaches Python and is
decided again exactly as before. A warm open is one the monitor itself said repeats (`Monitor.decide_repeatable`);
so is a warm change of a file's or directory's mode, owner or times (keyed by the subject's slot | `CHANGES`, as the
monitor decides all three as `chmod`), also the first change of one just made, which the monitor decided without
effect when it was made (`Monitor.anticipate`). `EnforcingFS` records each (`warm`) with the clock tick read before
the decision; `stale` ticks the clock whenever the taint, the labels or the revocation list move, and the C side
serves the answer only while no later tick covers it and the label store's WAL header and the token's window still
hold, for the same subject (each caller thread's, told by `caller` with a pidfd of that thread), the same name and
the same inode. A tick covers one name (`stale(names)`: its label changed — a rename elsewhere leaves the other
answers standing) or all of them. The hits are counted in the monitor later (`drain`), as its own cached answers
are.

Names made and removed are answered by *class* (`Monitor.decide_made`): the monitor decides a create, a delete or a
change of mode on a name with no stored label by what the name and its directory match — the globs
`ifc.enforce.name_classes` collects — so once it answered one without effect, `EnforcingFS` records that answer for
its class (`made_class`), and the C side answers every later request whose name and directory match the same globs
(it matches them itself), makes the name as `EnforcingFS` would, and notes it; the monitor records each noted one,
in order, before its next decision (`made_drain`, `Monitor.made`). `tar x`, `rm -rf` and sqlite's journal were the
rows still Python's (docs/benchmarks.md, issue 16, parts 11 and 12). The name lock is the C side's then
(`name_lock`), and so are inode incarnations (`died`, `epoch`): one table both sides count in.

The library is compiled on first use (`ifc.native`); where that is not possible the mount serves everything in
Python (`OFF`), as it did before.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import struct
from dataclasses import dataclass
from pathlib import Path

from ifc import native
from ifc.monitor.wal_index import HEADER as WAL_HEADER

log = logging.getLogger("ifc.enforce.fastpath")

SOURCE = Path(__file__).with_name("fastpath.c")
ARGS = ["-O2", "-shared", "-fPIC", "-pthread", "-Wall"]
NONE, PLAIN, WRITE_FREE, WRITE_CHECKED = 0, 1, 2, 3  # as fastpath.c's `enum kind`
# libfuse operations answered in C, and the C function for each
# (fsync and fsyncdir stay in Python: on a disk the sync itself costs far more, and tests/test_fuse_fsyncdir.py
# sees the daemon's syncs there)
OPERATIONS = {"getattr": "ifc_fast_getattr", "read": "ifc_fast_read", "write": "ifc_fast_write",
              "flush": "ifc_fast_flush", "getxattr": "ifc_fast_getxattr", "release": "ifc_fast_release",
              "readdir": "ifc_fast_readdir", "open": "ifc_fast_open_file", "chmod": "ifc_fast_chmod",
              "chown": "ifc_fast_chown", "utimens": "ifc_fast_utimens", "mkdir": "ifc_fast_mkdir",
              "create": "ifc_fast_create", "unlink": "ifc_fast_unlink", "rmdir": "ifc_fast_rmdir"}
MAX_FDS = 1 << 20  # descriptors above this (or above the hard limit) are always Python's
DRAIN_EVERY = 4096  # warm hits not yet counted in the monitor before Python counts them
FULL, UNKNOWN_THREAD = -1, -2  # what `warm` may answer besides the count of uncounted hits (as fastpath.c's)
CHANGES = 1 << 30  # a subject's slot | CHANGES: the warm table's key for its changes of mode, owner and times
# one warm answer for fastpath.c's ifc_fast_warm: slot, label store descriptor, dev, ino, tick, window, WAL header
# (the name follows, NUL-terminated)
RECORD = struct.Struct(f"<iiQQQdd{WAL_HEADER}s")
HIT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_int64)
# an answer by class (fastpath.c's ifc_fast_made_class): slot, operation, id, label store descriptor, tick, taint
# generation, window, WAL header (the name follows, NUL-terminated)
CLASS_RECORD = struct.Struct(f"<iiiiQQdd{WAL_HEADER}s")
MADE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_int64)
MADE_OPS = {"create": 1, "delete": 2, "chmod": 3, "read": 4}  # as fastpath.c's enum made_op
# a glob's tokens as fastpath.c's enum token_kind
TOKENS = {"lit": 1, "set": 2, "nset": 3, "star": 4, "all": 5, "dirs": 6, "desc": 7}
MAX_GLOBS = 256  # as fastpath.c


def program(tokens: tuple[tuple, ...]) -> bytes:
    """A glob's tokens (`ifc.match.glob_tokens`) as fastpath.c's matcher takes them. It matches plain names only
    (printable ASCII): a class keeps the ASCII bytes it names, a literal beyond ASCII becomes 0x80, which no
    plain name holds."""
    out = bytearray()
    for token in tokens:
        kind = token[0]
        if kind == "lit":
            out += bytes((TOKENS["lit"], ord(token[1]) if ord(token[1]) < 0x80 else 0x80))
        elif kind == "set":
            chars = bytes(sorted(ord(c) for c in token[1] if ord(c) < 0x80))
            out += bytes((TOKENS["nset" if token[2] else "set"], len(chars))) + chars
        else:
            out.append(TOKENS[kind])
    return bytes(out)


def _packed(names: list[str]) -> bytes:
    """Names as fastpath.c takes a list: each NUL-terminated, one after the other."""
    return b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)


class Off:
    """No fast path: every request is answered in Python (another binding, or no compiler here)."""

    enabled = False

    def generation(self) -> int:
        return 0

    def mark(self, fh: int, kind: int, rel: str = "", generation: int = 0) -> None:
        pass

    def closed(self, fh: int) -> None:
        pass

    def __init__(self):
        self._epochs: dict[tuple[int, int], int] = {}  # backing (dev, ino) → how many files with it died here

    def died(self, dev: int, ino: int) -> None:
        """A file with this backing inode died through the mount: the next with its number is another."""
        self._epochs[(dev, ino)] = self._epochs.get((dev, ino), 0) + 1

    def epoch(self, dev: int, ino: int) -> int:
        return self._epochs.get((dev, ino), 0)

    def name_lock(self):
        """The lock of `ifc.enforce.fs.NameLock` the C side takes too (None: Python's own)."""
        return None

    def classes(self, globs: tuple[bytes, ...]) -> bool:
        return False

    def made_class(self, slot: int, op: str, rel: str, made_id: int, tick: int, generation: int,
                   window: tuple[float, float], labels: tuple[int, bytes] | None) -> int:
        return FULL

    def made_drain(self) -> list[tuple[int, str, int]]:
        return []

    def made_handle(self, fh: int) -> tuple[int, str, int, int] | None:
        return None

    def view(self, dev: int, ino: int, opens: int) -> None:
        pass

    def links_seen(self) -> None:
        pass

    def taint_moved(self) -> None:
        pass

    def decisions(self) -> int:
        return 0

    def stale(self, names: frozenset[str] | None = None) -> None:
        pass

    def caller(self, tid: int, pidfd: int, slot: int) -> None:
        os.close(pidfd)

    def listed(self, directories: list[str]) -> None:
        pass

    def listed_seen(self, watch: tuple[int, bytes] | None) -> None:
        pass

    def held(self, names: list[str]) -> None:
        pass

    def warm(self, slot: int, rel: str, dev: int, ino: int, tick: int, window: tuple[float, float],
             labels: tuple[int, bytes] | None) -> int:
        return 0

    def drain(self, clear: bool = False) -> list[tuple[int, str, int, int]]:
        return []


OFF = Off()


class FastPath(Off):
    """The compiled fast path of one mount (the library's state is per process: one mount per daemon)."""

    enabled = True

    def __init__(self, lib: ctypes.CDLL):
        super().__init__()
        self.lib = lib
        self._made: list[tuple[int, str, int]] = []  # `made_drain`'s, filled by one callback made once
        self._seen = MADE(lambda made_id, rel, when: self._made.append(
            (made_id, rel.decode("utf-8", "surrogateescape"), when)))
        u64, i = ctypes.c_uint64, ctypes.c_int
        lib.ifc_fast_configure.argtypes = [i, u64, ctypes.c_size_t, ctypes.c_size_t, i, i]
        lib.ifc_fast_mark.argtypes = [u64, i, ctypes.c_char_p, u64]
        lib.ifc_fast_close.argtypes = [u64]
        lib.ifc_fast_close.restype = None
        lib.ifc_fast_generation.restype = u64
        lib.ifc_fast_taint_moved.restype = lib.ifc_fast_links_seen.restype = None
        lib.ifc_fast_view.argtypes = [u64, u64, u64]
        lib.ifc_fast_died.argtypes = lib.ifc_fast_epoch_of.argtypes = [u64, u64]
        lib.ifc_fast_epoch_of.restype = u64
        lib.ifc_fast_names.argtypes = [i]
        lib.ifc_fast_names.restype = None
        lib.ifc_fast_glob.argtypes = lib.ifc_fast_made_class.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.ifc_fast_made_drain.argtypes = [MADE]
        lib.ifc_fast_made_drain.restype = None
        lib.ifc_fast_made_handle.argtypes = [u64, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(u64),
                                             ctypes.POINTER(i)]
        lib.ifc_fast_ids.argtypes = [ctypes.c_uint32] * 4
        lib.ifc_fast_ids.restype = None
        lib.ifc_fast_reserve.argtypes = lib.ifc_fast_format.argtypes = [ctypes.c_char_p]
        lib.ifc_fast_fallbacks.argtypes = [ctypes.c_void_p] * len(OPERATIONS)
        lib.ifc_fast_fallbacks.restype = None
        lib.ifc_fast_callers.argtypes = [ctypes.c_void_p, i, ctypes.c_size_t, ctypes.c_uint]
        lib.ifc_fast_decisions.restype = u64
        lib.ifc_fast_stale.restype = lib.ifc_fast_caller.restype = None
        lib.ifc_fast_caller.argtypes = [i, i, i]
        lib.ifc_fast_stale_name.argtypes = [ctypes.c_char_p]
        lib.ifc_fast_stale_name.restype = None
        lib.ifc_fast_warm.argtypes = lib.ifc_fast_listed.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.ifc_fast_held.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.ifc_fast_listed.restype = lib.ifc_fast_listed_seen.restype = lib.ifc_fast_held.restype = None
        lib.ifc_fast_listed_seen.argtypes = [i, ctypes.c_char_p]
        lib.ifc_fast_drain.argtypes = [HIT, i]
        lib.ifc_fast_drain.restype = None
        self._configured = False

    def configure(self, root_fd: int, dev: int, layout: Layout, *, track_links: bool, views: bool,
                  ids: tuple[int, int, int, int] | None, reserved: frozenset[str], formats: tuple[str, ...],
                  one_subject: bool) -> None:
        """What `EnforcingFS` serves that the C side must know: the backing root, whose files appear as the
        agent's, which names it serves itself, (with secret-file views) which names may be views, and whether
        every caller is one subject. Raises RuntimeError when the C side cannot take it: the mount then serves
        everything in Python."""
        if any(set(p) & set("?[]\\") for p in formats):
            raise RuntimeError("fastpath.c matches `*` globs only")
        max_fds = min(MAX_FDS, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        status = self.lib.ifc_fast_configure(root_fd, dev, layout.fh_offset, max_fds, int(track_links), int(views))
        if status == -2:
            raise RuntimeError("the fast path serves one mount per process")
        if status != 0:
            raise RuntimeError("no memory for the descriptor table")
        if ids is not None:
            self.lib.ifc_fast_ids(*ids)
        for name in reserved:
            if self.lib.ifc_fast_reserve(name.encode()) != 0:
                raise RuntimeError("too many reserved names")
        for pattern in formats:
            if self.lib.ifc_fast_format(pattern.encode()) != 0:
                raise RuntimeError("too many secret-file formats")
        self.lib.ifc_fast_callers(layout.context, int(one_subject), *layout.noflush)
        self._configured = True

    def install(self, operations: ctypes.Structure) -> None:
        """Point libfuse's operation table (mfusepy's, before `fuse_main_real` copies it) at the C functions,
        each falling back to the Python callback it replaces. All or nothing: the fallbacks are in place before
        the first entry changes. mfusepy's table object keeps the Python callbacks alive for the whole mount."""
        if not self._configured:
            raise RuntimeError("configure the fast path before installing it")
        prototypes = {f[0]: f[1] for f in type(operations)._fields_}
        python = {name: getattr(operations, name) for name in OPERATIONS}
        missing = [name for name, callback in python.items() if not callback]
        if missing:
            raise RuntimeError(f"no Python callback to fall back to for {', '.join(missing)}")
        self.lib.ifc_fast_fallbacks(*(ctypes.cast(python[name], ctypes.c_void_p) for name in OPERATIONS))
        for name, symbol in OPERATIONS.items():
            setattr(operations, name, ctypes.cast(getattr(self.lib, symbol), prototypes[name]))

    def generation(self) -> int:
        return self.lib.ifc_fast_generation()

    def mark(self, fh: int, kind: int, rel: str = "", generation: int = 0) -> None:
        if self.lib.ifc_fast_mark(fh, kind, rel.encode("utf-8", "surrogateescape"), generation) != 0:
            self.lib.ifc_fast_close(fh)  # no memory for the name: Python answers this descriptor

    def closed(self, fh: int) -> None:
        self.lib.ifc_fast_close(fh)

    def died(self, dev: int, ino: int) -> None:
        if self.lib.ifc_fast_died(dev, ino) != 0:
            raise MemoryError("no memory for an inode incarnation")

    def epoch(self, dev: int, ino: int) -> int:
        return self.lib.ifc_fast_epoch_of(dev, ino)

    def name_lock(self):
        return _CNameLock(self.lib)

    def classes(self, globs: tuple[bytes, ...]) -> bool:
        """Answer names made, removed and changed by class (fastpath.c), with these globs (`program`s): every
        glob a decision on a name may read. False (and no classes) when the C side cannot take them."""
        if len(globs) > MAX_GLOBS or any(self.lib.ifc_fast_glob(g, len(g)) < 0 for g in globs):
            return False
        return self.lib.ifc_fast_globs_done() == 0

    def made_class(self, slot: int, op: str, rel: str, made_id: int, tick: int, generation: int,
                   window: tuple[float, float], labels: tuple[int, bytes] | None) -> int:
        """The monitor answered `op` on `rel` for subject `slot` without effect (`Monitor.decide_made`): answer its
        class in C as answer `made_id` (what `made_drain` gives back), as `warm` says of its arguments. Returns 0,
        UNKNOWN_THREAD (recorded; tell the C side the caller's thread) or FULL (not recorded)."""
        fd, header = labels if labels is not None else (-1, bytes(WAL_HEADER))
        record = CLASS_RECORD.pack(slot, MADE_OPS[op], made_id, fd, tick, generation, *window, header) \
            + rel.encode("utf-8", "surrogateescape") + b"\0"
        return self.lib.ifc_fast_made_class(record, len(record))

    def made_drain(self) -> list[tuple[int, str, int]]:
        """What the C side answered by class since the last drain, in order: (answer id, name, when in ns)."""
        made, self._made = self._made, []
        self.lib.ifc_fast_made_drain(self._seen)
        made, self._made = self._made, made
        return made

    def made_handle(self, fh: int) -> tuple[int, str, int, int] | None:
        """(answer id, name, taint generation, the thread that made it) of a descriptor the C side made (a new
        file), the first time it is asked (the C side leaves its release to Python from then on), else None."""
        buf = ctypes.create_string_buffer(4096)
        generation, by = ctypes.c_uint64(), ctypes.c_int()
        made_id = self.lib.ifc_fast_made_handle(fh, buf, len(buf), ctypes.byref(generation), ctypes.byref(by))
        if not made_id:
            return None
        return made_id, buf.value.decode("utf-8", "surrogateescape"), generation.value, by.value

    def view(self, dev: int, ino: int, opens: int) -> None:
        if self.lib.ifc_fast_view(dev, ino, opens) != 0:
            raise MemoryError("no memory for an open view")

    def links_seen(self) -> None:
        self.lib.ifc_fast_links_seen()

    def taint_moved(self) -> None:
        self.lib.ifc_fast_taint_moved()

    def decisions(self) -> int:
        return self.lib.ifc_fast_decisions()

    def stale(self, names: frozenset[str] | None = None) -> None:
        """Answers recorded before now may not hold: all of them, or (`names`) those for these names, whose
        label changed."""
        if names is None:
            self.lib.ifc_fast_stale()
            return
        for name in names:
            self.lib.ifc_fast_stale_name(name.encode("utf-8", "surrogateescape"))

    def caller(self, tid: int, pidfd: int, slot: int) -> None:
        """Thread `tid` is subject `slot` while it lives; `pidfd` (a pidfd of that thread) is the C side's now."""
        self.lib.ifc_fast_caller(tid, pidfd, slot)

    def listed(self, names: list[str]) -> None:
        """The names (all of them; "" is the root) whose lookup, and a directory's listing, Python serves: they are
        decided reads (`EnforcingFS._names_read`)."""
        self.lib.ifc_fast_listed(_packed(names), len(names))

    def held(self, names: list[str]) -> None:
        """Names this run's own commit gave a stored label, record or object: no class answers them."""
        self.lib.ifc_fast_held(_packed(names), len(names))

    def listed_seen(self, watch: tuple[int, bytes] | None) -> None:
        """The label store as Python last looked (`LabelStore.watch`; None: no database): a commit since — another
        run's names — sends every listing and lookup to Python until it looked again."""
        fd, header = watch if watch is not None else (-1, b"\0" * WAL_HEADER)
        self.lib.ifc_fast_listed_seen(fd, header)

    def warm(self, slot: int, rel: str, dev: int, ino: int, tick: int, window: tuple[float, float],
             labels: tuple[int, bytes] | None) -> int:
        """Serve later read-only opens of `rel` by subject `slot` (changes of its mode, owner and times by
        `slot | CHANGES`) in C while no clock tick after `tick` covers it,
        the time is inside `window` and the label store's WAL index (descriptor, header) is unchanged (None: the
        store is not a database). Called while serving a request of the caller's thread (libfuse's context names
        it). Returns how many warm opens are not yet counted (`drain`), or FULL (nothing recorded:
        `drain(clear=True)` empties the table), or UNKNOWN_THREAD (recorded, but the caller's thread must be told
        first: `caller`)."""
        fd, header = labels if labels is not None else (-1, bytes(WAL_HEADER))
        record = RECORD.pack(slot, fd, dev, ino, tick, *window, header) + rel.encode("utf-8", "surrogateescape") \
            + b"\0"
        return self.lib.ifc_fast_warm(record, len(record))

    def drain(self, clear: bool = False) -> list[tuple[int, str, int, int]]:
        """The warm answers served since the last drain: (subject key, name, how many, last one in ns); with
        `clear`, the table is emptied as well."""
        hits: list[tuple[int, str, int, int]] = []

        def seen(slot: int, rel: bytes, count: int, last: int) -> None:
            hits.append((slot, rel.decode("utf-8", "surrogateescape"), count, last))

        self.lib.ifc_fast_drain(HIT(seen), int(clear))
        return hits


class _CNameLock:
    """`ifc.enforce.fs.NameLock` on fastpath.c's lock (a writer-preferring rwlock), which its creates and deletes
    take too. ctypes lets go of the GIL while a call waits."""

    SHARED, EXCLUSIVE, RELEASE = 0, 1, 2  # as fastpath.c's ifc_fast_names takes them

    def __init__(self, lib: ctypes.CDLL):
        self._lib = lib

    @contextlib.contextmanager
    def _held(self, how: int):
        self._lib.ifc_fast_names(how)
        try:
            yield
        finally:
            self._lib.ifc_fast_names(self.RELEASE)

    def shared(self):
        return self._held(self.SHARED)

    def exclusive(self):
        return self._held(self.EXCLUSIVE)


@dataclass(frozen=True)
class Layout:
    """What the C side needs of the binding: where `fh` is in struct fuse_file_info, the address of libfuse's
    `fuse_get_context` (0: none, so no warm opens), and (byte, bit) of FOPEN_NOFLUSH ((0, 0): not there)."""

    fh_offset: int
    context: int = 0
    noflush: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, module) -> Layout:
        """The layout of mfusepy's structures (libfuse 3)."""
        info = module.fuse_file_info
        noflush = getattr(info, "noflush", None)
        bits = (0, 0) if noflush is None else divmod(noflush.offset * 8 + (noflush.size & 0xFFFF), 8)
        context = ctypes.cast(module._libfuse.fuse_get_context, ctypes.c_void_p).value or 0
        return cls(info.fh.offset, context, bits)


_loaded: list[FastPath] = []


def load() -> Off:
    """The fast path (the library compiled if needed), or `OFF` with a warning when it cannot be built. Its
    state is the process's: one mount per process (as `ifc mount` is)."""
    if _loaded:
        return _loaded[0]
    try:
        _loaded.append(FastPath(native.load_library(native.built(SOURCE, ARGS, "the mount's fast path"))))
    except (native.BuildError, OSError) as exc:
        log.warning("the mount serves every request in Python: %s", getattr(exc, "message", exc))
        return OFF
    return _loaded[0]
