"""Netlink wire format: attributes, message headers, kernel errors.  Pure functions over bytes.

Nothing here touches a socket or an event loop (sans-IO, as h11 does it): every codec in `dpif.netlink`
can be tested, and fuzzed, from bytes alone.
"""

from __future__ import annotations

import errno as _errno
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

NLA_HDR = struct.Struct("=HH")
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
GENL_HDR = struct.Struct("=BBH")  # cmd, version, reserved
OVS_HDR = struct.Struct("=i")  # dp_ifindex

NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ECHO = 0x8
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLM_F_CAPPED = 0x100  # in NLMSG_ERROR acks: the request was not echoed back
NLM_F_ACK_TLVS = 0x200  # in NLMSG_ERROR acks: extended ack attributes follow

NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2


class WireError(ValueError):
    """Malformed netlink input: truncated, mis-sized or inconsistent."""


@dataclass(eq=False)
class KernelError(OSError):
    """A request refused by the kernel: errno plus the kernel's extended-ack message, if any.

    Not frozen: an exception is written to as it propagates (contextlib sets `__traceback__` when it
    re-raises through a generator's `with`), and a frozen one turned into FrozenInstanceError there."""

    code: int
    message: str = ""
    bad_offset: int | None = None

    def __post_init__(self) -> None:
        OSError.__init__(self, self.code, self.__str__())

    def __str__(self) -> str:
        name = _errno.errorcode.get(self.code, str(self.code))
        text = os.strerror(self.code)
        return f"{name}: {text}" + (f" ({self.message})" if self.message else "")


def align4(n: int) -> int:
    return (n + 3) & ~3


def attr(atype: int, payload: bytes = b"") -> bytes:
    """One attribute, padded to 4 bytes."""
    length = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(length, atype) + payload + b"\0" * (align4(length) - length)


def nest(atype: int, *children: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(children))


def attrs(items: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(attr(t, p) for t, p in items)


def iter_attrs(buf: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """Walk a run of attributes; yields (type without flag bits, payload).  Raises WireError."""
    mv = memoryview(buf)
    off, end = 0, len(mv)
    while off < end:
        if end - off < NLA_HDR.size:
            raise WireError(f"truncated attribute header at offset {off}")
        length, atype = NLA_HDR.unpack_from(mv, off)
        if length < NLA_HDR.size or off + length > end:
            raise WireError(f"attribute length {length} at offset {off} exceeds {end - off} bytes")
        yield atype & NLA_TYPE_MASK, mv[off + NLA_HDR.size : off + length]
        off += align4(length)


def iter_raw_attrs(buf: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """Like iter_attrs, but yields each whole attribute (header + payload, unpadded) with its type."""
    mv = memoryview(buf)
    off, end = 0, len(mv)
    while off < end:
        if end - off < NLA_HDR.size:
            raise WireError(f"truncated attribute header at offset {off}")
        length, atype = NLA_HDR.unpack_from(mv, off)
        if length < NLA_HDR.size or off + length > end:
            raise WireError(f"attribute length {length} at offset {off} exceeds {end - off} bytes")
        yield atype & NLA_TYPE_MASK, mv[off : off + length]
        off += align4(length)


@dataclass(frozen=True)
class Message:
    """One netlink message: header fields plus the payload after the nlmsghdr."""

    type: int
    flags: int
    seq: int
    pid: int
    payload: memoryview


def iter_messages(buf: bytes | memoryview) -> Iterator[Message]:
    """Split one datagram into messages.  Raises WireError on truncation."""
    mv = memoryview(buf)
    off, end = 0, len(mv)
    while off + NLMSG_HDR.size <= end:
        length, mtype, flags, seq, pid = NLMSG_HDR.unpack_from(mv, off)
        if length < NLMSG_HDR.size or off + length > end:
            raise WireError(f"netlink message length {length} at offset {off} exceeds {end - off} bytes")
        yield Message(mtype, flags, seq, pid, mv[off + NLMSG_HDR.size : off + length])
        off += align4(length)
    if off < end and any(mv[off:end]):
        raise WireError(f"{end - off} trailing bytes after the last netlink message")


NLMSG_MIN_TYPE = 16  # below: netlink control messages (NOOP, ERROR, DONE, OVERRUN)


def _data_run_end(buf: bytes | memoryview, off: int, seq: int) -> int:
    """Where the run of a dump's data messages (type >= NLMSG_MIN_TYPE, sequence `seq`, well-formed) that
    starts at `off` ends: the offset of the first other message, or len(buf)."""
    end = len(buf)
    while off + NLMSG_HDR.size <= end:
        length, mtype, _, mseq, _ = NLMSG_HDR.unpack_from(buf, off)
        if length < NLMSG_HDR.size or length > end - off or mtype < NLMSG_MIN_TYPE or mseq != seq:
            return off
        off += align4(length)
    return min(off, end)


def message_at(run: memoryview, off: int) -> tuple[memoryview, int]:
    """The payload of the message at `off` in a run `data_run_end` checked, and where the next one starts."""
    length = int.from_bytes(run[off : off + 4], sys.byteorder)
    return run[off + NLMSG_HDR.size : off + length], off + align4(length)


try:  # the same loop in C, where the extension is built (a 100k-flow dump is 100k messages)
    from dpif.netlink._dump import scan as data_run_end
except ImportError:  # pragma: no cover - CI builds the extension
    data_run_end = _data_run_end


def pack_message(mtype: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), mtype, flags, seq, pid) + payload


def parse_error(msg: Message) -> KernelError | None:
    """Decode an NLMSG_ERROR payload: None for an ACK (error 0), else the typed kernel error."""
    p = msg.payload
    if len(p) < 4:
        raise WireError("truncated NLMSG_ERROR")
    (err,) = struct.unpack_from("=i", p, 0)
    if err == 0:
        return None
    if not -4095 <= err < 0:  # the kernel's errors are -MAX_ERRNO..-1
        raise WireError(f"NLMSG_ERROR with error code {err}, not an errno")
    message, offset = "", None
    if msg.flags & NLM_F_ACK_TLVS and len(p) >= 4 + NLMSG_HDR.size:
        (orig_len,) = struct.unpack_from("=I", p, 4)
        tlv_off = 4 + (NLMSG_HDR.size if msg.flags & NLM_F_CAPPED else align4(orig_len))
        if tlv_off <= len(p):
            for t, v in iter_attrs(p[tlv_off:]):
                if t == NLMSGERR_ATTR_MSG:
                    message = bytes(v).split(b"\0", 1)[0].decode(errors="replace")
                elif t == NLMSGERR_ATTR_OFFS and len(v) >= 4:
                    (offset,) = struct.unpack_from("=I", v)
    return KernelError(-err, message, offset)


# Scalar payload helpers: one place for byte order and sizes.
def u32(v: memoryview | bytes) -> int:
    return int(struct.unpack("=I", _exact(v, 4))[0])


def cstr(v: memoryview | bytes) -> str:
    return bytes(v).split(b"\0", 1)[0].decode()


def _exact(v: memoryview | bytes, n: int) -> bytes:
    if len(v) != n:
        raise WireError(f"expected a {n}-byte attribute, got {len(v)} bytes")
    return bytes(v)
