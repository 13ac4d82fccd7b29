"""Generic-netlink sockets on trio: requests with (extended) acks, dumps, batches, multicast and upcalls.

Three kinds of socket, never mixed (notifications carry the *sender's* sequence numbers and would be
mistaken for our replies): one request socket (plus pooled dump sockets), listener sockets joined to
multicast groups, and upcall sockets whose portids the datapath sends packets to.

The sockets are plain non-blocking stdlib sockets woken by `trio.lowlevel.wait_readable`: the bytes are
decoded by the sans-IO codecs in `dpif.netlink`.  Family ids are resolved through nlctrl and cached; the
cache is dropped when nlctrl announces that a family went away (module unloaded) and a request refused
with ENOENT is retried once after re-resolving, so a reloaded module is picked up transparently.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from dpif.netlink import families as fam
from dpif.netlink import messages as m
from dpif.netlink.wire import (
    NLM_F_ACK,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    KernelError,
    Message,
    WireError,
    data_run_end,
    iter_messages,
    message_at,
    pack_message,
    parse_error,
)

log = logging.getLogger(__name__)

NETLINK_GENERIC = 16
SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2
NETLINK_NO_ENOBUFS = 5
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

RECV_SIZE = 256 * 1024  # >= 32 KiB: the kernel sizes later dump chunks from our largest recv
RCVBUF = 4 * 1024 * 1024  # what ovs-vswitchd uses
SEND_CHUNK = 64 * 1024  # bytes of requests per sendmsg
DEFAULT_TIMEOUT = 10.0


class _OneLine(OSError):
    """An OSError that prints as its message alone (the CLI shows it as the one error line)."""

    def __str__(self) -> str:
        return str(self.strerror)


class FamilyNotFound(_OneLine):
    """The generic-netlink family is not registered (openvswitch module not loaded)."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.ENOENT, f"generic netlink family {name!r} not found (is openvswitch loaded?)")
        self.name = name


class RepliesLost(_OneLine):
    """Our receive buffer overflowed and the kernel dropped replies: the outcome of a batch is unknown."""


class Overrun(Exception):
    """A listener or upcall socket lost messages; carries how many, if known."""

    def __init__(self, dropped: int | None) -> None:
        super().__init__(f"netlink socket overrun ({dropped if dropped is not None else 'unknown'} dropped)")
        self.dropped = dropped


class NetlinkSocket:
    """One NETLINK_GENERIC socket.  `portid` is what the kernel actually bound (from getsockname)."""

    def __init__(self, *, portid: int = 0, listener: bool = False, rcvbuf: int = RCVBUF) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_GENERIC)
        try:
            _set_rcvbuf(self.sock, rcvbuf)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            if listener:
                # Losses are counted (sk_drops) and reported as Overrun instead of poisoning the socket.
                self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            self.sock.bind((portid, 0))
        except BaseException:
            self.sock.close()
            raise
        self.portid: int = self.sock.getsockname()[0]
        self.inode = os.fstat(self.sock.fileno()).st_ino
        self.rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._drops = 0
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)

    def close(self) -> None:
        self.sock.close()

    def add_membership(self, group: int) -> None:
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def drop_membership(self, group: int) -> None:
        self.sock.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, group)

    async def send(self, data: bytes | bytearray) -> None:
        while True:
            try:
                self.sock.send(data)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    def recv_nowait(self) -> bytes | None:
        """One datagram, or None when the queue is empty.  ENOBUFS (listener overrun) raises Overrun.

        Received into one reusable buffer and copied out at its exact size: recv(RECV_SIZE) would allocate
        and shrink 256 KiB per datagram, and a batch's acks are one datagram each (fragmentation, RSS).
        """
        try:
            n = self.sock.recv_into(self._buf)
            return bytes(self._view[:n])
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise Overrun(None) from exc
            raise

    async def recv(self) -> bytes:
        while True:
            data = self.recv_nowait()
            if data is not None:
                return data
            await trio.lowlevel.wait_readable(self.sock)

    def new_drops(self) -> int:
        """Messages the kernel dropped on this socket since the last call (sk_drops, /proc/net/netlink)."""
        total = _proc_drops(self.inode)
        if total is None:
            return 0
        delta, self._drops = total - self._drops, total
        return max(delta, 0)


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _proc_drops(inode: int) -> int | None:
    """sk_drops of our socket: counted even with NETLINK_NO_ENOBUFS, so losses are never silent."""
    try:
        with open("/proc/net/netlink", "rb") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    want = b"%d" % inode
    for line in lines:
        cols = line.split()  # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode (left-justified, padded)
        if len(cols) >= 10 and cols[9] == want:
            return int(cols[8])
    return None


