"""Launch one command in a microVM whose workspace is the host's mediated FUSE mount.

What `run()` does, in order (each helper is a child that dies with this process, see `vmm.sandbox`):

1. **A private mount namespace** for this process (`unshare(CLONE_NEWNS)`, mounts made private): the FUSE
   mount and the read-only bind of `/usr` exist only inside it, so when every process of the run is gone —
   even after `kill -9` of `ifc run` — the kernel drops them; the host never sees a stale mount.
2. **The FUSE daemon** (`python -m ifc mount`, the same Monitor / EventLog in the run dir, the workspace's LabelStore)
   serves the workspace at `RUN_DIR/mnt`.
3. **Two virtiofsd**: one exports a read-only bind of the host's `/usr` (cache=always), one exports the FUSE
   mount (cache=none: every open and attribute reaches the monitor's mount).
4. **QEMU `microvm`**: KVM when a probe boot passed (cached per kernel, QEMU and host kernel), else TCG with
   `tsc_early_khz`; the serial console goes to `RUN_DIR/console.log`, the command's stdio is a virtio
   console on this process's stdin/stdout (a terminal passes through: size, resizes, Ctrl-C), and a
   virtio-serial port `ifc.ctl` is the control channel (`vmm.control`: `booted`, `ready`, `exit N`, `done`
   and the guest's process reports up, window sizes down); the network is slirp with `restrict=on` and at
   most the forwards to the egress hook (`10.0.2.100:3128` the proxy, `:53` its DNS stub).
5. **Watchdogs**: the guest must say `ready` within the boot timeout; after `done` (the workspace synced and
   unmounted) QEMU is stopped at once, and without it QEMU must exit within the shutdown timeout after
   `exit N`; otherwise it is killed and `LaunchError` says where to look. A share's virtiofsd that ends while
   the command runs stops the VM at once (the guest would wait for its replies for ever) and fails the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from vmm import image as vmimage
from vmm.control import Control, saved_terminal, terminal_size
from vmm.sandbox import (
    PROXY_PORT,
    Helpers,
    LaunchError,
    RunResult,
    RunSpec,
    agent_env,
    bind_readonly,
    die_with_parent,
    remove_mountpoint,
    start_workspace,
    trust_bundle,
    wait_for,
)

QEMU = "qemu-system-x86_64"
VIRTIOFSD_CANDIDATES = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
PROXY_GUEST = ("10.0.2.100", PROXY_PORT)


# ------------------------------------------------------------------------------------------ helpers

def host_mhz() -> int:
    """The host's TSC frequency in MHz as /proc/cpuinfo states it (TCG's guest TSC runs at host speed)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 2000
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    return int(float(match.group(1))) if match else 2000


def find_virtiofsd() -> str:
    for candidate in VIRTIOFSD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("virtiofsd")
    if found:
        return found
    raise LaunchError("virtiofsd is not installed", "install qemu-system-x86 (scripts/sysdeps.sh)")


def qemu_missing() -> str | None:
    """Why QEMU cannot be used here, or None."""
    if shutil.which(QEMU) is None:
        return f"`{QEMU}` is not installed"
    try:
        find_virtiofsd()
    except LaunchError as exc:
        return exc.message
    return None


def _qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def _append(kernel_args: list[str], accel: str) -> str:
    # cryptomgr.notests: the crypto self-tests took ~0.5 s of an emulated boot; the guest's kernel crypto is no
    # part of the sandbox's protection (that sits on the host), so they buy nothing here
    args = ["console=ttyS0", "quiet", "panic=-1", "reboot=t", "8250.nr_uarts=1", "cryptomgr.notests", *kernel_args]
    if accel == "tcg":
        args.append(f"tsc_early_khz={host_mhz() * 1000}")
    return " ".join(args)


def _machine(accel: str, memory_mb: int) -> list[str]:
    return [QEMU, "-M", "microvm,memory-backend=mem", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-m", f"{memory_mb}M", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
            "-global", "virtio-mmio.force-legacy=false"]


# ------------------------------------------------------------------------------------------ accelerator

def choose_accel(img: vmimage.Image, requested: str | None = None, timeout: float = 8.0) -> tuple[str, str]:
    """(accelerator, why). KVM only when a probe boot of this kernel reached the init under it."""
    requested = requested or os.environ.get("IFC_VM_ACCEL") or None
    if requested in ("kvm", "tcg"):
        return requested, "requested"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    key = f"{img.kver}|{_qemu_version()}|{platform.release()}"
    cache = vmimage.cache_root() / "accel.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = "kvm" if probe_kvm(img, timeout) else "tcg"
        with contextlib.suppress(OSError):
            cache.write_text(json.dumps(known, indent=2) + "\n")
    if known[key] == "kvm":
        return "kvm", "the probe boot passed"
    return "tcg", "KVM did not pass the probe boot"


