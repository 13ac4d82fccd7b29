"""Generic-netlink requests on trio: (extended) acks, dumps, batches, multicast listeners.

Three kinds of socket, never mixed (notifications carry the *sender's* sequence numbers and would be
mistaken for our replies): one request socket (plus pooled dump sockets), listener sockets joined to
multicast groups, and upcall sockets whose portids the datapath sends packets to.

This is the trio edge of the sans-IO protocol in `dpif.netlink.exchange`: the sockets (`dpif.sockets`)
are non-blocking and woken by `trio.lowlevel.wait_readable`; every wait has a deadline.  Family ids are
cached; the cache is dropped when nlctrl announces that a family went away (module unloaded) and a
request refused with ENOENT is retried once after re-resolving, so a reloaded module is picked up
transparently.  One-shot commands use the blocking edge, `dpif.blocking`, and never import trio.
"""

from __future__ import annotations

import errno
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import trio

from dpif.netlink import families as fam
from dpif.netlink import messages as m
from dpif.netlink.exchange import (
    NLCTRL_NOTIFY,
    DumpReader,
    Exchange,
    FamilyNotFound,
    FramedBatch,
    Pending,
    RepliesLost,
    max_batch,
    payloads,
    refused_enoent,
)
from dpif.netlink.wire import KernelError, Message, iter_messages, pack_message
from dpif.sockets import DEFAULT_TIMEOUT, RCVBUF, NetlinkSocket, Overrun


async def send(sock: NetlinkSocket, data: bytes | bytearray) -> None:
    while not sock.send_nowait(data):
        await trio.lowlevel.wait_writable(sock.sock)


async def recv(sock: NetlinkSocket) -> bytes:
    while (data := sock.recv_nowait()) is None:
        await trio.lowlevel.wait_readable(sock.sock)
    return data


