"""The netlink provider against the real openvswitch.ko (inside the test VM).

Flows are added with ovs-dpctl (text) and compared as raw attribute bytes or as ovs-dpctl's own dump,
so these tests need no flow codec.  Only `ovs-dpctl add-dp`-style datapaths: no ovs-vswitchd.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from dpif.model import (
    DpFeature,
    EventCmd,
    EventKind,
    ExecuteRequest,
    Flow,
    NoSuchDatapath,
    Resync,
    Upcall,
    UpcallKind,
    VportType,
)
from dpif.netlink.wire import KernelError, attr
from dpif.netlink_datapath import (
    NetlinkDatapath,
    create_datapath,
    delete_datapath,
    list_datapaths,
    open_datapath,
)
from dpif.sockets import Overrun
from dpif.transport import GenlClient, Listener

pytestmark = pytest.mark.kernel

DP = "tpdp0"
FLOWS = [
    "in_port(1),eth(src=00:00:00:00:00:01,dst=00:00:00:00:00:02),eth_type(0x0800),"
    "ipv4(src=10.0.0.1,dst=10.0.0.2,proto=17,tos=0,ttl=64,frag=no),udp(src=1000,dst=53) 2",
    "in_port(2),eth_type(0x0806),arp(sip=10.0.0.2,tip=10.0.0.1,op=1) 1",
    "in_port(1),eth(),eth_type(0x86dd),ipv6(dst=fe80::/ffff::,frag=no) 1",
    # Not overlapping in_port(1)'s flows: the kernel refuses (EEXIST) a flow whose key an installed, broader
    # megaflow already matches, so overlapping flows re-install only in a lucky order.
    "recirc_id(0),in_port(3),eth(),eth_type(0x0800),ipv4(frag=no) recirc(5)",
]
UFID_FLOW = "ufid:00000000-0000-0000-0000-00000000000f,in_port(2),eth(),eth_type(0x0800),ipv4(frag=no) 1"


def sh(cmd: str) -> str:
    res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd}: {res.stderr.strip()}"
    return res.stdout


def dpctl_dump() -> list[str]:
    """ovs-dpctl's own dump, stats stripped, sorted (dump order follows the hash table)."""
    out = sh(f"ovs-dpctl dump-flows system@{DP}")
    return sorted(re.sub(r"packets:\d+, bytes:\d+, used:[^,]+, ", "", line) for line in out.splitlines())


@pytest.fixture
async def dp() -> AsyncIterator[NetlinkDatapath]:
    subprocess.run(f"ovs-dpctl del-dp {DP}", shell=True, capture_output=True)
    sh(f"ovs-dpctl add-dp {DP}")
    try:
        async with open_datapath(DP) as d:
            yield d
    finally:
        subprocess.run(f"ovs-dpctl del-dp {DP}", shell=True, capture_output=True)


async def test_create_list_delete() -> None:
    info = await create_datapath("tpdp1", features=int(DpFeature.UNALIGNED))
    try:
        assert info.name == "tpdp1" and info.ifindex > 0
        assert "tpdp1" in [d.name for d in await list_datapaths()]
        assert "system@tpdp1" in sh("ovs-dpctl dump-dps").split()
    finally:
        await delete_datapath("tpdp1")
    with pytest.raises(NoSuchDatapath):
        await delete_datapath("tpdp1")
    with pytest.raises(NoSuchDatapath):
        async with open_datapath("tpdp1"):
            pass


async def test_set_features_keeps_them(dp: NetlinkDatapath) -> None:
    want = DpFeature.UNALIGNED | DpFeature.VPORT_PIDS
    info = await dp.set_features(int(want))
    assert info.features & want == want
    per_cpu = await dp.set_features(int(info.features | DpFeature.DISPATCH_UPCALL_PER_CPU), [4242] * 2)
    assert per_cpu.per_cpu_dispatch and per_cpu.features & want == want
    assert per_cpu.per_cpu_pids[:2] == (4242, 4242)
    assert (await dp.info()).features == per_cpu.features


async def test_vports(dp: NetlinkDatapath) -> None:
    await dp.set_features(int(DpFeature.UNALIGNED | DpFeature.VPORT_PIDS))
    port = await dp.port_add("tpint7", VportType.INTERNAL, port_no=7, upcall_pids=[11, 12])
    assert (port.port_no, port.name, port.type) == (7, "tpint7", VportType.INTERNAL)
    assert port.upcall_pids == (11, 12)
    names = {p.port_no: p.name for p in await dp.ports()}
    assert names == {0: DP, 7: "tpint7"}
    assert (await dp.port_set_upcall_pids(7, [99])).upcall_pids == (99,)
    with pytest.raises(KernelError) as err:
        await dp.port_add("tpint8", VportType.INTERNAL, port_no=7)
    assert err.value.code == 16  # EBUSY
    await dp.port_del(7)
    assert [p.port_no for p in await dp.ports()] == [0]


