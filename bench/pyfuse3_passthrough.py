"""A minimal passthrough on pyfuse3 (libfuse3's low-level API), to measure what the low-level API buys in Python.

    .venv/bin/python bench/pyfuse3_passthrough.py SRC MNT [--timeout 10]

Issue 16 asks whether a low-level binding is worth switching `EnforcingFS` to. This is the bare binding cost of
that design, no monitor: inodes instead of paths, each node an `O_PATH` descriptor of the backing file found by
name in its parent's descriptor (`openat(..., O_NOFOLLOW)`; so containment comes from the handles themselves,
no path is ever resolved from the root), READDIRPLUS (every listed entry carries its attributes and becomes a
node, so the lookups tools make after a listing are answered by the kernel), entry/attribute timeouts of
`--timeout` seconds and negative entries cached as long (as `MountOptions` does for mfusepy), the page cache
kept across opens (`keep_cache`, as `kernel_cache`). pyfuse3 runs the handlers as trio tasks in one thread.

Not a product: no monitor, no ownership of new files (they belong to the daemon's user), no xattrs; symlinks
are created, listed and read but their own times/modes are not set. bench_workloads.py runs it as the
`lowlevel` column (`--modes`), and bench_fuse.py's `--serve` starts it for the binding `pyfuse3`.
Needs the `lowlevel` extra (`pip install -e .[lowlevel]`: pyfuse3), which builds against libfuse3's headers: on Debian
`apt-get install libfuse3-dev pkg-config gcc`.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import stat as stat_mod
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ifc.enforce.fs import renameat2  # the product's renameat2 (RENAME_NOREPLACE) wrapper

O_PATH_NOFOLLOW = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Node:
    """One inode the kernel knows: the backing file's O_PATH descriptor and the kernel's lookup count."""

    fd: int
    key: tuple[int, int]  # backing (st_dev, st_ino): hard links are one node
    lookups: int = 0
    mode: int = 0


@dataclass
class Dir:
    """An open directory: its entries as listed at opendir (readdir offsets index this list)."""

    fd: int
    names: list[str] = field(default_factory=list)


def _proc(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class Passthrough(pyfuse3.Operations):
    """Inode-table passthrough: node id -> Node; (dev, ino) -> node id. The backing tree is one filesystem."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, root: str, timeout: float):
        super().__init__()
        self.root = root
        self.timeout = timeout
        fd = os.open(root, O_PATH_NOFOLLOW | os.O_DIRECTORY)
        st = os.fstat(fd)
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(fd, (st.st_dev, st.st_ino), 1, st.st_mode)}
        self.ids: dict[tuple[int, int], int] = {(st.st_dev, st.st_ino): pyfuse3.ROOT_INODE}
        self.next_id = 1 << 63
        self.dirs: dict[int, Dir] = {}

    # ------------------------------------------------------------------ inodes

    def _attrs(self, st: os.stat_result, node_id: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node_id
        a.generation = 0
        a.entry_timeout = self.timeout
        a.attr_timeout = self.timeout
        a.st_mode, a.st_nlink, a.st_uid, a.st_gid = st.st_mode, st.st_nlink, st.st_uid, st.st_gid
        a.st_rdev, a.st_size, a.st_blksize, a.st_blocks = st.st_rdev, st.st_size, st.st_blksize, st.st_blocks
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        return a

    def _node_for(self, parent_fd: int, name: str) -> tuple[int, os.stat_result]:
        """The node of `name` in the directory `parent_fd`, its lookup count raised by one."""
        fd = os.open(name, O_PATH_NOFOLLOW, dir_fd=parent_fd)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        node_id = self.ids.get(key)
        if node_id is not None:
            os.close(fd)
            node = self.nodes[node_id]
        else:
            # the backing inode number, as `use_ino` gives the path API: git's index, tar and cp -a compare
            # them with what they saw natively. Never reused while we hold it: the O_PATH descriptor keeps
            # the inode alive. Only a file numbered like the root (1) gets a number from past 2**63.
            node_id = st.st_ino
            if node_id == pyfuse3.ROOT_INODE or node_id in self.nodes:
                node_id, self.next_id = self.next_id, self.next_id + 1
            node = self.nodes[node_id] = Node(fd, key, 0, st.st_mode)
            self.ids[key] = node_id
        node.lookups += 1
        return node_id, st

    def _entry(self, parent_fd: int, name: str) -> pyfuse3.EntryAttributes:
        node_id, st = self._node_for(parent_fd, name)
        return self._attrs(st, node_id)

    def _fd(self, inode: int) -> int:
        try:
            return self.nodes[inode].fd
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".." and parent_inode == pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)  # never the backing directory's parent
        try:
            return self._entry(self._fd(parent_inode), os.fsdecode(name))
        except FileNotFoundError:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0  # cached by the kernel for entry_timeout
            negative.entry_timeout = self.timeout
            return negative
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def forget(self, inode_list):
        for inode, n in inode_list:
            node = self.nodes.get(inode)
            if node is None or inode == pyfuse3.ROOT_INODE:
                continue
            node.lookups -= n
            if node.lookups <= 0:
                del self.nodes[inode]
                del self.ids[node.key]
                os.close(node.fd)

    async def getattr(self, inode, ctx=None):
        try:
            return self._attrs(os.fstat(self._fd(inode)), inode)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def setattr(self, inode, attr, fields, fh, ctx):
        fd = self._fd(inode)
        path = _proc(fd)
        try:
            if fields.update_size:
                if fh is not None:
                    os.ftruncate(fh, attr.st_size)
                else:
                    os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat_mod.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1)
            if fields.update_atime or fields.update_mtime:
                st = os.fstat(fd)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
            return self._attrs(os.fstat(fd), inode)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def readlink(self, inode, ctx):
        try:
            return os.fsencode(os.readlink("", dir_fd=self._fd(inode)))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    # ------------------------------------------------------------------ names

    def _named(self, parent_inode: int, name: bytes, make) -> pyfuse3.EntryAttributes:
        parent = self._fd(parent_inode)
        text = os.fsdecode(name)
        try:
            make(parent, text)
            return self._entry(parent, text)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._named(parent_inode, name, lambda d, n: os.mkdir(n, stat_mod.S_IMODE(mode), dir_fd=d))

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._named(parent_inode, name, lambda d, n: os.mknod(n, mode, rdev, dir_fd=d))

    async def symlink(self, parent_inode, name, target, ctx):
        return self._named(parent_inode, name, lambda d, n: os.symlink(os.fsdecode(target), n, dir_fd=d))

    async def link(self, inode, new_parent_inode, new_name, ctx):
        source = _proc(self._fd(inode))
        return self._named(new_parent_inode, new_name,
                           lambda d, n: os.link(source, n, dst_dir_fd=d, follow_symlinks=True))

    async def unlink(self, parent_inode, name, ctx):
        try:
            os.unlink(os.fsdecode(name), dir_fd=self._fd(parent_inode))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def rmdir(self, parent_inode, name, ctx):
        try:
            os.rmdir(os.fsdecode(name), dir_fd=self._fd(parent_inode))
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_dir, new_dir = self._fd(parent_inode_old), self._fd(parent_inode_new)
        try:
            if flags:
                renameat2(old_dir, os.fsdecode(name_old), new_dir, os.fsdecode(name_new), flags)
            else:
                os.rename(os.fsdecode(name_old), os.fsdecode(name_new), src_dir_fd=old_dir, dst_dir_fd=new_dir)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    # ------------------------------------------------------------------ files

    async def open(self, inode, flags, ctx):
        try:
            # O_NOFOLLOW was the kernel's to apply at lookup; here it would refuse the /proc magic link itself
            fh = os.open(_proc(self._fd(inode)),
                         flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW) | os.O_CLOEXEC)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._fd(parent_inode)
        text = os.fsdecode(name)
        try:
            fh = os.open(text, (flags | os.O_CREAT | os.O_CLOEXEC) & ~os.O_NOCTTY, stat_mod.S_IMODE(mode),
                         dir_fd=parent)
            return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._entry(parent, text)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None

    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    async def write(self, fh, off, buf):
        return os.pwrite(fh, buf, off)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        os.close(fh)

    async def fsync(self, fh, datasync):
        (os.fdatasync if datasync else os.fsync)(fh)

    # ------------------------------------------------------------------ directories

    async def opendir(self, inode, ctx):
        try:
            fd = os.open(_proc(self._fd(inode)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        with os.scandir(fd) as entries:
            names = sorted(e.name for e in entries)
        self.dirs[fd] = Dir(fd, names)
        return fd

    async def readdir(self, fh, start_id, token):
        d = self.dirs[fh]
        for i in range(start_id, len(d.names)):
            name = d.names[i]
            try:
                node_id, st = self._node_for(d.fd, name)  # READDIRPLUS: the kernel will hold this node
            except FileNotFoundError:
                continue  # removed since opendir
            except OSError as exc:
                raise pyfuse3.FUSEError(exc.errno) from None
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(st, node_id), i + 1):
                await self.forget([(node_id, 1)])  # not sent: the kernel holds no reference for it
                return

    async def releasedir(self, fh):
        os.close(self.dirs.pop(fh).fd)

    async def fsyncdir(self, fh, datasync):
        os.fsync(fh)

    async def statfs(self, ctx):
        sv = os.statvfs(self.root)
        out = pyfuse3.StatvfsData()
        for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                  "f_namemax"):
            setattr(out, k, getattr(sv, k))
        return out


