"""The FUSE enforcement filesystem: a passthrough over a backing directory where every operation that
moves data or changes a name is a request to the reference monitor, and its decision is the errno.

A thin adapter (docs/architecture.md): `OPS` is the one table from a FUSE operation to the monitor
operations it needs; the monitor decides; `Denied` carries the errno back to the kernel (EACCES, EPERM
for metadata changes where POSIX says so, device nodes and guarded xattrs). Anything unexpected while
deciding is denied, and the monitor logs it (`Monitor.error`).

    open      O_RDONLY → read, O_WRONLY → write, O_RDWR → read + write, O_TRUNC → write, exec → exec
    create    create            mkdir, mknod, symlink → create       unlink, rmdir → delete
    rename    rename (dest; a directory's every name beneath it too)  link → link (dest)
    chmod, chown, utimens → chmod
    truncate  write             setxattr, removexattr → write        getxattr (user.*) → read
    write     re-decided when the run's taint rose since the last decision on that descriptor,
              so the file's label still floats (also for mmap writes, which reach FUSE as writes)
    readlink  readlink (containment only: where the symlink leads)
    getattr, readdir, statfs, flush, fsync, fsyncdir, release: no decision

The denials file: `/.ifc-denials` (DENIALS_NAME) is served by the daemon, not the backing directory — the run's
newest denials with reason, rule and hint (`Monitor.denials_text`), so the agent can learn why it got EACCES
(its environment names it: IFC_DENIALS). Read-only, owned by root, opened direct-I/O (each read is fresh,
never a stale page); no decision and no taint (it holds only what the run asked and its policy answered);
left out of readdir, so `ls`, `find`, `git status`, `tar` and `rm -rf` never meet it; every change to it is
refused (EPERM, logged). A backing file of that name at the root is hidden and untouchable through the mount.
Secret files (`ifc.secretfiles`): a file the policy labels `secret` whose name is of a recognised format is
opened as a *view* — its content with each value replaced by the run's sentinel, one buffer per inode shared by
its descriptors, so reads, writes, mmap and getattr's size agree. Its read is decided with `Facts(sentinels=
True)` (the monitor then joins the file's label without `secret`); content that does not parse, a file with
other hard links, or a mount that cannot drop the kernel's cached pages (libfuse2) gets today's open and full
label instead. What the sandbox writes is merged back at flush, fsync and release: each sentinel it left goes
back to the real bytes, and a write that would put a real value anywhere but its own value's place is refused. A
rename onto such a name restores the sentinels of that name's file in the renamed content first (editors and
`sed -i` save through a temporary file).

How the daemon touches the disk: every path is resolved beneath the backing root with `openat2(RESOLVE_BENEATH
| RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` on the parent directory and `*at(...,
AT_SYMLINK_NOFOLLOW)` on the last component, so the daemon (which runs as root) never follows a symlink and
never leaves the backing directory, whatever is swapped in underneath it. That is mechanics, not a decision.

What the sandbox may reach is decided by the monitor's containment rules (`ifc.monitor.containment`): this
adapter only collects the facts they need — a symlink's target and which names on its way are symlinks, the
names of a multi-link file (all inside the workspace or not), the xattr's name, the node type of a mknod — and
sends them with the request (`Request.facts`). Hard links found on disk share one label through
`Monitor.share_label`; labels a failed operation moved are put back through `Monitor.restore_labels`. This
module never touches the label store or the event log.

No decision cache of its own here: every open asks the monitor, whose own fast path answers repeats (and knows
about token expiry and revocation, label changes and taint); an open the monitor says repeats is handed to the
compiled fast path (`_warm`), which serves the same subject's next opens of that name while nothing it
depends on has moved.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import stat as stat_mod
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial

from ifc.enforce import fastpath, name_classes
from ifc.enforce.identity import Caller, Identities
from ifc.monitor import Monitor, Request
from ifc.monitor.containment import Facts, symlink_walk, xattr_namespace
from ifc.monitor.monitor import MADE_OPS, Made, Repeat
from ifc.secretfiles.workspace import MAX_VIEW

log = logging.getLogger("ifc.enforce.fs")

# ------------------------------------------------------------------------------------------ the op table

# FUSE operation → monitor operations it is decided by (open and xattrs are decided by their arguments).
OPS: dict[str, tuple[str, ...]] = {
    "create": ("create",), "mkdir": ("create",), "mknod": ("create",), "symlink": ("create",),
    "unlink": ("delete",), "rmdir": ("delete",), "rename": ("rename",), "link": ("link",),
    "chmod": ("chmod",), "chown": ("chmod",), "utimens": ("chmod",), "truncate": ("write",),
    "setxattr": ("write",), "removexattr": ("write",), "fallocate": ("write",), "write": ("write",),
}
# POSIX answers EPERM, not EACCES, when a metadata change is not permitted (chmod(2), chown(2), utimensat(2)),
# and so does the kernel for a device node or a guarded xattr namespace an unprivileged caller may not touch.
EPERM_OPS = frozenset({"chmod"})
EPERM_RULES = frozenset({"containment: device", "containment: xattr"})

FMODE_EXEC = 0x20  # the kernel's __FMODE_EXEC, passed to FUSE in the open flags of an execve
_OPEN_MASK = ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | FMODE_EXEC)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
DENIALS_NAME = ".ifc-denials"  # at the mount's root: the run's denials, for the agent (see the module's doc)
_DENIALS_INO = (1 << 63) - 2  # an inode number no filesystem here hands out
_VIRTUAL_FH = 1 << 48  # descriptors of the denials file start here (real ones are small integers)
_EPOCH_SHIFT = 48  # an inode number's incarnation goes above the bits backing filesystems hand out
# A directory's size, blocks and link count count its names (tmpfs: 20 bytes each; subdirectories): a run that read a
# key could make as many files in the owner's `src/` for the next run's `stat src`. Served as one small directory's,
# with btrfs's link count of 1 ("not counted": find and fts then take no leaf shortcut); fastpath.c serves the same.
DIR_NLINK, DIR_SIZE, DIR_BLOCKS = 1, 4096, 8
STATFS_STEPS = 64  # free blocks and inodes are served in steps of this fraction of the filesystem (`statfs`)


class Denied(OSError):
    """A refusal, as the errno the kernel returns."""

    def __init__(self, code: int, message: str):
        super().__init__(code, message)


class Reserved(Denied):
    """A change to a name the daemon serves itself (the denials file): refused, and logged by the caller."""

    def __init__(self, path: str):
        super().__init__(errno.EPERM, f"`{path}` is the sandbox's own read-only file")
        self.path = path


# ------------------------------------------------------------------------------------------ the backing directory

class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_OPENAT2 = 437  # same number on every architecture (new syscalls share the table)
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x01, 0x02, 0x04, 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
_renameat2 = getattr(_libc, "renameat2", None)
_PATH_PIECE = 3072  # bytes of path per openat2 call, well under PATH_MAX (4096 with its NUL)


_VALID_FLAGS = (os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND | os.O_NONBLOCK
                | os.O_DSYNC | os.O_SYNC | os.O_DIRECT | os.O_LARGEFILE | os.O_DIRECTORY | os.O_NOFOLLOW
                | os.O_NOATIME | os.O_CLOEXEC | os.O_PATH | os.O_TMPFILE | os.O_ASYNC)


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = _RESOLVE) -> int:
    """openat2(2): like openat, but the kernel refuses to resolve outside `dirfd` or through any symlink.
    Flags it does not know (kernel-internal bits FUSE passes on) are dropped; openat2 would refuse them."""
    flags &= _VALID_FLAGS
    how = _OpenHow(flags | os.O_CLOEXEC, mode & 0o7777 if flags & (os.O_CREAT | os.O_TMPFILE) else 0, resolve)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


def renameat2(olddirfd: int, old: str, newdirfd: int, new: str, flags: int) -> None:
    if _renameat2 is None:
        raise OSError(errno.EINVAL, "renameat2 is not available")
    if _renameat2(olddirfd, os.fsencode(old), newdirfd, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), old)


def _walk_error(exc: OSError) -> None:
    """A directory that vanished while a renamed directory was walked moves nowhere (nothing to decide); any
    other error fails the rename, closed."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


def _warm_kind(st: os.stat_result, kind: int) -> bool:
    """What the fast path serves warm (as fastpath.c's `warm_kind`): a single-name regular file; for a change of
    mode, owner or times (`fastpath.CHANGES`), also a directory (it has one name)."""
    return (stat_mod.S_ISREG(st.st_mode) and st.st_nlink == 1) or (kind == fastpath.CHANGES
                                                                    and stat_mod.S_ISDIR(st.st_mode))


