"""The kernel provider: `dpif.model.Datapath` over the openvswitch generic-netlink families.

    async with open_datapath("ovs-system") as dp:
        async for flow in dp.flows(): ...

Module functions list, create and delete datapaths.  Each function that is not given a `GenlClient`
opens (and closes) its own.
"""

from __future__ import annotations

import errno
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from dpif.model import (
    DatapathInfo,
    Event,
    ExecuteRequest,
    Flow,
    Meter,
    MeterStats,
    MetersUnsupported,
    NoSuchDatapath,
    Resync,
    Upcall,
    Vport,
    VportType,
)
from dpif.netlink import dumptext
from dpif.netlink import messages as m
from dpif.netlink.exchange import FamilyNotFound
from dpif.netlink.wire import NLMSG_MIN_TYPE, KernelError, Message, WireError, iter_messages
from dpif.sockets import DEFAULT_TIMEOUT, HeldSocket, NetlinkSocket, Overrun, UpcallSocket, hold_sockets
from dpif.transport import FamilyGone, GenlClient, Listener, open_client

EVENT_FAMILIES = ("ovs_datapath", "ovs_vport", "ovs_flow")


async def list_datapaths(client: GenlClient | None = None) -> list[DatapathInfo]:
    async with _client(client) as c:
        return [m.decode_datapath(payload) async for payload in c.dump(m.dp_get())]


async def get_datapath(name: str, client: GenlClient | None = None) -> DatapathInfo:
    async with _client(client) as c:
        try:
            replies = await c.call(m.dp_get(name))
        except KernelError as exc:
            if exc.code == errno.ENODEV:
                raise NoSuchDatapath(name) from None
            raise
        return m.decode_datapath(replies[0].payload)


async def create_datapath(
    name: str,
    *,
    features: int = 0,
    upcall_pid: int = 0,
    ifindex: int | None = None,
    client: GenlClient | None = None,
) -> DatapathInfo:
    async with _client(client) as c:
        replies = await c.call(m.dp_new(name, upcall_pid=upcall_pid, features=features, ifindex=ifindex))
        return m.decode_datapath(replies[0].payload)


async def delete_datapath(name: str, client: GenlClient | None = None) -> None:
    async with _client(client) as c:
        try:
            await c.call(m.dp_del(name))
        except KernelError as exc:
            if exc.code == errno.ENODEV:
                raise NoSuchDatapath(name) from None
            raise


@asynccontextmanager
async def _client(client: GenlClient | None) -> AsyncIterator[GenlClient]:
    if client is not None:
        yield client
    else:
        async with open_client() as c:
            yield c


@asynccontextmanager
async def open_datapath(
    name: str, *, client: GenlClient | None = None, timeout: float = DEFAULT_TIMEOUT
) -> AsyncIterator[NetlinkDatapath]:
    """The named datapath (NoSuchDatapath if absent); the client is closed on exit if we opened it."""
    owned = client is None
    c = client if client is not None else GenlClient(timeout)
    try:
        info = await get_datapath(name, c)
        dp = NetlinkDatapath(name, info.ifindex, c, owns_client=owned)
        yield dp
    finally:
        if owned:
            c.close()