def serve(src: str, mnt: str, timeout: float = 10.0, loop: str = "trio") -> None:
    """Mount `src` at `mnt` and serve until SIGTERM/SIGINT, then unmount; `loop` is pyfuse3's event loop,
    trio (its default) or asyncio (`pyfuse3.asyncio`)."""
    if loop == "asyncio":
        _serve_asyncio(src, mnt, timeout)
        return
    _mount(src, mnt, timeout)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(stop_on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=True)


def _mount(src: str, mnt: str, timeout: float) -> None:
    options = set(pyfuse3.default_options) | {f"fsname=ifc-bench:{src}", "subtype=pyfuse3"}
    if os.geteuid() == 0:
        options.add("allow_other")
    pyfuse3.init(Passthrough(src, timeout), mnt, options)


def _serve_asyncio(src: str, mnt: str, timeout: float) -> None:
    import asyncio

    import pyfuse3.asyncio as pyfuse3_asyncio

    pyfuse3_asyncio.enable()
    _mount(src, mnt, timeout)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, pyfuse3.terminate)
        await pyfuse3.main()

    try:
        asyncio.run(run())
    finally:
        pyfuse3.close(unmount=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src")
    parser.add_argument("mnt")
    parser.add_argument("--timeout", type=float, default=10.0, help="entry/attribute/negative timeouts, seconds")
    parser.add_argument("--loop", choices=("trio", "asyncio"), default="trio")
    args = parser.parse_args()
    serve(args.src, args.mnt, args.timeout, args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
