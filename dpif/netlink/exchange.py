"""The request/reply protocol of a netlink socket, without the socket (sans-IO, as h11 does it).

Sequence numbers, framing into send chunks, matching replies and acks to requests, reading a dump's
datagrams as runs of its data messages, and the family-id cache: all of it from bytes to typed values and
back.  Two edges drive it: `dpif.transport` on trio (the service, where many tasks share a socket) and
`dpif.blocking` (one-shot commands such as `dpctl`, which need no event loop).
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

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

SEND_CHUNK = 64 * 1024  # bytes of requests per sendmsg
NLCTRL_NOTIFY = 0x10  # nlctrl's "notify" group id is fixed (GENL_ID_CTRL)


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

    def __init__(self) -> None:
        super().__init__(errno.ENOBUFS, "netlink replies lost (receive buffer overrun)")


@dataclass(slots=True)
class Pending:
    """One request's replies so far, and its error once refused."""

    replies: list[Message] = field(default_factory=list)
    error: KernelError | None = None
    done: bool = False

    def result(self) -> list[Message] | KernelError:
        return self.error if self.error is not None else self.replies


class Exchange:
    """The state of one request socket: the next sequence number and the family ids it resolved."""

    def __init__(self, first_seq: int) -> None:
        self.seq = first_seq & 0x7FFFFFFF
        self.families: dict[str, m.FamilyInfo] = {}

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    def reserve_seqs(self, n: int) -> int:
        """The first of n consecutive sequence numbers (none of them 0) for messages framed elsewhere."""
        if self.seq + n > 0xFFFFFFFF:
            self.seq = 0
        first = self.seq + 1
        self.seq += n
        return first

    # --- families ---------------------------------------------------------------------------------------

    def ids(self, names: Sequence[str]) -> dict[str, int]:
        """Family ids by name (nlctrl's is fixed); the unresolved ones are left out."""
        out = {fam.NLCTRL.name: fam.GENL_ID_CTRL}
        for name in names:
            info = self.families.get(name)
            if info is not None:
                out[name] = info.id
        return out

    def learn_family(self, name: str, result: list[Message] | KernelError) -> m.FamilyInfo:
        """The answer to `m.get_family(name)`, cached; FamilyNotFound if nlctrl doesn't know it."""
        if isinstance(result, KernelError):
            if result.code == errno.ENOENT:
                raise FamilyNotFound(name) from None
            raise result
        if not result:
            raise FamilyNotFound(name)
        info = m.decode_family(result[0].payload)
        self.families[name] = info
        return info

    def note_ctrl(self, msg: Message) -> None:
        """An nlctrl notification: a family went away or came back; forget it either way."""
        try:
            body = m.decode_body(fam.NLCTRL, msg.payload)
        except WireError:
            return
        name = body.attrs.get("family-name")
        if name in self.families and body.cmd in (fam.CTRL_CMD_DELFAMILY, fam.CTRL_CMD_NEWFAMILY):
            log.info("generic netlink family %s %s", name,
                     "removed" if body.cmd == fam.CTRL_CMD_DELFAMILY else "re-registered")
            del self.families[name]

    # --- requests ---------------------------------------------------------------------------------------

    def frame(self, reqs: Sequence[m.Request], ids: dict[str, int]) -> tuple[list[bytes], dict[int, Pending]]:
        """Requests numbered and framed, cut into sendmsg chunks of at most SEND_CHUNK bytes (a larger
        message goes alone), and their pending replies by sequence number."""
        pending: dict[int, Pending] = {}
        chunks: list[bytes] = []
        buf: list[bytes] = []
        size = 0
        for r in reqs:
            seq = self.next_seq()
            pending[seq] = Pending()
            msg = pack_message(ids[r.family], r.flags, seq, r.body)
            if size + len(msg) > SEND_CHUNK and buf:
                chunks.append(b"".join(buf))
                buf, size = [], 0
            buf.append(msg)
            size += len(msg) + (-len(msg) % 4)
        chunks.append(b"".join(buf))
        return chunks, pending

    def file(self, data: bytes, pending: dict[int, Pending]) -> int:
        """File every message of a datagram under its request; how many requests it completed.  Plain
        acks (the bulk of a batch) take a short cut."""
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
                done += self.file_message(Message(mtype, flags, seq, pid, payload), pending)
            off += (length + 3) & ~3
        return done

    def file_message(self, msg: Message, pending: dict[int, Pending]) -> int:
        """File one message under its request; 1 when that completed the request.  Anything else (an
        nlctrl notification, a stale reply of an abandoned request) is noted or dropped."""
        p = pending.get(msg.seq)
        if p is None or p.done:
            if msg.type == fam.GENL_ID_CTRL and msg.seq == 0:
                self.note_ctrl(msg)
            return 0
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

    def file_quiet(self, data: bytes, first: int, last: int, errors: dict[int, KernelError]) -> bool:
        """A datagram of answers to quiet requests first..last (see FramedBatch): their errors filed by
        sequence number; True once `last`'s ack (or error) is in."""
        done = False
        for msg in iter_messages(data):
            if msg.type == NLMSG_ERROR and first <= msg.seq <= last:
                err = parse_error(msg)
                if err is not None:
                    errors[msg.seq] = err
                done |= msg.seq == last
            else:
                self.file_message(msg, {})
        return done


