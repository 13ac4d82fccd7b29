"""Flow key attributes as typed values (`KeyAttr`: raw payload beside the decoded members): bytes in,
bytes out."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from dpif.netlink.flowkey.tables import _KEY_NAME, KEY_ATTR_MAX, KEY_ATTRS, MPLS, NESTED, AttrSpec, Field
from dpif.netlink.wire import NLA_HDR, NLA_TYPE_MASK, WireError, align4

# --- typed values --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyAttr:
    """One key (or mask) attribute: its type, its raw payload, and for nests the decoded children."""

    type: int
    raw: bytes
    children: tuple[KeyAttr, ...] | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return _KEY_NAME.get(self.type, f"key{self.type}")

    def values(self, table: Mapping[int, AttrSpec] | None = None) -> dict[str, int | bytes]:
        """The payload's fields as numbers (or bytes for addresses/opaque data)."""
        spec = (KEY_ATTRS if table is None else table).get(self.type)
        return decode_fields(spec, self.raw) if spec else {"raw": self.raw}


def decode_fields(spec: AttrSpec, raw: bytes | memoryview) -> dict[str, int | bytes]:
    if spec.length >= 0 and len(raw) != spec.length:
        raise WireError(f"{spec.name}: expected {spec.length} bytes, got {len(raw)}")
    if spec.scalar:
        return {"value": struct.unpack(spec.scalar, raw)[0]}
    if spec.fields:
        return {f.name: _field_value(f, raw) for f in spec.fields}
    return {"raw": bytes(raw)}


def _field_value(f: Field, raw: bytes | memoryview) -> int | bytes:
    chunk = bytes(raw[f.offset : f.offset + f.size])
    return chunk if f.kind in ("eth", "in6") else int.from_bytes(chunk, "big")


def iter_nla(buf: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """Strict attribute walk (WireError on truncation), flag bits stripped."""
    mv = memoryview(buf)
    off, end = 0, len(mv)
    while off < end:
        if end - off < 4:
            raise WireError(f"truncated attribute header at offset {off}")
        ln, t = NLA_HDR.unpack_from(mv, off)
        if ln < 4 or off + ln > end:
            raise WireError(f"attribute length {ln} at offset {off} exceeds {end - off} bytes")
        yield t & NLA_TYPE_MASK, mv[off + 4 : off + ln]
        off += align4(ln)


def decode_key(buf: bytes | memoryview, table: Mapping[int, AttrSpec] | None = None,
               max_type: int = KEY_ATTR_MAX) -> tuple[KeyAttr, ...]:
    """Decode a key or mask payload to typed attributes.  Raises WireError on malformed input."""
    table = KEY_ATTRS if table is None else table
    out = []
    for t, v in iter_nla(buf):
        spec = table.get(t) if t <= max_type else None
        children = None
        if spec is not None and spec.length == NESTED:
            sub = spec.sub if spec.sub is not None else table
            children = decode_key(v, sub, spec.sub_max if spec.sub is not None else max_type)
        elif spec is not None and spec.length >= 0 and len(v) != spec.length:
            raise WireError(f"key attribute {spec.name}: expected {spec.length} bytes, got {len(v)}")
        elif t == MPLS and (not v or len(v) % 4):
            raise WireError(f"key attribute mpls: bad length {len(v)}")
        out.append(KeyAttr(t, bytes(v), children))
    return tuple(out)


def encode_key(attrs: Iterable[KeyAttr]) -> bytes:
    """Re-encode typed attributes; nests from their children, others from raw bytes.  No NLA_F_NESTED:
    the kernel's OVS families neither set nor need it, and dumps must re-encode byte for byte."""
    parts = []
    for a in attrs:
        if a.children is not None:
            parts.append(nla(a.type, encode_key(a.children)))
        else:
            parts.append(nla(a.type, a.raw))
    return b"".join(parts)


def nla(t: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return NLA_HDR.pack(n, t) + payload + b"\0" * (align4(n) - n)
