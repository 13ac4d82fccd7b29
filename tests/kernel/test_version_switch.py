"""Another OVS version without a package upgrade: Debian's trixie 3.5.0 unpacked beside the host's 3.1.0 and
registered as the `ovs-vswitchd` alternative, then 3.1 -> 3.5 -> 3.1 by switching the alternative and
`systemctl restart ovs-vswitchd`, and by `systemctl reload ovs-vswitchd`; stock first (units not
installed), then with dpfreeze installed as docs/operations.md says.  One guest, systemd as PID 1.
"""

from __future__ import annotations

from collections.abc import Iterator

import ovsdebs
import pytest
import trio
import vmharness
from systemdrig import (
    assert_tracked_and_thawed,
    controller_rule_present,
    lost,
    namespace_pair,
    record,
    running_version,
    sh,
)

from dpfreeze.lab.bench_upgrade import BENCH_FLOW
from dpfreeze.probe import Endpoint, ProbeSpec, Report, Timeline, run_probes

pytestmark = [pytest.mark.kernel, pytest.mark.systemd]
BRIDGE = "brver"
DEBIAN_VSWITCHD = "/usr/lib/openvswitch-switch/ovs-vswitchd"  # 3.1's, as its postinst registers it
VERSION = {"3.1": "3.1.0", "3.5": "3.5.0"}
BINARIES: dict[str, str] = {"3.1": DEBIAN_VSWITCHD}


@pytest.fixture(scope="module")
def ends() -> Iterator[tuple[Endpoint, Endpoint]]:
    BINARIES["3.5"] = str(ovsdebs.install_beside(vmharness.cache_dir() / "ovs" / "3.5", "3.5"))
    assert sh("ovs-vswitchd", "--version").endswith("3.1.0")  # installed at a lower priority: no switch
    pair = namespace_pair(BRIDGE, ("dpva", "dpvb"), 93)
    sh("ovs-ofctl", "add-flow", BRIDGE, BENCH_FLOW)  # every new flow of the probes is an upcall
    yield pair


def spec(ends: tuple[Endpoint, Endpoint], first: int) -> ProbeSpec:
    return ProbeSpec(src=ends[0], dst=ends[1], rate=200.0, newflow_ms=20.0, newflow_hosts=False,
                     newflow_first=first, lead_s=2.0, tail_s=3.0, ready_timeout_s=240.0, stop_timeout_s=120.0)


def switch(target: str, operation: str) -> object:
    """The disruption: point the alternative at `target`'s ovs-vswitchd, then `systemctl <operation>`."""
    async def disrupt(tl: Timeline) -> None:
        sh("update-alternatives", "--set", "ovs-vswitchd", BINARIES[target])
        tl.mark(f"systemctl {operation} ovs-vswitchd")
        await trio.to_thread.run_sync(lambda: sh("systemctl", operation, "ovs-vswitchd"))
        tl.mark("returned")
    return disrupt


async def transition(ends: tuple[Endpoint, Endpoint], name: str, target: str, operation: str, first: int,
                     record_property: object) -> Report:
    report = await run_probes(spec(ends, first), switch(target, operation))  # type: ignore[arg-type]
    record(name, report, record_property)
    record_property("journal", sh("journalctl", "--no-pager", "-n", "40", "-u", "ovs-vswitchd",  # type: ignore[operator]
                                  "-u", "dpfreeze", check=False))
    return report


STOCK = [("restart", "3.5", 0), ("restart", "3.1", 2500), ("reload", "3.5", 5000), ("reload", "3.1", 7500)]
WITH_DPFREEZE = [("restart", "3.5", 10000), ("restart", "3.1", 12500), ("reload", "3.5", 15000),
                 ("reload", "3.1", 17500)]


def _name(who: str, operation: str, target: str) -> str:
    return f"{who} {operation} {'3.1 -> 3.5' if target == '3.5' else '3.5 -> 3.1'}"


@pytest.mark.stock
@pytest.mark.parametrize(("operation", "target", "first"), STOCK, ids=[f"{o}-to-{t}" for o, t, _ in STOCK])
async def test_stock(ends: tuple[Endpoint, Endpoint], operation: str, target: str, first: int,
                     record_property: object) -> None:
    report = await transition(ends, _name("stock", operation, target), target, operation, first,
                              record_property)
    record_property("lost", lost(report))  # type: ignore[operator]
    record_property("daemon_left", sh("systemctl", "is-active", "ovs-vswitchd", check=False))  # type: ignore[operator]
    # Stock's reload leaves no ovs-vswitchd (research/upgrades.md §5), and every stock restart loses the
    # controller's rule: the operator's (and controller's) way back, before the next transition.
    if sh("systemctl", "is-active", "ovs-vswitchd", check=False) != "active":
        sh("systemctl", "restart", "ovs-vswitchd")
    sh("ovs-vsctl", "--if-exists", "remove", "Open_vSwitch", ".", "other_config", "flow-restore-wait")
    sh("ovs-ofctl", "add-flow", BRIDGE, BENCH_FLOW)
    assert running_version() == VERSION[target]


@pytest.mark.parametrize(("operation", "target", "first"), WITH_DPFREEZE,
                         ids=[f"{o}-to-{t}" for o, t, _ in WITH_DPFREEZE])
async def test_with_dpfreeze(ends: tuple[Endpoint, Endpoint], operation: str, target: str, first: int,
                             record_property: object) -> None:
    sh("dpfreeze", "install-units")  # idempotent
    report = await transition(ends, _name("dpfreeze", operation, target), target, operation, first,
                              record_property)
    assert running_version() == VERSION[target]
    assert_tracked_and_thawed()
    assert controller_rule_present(BRIDGE)
    assert report.cls("established").lost == 0 and report.cls("newflow").lost == 0, lost(report)
