"""Internal ports' Linux configuration: read through our rtnetlink codec, re-applied through pyroute2."""

from __future__ import annotations

import socket

import pytest
import trio

from dpfreeze.lab.sandbox import Sandbox
from dpfreeze.ovs import netdevconf

pytestmark = [pytest.mark.netdev, pytest.mark.ovs_ports(0)]


async def test_save_wipe_apply_round_trip(ovs: Sandbox) -> None:
    port, ns = f"{ovs.prefix}i1", ovs.switch_ns
    await ovs.vsctl("add-port", ovs.bridges[0], port, "--", "set", "Interface", port, "type=internal")
    ip = ("ip", "-n", ns) if ns else ("ip",)
    for cmd in (("link", "set", port, "address", "02:aa:bb:cc:dd:01", "mtu", "1400", "up"),
                ("addr", "add", "192.0.2.1/24", "dev", port),
                ("-6", "addr", "add", "2001:db8::1/64", "dev", port, "nodad"),
                ("route", "add", "198.51.100.0/24", "via", "192.0.2.254", "dev", port, "metric", "7")):
        await trio.run_process([*ip, *cmd])

    (saved,) = await trio.to_thread.run_sync(netdevconf.save, [port], ns)
    assert (saved.mac, saved.mtu, saved.up) == ("02:aa:bb:cc:dd:01", 1400, True)
    assert {str(a) for a in saved.addresses} == {"192.0.2.1/24", "2001:db8::1/64"}
    route = "198.51.100.0/24 via 192.0.2.254 metric 7"
    assert [str(r) for r in saved.routes if r.family == socket.AF_INET] == [route]
    assert netdevconf.NetdevConfig.from_json(saved.to_json()) == saved

    # What re-creating an internal port does to it: new MAC, default MTU, down, no address, no route.
    for cmd in (("link", "set", port, "down", "mtu", "1500", "address", "02:00:00:00:00:09"),
                ("addr", "flush", "dev", port)):
        await trio.run_process([*ip, *cmd])
    changes = await trio.to_thread.run_sync(netdevconf.apply, [saved], ns)
    assert f"{port}: mac 02:aa:bb:cc:dd:01" in changes and f"{port}: route {route}" in changes
    assert (await trio.to_thread.run_sync(netdevconf.save, [port], ns)) == [saved]
    assert await trio.to_thread.run_sync(netdevconf.apply, [saved], ns) == []  # idempotent


async def test_missing_device_is_one_clear_error(ovs: Sandbox) -> None:
    with pytest.raises(netdevconf.NetdevError, match="netdev 'nosuchdev' does not exist"):
        await trio.to_thread.run_sync(netdevconf.save, ["nosuchdev"], ovs.switch_ns)