def max_batch(rcvbuf: int) -> int:
    """Requests in flight at a time: never more than the receive buffer holds acks for."""
    return max(16, min(1024, rcvbuf // 4096))


def refused_enoent(results: Sequence[object]) -> list[int]:
    """Which results are ENOENT refusals: retried once if the family was renumbered (module reload)."""
    return [i for i, r in enumerate(results) if isinstance(r, KernelError) and r.code == errno.ENOENT]


def payloads(run: memoryview) -> Iterator[memoryview]:
    """The payloads (after the nlmsghdr) of a run of whole messages."""
    off = 0
    while off < len(run):
        payload, off = message_at(run, off)
        yield payload


class DumpReader:
    """One dump's datagrams, read as runs of its data messages (whole messages, headers included);
    `done` once its NLMSG_DONE (or ack) is read.  A refused or failed dump raises its KernelError."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.done = False

    def runs(self, data: bytes) -> Iterator[memoryview]:
        seq = self.seq
        off, end = 0, len(data)
        while off + NLMSG_HDR.size <= end and not self.done:
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
                self.done = True
            elif mtype == NLMSG_DONE:
                if length >= NLMSG_HDR.size + 4:
                    code = int.from_bytes(data[start : start + 4], "little", signed=True)
                    if code < 0:
                        raise KernelError(-code)
                self.done = True


@dataclass
class FramedChunk:
    """Messages for one sendmsg: their bytes, how many, and where the last one starts."""

    data: bytearray = field(default_factory=bytearray)
    count: int = 0
    last: int = -1

    def ask_ack(self) -> None:
        """Set NLM_F_ACK on the last message: the chunk's one ack (see FramedBatch)."""
        at = self.last + 6
        flags = int.from_bytes(self.data[at : at + 2], sys.byteorder) | NLM_F_ACK
        self.data[at : at + 2] = flags.to_bytes(2, sys.byteorder)


class FramedBatch:
    """Pre-framed quiet requests of one family, numbered from `first_seq` (Exchange.reserve_seqs) and cut
    into send chunks of at most SEND_CHUNK bytes and `max_msgs` messages.

    Only the last message of each chunk asks for an ack: the kernel handles a sendmsg's messages in order
    before it returns, and answers a refused one with an error even without NLM_F_ACK, so when the chunk's
    ack arrives, the errors of all its messages are in (Exchange.file_quiet)."""

    def __init__(self, family: str, first_seq: int, max_msgs: int) -> None:
        self.family = family
        self.first_seq = first_seq
        self.max_msgs = max_msgs
        self.count = 0
        self.chunks = [FramedChunk()]

    @classmethod
    def of(cls, reqs: Sequence[m.Request], family_id: int, first_seq: int, max_msgs: int) -> FramedBatch:
        """Requests of one family (flow installs, whose only answer is an ack), framed quietly."""
        family = reqs[0].family
        if any(r.family != family for r in reqs):
            raise ValueError("a framed batch takes requests of one family")
        batch = cls(family, first_seq, max_msgs)
        for r in reqs:
            batch.append_request(family_id, r)
        return batch

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
        """A request framed quietly, numbered `next_seq`."""
        self.append(pack_message(family_id, req.flags & ~NLM_F_ACK, self.next_seq, req.body))

    def append(self, msg: bytes) -> None:
        """One message numbered `next_seq`, in a new chunk if it doesn't fit this one."""
        msgs, size = self.room()
        if not msgs or len(msg) > size:
            self.seal()
        self.extend(msg, 1, 0)

    def requests(self, seqs: set[int]) -> list[m.Request]:
        """The messages numbered `seqs`, as acked requests (to send again after a module reload)."""
        return [m.Request(self.family, msg.payload[0], msg.flags | NLM_F_ACK, bytes(msg.payload))
                for chunk in self.chunks for msg in iter_messages(bytes(chunk.data)) if msg.seq in seqs]
