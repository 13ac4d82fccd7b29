"""pytest plugin: run `kernel`-marked tests inside the test VM and report them as host test items.

Host side (default): `kernel` items never run on the host.  When the first one is reached, the plugin boots
one VM for its group (the whole session by default, `--kernel-vm=module` for one boot per module) that runs
an inner pytest on exactly those node ids.  The inner run streams every report, serialised by pytest's own
hooks, to /results/reports.jsonl as it happens; the host replays them as the items' outcomes, so pass/fail,
tracebacks and captured output appear in the host's report.  An item without a guest report (VM did not
boot, kernel panic, timeout, collection error) fails with the console log: kernel tests are never skipped
for want of a VM.

Guest side (DPFREEZE_IN_VM=1) and native mode (DPFREEZE_KERNEL=native, a host that has openvswitch.ko):
kernel tests run as ordinary tests.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPORTS = "reports.jsonl"
HANG = "hang.txt"
MAX_BOOTS = 4  # one boot, plus one more after each of up to three tests that crashed or hung the VM
IN_VM = os.environ.get("DPFREEZE_IN_VM") == "1"
NATIVE = os.environ.get("DPFREEZE_KERNEL") == "native"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dpfreeze kernel VM")
    group.addoption(
        "--kernel-vm",
        choices=("session", "module"),
        default="session",
        help="one VM boot for all kernel tests (session) or one per test module",
    )
    group.addoption(
        "--kernel-vm-timeout",
        type=float,
        default=1500.0,
        help="seconds one VM may run before it is killed and its tests fail",
    )
    group.addoption(
        "--kernel-test-timeout",
        type=float,
        default=300.0,
        help="seconds one kernel test may run in the VM; then its stacks are dumped and the VM moves on",
    )
    group.addoption(
        "--kernel-vm-keep",
        type=Path,
        default=None,
        help="directory that keeps each VM's results (console, guest log, reports)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if IN_VM:
        path = os.environ.get("DPFREEZE_VM_REPORTS")
        if path:
            config.pluginmanager.register(GuestReporter(config, Path(path)), "dpfreeze-guest-reporter")
    elif not NATIVE:
        config.pluginmanager.register(KernelVMs(config), "dpfreeze-kernel-vms")


class GuestReporter:
    """Inner pytest: append each report (and the start of each test) to the shared results file."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.fh = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the session
        # A hung test would hold the whole VM until the host kills it: instead dump every thread's stack
        # where the host can read it and exit; the host boots again for the tests that did not run.
        self.timeout = float(os.environ.get("DPFREEZE_VM_TEST_TIMEOUT", "0"))
        self.hang = open(path.parent / HANG, "w")  # noqa: SIM115 - faulthandler needs it open

    def _write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())  # a kernel panic must not lose what was already reported

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._write({"start": nodeid})
        if self.timeout > 0:
            self.hang.write(f"{nodeid} still running after {self.timeout:.0f} s (--kernel-test-timeout):\n")
            self.hang.flush()
            faulthandler.dump_traceback_later(self.timeout, exit=True, file=self.hang)

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """`@pytest.mark.kernel_timeout(S)`: a test that is long by design (the demo) gets S seconds."""
        marker = item.get_closest_marker("kernel_timeout")
        if marker and self.timeout > 0:
            seconds = float(marker.args[0])
            self.hang.seek(0)
            self.hang.truncate()
            self.hang.write(f"{item.nodeid} still running after {seconds:.0f} s (kernel_timeout):\n")
            self.hang.flush()
            faulthandler.dump_traceback_later(seconds, exit=True, file=self.hang)

    def pytest_runtest_logfinish(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        self.hang.seek(0)
        self.hang.truncate()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self._write({"report": data})

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write({"collect_error": str(report.nodeid), "longrepr": str(report.longrepr)})

    def pytest_sessionfinish(self) -> None:
        self.fh.close()
        self.hang.close()


@dataclass
class VMRun:
    """The VM boots serving a group of kernel items, and what came back from them."""

    nodeids: list[str]
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    collect_errors: list[str] = field(default_factory=list)
    culprits: dict[str, str] = field(default_factory=dict)  # test -> why the VM stopped while it ran
    booted: bool = False
    error: str | None = None  # the last boot's harness failure (no boot, panic, timeout)
    summary: list[str] = field(default_factory=list)
    output: str = ""
    long_s: float = 0.0  # the `kernel_timeout` of its tests that are long by design, summed
    mem: str = "1G"  # `own_boot(mem=...)`: a module that runs a small fleet needs more

    def complete(self, nodeid: str) -> bool:
        return any(r["when"] == "teardown" for r in self.reports.get(nodeid, []))

    def settle(self, pending: list[str], why: str) -> list[str]:
        """After a boot: blame the test that was running when the VM stopped; return those still to run."""
        culprit = next((n for n in reversed(self.started) if n in pending and not self.complete(n)), None)
        if culprit:
            self.culprits[culprit] = why
        return [n for n in pending if not self.complete(n) and n != culprit]


class KernelVMs:
    """Host side: boots VMs on demand and turns guest reports into the host items' outcomes."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.groups: dict[str, VMRun] = {}
        self.done: list[tuple[str, VMRun]] = []

    def _group(self, item: pytest.Item) -> str:
        """`systemd`-marked tests get a boot per module, with systemd as PID 1: such a module changes the
        guest as a host changes (units installed, packages up- and downgraded); the next must not see it.
        `own_boot` modules get a busybox boot each, for the same reason."""
        module = item.nodeid.split("::")[0]
        if item.get_closest_marker("systemd"):
            return f"systemd:{module}"
        if item.get_closest_marker("own_boot"):  # it kills daemons and unloads the module: alone
            return f"boot:{module}"
        return module if self.config.getoption("kernel_vm") == "module" else "session"

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if item.get_closest_marker("kernel"):
                run = self.groups.setdefault(self._group(item), VMRun([]))
                run.nodeids.append(item.nodeid)
                if marker := item.get_closest_marker("kernel_timeout"):
                    run.long_s += float(marker.args[0])
                if (marker := item.get_closest_marker("own_boot")) and "mem" in marker.kwargs:
                    run.mem = marker.kwargs["mem"]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        if not item.get_closest_marker("kernel"):
            return None
        key = self._group(item)
        run = self.groups[key]
        if not run.booted:
            run.booted = True
            self._boot(key, run)
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for rep in self._reports_for(item, run):
            item.ihook.pytest_runtest_logreport(report=rep)
        # The replayed item never ran its own setup here; still release what the previous host item left
        # set up for it (module fixtures), as pytest's own teardown phase would.
        item.session._setupstate.teardown_exact(nextitem)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _say(self, text: str) -> None:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if tr is None or capman is None:
            return
        with capman.global_and_fixture_disabled():
            tr.write(text)

    def _boot(self, key: str, run: VMRun) -> None:
        """Boot until every test has a result; a test that crashed or hung a VM is not run again."""
        pending = list(run.nodeids)
        for _ in range(MAX_BOOTS):
            hang = self._boot_once(key, run, pending)
            left = run.settle(
                pending, hang or run.error or "--- guest output (tail) ---\n" + _tail(run.output, 60)
            )
            if not left or len(left) == len(pending):  # all done, or a boot that made no progress
                break
            pending = left
        self.done.append((key, run))

    def _boot_once(self, key: str, run: VMRun, nodeids: list[str]) -> str:
        """One VM running the inner pytest on `nodeids`; returns the hang report of a timed-out test."""
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import vmharness

        keep = self.config.getoption("kernel_vm_keep")
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
        results = Path(tempfile.mkdtemp(prefix=f"{key.replace('/', '_').replace(':', '-')}-", dir=keep))
        (results / "nodeids").write_text("\n".join(nodeids) + "\n")
        rootdir = self.config.rootpath
        verbose = self.config.getoption("verbose") > 0
        inner = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v" if verbose else "-q", "-rN",
                 f"--rootdir={rootdir}", "@/results/nodeids"]  # fmt: skip
        self._say(f"\n[kernel VM: {len(nodeids)} test(s) from {key}; booting...]\n")
        start = time.monotonic()
        run.error, run.output, summary = None, "", ""
        try:
            res = vmharness.run_in_vm(
                "uname -r > /results/guest-kernel; " + shlex.join(inner),
                cwd=rootdir,
                env={
                    "DPFREEZE_VM_REPORTS": f"/results/{REPORTS}",
                    "DPFREEZE_VM_TEST_TIMEOUT": str(self.config.getoption("kernel_test_timeout")),
                },
                results=results,
                # a boot serving a test long by design (the fault matrix: ~20 min) may take as long as it
                timeout=max(self.config.getoption("kernel_vm_timeout"), run.long_s + 300),
                on_output=self._say if verbose else None,
                mem=run.mem,
                init="systemd" if key.startswith("systemd:") else "busybox",
            )
        except vmharness.VMError as exc:
            run.error = str(exc)
            run.output = exc.output
        except (OSError, subprocess.SubprocessError) as exc:  # e.g. qemu or dpkg-deb missing
            run.error = f"the VM harness failed: {exc!r}"
        else:
            run.output = res.output
            kernel_file = results / "guest-kernel"
            guest_kernel = kernel_file.read_text().strip() if kernel_file.exists() else "?"
            summary = (
                f"guest kernel {guest_kernel} ({res.accel}), command started at guest uptime "
                f"{res.boot} s, inner pytest rc={res.rc}, VM wall {res.wall:.1f} s"
            )
            if res.rc not in (0, 1):
                run.error = f"inner pytest exited {res.rc}\n--- guest output (tail) ---\n" + _tail(
                    res.output, 60
                )
        self._load(results / REPORTS, run)
        hang = (results / HANG).read_text() if (results / HANG).exists() else ""
        summary = (
            summary
            or f"VM failed after {time.monotonic() - start:.1f} s: {(run.error or '').splitlines()[0]}"
        )
        run.summary.append(summary)
        self._say(f"[kernel VM: {summary}; results in {results if keep else '(temporary)'}]\n")
        if not keep:
            shutil.rmtree(results, ignore_errors=True)
        return hang

    def _load(self, path: Path, run: VMRun) -> None:
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a guest that died mid-write
            if "start" in rec:
                run.started.append(rec["start"])
            elif "report" in rec:
                run.reports.setdefault(rec["report"]["nodeid"], []).append(rec["report"])
            elif "collect_error" in rec:
                run.collect_errors.append(f"{rec['collect_error']}:\n{rec['longrepr']}")

    def _reports_for(self, item: pytest.Item, run: VMRun) -> list[pytest.TestReport]:
        got = [
            self.config.hook.pytest_report_from_serializable(config=self.config, data=d)
            for d in run.reports.get(item.nodeid, [])
        ]
        if run.complete(item.nodeid):
            return got
        why = ["no complete result from the kernel VM for this test."]
        if item.nodeid in run.culprits:
            why.append("It was running when the VM stopped (crash, panic or timeout); it was not retried.")
            why.append(run.culprits[item.nodeid])
        else:
            if run.collect_errors:
                why.append("Guest collection errors:\n" + "\n".join(run.collect_errors))
            if run.error:
                why.append(run.error)
            elif run.output:
                why.append("--- guest output (tail) ---\n" + _tail(run.output, 60))
        failed = pytest.TestReport(
            item.nodeid,
            item.location,
            {k: 1 for k in item.keywords},
            "failed",
            "\n".join(why),
            "teardown" if any(r.when == "call" for r in got) else "call",
        )
        return [*got, failed] if got else [failed]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.done:
            return
        terminalreporter.section("kernel VM")
        for key, run in self.done:
            for line in run.summary:
                terminalreporter.write_line(f"{key}: {line}")
            for nodeid in run.culprits:
                terminalreporter.write_line(f"{key}: the VM stopped during {nodeid}")
            for nodeid, reports in run.reports.items():
                # every phase's report carries the item's properties so far: the last one has them all
                for name, value in reports[-1].get("user_properties", []):
                    terminalreporter.write_line(f"--- {nodeid}: {name} ---\n{str(value).rstrip()}")


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])
