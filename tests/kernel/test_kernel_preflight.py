"""The kernel half of `dpfreeze preflight` on the guest's real kernel and openvswitch.ko."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpfreeze.kernels import check, module_file, srcversion_of
from dpif.model import DpFeature

pytestmark = pytest.mark.kernel


def test_the_loaded_module_is_found_on_disk_and_matches() -> None:
    running = os.uname().release
    on_disk = module_file(running)
    assert on_disk is not None, f"no openvswitch.ko under /lib/modules/{running}"
    live = Path("/sys/module/openvswitch/srcversion").read_text().strip()
    assert srcversion_of(on_disk) in (live, None)  # None: a compression the stdlib cannot read (.zst)
    report = check(DpFeature.DISPATCH_UPCALL_PER_CPU)
    assert report.running == running and report.checked
    assert not any("not the one on disk" in p or "running kernel" in p for p in report.problems), report
