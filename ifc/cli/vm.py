"""`ifc vm build [--check]`: build (or list) the cached guest image for `ifc run`.

`build` fetches the current Debian cloud kernel with `apt-get download` (never installs it), unpacks it,
and assembles an initramfs with busybox-static, the virtio/FUSE/network modules and the guest init; each
step prints one progress line and is skipped when its inputs did not change. `--check` touches nothing
and the network not at all: it says what is cached, where, and whether it is current.
"""

from __future__ import annotations

import argparse

EPILOG = """exit codes:
  0  the image is built (or, with --check, a current image is cached)
  1  --check: no current image is cached
  2  usage error, or the image could not be built (the message says why)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vm", help="build or inspect the microVM guest image",
                       description=__doc__.split("\n\n", 1)[1], epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    vsub = p.add_subparsers(dest="vm_command", metavar="ACTION", required=True)
    b = vsub.add_parser("build", help="fetch the kernel and build the initramfs (cached)", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--check", action="store_true", help="only say what is cached; change nothing")
    b.add_argument("--force", action="store_true", help="download and rebuild even when nothing changed")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ifc.cli import ExitCode
    from ifc.cli.common import error
    from vmm import image

    if args.check:
        entries = image.cached()
        if not entries:
            print(f"ifc vm: nothing cached in {image.cache_root()}; run `ifc vm build`")
            return ExitCode.FINDINGS
        for entry in entries:
            state = "stale (inputs changed)" if entry.get("stale") else "current"
            mark = "*" if entry.get("current") else " "
            size = f", {entry['size'] // (1 << 20)} MiB" if "size" in entry else ""
            print(f"{mark} {entry['kver']}: {state}{size}, {entry['directory']}")
        chosen = [e for e in entries if e.get("current")]
        return ExitCode.OK if chosen and not chosen[0].get("stale") else ExitCode.FINDINGS
    try:
        img = image.build(lambda line: print(f"ifc vm: {line}", flush=True), force=args.force)
    except image.ImageError as exc:
        return error("vm", exc.message, exc.help)
    print(f"ifc vm: image {img.kver} ready in {img.directory}")
    return ExitCode.OK