@dataclass
class _Pending:
    replies: list[Message] = field(default_factory=list)
    error: KernelError | None = None
    done: bool = False


class GenlClient:
    """Requests and dumps over one request socket; family ids resolved and cached by name."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = NetlinkSocket()
        self._families: dict[str, m.FamilyInfo] = {}
        self._seq = int(time.time()) & 0x7FFFFFFF
        self._lock = trio.Lock()
        self._dump_socks: list[NetlinkSocket] = []
        # Family (un)registrations reach the request socket too: the cache is dropped as they are read.
        self.sock.add_membership(_NLCTRL_NOTIFY)
        # Acks need room: a batch never sends more messages than the receive buffer can hold replies for.
        self.max_batch = max(16, min(1024, self.sock.rcvbuf // 4096))

    def close(self) -> None:
        self.sock.close()
        for s in self._dump_socks:
            s.close()
        self._dump_socks.clear()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def reserve_seqs(self, n: int) -> int:
        """The first of n consecutive sequence numbers (none of them 0) for messages framed elsewhere."""
        if self._seq + n > 0xFFFFFFFF:
            self._seq = 0
        first = self._seq + 1
        self._seq += n
        return first

    # --- families ---------------------------------------------------------------------------------------

    async def family(self, name: str) -> m.FamilyInfo:
        info = self._families.get(name)
        if info is None:
            async with self._lock:
                info = await self._resolve_locked(name)
        return info

    async def _resolve_locked(self, name: str) -> m.FamilyInfo:
        self._drain()
        info = self._families.get(name)
        if info is None:
            try:
                replies = await self._exchange_one(self.sock, m.get_family(name), fam.GENL_ID_CTRL)
            except KernelError as exc:
                if exc.code == errno.ENOENT:
                    raise FamilyNotFound(name) from None
                raise
            if not replies:
                raise FamilyNotFound(name)
            info = m.decode_family(replies[0].payload)
            self._families[name] = info
        return info

    def _drain(self) -> None:
        """Read what queued up between requests (nlctrl notifications, stale replies): a family that went
        away is forgotten before its old id is used again."""
        while True:
            try:
                data = self.sock.recv_nowait()
            except Overrun:
                self._families.clear()  # a family notification may be among the losses
                continue
            if data is None:
                return
            for msg in iter_messages(data):
                self._dispatch(msg, {})

    def forget_families(self) -> None:
        self._families.clear()

    def _note_ctrl(self, msg: Message) -> None:
        """An nlctrl notification: a family went away or came back; forget it either way."""
        try:
            body = m.decode_body(fam.NLCTRL, msg.payload)
        except WireError:
            return
        name = body.attrs.get("family-name")
        if name in self._families and body.cmd in (fam.CTRL_CMD_DELFAMILY, fam.CTRL_CMD_NEWFAMILY):
            log.info(
                "generic netlink family %s %s",
                name,
                "removed" if body.cmd == fam.CTRL_CMD_DELFAMILY else "re-registered",
            )
            del self._families[name]

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
        retry = [i for i, r in enumerate(results) if isinstance(r, KernelError) and r.code == errno.ENOENT]
        if retry and await self._families_changed({reqs[i].family for i in retry}):
            again = await self._batch_once([reqs[i] for i in retry])
            for i, r in zip(retry, again, strict=True):
                results[i] = r
        return results

    async def _families_changed(self, names: Iterable[str]) -> bool:
        changed = False
        for name in names:
            old = self._families.pop(name, None)
            new = await self.family(name)
            changed |= old is None or old.id != new.id
        return changed

    async def _batch_once(self, reqs: Sequence[m.Request]) -> list[list[Message] | KernelError]:
        results: list[list[Message] | KernelError] = []
        async with self._lock:
            self._drain()
            ids = {name: (await self._resolve_locked(name)).id for name in {r.family for r in reqs}}
            for start in range(0, len(reqs), self.max_batch):
                chunk = reqs[start : start + self.max_batch]
                pending = await self._send_chunk(self.sock, chunk, ids)
                await self._collect(self.sock, pending)
                for p in pending.values():
                    results.append(p.error if p.error is not None else p.replies)
        return results

    async def batch_quiet(self, reqs: Sequence[m.Request]) -> list[KernelError | None]:
        """`batch` for requests of one family whose only answer is an ack (flow installs), framed and sent
        as `send_framed` sends them: one ack per chunk, not per request.  None for each request done."""
        if not reqs:
            return []
        family = reqs[0].family
        if any(r.family != family for r in reqs):
            raise ValueError("batch_quiet takes requests of one family")
        family_id = (await self.family(family)).id
        framed = FramedBatch(family, self.reserve_seqs(len(reqs)), self.max_batch)
        for r in reqs:
            framed.append_request(family_id, r)
        errors = await self.send_framed(framed)
        return [errors.get(i) for i in range(len(reqs))]

    async def send_framed(self, batch: FramedBatch) -> dict[int, KernelError]:
        """Send a batch of pre-framed requests quietly; the refused ones' errors by index in the batch.

        Only the last message of each send chunk asks for an ack: the kernel handles a sendmsg's messages
        in order before it returns, and answers a refused one with an error even without NLM_F_ACK, so
        when the chunk's ack arrives, the errors of all its messages are in.  One chunk is in flight at a
        time and holds at most `max_batch` messages, so their errors can't overrun the receive buffer.
        Requests refused with ENOENT are sent again (acked, as `batch` sends) if the family id changed
        meanwhile."""
        errors: dict[int, KernelError] = {}
        async with self._lock:
            self._drain()
            seq = batch.first_seq
            for chunk in batch.chunks:
                if not chunk.count:
                    continue
                flags_at = chunk.last + 6
                chunk.data[flags_at : flags_at + 2] = (
                    int.from_bytes(chunk.data[flags_at : flags_at + 2], sys.byteorder) | NLM_F_ACK
                ).to_bytes(2, sys.byteorder)
                await self.sock.send(chunk.data)
                await self._collect_quiet(seq, seq + chunk.count - 1, errors)
                seq += chunk.count
        retry = sorted(seq for seq, e in errors.items() if e.code == errno.ENOENT)
        if retry and await self._families_changed([batch.family]):
            want = set(retry)
            reqs = [m.Request(batch.family, msg.payload[0], msg.flags | NLM_F_ACK, bytes(msg.payload))
                    for chunk in batch.chunks for msg in iter_messages(bytes(chunk.data)) if msg.seq in want]
            for seq, r in zip(retry, await self._batch_once(reqs), strict=True):
                if isinstance(r, KernelError):
                    errors[seq] = r
                else:
                    del errors[seq]
        return {seq - batch.first_seq: e for seq, e in errors.items()}

    async def _collect_quiet(self, first: int, last: int, errors: dict[int, KernelError]) -> None:
        """Read until the ack (or error) of `last`, filing the errors of first..last by sequence number."""
        try:
            with trio.fail_after(self.timeout):
                while True:
                    try:
                        data = await self.sock.recv()
                    except Overrun as exc:
                        raise RepliesLost(
                            errno.ENOBUFS, "netlink replies lost (receive buffer overrun)"
                        ) from exc
                    done = False
                    for msg in iter_messages(data):
                        if msg.type == NLMSG_ERROR and first <= msg.seq <= last:
                            err = parse_error(msg)
                            if err is not None:
                                errors[msg.seq] = err
                            done |= msg.seq == last
                        else:
                            self._dispatch(msg, {})
                    if done:
                        return
        except trio.TooSlowError:
            raise TimeoutError(errno.ETIMEDOUT, f"no netlink reply within {self.timeout:g} s") from None

    async def _exchange_one(self, sock: NetlinkSocket, req: m.Request, family_id: int) -> list[Message]:
        """One request on `sock`; the caller holds the lock if `sock` is the shared request socket."""
        pending = await self._send_chunk(sock, [req], {req.family: family_id})
        await self._collect(sock, pending)
        (p,) = pending.values()
        if p.error is not None:
            raise p.error
        return p.replies

    async def _send_chunk(
        self, sock: NetlinkSocket, reqs: Sequence[m.Request], ids: dict[str, int]
    ) -> dict[int, _Pending]:
        pending: dict[int, _Pending] = {}
        buf: list[bytes] = []
        size = 0
        for r in reqs:
            seq = self._next_seq()
            pending[seq] = _Pending()
            msg = pack_message(ids[r.family], r.flags, seq, r.body)
            if size + len(msg) > SEND_CHUNK and buf:
                await sock.send(b"".join(buf))
                buf, size = [], 0
            buf.append(msg)
            size += len(msg) + (-len(msg) % 4)
        await sock.send(b"".join(buf))
        return pending

    async def _collect(self, sock: NetlinkSocket, pending: dict[int, _Pending]) -> None:
        left = len(pending)
        try:
            with trio.fail_after(self.timeout):
                while left:
                    try:
                        data = await sock.recv()
                    except Overrun as exc:
                        raise RepliesLost(
                            errno.ENOBUFS, "netlink replies lost (receive buffer overrun)"
                        ) from exc
                    left -= self._dispatch_datagram(data, pending)
        except trio.TooSlowError:
            raise TimeoutError(errno.ETIMEDOUT, f"no netlink reply within {self.timeout:g} s") from None

    def _dispatch_datagram(self, data: bytes, pending: dict[int, _Pending]) -> int:
        """File every message of a datagram; plain acks (the bulk of a batch) take a short cut."""
        done, off, end = 0, 0, len(data)
        while off + NLMSG_HDR.size <= end:
            length, mtype, flags, seq, pid = NLMSG_HDR.unpack_from(data, off)
            if length < NLMSG_HDR.size or off + length > end:
                raise WireError(f"netlink message length {length} at offset {off} exceeds {end - off} bytes")
            p = pending.get(seq)
            if (
                mtype == NLMSG_ERROR
                and p is not None
                and not p.done
                and length >= 20
                and not any(data[off + 16 : off + 20])
            ):
                p.done = True
                done += 1
            else:
                payload = memoryview(data)[off + NLMSG_HDR.size : off + length]
                done += self._dispatch(Message(mtype, flags, seq, pid, payload), pending)
            off += (length + 3) & ~3
        return done

    def _dispatch(self, msg: Message, pending: dict[int, _Pending]) -> int:
        """File one message under its request; 1 when that completed the request."""
        p = pending.get(msg.seq)
        if p is None or p.done:
            if msg.type == fam.GENL_ID_CTRL and msg.seq == 0:
                self._note_ctrl(msg)
            return 0  # a stale reply of a cancelled request, or a notification
        if msg.type == NLMSG_ERROR:
            p.error, p.done = parse_error(msg), True
            return 1
        if msg.type == NLMSG_DONE:
            if len(msg.payload) >= 4:
                err = int.from_bytes(msg.payload[:4], "little", signed=True)
                if err < 0:
                    p.error = KernelError(-err)
            p.done = True
            return 1
        if msg.type in (NLMSG_NOOP, NLMSG_OVERRUN):
            return 0
        p.replies.append(msg)
        return 0

    # --- dumps ------------------------------------------------------------------------------------------

    async def dump(self, req: m.Request) -> AsyncIterator[memoryview]:
        """Stream a dump's message payloads (after the nlmsghdr)."""
        async for run in self.dump_runs(req):
            off = 0
            while off < len(run):
                payload, off = message_at(run, off)
                yield payload

    async def dump_runs(self, req: m.Request) -> AsyncIterator[memoryview]:
        """Stream a dump as runs of its data messages (whole messages, headers included), up to a datagram
        each, for readers that walk them in bulk (dump-flows text); on a pooled socket of its own (callers
        may interleave other requests while iterating).  Each datagram has a deadline."""
        family_id = (await self.family(req.family)).id
        sock = self._dump_socks.pop() if self._dump_socks else await self._primed_socket()
        seq = self._next_seq()
        clean = False
        try:
            await sock.send(pack_message(family_id, req.flags, seq, req.body))
            while True:
                # the kernel fills the next datagram as we read the last: a deadline only when we must wait
                data = sock.recv_nowait()
                if data is None:
                    with trio.move_on_after(self.timeout):
                        data = await sock.recv()
                    if data is None:
                        raise TimeoutError(errno.ETIMEDOUT, f"dump stalled for {self.timeout:g} s")
                off, end = 0, len(data)
                while off + NLMSG_HDR.size <= end:
                    stop = data_run_end(data, off, seq)
                    if stop > off:
                        yield memoryview(data)[off:stop]
                    if stop + NLMSG_HDR.size > end:
                        break
                    length, mtype, flags, mseq, pid = NLMSG_HDR.unpack_from(data, stop)
                    if length < NLMSG_HDR.size or stop + length > end:
                        raise WireError(f"netlink message length {length} at offset {stop} exceeds bounds")
                    start, off = stop + NLMSG_HDR.size, stop + ((length + 3) & ~3)
                    if mseq != seq:
                        continue
                    if mtype == NLMSG_ERROR:
                        err = parse_error(Message(mtype, flags, mseq, pid, memoryview(data)[start:off]))
                        if err is not None:
                            raise err
                        clean = True
                        return
                    if mtype == NLMSG_DONE:
                        if length >= NLMSG_HDR.size + 4:
                            code = int.from_bytes(data[start : start + 4], "little", signed=True)
                            if code < 0:
                                raise KernelError(-code)
                        clean = True
                        return
        finally:
            if clean:
                self._dump_socks.append(sock)
            else:
                sock.close()  # an abandoned dump leaves its rest queued: never reuse that socket

    async def _primed_socket(self) -> NetlinkSocket:
        """A dump socket that has already received with a large buffer, so that the kernel's first
        chunk is a 32 KiB one (an action list that doesn't fit a chunk is left out of the dump)."""
        sock = NetlinkSocket()
        try:
            await self._exchange_one(sock, m.get_family("nlctrl"), fam.GENL_ID_CTRL)
        except BaseException:
            sock.close()
            raise
        return sock


