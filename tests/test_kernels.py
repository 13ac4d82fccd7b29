"""The kernel half of `dpfreeze preflight`, on fake root trees: which kernel boots next (systemd-boot,
GRUB, Debian's link, the newest image), whether it has an openvswitch module, whether the loaded module is
the one on disk, and datapath features the next kernel may lack."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from dpfreeze.kernels import check, next_boot, srcversion_of, version_key
from dpif.model import DpFeature

RUNNING = "6.1.0-57-amd64"
NEWER = "6.12.38+deb13-amd64"
OLDER = "5.10.0-35-amd64"


def module(root: Path, release: str, srcversion: str = "ABC123", suffix: str = ".ko") -> Path:
    path = root / "lib/modules" / release / "kernel/net/openvswitch" / f"openvswitch{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = b"\x7fELF....license=GPL\0srcversion=" + srcversion.encode() + b"\0depends=nf_conntrack\0"
    path.write_bytes(lzma.compress(body) if suffix.endswith(".xz") else body)
    return path


def loaded(root: Path, srcversion: str = "ABC123") -> None:
    (root / "sys/module/openvswitch").mkdir(parents=True)
    (root / "sys/module/openvswitch/srcversion").write_text(srcversion + "\n")


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
    module(tmp_path, NEWER, "FFF000", ".ko.xz")
    report = check(DpFeature.DISPATCH_UPCALL_PER_CPU, tmp_path, running=RUNNING)
    assert report.problems == [] and report.lines() == [
        f"kernel: running {RUNNING}, next boot {NEWER} (newest /boot/vmlinuz-*)"]


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    images(tmp_path, OLDER, RUNNING)
    (tmp_path / "vmlinuz").symlink_to(f"boot/vmlinuz-{OLDER}")  # a downgrade: the older kernel boots next
    loaded(tmp_path, "ABC123")
    module(tmp_path, RUNNING, "DEF456")  # the package replaced the module after it was loaded
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
def test_srcversion_is_read_from_plain_and_compressed_modules(tmp_path: Path, suffix: str) -> None:
    assert srcversion_of(module(tmp_path, RUNNING, "0A1B2C", suffix)) == "0A1B2C"


def test_versions_sort_numerically() -> None:
    assert version_key("6.12.38+deb13-amd64") > version_key("6.1.0-57-amd64") > version_key("5.10.0-35-amd64")
