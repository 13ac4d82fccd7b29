"""The kernel-VM plugin: a kernel test whose VM cannot boot fails (it is never skipped), and guest reports
become host outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

KERNEL_TESTS = """
import pytest
pytestmark = pytest.mark.kernel
def test_a(): pass
def test_b(): pass
"""


@pytest.fixture
def kernel_pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("DPFREEZE_IN_VM", raising=False)
    monkeypatch.delenv("DPFREEZE_KERNEL", raising=False)
    import vmplugin

    vm_tests = Path(vmplugin.__file__).parent
    pytester.makeini(f"[pytest]\npythonpath = {vm_tests}\nmarkers =\n    kernel: k\n")
    pytester.makeconftest("pytest_plugins = ['vmplugin']\n")
    pytester.makepyfile(test_k=KERNEL_TESTS)
    return pytester


def test_no_vm_means_failure_not_skip(
    kernel_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DPFREEZE_VM_CACHE", str(kernel_pytester.path / "cache"))
    monkeypatch.setenv("DPFREEZE_VM_KERNEL", "0.0.0-no-such-kernel")
    result = kernel_pytester.runpytest_subprocess()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*cannot fetch linux-image-0.0.0-no-such-kernel*"])


def test_guest_reports_replay_on_the_host(kernel_pytester: pytest.Pytester) -> None:
    """Feed the host side a results file as the guest would write it (test_b never finished: a crash)."""
    import vmplugin

    config = kernel_pytester.parseconfigure()
    items, _ = kernel_pytester.inline_genitems()
    vms = vmplugin.KernelVMs(config)
    vms.pytest_collection_modifyitems(items)
    a, b = items
    ser = config.hook.pytest_report_to_serializable
    path = kernel_pytester.path / "reports.jsonl"
    lines = [{"start": a.nodeid}]
    for when in ("setup", "call", "teardown"):
        rep = pytest.TestReport(a.nodeid, a.location, {}, "passed", None, when, user_properties=[("k", "v")])
        lines.append({"report": ser(config=config, report=rep)})
    lines.append({"start": b.nodeid})
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{truncated")
    run = vms.groups["session"]
    vms._load(path, run)
    assert run.settle([a.nodeid, b.nodeid], "kernel panic") == []
    assert [r.outcome for r in vms._reports_for(a, run)] == ["passed"] * 3
    (failed,) = vms._reports_for(b, run)
    assert failed.outcome == "failed"
    assert "running when the VM stopped" in str(failed.longrepr)
    assert "kernel panic" in str(failed.longrepr)
