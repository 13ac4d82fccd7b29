"""Will the openvswitch module still be there and still match after the next reboot?

An upgrade that installs a new kernel (or a new OVS that needs a newer module) can leave a host whose next
boot has no openvswitch.ko, or one that lacks what the running datapath uses.  Checked here for the running
kernel and for the one the machine boots next, read the way the boot loaders read it (systemd-boot's
loader.conf, GRUB's grubenv and grub.cfg, Debian's /vmlinuz link, else the newest /boot/vmlinuz-*), all
under a root directory so that a fake /boot tree tests it.
"""

from __future__ import annotations

import fnmatch
import gzip
import lzma
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from dpif.model import DpFeature

# The datapath features a running datapath may use, and the upstream kernel that brought each (a
# distribution kernel may have it earlier, backported: then the warning is a question, not a verdict).
FEATURE_SINCE: dict[DpFeature, tuple[int, int]] = {
    DpFeature.DISPATCH_UPCALL_PER_CPU: (5, 14),
    DpFeature.TC_RECIRC_SHARING: (5, 5),
}
MODULE_GLOB = "openvswitch.ko*"


@dataclass(frozen=True)
class KernelReport:
    running: str
    next_boot: str | None
    next_boot_from: str  # how the next boot's kernel was found (or why not)
    problems: list[str] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        return self.next_boot is not None or bool(self.problems)

    def lines(self) -> list[str]:
        nxt = self.next_boot or "unknown"
        return [f"kernel: running {self.running}, next boot {nxt} ({self.next_boot_from})",
                *(f"kernel problem: {p}" for p in self.problems)]


def version_key(release: str) -> tuple[int, ...]:
    """6.1.0-57-amd64 -> (6, 1, 0, 57): how a release sorts among others."""
    return tuple(int(n) for n in re.findall(r"\d+", release)[:4])


def _release_of_image(name: str) -> str | None:
    m = re.search(r"vmlinu[xz]-(\S+)", name)
    return m.group(1) if m else None


def next_boot(root: Path = Path("/")) -> tuple[str | None, str]:
    """The release the machine boots next, and where that was read."""
    boot = root / "boot"
    loader = boot / "loader" / "loader.conf"
    if loader.is_file():
        m = re.search(r"^default\s+(\S+)", loader.read_text(errors="replace"), re.M)
        if m:
            entry = boot / "loader" / "entries" / (m.group(1).removesuffix(".conf") + ".conf")
            if entry.is_file():
                text = entry.read_text(errors="replace")
                if v := re.search(r"^version\s+(\S+)", text, re.M):
                    return v.group(1), f"systemd-boot entry {entry.name}"
                lx = re.search(r"^linux\s+(\S+)", text, re.M)
                if lx and (rel := _release_of_image(lx.group(1))):
                    return rel, f"systemd-boot entry {entry.name}"
    for cfg in (boot / "grub" / "grub.cfg", boot / "grub2" / "grub.cfg"):
        if cfg.is_file():
            rel = _grub_default(cfg)
            if rel:
                return rel, str(cfg.relative_to(root))
    link = root / "vmlinuz"
    if link.is_symlink() and (rel := _release_of_image(os.readlink(link))):
        return rel, "/vmlinuz"
    images = sorted((r for p in boot.glob("vmlinuz-*") if (r := _release_of_image(p.name))), key=version_key)
    if images:
        return images[-1], "newest /boot/vmlinuz-*"
    return None, "no kernel image in /boot"


def _grub_default(cfg: Path) -> str | None:
    """The kernel of GRUB's default entry: grubenv's saved_entry when it names one, else the first."""
    text = cfg.read_text(errors="replace")
    entries = re.findall(r"menuentry\s+'([^']*)'[^{]*\$menuentry_id_option\s+'([^']*)'[^{]*\{(.*?)\n\}",
                         text, re.S)
    if not entries:
        entries = [("", "", body) for body in re.findall(r"menuentry[^{]*\{(.*?)\n\}", text, re.S)]
    env = cfg.with_name("grubenv")
    saved = ""
    if env.is_file() and (m := re.search(r"^saved_entry=(.*)$", env.read_text(errors="replace"), re.M)):
        saved = m.group(1).split(">")[-1].strip()
    for title, ident, body in entries:
        if saved and saved not in (title, ident):
            continue
        if (lx := re.search(r"^\s*linux\S*\s+(\S+)", body, re.M)) and (rel := _release_of_image(lx.group(1))):
            return rel
    return None


