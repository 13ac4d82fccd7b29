"""The kernel half of `dpfreeze preflight`, on fake root trees: which kernel boots next (systemd-boot,
GRUB, Debian's link, the newest image), whether it has an openvswitch module, whether the loaded module is
the one on disk, and datapath features the next kernel may lack."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import pytest

from dpfreeze.kernels import check, module_file, next_boot, same_module, version_key
from dpif.model import DpFeature

RUNNING = "6.1.0-57-amd64"
NEWER = "6.12.38+deb13-amd64"
OLDER = "5.10.0-35-amd64"


def note(build_id: bytes) -> bytes:
    return struct.pack("<III", 4, len(build_id), 3) + b"GNU\0" + build_id


def fake_ko(build_id: bytes, srcversion: str = "") -> bytes:
    """A minimal ELF64 module: a null section, .note.gnu.build-id, .shstrtab, and .modinfo strings."""
    names = b"\0.note.gnu.build-id\0.shstrtab\0"
    modinfo = f"license=GPL\0srcversion={srcversion}\0".encode() if srcversion else b""
    body = note(build_id) + names + modinfo
    note_off, names_off = 64, 64 + len(note(build_id))
    shoff = 64 + len(body)
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    sections = [bytes(64),
                struct.pack("<IIQQQQ", 1, 7, 0, 0, note_off, len(note(build_id))).ljust(64, b"\0"),
                struct.pack("<IIQQQQ", 20, 3, 0, 0, names_off, len(names)).ljust(64, b"\0")]
    return bytes(header) + body + b"".join(sections)


def module(root: Path, release: str, build_id: bytes = b"\x01" * 20, suffix: str = ".ko",
           srcversion: str = "") -> Path:
    path = root / "lib/modules" / release / "kernel/net/openvswitch" / f"openvswitch{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = fake_ko(build_id, srcversion)
    path.write_bytes(lzma.compress(body) if suffix.endswith(".xz") else body)
    return path


def loaded(root: Path, build_id: bytes | None = b"\x01" * 20, srcversion: str = "") -> None:
    sysfs = root / "sys/module/openvswitch"
    (sysfs / "notes").mkdir(parents=True)
    if build_id is not None:
        (sysfs / "notes/.note.gnu.build-id").write_bytes(note(build_id))
    if srcversion:
        (sysfs / "srcversion").write_text(srcversion + "\n")


def images(root: Path, *releases: str) -> None:
    (root / "boot").mkdir(exist_ok=True)
    for r in releases:
        (root / "boot" / f"vmlinuz-{r}").write_bytes(b"")


GRUB = """\
menuentry 'Debian GNU/Linux' --class debian $menuentry_id_option 'gnulinux-simple-ab12' {
\tlinux\t/boot/vmlinuz-%s root=UUID=ab12 ro quiet
}
submenu 'Advanced options' $menuentry_id_option 'gnulinux-advanced-ab12' {
\tmenuentry 'Debian GNU/Linux, with Linux %s' --class debian \
$menuentry_id_option 'gnulinux-%s-advanced-ab12' {
\t\tlinux\t/boot/vmlinuz-%s root=UUID=ab12 ro quiet
}
}
"""


def test_next_boot_from_each_loader(tmp_path: Path) -> None:
    images(tmp_path, OLDER, RUNNING, NEWER)
    assert next_boot(tmp_path) == (NEWER, "newest /boot/vmlinuz-*")
    (tmp_path / "vmlinuz").symlink_to(f"boot/vmlinuz-{RUNNING}")
    assert next_boot(tmp_path) == (RUNNING, "/vmlinuz")
    grub = tmp_path / "boot/grub/grub.cfg"
    grub.parent.mkdir()
    grub.write_text(GRUB % (NEWER, OLDER, OLDER, OLDER))
    assert next_boot(tmp_path) == (NEWER, "boot/grub/grub.cfg")
    (tmp_path / "boot/grub/grubenv").write_text(
        f"# GRUB Environment Block\nsaved_entry=gnulinux-advanced-ab12>gnulinux-{OLDER}-advanced-ab12\n")
    assert next_boot(tmp_path) == (OLDER, "boot/grub/grub.cfg")
    entries = tmp_path / "boot/loader/entries"
    entries.mkdir(parents=True)
    (tmp_path / "boot/loader/loader.conf").write_text("timeout 3\ndefault 2b4f-6.12.conf\n")
    (entries / "2b4f-6.12.conf").write_text(f"title Debian\nversion {NEWER}\nlinux /2b4f/{NEWER}/linux\n")
    assert next_boot(tmp_path) == (NEWER, "systemd-boot entry 2b4f-6.12.conf")


def test_nothing_to_check_without_the_module_loaded(tmp_path: Path) -> None:
    images(tmp_path, NEWER)
    report = check(DpFeature(0), tmp_path, running=RUNNING)
    assert not report.problems and not report.checked


def test_a_healthy_host(tmp_path: Path) -> None:
    images(tmp_path, RUNNING, NEWER)
    loaded(tmp_path)
    module(tmp_path, RUNNING)
    module(tmp_path, NEWER, b"\x02" * 20, ".ko.xz")
    report = check(DpFeature.DISPATCH_UPCALL_PER_CPU, tmp_path, running=RUNNING)
    assert report.problems == [] and report.lines() == [
        f"kernel: running {RUNNING}, next boot {NEWER} (newest /boot/vmlinuz-*)"]


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    images(tmp_path, OLDER, RUNNING)
    (tmp_path / "vmlinuz").symlink_to(f"boot/vmlinuz-{OLDER}")  # a downgrade: the older kernel boots next
    loaded(tmp_path, b"\xaa" * 20)
    module(tmp_path, RUNNING, b"\xbb" * 20)  # the package replaced the module after it was loaded
    report = check(DpFeature.DISPATCH_UPCALL_PER_CPU | DpFeature.VPORT_PIDS, tmp_path, running=RUNNING)
    assert len(report.problems) == 3, report.problems
    assert "the loaded openvswitch module is not the one on disk" in report.problems[0]
    assert report.problems[1] == f"the kernel that boots next, {OLDER}, has no openvswitch module"
    assert "DISPATCH_UPCALL_PER_CPU (upstream since Linux 5.14)" in report.problems[2]
    assert all("\n" not in p for p in report.problems)


def test_unknown_next_boot_is_said(tmp_path: Path) -> None:
    loaded(tmp_path)
    module(tmp_path, RUNNING)
    assert check(None, tmp_path, running=RUNNING).problems == [
        "cannot tell which kernel boots next (no kernel image in /boot)"]


@pytest.mark.parametrize("suffix", [".ko", ".ko.xz"])
def test_the_build_id_tells_the_loaded_module_from_another(tmp_path: Path, suffix: str) -> None:
    loaded(tmp_path, b"\x07" * 20)
    sysfs = tmp_path / "sys/module/openvswitch"
    assert same_module(sysfs, module(tmp_path, RUNNING, b"\x07" * 20, suffix)) is True
    assert same_module(sysfs, module(tmp_path, NEWER, b"\x08" * 20, suffix)) is False


def test_srcversion_where_there_is_no_build_id(tmp_path: Path) -> None:
    loaded(tmp_path, None, srcversion="0A1B2C")
    sysfs = tmp_path / "sys/module/openvswitch"
    assert same_module(sysfs, module(tmp_path, RUNNING, srcversion="0A1B2C")) is True
    assert same_module(sysfs, module(tmp_path, NEWER, srcversion="FFFFFF")) is False
    assert same_module(sysfs, module(tmp_path, OLDER)) is None  # neither can tell: no verdict


def test_versions_sort_numerically() -> None:
    assert version_key("6.12.38+deb13-amd64") > version_key("6.1.0-57-amd64") > version_key("5.10.0-35-amd64")


def test_the_module_is_the_one_modules_dep_names_as_modprobe_would(tmp_path: Path) -> None:
    """A DKMS build under updates/ wins over the kernel's own, as in depmod's search order; without
    modules.dep, the first one found."""
    own = module(tmp_path, RUNNING)
    dkms = tmp_path / "lib/modules" / RUNNING / "updates/dkms/openvswitch.ko"
    dkms.parent.mkdir(parents=True)
    dkms.write_bytes(fake_ko(b"\x02" * 20))
    assert module_file(RUNNING, tmp_path) == own
    (tmp_path / "lib/modules" / RUNNING / "modules.dep").write_text(
        "kernel/net/ipv4/udp_tunnel.ko:\nupdates/dkms/openvswitch.ko: kernel/net/nsh/nsh.ko\n"
        "kernel/net/openvswitch/openvswitch.ko: kernel/net/nsh/nsh.ko\n")
    assert module_file(RUNNING, tmp_path) == dkms
    assert module_file("5.10.0-1-amd64", tmp_path) is None
