"""The guest image: a Debian cloud kernel and a small initramfs, built once per kernel version and cached.

`build()` runs five steps, each reported to a progress callback and each skipped when its output is
already there for the same inputs:

1. resolve  — the current cloud kernel package (`apt-cache depends linux-image-cloud-amd64`)
2. download — `apt-get download` the package into the cache (never installed)
3. unpack   — `dpkg -x` it, then `depmod -b` so `modules.dep` matches the unpacked tree
4. modules  — the virtio, FUSE/virtiofs, network and console modules plus their dependencies, in load order
5. initramfs — busybox-static, those modules, `/etc/ifc/modules` (the load order), the init from
   `vmm/guest/init` and the control-channel daemon `vmm/guest/ifc-guestd.c` (compiled static here, with the
   host's C compiler), as an uncompressed newc cpio written by `write_cpio` below (no external cpio
   needed; decompressing it in an emulated CPU cost more than loading the bigger file). The kernel is
   unpacked to its ELF when it can boot through PVH (`vmm.pvh`): no decompressor runs in the guest.

Layout: `$XDG_CACHE_HOME/ifc-sandbox/vm/<kver>/` holds the .deb, `root/` (the unpacked package),
`vmlinux` (or `vmlinuz`), `initrd.cpio` and `manifest.json`; the manifest records a hash over every input (package file,
busybox, init, guestd source, module list, this builder's format version), so a changed input rebuilds the initramfs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ifc import native
from ifc.errors import UserError
from vmm import pvh

FORMAT = 2  # bump when the initramfs layout changes: every cached image is rebuilt
META_PACKAGE = "linux-image-cloud-amd64"
MODULES = ("virtio_ring", "virtio", "virtio_mmio", "fuse", "virtiofs", "virtio_net", "virtio_console")
GUEST_DIR = Path(__file__).resolve().parent / "guest"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
GUEST_SOURCES = ("init", "ifc-guestd.c")
INITRD = "initrd.cpio"

Progress = Callable[[str], None]


class ImageError(UserError):
    """The image cannot be built or found; the message says why, `help` what to do."""


@dataclass(frozen=True)
class Image:
    kver: str
    directory: Path
    kernel: Path
    initrd: Path
    inputs: str  # the input hash recorded in the manifest

    @property
    def manifest(self) -> dict:
        return json.loads((self.directory / "manifest.json").read_text(encoding="utf-8"))


def cache_root() -> Path:
    return native.cache_root() / "vm"


# ------------------------------------------------------------------------------------------ steps

def _run(argv: list[str], *, cwd: Path | None = None, what: str) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise ImageError(f"`{argv[0]}` is not installed", "run scripts/sysdeps.sh (Debian/Ubuntu)") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImageError(f"{what} failed: {detail}")
    return proc.stdout


def resolve_package() -> str:
    """The kernel package the `linux-image-cloud-amd64` meta package currently depends on."""
    out = _run(["apt-cache", "depends", META_PACKAGE], what=f"`apt-cache depends {META_PACKAGE}`")
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$", line)
        if match:
            return match.group(1)
    raise ImageError(f"`{META_PACKAGE}` names no kernel package", "run `apt-get update`")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_busybox() -> Path:
    """A statically linked busybox (it runs before any library is mounted in the guest)."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file():
            head = path.read_bytes()[:8192]
            if b"/lib64/ld-linux" in head or b"/lib/ld-linux" in head:
                raise ImageError(f"`{candidate}` is dynamically linked", "install busybox-static")
            return path
    raise ImageError("busybox is not installed", "install busybox-static (scripts/sysdeps.sh)")


