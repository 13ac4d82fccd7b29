"""The upcall hand-over between per-vport daemons (OVS < 2.16), against the real openvswitch.ko (in the VM).

OVS 3.1 on a 6.1 kernel always picks per-CPU dispatch, so ovs-vswitchd cannot be made to exercise this
mode; the "daemons" here are upcall sockets of the test process, programmed the way dpif-netlink programs
them: one pid per vport, reset to 0 on a clean exit (`destroy_all_channels`), left dangling on a crash.
dpfreeze holds the datapath per-CPU meanwhile (a per-CPU daemon after it would otherwise meet dead per-CPU
pids), and switches it back to per-vport once the new daemon has put its pids on every vport.  And the
crash guard's hold of a killed owner's upcall socket, in both dispatch modes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import trio
from test_dpif_provider import FRAME, dp, first_upcall, send_from_peer, veth  # noqa: F401 - fixtures

from dpfreeze.freeze.handover import Handover, MissBuffer
from dpfreeze.freeze.pin import PinSet
from dpif.model import DpFeature, Upcall, UpcallKind, VportType
from dpif.netlink_datapath import NetlinkDatapath

pytestmark = pytest.mark.kernel


async def wait_for(predicate: Callable[[], object]) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.01)


@pytest.mark.parametrize("exit_kind", ["clean exit (pids reset to 0)", "crash (pids left dangling)"])
async def test_per_vport_takeover_buffers_and_replays_to_the_new_owner(
    dp: NetlinkDatapath, veth: str, exit_kind: str  # noqa: F811 - fixtures
) -> None:
    await dp.set_features(int(DpFeature.UNALIGNED | DpFeature.VPORT_PIDS))
    port = await dp.port_add(veth, VportType.NETDEV)
    handover = Handover(dp, PinSet(await dp.info(), tuple(await dp.ports()), ()), MissBuffer(),
                        poll_interval=0.01)
    async with trio.open_nursery() as nursery:
        async with dp.upcalls() as old:
            await dp.port_set_upcall_pids(port.port_no, old.portids)
            await nursery.start(handover.run)
            send_from_peer()  # the old owner is alive: the miss is its own, nothing is taken from it
            assert (await first_upcall(old.__aiter__())).kind is UpcallKind.MISS
            assert not handover.stats.taken_over and handover.stats.misses == 0
            if exit_kind.startswith("clean"):
                await dp.port_set_upcall_pids(port.port_no, [0])
        await wait_for(lambda: handover.stats.taken_over)
        info = await dp.info()
        assert info.per_cpu_dispatch and set(info.per_cpu_pids) == set(handover.ours)
        assert handover.stats.mode == "per-cpu (the datapath was per-vport)"

        send_from_peer()  # no daemon: dpfreeze buffers the miss
        await wait_for(lambda: handover.buffer.buffered)
        async with dp.upcalls() as new:
            for vport in await dp.ports():  # a per-vport daemon programs every vport, its local port too
                await dp.port_set_upcall_pids(vport.port_no, new.portids)
            handover.handing_over = True
            with trio.fail_after(10):
                await handover.wait_new_owner()
            await handover.replay()
            replayed: Upcall = await first_upcall(new.__aiter__())
        nursery.cancel_scope.cancel()
    assert replayed.kind is UpcallKind.MISS and replayed.packet[: len(FRAME)] == FRAME
    stats = handover.stats
    assert (stats.replayed, stats.replay_failed, handover.buffer.overflow_packets) == (1, 0, 0)
    assert handover.stats.new_owner_pids == sorted(set(new.portids))
    assert stats.switched_to_per_vport and not (await dp.info()).per_cpu_dispatch


OWNER = ("import socket, time; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16); s.bind((0, 0));"
         " print(s.getsockname()[0], flush=True); time.sleep(600)")


@pytest.mark.parametrize("dispatch", ["per-vport", "per-cpu"])
async def test_a_held_socket_keeps_the_misses_of_a_killed_owner(
    dp: NetlinkDatapath, veth: str, dispatch: str  # noqa: F811 - fixtures
) -> None:
    """The crash guard's hold against the real module: another process owns the upcall pids, dpfreeze
    holds its socket (`hold_upcalls`); the owner is killed -9, a miss comes and waits in the held socket,
    where without the hold the kernel would have dropped it on a dead portid."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        portid = int(owner.stdout.readline())
        port = await dp.port_add(veth, VportType.NETDEV)
        if dispatch == "per-vport":
            await dp.set_features(int(DpFeature.UNALIGNED | DpFeature.VPORT_PIDS))
            await dp.port_set_upcall_pids(port.port_no, [portid])
        else:
            n = max(len((await dp.info()).per_cpu_pids), os.cpu_count() or 1)
            await dp.set_features(int(DpFeature.UNALIGNED | DpFeature.DISPATCH_UPCALL_PER_CPU), [portid] * n)
        async with dp.hold_upcalls(owner.pid, [portid]) as held:
            assert held.portids == {portid}
            owner.kill()
            owner.wait()
            send_from_peer()
            got: list[Upcall] = []
            with trio.fail_after(10):
                while not any(up.packet[: len(FRAME)] == FRAME for up in got):
                    await trio.sleep(0.05)
                    got += [up for up in held.read() if isinstance(up, Upcall)]
    finally:
        owner.kill()
        owner.wait()
    (miss,) = [up for up in got if up.packet[: len(FRAME)] == FRAME]
    assert miss.kind is UpcallKind.MISS and miss.dp_ifindex == dp.ifindex
