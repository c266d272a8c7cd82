"""The mount's name lock (`ifc.enforce.fs.NameLock`): a directory's rename decides every name beneath it, so
no name may be made beneath it between that walk and rename(2); makers of names run side by side otherwise."""

from __future__ import annotations

import threading
import time

from ifc.enforce.fs import NameLock


def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_makers_of_names_share_it():
    lock, inside, both = NameLock(), [], threading.Barrier(2, timeout=5)

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


def test_a_rename_waits_for_the_makers_inside_and_goes_before_new_ones():
    lock, order, release = NameLock(), [], threading.Event()

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
    _until(lambda: lock._waiting == 1)
    late = threading.Thread(target=make, args=("b",))
    late.start()
    time.sleep(0.1)
    assert order == ["a in"], "neither the rename nor a new maker may enter while `a` makes its name"
    release.set()
    for t in (first, renamer, late):
        t.join(10)
    assert order == ["a in", "a out", "rename", "b in", "b out"]