async def test_dump_flush_reinstall_identical(dp: NetlinkDatapath) -> None:
    for line in [*FLOWS, UFID_FLOW]:
        key, actions = line.rsplit(" ", 1)
        sh(f"ovs-dpctl add-flow {DP} '{key}' '{actions}'")
    before = dpctl_dump()
    flows = [f async for f in dp.flows()]
    assert len(flows) == len(before) == len(FLOWS) + 1
    assert all(f.actions is not None and f.key for f in flows)
    assert sum(f.ufid is not None for f in flows) == 1
    await dp.flow_flush()
    assert dpctl_dump() == []
    results = await dp.flow_put_many(flows)
    assert results == [None] * len(flows)
    assert dpctl_dump() == before
    again = {(f.key, f.mask, f.actions, f.ufid) for f in [f async for f in dp.flows()]}
    assert again == {(f.key, f.mask, f.actions, f.ufid) for f in flows}
    # Duplicates are refused with create=True, accepted as updates with create=False.
    dup = await dp.flow_put_many(flows[:1])
    assert isinstance(dup[0], KernelError) and dup[0].code == 17  # EEXIST
    assert await dp.flow_put_many(flows[:1], create=False) == [None]


async def test_flow_get_and_del(dp: NetlinkDatapath) -> None:
    key, actions = UFID_FLOW.rsplit(" ", 1)
    sh(f"ovs-dpctl add-flow {DP} '{key}' '{actions}'")
    (flow,) = [f async for f in dp.flows()]
    assert flow.ufid is not None
    got = await dp.flow_get(ufid=flow.ufid)
    assert (got.key, got.mask, got.actions) == (flow.key, flow.mask, flow.actions)
    deleted = await dp.flow_del(ufid=flow.ufid)
    assert deleted is not None and deleted.actions == flow.actions
    with pytest.raises(KernelError) as err:
        await dp.flow_get(ufid=flow.ufid)
    assert err.value.code == 2  # ENOENT
    assert dpctl_dump() == []


async def test_many_flows_with_long_actions_all_complete(dp: NetlinkDatapath) -> None:
    """Long action lists exercise the kernel leaving actions out of the first flow of a chunk."""
    outputs = ",".join(str(p) for p in range(1, 200))
    flows = []
    template = [f async for f in _install(dp, f"in_port(1),eth(),eth_type(0x0800),ipv4(frag=no) {outputs}")]
    base = template[0]
    await dp.flow_flush()
    for i in range(300):
        ufid = struct.pack("=4I", i, 0, 0, 0x5AFE)
        flows.append(Flow(base.key, base.mask, base.actions, ufid))
    # Distinct masked keys are needed: vary in_port (attribute IN_PORT=3, u32).
    flows = [Flow(_set_in_port(f.key, i + 1), f.mask, f.actions, f.ufid) for i, f in enumerate(flows)]
    assert await dp.flow_put_many(flows) == [None] * len(flows)
    dumped = [f async for f in dp.flows()]
    assert len(dumped) == len(flows)
    assert all(f.actions == base.actions for f in dumped)


async def _install(dp: NetlinkDatapath, line: str) -> AsyncIterator[Flow]:
    key, actions = line.rsplit(" ", 1)
    sh(f"ovs-dpctl add-flow {DP} '{key}' '{actions}'")
    async for f in dp.flows():
        yield f


def _set_in_port(key: bytes, port: int) -> bytes:
    out, off = b"", 0
    while off < len(key):
        length, atype = struct.unpack_from("=HH", key, off)
        if atype & 0x3FFF == 3:
            out += attr(3, struct.pack("=I", port))
        else:
            out += key[off : off + ((length + 3) & ~3)]
        off += (length + 3) & ~3
    return out


async def test_notifications_from_another_process(dp: NetlinkDatapath) -> None:
    key, actions = FLOWS[1].rsplit(" ", 1)
    async with dp.events() as events:
        sh(f"ovs-dpctl add-flow {DP} '{key}' '{actions}'")
        sh(f"ovs-dpctl del-flow {DP} '{key}'")
        sh(f"ovs-dpctl add-if {DP} tpint9,type=internal")
        seen = []
        with trio.fail_after(10):
            async for ev in events:
                assert not isinstance(ev, Resync)
                if ev.kind is EventKind.DATAPATH:
                    continue  # each ovs-dpctl run re-asserts the datapath's features (a SET)
                assert ev.sender_portid != 0  # the requester's portid, not the kernel's
                seen.append((ev.kind, ev.cmd))
                if ev.kind is EventKind.VPORT:
                    break
    assert seen == [
        (EventKind.FLOW, EventCmd.NEW),
        (EventKind.FLOW, EventCmd.DEL),
        (EventKind.VPORT, EventCmd.NEW),
    ]


async def test_listener_overrun_is_reported_never_silent(dp: NetlinkDatapath) -> None:
    """A listener too slow for a burst of flow notifications raises Overrun (with the drop count)."""
    (template,) = [f async for f in _install(dp, UFID_FLOW)]
    await dp.flow_flush()
    listener = Listener(dp.client, rcvbuf=4096)
    try:
        await listener.join("ovs_flow")
        flows = [
            Flow(
                _set_in_port(template.key, i + 1),
                template.mask,
                template.actions,
                struct.pack("=4I", i, 1, 2, 3),
            )
            for i in range(500)
        ]
        assert await dp.flow_put_many(flows) == [None] * len(flows)
        received = 0
        with pytest.raises(Overrun) as lost, trio.fail_after(10):
            async for batch in listener.batches():
                received += len(batch)
        assert received < len(flows)
        assert lost.value.dropped is None or lost.value.dropped > 0
    finally:
        listener.close()