class GenlClient:
    """Requests and dumps over one request socket shared by many tasks; family ids cached by name."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = NetlinkSocket()
        self.exchange = Exchange(int(time.time()))
        self._lock = trio.Lock()
        self._dump_socks: list[NetlinkSocket] = []
        # Family (un)registrations reach the request socket too: the cache is dropped as they are read.
        self.sock.add_membership(NLCTRL_NOTIFY)
        self.max_batch = max_batch(self.sock.rcvbuf)

    def close(self) -> None:
        self.sock.close()
        for s in self._dump_socks:
            s.close()
        self._dump_socks.clear()

    def reserve_seqs(self, n: int) -> int:
        return self.exchange.reserve_seqs(n)

    # --- families ---------------------------------------------------------------------------------------

    async def family(self, name: str) -> m.FamilyInfo:
        info = self.exchange.families.get(name)
        if info is None:
            async with self._lock:
                info = await self._resolve_locked(name)
        return info

    async def _resolve_locked(self, name: str) -> m.FamilyInfo:
        self._drain()
        info = self.exchange.families.get(name)
        if info is None:
            result = await self._exchange_one(self.sock, m.get_family(name))
            info = self.exchange.learn_family(name, result)
        return info

    def _drain(self) -> None:
        """Read what queued up between requests (nlctrl notifications, stale replies): a family that went
        away is forgotten before its old id is used again."""
        while True:
            try:
                data = self.sock.recv_nowait()
            except Overrun:
                self.exchange.families.clear()  # a family notification may be among the losses
                continue
            if data is None:
                return
            self.exchange.file(data, {})

    def forget_families(self) -> None:
        self.exchange.families.clear()

    async def _families_changed(self, names: Iterable[str]) -> bool:
        changed = False
        for name in names:
            old = self.exchange.families.pop(name, None)
            new = await self.family(name)
            changed |= old is None or old.id != new.id
        return changed

    # --- requests ---------------------------------------------------------------------------------------

    async def call(self, req: m.Request) -> list[Message]:
        """One request; its reply messages (empty for a bare ack).  Refusals raise KernelError."""
        result = (await self.batch([req]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def batch(self, reqs: Sequence[m.Request]) -> list[list[Message] | KernelError]:
        """Many requests, many per sendmsg, replies matched by sequence number; one result per request.

        A request refused with ENOENT is retried once if its family id changed meanwhile (module reload).
        """
        if not reqs:
            return []
        results = await self._batch_once(reqs)
        retry = refused_enoent(results)
        if retry and await self._families_changed({reqs[i].family for i in retry}):
            again = await self._batch_once([reqs[i] for i in retry])
            for i, r in zip(retry, again, strict=True):
                results[i] = r
        return results

    async def _batch_once(self, reqs: Sequence[m.Request]) -> list[list[Message] | KernelError]:
        results: list[list[Message] | KernelError] = []
        async with self._lock:
            self._drain()
            for name in {r.family for r in reqs}:
                await self._resolve_locked(name)
            ids = self.exchange.ids([r.family for r in reqs])
            for start in range(0, len(reqs), self.max_batch):
                chunks, pending = self.exchange.frame(reqs[start : start + self.max_batch], ids)
                for data in chunks:
                    await send(self.sock, data)
                await self._collect(self.sock, pending)
                results += [p.result() for p in pending.values()]
        return results

    async def batch_quiet(self, reqs: Sequence[m.Request]) -> list[KernelError | None]:
        """`batch` for requests of one family whose only answer is an ack (flow installs), framed and sent
        as `send_framed` sends them: one ack per chunk, not per request.  None for each request done."""
        if not reqs:
            return []
        family_id = (await self.family(reqs[0].family)).id
        batch = FramedBatch.of(reqs, family_id, self.reserve_seqs(len(reqs)), self.max_batch)
        errors = await self.send_framed(batch)
        return [errors.get(i) for i in range(len(reqs))]

    async def send_framed(self, batch: FramedBatch) -> dict[int, KernelError]:
        """Send a batch of pre-framed quiet requests, a chunk in flight at a time (its errors can't overrun
        the receive buffer); the refused ones' errors by index in the batch.  Requests refused with ENOENT
        are sent again (acked, as `batch` sends) if the family id changed meanwhile."""
        errors: dict[int, KernelError] = {}
        seq = batch.first_seq
        for chunk in batch.chunks:
            if not chunk.count:
                continue
            chunk.ask_ack()
            # The socket is held a chunk at a time: a 200 000-flow re-install (the flush repair) must not
            # hold up the replay of the misses beside it for its whole length.
            async with self._lock:
                self._drain()
                await send(self.sock, chunk.data)
                await self._collect_quiet(seq, seq + chunk.count - 1, errors)
            seq += chunk.count
        retry = {s for s, e in errors.items() if e.code == errno.ENOENT}
        if retry and await self._families_changed([batch.family]):
            for s, r in zip(sorted(retry), await self._batch_once(batch.requests(retry)), strict=True):
                if isinstance(r, KernelError):
                    errors[s] = r
                else:
                    del errors[s]
        return {s - batch.first_seq: e for s, e in errors.items()}

    async def _collect_quiet(self, first: int, last: int, errors: dict[int, KernelError]) -> None:
        """Read until the ack (or error) of `last`, filing the errors of first..last by sequence number."""
        with self._deadline():
            while not self.exchange.file_quiet(await self._recv_replies(self.sock), first, last, errors):
                pass

    async def _exchange_one(self, sock: NetlinkSocket, req: m.Request) -> list[Message] | KernelError:
        """One request on `sock`; the caller holds the lock if `sock` is the shared request socket."""
        chunks, pending = self.exchange.frame([req], self.exchange.ids([req.family]))
        await send(sock, chunks[0])
        await self._collect(sock, pending)
        return next(iter(pending.values())).result()

    async def _collect(self, sock: NetlinkSocket, pending: dict[int, Pending]) -> None:
        left = len(pending)
        with self._deadline():
            while left:
                left -= self.exchange.file(await self._recv_replies(sock), pending)

    @staticmethod
    async def _recv_replies(sock: NetlinkSocket) -> bytes:
        try:
            return await recv(sock)
        except Overrun as exc:
            raise RepliesLost() from exc

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        try:
            with trio.fail_after(self.timeout):
                yield
        except trio.TooSlowError:
            raise TimeoutError(errno.ETIMEDOUT, f"no netlink reply within {self.timeout:g} s") from None

    # --- dumps ------------------------------------------------------------------------------------------

    async def dump(self, req: m.Request) -> AsyncIterator[memoryview]:
        """Stream a dump's message payloads (after the nlmsghdr)."""
        async for run in self.dump_runs(req):
            for payload in payloads(run):
                yield payload

    async def dump_runs(self, req: m.Request) -> AsyncIterator[memoryview]:
        """Stream a dump as runs of its data messages (whole messages, headers included), up to a datagram
        each, for readers that walk them in bulk (dump-flows text); on a pooled socket of its own (callers
        may interleave other requests while iterating).  Each datagram has a deadline."""
        family_id = (await self.family(req.family)).id
        sock = self._dump_socks.pop() if self._dump_socks else await self._primed_socket()
        reader = DumpReader(self.exchange.next_seq())
        try:
            await send(sock, pack_message(family_id, req.flags, reader.seq, req.body))
            while not reader.done:
                # the kernel fills the next datagram as we read the last: a deadline only when we must wait
                data = sock.recv_nowait()
                if data is None:
                    with trio.move_on_after(self.timeout):
                        data = await recv(sock)
                    if data is None:
                        raise TimeoutError(errno.ETIMEDOUT, f"dump stalled for {self.timeout:g} s")
                for run in reader.runs(data):
                    yield run
        finally:
            if reader.done:
                self._dump_socks.append(sock)
            else:
                sock.close()  # an abandoned dump leaves its rest queued: never reuse that socket

    async def _primed_socket(self) -> NetlinkSocket:
        """A dump socket that has already received with a large buffer, so that the kernel's first
        chunk is a 32 KiB one (an action list that doesn't fit a chunk is left out of the dump)."""
        sock = NetlinkSocket()
        try:
            await self._exchange_one(sock, m.get_family(fam.NLCTRL.name))  # any answer, even a refusal, does
        except BaseException:
            sock.close()
            raise
        return sock


