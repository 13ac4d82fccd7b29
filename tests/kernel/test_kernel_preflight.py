"""The kernel half of `dpfreeze preflight` on the guest's real kernel and openvswitch.ko."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpfreeze.kernels import check, module_file, same_module
from dpif.model import DpFeature

pytestmark = pytest.mark.kernel


def test_the_loaded_module_is_found_on_disk_and_matches() -> None:
    running = os.uname().release
    on_disk = module_file(running)
    assert on_disk is not None, f"no openvswitch.ko under /lib/modules/{running}"
    # Debian's in-tree module has no srcversion; its GNU build id (sysfs notes) identifies it
    assert same_module(Path("/sys/module/openvswitch"), on_disk) is True
    report = check(DpFeature.DISPATCH_UPCALL_PER_CPU)
    assert report.running == running and report.checked
    assert not any("not the one on disk" in p or "running kernel" in p for p in report.problems), report
