"""Under a real systemd (PID 1 in the guest), with Debian's openvswitch units running OVS at its default
paths and dpfreeze installed the way docs/operations.md says (`dpfreeze install-units`): the unit
operations an operator and a package upgrade use are hitless, and leave a daemon that systemd tracks.  The
same operations without dpfreeze first, for the figures beside them (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
from systemdrig import (
    FIGURES,
    PIDFILE,
    assert_tracked_and_thawed,
    controller_rule_present,
    lost,
    namespace_pair,
    record,
    sh,
)

from dpfreeze.lab.bench_upgrade import BENCH_FLOW
from dpfreeze.probe import Endpoint, ProbeSpec, Timeline, run_probes

pytestmark = [pytest.mark.kernel, pytest.mark.systemd]


OPERATIONS = [("reload", "ovs-vswitchd"), ("restart", "ovs-vswitchd"), ("restart", "openvswitch-switch")]
# The guard holds the daemon's upcall sockets, so a crash's misses wait in them (0 lost in every VM run);
# only a miss a handler thread had read and not yet sent on when SIGKILL came dies with the daemon.
CRASH_LOSS = 1


@pytest.fixture(scope="module")
def ends() -> Iterator[tuple[Endpoint, Endpoint]]:
    """br0 on the system's OVS with a namespace on each of two ports (dpfreeze not installed yet)."""
    pair = namespace_pair("br0", ("dpsa", "dpsb"), 91)
    sh("ovs-ofctl", "add-flow", "br0", BENCH_FLOW)  # every new flow of the probes is an upcall
    yield pair
    sh("dpfreeze", "install-units", "--uninstall")