def module_file(release: str, root: Path = Path("/")) -> Path | None:
    """The openvswitch module modprobe would load for `release`: the one modules.dep names (depmod's
    search order: an `updates/` build, DKMS's, wins over the kernel's own), else the first found.

    Why modules.dep first: walking the whole modules tree took 6.4 s of the 13 s that `dpfreeze preflight`
    (ovs-vswitchd's ExecStartPre, while no daemon runs) cost under TCG."""
    base = root / "lib" / "modules" / release
    try:
        with open(base / "modules.dep", errors="replace") as dep:
            for line in dep:
                path = line.split(":", 1)[0]
                if fnmatch.fnmatch(path.rsplit("/", 1)[-1], MODULE_GLOB) and (base / path).is_file():
                    return base / path
    except OSError:
        pass
    return next(iter(sorted(base.rglob(MODULE_GLOB))), None) if base.is_dir() else None


def _module_bytes(path: Path) -> bytes | None:
    """The module file, decompressed (.xz, .gz); None for what the standard library cannot read (.zst)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".xz":
            return lzma.decompress(raw)
        if path.suffix == ".gz":
            return gzip.decompress(raw)
    except (OSError, lzma.LZMAError, gzip.BadGzipFile, EOFError):
        return None
    return raw if path.suffix == ".ko" else None


def _note_desc(note: bytes) -> bytes | None:
    """The descriptor of the first ELF note in `note` (the build id, for a GNU build-id note)."""
    if len(note) < 12:
        return None
    namesz, descsz, _ = struct.unpack_from("<III", note)
    start = 12 + (namesz + 3) // 4 * 4
    return note[start : start + descsz] if len(note) >= start + descsz else None


def build_id_of(module: bytes) -> bytes | None:
    """The GNU build id of an ELF64 module: its .note.gnu.build-id section's descriptor."""
    try:
        shoff, = struct.unpack_from("<Q", module, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", module, 0x3A)
        sections = [struct.unpack_from("<IIQQQQ", module, shoff + i * shentsize) for i in range(shnum)]
        names_off = sections[shstrndx][4]
        for name, _, _, _, offset, size in sections:
            end = module.find(b"\0", names_off + name)
            if module[names_off + name : end] == b".note.gnu.build-id":
                return _note_desc(module[offset : offset + size])
    except (struct.error, IndexError):
        return None
    return None


def srcversion_of(module: bytes) -> str | None:
    m = re.search(rb"srcversion=([0-9A-F]+)\0", module)
    return m.group(1).decode() if m else None


def same_module(loaded: Path, on_disk: Path) -> bool | None:
    """Whether the loaded module is the file on disk: by GNU build id (sysfs notes), else by srcversion
    (modules that have one); None when neither can tell."""
    module = _module_bytes(on_disk)
    if module is None:
        return None
    note = loaded / "notes" / ".note.gnu.build-id"
    if note.is_file() and (live := _note_desc(note.read_bytes())) and (disk := build_id_of(module)):
        return live == disk
    src = loaded / "srcversion"
    if src.is_file() and (disk_src := srcversion_of(module)):
        return src.read_text().strip() == disk_src
    return None


def check(features: DpFeature | None, root: Path = Path("/"), running: str | None = None) -> KernelReport:
    """One problem line per thing that will break: a kernel without the module, a loaded module that is
    not the one on disk, a datapath feature in use that the next kernel may lack."""
    running = running or os.uname().release
    loaded = root / "sys" / "module" / "openvswitch"
    if not loaded.is_dir():  # the userspace datapath alone (or no OVS yet): no module to lose
        return KernelReport(running, None, "openvswitch module not loaded: nothing to check")
    nxt, how = next_boot(root)
    problems = []
    on_disk = module_file(running, root)
    if on_disk is not None and same_module(loaded, on_disk) is False:
        problems.append(f"the loaded openvswitch module is not the one on disk ({on_disk}): it was "
                        "replaced since it was loaded; the next module load or reboot brings the new one")
    if nxt is None:
        problems.append(f"cannot tell which kernel boots next ({how})")
    elif nxt != running:
        if module_file(nxt, root) is None:
            problems.append(f"the kernel that boots next, {nxt}, has no openvswitch module")
        for feature, since in FEATURE_SINCE.items():
            if features is not None and features & feature and version_key(nxt)[:2] < since:
                problems.append(f"the datapath uses {feature.name} (upstream since Linux "
                                f"{since[0]}.{since[1]}); the kernel that boots next, {nxt}, may lack it "
                                "unless backported")
    return KernelReport(running, nxt, how, problems)