class NameLock:
    """Shared by every operation that makes a name, exclusive for a directory's rename: the names beneath a
    directory are decided before it moves, so none may appear beneath it between that walk and rename(2).
    A waiting rename goes before new sharers (it cannot starve under a stream of creates). With the compiled
    fast path, which makes names too, its lock is the C side's (`fastpath.FastPath.name_lock`)."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Backing:
    """The backing directory, reached only through descriptors resolved beneath its root."""

    def __init__(self, root: str, reserved: frozenset[str] = frozenset()):
        self.root = os.path.realpath(root)
        self.fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.dev = st.st_dev
        self.reserved = reserved  # names the daemon serves itself: never reached on disk

    def relative(self, path: str) -> str:
        """A FUSE path (`/a/b`) as a path relative to the root (`a/b`); refuses `..` and NULs outright, and a
        reserved name (every operation that serves one handles it before asking for its backing path)."""
        rel = path.lstrip("/")
        if "\0" in rel or (".." in rel and ".." in rel.split("/")):
            raise Denied(errno.EACCES, f"path `{path}` climbs out of the workspace")
        if rel in self.reserved:
            raise Reserved(rel)
        return rel

    def parent(self, rel: str) -> tuple[int, str, bool]:
        """(directory fd, last component, whether the fd must be closed) for a relative path."""
        head, _, name = rel.rpartition("/")
        if not name:
            raise Denied(errno.EINVAL, "the workspace root has no parent")
        if not head:
            return self.fd, name, False
        if len(head) < _PATH_PIECE // 4 or len(os.fsencode(head)) < _PATH_PIECE:
            return openat2(self.fd, head, os.O_PATH | os.O_DIRECTORY), name, True
        return self._walk(head), name, True

    def _walk(self, head: str) -> int:
        """The directory `head`, opened piece by piece: the caller's own path was legal (PATH_MAX counts from
        its working directory), but the same directory named from the workspace root may be longer than any
        single system call takes."""
        fd, piece, size = self.fd, [], 0
        try:
            for part in head.split("/"):
                length = len(os.fsencode(part)) + 1
                if piece and size + length > _PATH_PIECE:
                    step = openat2(fd, "/".join(piece), os.O_PATH | os.O_DIRECTORY)
                    if fd != self.fd:
                        os.close(fd)
                    fd, piece, size = step, [], 0
                piece.append(part)
                size += length
            return openat2(fd, "/".join(piece), os.O_PATH | os.O_DIRECTORY)
        finally:
            if fd != self.fd:
                os.close(fd)

    def open(self, rel: str, flags: int, mode: int = 0) -> int:
        """Every open but an O_PATH one leaves the file's access time as it was (O_NOATIME): the instant a run
        reads a file is its choice, and a later run's `stat` must not read it off (relatime sets it on the first
        read after a change). Not the file's owner and without CAP_FOWNER, the daemon may not: then as asked."""
        if flags & (os.O_PATH | os.O_NOATIME):
            return self._open(rel, flags, mode)
        try:
            return self._open(rel, flags | os.O_NOATIME, mode)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:
                raise
            return self._open(rel, flags, mode)

    def _open(self, rel: str, flags: int, mode: int) -> int:
        if len(rel) < _PATH_PIECE // 4 or len(os.fsencode(rel)) < _PATH_PIECE:
            return openat2(self.fd, rel or ".", flags, mode)
        return self.at(rel, lambda d, n: openat2(d, n, flags, mode))

    def read(self, rel: str) -> bytes:
        """A regular file's content (a symlink or anything else is refused, like every path here)."""
        fd = self.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            return _read_all(fd)
        finally:
            os.close(fd)

    def lstat(self, rel: str) -> os.stat_result:
        if not rel:
            return os.fstat(self.fd)
        dfd, name, owned = self.parent(rel)
        try:
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        finally:
            if owned:
                os.close(dfd)

    def beneath(self, rel: str) -> tuple[str, ...]:
        """Every name beneath the directory `rel`, relative to it (symlinks as names, never followed)."""
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return tuple(f"{top[2:]}/{name}" if top != "." else name
                         for top, dirs, files, _ in os.fwalk(".", dir_fd=fd, follow_symlinks=False, onerror=_walk_error)
                         for name in (*dirs, *files))
        finally:
            os.close(fd)

    def at(self, rel: str, fn: Callable[[int, str], object]):
        """Run `fn(dirfd, name)` on the last component of `rel`, its parent resolved beneath the root."""
        dfd, name, owned = self.parent(rel)
        try:
            return fn(dfd, name)
        finally:
            if owned:
                os.close(dfd)

    def close(self) -> None:
        os.close(self.fd)


def _chmod_at(dirfd: int, name: str, mode: int) -> None:
    """chmod of a name that is no symlink (a symlink's mode is fixed; Linux has no lchmod)."""
    fd = openat2(dirfd, name, os.O_PATH | os.O_NOFOLLOW)
    try:
        if not stat_mod.S_ISLNK(os.fstat(fd).st_mode):
            os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _dtype_mode(entry: os.DirEntry) -> int:
    if entry.is_symlink():
        return stat_mod.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return stat_mod.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat_mod.S_IFREG
    return 0  # other types: the kernel asks getattr


def _refusals_logged(method):
    """The daemon runs as root, so the backing filesystem refuses it only for reasons of its own (an immutable
    or append-only file, a foreign mount): such an EACCES or EPERM reaches the caller like a denial, so it is
    logged as one, with its reason — never a bare errno the user cannot trace."""

    @functools.wraps(method)
    def op(self, path, *args):
        try:
            return method(self, path, *args)
        except Reserved as exc:
            self._reserved_refused(method.__name__, exc)
            raise
        except PermissionError as exc:  # Denied is an OSError of its own: the monitor logged it already
            self._backing_refused(method.__name__, path, exc)
            raise

    return op


# ------------------------------------------------------------------------------------------ descriptors

@dataclass(slots=True)
class _Handle:
    """A descriptor opened for writing: whose it is and the taint its last write decision was made at (and the
    fast path's taint generation, read before that taint: `fastpath`)."""

    caller: Caller
    path: str
    taint: object
    generation: int


@dataclass(eq=False)
class _View:
    """The sandbox's view of a file served with sentinels: one per open inode, shared by its descriptors."""

    rel: str
    key: tuple[int, int]
    data: bytearray
    dirty: bool = False
    opens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


@dataclass
class Stats:
    decisions: int = 0
    denials: int = 0
    write_redecisions: int = 0
    errors: int = 0


# ------------------------------------------------------------------------------------------ the filesystem

_NO_CLASSES = object()  # EnforcingFS._class_token when the fast path answers nothing by class


