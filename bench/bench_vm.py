"""The microVM: cold image build, boot to agent-ready, and `ifc run -- true` end to end.

    .venv/bin/python bench/bench_vm.py [--runs 5] [--skip-cold]

cold build   `ifc vm build` into an empty cache (apt-get download + dpkg -x + depmod + initramfs)
warm build   `ifc vm build` again (nothing changed: every step skipped)
boot→ready   QEMU start until the guest init reports `ready` (modules loaded, /usr and the workspace
             mounted over virtiofs, network up), in-process `vmm.launch.run`; median of --runs
run true     `python -m ifc run --policy policies/default.flow -- true` wall time, end to end (policy
             load, FUSE daemon, two virtiofsd, boot, command, shutdown, summary); median of --runs
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

    from vmm import image, launch

    accel, why = launch.choose_accel(image.current())
    boots, totals = [], []
    with tempfile.TemporaryDirectory(prefix="ifc-bench-vm-") as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        for i in range(args.runs):
            spec = launch.RunSpec(argv=["true"], workspace=ws, run_dir=Path(tmp) / f"run{i}", policy=POLICY,
                                  notice=lambda line: None)
            with open(os.devnull, "rb") as null:
                saved = os.dup(0)
                os.dup2(null.fileno(), 0)
                try:
                    result = launch.run(spec)
                finally:
                    os.dup2(saved, 0)
                    os.close(saved)
            boots.append(result.boot_seconds)
            totals.append(result.total_seconds)
        ends = [timed([sys.executable, "-m", "ifc", "run", "--policy", str(POLICY), "--workspace", str(ws),
                       "--run-dir", str(Path(tmp) / f"cli{i}"), "--", "true"]) for i in range(args.runs)]
    rows.append((f"boot to agent-ready ({accel}), median of {args.runs}",
                 f"{statistics.median(boots):.2f} s (min {min(boots):.2f}, max {max(boots):.2f})"))
    rows.append((f"vmm.launch.run(['true']) ({accel}), median", f"{statistics.median(totals):.2f} s"))
    rows.append((f"`ifc run -- true` end to end ({accel}), median",
                 f"{statistics.median(ends):.2f} s (min {min(ends):.2f}, max {max(ends):.2f})"))
    print(f"accelerator: {accel} ({why}); host {launch.host_mhz()} MHz, {os.cpu_count()} CPUs")
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