def probe_kvm(img: vmimage.Image, timeout: float) -> bool:
    """Boot the kernel under KVM to the init's first line; False on a hang, an abort or no marker."""
    argv = [QEMU, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "256M", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(img.kernel), "-initrd",
            str(img.initrd), "-append", _append(["ifc.probe=1"], "kvm")]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              preexec_fn=die_with_parent(os.getpid()))
    except subprocess.TimeoutExpired:
        return False
    return b"IFC-PROBE-OK" in proc.stdout


# ------------------------------------------------------------------------------------------ the per-run initrd

def _shell_assignments(values: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())


def run_initrd(img: vmimage.Image, target: Path, settings: dict[str, str], env: dict[str, str],
               argv: list[str], trust: bytes | None = None, etc: dict[str, bytes] | None = None,
               home: dict[str, bytes] | None = None) -> None:
    """The cached initrd with a second (uncompressed) cpio appended: /ifc/run, /ifc/env, /ifc/cmd, when
    there is one, /ifc/trust.pem (the sandbox's trust store, see `vmm.sandbox.trust_bundle`), /ifc/etc/
    (files the init copies into the guest's /etc, read-only: the host's package configuration) and /ifc/home/
    (files a fresh home starts with, the agent's own: its settings, `ifc.agents.catalog`)."""
    command = "cd /workspace || exit 125\nexec " + " ".join(shlex.quote(a) for a in argv) + "\n"
    entries: list[tuple[str, int, bytes | str | None]] = [
        ("ifc", stat.S_IFDIR | 0o755, None),
        ("ifc/run", stat.S_IFREG | 0o644, "".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items())),
        ("ifc/env", stat.S_IFREG | 0o644, _shell_assignments(env)),
        ("ifc/cmd", stat.S_IFREG | 0o644, command),
    ]
    if trust is not None:
        entries.append(("ifc/trust.pem", stat.S_IFREG | 0o644, trust))
    if etc:
        dirs = sorted({str(parent) for name in etc for parent in Path(name).parents} - {"."})
        entries.append(("ifc/etc", stat.S_IFDIR | 0o755, None))
        entries += [(f"ifc/etc/{d}", stat.S_IFDIR | 0o755, None) for d in dirs]
        entries += [(f"ifc/etc/{name}", stat.S_IFREG | 0o444, data) for name, data in sorted(etc.items())]
    if home:
        entries.append(("ifc/home", stat.S_IFDIR | 0o755, None))
        entries += [(f"ifc/home/{name}", stat.S_IFREG | 0o600, data) for name, data in sorted(home.items())]
    extra = vmimage.write_cpio(entries)
    with open(target, "wb") as out, open(img.initrd, "rb") as base:
        shutil.copyfileobj(base, out, 1 << 20)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(extra)


# ------------------------------------------------------------------------------------------ running