class NetlinkDatapath:
    """One kernel datapath, addressed by its ifindex (re-looked-up by name after a module reload)."""

    lives_in_daemon = False

    def __init__(self, name: str, ifindex: int, client: GenlClient, *, owns_client: bool = False) -> None:
        self.name = name
        self.ifindex = ifindex
        self.client = client
        self.owns_client = owns_client

    async def _call(self, req: m.Request) -> list[Message]:
        return await self.client.call(req)

    async def info(self) -> DatapathInfo:
        info = await get_datapath(self.name, self.client)
        self.ifindex = info.ifindex
        return info

    async def set_features(self, features: int, per_cpu_pids: Sequence[int] | None = None) -> DatapathInfo:
        replies = await self._call(m.dp_set(self.ifindex, features, per_cpu_pids))
        return m.decode_datapath(replies[0].payload)

    async def ports(self) -> list[Vport]:
        return [m.decode_vport(payload) async for payload in self.client.dump(m.vport_get(self.ifindex))]

    async def port_get(self, port_no: int | None = None, *, name: str | None = None) -> Vport:
        replies = await self._call(m.vport_get(self.ifindex, port_no, name=name))
        return m.decode_vport(replies[0].payload)

    async def port_add(
        self,
        name: str,
        type: VportType,
        port_no: int | None = None,
        upcall_pids: Sequence[int] = (0,),
        options: bytes = b"",
        ifindex: int | None = None,
    ) -> Vport:
        req = m.vport_new(
            self.ifindex,
            name,
            type,
            port_no=port_no,
            upcall_pids=upcall_pids,
            options=options,
            ifindex=ifindex,
        )
        return m.decode_vport((await self._call(req))[0].payload)

    async def port_set_upcall_pids(self, port_no: int, upcall_pids: Sequence[int]) -> Vport:
        replies = await self._call(m.vport_set_upcall_pids(self.ifindex, port_no, upcall_pids))
        return m.decode_vport(replies[0].payload)

    async def port_del(self, port_no: int) -> None:
        await self._call(m.vport_del(self.ifindex, port_no))

    async def flows(self) -> AsyncIterator[Flow]:
        """Full dump.  A flow whose actions did not fit its dump chunk is re-fetched in place (by UFID, else
        by key) on the request socket, as dpif-netlink does: same order as ovs-dpctl's dump."""
        async for batch in self.flow_batches():
            for flow in batch:
                yield flow

    async def flow_batches(self) -> AsyncIterator[list[Flow]]:
        """A datagram's flows at a time, decoded in C (`dumptext.records`)."""
        async for run in self.flow_runs():
            batch: list[Flow] = []
            for item in dumptext.records(run):
                if isinstance(item, Flow):
                    batch.append(item)
                elif (row := await self.complete_row(item)) is not None:
                    batch.append(Flow(*row[1:]))
            yield batch

    def flow_runs(self) -> AsyncIterator[memoryview]:
        """The flow dump as runs of whole flow messages (`GenlClient.dump_runs`), for bulk readers (the
        dump-flows text in C); each message goes through `complete_row` if the reader needs it decoded."""
        return self.client.dump_runs(m.flow_dump(self.ifindex))

    async def complete_row(self, payload: bytes | memoryview) -> m.FlowRow | None:
        """A dumped flow message as a row, its actions fetched by UFID (or key) if the dump left them out;
        None if the flow was deleted since."""
        row = m.decode_flow_row(payload)
        if row[3] is not None:
            return row
        ufid = row[4]
        try:
            replies = await self._call(m.flow_get(self.ifindex, ufid=ufid, key=None if ufid else row[1]))
        except KernelError as exc:
            if exc.code != errno.ENOENT:  # deleted since the dump: nothing to report
                raise
            return None
        return m.decode_flow_row(replies[0].payload)

    async def flow_get(self, *, ufid: bytes | None = None, key: bytes | None = None) -> Flow:
        replies = await self._call(m.flow_get(self.ifindex, ufid=ufid, key=key))
        return m.decode_flow(replies[0].payload)[1]

    async def flow_put(self, flow: Flow, *, create: bool = True) -> None:
        await self._call(m.flow_put(self.ifindex, flow, create=create))

    async def flow_put_many(
        self, flows: Sequence[Flow], *, create: bool = True
    ) -> list[BaseException | None]:
        reqs = [m.flow_put(self.ifindex, f, create=create) for f in flows]
        return [*await self.client.batch_quiet(reqs)]

    async def flow_del(self, *, ufid: bytes | None = None, key: bytes | None = None) -> Flow | None:
        replies = await self._call(m.flow_del(self.ifindex, ufid=ufid, key=key))
        return m.decode_flow(replies[0].payload)[1] if replies else None

    async def flow_flush(self) -> None:
        await self._call(m.flow_flush(self.ifindex))

    async def execute(self, request: ExecuteRequest) -> None:
        await self._call(m.execute(self.ifindex, request))

    async def execute_many(self, requests: Sequence[ExecuteRequest]) -> list[BaseException | None]:
        results = await self.client.batch([m.execute(self.ifindex, r) for r in requests])
        return [r if isinstance(r, BaseException) else None for r in results]

    async def meter_get(self, meter_id: int) -> MeterStats:
        replies = await self._meter_call(m.meter_get(self.ifindex, meter_id))
        return m.decode_meter_stats(replies[0].payload)

    async def meter_set(self, meter: Meter) -> None:
        await self._meter_call(m.meter_set(self.ifindex, meter))

    async def _meter_call(self, req: m.Request) -> list[Message]:
        """The datapath families exist without ovs_meter on old kernels: say so, not 'is it loaded?'."""
        try:
            return await self._call(req)
        except FamilyNotFound:
            raise MetersUnsupported() from None

    @asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[Event | Resync]]:
        """Subscribed on entry (subscribe, then dump, to reconcile).  Only this datapath's events pass;
        losses and module unloads become Resync (after an unload we re-join the groups when they return)."""
        listener = Listener(self.client)
        try:
            for name in EVENT_FAMILIES:
                await listener.join(name)
            yield self._events(listener)
        finally:
            listener.close()

    async def _events(self, listener: Listener) -> AsyncIterator[Event | Resync]:
        while True:
            try:
                async for batch in listener.batches():
                    for family_name, msg in batch:
                        try:
                            ev = m.decode_event(family_name, msg)
                        except WireError as exc:
                            yield Resync(f"undecodable {family_name} notification: {exc}")
                            continue
                        if ev.dp_ifindex == self.ifindex or (
                            isinstance(ev.record, DatapathInfo) and ev.record.name == self.name
                        ):
                            yield ev
            except Overrun as exc:
                yield Resync("notification socket overrun", exc.dropped)
            except FamilyGone as exc:
                yield Resync(str(exc))
                await self._rejoin(listener)

    async def _rejoin(self, listener: Listener) -> None:
        """Wait (polling nlctrl, 0.2 s apart) until the families are back, then join their groups again."""
        while True:
            self.client.forget_families()
            try:
                for name in EVENT_FAMILIES:
                    await listener.join(name)
                return
            except OSError:
                await trio.sleep(0.2)

    @asynccontextmanager
    async def upcalls(self, n_sockets: int = 1, portids: Sequence[int] = ()) -> AsyncIterator[UpcallReceiver]:
        """Open `n_sockets` upcall sockets (bound to `portids` when given, e.g. a dead daemon's)."""
        chosen = list(portids) or [0] * n_sockets
        socks: list[UpcallSocket] = []
        try:
            for p in chosen:
                socks.append(UpcallSocket(p))
            async with trio.open_nursery() as nursery:
                receiver = UpcallReceiver(socks)
                for s in socks:
                    nursery.start_soon(receiver.pump, s)
                yield receiver
                nursery.cancel_scope.cancel()
        finally:
            for s in socks:
                s.close()

    @asynccontextmanager
    async def hold_upcalls(self, pid: int, portids: Collection[int]) -> AsyncIterator[HeldSockets]:
        """Hold, unread, the sockets of process `pid` bound to `portids` (see `HeldSocket`)."""
        socks = hold_sockets(pid, {p for p in portids if p})
        try:
            yield HeldSockets(socks)
        finally:
            for s in socks:
                s.close()

    async def aclose(self) -> None:
        """Close the client if it is ours (open_datapath does this on exit anyway)."""
        if self.owns_client:
            self.client.close()


