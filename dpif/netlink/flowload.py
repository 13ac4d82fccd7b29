"""add-flows lines -> framed OVS_FLOW_CMD_NEW messages in C, for the plain common case.

The C encoder (`_flowload`, optional) must give exactly the bytes of `messages.flow_put` over the Python
parser, so it carries no OVS knowledge of its own: struct attributes come from the table built here from
`flowkey`'s specs, everything else from the Python parser's memos (passed on each call, as they are
cleared when full).  It stops at the first line it can't do, which the caller parses in Python (that also
fills the memos, so later lines like it stay in C).  `ENCODER` is None without the extension.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from dpif.netlink import flowkey
from dpif.netlink import messages as m
from dpif.netlink.actions import parser as action_parser
from dpif.netlink.flowkey import parser as key_parser


class Encoded(NamedTuple):
    stop: int  # index of the first line not taken
    data: bytes  # the framed messages, back to back
    n: int  # messages in data
    last: int  # offset of the last message in data (-1 when none)
    full: bool  # stopped at max_count / max_bytes, not at a line for Python


class _Ext(Protocol):
    def set_tables(self, structs: tuple[object, ...], head: bytes,
                   attrs: tuple[int, int, int, int]) -> None: ...

    def encode(self, lines: list[str], start: int, attrs: object, actions: object, values: object,
               family: int, flags: int, ifindex: int, seq: int, max_count: int,
               max_bytes: int) -> tuple[int, bytes, int, int, bool]: ...


def struct_table() -> tuple[tuple[str, int, int, tuple[tuple[str, str, int, int], ...]], ...]:
    """(prefix, type, length, ((name=, kind, offset, size), ...)) per struct attribute the parser reads."""
    out = []
    for prefix, t in key_parser.STRUCTS:
        spec = key_parser.PARSE_SPECS.get(t, flowkey.KEY_ATTRS[t])
        fields = tuple((f.name + "=", f.kind, f.offset, f.size) for f in spec.fields)
        out.append((prefix, t, spec.length, fields))
    return tuple(out)


class Encoder:
    """The C encoder with its tables installed."""

    def __init__(self, ext: _Ext) -> None:
        self._ext = ext
        ext.set_tables(struct_table(), m._FLOW_NEW_HDR, (m._F_KEY, m._F_MASK, m._F_ACTIONS, m._F_UFID))

    def encode(self, lines: list[str], start: int, *, family: int, flags: int, ifindex: int, seq: int,
               max_count: int, max_bytes: int) -> Encoded:
        """Lines from `start` as create-flow messages (seq, seq+1, ...) until one Python must parse."""
        return Encoded(*self._ext.encode(lines, start, key_parser.PARSED_ATTRS, action_parser.PARSED,
                                         key_parser.PARSED_VALUES, family, flags, ifindex, seq, max_count,
                                         max_bytes))


def _load() -> Encoder | None:
    try:
        from dpif.netlink import _flowload  # type: ignore[attr-defined]
    except ImportError:
        return None
    return Encoder(_flowload)


ENCODER = _load()
