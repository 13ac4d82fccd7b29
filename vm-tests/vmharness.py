"""Boot a Debian kernel under qemu and run one shell command in it, against the real openvswitch.ko.

The guest sees the host's / read-only (9p) under a tmpfs overlay, so the checkout and its venv work
unchanged; a per-run results directory is shared read-write at /results.  Everything expensive (the
kernel package, its extraction, the initrd, the KVM probe) is cached under the cache directory, which is
never committed.  Standard library only: the pytest plugin and the CLI import this on every run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
INIT = HERE / "init"
# Modules the initramfs needs to reach the 9p root; their dependencies are resolved with modprobe.
INITRD_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
GUEST_MODULES = ("openvswitch", "veth")
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
KVM_PROBE_TIMEOUT = 8.0


class VMError(Exception):
    """The guest never reported an exit status: boot failure, kernel panic or timeout."""

    def __init__(self, message: str, console: str = "", output: str = "") -> None:
        super().__init__(message)
        self.console = console
        self.output = output

    def __str__(self) -> str:
        text = str(self.args[0])
        if self.console:
            text += "\n--- console (last 40 lines) ---\n" + "\n".join(self.console.splitlines()[-40:])
        if self.output:
            text += "\n--- guest output (last 40 lines) ---\n" + "\n".join(self.output.splitlines()[-40:])
        return text


@dataclass(frozen=True)
class Kernel:
    version: str  # e.g. "6.1.0-56-amd64"
    root: Path  # the extracted linux-image package

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version


@dataclass
class VMResult:
    rc: int
    output: str  # the command's stdout and stderr, interleaved
    console: str  # serial console: kernel messages and the init's own lines
    results: Path  # the host directory the guest saw as /results
    accel: str
    kernel: str
    wall: float  # seconds from qemu start to qemu exit
    boot: float | None = None  # guest uptime when the command started
    extra: dict[str, str] = field(default_factory=dict)


def cache_dir() -> Path:
    return Path(os.environ.get("DPFREEZE_VM_CACHE", HERE / ".cache"))


def wheelhouse() -> Path:
    """dpfreeze's dependencies as wheels (and setuptools to build it), fetched from PyPI once: the install
    role's test (tests/test_fleet_collection.py) runs pip offline from it."""
    project = tomllib.loads((HERE.parent / "pyproject.toml").read_text())["project"]
    wanted = "\n".join([*project["dependencies"], "setuptools>=61", "wheel"])
    target = cache_dir() / "wheels"
    stamp = target / ".requirements"
    if not stamp.exists() or stamp.read_text() != wanted:
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w",
                        str(target), *wanted.splitlines()], check=True, timeout=900)
        stamp.write_text(wanted)
    return target


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Serialise cache preparation between concurrent runs (several engineers, pytest workers)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _wanted_kernel_package() -> str | None:
    """The ABI that linux-image-amd64 points at today, as apt resolves it (None when apt cannot say)."""
    try:
        out = subprocess.run(
            ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        word = line.split()
        if (
            len(word) == 2
            and word[0] == "Depends:"
            and word[1].startswith("linux-image-")
            and word[1][12:13].isdigit()
        ):
            return word[1]
    return None


def _cached_kernels(cache: Path) -> list[Kernel]:
    found = [Kernel(p.name, p) for p in (cache / "kernel").glob("*") if (p / "boot").is_dir()]
    return sorted(
        found, key=lambda k: [int(x) if x.isdigit() else x for x in k.version.replace("-", ".").split(".")]
    )


def _extract_kernel(cache: Path, package: str) -> Kernel:
    version = package.removeprefix("linux-image-")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        subprocess.run(
            ["apt-get", "download", package], cwd=debs, check=True, capture_output=True, timeout=600
        )
    deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=cache / "kernel"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    for useless in ("usr/share/doc", "usr/lib/linux"):
        shutil.rmtree(tmp / useless, ignore_errors=True)
    subprocess.run(["depmod", "-b", str(tmp), version], check=True)
    final = cache / "kernel" / version
    tmp.rename(final)
    return Kernel(version, final)


def resolve_kernel(cache: Path | None = None) -> Kernel:
    """The guest kernel: $DPFREEZE_VM_KERNEL, else Debian's current ABI, else the newest one cached."""
    cache = cache or cache_dir()
    with _locked(cache):
        (cache / "kernel").mkdir(exist_ok=True)
        pinned = os.environ.get("DPFREEZE_VM_KERNEL")
        package = f"linux-image-{pinned}" if pinned else _wanted_kernel_package()
        cached = {k.version: k for k in _cached_kernels(cache)}
        if package and package.removeprefix("linux-image-") in cached:
            return cached[package.removeprefix("linux-image-")]
        if package:
            try:
                return _extract_kernel(cache, package)
            except (OSError, subprocess.SubprocessError) as exc:
                if pinned or not cached:
                    raise VMError(f"cannot fetch {package}: {exc}") from exc
        if not cached:
            raise VMError("no guest kernel: apt-cache cannot resolve linux-image-amd64 and nothing is cached")
        return _cached_kernels(cache)[-1]


def _busybox() -> Path:
    for p in BUSYBOX_PATHS:
        if Path(p).exists():
            return Path(p)
    raise VMError("busybox not found: install busybox-static")


def _initrd_modules(kernel: Kernel) -> list[Path]:
    files: list[Path] = []
    for name in INITRD_MODULES:
        out = subprocess.run(
            ["modprobe", "-d", str(kernel.root), "-S", kernel.version, "--show-depends", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            word = line.split()
            if word and word[0] == "insmod" and Path(word[1]) not in files:
                files.append(Path(word[1]))
    return files


def build_initrd(kernel: Kernel, cache: Path | None = None) -> Path:
    """A busybox initramfs with the 9p/overlay modules, cached by kernel version and init script hash."""
    cache = cache or cache_dir()
    busybox = _busybox()
    key = hashlib.sha256(INIT.read_bytes() + busybox.read_bytes() + kernel.version.encode()).hexdigest()[:12]
    out = cache / f"initrd-{kernel.version}-{key}.cpio.gz"
    if out.exists():
        return out
    with _locked(cache):
        if out.exists():
            return out
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            for d in ("bin", "dev", "proc", "sys", "mnt/lower", "mnt/rw", "newroot", "lib/modules"):
                (tmp / d).mkdir(parents=True)
            shutil.copy(busybox, tmp / "bin/busybox")
            for applet in (
                "sh",
                "mount",
                "umount",
                "mkdir",
                "insmod",
                "cat",
                "chroot",
                "poweroff",
                "sleep",
                "echo",
                "ln",
                "rm",
                "sync",
                "grep",
                "cut",
                "tr",
            ):
                (tmp / "bin" / applet).symlink_to("busybox")
            order = []
            for mod in _initrd_modules(kernel):
                shutil.copy(mod, tmp / "lib/modules" / mod.name)
                order.append(mod.name)
            (tmp / "lib/modules/order").write_text("\n".join(order) + "\n")
            shutil.copy(INIT, tmp / "init")
            (tmp / "init").chmod(0o755)
            partial = out.with_suffix(".part")
            names = subprocess.run(["find", "."], cwd=tmp, capture_output=True, check=True).stdout
            cpio = subprocess.run(
                ["cpio", "-o", "-H", "newc", "--quiet"], cwd=tmp, input=names, capture_output=True, check=True
            ).stdout
            partial.write_bytes(
                subprocess.run(["gzip", "-1"], input=cpio, capture_output=True, check=True).stdout
            )
            partial.rename(out)
            for stale in cache.glob("initrd-*.cpio.gz"):  # qemu reads its initrd at start: safe to drop
                if stale != out:
                    stale.unlink(missing_ok=True)
    return out


def _qemu_argv(
    kernel: Kernel, initrd: Path, accel: str, results: Path, *, smp: int, mem: str, append: str = ""
) -> list[str]:
    return [
        "qemu-system-x86_64", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
        "-smp", str(smp), "-m", mem,
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{results / 'console.log'}",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
        "-append", f"console=ttyS0 quiet loglevel=3 panic=-1 dpf_kmods={kernel.modules} {append}".strip(),
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=results,path={results},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
        "-net", "none",
    ]  # fmt: skip


def _probe_kvm(kernel: Kernel, initrd: Path) -> bool:
    """Boot to the init with KVM and power off; KVM that hangs (as on nested Firecracker) fails the probe."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        argv = _qemu_argv(kernel, initrd, "kvm", Path(tmp), smp=1, mem="256M", append="dpf_probe=1")
        try:
            subprocess.run(argv, timeout=KVM_PROBE_TIMEOUT, capture_output=True)
        except subprocess.TimeoutExpired:
            return False
        return "dpf-probe-ok" in (Path(tmp) / "console.log").read_text(errors="replace")


def choose_accel(kernel: Kernel, initrd: Path, cache: Path | None = None) -> str:
    """kvm or tcg: $DPFREEZE_VM_ACCEL, else a cached probe result for this host kernel."""
    forced = os.environ.get("DPFREEZE_VM_ACCEL")
    if forced:
        return forced
    cache = cache or cache_dir()
    memo = cache / f"accel-{platform.node()}-{platform.release()}"
    if memo.exists():
        return memo.read_text().strip()
    with _locked(cache):
        if not memo.exists():
            memo.write_text("kvm\n" if _probe_kvm(kernel, initrd) else "tcg\n")
    return memo.read_text().strip()


def guest_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The command's environment: the host venv first on PATH, and the marker that says 'in the VM'."""
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {"DPFREEZE_IN_VM": "1", "PYTHONUNBUFFERED": "1"}
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
        path = f"{sys.prefix}/bin:{path}"
    env["PATH"] = path
    env.update(extra or {})
    return env


def _command_script(command: str, cwd: Path, env: Mapping[str, str]) -> str:
    lines = ["set -e"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines += [
        "ip link set lo up",
        *(f"modprobe {m}" for m in GUEST_MODULES),
        f"cd {shlex.quote(str(cwd))}",
        "set +e",
        command,
    ]
    return "\n".join(lines) + "\n"


def _boot_uptime(console: str) -> float | None:
    for line in console.splitlines():
        if line.startswith("dpf-init: command starts at uptime "):
            with contextlib.suppress(ValueError):
                return float(line.rsplit(" ", 1)[1])
    return None


def run_in_vm(
    command: str,
    *,
    timeout: float = 600.0,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    results: Path | None = None,
    smp: int = 2,
    mem: str = "1G",
    on_output: Callable[[str], None] | None = None,
    init: str = "busybox",
) -> VMResult:
    """Run `command` (bash) in a fresh VM with openvswitch and veth loaded; returns its status and output.

    `results` (default: a new temporary directory, left for the caller) is /results in the guest.  Raises
    VMError, with the console log, when the guest does not report a status within `timeout` seconds.
    `on_output` receives the command's output as it arrives (for live progress).  `init="systemd"` boots
    the guest with systemd as PID 1 (Debian's openvswitch units started, the command run as a service).
    """
    kernel = resolve_kernel()
    initrd = build_initrd(kernel)
    accel = choose_accel(kernel, initrd)
    results = Path(results) if results else Path(tempfile.mkdtemp(prefix="dpfreeze-vm-"))
    results.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "guest.log", "console.log"):
        (results / stale).unlink(missing_ok=True)
    (results / "cmd.sh").write_text(
        _command_script(command, Path(cwd or os.getcwd()).resolve(), guest_env(env))
    )
    (results / "dpf-run.sh").unlink(missing_ok=True)
    boot = "dpf_init=systemd" if init == "systemd" else ""
    argv = _qemu_argv(kernel, initrd, accel, results, smp=smp, mem=mem, append=boot)
    log = results / "guest.log"
    seen = 0
    start = time.monotonic()
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as qemu:
        try:
            while qemu.poll() is None:
                if time.monotonic() - start > timeout:
                    qemu.kill()
                    break
                if on_output and log.exists():
                    seen = _follow(log, seen, on_output)
                time.sleep(0.2)
        finally:
            if qemu.poll() is None:
                qemu.kill()
            qemu.wait()
            qemu_out = qemu.stdout.read().decode(errors="replace") if qemu.stdout else ""
    wall = time.monotonic() - start
    if on_output and log.exists():
        _follow(log, seen, on_output)
    console = (
        (results / "console.log").read_text(errors="replace") if (results / "console.log").exists() else ""
    )
    console += qemu_out
    output = log.read_text(errors="replace") if log.exists() else ""
    rc_file = results / "rc"
    if not rc_file.exists() or not rc_file.read_text().strip():
        why = f"timed out after {timeout:.0f} s" if wall > timeout else f"qemu exited with {qemu.returncode}"
        raise VMError(f"the VM ({kernel.version}, {accel}) gave no exit status: {why}", console, output)
    return VMResult(
        int(rc_file.read_text()), output, console, results, accel, kernel.version, wall, _boot_uptime(console)
    )


def _follow(log: Path, seen: int, sink: Callable[[str], None]) -> int:
    with open(log, "rb") as fh:
        fh.seek(seen)
        chunk = fh.read()
    if chunk:
        sink(chunk.decode(errors="replace"))
    return seen + len(chunk)
