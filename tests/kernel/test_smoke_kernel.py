"""Smoke: a private OVS on the real kernel datapath (openvswitch.ko, in the test VM) forwards between two
namespaces, and the kernel keeps its flows while ovs-vswitchd is down."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from dpfreeze.lab.sandbox import Sandbox

pytestmark = pytest.mark.kernel


def ipv4_flow(flows: str, src: str, dst: str) -> bool:
    return any(f"eth(src={src},dst={dst})" in f and "eth_type(0x0800)" in f for f in flows.splitlines())


async def test_traffic_crosses_the_kernel_bridge(ovs: Sandbox, record_property: Callable[..., None]) -> None:
    a, b = ovs.ports
    await ovs.ping(a, b)
    await ovs.ping(a, b, v6=True)
    show = await ovs.dpctl("show")
    flows = await ovs.dpctl("dump-flows")
    # These travel to the host and are printed in its terminal summary (the CI log).
    record_property("guest kernel", os.uname().release)
    record_property("ovs-dpctl show", show)
    record_property("ovs-dpctl dump-flows", flows)
    assert "system@ovs-system" in show
    for port in (a.port, b.port):
        assert f": {port}\n" in show
    assert ipv4_flow(flows, a.mac, b.mac)
    assert ipv4_flow(flows, b.mac, a.mac)


async def test_kernel_flows_outlive_vswitchd(ovs: Sandbox) -> None:
    a, b = ovs.ports
    await ovs.ping(a, b)
    await ovs.stop_vswitchd("exit")
    assert ipv4_flow(await ovs.dpctl("dump-flows"), a.mac, b.mac)
    await ovs.ping(a, b, count=2)  # forwarded by the cached kernel flows alone
    await ovs.start_vswitchd()
    await ovs.ping(a, b)