@pytest.fixture
def veth() -> Iterator[str]:
    sh("ip netns add tpns && ip link add tpv0 type veth peer name tpv1 netns tpns")
    # No IPv6 autoconfiguration chatter: the only packet is the test's.
    sh("sysctl -qw net.ipv6.conf.tpv0.disable_ipv6=1")
    sh("ip netns exec tpns sysctl -qw net.ipv6.conf.tpv1.disable_ipv6=1")
    sh("ip link set tpv0 up && ip -n tpns link set tpv1 up")
    try:
        yield "tpv0"
    finally:
        subprocess.run("ip link del tpv0; ip netns del tpns", shell=True, capture_output=True)


FRAME = bytes.fromhex("0200000000020200000000010800") + bytes.fromhex(
    "450000140001000040ff00000a0000010a000002"
)


def send_from_peer() -> None:
    """One frame into tpv0 from the namespace side (AF_PACKET, no scapy: imports are slow in the VM)."""
    code = (
        "import socket;s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW);s.bind(('tpv1',0));"
        f"s.send(bytes.fromhex('{FRAME.hex()}'))"
    )
    sh(f'ip netns exec tpns python3 -c "{code}"')


async def first_upcall(receiver: AsyncIterator[Upcall | Resync]) -> Upcall:
    """The first upcall carrying the test frame (stray link-local traffic is skipped)."""
    with trio.fail_after(10):
        async for up in receiver:
            assert isinstance(up, Upcall), up
            if up.packet[: len(FRAME)] == FRAME:
                return up
    raise AssertionError("no upcall")


async def test_upcall_on_vport_pid(dp: NetlinkDatapath, veth: str) -> None:
    # ovs-dpctl add-dp turned per-CPU dispatch on (vport pids are then ignored): back to per-vport.
    await dp.set_features(int(DpFeature.UNALIGNED | DpFeature.VPORT_PIDS))
    port = await dp.port_add(veth, VportType.NETDEV)
    async with dp.upcalls() as rx:
        await dp.port_set_upcall_pids(port.port_no, rx.portids)
        send_from_peer()
        up = await first_upcall(rx.__aiter__())
    assert up.kind is UpcallKind.MISS and up.dp_ifindex == dp.ifindex
    assert up.packet[: len(FRAME)] == FRAME and up.hash is not None


async def test_upcall_on_per_cpu_pid_and_execute_recirc_miss(dp: NetlinkDatapath, veth: str) -> None:
    port = await dp.port_add(veth, VportType.NETDEV)
    info = await dp.info()
    async with dp.upcalls() as rx:
        ncpu = os.cpu_count() or 1
        await dp.set_features(int(info.features | DpFeature.DISPATCH_UPCALL_PER_CPU), rx.portids * ncpu)
        it = rx.__aiter__()
        send_from_peer()
        up = await first_upcall(it)
        assert up.kind is UpcallKind.MISS and up.packet[: len(FRAME)] == FRAME
        # Re-inject: recirc(0) misses again and comes back as a MISS to whoever owns the pids (us).
        recirc0 = attr(7, struct.pack("=I", 0))
        await dp.execute(ExecuteRequest(up.packet, up.key, recirc0, hash=up.hash))
        again = await first_upcall(it)
    assert again.kind is UpcallKind.MISS and again.packet == up.packet
    assert port.port_no in _in_ports(again.key)


def _in_ports(key: bytes) -> list[int]:
    out, off = [], 0
    while off < len(key):
        length, atype = struct.unpack_from("=HH", key, off)
        if atype & 0x3FFF == 3:
            out.append(struct.unpack_from("=I", key, off + 4)[0])
        off += (length + 3) & ~3
    return out


async def test_families_reresolved_across_module_reload() -> None:
    client = GenlClient()
    try:
        await create_datapath("tpdp2", client=client)
        before = (await client.family("ovs_flow")).id
        await delete_datapath("tpdp2", client=client)
        subprocess.run("ovs-dpctl del-dp tpdp0", shell=True, capture_output=True)
        sh("rmmod openvswitch && modprobe openvswitch")
        info = await create_datapath("tpdp2", client=client)
        assert info.name == "tpdp2"
        assert (await client.family("ovs_flow")).id >= before
        await delete_datapath("tpdp2", client=client)
    finally:
        client.close()
        subprocess.run("ovs-dpctl del-dp tpdp2", shell=True, capture_output=True)


async def test_listener_resyncs_on_module_unload(dp: NetlinkDatapath) -> None:
    async with dp.events() as events:
        await delete_datapath(DP)
        sh("rmmod openvswitch")
        got: list[object] = []
        with trio.fail_after(10):
            async for ev in events:
                got.append(ev)
                if isinstance(ev, Resync):
                    break
        sh("modprobe openvswitch")
    assert isinstance(got[-1], Resync)
