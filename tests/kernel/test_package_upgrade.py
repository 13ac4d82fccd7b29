"""The real event: OVS upgraded and downgraded by its Debian packages (`dpkg -i`, so the maintainer scripts
restart it through systemd and ovs-ctl converts conf.db), under the probes, stock and with dpfreeze, in one
guest booted with systemd as PID 1.

Order matters and is the file's: stock 3.1 -> 2.15 -> 3.1 first (units not installed), then dpfreeze
installed as docs/operations.md says and the same two transitions again.  The figures of every transition
go to /results/transitions.json (kept with --kernel-vm-keep) and docs/benchmarks.md.
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
BRIDGE = "brpkg"
# What a controller programmed (the bench's rule: its megaflows match the UDP source port, so every new
# flow of the probes is an upcall); a package upgrade must not lose it.
CONTROLLER_RULE = BENCH_FLOW


@pytest.fixture(scope="module")
def ends() -> Iterator[tuple[Endpoint, Endpoint]]:
    # Debian's 3.1 enables ovs-record-hostname.service as a requirement of openvswitch-switch.service;
    # 2.15 has no such unit, so after a downgrade every restart fails ("Unit ovs-record-hostname.service not
    # found") and 3.1 keeps running under 2.15's name.  An operator disables it before a downgrade
    # (docs/operations.md); so does this rig, for stock and dpfreeze alike.
    sh("systemctl", "disable", "ovs-record-hostname.service")
    pair = namespace_pair(BRIDGE, ("dppa", "dppb"), 92)
    sh("ovs-ofctl", "add-flow", BRIDGE, CONTROLLER_RULE)
    yield pair


def spec(ends: tuple[Endpoint, Endpoint], first: int) -> ProbeSpec:
    return ProbeSpec(src=ends[0], dst=ends[1], rate=200.0, newflow_ms=20.0, newflow_hosts=False,
                     newflow_first=first, lead_s=2.0, tail_s=3.0, ready_timeout_s=240.0, stop_timeout_s=120.0)


def install(release: str) -> object:
    """The disruption: `dpkg -i` of the release's packages, as an operator runs it."""
    files = ovsdebs.debs(vmharness.cache_dir() / "ovs" / release, release)

    async def disrupt(tl: Timeline) -> None:
        tl.mark(f"dpkg -i {release}")
        out = await trio.to_thread.run_sync(lambda: sh("dpkg", "-i", *files))
        tl.mark("dpkg done")
        print(out)
    return disrupt


async def transition(ends: tuple[Endpoint, Endpoint], release: str, name: str, first: int,
                     record_property: object) -> Report:
    report = await run_probes(spec(ends, first), install(release))  # type: ignore[arg-type]
    record(name, report, record_property)
    record_property("journal", sh("journalctl", "--no-pager", "-n", "60", "-u", "ovs-vswitchd",  # type: ignore[operator]
                                  "-u", "ovsdb-server", "-u", "dpfreeze", check=False))
    assert sh("dpkg-query", "-W", "-f", "${Version}", "openvswitch-switch").startswith(
        {"2.15": "2.15.", "3.1": "3.1."}[release])
    return report


@pytest.mark.stock
async def test_stock_downgrade_3_1_to_2_15(ends: tuple[Endpoint, Endpoint], record_property: object) -> None:
    assert running_version() == "3.1.0"
    report = await transition(ends, "2.15", "stock 3.1 -> 2.15", 0, record_property)
    assert running_version() == "2.15.0"
    record_property("lost", lost(report))  # type: ignore[operator]
    # What stock leaves: 2.15 on the datapath 3.1 set to per-CPU dispatch gets no upcall, for good.  The
    # operator's way out, so that the stock upgrade below starts from a working 2.15: a new datapath.
    sh("ovs-dpctl", "del-dp", "ovs-system")
    sh("systemctl", "restart", "openvswitch-switch")
    sh("ip", "netns", "exec", "dppa", "ping", "-c", "2", "-W", "5", "10.92.0.2")
    sh("ovs-ofctl", "add-flow", BRIDGE, CONTROLLER_RULE)  # the controller would program it again


@pytest.mark.stock
async def test_stock_upgrade_2_15_to_3_1(ends: tuple[Endpoint, Endpoint], record_property: object) -> None:
    report = await transition(ends, "3.1", "stock 2.15 -> 3.1", 5000, record_property)
    assert running_version() == "3.1.0"
    record_property("lost", lost(report))  # type: ignore[operator]
    record_property("controller_rule_kept", controller_rule_present(BRIDGE))  # type: ignore[operator]
    sh("ovs-ofctl", "add-flow", BRIDGE, CONTROLLER_RULE)


async def test_dpfreeze_downgrade_3_1_to_2_15(ends: tuple[Endpoint, Endpoint],
                                              record_property: object) -> None:
    sh("dpfreeze", "install-units")
    report = await transition(ends, "2.15", "dpfreeze 3.1 -> 2.15", 10000, record_property)
    assert running_version() == "2.15.0"
    assert_tracked_and_thawed()
    status = sh("dpfreeze", "status")
    assert "handed over per-vport" in status, status
    assert controller_rule_present(BRIDGE)
    assert report.cls("established").lost == 0 and report.cls("newflow").lost == 0, lost(report)


async def test_dpfreeze_upgrade_2_15_to_3_1(ends: tuple[Endpoint, Endpoint], record_property: object) -> None:
    report = await transition(ends, "3.1", "dpfreeze 2.15 -> 3.1", 15000, record_property)
    assert running_version() == "3.1.0"
    journal = sh("journalctl", "--no-pager", "-u", "ovs-vswitchd", "-n", "300")  # the hooks name both
    assert "frozen with ovs-vswitchd (Open vSwitch) 2.15.0" in journal, journal
    assert "thawed into ovs-vswitchd (Open vSwitch) 3.1.0" in journal, journal
    assert_tracked_and_thawed()
    assert controller_rule_present(BRIDGE)
    assert report.cls("established").lost == 0 and report.cls("newflow").lost == 0, lost(report)
