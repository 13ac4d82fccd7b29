"""Generic-netlink requests without an event loop, and the kernel datapath over them, for one-shot commands.

`dpctl` sends its requests and reads their answers one after the other: it needs no scheduler, and its
start-up is most of its time (importing trio costs 2.5-3 s under qemu TCG, more than ovs-dpctl's whole
100k-flow dump).  This is the blocking edge of the sans-IO protocol in `dpif.netlink.exchange`, beside the
trio edge `dpif.transport` that the service uses; every wait is a poll with a deadline.  One difference
from the trio edge: a family renumbered by a module reload in the middle of a command fails the command
(as it fails ovs-dpctl) instead of being resolved again.
"""

from __future__ import annotations

import errno
import select
import time
from collections.abc import Iterator, Sequence

from dpif.model import DatapathInfo, Flow, NoSuchDatapath, Vport
from dpif.netlink import families as fam
from dpif.netlink import messages as m
from dpif.netlink.exchange import (
    DumpReader,
    Exchange,
    FramedBatch,
    Pending,
    RepliesLost,
    max_batch,
    payloads,
)
from dpif.netlink.wire import KernelError, Message, pack_message
from dpif.sockets import DEFAULT_TIMEOUT, NetlinkSocket, Overrun


class BlockingClient:
    """Requests and dumps over one request socket and one dump socket, waiting in poll."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = NetlinkSocket()
        self.exchange = Exchange(int(time.time()))
        self.max_batch = max_batch(self.sock.rcvbuf)
        self._dump_sock: NetlinkSocket | None = None

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()
        if self._dump_sock is not None:
            self._dump_sock.close()
            self._dump_sock = None

    def reserve_seqs(self, n: int) -> int:
        return self.exchange.reserve_seqs(n)

    def family(self, name: str) -> m.FamilyInfo:
        info = self.exchange.families.get(name)
        if info is None:
            info = self.exchange.learn_family(name, self._exchange_one(self.sock, m.get_family(name)))
        return info

    # --- requests ---------------------------------------------------------------------------------------

    def call(self, req: m.Request) -> list[Message]:
        """One request; its reply messages (empty for a bare ack).  Refusals raise KernelError."""
        self.family(req.family)
        result = self._exchange_one(self.sock, req)
        if isinstance(result, KernelError):
            raise result
        return result

    def batch_quiet(self, reqs: Sequence[m.Request]) -> list[KernelError | None]:
        """Requests of one family whose only answer is an ack, one ack per send chunk (FramedBatch)."""
        if not reqs:
            return []
        family_id = self.family(reqs[0].family).id
        batch = FramedBatch.of(reqs, family_id, self.reserve_seqs(len(reqs)), self.max_batch)
        errors = self.send_framed(batch)
        return [errors.get(i) for i in range(len(reqs))]

    def send_framed(self, batch: FramedBatch) -> dict[int, KernelError]:
        """A batch of pre-framed quiet requests, a chunk in flight at a time; errors by index in the batch."""
        errors: dict[int, KernelError] = {}
        seq = batch.first_seq
        for chunk in batch.chunks:
            if not chunk.count:
                continue
            chunk.ask_ack()
            deadline = self._deadline()
            self._send(self.sock, chunk.data, deadline)
            while not self.exchange.file_quiet(self._recv(self.sock, deadline), seq, seq + chunk.count - 1,
                                               errors):
                pass
            seq += chunk.count
        return {s - batch.first_seq: e for s, e in errors.items()}

    def _exchange_one(self, sock: NetlinkSocket, req: m.Request) -> list[Message] | KernelError:
        chunks, pending = self.exchange.frame([req], self.exchange.ids([req.family]))
        deadline = self._deadline()
        self._send(sock, chunks[0], deadline)
        p: Pending = next(iter(pending.values()))
        while not self.exchange.file(self._recv(sock, deadline), pending):
            pass
        return p.result()

    # --- dumps ------------------------------------------------------------------------------------------

    def dump(self, req: m.Request) -> Iterator[memoryview]:
        """A dump's message payloads (after the nlmsghdr)."""
        for run in self.dump_runs(req):
            yield from payloads(run)

    def dump_runs(self, req: m.Request) -> Iterator[memoryview]:
        """A dump as runs of its data messages, up to a datagram each (GenlClient.dump_runs), on the dump
        socket; read to its end before the next request on that socket.  Each datagram has a deadline."""
        family_id = self.family(req.family).id
        sock = self._dump_sock if self._dump_sock is not None else self._primed_socket()
        self._dump_sock = None
        reader = DumpReader(self.exchange.next_seq())
        try:
            self._send(sock, pack_message(family_id, req.flags, reader.seq, req.body), self._deadline())
            while not reader.done:
                data = sock.recv_nowait()
                if data is None:
                    data = self._recv(sock, self._deadline(), "dump stalled for")
                yield from reader.runs(data)
        finally:
            if reader.done:
                self._dump_sock = sock
            else:
                sock.close()  # an abandoned dump leaves its rest queued: never reuse that socket

    def _primed_socket(self) -> NetlinkSocket:
        """A dump socket whose first received chunk was large (GenlClient._primed_socket says why)."""
        sock = NetlinkSocket()
        try:
            self._exchange_one(sock, m.get_family(fam.NLCTRL.name))  # any answer, even a refusal, does
        except BaseException:
            sock.close()
            raise
        return sock

    # --- waits ------------------------------------------------------------------------------------------

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def _send(self, sock: NetlinkSocket, data: bytes | bytearray, deadline: float) -> None:
        while not sock.send_nowait(data):
            self._wait(sock, select.POLLOUT, deadline, "no room to send within")

    def _recv(self, sock: NetlinkSocket, deadline: float, what: str = "no netlink reply within") -> bytes:
        while True:
            try:
                data = sock.recv_nowait()
            except Overrun as exc:
                raise RepliesLost() from exc
            if data is not None:
                return data
            self._wait(sock, select.POLLIN, deadline, what)

    def _wait(self, sock: NetlinkSocket, events: int, deadline: float, what: str) -> None:
        left = deadline - time.monotonic()
        poller = select.poll()
        poller.register(sock.sock, events)
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError(errno.ETIMEDOUT, f"{what} {self.timeout:g} s")


