"""Shared fixtures: a private OVS with a bridge and namespaces on veth ports, in whichever world the test
is marked for (netdev: host userspace datapath; kernel: openvswitch.ko inside the test VM)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dpfreeze.lab.sandbox import Sandbox, sandbox

# Runs kernel-marked tests in the VM; lives in vm-tests/ (on pythonpath, see pyproject.toml).
pytest_plugins = ["vmplugin"]


def datapath_type(node: pytest.Item) -> str:
    if node.get_closest_marker("kernel"):
        return "system"
    if node.get_closest_marker("netdev"):
        return "netdev"
    pytest.fail("the ovs fixture starts real daemons: mark the test netdev or kernel")


@pytest.fixture
async def ovs(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    """Both OVS daemons, one bridge and N endpoints (`@pytest.mark.ovs_ports(N)`, default 2) in
    sb.bridges[0] / sb.ports; torn down afterwards.  Daemon log tails go to the captured teardown output,
    which pytest shows when the test fails."""
    marker = request.node.get_closest_marker("ovs_ports")
    n = marker.args[0] if marker else 2
    async with sandbox(datapath_type(request.node)) as sb:
        try:
            bridge = await sb.add_bridge()
            for _ in range(n):
                await sb.add_ns_port(bridge)
            yield sb
        finally:
            print(sb.log_tail())
