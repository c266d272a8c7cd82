"""The microVM: cold image build, boot to agent-ready, and `ifc run -- true` end to end.

    .venv/bin/python bench/bench_vm.py [--runs 5] [--skip-cold]

cold build   `ifc vm build` into an empty cache (apt-get download + dpkg -x + depmod + initramfs)
warm build   `ifc vm build` again (nothing changed: every step skipped)
boot→ready   QEMU start until the guest init reports `ready` (modules loaded, /usr and the workspace
             mounted over virtiofs, network up), in-process `vmm.launch.run`; median of --runs
run true     `python -m ifc run --policy policies/default.flow -- true` wall time, end to end (policy
             load, FUSE daemon, two virtiofsd, boot, command, shutdown, summary); median of --runs
boot paths   QEMU start to the init's first line and power-off (the KVM probe's boot), for the boot path
             before and after each step that shortened it, side by side in this run (ratio to the first)
Needs root. The accelerator is whatever `ifc run` would choose (printed); IFC_VM_ACCEL=tcg|kvm forces one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
POLICY = ROOT / "policies" / "default.flow"


def timed(argv: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_vm: `{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true", help="do not measure a build into an empty cache")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_vm: needs root")
    rows: list[tuple[str, str]] = []
    build = [sys.executable, "-m", "ifc", "vm", "build"]
    if not args.skip_cold:
        with tempfile.TemporaryDirectory(prefix="ifc-bench-cache-") as cache:
            env = {**os.environ, "XDG_CACHE_HOME": cache}
            rows.append(("cold build (download + unpack + initramfs)", f"{timed(build, env):.1f} s"))
    timed(build)  # make sure the user's cache is current
    rows.append(("warm build (nothing changed)", f"{timed(build):.2f} s"))

    from bench.stdin import no_terminal_stdin
    from vmm import image, launch

    accel, why = launch.choose_accel(image.current())
    boots, totals = [], []
    with tempfile.TemporaryDirectory(prefix="ifc-bench-vm-") as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        for i in range(args.runs):
            spec = launch.RunSpec(argv=["true"], workspace=ws, run_dir=Path(tmp) / f"run{i}", policy=POLICY,
                                  notice=lambda line: None)
            with no_terminal_stdin():
                result = launch.run(spec)
            boots.append(result.boot_seconds)
            totals.append(result.total_seconds)
        ends = [timed([sys.executable, "-m", "ifc", "run", "--policy", str(POLICY), "--workspace", str(ws),
                       "--run-dir", str(Path(tmp) / f"cli{i}"), "--", "true"]) for i in range(args.runs)]
    rows.append((f"boot to agent-ready ({accel}), median of {args.runs}",
                 f"{statistics.median(boots):.2f} s (min {min(boots):.2f}, max {max(boots):.2f})"))
    rows.append((f"vmm.launch.run(['true']) ({accel}), median", f"{statistics.median(totals):.2f} s"))
    rows.append((f"`ifc run -- true` end to end ({accel}), median",
                 f"{statistics.median(ends):.2f} s (min {min(ends):.2f}, max {max(ends):.2f})"))
    rows += boot_paths(image.current(), accel, args.runs)
    print(f"accelerator: {accel} ({why}); host {launch.host_mhz()} MHz, {os.cpu_count()} CPUs")
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


def boot_paths(img, accel: str, runs: int) -> list[tuple[str, str]]:
    """The kernel's boot alone, for each way of packaging it: the bzImage decompresses itself and the gzip'd
    initramfs is unpacked in the emulated CPU; the PVH ELF and a plain cpio skip both; the crypto self-tests
    are the largest single step of the kernel's own start."""
    import gzip

    from vmm import launch

    bzimage = img.directory / "root" / "boot" / f"vmlinuz-{img.kver}"
    with tempfile.TemporaryDirectory(prefix="ifc-bench-boot-") as tmp:
        packed = Path(tmp) / "initrd.gz"
        packed.write_bytes(gzip.compress(img.initrd.read_bytes(), compresslevel=6))
        plain = launch._append(["ifc.probe=1"], accel)
        tested = plain.replace(" cryptomgr.notests", "")
        variants = [("bzImage, gzip'd initramfs, self-tests (before)", bzimage, packed, tested),
                    ("PVH ELF, gzip'd initramfs, self-tests", img.kernel, packed, tested),
                    ("PVH ELF, plain cpio, self-tests", img.kernel, img.initrd, tested),
                    ("PVH ELF, plain cpio, cryptomgr.notests (now)", img.kernel, img.initrd, plain)]
        times: dict[str, list[float]] = {name: [] for name, *_ in variants}
        for _ in range(runs):  # interleaved, so a noisy moment hits every variant alike
            for name, kernel, initrd, append in variants:
                argv = [launch.QEMU, "-M", "microvm", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
                        "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                        "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]
                start = time.perf_counter()
                out = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=120).stdout
                if b"IFC-PROBE-OK" not in out:
                    sys.exit(f"bench_vm: the {name} boot did not reach the init")
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times[variants[0][0]])
    return [(f"boot path: {name}", f"{statistics.median(t):.2f} s ({statistics.median(t) / base:.2f}x)")
            for name, t in times.items()]


if __name__ == "__main__":
    sys.exit(main())