@dataclass
class FramedChunk:
    """Messages for one sendmsg: their bytes, how many, and where the last one starts."""

    data: bytearray = field(default_factory=bytearray)
    count: int = 0
    last: int = -1


class FramedBatch:
    """Pre-framed requests of one family, numbered from `first_seq` (see GenlClient.reserve_seqs) and cut
    into send chunks of at most SEND_CHUNK bytes and `max_msgs` messages, for GenlClient.send_framed."""

    def __init__(self, family: str, first_seq: int, max_msgs: int) -> None:
        self.family = family
        self.first_seq = first_seq
        self.max_msgs = max_msgs
        self.count = 0
        self.chunks = [FramedChunk()]

    @property
    def next_seq(self) -> int:
        return self.first_seq + self.count

    def room(self) -> tuple[int, int]:
        """(messages, bytes) the current chunk still takes."""
        c = self.chunks[-1]
        return self.max_msgs - c.count, SEND_CHUNK - len(c.data)

    def extend(self, data: bytes, count: int, last: int) -> None:
        """Messages that fit the current chunk (`last`: where the last of them starts in `data`)."""
        c = self.chunks[-1]
        if count:
            c.last = len(c.data) + last
            c.data += data
            c.count += count
            self.count += count

    def seal(self) -> None:
        """Start a new chunk."""
        if self.chunks[-1].count:
            self.chunks.append(FramedChunk())

    def append_request(self, family_id: int, req: m.Request) -> None:
        """A request framed quietly (send_framed acks chunks, not requests), numbered `next_seq`."""
        self.append(pack_message(family_id, req.flags & ~NLM_F_ACK, self.next_seq, req.body))

    def append(self, msg: bytes) -> None:
        """One message numbered `next_seq`, in a new chunk if it doesn't fit this one."""
        msgs, size = self.room()
        if not msgs or len(msg) > size:
            self.seal()
        self.extend(msg, 1, 0)


_NLCTRL_NOTIFY = 0x10  # nlctrl's "notify" group id is fixed (GENL_ID_CTRL)


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
        self.sock.add_membership(_NLCTRL_NOTIFY)

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
        self.client._note_ctrl(msg)
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


class UpcallSocket(NetlinkSocket):
    """A socket to program as an upcall pid.  `portid` may be chosen (e.g. to squat a dead daemon's)."""

    def __init__(self, portid: int = 0) -> None:
        super().__init__(portid=portid, listener=True)