@asynccontextmanager
async def open_client(timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[GenlClient]:
    client = GenlClient(timeout)
    try:
        yield client
    finally:
        client.close()


class Listener:
    """A socket joined to multicast groups.  `batches()` yields [(family name, message)] or raises Overrun."""

    def __init__(self, client: GenlClient, rcvbuf: int = RCVBUF) -> None:
        self.client = client
        self.sock = NetlinkSocket(listener=True, rcvbuf=rcvbuf)
        self._groups: dict[int, str] = {}  # family id -> family name
        self.sock.add_membership(NLCTRL_NOTIFY)

    async def join(self, family_name: str) -> None:
        info = await self.client.family(family_name)
        group = fam.FAMILIES[family_name].mcast_group
        if group is None or group not in info.groups:
            raise FamilyNotFound(f"{family_name}/{group}")
        self.sock.add_membership(info.groups[group])
        self._groups[info.id] = family_name

    def close(self) -> None:
        self.sock.close()

    async def batches(self) -> AsyncIterator[list[tuple[str, Message]]]:
        """Everything readable at one wake-up; raises Overrun (after what was read) when the kernel dropped
        messages, and FamilyGone when a joined family was unregistered (its groups are gone with it).
        Drops count from the socket's creation: a burst lost before the first iteration is reported too."""
        while True:
            await trio.lowlevel.wait_readable(self.sock.sock)
            out: list[tuple[str, Message]] = []
            gone: list[str] = []
            lost = False
            while True:
                try:
                    data = self.sock.recv_nowait()
                except Overrun:
                    lost = True
                    continue
                if data is None:
                    break
                for msg in iter_messages(data):
                    name = self._groups.get(msg.type)
                    if name is not None:
                        out.append((name, msg))
                    elif msg.type == fam.GENL_ID_CTRL:
                        gone.extend(self._ctrl(msg))
            dropped = self.sock.new_drops()
            if out:
                yield out
            if lost or dropped:
                raise Overrun(dropped or None)
            if gone:
                raise FamilyGone(gone)

    def _ctrl(self, msg: Message) -> list[str]:
        self.client.exchange.note_ctrl(msg)
        body = m.decode_body(fam.NLCTRL, msg.payload)
        if body.cmd != fam.CTRL_CMD_DELFAMILY:
            return []
        fid = body.attrs.get("family-id")
        name = self._groups.pop(fid, None) if fid is not None else None
        return [name] if name else []


class FamilyGone(Exception):
    def __init__(self, names: list[str]) -> None:
        super().__init__(f"generic netlink families unregistered: {', '.join(names)}")
        self.names = names