@pytest.fixture(autouse=True)
def journal(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test's journal of both units beside its figures (a kept VM run), whatever its outcome."""
    yield
    if FIGURES.parent.is_dir():
        (FIGURES.parent / f"journal-{request.node.name}.txt".replace(" ", "_")).write_text(
            sh("journalctl", "--no-pager", "-n", "300", "-u", "ovs-vswitchd", "-u", "dpfreeze", check=False))


def spec(ends: tuple[Endpoint, Endpoint], first: int) -> ProbeSpec:
    return ProbeSpec(src=ends[0], dst=ends[1], rate=200.0, newflow_ms=50.0, newflow_hosts=False, lead_s=1.0,
                     tail_s=2.0, newflow_first=first, ready_timeout_s=300.0, stop_timeout_s=120.0)


@pytest.mark.stock
@pytest.mark.parametrize(("operation", "first"), zip(OPERATIONS, (0, 2500, 5000), strict=True),
                         ids=[" ".join(o) for o in OPERATIONS])
async def test_stock(ends: tuple[Endpoint, Endpoint], operation: tuple[str, str], first: int,
                     record_property: object) -> None:
    report = await run_probes(spec(ends, first), systemctl(*operation))  # type: ignore[arg-type]
    record(f"stock systemctl {' '.join(operation)} (3.1)", report, record_property)
    # Stock's reload leaves no ovs-vswitchd (research/upgrades.md §5); every stock restart loses the
    # controller's rule: the operator's (and the controller's) way back before the next one.
    if sh("systemctl", "is-active", "ovs-vswitchd", check=False) != "active":
        sh("systemctl", "restart", "ovs-vswitchd")
    sh("ovs-vsctl", "--if-exists", "remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait")
    sh("ovs-ofctl", "add-flow", "br0", BENCH_FLOW)


async def test_stock_crash(ends: tuple[Endpoint, Endpoint], record_property: object) -> None:
    """kill -9 of ovs-vswitchd, and Debian's Restart=on-failure alone, for the figures beside dpfreeze's."""
    report = await run_probes(spec(ends, 15000), crash())
    record("stock kill -9 ovs-vswitchd (3.1)", report, record_property)
    sh("ovs-ofctl", "add-flow", "br0", BENCH_FLOW)  # the controller's way back


def crash() -> Callable[[Timeline], Awaitable[None]]:
    async def disrupt(tl: Timeline) -> None:
        old = int(PIDFILE.read_text())
        tl.mark("kill -9 ovs-vswitchd")
        os.kill(old, signal.SIGKILL)
        await trio.to_thread.run_sync(restarted, old)
        tl.mark("restarted")
    return disrupt


def restarted(old: int, timeout: float = 240.0) -> None:
    """systemd has started a new daemon, the unit is active and no freeze is left (stock: no service)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = PIDFILE.read_text().strip()
        except FileNotFoundError:  # no daemon, or one that systemd is stopping (seen in a run)
            pid = ""
        if pid and int(pid) != old and sh("systemctl", "is-active", "ovs-vswitchd", check=False) == "active":
            doc = sh("dpfreeze", "status", "--json", check=False) or '{"state": "idle"}'
            if json.loads(doc)["state"] not in ("frozen", "handing_over"):
                return
        time.sleep(0.2)
    raise AssertionError(f"no restart of ovs-vswitchd within {timeout:g} s")


def systemctl(*args: str) -> object:
    async def disrupt(tl: Timeline) -> None:
        tl.mark(f"systemctl {' '.join(args)}")
        await trio.to_thread.run_sync(lambda: sh("systemctl", *args))
        tl.mark("returned")
    return disrupt


def test_the_units_are_in_place_and_running(ends: tuple[Endpoint, Endpoint], record_property: object) -> None:
    sh("dpfreeze", "install-units")  # as docs/operations.md says
    assert sh("systemctl", "is-active", "dpfreeze") == "active"
    assert "dpfreeze.conf" in sh("systemctl", "show", "-P", "DropInPaths", "ovs-vswitchd")
    # What every start of ovs-vswitchd pays when nothing is frozen (a figure for docs/benchmarks.md)
    for hook in (["dpfreeze", "preflight", "--repair"], ["dpfreeze", "thaw"], ["python3", "-c", "pass"]):
        t0 = time.monotonic()
        out = sh(*hook)
        record_property(" ".join(hook), f"{time.monotonic() - t0:.2f} s: {out.splitlines()[:1]}")  # type: ignore[operator]


@pytest.mark.parametrize(("operation", "first"), zip(OPERATIONS, (7500, 10000, 12500), strict=True),
                         ids=[" ".join(o) for o in OPERATIONS])
async def test_unit_operation_is_hitless(ends: tuple[Endpoint, Endpoint], operation: tuple[str, str],
                                         first: int, record_property: object) -> None:
    report = await run_probes(spec(ends, first), systemctl(*operation))  # type: ignore[arg-type]
    record(f"dpfreeze systemctl {' '.join(operation)} (3.1)", report, record_property)
    record_property("journal", sh("journalctl", "--no-pager", "-n", "40", "-u", "ovs-vswitchd",  # type: ignore[operator]
                                  "-u", "dpfreeze", check=False))
    assert_tracked_and_thawed()
    assert report.cls("established").lost == 0 and report.cls("newflow").lost == 0, lost(report)


async def test_a_crash_under_the_units_is_hitless(ends: tuple[Endpoint, Endpoint],
                                                   record_property: object) -> None:
    """kill -9 of ovs-vswitchd under the units: the service's crash guard freezes within milliseconds, before
    systemd's restart, ExecStop's freeze joins it, and the new daemon gets the freeze at its start."""
    report = await run_probes(spec(ends, 17500), crash())
    record("dpfreeze kill -9 ovs-vswitchd (3.1)", report, record_property)
    journal = sh("journalctl", "--no-pager", "-n", "80", "-u", "ovs-vswitchd", "-u", "dpfreeze", check=False)
    record_property("journal", journal)  # type: ignore[operator]
    assert_tracked_and_thawed()
    assert "guard.crash_frozen" in journal, journal
    assert controller_rule_present("br0")  # the checkpoint's OpenFlow state, given to the new daemon
    assert report.cls("established").lost == 0 and report.cls("newflow").lost <= CRASH_LOSS, lost(report)


async def test_a_kill_in_the_middle_of_openflow_churn(ends: tuple[Endpoint, Endpoint],
                                                      record_property: object) -> None:
    """An OOM-style SIGKILL while a controller keeps changing the tables: the checkpoint follows the churn
    (dumping a bridge at most once per 2 s after a change), so the new daemon gets every rule of some
    moment before the death, and the probes lose what the crash above lost (nothing established)."""
    added: list[tuple[float, int]] = []  # (when, i) of each rule the daemon took
    killed: list[float] = []

    async def churn() -> None:
        for i in range(1, 255):
            done = await trio.run_process(["ovs-ofctl", "add-flow", "br0", churn_rule(i)], check=False,
                                          capture_stdout=True, capture_stderr=True)
            if done.returncode:  # the kill came while it ran (seen in a run): the daemon took no more
                return
            added.append((time.monotonic(), i))
            await trio.sleep(0.1)

    async def disrupt(tl: Timeline) -> None:
        old = int(PIDFILE.read_text())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(churn)
            with trio.fail_after(120):
                while len(added) < 40:  # the controller is busy
                    await trio.sleep(0.1)
            killed.append(time.monotonic())
            tl.mark("kill -9 ovs-vswitchd")
            os.kill(old, signal.SIGKILL)
            nursery.cancel_scope.cancel()  # its connection is gone with the daemon: it stops
        await trio.to_thread.run_sync(restarted, old)
        tl.mark("restarted")

    report = await run_probes(spec(ends, 20000), disrupt)
    record("dpfreeze kill -9 ovs-vswitchd in OpenFlow churn (3.1)", report, record_property)
    assert_tracked_and_thawed()
    assert controller_rule_present("br0")
    rules = sh("ovs-ofctl", "dump-flows", "br0")
    back = [i for _, i in added if f"nw_dst=192.0.2.{i} " in rules]
    settled = [i for t, i in added if t < killed[0] - 10]  # the checkpoint's lag is 2 s after a change
    record_property("churn", f"{len(added)} added, {len(settled)} 10 s before the kill, {len(back)} back")  # type: ignore[operator]
    assert set(settled) <= set(back) and back == list(range(1, len(back) + 1)), (settled, back)
    assert report.cls("established").lost == 0 and report.cls("newflow").lost <= CRASH_LOSS, lost(report)
    sh("ovs-ofctl", "del-flows", "br0", "ip,nw_dst=192.0.2.0/24")


def churn_rule(i: int) -> str:
    """A controller's rule that no probe matches (TEST-NET-1 is nobody's)."""
    return f"priority=5,ip,nw_dst=192.0.2.{i},actions=drop"


async def test_a_crash_loop_is_left_to_systemd(ends: tuple[Endpoint, Endpoint]) -> None:
    """The crashes of the tests before this one, and two more: the third within the window is a loop.  The
    guard then freezes nothing (nor does ExecStartPre's crash check), and systemd's restart goes on as
    stock; nothing is left frozen."""
    for _ in range(2):
        old = int(PIDFILE.read_text())
        os.kill(old, signal.SIGKILL)
        await trio.to_thread.run_sync(restarted, old)
    journal = sh("journalctl", "--no-pager", "-n", "120", "-u", "ovs-vswitchd", "-u", "dpfreeze", check=False)
    assert "guard.crash_loop" in journal, journal
    assert "guard.crash_frozen" not in journal.split("guard.crash_loop")[-1], journal
    assert_tracked_and_thawed()
    assert "flow-restore-wait" not in sh("ovs-vsctl", "get", "Open_vSwitch", ".", "other_config")
