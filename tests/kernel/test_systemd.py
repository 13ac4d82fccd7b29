"""Under a real systemd (PID 1 in the guest), with Debian's openvswitch units running OVS at its default
paths and dpfreeze installed the way docs/operations.md says (`dpfreeze install-units`): the unit
operations an operator and a package upgrade use are hitless, and leave a daemon that systemd tracks.  The
same operations without dpfreeze first, for the figures beside them (docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from systemdrig import assert_tracked_and_thawed, lost, namespace_pair, record, sh

from dpfreeze.lab.bench_upgrade import BENCH_FLOW
from dpfreeze.probe import Endpoint, ProbeSpec, Timeline, run_probes

pytestmark = [pytest.mark.kernel, pytest.mark.systemd]


OPERATIONS = [("reload", "ovs-vswitchd"), ("restart", "ovs-vswitchd"), ("restart", "openvswitch-switch")]


@pytest.fixture(scope="module")
def ends() -> Iterator[tuple[Endpoint, Endpoint]]:
    """br0 on the system's OVS with a namespace on each of two ports (dpfreeze not installed yet)."""
    pair = namespace_pair("br0", ("dpsa", "dpsb"), 91)
    sh("ovs-ofctl", "add-flow", "br0", BENCH_FLOW)  # every new flow of the probes is an upcall
    yield pair
    sh("dpfreeze", "install-units", "--uninstall")


def spec(ends: tuple[Endpoint, Endpoint], first: int) -> ProbeSpec:
    return ProbeSpec(src=ends[0], dst=ends[1], rate=200.0, newflow_ms=50.0, newflow_hosts=False, lead_s=1.0,
                     tail_s=2.0, newflow_first=first, ready_timeout_s=300.0, stop_timeout_s=120.0)


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


def systemctl(*args: str) -> object:
    async def disrupt(tl: Timeline) -> None:
        tl.mark(f"systemctl {' '.join(args)}")
        await trio.to_thread.run_sync(lambda: sh("systemctl", *args))
        tl.mark("returned")
    return disrupt


def test_the_units_are_in_place_and_running(ends: tuple[Endpoint, Endpoint]) -> None:
    sh("dpfreeze", "install-units")  # as docs/operations.md says
    assert sh("systemctl", "is-active", "dpfreeze") == "active"
    assert "dpfreeze.conf" in sh("systemctl", "show", "-P", "DropInPaths", "ovs-vswitchd")


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
