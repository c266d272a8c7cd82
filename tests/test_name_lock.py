"""The mount's name lock (`ifc.enforce.fs.NameLock`): a directory's rename decides every name beneath it, so
no name may be made beneath it between that walk and rename(2); makers of names run side by side otherwise. Both
locks: Python's, and the compiled fast path's (`fastpath.FastPath.name_lock`), which its creates take too."""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
import time

import pytest

from ifc import native
from ifc.enforce import fastpath
from ifc.enforce.fs import NameLock


@pytest.fixture(params=["python", "c"])
def make_lock(request, tmp_path):
    """A new name lock: Python's, or the C side's in a copy of the library of its own (set up as a mount sets it
    up: its state is per process, a copy is another instance)."""
    if request.param == "python":
        return NameLock
    try:
        built = native.built(fastpath.SOURCE, fastpath.ARGS, "the mount's fast path")
    except native.BuildError as exc:
        pytest.skip(f"no fast path here: {exc.message}")
    copy = tmp_path / "names.so"
    shutil.copy(built, copy)
    lib = ctypes.CDLL(str(copy))
    lib.ifc_fast_configure.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_size_t,
                                       ctypes.c_int, ctypes.c_int]
    lib.ifc_fast_names.argtypes = [ctypes.c_int]
    root = os.open(tmp_path, os.O_PATH)
    request.addfinalizer(lambda: os.close(root))
    assert lib.ifc_fast_configure(root, 0, 16, 64, 0, 0) == 0
    return lambda: fastpath._CNameLock(lib)


def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_makers_of_names_share_it(make_lock):
    lock, inside, both = make_lock(), [], threading.Barrier(2, timeout=5)

    def make(tag: str) -> None:
        with lock.shared():
            inside.append(tag)
            both.wait()  # both hold it at once, or this times out

    threads = [threading.Thread(target=make, args=(tag,)) for tag in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(inside) == ["a", "b"]


def test_a_rename_waits_for_the_makers_inside_and_goes_before_new_ones(make_lock):
    lock, order, release = make_lock(), [], threading.Event()

    def make(tag: str) -> None:
        with lock.shared():
            order.append(f"{tag} in")
            release.wait(10)
            order.append(f"{tag} out")

    def rename() -> None:
        with lock.exclusive():
            order.append("rename")

    first = threading.Thread(target=make, args=("a",))
    first.start()
    _until(lambda: order == ["a in"])
    renamer = threading.Thread(target=rename)
    renamer.start()
    _until(lambda: getattr(lock, "_waiting", 1) == 1)  # (the C lock's queue cannot be seen: the sleep below)
    time.sleep(0.1)
    late = threading.Thread(target=make, args=("b",))
    late.start()
    time.sleep(0.1)
    assert order == ["a in"], "neither the rename nor a new maker may enter while `a` makes its name"
    release.set()
    for t in (first, renamer, late):
        t.join(10)
    assert order == ["a in", "a out", "rename", "b in", "b out"]