@dataclass
class UpcallReceiver:
    """Upcalls from all its sockets, in arrival order per socket; overruns become Resync."""

    socks: list[UpcallSocket]
    portids: tuple[int, ...] = field(init=False)

    delivered: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.portids = tuple(s.portid for s in self.socks)
        self._send, self._recv = trio.open_memory_channel[Upcall | Resync](4096)

    async def pump(self, sock: UpcallSocket) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock.sock)
            await self._read_all(sock)

    async def flush(self) -> None:
        for sock in self.socks:
            await self._read_all(sock)

    async def _read_all(self, sock: UpcallSocket) -> None:
        """Every datagram queued on the socket now, decoded, into the stream."""
        for item in read_upcalls(sock):
            await self._put(item)

    async def _put(self, item: Upcall | Resync) -> None:
        await self._send.send(item)
        self.delivered += 1

    def __aiter__(self) -> AsyncIterator[Upcall | Resync]:
        return self._recv.__aiter__()


def read_upcalls(sock: NetlinkSocket) -> list[Upcall | Resync]:
    """Every upcall queued on the socket now, decoded, without blocking; a loss reads as a Resync."""
    out: list[Upcall | Resync] = []
    lost = False
    while True:
        try:
            data = sock.recv_nowait()
        except Overrun:
            lost = True
            continue
        if data is None:
            break
        now = time.monotonic_ns()
        for msg in iter_messages(data):
            if msg.type < NLMSG_MIN_TYPE:
                continue
            try:
                out.append(m.decode_upcall(msg.payload, now))
            except WireError as exc:
                out.append(Resync(f"undecodable upcall: {exc}"))
    dropped = sock.new_drops()
    if lost or dropped:
        out.append(Resync(f"upcall socket {sock.portid} overrun", dropped or None))
    return out


@dataclass
class HeldSockets:
    """A process's upcall sockets, held past its death (`NetlinkDatapath.hold_upcalls`)."""

    socks: list[HeldSocket]
    portids: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        self.portids = frozenset(s.portid for s in self.socks)

    def read(self) -> list[Upcall | Resync]:
        return [item for sock in self.socks for item in read_upcalls(sock)]