def run(spec: RunSpec) -> RunResult:
    """Boot, run `spec.argv` in the guest, shut down; the command's exit status. Cleans up on any exit."""
    started = time.monotonic()
    missing = qemu_missing()
    if missing:
        raise LaunchError(f"the microVM cannot start: {missing}",
                          "install qemu-system-x86 (scripts/sysdeps.sh), or use `--isolation namespace` (weaker)")
    try:
        img = vmimage.current()
    except vmimage.ImageError as exc:
        raise LaunchError(exc.message, exc.help) from None
    accel, why = choose_accel(img, spec.accel)
    if accel == "kvm":
        spec.say(f"ifc run: microVM on KVM ({why})")
    else:
        spec.say(f"ifc run: microVM on TCG, software emulation ({why}): boot ~3 s, CPU-bound work ~10x slower "
                 "than under KVM")
    run_dir = spec.run_dir
    uid, gid = spec.ids()
    helpers = Helpers.for_run(spec)
    # sockets, the /usr bind and the per-run initrd: in the run dir unless its path is too long for a socket
    sockdir = run_dir / "vm"
    if len(str(sockdir / "usr.sock")) > 100:
        sockdir = Path(tempfile.mkdtemp(prefix="ifc-vm-"))
    else:
        if os.path.ismount(sockdir / "usr"):
            raise LaunchError(f"`{sockdir / 'usr'}` is still mounted", "use another run directory")
        shutil.rmtree(sockdir, ignore_errors=True)
        sockdir.mkdir()
    qemu: subprocess.Popen | None = None
    workspace = None
    control: Control | None = None
    try:
        # 2. the FUSE daemon (and the egress hook in it, with --egress)
        workspace = start_workspace(spec, helpers)

        # 3. /usr read-only, and a virtiofsd per share
        usr = sockdir / "usr"
        usr.mkdir()
        helpers.mounts.insert(0, str(usr))  # before binding: a half-made bind is unmounted too
        bind_readonly("/usr", str(usr))
        virtiofsd = find_virtiofsd()
        shares = {"usr": (str(usr), "always"), "ws": (str(workspace.mountpoint), "none")}
        extra = []  # `tag:path:mode` for the guest init: an agent's layer read-only, a kept home read-write
        named = {"usr": "/usr", "ws": "the workspace"}  # what each share is, for a watchdog's message
        for i, layer in enumerate(spec.layers):
            view = sockdir / f"ro{i}"
            view.mkdir()
            helpers.mounts.insert(0, str(view))
            bind_readonly(str(layer.source), str(view))
            shares[f"ro{i}"] = (str(view), "always")
            extra.append(f"ro{i}:{layer.target}:ro")
            named[f"ro{i}"] = layer.target
        if spec.home is not None:
            shares["home"] = (str(spec.home), "auto")
            extra.append("home:/home/agent:rw")
            named["home"] = "the kept home"
        servers = {}
        for tag, (source, cache) in shares.items():
            sock = sockdir / f"{tag}.sock"
            proc = helpers.spawn([virtiofsd, f"--socket-path={sock}", "-o", f"source={source}",
                                  "-o", f"cache={cache}", "-o", "log_level=warn"], "virtiofsd.log")
            wait_for(sock.exists, 10, proc, f"virtiofsd for `{tag}`", run_dir / "virtiofsd.log")
            servers[named[tag]] = proc

        # 4. QEMU
        tty = os.isatty(0) and os.isatty(1)
        settings = {"IFC_UID": str(uid), "IFC_GID": str(gid), "IFC_TTY": "1" if tty else "0"}
        if tty:
            settings["IFC_ROWS"], settings["IFC_COLS"] = map(str, terminal_size(1))
        if workspace.dns:
            settings["IFC_DNS"] = PROXY_GUEST[0]
        if extra:
            settings["IFC_SHARES"] = " ".join(extra)
        initrd = sockdir / "initrd.img"
        proxy_url = f"http://{PROXY_GUEST[0]}:{PROXY_GUEST[1]}" if workspace.proxy else None
        env = agent_env(spec, workspace, tty, proxy_url)
        home_files = spec.home_files(env) if spec.home_files else {}
        run_initrd(img, initrd, settings, env, spec.argv, trust_bundle(spec), spec.packages.files,
                   None if spec.home is not None else home_files)
        (run_dir / "control.log").write_bytes(b"")
        control = Control(sockdir / "ctl.sock", run_dir / "control.log", run_dir / "events.db")
        control.start()
        netdev = "user,id=net,restrict=on"
        if workspace.proxy:
            # `cmd:` starts a relay per guest connection; a `tcp:` chardev is one stream for the VM's life, so a
            # proxy that closes one connection (every denial does) would leave later connections hanging
            relay = f"{vmimage.find_busybox()} nc {workspace.proxy[0]} {workspace.proxy[1]}"
            netdev += f",guestfwd=tcp:{PROXY_GUEST[0]}:{PROXY_GUEST[1]}-cmd:{relay}"
        if workspace.dns:  # DNS only to the hook's stub (TCP: the resolver runs with `use-vc`)
            relay = f"{vmimage.find_busybox()} nc {workspace.dns[0]} {workspace.dns[1]}"
            netdev += f",guestfwd=tcp:{PROXY_GUEST[0]}:53-cmd:{relay}"
        argv = [*_machine(accel, spec.memory_mb),
                "-kernel", str(img.kernel), "-initrd", str(initrd), "-append", _append([], accel),
                "-chardev", f"file,id=con,path={run_dir / 'console.log'}", "-serial", "chardev:con"]
        for tag in shares:
            argv += ["-chardev", f"socket,id={tag},path={sockdir / (tag + '.sock')}",
                     "-device", f"vhost-user-fs-device,chardev={tag},tag={tag}"]
        argv += ["-device", "virtio-serial-device",
                 # a passed-through terminal sends Ctrl-C to the guest as a byte; otherwise Ctrl-C stops the run
                 "-chardev", f"stdio,id=io,signal={'off' if tty else 'on'}", "-device", "virtconsole,chardev=io",
                 "-chardev", f"socket,id=ctl,path={control.sock_path}",
                 "-device", "virtserialport,chardev=ctl,name=ifc.ctl",
                 "-netdev", netdev, "-device", "virtio-net-device,netdev=net"]
        (run_dir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        with open(run_dir / "qemu.log", "ab") as log:
            boot_start = time.monotonic()
            qemu = subprocess.Popen(argv, stderr=log, preexec_fn=die_with_parent(helpers.me))

        # 5. watchdogs, and the terminal's size following the user's window
        boot_timeout = spec.boot_timeout or (20.0 if accel == "kvm" else 60.0)
        with saved_terminal(0), _forward_resizes(control, tty):
            status, boot_seconds = _supervise(qemu, control, servers, boot_start, boot_timeout,
                                              spec.shutdown_timeout, run_dir)
        result = RunResult(status, accel, boot_seconds, time.monotonic() - started)
    finally:
        if control is not None:
            control.close()
        if qemu is not None and qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        helpers.close()  # virtiofsd exit with the VM; the FUSE daemon unmounts on SIGTERM
        if not any(os.path.ismount(target) for target in helpers.mounts):  # never delete through a bind of /usr
            shutil.rmtree(sockdir, ignore_errors=True)
        remove_mountpoint(workspace)
    result.failure = helpers.failure()
    return result


def _exits_soon(proc: subprocess.Popen, grace: float = 1.0) -> bool:
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        return False
    return True


@contextlib.contextmanager
def _forward_resizes(control: Control, tty: bool):
    """While the guest runs, each SIGWINCH sends the new size down the control channel."""
    if not tty or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGWINCH, lambda signum, frame: control.send_winsize(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def _supervise(qemu: subprocess.Popen, control: Control, servers: dict[str, subprocess.Popen], boot_start: float,
               boot_timeout: float, shutdown_timeout: float, run_dir: Path) -> tuple[int, float]:
    """Until QEMU exits: its status and the boot's seconds. `servers`: the virtiofsd of each share, by what it
    serves. One that ends while QEMU runs stops the run: the guest's requests to it would wait for ever (the
    guest's virtiofs has no timeout), so the agent, and `ifc run` with it, would hang."""
    where = f"see {run_dir / 'console.log'} and {run_dir / 'qemu.log'}"
    while True:
        returncode = qemu.poll()
        if control.error is not None:
            qemu.kill()
            raise LaunchError(f"the guest failed to start: {control.error}", where)
        if returncode is not None:
            control.drain(2.0)  # QEMU is gone, so the channel ends once its last line is read
            if control.status is None:
                raise LaunchError(f"QEMU exited ({returncode}) before the command finished", where)
            return control.status, (control.ready_at or control.exit_at or boot_start) - boot_start
        gone = next(((what, proc.returncode) for what, proc in servers.items() if proc.poll() is not None), None)
        if gone is not None and control.exit_at is None and not _exits_soon(qemu):
            # (a virtiofsd ends by itself only once QEMU closed its socket, i.e. while QEMU exits; after the
            # command's `exit`, the shutdown watchdog below covers a guest stuck syncing)
            qemu.kill()
            qemu.wait()
            what, code = gone
            how = f"signal {-code}" if code < 0 else f"status {code}"
            raise LaunchError(f"virtiofsd for {what} exited during the run ({how}): the guest's file operations "
                              "there could never complete, so the VM was stopped",
                              f"see {run_dir / 'virtiofsd.log'} and {run_dir / 'console.log'}")
        now = time.monotonic()
        if control.ready_at is None and now - boot_start > boot_timeout:
            qemu.kill()
            raise LaunchError(f"the guest did not boot within {boot_timeout:.0f} s (boot watchdog)", where)
        if control.done:  # the guest synced and unmounted the workspace: nothing left to lose
            qemu.terminate()
            qemu.wait()
            return control.status, (control.ready_at or control.exit_at) - boot_start
        if control.exit_at is not None and now - control.exit_at > shutdown_timeout:
            qemu.kill()
            qemu.wait()
            return control.status, (control.ready_at or control.exit_at) - boot_start
        time.sleep(0.01)