def module_order(modules_dir: Path, wanted: Iterable[str]) -> list[str]:
    """Paths (relative to `modules_dir`) of `wanted` and their dependencies, each after what it needs."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text(encoding="utf-8").splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        name = re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(path)).replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in order or path in stack:
            return
        for dep in deps.get(path, []):
            visit(dep, (*stack, path))
        order.append(path)

    for name in wanted:
        if name not in by_name:
            builtin = modules_dir / "modules.builtin"
            if builtin.exists() and re.search(rf"/{re.escape(name)}\.ko$", builtin.read_text(), re.M):
                continue  # built into this kernel
            raise ImageError(f"the kernel has no module `{name}`")
        visit(by_name[name], ())
    return order


# ------------------------------------------------------------------------------------------ cpio

def write_cpio(entries: Iterable[tuple[str, int, bytes | str | None]]) -> bytes:
    """An uncompressed newc cpio archive. Entries: (name, mode, data) — data is bytes for a file, the
    target for a symlink, None for a directory or device (mode says which; a device's data is (major, minor)
    packed in the name as `name@major,minor`)."""
    out = io.BytesIO()
    ino = 1
    for name, mode, data in [*entries, ("TRAILER!!!", 0, b"")]:
        rdev = (0, 0)
        if "@" in name:
            name, dev = name.split("@", 1)
            rdev = tuple(int(x) for x in dev.split(","))
        body = data.encode() if isinstance(data, str) else (data or b"")
        fields = (ino, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = "070701" + "".join(f"{v:08x}" for v in fields)
        out.write(header.encode() + name.encode() + b"\0")
        out.write(b"\0" * (-out.tell() % 4))
        out.write(body)
        out.write(b"\0" * (-out.tell() % 4))
        ino += 1
    return out.getvalue()


def compile_guestd(target: Path) -> bytes:
    """The guest daemon as a static binary (it runs before any library is mounted in the guest)."""
    try:
        native.compile_c(GUEST_DIR / "ifc-guestd.c", target, ["-static", "-Os", "-s"], "the guest daemon")
    except native.BuildError as exc:
        raise ImageError(exc.message, exc.help) from None
    return target.read_bytes()


def _initramfs(busybox: Path, init: bytes, guestd: bytes, root: Path, kver: str, modules: list[str]) -> bytes:
    entries: list[tuple[str, int, bytes | str | None]] = []
    for d in ("bin", "dev", "etc", "etc/ifc", "lib", "lib/modules", "newroot", "proc", "sys", "tmp", "run"):
        entries.append((d, stat.S_IFDIR | 0o755, None))
    entries.append(("dev/console@5,1", stat.S_IFCHR | 0o600, None))
    entries.append(("dev/null@1,3", stat.S_IFCHR | 0o666, None))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, "busybox"))
    entries.append(("init", stat.S_IFREG | 0o755, init))
    entries.append(("bin/ifc-guestd", stat.S_IFREG | 0o755, guestd))
    names = []
    for rel in modules:
        name = os.path.basename(rel)
        names.append(name)
        entries.append((f"lib/modules/{name}", stat.S_IFREG | 0o644,
                        (root / "lib" / "modules" / kver / rel).read_bytes()))
    entries.append(("etc/ifc/modules", stat.S_IFREG | 0o644, "".join(n + "\n" for n in names)))
    return write_cpio(entries)


# ------------------------------------------------------------------------------------------ build

def _inputs_hash(deb_sha: str, busybox: Path) -> str:
    digest = hashlib.sha256()
    guest = [_sha256(GUEST_DIR / name) for name in GUEST_SOURCES]
    for part in (f"format={FORMAT}", deb_sha, _sha256(busybox), *guest, ",".join(MODULES)):
        digest.update(part.encode() + b"\n")
    return digest.hexdigest()[:16]


def build(progress: Progress = lambda line: None, *, package: str | None = None, force: bool = False) -> Image:
    """Fetch, unpack and assemble the image for the current cloud kernel; quick when nothing changed."""
    started = time.monotonic()

    def step(n: int, text: str) -> None:
        progress(f"[{n}/5] {text} ({time.monotonic() - started:.1f}s)")

    package = package or resolve_package()
    kver = package.removeprefix("linux-image-")
    directory = cache_root() / kver
    directory.mkdir(parents=True, exist_ok=True)
    step(1, f"kernel package {package}")

    debs = sorted(directory.glob(f"{package}_*.deb"))
    if not debs or force:
        _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", package], cwd=directory,
             what=f"`apt-get download {package}`")
        debs = sorted(directory.glob(f"{package}_*.deb"))
        if not debs:
            raise ImageError(f"`apt-get download {package}` left no package file in {directory}")
        step(2, f"downloaded {debs[-1].name}")
    else:
        step(2, f"cached {debs[-1].name}")
    deb = debs[-1]
    deb_sha = _sha256(deb)

    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    root = directory / "root"
    if force or manifest.get("deb_sha256") != deb_sha or not (root / "lib" / "modules" / kver / "modules.dep").exists():
        shutil.rmtree(root, ignore_errors=True)
        _run(["dpkg", "-x", str(deb), str(root)], what="`dpkg -x`")
        _run(["depmod", "-b", str(root), kver], what="`depmod`")
        step(3, f"unpacked and ran depmod in {root}")
    else:
        step(3, "unpacked tree is current")

    busybox = find_busybox()
    init = (GUEST_DIR / "init").read_bytes()
    inputs = _inputs_hash(deb_sha, busybox)
    initrd = directory / INITRD
    modules = module_order(root / "lib" / "modules" / kver, MODULES)
    step(4, f"{len(modules)} modules: " + " ".join(os.path.basename(m).split(".")[0] for m in modules))
    kernel = directory / manifest.get("kernel", "missing")
    if force or manifest.get("inputs") != inputs or not kernel.exists() or not initrd.exists():
        bzimage = (root / "boot" / f"vmlinuz-{kver}").read_bytes()
        elf = pvh.extract(bzimage)
        kernel = directory / ("vmlinux" if elf else "vmlinuz")
        kernel.write_bytes(elf or bzimage)
        for stale in ("vmlinuz" if elf else "vmlinux", "initrd.gz"):  # left by another kind or an older format
            (directory / stale).unlink(missing_ok=True)
        tmp = initrd.with_suffix(".tmp")
        guestd = compile_guestd(directory / "ifc-guestd")
        tmp.write_bytes(_initramfs(busybox, init, guestd, root, kver, modules))
        os.replace(tmp, initrd)
        manifest = {"kver": kver, "package": package, "deb": deb.name, "deb_sha256": deb_sha, "inputs": inputs,
                    "kernel": kernel.name,
                    "busybox": str(busybox), "modules": modules, "built": time.time()}
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        step(5, f"initramfs {initrd} ({initrd.stat().st_size // 1024} KiB), kernel {kernel.name}"
                + (" (PVH: booted without decompressing)" if elf else ""))
    else:
        step(5, "initramfs is current")
    (cache_root() / "current").write_text(kver + "\n", encoding="utf-8")
    return Image(kver, directory, kernel, initrd, inputs)


def cached() -> list[dict]:
    """What is in the cache: one dict per kernel version (manifest plus whether the inputs still match)."""
    root = cache_root()
    if not root.is_dir():
        return []
    current = (root / "current").read_text().strip() if (root / "current").exists() else None
    found = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        entry: dict = {"kver": directory.name, "directory": str(directory), "current": directory.name == current}
        manifest_path = directory / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            entry.update(manifest)
            try:
                fresh = _inputs_hash(manifest["deb_sha256"], find_busybox())
                entry["stale"] = fresh != manifest.get("inputs")
            except ImageError:
                entry["stale"] = True
            entry["size"] = sum(f.stat().st_size for f in (directory / manifest.get("kernel", "vmlinuz"),
                                                            directory / INITRD) if f.exists())
        else:
            entry["stale"] = True
        found.append(entry)
    return found


def current() -> Image:
    """The image last built, without touching the network; ImageError when there is none or it is stale."""
    root = cache_root()
    marker = root / "current"
    if not marker.exists():
        raise ImageError("no guest image is built", "run `ifc vm build`")
    kver = marker.read_text().strip()
    directory = root / kver
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        raise ImageError(f"the cached image for {kver} is incomplete", "run `ifc vm build`") from None
    fresh = _inputs_hash(manifest["deb_sha256"], find_busybox())
    if fresh != manifest.get("inputs"):
        raise ImageError(f"the cached image for {kver} is out of date (its inputs changed)", "run `ifc vm build`")
    kernel = directory / manifest.get("kernel", "missing")
    if not kernel.exists() or not (directory / INITRD).exists():
        raise ImageError(f"the cached image for {kver} is incomplete", "run `ifc vm build`")
    return Image(kver, directory, kernel, directory / INITRD, manifest["inputs"])