class BlockingDatapath:
    """One kernel datapath, as one-shot commands use it (the requests and decoders of NetlinkDatapath)."""

    def __init__(self, info: DatapathInfo, client: BlockingClient) -> None:
        self.name = info.name
        self.ifindex = info.ifindex
        self.client = client

    def ports(self) -> list[Vport]:
        return [m.decode_vport(payload) for payload in self.client.dump(m.vport_get(self.ifindex))]

    def flow_runs(self) -> Iterator[memoryview]:
        return self.client.dump_runs(m.flow_dump(self.ifindex))

    def complete_row(self, payload: bytes | memoryview) -> m.FlowRow | None:
        """A dumped flow as a row, its actions fetched if the dump left them out (NetlinkDatapath's)."""
        row = m.decode_flow_row(payload)
        if row[3] is not None:
            return row
        try:
            replies = self.client.call(m.flow_get(self.ifindex, ufid=row[4], key=None if row[4] else row[1]))
        except KernelError as exc:
            if exc.code != errno.ENOENT:
                raise
            return None
        return m.decode_flow_row(replies[0].payload)

    def flow_get(self, *, ufid: bytes | None = None, key: bytes | None = None) -> Flow:
        return m.decode_flow(self.client.call(m.flow_get(self.ifindex, ufid=ufid, key=key))[0].payload)[1]

    def flow_put(self, flow: Flow, *, create: bool = True) -> None:
        self.client.call(m.flow_put(self.ifindex, flow, create=create))

    def flow_put_many(self, flows: Sequence[Flow], *, create: bool = True) -> list[KernelError | None]:
        return self.client.batch_quiet([m.flow_put(self.ifindex, f, create=create) for f in flows])

    def flow_del(self, *, ufid: bytes | None = None, key: bytes | None = None) -> None:
        self.client.call(m.flow_del(self.ifindex, ufid=ufid, key=key))

    def flow_flush(self) -> None:
        self.client.call(m.flow_flush(self.ifindex))


def list_datapaths(client: BlockingClient) -> list[DatapathInfo]:
    return [m.decode_datapath(payload) for payload in client.dump(m.dp_get())]


def get_datapath(client: BlockingClient, name: str) -> DatapathInfo:
    """The named datapath's info; NoSuchDatapath (ENODEV) if it is absent."""
    try:
        return m.decode_datapath(client.call(m.dp_get(name))[0].payload)
    except KernelError as exc:
        if exc.code == errno.ENODEV:
            raise NoSuchDatapath(name) from None
        raise
