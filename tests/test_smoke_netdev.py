"""Smoke: a private OVS on the host's userspace datapath forwards between two namespaces."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dpfreeze.lab.sandbox import Sandbox, SandboxError, sandbox
from dpfreeze.ovs.ovsenv import process_alive

pytestmark = pytest.mark.netdev


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


async def test_traffic_crosses_the_bridge(ovs: Sandbox) -> None:
    a, b = ovs.ports
    await ovs.ping(a, b)
    await ovs.ping(b, a, v6=True)
    flows = await ovs.dpctl("dump-flows")
    assert f"eth(src={a.mac},dst={b.mac}),eth_type(0x0800)" in flows


async def test_vswitchd_restart_keeps_forwarding(ovs: Sandbox) -> None:
    a, b = ovs.ports
    old = ovs.env.pid("ovs-vswitchd")
    await ovs.restart_vswitchd()
    assert ovs.env.pid("ovs-vswitchd") != old
    assert not process_alive(old)
    await ovs.ping(a, b)


async def test_teardown_removes_everything_even_on_failure() -> None:
    with pytest.raises(SandboxError, match="boom"):
        async with sandbox("netdev") as sb:
            br = await sb.add_bridge()
            await sb.add_ns_port(br)
            await sb.add_ns_port(br)
            pids = [sb.env.pid("ovsdb-server"), sb.env.pid("ovs-vswitchd")]
            names = {*sb.namespaces, sb.switch_ns}
            assert names <= _netns()
            raise SandboxError("boom")
    assert not names & _netns()
    assert not any(process_alive(p) for p in pids)
    assert not Path(sb.base).exists()