class EnforcingFS:
    """FUSE operations (fusepy/mfusepy API) over `root`, each decided by `monitor` (None: bare passthrough).

    `context` returns (uid, gid, tid) of the current request (the library's `fuse_get_context`);
    `mountpoint` is where the sandbox sees the workspace (a symlink pointing back into it stays inside).
    `agent_ids` (uid, gid) presents the workspace as the agent's own: the backing root's owner appears as the
    agent, and what the agent creates or chowns to itself belongs to that owner on disk (git refuses a
    checkout owned by someone else; the kernel's permission checks see the agent as the owner).
    `invalidate(path)` drops the kernel's cached attributes of a name (libfuse's `fuse_invalidate_path`): each
    name of a multi-link file has its own kernel inode in the high-level API, so a change through one name is
    pushed to the others.
    Without a monitor it is a bare passthrough (the benchmarks' baseline): no decisions, containment rules
    included; the daemon itself still never leaves the backing directory.
    """

    use_ns = True  # times as integer nanoseconds
    flag_nullpath_ok = True  # libfuse2: a file unlinked while open is still served through its fh (path None)
    flag_utime_omit_ok = True  # libfuse2: utimens understands UTIME_OMIT and UTIME_NOW

    def __init__(self, root: str, monitor: Monitor | None = None, *, identities: Identities | None = None,
                 context: Callable[[], tuple[int, int, int]] | None = None, mountpoint: str | None = None,
                 agent_ids: tuple[int, int] | None = None, invalidate: Callable[[str], None] | None = None,
                 secret_files=None):
        self.backing = Backing(root, frozenset({DENIALS_NAME}) if monitor is not None else frozenset())
        self.root = self.backing.root
        self.monitor = monitor
        self.identities = identities or Identities()
        self.context = context or (lambda: (os.getuid(), os.getgid(), 0))
        self.mountpoint = os.path.realpath(mountpoint) if mountpoint else None
        self._handles: dict[int, _Handle] = {}
        self._known_links: set[tuple[int, int]] = set()
        self._outside_links: dict[tuple[int, int], tuple[int, int]] = {}
        self._link_lock = threading.Lock()
        self._is_root = os.geteuid() == 0
        owner = os.fstat(self.backing.fd)
        self._owner = (owner.st_uid, owner.st_gid)
        self._agent = agent_ids if agent_ids is not None and tuple(agent_ids) != self._owner else None
        self.invalidate = invalidate
        self._link_names: dict[tuple[int, int], set[str]] = {}  # names the kernel looked up, per multi-link inode
        self.stats = Stats()
        self.mounted = False  # set once libfuse has started serving
        self._virtual: dict[int, bytes] = {}  # open descriptors of the denials file → the text it opened on
        self._next_virtual = _VIRTUAL_FH
        self._started = time.time_ns()
        # Secret files are served as views only where the kernel's cached pages of a name can be dropped: a
        # page cached from a full read must never answer a later read decided with the lower label.
        if secret_files is not None and (invalidate is None or monitor is None):
            log.warning("secret files are served as they are (full label): %s",
                        "no monitor" if monitor is None else "this FUSE binding cannot drop cached pages")
            secret_files = None
        self.secret_files = secret_files
        self._views: dict[tuple[int, int], _View] = {}
        self._view_fh: dict[int, _View] = {}
        self._shown: dict[tuple[int, int], bytes | None] = {}  # what the kernel may cache: a view's bytes, or raw
        self._view_lock = threading.Lock()
        self.fast: fastpath.Off = fastpath.Off()  # (it keeps the inode incarnations: one per filesystem)
        self._slots: dict[tuple[str, str | None], int] = {}  # a subject (and its token) → its number in the fast path
        self._repeats: dict[tuple[int, str], Repeat] = {}  # what the fast path's warm answers repeat (by its key)
        self._warm_lock = threading.Lock()
        self._names = NameLock()
        # answers by class (`Monitor.decide_made`) the fast path gives: number - 1 → (answer, the caller it was for),
        # and the number of each kind of answer; the token callers must present (no classes: `_NO_CLASSES`)
        self._made_answers: list[tuple[Made, Caller]] = []
        self._made_ids: dict[tuple, int] = {}
        self._class_token: str | object | None = _NO_CLASSES
        self._listed_watch: tuple[int, bytes] | bool | None = False  # what the fast path was told (`_listed_seen`)

    def attach_fast(self, fast: fastpath.FastPath, layout: fastpath.Layout) -> None:
        """Let `fast` answer the requests that decide nothing, and the opens the monitor says repeat
        (`ifc.enforce.fastpath`), before serving."""
        from ifc.secretfiles.registry import FORMATS

        fast.configure(self.backing.fd, self.backing.dev, layout, track_links=self.invalidate is not None,
                       views=self.secret_files is not None,
                       ids=(*self._owner, *self._agent) if self._agent is not None else None,
                       reserved=self.backing.reserved, formats=tuple(p for p, _ in FORMATS),
                       one_subject=self.identities.env_var is None)
        self.fast = fast
        self._names = fast.name_lock() or self._names  # the C side makes names too
        if self.monitor is not None:
            self.monitor.on_taint.extend((fast.taint_moved, fast.stale))
            self.monitor.labels.on_change.extend((fast.stale, self._listed))
            self._listed()
            if self.monitor.verifier is not None:
                self.monitor.verifier.on_revocations.append(fast.stale)
            self._classes(fast)

    def _classes(self, fast: fastpath.FastPath) -> None:
        """Let `fast` answer creates, deletes and changes of mode by class (`Monitor.decide_made`) for the callers
        that present the session's token (or none): give it the globs that tell classes apart."""
        monitor, token = self.monitor, self.identities.default.token
        patterns: tuple[str, ...] = ()
        if token is not None:
            try:
                patterns = monitor.verifier.verify(token, now=monitor.clock()).path_patterns()
            except Exception as exc:  # no verifier, or the token does not verify: every request is Python's
                log.info("creates and deletes are decided in Python: the session token does not verify (%s)", exc)
                return
        found = name_classes.globs(monitor.policy, monitor.agent, patterns)
        if not fast.classes(tuple(fastpath.program(g.tokens) for g in found)):
            log.info("creates and deletes are decided in Python: the C side cannot take %d globs", len(found))
            return
        self._class_token = token
        monitor.on_decide.append(self._catch_up)

    # ------------------------------------------------------------------------------------ deciding
    def _caller(self) -> Caller:
        return self.identities.caller(self.context()[2])

    def _request(self, caller: Caller, op: str, target: str, dest: str | None = None,
                 facts: Facts | None = None) -> Request:
        # the command line is read only if the monitor records an event (a denial, a label change)
        return Request(op, target, subject=caller.subject, dest=dest, token=caller.token, parent=caller.parent,
                       pid=caller.pid or None, cmdline=partial(self.identities.cmdline, caller.pid), facts=facts)

    def _check(self, caller: Caller, op: str, target: str, dest: str | None = None,
               facts: Facts | None = None, repeatable: bool = False, made: bool = False) -> Repeat | Made | None:
        """Ask the monitor whether `caller` may do `op`; raise `Denied` (its errno) if not. With `repeatable`,
        say how long the answer would repeat (`Monitor.decide_repeatable`); with `made`, whether it holds for the
        name's class (`Monitor.decide_made`)."""
        monitor = self.monitor
        if monitor is None:
            return None
        repeat = None
        try:
            request = self._request(caller, op, target, dest, facts)
            if repeatable:
                decision, repeat = monitor.decide_repeatable(request)
            elif made:
                decision, repeat = monitor.decide_made(request)
            else:
                decision = monitor.decide(request)
        except Exception as exc:  # decide never raises; if it ever does, deny
            self._error(caller, op, target, exc)
            raise Denied(errno.EACCES, "monitor error") from None
        self.stats.decisions += 1
        if not decision.allowed:
            self.stats.denials += 1
            log.info("denied %s %s for %s (pid %s): %s", op, target, caller.subject, caller.pid, decision.reason)
            code = errno.EPERM if op in EPERM_OPS or decision.rule in EPERM_RULES else errno.EACCES
            raise Denied(code, decision.reason)
        return repeat

    def _error(self, caller: Caller | None, op: str, target: str, exc: BaseException) -> None:
        self.stats.errors += 1
        log.exception("internal error on %s %s, denied", op, target, exc_info=exc)
        if self.monitor is not None:
            request = Request(op, target, subject="?") if caller is None else self._request(caller, op, target)
            self.monitor.error(request, f"internal error in the filesystem, denied: {type(exc).__name__}: {exc}")

    def _backing_refused(self, op: str, path: str | None, exc: OSError) -> None:
        if self.monitor is None:
            return
        rel = (path or "").lstrip("/")
        caller = self._caller()
        reason = f"the backing filesystem refused `{op}`: {exc.strerror} (an immutable or append-only file?)"
        request = self._request(caller, OPS.get(op, (op,))[0], rel)
        self._guard(op, rel, lambda: self.monitor.refuse(request, reason, "backing: permission"))

    def _reserved_refused(self, op: str, exc: Reserved) -> None:
        request = self._request(self._caller(), OPS.get(op, (op,))[0], exc.path)
        self._guard(op, exc.path, lambda: self.monitor.refuse(request, exc.strerror, "ifc: denials file"))

    def _guard(self, op: str, path: str | None, fn: Callable[[], object]):
        """Run an operation; OSErrors pass through as errnos, anything else is logged and denied."""
        try:
            return fn()
        except OSError:
            raise
        except Exception as exc:
            self._error(None, op, path or "", exc)
            raise Denied(errno.EACCES, "internal error") from None

    def _settle_new(self, mode: int, stat: Callable[[], os.stat_result], chown: Callable[[int, int], None],
                    chmod: Callable[[int], None]) -> None:
        """Make a new object what the caller's own system call would have made (the daemon made it, as root):
        the caller's (or the workspace owner's, for the agent), in a set-gid directory the directory's group,
        and exactly the mode the kernel passed — the caller's umask is already applied to it, so the daemon's
        own umask, and the set-id bits chown clears, are put back."""
        st = stat()
        want = mode & 0o7777
        if stat_mod.S_ISDIR(st.st_mode):
            want |= st.st_mode & stat_mod.S_ISGID  # inherited from a set-gid parent
        chowned = False
        if self._is_root:
            uid, gid, _ = self.context()
            if uid not in (0, -1, 0xFFFFFFFF):
                if self._agent is not None and uid == self._agent[0]:
                    uid, gid = self._owner
                keep_group = st.st_gid != os.getegid()  # a set-gid parent gave it the parent's group
                chown(uid, -1 if keep_group else gid)
                chowned = True
                if want & stat_mod.S_ISGID and keep_group and st.st_gid != gid and not stat_mod.S_ISDIR(st.st_mode):
                    want &= ~stat_mod.S_ISGID  # as the kernel does for a caller outside the file's group
        if want != stat_mod.S_IMODE(st.st_mode) or (chowned and want & (stat_mod.S_ISUID | stat_mod.S_ISGID)):
            chmod(want)

    # ------------------------------------------------------------------------------------ attributes
    def _ino(self, dev: int, ino: int) -> int:
        """The inode number the mount reports: the backing one, with its incarnation in the high bits once a
        file with that number died through the mount. Why: ext4 hands a freed number to the next new file at
        once (sqlite's journal, deleted and re-created on every commit), and virtiofsd identifies inodes by
        number — it took the new journal for the old, deleted one it still held and answered ESTALE in the
        microVM. Hard links share a number, so they share an incarnation."""
        epoch = self.fast.epoch(dev, ino)
        return ino ^ (epoch << _EPOCH_SHIFT) if epoch else ino

    def _died(self, st: os.stat_result) -> None:
        """The file `st` lost its last name through the mount: the next file with its number is another one."""
        if st.st_nlink <= 1 or stat_mod.S_ISDIR(st.st_mode):
            self.fast.died(st.st_dev, st.st_ino)

    def _attrs(self, st: os.stat_result) -> dict:
        uid, gid = st.st_uid, st.st_gid
        if self._agent is not None:  # the workspace owner's files appear as the agent's
            uid = self._agent[0] if uid == self._owner[0] else uid
            gid = self._agent[1] if gid == self._owner[1] else gid
        nlink, size, blocks = (DIR_NLINK, DIR_SIZE, DIR_BLOCKS) if stat_mod.S_ISDIR(st.st_mode) else \
            (st.st_nlink, st.st_size, st.st_blocks)
        return {
            "st_mode": st.st_mode, "st_ino": self._ino(st.st_dev, st.st_ino), "st_nlink": nlink, "st_uid": uid,
            "st_gid": gid, "st_size": size, "st_rdev": st.st_rdev, "st_blocks": blocks,
            "st_blksize": st.st_blksize, "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }

    def _is_denials(self, path: str | None) -> bool:
        return self.monitor is not None and path is not None and path.lstrip("/") == DENIALS_NAME

    def _denials_attrs(self, size: int) -> dict:
        return {"st_mode": stat_mod.S_IFREG | 0o444, "st_ino": _DENIALS_INO, "st_nlink": 1, "st_uid": 0,
                "st_gid": 0, "st_size": size, "st_rdev": 0, "st_blocks": (size + 511) // 512, "st_blksize": 4096,
                "st_atime": self._started, "st_mtime": self._started, "st_ctime": self._started}

    def getattr(self, path, fh=None):
        if fh in self._virtual or (fh is None and self._is_denials(path)):
            return self._denials_attrs(len(self._virtual[fh]) if fh in self._virtual else
                                       len(self.monitor.denials_text()))
        if fh is not None:
            st = os.fstat(fh)
        else:  # a lookup: that the name is there, and what is there, is read
            rel = self.backing.relative(path)
            try:
                st = self.backing.lstat(rel)
            except OSError:
                if rel and self.monitor is not None:
                    self._names_read(rel, None)  # a name a tainted run removed: that it is gone is read
                raise
            if rel and self.monitor is not None:
                self._names_read(rel, st)
        if st.st_nlink > 1 and path is not None and self.invalidate is not None and not stat_mod.S_ISDIR(st.st_mode):
            self._seen(path, st)
        attrs = self._attrs(st)
        if self.secret_files is not None and stat_mod.S_ISREG(st.st_mode) and st.st_nlink == 1:
            size = self._view_size(path, fh, st)
            if size is not None:
                attrs["st_size"] = size
        return attrs

    def _view_size(self, path: str | None, fh: int | None, st: os.stat_result) -> int | None:
        """The size the sandbox sees of a file served as a view (None: its own): the open view's, else what
        serving its content now would give."""
        view = self._view_fh.get(fh) if fh is not None else None
        view = view or self._views.get((st.st_dev, st.st_ino))
        if view is not None:
            with view.lock:
                return len(view.data)
        if path is None:
            return None
        rel = self.backing.relative(path)
        if not self.secret_files.eligible(rel) or st.st_size > MAX_VIEW:
            return None
        try:
            fd = self.backing.open(rel, os.O_RDONLY)
        except OSError:
            return None
        try:
            return self.secret_files.served_size(rel, _read_all(fd))
        finally:
            os.close(fd)

    def statfs(self, path):
        """The backing filesystem's, its free blocks and inodes rounded down to a 64th of its size: they move with
        what every run keeps, so a run that read a key could keep as many MiB (a labelled file nobody need read
        again) for the next run's `df` — now it must keep a 64th of the disk per step, for a few bits a run at
        most. Not decided: the guest asks at boot, and `tail -f` asks, so a decision would taint every run in a
        workspace holding one floated file."""
        sv = os.statvfs(self.backing.fd)
        served = {key: getattr(sv, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                    "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}
        for total, free in (("f_blocks", ("f_bfree", "f_bavail")), ("f_files", ("f_ffree", "f_favail"))):
            step = max(1, served[total] // STATFS_STEPS)
            for key in free:
                served[key] -= served[key] % step
        return served

    def _names_read(self, name: str, st: os.stat_result | None, listing: bool = False) -> None:
        """A directory's names are read (`listing`: decided as `list` where a tainted run made or removed names in
        it, `Monitor._name_made`, so the directory has a stored label), or whether `name` is there and, if it is not
        a directory, its attributes (`st`; None: it is not there) — decided as `lookup` where a tainted run made or
        removed that name (`LabelStore.named`) or changed what is there (a stored label) — to taint the reader with
        it. The owner's names and files beside them (`notes.md` at the root) are found as before."""
        labels = self.monitor.labels  # each look syncs with the store first
        if listing:
            decided = labels.get(name) is not None
        else:
            decided = labels.named(name) is not None or (
                (st is None or not stat_mod.S_ISDIR(st.st_mode)) and labels.get(name) is not None)
        self._listed_seen()
        if decided:
            self._decide("list" if listing else "lookup", name,
                         facts=None if listing or st is None else Facts(node_type=stat_mod.S_IFMT(st.st_mode)))

    def _listed_seen(self) -> None:
        """Tell the fast path the label store as the monitor last looked, when it moved since it was told: until
        then, listings and lookups are Python's (another run may have made names)."""
        try:
            watch = self.monitor.labels.watch()
        except LookupError:  # no header to compare: every listing and lookup stays Python's
            return
        if watch != self._listed_watch:
            self._listed_watch = watch
            self.fast.listed_seen(watch)

    def _listed(self, names: frozenset[str] | None = None) -> None:
        """Tell the fast path which names' reading is decided (`_names_read`): those with a stored label (a
        directory's names, a file's attributes) or a record of the run that made or removed them, when the mount
        starts and when another process's commit was loaded (`names` None). This run's own changes need no
        telling: a run that made a name or changed a file already holds what it carries — but a class's answers
        must not take those that now carry a label, record or object (`fast.held`: a key renamed under a plain
        name is `secret` unread), and then the store as it is now (`_listed_seen`), once `names` are stale
        (`on_change` runs `fast.stale` first)."""
        if names is not None:
            held = sorted(name for name in names if not self.monitor.classless(name))
            if held:
                self.fast.held(held)
            self._listed_seen()
            return
        labels = self.monitor.labels
        self.fast.listed(sorted({*labels.snapshot(), *labels.named_snapshot()}))
        self._listed_seen()

    @_refusals_logged
    def readdir(self, path, fh=None):
        rel = self.backing.relative(path)
        if self.monitor is not None:
            self._names_read(rel, None, listing=True)
        fd = self.backing.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # names with their inode numbers and types, straight from getdents (no stat per entry)
            hidden = self.backing.reserved if not rel else ()  # served names (and backing files they hide)
            dev = self.backing.dev
            return [".", "..", *((e.name, {"st_ino": self._ino(dev, e.inode()), "st_mode": _dtype_mode(e)}, 0)
                                 for e in os.scandir(fd) if e.name not in hidden)]
        finally:
            os.close(fd)

    @_refusals_logged
    def readlink(self, path):
        rel = self.backing.relative(path)
        target = self.backing.at(rel, lambda d, n: os.readlink(n, dir_fd=d))
        self._decide("readlink", rel, facts=self._symlink_facts(rel, target))
        return target

    # ------------------------------------------------------------------------------------ open, read, write
    @staticmethod
    def open_ops(flags: int) -> tuple[str, ...]:
        mode = flags & os.O_ACCMODE
        ops = ["exec" if flags & FMODE_EXEC else "read"] if mode in (os.O_RDONLY, os.O_RDWR) else []
        if mode in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC:
            ops.append("write")
        return tuple(ops)

    def _open_denials(self, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise Reserved(DENIALS_NAME)
        with self._link_lock:
            fh = self._next_virtual
            self._next_virtual += 1
            self._virtual[fh] = self.monitor.denials_text()  # one consistent text per open
        return fh

    @_refusals_logged
    def open(self, path, flags):
        return self._handed(self._open(path, flags))

    def _handed(self, fd: int) -> int:
        """`fd` goes to the kernel: tell the fast path what it may answer on it (a number closed earlier may
        come back as a view's, so every descriptor handed out is marked, none left as it was)."""
        if fd in self._virtual or fd in self._view_fh:
            self.fast.mark(fd, fastpath.NONE)
        elif self.monitor is None:
            self.fast.mark(fd, fastpath.WRITE_FREE)
        elif (handle := self._handles.get(fd)) is not None:
            self.fast.mark(fd, fastpath.WRITE_CHECKED, handle.path, handle.generation)
        else:
            self.fast.mark(fd, fastpath.PLAIN)
        return fd

    def _handle(self, caller: Caller, rel: str) -> _Handle:
        """A writable descriptor's record, made *before* its write is decided: the taint it holds is then at most
        the one the decision saw, so a rise while deciding (another thread reading a secret: `cat key | base64 >
        out` opens `out` as `cat` reads) sends the first write to be decided again, floating the label, instead
        of being taken as already decided at the risen taint."""
        generation = self.fast.generation()  # before the taint: a rise in between sends the next write to Python
        return _Handle(caller, rel, self.monitor.taint_of(caller.subject), generation)

    def _open(self, path, flags):
        if self._is_denials(path):
            return self._open_denials(flags)
        rel = self.backing.relative(path)
        caller = None
        ops = self.open_ops(flags)
        if self.secret_files is not None and self.secret_files.eligible(rel):
            caller = self._caller()
            fd = self._open_view(path, rel, flags, ops, caller)
            if fd is not None:
                return fd
        if self.monitor is None:
            return self.backing.open(rel, flags & _OPEN_MASK)
        caller = caller or self._caller()
        decided = self.fast.decisions()  # the tick before deciding: an answer that moves meanwhile is never served warm
        handle = self._handle(caller, rel) if "write" in ops else None  # before deciding (`_handle`)
        repeat = None
        if ops == ("read",) and self.fast.enabled:
            repeat = self._guard("open", rel, lambda: self._check(caller, "read", rel, repeatable=True))
        else:
            self._guard("open", rel, lambda: [self._check(caller, op, rel) for op in ops])
        # O_TRUNC waits until the file is known to be the workspace's alone (a truncation is a write)
        truncate = bool(flags & os.O_TRUNC) and "write" in ops
        fd = self.backing.open(rel, flags & _OPEN_MASK & ~(os.O_TRUNC if truncate else 0))
        try:
            st = os.fstat(fd)
            if st.st_nlink > 1 and stat_mod.S_ISREG(st.st_mode):
                links = self._guard("open", rel, lambda: self._hard_links(caller, rel, st))
                if links == "outside" and "write" in ops and self._copy_up(caller, rel):
                    os.close(fd)
                    fd = self.backing.open(rel, flags & _OPEN_MASK & ~os.O_TRUNC)
                elif links != "known":  # labels were shared (they may have risen), or names lie outside
                    facts = Facts(outside_links=True) if links == "outside" else None
                    for op in ops or ("read",):
                        self._guard("open", rel, lambda op=op: self._check(caller, op, rel, facts=facts))
            if truncate:
                os.truncate(f"/proc/self/fd/{fd}", 0)  # the descriptor may be read-only (O_RDONLY | O_TRUNC)
            if handle is not None:
                self._handles[fd] = handle
            if self.secret_files is not None and self.secret_files.eligible(rel):
                self._show(path, (st.st_dev, st.st_ino), None)  # served as it is: no view's pages may stay
            elif repeat is not None:
                self._warm(caller, rel, st, decided, repeat)
                if repeat.target == rel and st.st_nlink == 1 and stat_mod.S_ISREG(st.st_mode):  # with no facts
                    self._made(caller, rel, decided, 0, self.monitor.made_of(repeat))  # its class's first reads
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _warm(self, caller: Caller, rel: str, st: os.stat_result, decided: int, repeat: Repeat,
              kind: int = 0) -> None:
        """The monitor would answer this read (with `kind` fastpath.CHANGES: this change of mode, owner or times)
        the same way again (`repeat`): let the fast path serve the caller's next ones on `rel` — this inode,
        recorded with the clock tick read before it was decided — without entering Python (issue 16's warm
        paths), for what the C side serves warm (`_warm_kind`)."""
        if repeat.target != rel or not _warm_kind(st, kind):  # the C side keys on the name, labels on the target
            return
        slot = self._slot(caller)
        args = (slot | kind, rel, st.st_dev, st.st_ino, decided, repeat.window, repeat.labels)
        with self._warm_lock:
            self._repeats[(slot | kind, rel)] = repeat
            status = self.fast.warm(*args)
            if status == fastpath.FULL:
                self._count_repeats(self.fast.drain(clear=True))  # start the table again
                status = self.fast.warm(*args)
            if status >= fastpath.DRAIN_EVERY:
                self._count_repeats(self.fast.drain())
        if status == fastpath.UNKNOWN_THREAD:
            self._tell(caller, slot)

    def _slot(self, caller: Caller) -> int:
        """The caller's subject (and token) as the fast path numbers it."""
        slot = self._slots.get(caller.key)
        if slot is None:
            with self._warm_lock:
                slot = self._slots.setdefault(caller.key, len(self._slots))
        return slot

    def _tell(self, caller: Caller, slot: int) -> None:
        """The C side knows a thread's subject while that thread lives: tell it the caller's thread's."""
        tid = self.context()[2]
        pinned = self.identities.pin(tid)
        if pinned is not None and pinned[1].key == caller.key:
            self.fast.caller(tid, pinned[0], slot)
        elif pinned is not None:
            os.close(pinned[0])

    def _count_repeats(self, hits: list[tuple[int, str, int, int]]) -> None:
        """Count what the fast path served warm in the monitor, as its own cached answers are counted."""
        for slot, rel, count, last_ns in hits:
            repeat = self._repeats.get((slot, rel))
            if repeat is None:
                continue
            try:
                self.monitor.repeated(repeat, count, last_ns / 1e9)
            except Exception as exc:  # the opens were served; only their count is lost
                self._error(None, "open", rel, exc)

    def _show(self, path: str, key: tuple[int, int], data: bytes | None) -> None:
        """The kernel is about to read `data` (None: the file itself) for this inode: if it may hold pages of
        something else, drop them first."""
        with self._view_lock:
            before = self._shown.get(key, data)
            self._shown[key] = data
        if before != data:
            self.invalidate(path)

    def _open_view(self, path: str, rel: str, flags: int, ops: tuple[str, ...], caller: Caller) -> int | None:
        """Open `rel` as a view (its values as sentinels), deciding its read with `Facts(sentinels=True)`; None
        when it cannot be one (not a plain single-link file, content that does not parse): the ordinary open,
        with the full label, follows."""
        # the daemon reads the content whatever the caller's mode (the kernel holds the caller to its own), and
        # writes back at offset 0 (so never O_APPEND)
        access = os.O_RDWR if "write" in ops else os.O_RDONLY
        fd = self.backing.open(rel, (flags & _OPEN_MASK & ~(os.O_TRUNC | os.O_APPEND | os.O_ACCMODE)) | access)
        view = None
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode) or st.st_nlink > 1 or st.st_size > MAX_VIEW:
                os.close(fd)
                return None
            key = (st.st_dev, st.st_ino)
            with self._view_lock:
                view, new = self._views.get(key), []
            data = None
            if view is None:
                data = _read_all(fd)
                if self._guard("open", rel, lambda: self.secret_files.served_size(rel, data)) is None:
                    os.close(fd)  # does not parse: the ordinary open, under the full label
                    return None
            facts = Facts(sentinels=True)
            handle = self._handle(caller, rel) if "write" in ops else None  # before deciding (`_handle`)
            for op in ops:  # decided before any sentinel is made: a refused open serves and registers nothing
                self._guard("open", rel, lambda op=op: self._check(caller, op, rel,
                                                                   facts=facts if op == "read" else None))
            if view is None:
                got = self._guard("open", rel, lambda: self.secret_files.view(rel, data))
                if got is None:  # parsed a moment ago; fail closed all the same
                    raise Denied(errno.EACCES, "the file no longer parses")
                served, new = got
                view = _View(rel, key, bytearray(served.data))
            if new:
                request = self._request(caller, "read", rel)
                self.monitor.sentinels_served(request, len(new), [p.item.key for p in new if p.item.kind == "value"])
            with self._view_lock:
                view = self._views.setdefault(key, view)
                view.opens += 1
                self._view_fh[fd] = view
                self.fast.view(*key, view.opens)
            if flags & os.O_TRUNC and "write" in ops:
                with view.lock:
                    view.data.clear()
                    view.dirty = True
            if handle is not None:
                self._handles[fd] = handle
            with view.lock:
                shown = bytes(view.data)
            self._show(path, key, shown)
        except BaseException:
            registered = self._view_fh.pop(fd, None)
            if registered is not None:
                self._drop_view(fd, registered)
            self._handles.pop(fd, None)
            os.close(fd)
            raise
        return fd

    def _drop_view(self, fh: int, view: _View) -> None:
        with self._view_lock:
            view.opens -= 1
            if self._views.get(view.key) is view:
                self.fast.view(*view.key, max(view.opens, 0))
                if view.opens <= 0:
                    del self._views[view.key]

    def _write_back(self, fh: int, view: _View) -> None:
        """Store what the sandbox wrote to a view, its sentinels back to real bytes; refused (EACCES, the file
        kept as it was) when a real value would land anywhere but its own value's place."""
        from ifc.secretfiles import Unmergeable

        with view.lock:
            if not view.dirty:
                return
            written = bytes(view.data)
            try:
                restored = self.secret_files.restore(view.rel, written)
            except Unmergeable as exc:
                handle = self._handles.get(fh)
                if handle is not None:
                    request = self._request(handle.caller, "write", view.rel)
                    reason = f"not written back: {exc.why}; the file keeps its real values"
                    self._guard("write", view.rel, lambda: self.monitor.refuse(request, reason, "secret files"))
                raise Denied(errno.EACCES, str(exc)) from None
            os.pwrite(fh, restored, 0)
            os.ftruncate(fh, len(restored))
            view.dirty = False

    @_refusals_logged
    def create(self, path, mode, flags=None):
        with self._names.shared():
            return self._create(path, mode, flags)

    def _create(self, path, mode, flags):
        rel = self.backing.relative(path)
        caller = handle = None
        if self.monitor is not None:
            caller = self._caller()
            decided = self.fast.decisions()  # the tick before deciding (as in `_open`)
            handle = self._handle(caller, rel)  # before deciding (`_handle`)
            self._decide_class(caller, "create", rel, decided, handle.generation)
        if flags is None:  # fusepy does not pass the flags: open read-write (the kernel enforces the caller's mode)
            flags = os.O_RDWR
        try:
            fd = self.backing.open(rel, (flags & _OPEN_MASK & ~os.O_ACCMODE) | os.O_CREAT | os.O_EXCL | os.O_RDWR,
                                   mode)
        except FileExistsError:
            # The kernel believed the name absent (a cached negative entry, or another writer of the backing
            # tree since its lookup), but a file is there: this is an open of an existing file, decided and
            # served as one (write, truncation, hard links, secret-file views), never under `create` alone.
            if flags & os.O_EXCL:
                raise
            return self.open(path, flags & ~os.O_CREAT)
        try:
            self._settle_new(mode, lambda: os.fstat(fd), lambda uid, gid: os.fchown(fd, uid, gid),
                             lambda m: os.fchmod(fd, m))
        except BaseException:
            os.close(fd)
            raise
        if handle is not None:
            self._handles[fd] = handle
        self._anticipate(caller, rel, lambda: os.fstat(fd))
        return self._handed(fd)

    def read(self, path, size, offset, fh):
        text = self._virtual.get(fh)
        if text is not None:
            return text[offset:offset + size]
        view = self._view_fh.get(fh)
        if view is not None:
            with view.lock:
                return bytes(view.data[offset:offset + size])
        return os.pread(fh, size, offset)

    def _write_check(self, path: str | None, fh: int) -> None:
        handle = self._handle_of(fh)
        if handle is None or self.monitor is None:
            return
        generation = self.fast.generation()
        rel = handle.path if path is None else self.backing.relative(path)
        if self.monitor.taint_of(handle.caller.subject) != handle.taint or rel != handle.path:
            self.stats.write_redecisions += 1
            self._guard("write", rel, lambda: self._check(handle.caller, "write", rel))
            handle.path = rel
            handle.taint = self.monitor.taint_of(handle.caller.subject)
        if generation != handle.generation:  # decided at the present taint: the fast path may write again
            handle.generation = generation
            self._handed(fh)

    def write(self, path, data, offset, fh):
        if fh in self._virtual:
            raise OSError(errno.EBADF, "the denials file is read-only")
        self._write_check(path, fh)
        view = self._view_fh.get(fh)
        if view is not None:
            with view.lock:
                if offset > len(view.data):
                    view.data.extend(bytes(offset - len(view.data)))
                view.data[offset:offset + len(data)] = data
                view.dirty = True
            return len(data)
        return os.pwrite(fh, data, offset)

    @_refusals_logged
    def truncate(self, path, length, fh=None):
        if fh is not None:
            self._write_check(path, fh)
            view = self._view_fh.get(fh)
            if view is not None:
                self._resize(view, length)
                return 0
            os.ftruncate(fh, length)
            return 0
        if self.secret_files is not None and self.secret_files.eligible(self.backing.relative(path)):
            return self._truncate_view(path, length)
        rel = self._metadata("write", path)
        fd = self.backing.open(rel, os.O_WRONLY)
        try:
            os.ftruncate(fd, length)
        finally:
            os.close(fd)
        self._done(path, rel)
        return 0

    @staticmethod
    def _resize(view: _View, length: int) -> None:
        with view.lock:
            if length < len(view.data):
                del view.data[length:]
            else:
                view.data.extend(bytes(length - len(view.data)))
            view.dirty = True

    def _truncate_view(self, path: str, length: int) -> int:
        """truncate(2) by name on a file served as a view: through a view, so the cut is of the served bytes
        and the values before it keep their real bytes."""
        fd = self.open(path, os.O_WRONLY)
        try:
            view = self._view_fh.get(fd)
            if view is None:  # not a view after all (it did not parse): an ordinary truncation
                os.ftruncate(fd, length)
            else:
                self._resize(view, length)
                self._write_back(fd, view)
        finally:
            self.release(path, fd)
        return 0

    @_refusals_logged
    def fallocate(self, path, mode, offset, length, fh):
        if mode != 0:
            raise OSError(errno.EOPNOTSUPP, "only plain allocation is supported")
        self._write_check(path, fh)
        view = self._view_fh.get(fh)
        if view is not None:
            with view.lock:
                short = offset + length - len(view.data)
            if short > 0:
                self._resize(view, offset + length)
            return 0
        os.posix_fallocate(fh, offset, length)
        return 0

    def flush(self, path, fh):
        if fh in self._virtual:
            return 0
        view = self._view_fh.get(fh)
        if view is not None and fh in self._handles:
            self._write_back(fh, view)
        if self._link_names and self._handle_of(fh) is not None:  # at close(2), which waits for it (not release)
            self._changed(os.fstat(fh), skip=path)  # written through one name: the others' size and mtime
        return 0

    def fsync(self, path, datasync, fh):
        if fh in self._virtual:
            return 0
        view = self._view_fh.get(fh)
        if view is not None and fh in self._handles:
            self._write_back(fh, view)
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    @_refusals_logged
    def fsyncdir(self, path, datasync, fh):
        """fsync(2) of a directory: makes the names created, renamed and removed in it durable (sqlite's journal,
        git, editors' atomic saves, pip rely on it). Without it the kernel's first FUSE_FSYNCDIR gets ENOSYS, and
        from then on it answers every directory fsync with success itself — a promise nobody kept. Like fsync,
        no decision: nothing moves between labels. The directory is reached by name (no opendir handle here),
        beneath the backing root like every other path; the root itself is the backing root."""
        fd = self.backing.open(self.backing.relative(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            if datasync:
                os.fdatasync(fd)
            else:
                os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def release(self, path, fh):
        self.fast.closed(fh)  # before the number can be handed out again
        if self._virtual.pop(fh, None) is not None:
            return 0
        view = self._view_fh.pop(fh, None)
        try:
            if view is not None and fh in self._handles:
                with contextlib.suppress(OSError):  # refused and logged at flush already, or now
                    self._write_back(fh, view)
        finally:
            if view is not None:
                self._drop_view(fh, view)
            self._handles.pop(fh, None)
            os.close(fh)
        return 0

    def needs_flush(self, fh: int) -> bool:
        """Whether close(2) of `fh` must reach the daemon: only a descriptor opened for writing does anything at
        flush (a view written back, the file's other names told of the change). Reading alone, its FLUSH would
        be a round trip answering nothing (issue 16: 800 of `find | grep`'s 4,800 requests)."""
        return fh in self._handles

    def direct_io(self, path: str) -> bool:
        """Whether an open of `path` must bypass the kernel's page cache (the denials file changes under one
        inode; `ifc.enforce.mount` sets FOPEN_DIRECT_IO for it)."""
        return self._is_denials(path)

    # ------------------------------------------------------------------------------------ names
    def _decide(self, op: str, rel: str, dest: str | None = None, facts: Facts | None = None) -> Caller | None:
        if self.monitor is None:
            return None
        caller = self._caller()
        if op in MADE_OPS and dest is None and facts is None:
            decided, generation = self.fast.decisions(), self.fast.generation()  # before deciding (`_handle`)
            self._decide_class(caller, op, rel, decided, generation)
        else:
            self._guard(op, rel, lambda: self._check(caller, op, rel, dest, facts))
        return caller

    def _decide_class(self, caller: Caller, op: str, rel: str, decided: int, generation: int) -> None:
        """Decide `op` on `rel`; when the answer holds for the name's class (`Monitor.decide_made`), the fast path
        answers the caller's next ones of that class itself, with the clock tick and taint generation read before
        deciding (a new file it makes is marked with that generation: a rise since sends its first write here)."""
        if not self._by_class(caller):
            self._guard(op, rel, lambda: self._check(caller, op, rel))
            return
        made = self._guard(op, rel, lambda: self._check(caller, op, rel, made=True))
        self._made(caller, rel, decided, generation, made)

    def _by_class(self, caller: Caller) -> bool:
        """Does the fast path answer this caller by class? (It presents the session's token, or none, whose globs
        the C side matches: `_classes`.)"""
        return self._class_token is not _NO_CLASSES and caller.token == self._class_token

    def _made(self, caller: Caller, rel: str, decided: int, generation: int, made: Made | None) -> None:
        if made is None or not self._by_class(caller):
            return
        slot = self._slot(caller)
        kind = (caller.key, made.op, made.taint, made.window)
        with self._warm_lock:
            made_id = self._made_ids.get(kind)
            if made_id is None:
                self._made_answers.append((made, caller))
                made_id = self._made_ids[kind] = len(self._made_answers)
            status = self.fast.made_class(slot, made.op, rel, made_id, decided, generation, made.window, made.labels)
        if status == fastpath.UNKNOWN_THREAD:
            self._tell(caller, slot)

    def _catch_up(self) -> None:
        """Record in the monitor, in order, what the fast path answered by class since (under the monitor's lock,
        before its next decision: a later decision on a name sees the name made or removed)."""
        for made_id, rel, when in self.fast.made_drain():
            self.monitor.made(self._made_answers[made_id - 1][0], rel, when / 1e9)
            self.stats.decisions += 1

    def _handle_of(self, fh: int) -> _Handle | None:
        """The record of a descriptor opened for writing: Python's, or made from what the fast path made it under
        (a new file: `_made`)."""
        handle = self._handles.get(fh)
        if handle is not None or self.monitor is None:
            return handle
        with self._warm_lock:  # the C side answers once: whoever asks second must find the record
            handle = self._handles.get(fh)
            if handle is None and (made := self.fast.made_handle(fh)) is not None:
                made_id, rel, generation, by = made
                answer, caller = self._made_answers[made_id - 1]
                caller = replace(caller, pid=by or caller.pid)  # whose command line a report names
                handle = self._handles[fh] = _Handle(caller, rel, answer.taint, generation)
        return handle

    def _create_node(self, rel: str, mode: int, make, facts: Facts | None = None) -> Caller | None:
        """Decide `create`, make the node with `make(dir_fd, name)`, and give it to the caller (its `Caller`)."""

        def made(d, n):
            make(d, n)
            self._settle_new(mode, lambda: os.stat(n, dir_fd=d, follow_symlinks=False),
                             lambda uid, gid: os.chown(n, uid, gid, dir_fd=d, follow_symlinks=False),
                             lambda m: _chmod_at(d, n, m))

        with self._names.shared():
            caller = self._decide("create", rel, facts=facts)
            self.backing.at(rel, made)
        return caller

    @_refusals_logged
    def mkdir(self, path, mode):
        rel = self.backing.relative(path)
        caller = self._create_node(rel, mode, lambda d, n: os.mkdir(n, mode, dir_fd=d))
        self._anticipate(caller, rel, lambda: self.backing.lstat(rel))
        return 0

    @_refusals_logged
    def mknod(self, path, mode, dev):
        rel = self.backing.relative(path)
        self._create_node(rel, mode, lambda d, n: os.mknod(n, mode, dev, dir_fd=d),
                          Facts(node_type=stat_mod.S_IFMT(mode)))
        return 0

    @_refusals_logged
    def symlink(self, target, source):
        """`ln -s source target`: make `target` (a path in the mount) a symlink holding `source`."""
        rel = self.backing.relative(target)
        self._create_node(rel, 0o777, lambda d, n: os.symlink(source, n, dir_fd=d), self._symlink_facts(rel, source))
        return 0

    def _undoable(self, op: str, rel: str, dest: str | None, apply: Callable[[], object],
                  facts: Facts | None = None) -> None:
        """Decide `op` on `rel` (→ `dest`), then `apply` it on disk; if that fails, the monitor puts back the
        labels its decision moved or dropped (labels only go up: a name keeps at least what it had)."""
        monitor = self.monitor
        names = (rel,) if dest is None else (rel, dest)
        if facts is not None:
            names += tuple(f"{rel}/{sub}" for sub in facts.beneath)
        saved = self._guard(op, rel, lambda: monitor.stored_labels(*names)) if monitor is not None else {}
        caller = self._decide(op, rel, dest, facts)
        try:
            apply()
        except OSError:
            if caller is not None:
                request = self._request(caller, op, rel, dest)
                self._guard(op, rel, lambda: monitor.restore_labels(request, saved))
            raise

    @_refusals_logged
    def unlink(self, path):
        rel = self.backing.relative(path)
        st = self.backing.lstat(rel)  # fail before the monitor forgets the name's label
        if stat_mod.S_ISDIR(st.st_mode):
            raise OSError(errno.EISDIR, "is a directory")
        self._undoable("delete", rel, None, lambda: self.backing.at(rel, lambda d, n: os.unlink(n, dir_fd=d)))
        self._died(st)
        if st.st_nlink > 1:
            self._forget(path, st)
            self._changed(st)
        return 0

    @_refusals_logged
    def rmdir(self, path):
        rel = self.backing.relative(path)
        fd = self.backing.open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            st = os.fstat(fd)
            if os.listdir(fd):
                raise OSError(errno.ENOTEMPTY, "directory not empty")
        finally:
            os.close(fd)
        self._undoable("delete", rel, None, lambda: self.backing.at(rel, lambda d, n: os.rmdir(n, dir_fd=d)))
        self._died(st)
        return 0

    @_refusals_logged
    def rename(self, old, new, flags=0):
        src, dst = self.backing.relative(old), self.backing.relative(new)
        if flags & ~RENAME_NOREPLACE:
            # RENAME_EXCHANGE would swap two contents under two names; the label store can only move one
            # name at a time, so it is refused like on a filesystem without it (callers fall back)
            raise OSError(errno.EINVAL, "only RENAME_NOREPLACE is supported")
        exclusive = False
        while True:  # a file moves under the shared lock; a directory, found there, again under the exclusive one
            with self._names.exclusive() if exclusive else self._names.shared():
                moved, replaced = self._rename_preflight(src, dst, flags)
                directory = stat_mod.S_ISDIR(moved.st_mode) and src != dst
                if directory and not exclusive:
                    exclusive = True
                    continue
                beneath = self.backing.beneath(src) if directory else ()
                links = self._moved_symlinks(src, dst, moved, beneath)
                facts = Facts(beneath=beneath, moved_symlinks=links) if beneath or links else None
                return self._rename(old, new, src, dst, flags, moved, replaced, facts)

    def _moved_symlinks(self, src: str, dst: str, moved: os.stat_result,
                        beneath: tuple[str, ...]) -> tuple[tuple[str, Facts], ...]:
        """Each symlink a rename of `src` to `dst` moves (`moved` itself, or one beneath it), with the facts of the
        symlink rule at its new name: a relative target leads elsewhere from there (out of the workspace, or to
        what the host runs), and the rule judges where."""
        subs = ("",) if stat_mod.S_ISLNK(moved.st_mode) else beneath

        def now(name: str) -> str:  # where a name of the new place is before the move
            return src + name[len(dst):] if name == dst or name.startswith(dst + "/") else name

        out = []
        for sub in subs:
            old, new = (f"{src}/{sub}", f"{dst}/{sub}") if sub else (src, dst)
            try:
                target = self.backing.at(old, lambda d, n: os.readlink(n, dir_fd=d))
            except OSError:  # not a symlink (EINVAL), or gone
                continue
            out.append((new, self._symlink_facts(new, target, now)))
        return tuple(out)

    def _rename(self, old, new, src, dst, flags, moved, replaced, facts: Facts | None):
        """rename(2) of `src` (what `moved` is) to `dst` (`replaced`), decided with the names beneath a moved
        directory (`facts.beneath`: each is judged, and keeps its label, as if it moved alone)."""
        self._keep_served_name("rename", src, dst, moved)
        for sub in facts.beneath if facts is not None else ():  # a directory's files move with it
            self._keep_served_name("rename", f"{src}/{sub}", f"{dst}/{sub}", None, directory=(src, dst))
        restored = self._restore_for(src, dst, moved)

        def apply():
            if restored is not None:  # after the decision, just before the content takes the name
                fd = self.backing.open(src, os.O_WRONLY)
                try:
                    os.pwrite(fd, restored, 0)
                    os.ftruncate(fd, len(restored))
                finally:
                    os.close(fd)
            sd, sn, sowned = self.backing.parent(src)
            try:
                dd, dn, downed = self.backing.parent(dst)
                try:
                    if flags:
                        renameat2(sd, sn, dd, dn, flags)
                    else:
                        os.rename(sn, dn, src_dir_fd=sd, dst_dir_fd=dd)
                finally:
                    if downed:
                        os.close(dd)
            finally:
                if sowned:
                    os.close(sd)

        self._undoable("rename", src, dst, apply, facts)
        if replaced is not None and (replaced.st_dev, replaced.st_ino) != (moved.st_dev, moved.st_ino):
            self._died(replaced)
        if replaced is not None and replaced.st_nlink > 1:
            self._forget(new, replaced)
            self._changed(replaced)
        if moved.st_nlink > 1 and not stat_mod.S_ISDIR(moved.st_mode):
            self._forget(old, moved)
            self._changed(moved)
        return 0

    def _restore_for(self, src: str, dst: str, moved: os.stat_result) -> bytes | None:
        """Content renamed onto a secret file's name, with that file's sentinels back to real bytes (None:
        nothing to restore). Refused, and logged, when a real value would land anywhere but its own value's place."""
        from ifc.secretfiles import SENTINEL_PREFIX, Unmergeable

        if self.secret_files is None or not stat_mod.S_ISREG(moved.st_mode) or not self.secret_files.eligible(dst):
            return None
        fd = self.backing.open(src, os.O_RDONLY)
        try:
            content = _read_all(fd)
        finally:
            os.close(fd)
        if SENTINEL_PREFIX.encode() not in content:
            return None
        try:
            restored = self.secret_files.restore(dst, content)
        except Unmergeable as exc:
            request = self._request(self._caller(), "rename", src, dst)
            reason = f"not renamed: {exc.why}; `{dst}` keeps its real values"
            self._guard("rename", src, lambda: self.monitor.refuse(request, reason, "secret files"))
            raise Denied(errno.EACCES, str(exc)) from None
        return restored if restored != content else None

    def _keep_served_name(self, op: str, src: str, dst: str, st: os.stat_result | None,
                          directory: tuple[str, str] | None = None) -> None:
        """A file served with sentinels gets no name under which it would be served as it is: a hard link (`op`
        "link": a file with two names is served as it is) or a rename to `dst` when that name is of no
        recognised format or without `secret` would hand the sandbox its real values (refused, logged as
        `secret files`) — also when the file moves because a `directory` it is in is renamed (`config/` out of
        `config/*.json`: the request refused is the directory's; `st` None: looked up here, for a served name)."""
        if self.secret_files is None or not self.secret_files.eligible(src):
            return
        if op == "rename" and self.secret_files.eligible(dst):
            return
        if not stat_mod.S_ISREG((st or self.backing.lstat(src)).st_mode):
            return
        how = "a second name" if op == "link" else f"the name `{dst}`"
        by = f" (renaming the directory `{directory[0]}`)" if directory else ""
        reason = (f"`{src}` is served with sentinels in place of its values; under {how}{by} it would be served "
                  "as it is, real values included")
        request = self._request(self._caller(), op, *(directory or (src, dst)))
        self._guard(op, src, lambda: self.monitor.refuse(request, reason, "secret files"))
        raise Denied(errno.EACCES, reason)

    def _rename_preflight(self, src: str, dst: str, flags: int) -> tuple[os.stat_result, os.stat_result | None]:
        """The checks rename(2) would fail on, made before the monitor moves any label; (what moves, what
        it replaces)."""
        st = self.backing.lstat(src)
        if dst == src:
            return st, None
        if dst.startswith(src + "/"):
            raise OSError(errno.EINVAL, "cannot move a directory into itself")
        try:
            dt = self.backing.lstat(dst)
        except FileNotFoundError:
            return st, None
        if flags & RENAME_NOREPLACE:
            raise OSError(errno.EEXIST, "destination exists")
        if stat_mod.S_ISDIR(st.st_mode) and not stat_mod.S_ISDIR(dt.st_mode):
            raise OSError(errno.ENOTDIR, "not a directory")
        if not stat_mod.S_ISDIR(st.st_mode) and stat_mod.S_ISDIR(dt.st_mode):
            raise OSError(errno.EISDIR, "is a directory")
        if stat_mod.S_ISDIR(dt.st_mode):
            fd = self.backing.open(dst, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if os.listdir(fd):
                    raise OSError(errno.ENOTEMPTY, "directory not empty")
            finally:
                os.close(fd)
        return st, dt

    @_refusals_logged
    def link(self, target, source):
        """`ln source target`: a hard link named `target` to the file `source`."""
        with self._names.shared():
            return self._link(target, source)

    def _link(self, target, source):
        src, dst = self.backing.relative(source), self.backing.relative(target)
        st = self.backing.lstat(src)
        if stat_mod.S_ISDIR(st.st_mode):
            raise OSError(errno.EPERM, "cannot hard-link a directory")
        try:
            self.backing.lstat(dst)
        except FileNotFoundError:
            pass
        else:
            raise OSError(errno.EEXIST, "file exists")
        self._keep_served_name("link", src, dst, st)
        facts = None
        if st.st_nlink > 1 and self.monitor is not None:
            caller = self._caller()
            if self._guard("link", src, lambda: self._hard_links(caller, src, st)) == "outside":
                facts = Facts(outside_links=True)

        def apply():
            sd, sn, sowned = self.backing.parent(src)
            try:
                self.backing.at(dst, lambda d, n: os.link(sn, n, src_dir_fd=sd, dst_dir_fd=d, follow_symlinks=False))
            finally:
                if sowned:
                    os.close(sd)

        self._undoable("link", src, dst, apply, facts)
        if facts is None:
            with self._link_lock:
                self._known_links.add((st.st_dev, st.st_ino))
        if self.invalidate is not None:
            self._seen(source, st)
            self._changed(st, skip=target)
        return 0

    # ------------------------------------------------------------------------------------ metadata
    def _metadata(self, op: str, path: str) -> str:
        """Decide a change to the inode at `path` (its other names outside are first broken off); the
        relative path."""
        rel = self.backing.relative(path)
        self._own_inode(self._decide(op, rel), rel, op)
        return rel

    def _done(self, path: str, rel: str) -> None:
        """After a change to the inode at `path`: its other names' cached attributes are dropped."""
        if self._link_names:
            self._changed(self.backing.lstat(rel), skip=path)

    def _anticipate(self, caller: Caller | None, rel: str, stat: Callable[[], os.stat_result]) -> None:
        """A new file's or directory's times (and mode, owner) are set right after it is made by `tar x`, `rsync
        -a` and `cp -a`: the monitor decides that change now, without effect (`Monitor.anticipate`), and the fast
        path makes it when it comes (`_warm`), where it was one of the two trips into Python each new file cost
        (issue 16; in the microVM, each a ~170 µs round trip). Nothing is decided for real here: the change
        counts when it is made."""
        if caller is None or not self.fast.enabled:
            return
        decided = self.fast.decisions()  # the tick before deciding (as in `_open`)
        try:
            repeat = self.monitor.anticipate(self._request(caller, "chmod", rel))
            if repeat is not None:
                self._warm(caller, rel, stat(), decided, repeat, fastpath.CHANGES)
                self._made(caller, rel, decided, 0, self.monitor.made_of(repeat))  # (a change makes no descriptor)
        except Exception as exc:  # nothing is lost: the change is decided in Python when it comes
            log.warning("could not anticipate a change of %s: %s", rel, exc)

    def _change(self, path: str, change: Callable[[str], None]) -> int:
        """A change of the mode, owner or times of the inode at `path` (`change(rel)` makes it), decided as
        `chmod` and made on this name's own inode (`_own_inode`). When the monitor says the answer repeats, the
        same subject's next changes of this file are the fast path's (`_warm`): `tar x` and `rsync -a` set a new
        file's owner, mode and times in a request each."""
        rel = self.backing.relative(path)
        caller = None if self.monitor is None else self._caller()
        decided = self.fast.decisions()  # the tick before deciding (as in `_open`)
        repeat = None if caller is None else self._guard(
            "chmod", rel, lambda: self._check(caller, "chmod", rel, repeatable=self.fast.enabled))
        self._own_inode(caller, rel, "chmod")
        change(rel)
        self._done(path, rel)
        if repeat is not None:
            self._warm(caller, rel, self.backing.lstat(rel), decided, repeat, fastpath.CHANGES)
            self._made(caller, rel, decided, 0, self.monitor.made_of(repeat))  # (a change makes no descriptor)
        return 0

    @_refusals_logged
    def chmod(self, path, mode):
        def change(rel: str) -> None:
            fd = self.backing.open(rel, os.O_PATH)
            try:
                os.chmod(f"/proc/self/fd/{fd}", stat_mod.S_IMODE(mode))
            finally:
                os.close(fd)

        return self._change(path, change)

    @_refusals_logged
    def chown(self, path, uid, gid):
        if self._agent is not None:  # the agent giving a file to itself gives it to the workspace's owner
            uid = self._owner[0] if uid == self._agent[0] else uid
            gid = self._owner[1] if gid == self._agent[1] else gid
        return self._change(path, lambda rel: self.backing.at(
            rel, lambda d, n: os.chown(n, uid, gid, dir_fd=d, follow_symlinks=False)))

    @_refusals_logged
    def utimens(self, path, times=None):
        def change(rel: str) -> None:
            now = time.time_ns()
            if times is None:
                ns = (now, now)
            else:
                atime, mtime = times
                if UTIME_OMIT in (atime, mtime):
                    st = self.backing.lstat(rel)
                    atime = st.st_atime_ns if atime == UTIME_OMIT else atime
                    mtime = st.st_mtime_ns if mtime == UTIME_OMIT else mtime
                ns = (now if atime == UTIME_NOW else atime, now if mtime == UTIME_NOW else mtime)
            self.backing.at(rel, lambda d, n: os.utime(n, ns=ns, dir_fd=d, follow_symlinks=False))

        return self._change(path, change)

    # ------------------------------------------------------------------------------------ xattrs
    def _xattr_path(self, rel: str, fn: Callable[[str], object]):
        fd = self.backing.open(rel, os.O_PATH)
        try:
            return fn(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)

    @_refusals_logged
    def getxattr(self, path, name, position=0):
        if self._is_denials(path):
            raise OSError(errno.ENODATA, "no such attribute")
        rel = self.backing.relative(path)
        if xattr_namespace(name) not in ("security", "system"):  # user.* (and trusted.*) carry data
            self._decide("read", rel)
        try:
            return self._xattr_path(rel, lambda p: os.getxattr(p, name))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ENODATA, "no such attribute") from None
            raise

    @_refusals_logged
    def listxattr(self, path):
        if self._is_denials(path):
            return []
        rel = self.backing.relative(path)
        try:
            names = self._xattr_path(rel, os.listxattr)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return []
            raise
        if any(xattr_namespace(name) not in ("security", "system") for name in names):
            self._decide("read", rel)  # `user.*` names carry data as their values do (`ls -l` asks every file)
        return names

    def _decide_xattr(self, path: str, name: str) -> str:
        # system.* (ACLs) change permissions; other namespaces carry data (the monitor refuses guarded ones)
        rel = self.backing.relative(path)
        op = "chmod" if xattr_namespace(name) == "system" else "write"
        facts = Facts(xattr=name)
        self._own_inode(self._decide(op, rel, facts=facts), rel, op, facts)
        return rel

    @_refusals_logged
    def setxattr(self, path, name, value, options, position=0):
        rel = self._decide_xattr(path, name)
        self._xattr_path(rel, lambda p: os.setxattr(p, name, value, options))
        self._done(path, rel)
        return 0

    @_refusals_logged
    def removexattr(self, path, name):
        rel = self._decide_xattr(path, name)
        self._xattr_path(rel, lambda p: os.removexattr(p, name))
        self._done(path, rel)
        return 0

    # ------------------------------------------------------------------------------------ hard links
    def _own_inode(self, caller: Caller | None, rel: str, op: str, facts: Facts | None = None) -> None:
        """Before a change to a file's inode (its data or metadata), decided as `op`: if some of its names lie
        outside the workspace, give this name an inode of its own, so the change stays inside (`_copy_up`); if
        its names were found just now, decide again, as the change of all of them it is (`Monitor._write_like`)."""
        if caller is None:
            return
        st = self.backing.lstat(rel)
        if st.st_nlink <= 1 or not stat_mod.S_ISREG(st.st_mode):
            return
        links = self._guard("link", rel, lambda: self._hard_links(caller, rel, st))
        if links == "outside":
            self._copy_up(caller, rel)
        elif links == "shared":
            self._guard(op, rel, lambda: self._check(caller, op, rel, facts=facts))

    def _copy_up(self, caller: Caller, rel: str) -> bool:
        """Break the hard link between `rel` and its names outside the workspace (a local `git clone` links
        its pack files to the source repository): copy the content to a new file in the same directory,
        with the same mode, owner and times, and rename it over `rel`. Reading through the old link was the
        workspace's content; writing through it would change the file outside. If the copy fails, the
        monitor refuses the change (the hard-link rule) and logs why."""
        tmp = f".ifc-copy-up-{os.getpid()}-{threading.get_ident()}"

        def copy(d: int, name: str) -> None:
            src = openat2(d, name, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                st = os.fstat(src)
                dst = openat2(d, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    while os.copy_file_range(src, dst, 1 << 30):
                        pass
                    os.fchown(dst, st.st_uid, st.st_gid)
                    os.fchmod(dst, stat_mod.S_IMODE(st.st_mode))
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(dst)
                os.rename(tmp, name, src_dir_fd=d, dst_dir_fd=d)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=d)
                raise
            finally:
                os.close(src)

        try:
            self.backing.at(rel, copy)
        except OSError as exc:
            log.warning("cannot copy up %s (%s): the change is refused", rel, exc.strerror)
            self._guard("write", rel, lambda: self._check(caller, "write", rel, facts=Facts(outside_links=True)))
            return False
        log.info("copied up %s: its other names lie outside the workspace", rel)
        return True

    def _seen(self, path: str, st: os.stat_result) -> None:
        """Remember a name of a multi-link file the kernel has looked up (its attributes are cached per name)."""
        names = self._link_names.setdefault((st.st_dev, st.st_ino), set())
        names.add(path)
        self.fast.links_seen()  # flush pushes a change to the other names: Python's from now on

    def _changed(self, st: os.stat_result, skip: str | None = None) -> None:
        """The inode `st` changed (link count, mode, owner, times): drop what the kernel cached for its
        other names, or they would show the old attributes until attr_timeout."""
        if self.invalidate is None:
            return
        for name in list(self._link_names.get((st.st_dev, st.st_ino), ())):
            if name != skip:
                self.invalidate(name)

    def _forget(self, path: str, st: os.stat_result) -> None:
        names = self._link_names.get((st.st_dev, st.st_ino))
        if names is not None:
            names.discard(path)
            if not names:
                self._link_names.pop((st.st_dev, st.st_ino), None)

    # ------------------------------------------------------------------------------------ containment facts
    def _symlink_facts(self, rel: str, target: str, now: Callable[[str], str] = str) -> Facts:
        """What the symlink rule needs: the target, which names on its way are symlinks, where the workspace
        really is and where the sandbox sees it. `now`: where a name on the way is before a rename that makes
        `rel` (`_moved_symlinks`)."""
        on_walk = []
        for name in symlink_walk(rel, target):
            with contextlib.suppress(OSError):  # a name that is not there (or lies past a symlink) is no symlink
                if stat_mod.S_ISLNK(self.backing.lstat(now(name)).st_mode):
                    on_walk.append(name)
        return Facts(symlink_target=target, symlinks_on_walk=frozenset(on_walk), backing_root=self.root,
                     mountpoint=self.mountpoint)

    def _hard_links(self, caller: Caller, rel: str, st: os.stat_result) -> str:
        """A file with several names: "known" (a group seen whole before), "shared" (every name was found
        inside the workspace just now: the monitor gave them the join of their labels — the content is one,
        whichever name reads it), or "outside" (some name is not in the workspace; the rule refuses it)."""
        key = (st.st_dev, st.st_ino)
        if key in self._known_links:
            return "known"
        with self._link_lock:
            if key in self._known_links:
                return "known"
            if self._outside_links.get(key) == (st.st_nlink, st.st_ctime_ns):
                return "outside"  # seen with names outside, and no link made or removed since
            names = self._names_of(st) if st.st_dev == self.backing.dev else []
            if len(names) < st.st_nlink:
                self._outside_links[key] = (st.st_nlink, st.st_ctime_ns)
                return "outside"
            self.monitor.share_label(self._request(caller, "link", rel), names)
            self._known_links.add(key)
            return "shared"

    def _names_of(self, st: os.stat_result) -> list[str]:
        """Every name of the inode inside the backing directory (a walk, only for unseen multi-link files)."""
        names = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in filenames:
                full = os.path.join(dirpath, name)
                try:
                    other = os.lstat(full)
                except OSError:
                    continue
                if other.st_ino == st.st_ino and other.st_dev == st.st_dev:
                    names.append(os.path.relpath(full, self.root))
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        return names

    # ------------------------------------------------------------------------------------ lifecycle
    def init(self, path):
        self.mounted = True

    def destroy(self, path):
        self.identities.close()
        if self.monitor is not None:
            with self._warm_lock:
                self._count_repeats(self.fast.drain())
            try:
                self.monitor.flush()
            except Exception as exc:
                log.error("cannot flush the event log: %s", exc)
        return 0
