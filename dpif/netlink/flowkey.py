"""Flow keys and masks (OVS_KEY_ATTR_*): attribute tables as data, typed values, ovs-dpctl text.

The text side reproduces OVS 3.1 `odp_flow_format` / `odp_flow_from_string` (lib/odp-util.c) exactly,
quirks included (C's `%#x` prints 0 as "0", ct_mark/ct_zone print nothing without a mask, ...), because
`dpfreeze dpctl dump-flows` must be byte-identical to `ovs-dpctl dump-flows`.  Formatting works on
memoryviews with precomputed tables and never builds a per-flow tree: dumps of 100k flows stay cheap.
Both directions memoize (bounded) what flows share: attribute text by bytes, per-mask layouts, parsed
attributes by text, so only what differs between flows is formatted or parsed.

Typed values (`KeyAttr`) keep the raw payload beside the decoded fields, so a flow re-installs verbatim.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple, TypeVar

from dpif.netlink.wire import NLA_HDR, NLA_TYPE_MASK, WireError, align4

_T = TypeVar("_T")

# --- numbers (include/linux/openvswitch.h) -------------------------------------------------------------

ENCAP, PRIORITY, IN_PORT, ETHERNET, VLAN, ETHERTYPE, IPV4, IPV6 = 1, 2, 3, 4, 5, 6, 7, 8
TCP, UDP, ICMP, ICMPV6, ARP, ND, SKB_MARK, TUNNEL, SCTP = 9, 10, 11, 12, 13, 14, 15, 16, 17
TCP_FLAGS, DP_HASH, RECIRC_ID, MPLS, CT_STATE, CT_ZONE, CT_MARK, CT_LABELS = 18, 19, 20, 21, 22, 23, 24, 25
CT_ORIG_TUPLE_IPV4, CT_ORIG_TUPLE_IPV6, NSH, PACKET_TYPE, ND_EXTENSIONS, TUNNEL_INFO = 26, 27, 28, 29, 30, 31
KEY_ATTR_MAX = 31  # as OVS 3.1 userspace knows it: higher types (IPV6_EXTHDRS) print as keyN(...)

TUN_ID, TUN_IPV4_SRC, TUN_IPV4_DST, TUN_TOS, TUN_TTL, TUN_DF, TUN_CSUM, TUN_OAM = 0, 1, 2, 3, 4, 5, 6, 7
TUN_GENEVE_OPTS, TUN_TP_SRC, TUN_TP_DST, TUN_VXLAN_OPTS, TUN_IPV6_SRC, TUN_IPV6_DST = 8, 9, 10, 11, 12, 13
TUN_PAD, TUN_ERSPAN_OPTS, TUN_GTPU_OPTS = 14, 15, 16
VXLAN_EXT_GBP = 1
NSH_BASE, NSH_MD1, NSH_MD2 = 1, 2, 3

VARIABLE = -2  # ATTR_LEN_VARIABLE
NESTED = -3  # ATTR_LEN_NESTED

# flow_tnl flags and their names, ct_state bits, tcp flags (bit -> name; format order is low bit first)
TNL_F_OAM, TNL_F_DF, TNL_F_CSUM, TNL_F_KEY, TNL_F_MASK = 1, 2, 4, 8, 15
TUN_FLAG_NAMES = {TNL_F_OAM: "oam", TNL_F_DF: "df", TNL_F_CSUM: "csum", TNL_F_KEY: "key"}
CT_STATE_NAMES = {1: "new", 2: "est", 4: "rel", 8: "rpl", 16: "inv", 32: "trk", 64: "snat", 128: "dnat"}
TCP_FLAG_NAMES = {
    0x1: "fin", 0x2: "syn", 0x4: "rst", 0x8: "psh", 0x10: "ack", 0x20: "urg", 0x40: "ece", 0x80: "cwr",
    0x100: "ns", 0x200: "[200]", 0x400: "[400]", 0x800: "[800]",
}
FRAG_NAMES = ("no", "first", "later")


# --- the tables ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One struct member: its text name, formatting kind and place in the payload."""

    name: str
    kind: str  # eth ipv4 in6 label u8u u8x be16 be16x be32x frag
    offset: int

    @property
    def size(self) -> int:
        return _KIND_SIZE[self.kind]


_KIND_SIZE = {"eth": 6, "ipv4": 4, "in6": 16, "label": 4, "u8u": 1, "u8x": 1, "frag": 1, "be16": 2,
              "be16x": 2, "be32x": 4}


@dataclass(frozen=True)
class AttrSpec:
    """One attribute kind: number, text name, payload length (or VARIABLE/NESTED) and layout."""

    num: int
    name: str
    length: int
    fields: tuple[Field, ...] = ()
    sub: Mapping[int, AttrSpec] | None = None  # nested table (its own numbering)
    sub_max: int = 0
    care: int | None = None  # leading bytes that count for wildcard/exact (struct padding excluded)
    scalar: str = ""  # struct format of a scalar payload ("=I", "!H", ...)

    @cached_property
    def by_prefix(self) -> dict[str, Field]:
        """The fields by their `name=` prefix, for the parser."""
        return {f.name + "=": f for f in self.fields}


def _f(*spec: tuple[str, str, int]) -> tuple[Field, ...]:
    return tuple(Field(n, k, o) for n, k, o in spec)


VXLAN_EXT_ATTRS: dict[int, AttrSpec] = {VXLAN_EXT_GBP: AttrSpec(VXLAN_EXT_GBP, "gbp", 4, scalar="=I")}

TUNNEL_ATTRS: dict[int, AttrSpec] = {a.num: a for a in (
    AttrSpec(TUN_ID, "tun_id", 8, scalar="!Q"),
    AttrSpec(TUN_IPV4_SRC, "src", 4, _f(("src", "ipv4", 0))),
    AttrSpec(TUN_IPV4_DST, "dst", 4, _f(("dst", "ipv4", 0))),
    AttrSpec(TUN_TOS, "tos", 1, _f(("tos", "u8x", 0))),
    AttrSpec(TUN_TTL, "ttl", 1, _f(("ttl", "u8u", 0))),
    AttrSpec(TUN_DF, "df", 0),
    AttrSpec(TUN_CSUM, "csum", 0),
    AttrSpec(TUN_OAM, "oam", 0),
    AttrSpec(TUN_GENEVE_OPTS, "geneve", VARIABLE),
    AttrSpec(TUN_TP_SRC, "tp_src", 2, _f(("tp_src", "be16", 0))),
    AttrSpec(TUN_TP_DST, "tp_dst", 2, _f(("tp_dst", "be16", 0))),
    AttrSpec(TUN_VXLAN_OPTS, "vxlan", NESTED, sub=VXLAN_EXT_ATTRS, sub_max=1),
    AttrSpec(TUN_IPV6_SRC, "ipv6_src", 16, _f(("ipv6_src", "in6", 0))),
    AttrSpec(TUN_IPV6_DST, "ipv6_dst", 16, _f(("ipv6_dst", "in6", 0))),
    AttrSpec(TUN_PAD, "pad", 0),
    AttrSpec(TUN_ERSPAN_OPTS, "erspan", VARIABLE),
    AttrSpec(TUN_GTPU_OPTS, "gtpu", VARIABLE),
)}
TUNNEL_ATTR_MAX = TUN_GTPU_OPTS

NSH_ATTRS: dict[int, AttrSpec] = {a.num: a for a in (
    AttrSpec(NSH_BASE, "base", 8, _f(("flags", "u8u", 0), ("ttl", "u8u", 1), ("mdtype", "u8u", 2),
                                     ("np", "u8u", 3), ("path_hdr", "be32x", 4))),
    AttrSpec(NSH_MD1, "md1", 16, _f(("c1", "be32x", 0), ("c2", "be32x", 4), ("c3", "be32x", 8),
                                    ("c4", "be32x", 12))),
    AttrSpec(NSH_MD2, "md2", VARIABLE),
)}
NSH_ATTR_MAX = NSH_MD2

_TP = _f(("src", "be16", 0), ("dst", "be16", 2))
KEY_ATTRS: dict[int, AttrSpec] = {a.num: a for a in (
    AttrSpec(ENCAP, "encap", NESTED),
    AttrSpec(PRIORITY, "skb_priority", 4, scalar="=I"),
    AttrSpec(IN_PORT, "in_port", 4, scalar="=I"),
    AttrSpec(ETHERNET, "eth", 12, _f(("src", "eth", 0), ("dst", "eth", 6))),
    AttrSpec(VLAN, "vlan", 2, scalar="!H"),
    AttrSpec(ETHERTYPE, "eth_type", 2, scalar="!H"),
    AttrSpec(IPV4, "ipv4", 12, _f(("src", "ipv4", 0), ("dst", "ipv4", 4), ("proto", "u8u", 8),
                                  ("tos", "u8x", 9), ("ttl", "u8u", 10), ("frag", "frag", 11))),
    AttrSpec(IPV6, "ipv6", 40, _f(("src", "in6", 0), ("dst", "in6", 16), ("label", "label", 32),
                                  ("proto", "u8u", 36), ("tclass", "u8x", 37), ("hlimit", "u8u", 38),
                                  ("frag", "frag", 39))),
    AttrSpec(TCP, "tcp", 4, _TP),
    AttrSpec(UDP, "udp", 4, _TP),
    AttrSpec(ICMP, "icmp", 2, _f(("type", "u8u", 0), ("code", "u8u", 1))),
    AttrSpec(ICMPV6, "icmpv6", 2, _f(("type", "u8u", 0), ("code", "u8u", 1))),
    AttrSpec(ARP, "arp", 24, _f(("sip", "ipv4", 0), ("tip", "ipv4", 4), ("op", "be16", 8),
                                ("sha", "eth", 10), ("tha", "eth", 16)), care=22),
    AttrSpec(ND, "nd", 28, _f(("target", "in6", 0), ("sll", "eth", 16), ("tll", "eth", 22))),
    AttrSpec(SKB_MARK, "skb_mark", 4, scalar="=I"),
    AttrSpec(TUNNEL, "tunnel", NESTED, sub=TUNNEL_ATTRS, sub_max=TUNNEL_ATTR_MAX),
    AttrSpec(SCTP, "sctp", 4, _TP),
    AttrSpec(TCP_FLAGS, "tcp_flags", 2, scalar="!H"),
    AttrSpec(DP_HASH, "dp_hash", 4, scalar="=I"),
    AttrSpec(RECIRC_ID, "recirc_id", 4, scalar="=I"),
    AttrSpec(MPLS, "mpls", VARIABLE),
    AttrSpec(CT_STATE, "ct_state", 4, scalar="=I"),
    AttrSpec(CT_ZONE, "ct_zone", 2, scalar="=H"),
    AttrSpec(CT_MARK, "ct_mark", 4, scalar="=I"),
    AttrSpec(CT_LABELS, "ct_label", 16),
    AttrSpec(CT_ORIG_TUPLE_IPV4, "ct_tuple4", 16, _f(("src", "ipv4", 0), ("dst", "ipv4", 4),
                                                     ("proto", "u8u", 12), ("tp_src", "be16", 8),
                                                     ("tp_dst", "be16", 10)), care=13),
    AttrSpec(CT_ORIG_TUPLE_IPV6, "ct_tuple6", 40, _f(("src", "in6", 0), ("dst", "in6", 16),
                                                     ("proto", "u8u", 36), ("src_port", "be16", 32),
                                                     ("dst_port", "be16", 34)), care=37),
    AttrSpec(NSH, "nsh", NESTED, sub=NSH_ATTRS, sub_max=NSH_ATTR_MAX),
    AttrSpec(PACKET_TYPE, "packet_type", 4, scalar="!I"),
    AttrSpec(ND_EXTENSIONS, "nd_ext", 8, _f(("nd_reserved", "be32x", 0), ("nd_options_type", "u8u", 4))),
)}
_KEY_NAME = {a.num: a.name for a in KEY_ATTRS.values()}
_KEY_NAME[0] = "unspec"
_KEY_NAME[TUNNEL_INFO] = "<error: kernel-only tunnel_info>"


def attr_len(table: Mapping[int, AttrSpec], max_type: int, t: int) -> int | None:
    """OVS's odp_key_attr_len: None = unknown type (> max); 0 for holes in the table."""
    if t > max_type:
        return None
    spec = table.get(t)
    return spec.length if spec else 0


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


def encode_fields(spec: AttrSpec, values: Mapping[str, int | bytes]) -> bytes:
    """Inverse of decode_fields (struct padding is zero)."""
    if spec.scalar:
        return struct.pack(spec.scalar, values["value"])
    if spec.fields:
        buf = bytearray(spec.length)
        for f in spec.fields:
            v = values.get(f.name, 0)
            buf[f.offset : f.offset + f.size] = v if isinstance(v, bytes) else v.to_bytes(f.size, "big")
        return bytes(buf)
    raw = values.get("raw", b"")
    assert isinstance(raw, bytes)
    return raw


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


# --- formatting helpers (C printf semantics) ----------------------------------------------------------


def hx(v: int) -> str:
    """C's %#x: no prefix for zero."""
    return f"{v:#x}" if v else "0"


def mac(b: bytes | memoryview) -> str:
    return bytes(b).hex(":")


def ip4(v: int) -> str:
    return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"


def ip6(b: bytes | memoryview) -> str:
    """glibc inet_ntop(AF_INET6): longest zero run (>= 2 words) as '::', embedded IPv4 forms."""
    w = struct.unpack("!8H", b)
    best, best_len, cur, cur_len = -1, 0, -1, 0
    for i in range(8):
        if w[i] == 0:
            if cur < 0:
                cur, cur_len = i, 1
            else:
                cur_len += 1
            if cur_len > best_len:
                best, best_len = cur, cur_len
        else:
            cur = -1
    if best_len < 2:
        best = -1
    out = []
    i = 0
    while i < 8:
        if best >= 0 and best <= i < best + best_len:
            if i == best:
                out.append(":")
            i += 1
            continue
        if i:
            out.append(":")
        if i == 6 and best == 0 and (best_len == 6 or (best_len == 7 and w[7] != 1)
                                     or (best_len == 5 and w[5] == 0xFFFF)):
            out.append(ip4(int.from_bytes(bytes(b[12:16]), "big")))
            break
        out.append(f"{w[i]:x}")
        i += 1
    if best >= 0 and best + best_len == 8:
        out.append(":")
    return "".join(out)


def put_hex(b: bytes | memoryview) -> str:
    """OVS ds_put_hex: 0x, leading zero bytes dropped, '0' when all zero."""
    s = bytes(b).lstrip(b"\0")
    return "0x" + f"{s[0]:x}" + s[1:].hex() if s else "0"


def flags_text(names: Mapping[int, str], flags: int, delim: str = "|") -> str:
    """OVS format_flags."""
    if not flags:
        return "0"
    out, bad = [], 0
    bit = 1
    while flags:
        if flags & bit:
            name = names.get(bit)
            if name:
                out.append(name)
            else:
                bad |= bit
            flags &= ~bit
        bit <<= 1
    if bad:
        out.append(f"0x{bad:x}")
    return delim.join(out)


def flags_masked_text(names: Mapping[int, str], flags: int, mask: int, max_mask: int) -> str:
    """OVS format_flags_masked (without a name)."""
    if mask == max_mask:
        return flags_text(names, flags)
    if not mask:
        return "0/0"
    out = []
    bit = 1
    while mask:
        if mask & bit:
            out.append(("+" if flags & bit else "-") + names.get(bit, "[Unknown]"))
            mask &= ~bit
        bit <<= 1
    return "".join(out)


_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


def _render(kind: str, v: int | bytes) -> str:
    if kind == "eth":
        return mac(v)  # type: ignore[arg-type]
    if kind == "in6":
        return ip6(v)  # type: ignore[arg-type]
    assert isinstance(v, int)
    if kind == "ipv4":
        return ip4(v)
    if kind in ("u8u", "be16"):
        return str(v)
    return hx(v)  # u8x be16x label be32x


def _render_mask(kind: str, m: int | bytes) -> str:
    if kind in ("eth", "in6", "ipv4"):
        return _render(kind, m)
    assert isinstance(m, int)
    return hx(m)


def fmt_field(out: list[str], f: Field, key: memoryview | bytes, mask: memoryview | bytes | None,
              verbose: bool) -> None:
    """One masked struct member, as OVS's format_eth/format_ipv4/format_u8u/... do it."""
    o, n, kind = f.offset, f.size, f.kind
    kb = key[o : o + n]
    if kind == "frag":
        mv = mask[o] if mask is not None else 255
        if mv and mv != 255:
            out.append(f"error: partial mask not supported for frag ({hx(mv)})")
        elif mv:
            k = kb[0]
            out.append(f"{f.name}={FRAG_NAMES[k] if k < 3 else '<error>'}")
        return
    if kind in ("eth", "in6"):
        kv: int | bytes = bytes(kb)
        if mask is None:
            out.append(f"{f.name}={_render(kind, kv)}")
            return
        mb = bytes(mask[o : o + n])
        if not any(mb) and not verbose:
            return
        text = f"{f.name}={_render(kind, kv)}"
        if mb != b"\xff" * n:
            text += "/" + _render(kind, mb)
        out.append(text)
        return
    kv = int.from_bytes(kb, "big")
    if mask is None:
        out.append(f"{f.name}={_render(kind, kv)}")
        return
    m = int.from_bytes(mask[o : o + n], "big")
    if not m and not verbose:
        return
    full = (m & 0xFFFFF) == 0xFFFFF if kind == "label" else m == _ONES[n]
    text = f"{f.name}={_render(kind, kv)}"
    if not full:
        text += "/" + _render_mask(kind, m)
    out.append(text)


# Which members a struct attribute shows, and each one's "/mask" suffix, depend on the mask alone; flows
# share masks, so that is worked out once per mask and only the shown key values are rendered per flow.
StructPlan = tuple[tuple["Field | None", str], ...]  # (member, suffix) or (None, constant text)
_STRUCT_PLANS: dict[tuple[str, bytes | None, bool], StructPlan] = {}


def _struct_plan(spec: AttrSpec, mask: bytes | None, verbose: bool) -> StructPlan:
    plan: list[tuple[Field | None, str]] = []
    for f in spec.fields:
        o, n, kind = f.offset, f.size, f.kind
        if mask is None:
            plan.append((f, ""))
        elif kind == "frag":
            mv = mask[o]
            if mv and mv != 255:
                plan.append((None, f"error: partial mask not supported for frag ({hx(mv)})"))
            elif mv:
                plan.append((f, ""))
        elif kind in ("eth", "in6"):
            mb = mask[o : o + n]
            if any(mb) or verbose:
                plan.append((f, "" if mb == b"\xff" * n else "/" + _render(kind, mb)))
        else:
            m = int.from_bytes(mask[o : o + n], "big")
            if m or verbose:
                full = (m & 0xFFFFF) == 0xFFFFF if kind == "label" else m == _ONES[n]
                plan.append((f, "" if full else "/" + _render_mask(kind, m)))
    return tuple(plan)


def _member_text(f: Field, key: bytes) -> str:
    o, kind = f.offset, f.kind
    if kind == "frag":
        k = key[o]
        return FRAG_NAMES[k] if k < 3 else "<error>"
    if kind == "eth":
        return key[o : o + 6].hex(":")
    if kind == "in6":
        return ip6(key[o : o + 16])
    return _render(kind, int.from_bytes(key[o : o + f.size], "big"))


def _fmt_struct_attr(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool,
                     verbose: bool, ports: Mapping[int, str] | None) -> str:
    mb = bytes(ma) if ma is not None else None
    plan = _STRUCT_PLANS.get((name, mb, verbose))
    if plan is None:
        if len(_STRUCT_PLANS) >= 1 << 12:
            _STRUCT_PLANS.clear()
        plan = _STRUCT_PLANS[name, mb, verbose] = _struct_plan(_BY_NAME[name], mb, verbose)
    kb = bytes(a)
    return name + "(" + ",".join(text if f is None else f"{f.name}={_member_text(f, kb)}{text}"
                                 for f, text in plan) + ")"


def generic_hex(b: bytes | memoryview) -> str:
    return " ".join(f"{x:02x}" for x in bytes(b))


# --- mask exactness (odp_mask_is_constant__) ------------------------------------------------------------

_ALL_BYTE_TYPES = frozenset({PRIORITY, IN_PORT, ETHERNET, VLAN, ETHERTYPE, IPV4, TCP, UDP, ICMP, ICMPV6, ND,
                             ND_EXTENSIONS, SKB_MARK, TUNNEL, SCTP, DP_HASH, RECIRC_ID, MPLS, CT_STATE,
                             CT_ZONE, CT_MARK, CT_LABELS, PACKET_TYPE, NSH})


_FF = b"\xff" * 64
_00 = bytes(64)


def mask_is_constant(t: int, m: bytes | memoryview, ones: bool) -> bool:
    """odp_mask_is_constant__: is the mask all-ones (exact) or all-zeros (wildcard) where it counts."""
    ref = _FF if ones else _00
    if t in _ALL_BYTE_TYPES:
        return m == ref[: len(m)]
    if t == TCP_FLAGS:
        if len(m) < 2:
            return False
        return (int.from_bytes(m[:2], "big") & 0xFFF) == (0xFFF if ones else 0)
    if t == IPV6:
        if len(m) < 40:
            return False
        label = int.from_bytes(m[32:36], "big") & 0xFFFFF
        return label == (0xFFFFF if ones else 0) and m[36:40] == ref[:4] and m[:32] == ref[:32]
    if t in (ARP, CT_ORIG_TUPLE_IPV4, CT_ORIG_TUPLE_IPV6):
        care = KEY_ATTRS[t].care or 0
        return m[:care] == ref[:care]
    return False


# --- formatting (odp_flow_format) ----------------------------------------------------------------------


def _first_attrs(buf: memoryview | bytes | None) -> dict[int, bytes]:
    """nl_attr_find__ for every type at once: the FIRST attribute of each type (lenient walk)."""
    found: dict[int, bytes] = {}
    if not buf:
        return found
    data = bytes(buf)
    off, end = 0, len(data)
    while end - off >= 4:
        ln, t = _HDR(data, off)
        if ln < 4 or ln > end - off:
            break
        found.setdefault(t & NLA_TYPE_MASK, data[off + 4 : off + ln])
        off += (ln + 3) & ~3
    return found


_HDR = NLA_HDR.unpack_from


def walk_attrs(buf: memoryview) -> tuple[list[tuple[int, memoryview]], int]:
    """NL_ATTR_FOR_EACH: the well-formed attributes and the number of bytes left over."""
    items = []
    off, end = 0, len(buf)
    while end - off >= 4:
        ln, t = NLA_HDR.unpack_from(buf, off)
        if ln < 4 or ln > end - off:
            break
        items.append((t & NLA_TYPE_MASK, buf[off + 4 : off + ln]))
        off += align4(ln)
    return items, max(end - off, 0) if off < end else 0


def _zero_mask(table: Mapping[int, AttrSpec], max_type: int, t: int, payload: memoryview) -> bytes:
    """An all-wildcard mask payload shaped like the key attribute (generate_all_wildcard_mask)."""
    if attr_len(table, max_type, t) != NESTED:
        return bytes(len(payload))
    spec = table[t]
    sub, sub_max = (spec.sub, spec.sub_max) if spec.sub is not None else (table, max_type)
    items, _ = walk_attrs(payload)
    return b"".join(nla(ct, _zero_mask(sub, sub_max, ct, cv)) for ct, cv in items)


def check_attr_len(a_t: int, a: memoryview | bytes, ma: memoryview | bytes | None,
                   table: Mapping[int, AttrSpec], max_type: int, need_key: bool) -> str | None:
    """None if lengths are fine, else OVS's error rendering of the attribute."""
    exp = attr_len(table, max_type, a_t)
    if exp is None or exp in (VARIABLE, NESTED):
        return None
    bad_key = len(a) != exp
    bad_mask = ma is not None and len(ma) != exp
    if not (bad_key or bad_mask):
        return None
    s = f"key{a_t}" if need_key else ""
    if bad_key:
        s += f"(bad key length {len(a)}, expected {exp})("
    s += generic_hex(a)
    if ma is not None:
        s += "/"
        if bad_mask:
            s += f"(bad mask length {len(ma)}, expected {exp})("
        s += generic_hex(ma)
    return s + ")"


def format_key(key: bytes | memoryview, mask: bytes | memoryview | None = None, *,
               verbose: bool = False, port_names: Mapping[int, str] | None = None) -> str:
    """The text ovs-dpctl prints for a key and its mask (odp_flow_format)."""
    return _flow_format(bytes(key), bytes(mask) if mask is not None else None, verbose, port_names)


def _flow_format(key: bytes, mask: bytes | None, verbose: bool, ports: Mapping[int, str] | None) -> str:
    """The hot path of a dump.  Flows that share a mask nearly always share the key's layout too (the same
    attribute types at the same offsets), and with it everything the text shows except the shown attributes'
    values: that is worked out once per (mask, layout) as a `KeyPlan`; a key is checked against its plan's
    attribute headers with one struct unpack, and then only its shown attributes are rendered (memoized per
    attribute position).  Keys whose layout has no plan yet, or cannot have one, take the generic walk."""
    if not key:
        return "<empty>"
    plan = key_plan(key, mask, verbose, ports)
    if plan is None:
        return _flow_format_generic(key, mask, verbose, ports)
    out = []
    for prefix, start, end, render, cache in plan.shown:
        a = key[start:end]
        text = cache.get(a) if cache is not None else None
        if text is None:
            text = render(a, ports)
            if cache is not None:
                if len(cache) >= _SHOWN_CACHE_MAX:
                    cache.clear()
                cache[a] = text
        out.append(prefix)
        out.append(text)
    out.append(plan.suffix)
    return "".join(out)


def key_plan(key: bytes, mask: bytes | None, verbose: bool,
             ports: Mapping[int, str] | None) -> KeyPlan | None:
    """The plan `key` is rendered by (worked out on first use of its (mask, layout)), or None when the
    generic walk must render it."""
    pk = (mask, len(key), verbose, ports is None)
    plan = _KEY_PLANS.get(pk)
    if plan is None or plan.heads.unpack_from(key) != plan.expect:
        plan = _key_plan(key, mask, verbose, ports)
        if plan is None:
            return None
        if len(_KEY_PLANS) >= 1 << 10:
            _KEY_PLANS.clear()
        _KEY_PLANS[pk] = plan
    return plan


Render = Callable[[bytes, "Mapping[int, str] | None"], str]  # (value, port names) -> text
Shown = tuple[str, int, int, Render, "dict[bytes, str] | None"]


class KeyPlan(NamedTuple):
    """What a key of one layout shows under one mask: `shown` attributes, each (constant text before it,
    start, end, (value, port names) -> text, memo of value -> text or None: in_port with port names,
    which each call brings), then the constant `suffix`.  `heads` unpacks the top-level attribute
    headers (at `offsets`) that `expect` holds."""

    heads: struct.Struct
    expect: tuple[int, ...]
    offsets: tuple[int, ...]
    shown: tuple[Shown, ...]
    suffix: str


_KEY_PLANS: dict[tuple[bytes | None, int, bool, bool], KeyPlan] = {}
_SHOWN_CACHE_MAX = 1 << 12


def _key_plan(key: bytes, mask: bytes | None, verbose: bool,
              ports: Mapping[int, str] | None) -> KeyPlan | None:
    """The plan of `key`'s layout, or None for a key that the generic walk must render (an attribute of
    the wrong length, leftover bytes): each decision below is `_flow_format_generic`'s, in its order."""
    n = len(key)
    has_mask = bool(mask)
    masks = _mask_attrs(mask) if mask else {}
    has_ethtype = has_packet_type = False
    first = True
    fmt = ["="]
    offsets: list[int] = []
    heads_end = 0  # where the last header unpacked by the plan's struct ends
    shown: list[Shown] = []
    pending = ""  # constant text since the last shown attribute
    off = 0
    while n - off >= 4:
        ln, t = _HDR(key, off)
        if ln < 4 or ln > n - off:
            return None
        fmt.append(f"{off - heads_end}xI" if off > heads_end else "I")
        offsets.append(off)
        heads_end = off + 4
        t &= NLA_TYPE_MASK
        start, end = off + 4, off + ln
        off += (ln + 3) & ~3
        ma, wildcard = masks.get(t, _ABSENT) if has_mask else _EXACT
        exp = _KEY_LEN[t] if t <= KEY_ATTR_MAX else None
        if exp is not None and exp >= 0 and (end - start != exp or (ma is not None and len(ma) != exp)):
            return None
        if t == ETHERTYPE:
            has_ethtype = True
        elif t == PACKET_TYPE:
            has_packet_type = True
        if verbose or not wildcard or exp == NESTED:
            if wildcard and ma is None and exp != NESTED:
                ma = bytes(end - start)
            render = _attr_renderer(t, ma, wildcard and ma is None, verbose)
            cache: dict[bytes, str] | None = None if t == IN_PORT and ports else {}
            shown.append((pending if first else pending + ",", start, end, render, cache))
            pending = ""
            first = False
        elif t == ETHERNET and not has_packet_type:
            pending += "eth()" if first else ",eth()"
            first = False
        elif t == PACKET_TYPE and wildcard:
            has_packet_type = False
    if off < n:
        return None
    if not has_ethtype and mask is not None:
        me = masks.get(ETHERTYPE, _ABSENT)[0]
        if me is not None and len(me) >= 2:
            pending += f",eth_type(0/0x{int.from_bytes(me[:2], 'big'):04x})"
    if len(fmt) == 1:
        return None
    heads = struct.Struct("".join(fmt))
    return KeyPlan(heads, heads.unpack_from(key), tuple(offsets), tuple(shown), pending)


def _attr_renderer(t: int, ma: bytes | None, zero: bool, verbose: bool) -> Render:
    """format_key_attr for one attribute position of a plan: struct attributes compiled for their mask,
    the others through format_key_attr (`zero`: a nested attribute's all-wildcard mask, which depends on
    the value)."""
    if zero:
        return lambda a, ports: format_key_attr(t, a, _zero_mask(KEY_ATTRS, KEY_ATTR_MAX, t, memoryview(a)),
                                                verbose, ports)
    if t <= KEY_ATTR_MAX and _ATTR_FORMATTERS.get(t) is _fmt_struct_attr:
        return _struct_renderer(KEY_ATTRS[t], ma, verbose)
    return lambda a, ports: format_key_attr(t, a, ma, verbose, ports)


def _struct_renderer(spec: AttrSpec, mask: bytes | None, verbose: bool) -> StructRender:
    """_fmt_struct_attr with its StructPlan unrolled."""
    const = spec.name + "("
    parts: list[tuple[str, Field]] = []
    for i, (f, text) in enumerate(_struct_plan(spec, mask, verbose)):
        sep = "," if i else ""
        if f is None:
            const += sep + text
        else:
            parts.append((const + sep + f.name + "=", f))
            const = text
    return StructRender(tuple(parts), const + ")")


class StructRender:
    """A struct attribute's text under one mask: constant text and the shown members, each rendered from
    the key bytes alone (same text as _member_text, tests compare them).  The parts are data, so the dump
    fast path (dumptext) can run them in C."""

    def __init__(self, parts: tuple[tuple[str, Field], ...], tail: str) -> None:
        self.parts = parts
        self.tail = tail
        self._fns = tuple((text, _member_fn(f)) for text, f in parts)

    def __call__(self, kb: bytes, ports: Mapping[int, str] | None) -> str:
        return "".join([p + fn(kb) for p, fn in self._fns]) + self.tail


def _member_fn(f: Field) -> Callable[[bytes], str]:
    o, kind, n = f.offset, f.kind, f.size
    if kind == "frag":
        return lambda kb: FRAG_NAMES[kb[o]] if kb[o] < 3 else "<error>"
    if kind == "eth":
        return lambda kb: kb[o : o + 6].hex(":")
    if kind == "in6":
        return lambda kb: ip6(kb[o : o + 16])
    if kind == "ipv4":
        return lambda kb: f"{kb[o]}.{kb[o + 1]}.{kb[o + 2]}.{kb[o + 3]}"
    if kind in ("u8u", "be16"):
        return lambda kb: str(int.from_bytes(kb[o : o + n], "big"))
    return lambda kb: hx(int.from_bytes(kb[o : o + n], "big"))


def _flow_format_generic(key: bytes, mask: bytes | None, verbose: bool,
                         ports: Mapping[int, str] | None) -> str:
    """odp_flow_format's walk, one attribute at a time, for any key (malformed ones included)."""
    n = len(key)
    out: list[str] = []
    has_mask = bool(mask)
    masks = _mask_attrs(mask) if mask else {}
    has_ethtype = has_packet_type = False
    first = True
    off = 0
    while n - off >= 4:
        ln, t = _HDR(key, off)
        if ln < 4 or ln > n - off:
            break
        t &= NLA_TYPE_MASK
        a = key[off + 4 : off + ln]
        off += (ln + 3) & ~3
        ma, wildcard = masks.get(t, _ABSENT) if has_mask else _EXACT
        exp = _KEY_LEN[t] if t <= KEY_ATTR_MAX else None
        if exp is not None and exp >= 0 and (len(a) != exp or (ma is not None and len(ma) != exp)):
            out.append(check_attr_len(t, a, ma, KEY_ATTRS, KEY_ATTR_MAX, False) or "")
            continue
        if t == ETHERTYPE:
            has_ethtype = True
        elif t == PACKET_TYPE:
            has_packet_type = True
        if verbose or not wildcard or exp == NESTED:
            if wildcard and ma is None:
                ma = _zero_mask(KEY_ATTRS, KEY_ATTR_MAX, t, memoryview(a))
            if not first:
                out.append(",")
            out.append(_cached_attr(t, a, ma, verbose, ports))
            first = False
        elif t == ETHERNET and not has_packet_type:
            if not first:
                out.append(",")
            out.append("eth()")
        elif t == PACKET_TYPE and wildcard:
            has_packet_type = False
    left = n - off if off < n else 0
    if left:
        if left == n:
            out.append("<empty>")
        out.append(f",***{left} leftover bytes*** ({key[n - left :].hex()})")
    if not has_ethtype and mask is not None:
        me = masks.get(ETHERTYPE, _ABSENT)[0]
        if me is not None and len(me) >= 2:
            out.append(f",eth_type(0/0x{int.from_bytes(me[:2], 'big'):04x})")
    return "".join(out)


_KEY_LEN = [attr_len(KEY_ATTRS, KEY_ATTR_MAX, t) for t in range(KEY_ATTR_MAX + 1)]
_ABSENT: tuple[bytes | None, bool] = (None, True)  # no mask attribute: wildcarded
_EXACT: tuple[bytes | None, bool] = (None, False)  # no mask at all: everything exact
_MASK_ATTRS: dict[bytes, dict[int, tuple[bytes | None, bool]]] = {}


def _mask_attrs(mask: bytes) -> dict[int, tuple[bytes | None, bool]]:
    """Each type's first mask attribute and whether it wildcards, memoized: flows share their masks."""
    found = _MASK_ATTRS.get(mask)
    if found is None:
        if len(_MASK_ATTRS) >= 1 << 12:
            _MASK_ATTRS.clear()
        found = _MASK_ATTRS[mask] = {t: (m, mask_is_constant(t, m, False))
                                     for t, m in _first_attrs(mask).items()}
    return found
_ATTR_CACHE: dict[tuple[int, bytes, bytes | None, bool], str] = {}
_ATTR_CACHE_MAX = 1 << 16


def _cached_attr(t: int, a: bytes, ma: bytes | None, verbose: bool, ports: Mapping[int, str] | None) -> str:
    """format_key_attr, memoized: a dump repeats the same metadata/L2 attributes across most flows."""
    if t == IN_PORT and ports:
        return format_key_attr(t, a, ma, verbose, ports)
    ck = (t, a, ma, verbose)
    text = _ATTR_CACHE.get(ck)
    if text is None:
        if len(_ATTR_CACHE) >= _ATTR_CACHE_MAX:
            _ATTR_CACHE.clear()
        text = _ATTR_CACHE[ck] = format_key_attr(t, a, ma, verbose, ports)
    return text


def format_key_attr(t: int, a: memoryview | bytes, ma: memoryview | bytes | None, verbose: bool,
                    ports: Mapping[int, str] | None = None) -> str:
    """format_odp_key_attr__: one attribute, lengths already checked."""
    exact = mask_is_constant(t, ma, True) if ma is not None else True
    name = _KEY_NAME.get(t, f"key{t}")
    fmt = _ATTR_FORMATTERS.get(t)
    if fmt is None or t > KEY_ATTR_MAX:
        body = generic_hex(a)
        if not exact:
            assert ma is not None
            body += "/" + generic_hex(ma)
        return f"{name}({body})"
    return fmt(name, a, ma, exact, verbose, ports)


Formatter = Callable[[str, "memoryview | bytes", "memoryview | bytes | None", bool, bool,
                      "Mapping[int, str] | None"], str]


def _u32(b: memoryview | bytes) -> int:
    return int.from_bytes(b[:4], "little")


def _u16(b: memoryview | bytes) -> int:
    return int.from_bytes(b[:2], "little")


def _be(b: memoryview | bytes) -> int:
    return int.from_bytes(b, "big")


def _fmt_encap(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool, verbose: bool,
               ports: Mapping[int, str] | None) -> str:
    if ma is not None and len(ma) and len(a):
        return f"{name}({_flow_format(bytes(a), bytes(ma), verbose, None)})"
    if len(a):
        return f"{name}({_flow_format(bytes(a), None, verbose, None)})"
    return f"{name}()"


def _fmt_u32x(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool, verbose: bool,
              ports: Mapping[int, str] | None) -> str:
    s = hx(_u32(a))
    if not exact:
        assert ma is not None
        s += "/" + hx(_u32(ma))
    return f"{name}({s})"


def _mask_empty(ma: memoryview | bytes | None) -> bool:
    return ma is None or not any(bytes(ma))


def _fmt_ct_mark(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool, verbose: bool,
                 ports: Mapping[int, str] | None) -> str:
    if verbose or not _mask_empty(ma):
        return _fmt_u32x(name, a, ma, exact, verbose, ports)
    return f"{name}()"


def _fmt_ct_zone(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool, verbose: bool,
                 ports: Mapping[int, str] | None) -> str:
    if verbose or not _mask_empty(ma):
        s = hx(_u16(a))
        if not exact:
            assert ma is not None
            s += "/" + hx(_u16(ma))
        return f"{name}({s})"
    return f"{name}()"


def _fmt_ct_state(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool,
                  verbose: bool, ports: Mapping[int, str] | None) -> str:
    v = _u32(a)
    m = 0 if _mask_empty(ma) else _u32(ma)  # type: ignore[arg-type]
    if verbose:
        s = hx(v) + ("" if exact else "/" + hx(m))
    elif not exact:
        s = flags_masked_text(CT_STATE_NAMES, v, m, 0xFFFFFFFF)
    else:
        s = flags_text(CT_STATE_NAMES, v)
    return f"{name}({s})"


def u128_hex(b: memoryview | bytes) -> str:
    return put_hex(bytes(b)[::-1])  # host-order u128 (little endian) printed big-endian


def _fmt_ct_label(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool,
                  verbose: bool, ports: Mapping[int, str] | None) -> str:
    s = ""
    if verbose or (ma is not None and any(bytes(ma))):
        s = u128_hex(a)
        if ma is not None and bytes(ma) != b"\xff" * 16:
            s += "/" + u128_hex(ma)
    return f"{name}({s})"


def _fmt_in_port(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool,
                 verbose: bool, ports: Mapping[int, str] | None) -> str:
    v = _u32(a)
    if exact:
        return f"{name}({port_name(v, ports)})"
    assert ma is not None
    return f"{name}({v}/{hx(_u32(ma))})"


def port_name(port: int, ports: Mapping[int, str] | None) -> str:
    if ports:
        n = ports.get(port)
        if n is not None:
            return n
    return str(port)


def _fmt_packet_type(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool,
                     verbose: bool, ports: Mapping[int, str] | None) -> str:
    v = _be(a)
    m = _be(ma) if ma is not None else 0xFFFFFFFF
    k, mk = struct.pack("!HH", v >> 16, v & 0xFFFF), struct.pack("!HH", m >> 16, m & 0xFFFF)
    out: list[str] = []
    fmt_field(out, Field("ns", "be16", 0), k, mk, verbose)
    fmt_field(out, Field("id", "be16x", 2), k, mk, verbose)
    return f"{name}({','.join(out)})"


def vlan_tci_text(tci: int, mask: int, verbose: bool) -> str:
    out = []
    if verbose or tci & 0xFFF or mask & 0xFFF:
        s = f"vid={tci & 0xFFF}"
        if mask & 0xFFF != 0xFFF:
            s += f"/0x{mask & 0xFFF:x}"
        out.append(s)
    if verbose or (tci >> 13) or (mask >> 13):
        s = f"pcp={tci >> 13}"
        if mask >> 13 != 7:
            s += f"/0x{mask >> 13:x}"
        out.append(s)
    if not tci & 0x1000:
        out.append("cfi=0")
    return ",".join(out)


def _fmt_vlan(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool, verbose: bool,
              ports: Mapping[int, str] | None) -> str:
    return f"{name}({vlan_tci_text(_be(a), _be(ma) if ma is not None else 0xFFFF, verbose)})"


def mpls_lse_text(lse: int) -> str:
    return f"label={lse >> 12},tc={(lse >> 9) & 7},ttl={lse & 255},bos={(lse >> 8) & 1}"


def _fmt_mpls(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool, verbose: bool,
              ports: Mapping[int, str] | None) -> str:
    n = len(a)
    if not n or n % 4:
        return f"{name}((bad key length {n})"
    if not exact:
        assert ma is not None
        if n != len(ma):
            return f"{name}((key length {n} != mask length {len(ma)})"
    out = []
    for i in range(0, n, 4):
        k = _be(a[i : i + 4])
        if exact:
            out.append(mpls_lse_text(k))
        else:
            assert ma is not None
            m = _be(ma[i : i + 4])
            out.append(f"label={k >> 12}/0x{m >> 12:x},tc={(k >> 9) & 7}/{(m >> 9) & 7:x},"
                       f"ttl={k & 255}/0x{m & 255:x},bos={(k >> 8) & 1}/{(m >> 8) & 1:x}")
    return f"{name}({','.join(out)})"


def _fmt_ethertype(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool,
                   verbose: bool, ports: Mapping[int, str] | None) -> str:
    s = f"0x{_be(a):04x}"
    if not exact:
        assert ma is not None
        s += f"/0x{_be(ma):04x}"
    return f"{name}({s})"


def _fmt_tcp_flags(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool,
                   verbose: bool, ports: Mapping[int, str] | None) -> str:
    if not exact:
        assert ma is not None
        s = flags_masked_text(TCP_FLAG_NAMES, _be(a), _be(ma) & 0xFFF, 0xFFF)
    else:
        s = flags_text(TCP_FLAG_NAMES, _be(a))
    return f"{name}({s})"


def _fmt_nd_ext(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool, verbose: bool,
                ports: Mapping[int, str] | None) -> str:
    out = [f"nd_reserved=0x{_be(a[0:4]):x}"]
    fmt_field(out, Field("nd_options_type", "u8u", 4), a, ma, verbose)
    return f"{name}({','.join(out)})"


def _fmt_nsh(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool, verbose: bool,
             ports: Mapping[int, str] | None) -> str:
    return f"{name}({nsh_attr_text(memoryview(a), memoryview(ma) if ma is not None else None)})"


def _fmt_tunnel(name: str, a: memoryview | bytes, ma: memoryview | bytes | None, exact: bool,
                verbose: bool, ports: Mapping[int, str] | None) -> str:
    return f"{name}({tunnel_text(memoryview(a), memoryview(ma) if ma is not None else None, verbose)})"


_BY_NAME = {s.name: s for s in KEY_ATTRS.values()}
_ATTR_FORMATTERS: dict[int, Formatter] = {
    ENCAP: _fmt_encap, PRIORITY: _fmt_u32x, SKB_MARK: _fmt_u32x, DP_HASH: _fmt_u32x, RECIRC_ID: _fmt_u32x,
    CT_MARK: _fmt_ct_mark, CT_STATE: _fmt_ct_state, CT_ZONE: _fmt_ct_zone, CT_LABELS: _fmt_ct_label,
    CT_ORIG_TUPLE_IPV4: _fmt_struct_attr, CT_ORIG_TUPLE_IPV6: _fmt_struct_attr, TUNNEL: _fmt_tunnel,
    IN_PORT: _fmt_in_port, PACKET_TYPE: _fmt_packet_type, ETHERNET: _fmt_struct_attr, VLAN: _fmt_vlan,
    MPLS: _fmt_mpls, ETHERTYPE: _fmt_ethertype, IPV4: _fmt_struct_attr, IPV6: _fmt_struct_attr,
    TCP: _fmt_struct_attr, UDP: _fmt_struct_attr, SCTP: _fmt_struct_attr, TCP_FLAGS: _fmt_tcp_flags,
    ICMP: _fmt_struct_attr, ICMPV6: _fmt_struct_attr, ARP: _fmt_struct_attr, ND: _fmt_struct_attr,
    ND_EXTENSIONS: _fmt_nd_ext, NSH: _fmt_nsh,
}


# tunnel -------------------------------------------------------------------------------------------------


def tunnel_text(a: memoryview, mask: memoryview | None, verbose: bool) -> str:
    """format_odp_tun_attr."""
    out: list[str] = []
    flags = mask_flags = 0
    masks = _first_attrs(mask) if mask is not None else {}
    items, _ = walk_attrs(a)
    for t, v in items:
        ma: memoryview | bytes | None = None
        if mask is not None:
            ma = masks.get(t)
            if ma is None:
                ma = _zero_mask(TUNNEL_ATTRS, TUNNEL_ATTR_MAX, t, v)
        err = check_attr_len(t, v, ma, TUNNEL_ATTRS, TUNNEL_ATTR_MAX, True)
        if err is not None:
            out.append(err)  # OVS appends it with no separator before the next field
            continue
        spec = TUNNEL_ATTRS.get(t)
        if t == TUN_ID:
            k = _be(v)
            if ma is None:
                out.append(f"tun_id=0x{k:x},")
            else:
                m = _be(ma)
                if verbose or m:
                    out.append(f"tun_id=0x{k:x}" + ("" if m == 0xFFFFFFFFFFFFFFFF else f"/{hx(m)}") + ",")
            flags |= TNL_F_KEY
            if ma is not None:
                mask_flags |= TNL_F_KEY
        elif spec is not None and spec.fields:
            sub: list[str] = []
            fmt_field(sub, spec.fields[0], v, ma, verbose)
            out.extend(s + "," for s in sub)
        elif t == TUN_DF:
            flags |= TNL_F_DF
        elif t == TUN_CSUM:
            flags |= TNL_F_CSUM
        elif t == TUN_OAM:
            flags |= TNL_F_OAM
        elif t == TUN_VXLAN_OPTS:
            out.append("vxlan(" + _vxlan_text(v, memoryview(ma) if ma is not None else None, verbose) + "),")
        elif t == TUN_GENEVE_OPTS:
            out.append("geneve(" + geneve_text(v, ma, verbose) + "),")
        elif t == TUN_PAD:
            pass
        elif t == TUN_ERSPAN_OPTS:
            out.append("erspan(" + _erspan_text(v, ma, verbose) + "),")
        elif t == TUN_GTPU_OPTS:
            sub = []
            fmt_field(sub, Field("flags", "u8x", 0), v, ma, verbose)
            fmt_field(sub, Field("msgtype", "u8u", 1), v, ma, verbose)
            out.append("gtpu(" + ",".join(sub) + "),")
        else:
            out.append(_unknown_key(t, v, ma))
    if mask is not None:
        for t, _v in walk_attrs(mask)[0]:
            mask_flags |= {TUN_DF: TNL_F_DF, TUN_CSUM: TNL_F_CSUM, TUN_OAM: TNL_F_OAM}.get(t, 0)
    if verbose or mask is None or mask_flags:
        if mask is not None:
            out.append("flags(" + flags_masked_text(TUN_FLAG_NAMES, flags, mask_flags & TNL_F_MASK,
                                                    TNL_F_MASK) + "),")
        else:
            out.append("flags(" + flags_text(TUN_FLAG_NAMES, flags) + "),")
    s = "".join(out)
    return s[:-1] if s.endswith(",") else s


def _unknown_key(t: int, v: memoryview | bytes, ma: memoryview | bytes | None) -> str:
    s = f"key{t}(" + generic_hex(v)
    if ma is not None and not mask_is_constant(t, ma, True):
        s += "/" + generic_hex(ma)
    return s + "),"


def _vxlan_text(a: memoryview, mask: memoryview | None, verbose: bool) -> str:
    out: list[str] = []
    masks = _first_attrs(mask) if mask is not None else {}
    for t, v in walk_attrs(a)[0]:
        ma: memoryview | bytes | None = None
        if mask is not None:
            ma = masks.get(t)
            if ma is None:
                ma = bytes(len(v))
        err = check_attr_len(t, v, ma, VXLAN_EXT_ATTRS, 1, True)
        if err is not None:
            out.append(err)
            continue
        if t == VXLAN_EXT_GBP:
            k = _u32(v)
            m = _u32(ma) if ma is not None else 0
            key = struct.pack("!HB", k & 0xFFFF, (k >> 16) & 0xFF)
            mk = struct.pack("!HB", m & 0xFFFF, (m >> 16) & 0xFF) if ma is not None else None
            sub: list[str] = []
            fmt_field(sub, Field("id", "be16", 0), key, mk, verbose)
            fmt_field(sub, Field("flags", "u8x", 2), key, mk, verbose)
            out.append("gbp(" + ",".join(sub) + "),")
        else:
            out.append(_unknown_key(t, v, ma))
    s = "".join(out)
    return s[:-1] if s.endswith(",") else s


def geneve_text(a: memoryview | bytes, ma: memoryview | bytes | None, verbose: bool) -> str:
    """format_odp_tun_geneve / format_geneve_opts."""
    if ma is not None and len(a) != len(ma):
        return f"value len {len(a)} different from mask len {len(ma)}"
    out = []
    kb = bytes(a)
    mb = bytes(ma) if ma is not None else None
    off, left = 0, len(kb)
    while left > 0:
        if left < 4:
            out.append(f"opt len {left} less than minimum 4")
            break
        data_len = (kb[off + 3] & 0x1F) * 4
        n = 4 + data_len
        if n > left:
            out.append(f"opt len {n} greater than remaining {left}")
            break
        hdr = kb[off : off + 4]
        hdr_k = hdr[0:3] + bytes([data_len])
        hdr_m = None
        if mb is not None:
            ml = mb[off + 3] & 0x1F
            hdr_m = mb[off : off + 3] + bytes([0xFF if ml == 0x1F else ml])
        sub: list[str] = []
        fmt_field(sub, Field("class", "be16x", 0), hdr_k, hdr_m, verbose)
        fmt_field(sub, Field("type", "u8x", 2), hdr_k, hdr_m, verbose)
        fmt_field(sub, Field("len", "u8u", 3), hdr_k, hdr_m, verbose)
        text = "".join(s + "," for s in sub)
        data = kb[off + 4 : off + n]
        mdata = mb[off + 4 : off + n] if mb is not None else None
        if data_len and (verbose or mdata is None or any(mdata)):
            text += put_hex(data)
            if mdata is not None and mdata != b"\xff" * data_len:
                text += "/" + put_hex(mdata)
        elif text.endswith(","):
            text = text[:-1]
        out.append("{" + text + "}")
        off += n
        left -= n
    return "".join(out)


def _erspan_text(a: memoryview | bytes, ma: memoryview | bytes | None, verbose: bool) -> str:
    kb = bytes(a).ljust(12, b"\0")
    mb = bytes(ma).ljust(12, b"\0") if ma is not None else None
    ver = int.from_bytes(kb[0:4], "little", signed=True)
    out: list[str] = []
    fmt_field(out, Field("ver", "u8u", 0), bytes([ver & 255]), bytes([mb[0]]) if mb else None, verbose)
    if ver == 1:
        idx = _be(kb[4:8])
        out.append(f"idx={hx(idx)}" + (f"/{hx(_be(mb[4:8]))}" if mb is not None else ""))
    elif ver == 2:
        k = bytes([(kb[11] >> 3) & 1, kb[11] >> 4])
        m = bytes([(mb[11] >> 3) & 1, mb[11] >> 4]) if mb is not None else None
        fmt_field(out, Field("dir", "u8u", 0), k, m, verbose)
        fmt_field(out, Field("hwid", "u8x", 1), k, m, verbose)
    return ",".join(out)


# nsh ----------------------------------------------------------------------------------------------------


def nsh_key_text(base: bytes, ctx: bytes, mask: tuple[bytes, bytes] | None) -> str:
    """format_nsh_key / format_nsh_key_mask over BASE (8 bytes) and MD1 context (16 bytes)."""
    flags, ttl, mdtype, np_, path = struct.unpack("!BBBBI", base)
    spi, si = path >> 8, path & 0xFF
    c = struct.unpack("!4I", ctx)
    if mask is None:
        s = f"flags={flags},ttl={ttl},mdtype={mdtype},np={np_},spi=0x{spi:x},si={si}"
        if mdtype == 1:
            s += "".join(f",c{i + 1}=0x{c[i]:x}" for i in range(4))
        return s
    mflags, mttl, mmd, mnp, mpath = struct.unpack("!BBBBI", mask[0])
    mspi, msi = mpath >> 8, mpath & 0xFF
    if mspi == 0xFFFFFF:
        mspi = 0xFFFFFFFF
    mc = struct.unpack("!4I", mask[1])
    out = []
    for nm, v, m in (("flags", flags, mflags), ("ttl", ttl, mttl), ("mdtype", mdtype, mmd), ("np", np_, mnp)):
        if m:
            out.append(f"{nm}={v}" if m == 0xFF else f"{nm}=0x{v:02x}/0x{m:02x}")
    for nm, v, m, is8 in (("spi", spi, mspi, False), ("si", si, msi, True),
                          ("c1", c[0], mc[0], False), ("c2", c[1], mc[1], False),
                          ("c3", c[2], mc[2], False), ("c4", c[3], mc[3], False)):
        if not m:
            continue
        if is8:
            out.append(f"{nm}={v}" if m == 0xFF else f"{nm}=0x{v:02x}/0x{m:02x}")
        else:
            out.append(f"{nm}=0x{v:x}" if m == 0xFFFFFFFF else f"{nm}=0x{v:x}/0x{m:08x}")
    return ",".join(out)


def nsh_attr_text(a: memoryview, mask: memoryview | None) -> str:
    """format_odp_nsh_attr."""
    base, ctx = bytes(8), bytes(16)
    mbase, mctx = b"\xff" * 8, b"\xff" * 16
    masks = _first_attrs(mask) if mask is not None else {}
    errs = []
    for t, v in walk_attrs(a)[0]:
        ma = masks.get(t) if mask is not None else None
        err = check_attr_len(t, v, ma, NSH_ATTRS, NSH_ATTR_MAX, True)
        if err is not None:
            errs.append(err)
            continue
        if t == NSH_BASE:
            base = bytes(v)
            if ma is not None:
                mbase = bytes(ma)
        elif t == NSH_MD1:
            ctx = bytes(v)
            if ma is not None:
                mctx = bytes(ma)
    return "".join(errs) + nsh_key_text(base, ctx, (mbase, mctx) if mask is not None else None)


# --- parsing (odp_flow_from_string) --------------------------------------------------------------------


class ParseError(ValueError):
    """Text that ovs-dpctl would reject ("syntax error at ...")."""

    def __init__(self, text: str, pos: int, why: str = "syntax error") -> None:
        super().__init__(f"{why} at {text[pos:pos + 60]!r}" if pos < len(text) else f"{why} at end of input")
        self.pos = pos


_INT_RE = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_UINT_RE = re.compile(r"[0-9]+")
_MAC_RE = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2}){5}")
IP4_RE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_IP6_RE = re.compile(r"[0-9a-fA-F:.]+")
_XNUM_RE = re.compile(r"(?:0[xX])?[0-9a-fA-F]+")

DELIMS = ", \t\r\n"


class Scanner:
    """A cursor over one text line, with the C scanf-like readers OVS's parser uses."""

    def __init__(self, text: str, pos: int = 0) -> None:
        self.s = text
        self.i = pos

    def fail(self, why: str = "syntax error") -> ParseError:
        return ParseError(self.s, self.i, why)

    def startswith(self, lit: str) -> bool:
        return self.s.startswith(lit, self.i)

    def take(self, lit: str) -> bool:
        if self.s.startswith(lit, self.i):
            self.i += len(lit)
            return True
        return False

    def expect(self, lit: str) -> None:
        if not self.take(lit):
            raise self.fail(f"expected {lit!r}")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip(self, chars: str = DELIMS) -> None:
        s, i, n = self.s, self.i, len(self.s)
        while i < n and s[i] in chars:
            i += 1
        self.i = i

    def num(self, bits: int) -> int:
        """%i: C integer syntax (decimal, 0x hex, 0 octal), truncated to the field width."""
        m = _INT_RE.match(self.s, self.i)
        if not m:
            raise self.fail("expected a number")
        self.i = m.end()
        t = m.group()
        neg = t.startswith("-")
        t = t.lstrip("+-")
        v = int(t, 16) if t[:2].lower() == "0x" else int(t, 8) if len(t) > 1 and t[0] == "0" else int(t)
        return (-v if neg else v) & ((1 << bits) - 1)

    def dec(self, bits: int) -> int:
        """%u: decimal only."""
        m = _UINT_RE.match(self.s, self.i)
        if not m:
            raise self.fail("expected a decimal number")
        self.i = m.end()
        return int(m.group()) & ((1 << bits) - 1)

    def hexnum(self, bits: int) -> int:
        """%x (an optional 0x prefix)."""
        m = _XNUM_RE.match(self.s, self.i)
        if not m:
            raise self.fail("expected a hex number")
        self.i = m.end()
        return int(m.group().lower().removeprefix("0x"), 16) & ((1 << bits) - 1)

    def mac(self) -> bytes:
        m = _MAC_RE.match(self.s, self.i)
        if not m:
            raise self.fail("expected an Ethernet address")
        self.i = m.end()
        return bytes(int(x, 16) for x in m.group().split(":"))

    def ip4(self) -> int:
        m = IP4_RE.match(self.s, self.i)
        if not m:
            raise self.fail("expected an IPv4 address")
        parts = [int(x) for x in m.group().split(".")]
        if any(p > 255 for p in parts):
            raise self.fail("bad IPv4 address")
        self.i = m.end()
        return (parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]

    def ip6(self) -> bytes:
        m = _IP6_RE.match(self.s, self.i)
        b = pton6(m.group()) if m else None
        if b is None:
            raise self.fail("expected an IPv6 address")
        assert m is not None
        self.i = m.end()
        return b

    def int_string(self, width: int) -> bytes:
        """parse_int_string: 0x-hex right-aligned into `width` bytes, or a decimal integer."""
        if self.startswith("0x") or self.startswith("0X"):
            self.i += 2
            j = self.i
            while j < len(self.s) and self.s[j] in "0123456789abcdefABCDEF":
                j += 1
            digits = self.s[self.i : j].lstrip("0")
            self.i = j
            if (len(digits) + 1) // 2 > width:
                raise self.fail("value too wide")
            return int(digits or "0", 16).to_bytes(width, "big")
        m = _UINT_RE.match(self.s, self.i)
        if not m:
            raise self.fail("expected a number")
        self.i = m.end()
        v = int(m.group())
        if v >> (8 * width):
            raise self.fail("value too wide")
        return v.to_bytes(width, "big")


def pton6(text: str) -> bytes | None:
    """inet_pton(AF_INET6) without the socket module; None if invalid."""
    if "." in text:
        head, _, v4 = text.rpartition(":")
        parts = v4.split(".")
        if not head or len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            return None
        if any(int(p) > 255 for p in parts):
            return None
        a, b, c, d = (int(p) for p in parts)
        text = f"{head}:{(a << 8) | b:x}:{(c << 8) | d:x}"
    if text.count("::") > 1:
        return None
    if "::" in text:
        left, right = text.split("::")
        lw = left.split(":") if left else []
        rw = right.split(":") if right else []
        if len(lw) + len(rw) > 7:
            return None
        words = [*lw, *["0"] * (8 - len(lw) - len(rw)), *rw]
    else:
        words = text.split(":")
        if len(words) != 8:
            return None
    out = bytearray()
    for w in words:
        if not w or len(w) > 4 or any(c not in "0123456789abcdefABCDEF" for c in w):
            return None
        out += int(w, 16).to_bytes(2, "big")
    return bytes(out)


def _scan_masked(sc: Scanner, kind: str, with_mask: bool) -> tuple[bytes, bytes]:
    """One struct member value with an optional /mask (absent mask = exact)."""
    n = _KIND_SIZE[kind]
    if kind == "eth":
        k = sc.mac()
        return k, (sc.mac() if with_mask and sc.take("/") else b"\xff" * 6)
    if kind == "in6":
        k6 = sc.ip6()
        if with_mask and sc.take("/"):
            return k6, sc.ip6()
        return k6, b"\xff" * 16
    if kind == "ipv4":
        v = sc.ip4()
        m = sc.ip4() if with_mask and sc.take("/") else 0xFFFFFFFF
        return v.to_bytes(4, "big"), m.to_bytes(4, "big")
    if kind == "frag":
        j = sc.i
        while j < len(sc.s) and sc.s[j].isalpha() and j - sc.i < 7:
            j += 1
        word = sc.s[sc.i : j].lower()
        if word not in FRAG_NAMES:
            raise sc.fail("bad frag type")
        sc.i = j
        return bytes([FRAG_NAMES.index(word)]), b"\xff"
    if kind == "label":
        v = sc.num(32)
        if v & ~0xFFFFF:
            raise sc.fail("IPv6 label out of range")
        m = 0xFFFFF
        if with_mask and sc.startswith("/"):
            save = sc.i
            sc.i += 1
            mv = sc.num(32)
            if mv & ~0xFFFFF:
                sc.i = save
            else:
                m = mv
        return v.to_bytes(4, "big"), m.to_bytes(4, "big")
    bits = 8 * n
    v = sc.num(bits)
    m = sc.num(bits) if with_mask and sc.take("/") else (1 << bits) - 1
    return v.to_bytes(n, "big"), m.to_bytes(n, "big")


def _scan_struct(sc: Scanner, spec: AttrSpec, with_mask: bool) -> tuple[bytes, bytes]:
    """SCAN_BEGIN ... SCAN_FIELD ... SCAN_END: named fields in any order, unnamed ones zero/wildcard."""
    key = bytearray(spec.length)
    mask = bytearray(spec.length)
    by_prefix = spec.by_prefix
    s = sc.s
    while True:
        # each prefix is "name=": the text up to the next '=' is the only one that can match
        j = s.find("=", sc.i)
        f = by_prefix.get(s[sc.i : j + 1]) if j >= 0 else None
        matched = f is not None
        if f is not None:
            sc.i = j + 1
            k, m = _scan_value(sc, f.kind, with_mask)
            key[f.offset : f.offset + f.size] = k
            mask[f.offset : f.offset + f.size] = m
        if not _more_fields(sc, matched):
            return bytes(key), bytes(mask)


_PARSED_VALUES: dict[str, dict[str, tuple[bytes, bytes]]] = {kind: {} for kind in _KIND_SIZE}


def _scan_value(sc: Scanner, kind: str, with_mask: bool) -> tuple[bytes, bytes]:
    """_scan_masked memoized by the text up to the next ',' or ')' (most member values repeat, e.g.
    "frag=no", "proto=6"); kept only when the scan ended there, as nothing after it is looked at."""
    if not with_mask:
        return _scan_masked(sc, kind, with_mask)
    s, i = sc.s, sc.i
    comma, paren = s.find(",", i), s.find(")", i)
    end = comma if 0 <= comma < paren or paren < 0 else paren
    memo = _PARSED_VALUES[kind]
    text = s[i:end] if end >= 0 else None
    hit = memo.get(text) if text is not None else None
    if hit is not None:
        sc.i = end
        return hit
    k, m = _scan_masked(sc, kind, True)
    if text is not None and sc.i == end:
        remember(memo, text, (k, m))
    return k, m


class KeyBuilder:
    """Key and mask attribute streams built side by side (the two ofpbufs of odp_flow_from_string)."""

    def __init__(self, with_mask: bool = True) -> None:
        self.key: list[bytes] = []
        self.mask: list[bytes] | None = [] if with_mask else None

    def put(self, t: int, k: bytes, m: bytes) -> None:
        self.key.append(nla(t, k))
        if self.mask is not None:
            self.mask.append(nla(t, m))


def parse_key(text: str, *, port_names: Mapping[str, int] | None = None,
              with_mask: bool = True) -> tuple[bytes, bytes | None]:
    """odp_flow_from_string: (key payload, mask payload or None).  Raises ParseError.

    Flows repeat most attributes ("in_port(2)", "eth_type(0x0800)"), so the (key, mask) attributes parsed
    from each top-level attribute's text are memoized by that text.  Only parses that ended exactly at
    the attribute's closing parenthesis are kept: the parsers never look past it, so the text decides
    the result (with the port names consulted, which a hit re-checks)."""
    sc = Scanner(text)
    keys: list[bytes] = []
    masks: list[bytes] | None = [] if with_mask else None
    i = 0
    while True:
        start = _NEXT_ATTR(text, i)
        if start is None:
            break
        i = start.start()
        if text.startswith("ufid:", i):
            sc.i = i + 5
            scan_ufid(sc)
            sc.take(" ")
            end = -1
        else:
            end = _field_end(text, i)
            hit = _PARSED_ATTRS.get(text[i:end]) if end > 0 else None
            if hit is not None and (not hit[2] or same_answers(hit[2], port_names)):
                keys.append(hit[0])
                if masks is not None:
                    masks.append(hit[1])
                i = end
                continue
            sc.i = i
        kb = KeyBuilder(True)  # the key never depends on whether a mask is built
        seen = PortsSeen(port_names)
        parse_key_attr(sc, kb, seen, 1)
        k, m = b"".join(kb.key), b"".join(kb.mask or ())
        keys.append(k)
        if masks is not None:
            masks.append(m)
        if end > 0 and sc.i == end:
            remember(_PARSED_ATTRS, text[i:end], (k, m, seen.answers()))
        i = sc.i
    return b"".join(keys), (b"".join(masks) if masks is not None else None)


PortAnswers = tuple[tuple[str, "int | None"], ...]
_PARSED_ATTRS: dict[str, tuple[bytes, bytes, PortAnswers]] = {}
MEMO_MAX = 1 << 14  # entries per memo: bounds memory (a few MB) on dumps of distinct flows


def remember(memo: dict[str, _T], text: str, value: _T) -> None:
    """Bounded memo: start over when full (a dump's working set is what repeats, and it comes back)."""
    if len(memo) >= MEMO_MAX:
        memo.clear()
    memo[text] = value


def _field_end(s: str, i: int) -> int:
    """Just past the ')' that closes the first '(' at or after i, or -1: one attribute's extent."""
    j = s.find("(", i)
    k = s.find(")", j) if j >= 0 else -1
    if k < 0 or s.find("(", j + 1, k) < 0:
        return k + 1 if k >= 0 else -1
    depth = 0
    for m in _PARENS_RE.finditer(s, j):
        depth += 1 if m.group() == "(" else -1
        if not depth:
            return m.end()
    return -1


_PARENS_RE = re.compile(r"[()]")
_NEXT_ATTR = re.compile(r"[^, \t\r\n]").search  # Scanner.skip(DELIMS) and the end-of-text test in one call


class PortsSeen(Mapping[str, int]):
    """Port names as one parse sees them, recording each name asked about and the answer, so that its
    memoized result is reused only where the caller's names answer the same.  Always true: with no
    names every lookup misses, which parses exactly as not looking."""

    def __init__(self, ports: Mapping[str, int] | None) -> None:
        self._ports = ports or {}
        self._asked: dict[str, int | None] = {}

    def __bool__(self) -> bool:
        return True

    def __getitem__(self, name: str) -> int:
        v = self._asked[name] = self._ports.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __iter__(self) -> Iterator[str]:
        return iter(self._ports)

    def __len__(self) -> int:
        return len(self._ports)

    def answers(self) -> PortAnswers:
        return tuple(self._asked.items())


def same_answers(answers: PortAnswers, ports: Mapping[str, int] | None) -> bool:
    get = (ports or {}).get
    return all(get(name) == v for name, v in answers)


_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def scan_ufid(sc: Scanner) -> bytes:
    m = _UUID_RE.match(sc.s, sc.i)
    if not m:
        raise sc.fail("bad ufid")
    sc.i = m.end()
    return ufid_from_text(m.group())


def ufid_from_text(text: str) -> bytes:
    """ufid:UUID text -> the 16 UFID bytes (OVS keeps the UUID as four host-order u32)."""
    h = text.replace("-", "")
    words = [int(h[i : i + 8], 16) for i in range(0, 32, 8)]
    return struct.pack("=4I", *words)


def ufid_text(ufid: bytes) -> str:
    """odp_format_ufid (16 bytes; shorter kernel UFIDs are zero-padded)."""
    w = struct.unpack("=4I", bytes(ufid[:16]).ljust(16, b"\0"))
    return (f"ufid:{w[0]:08x}-{w[1] >> 16:04x}-{w[1] & 0xFFFF:04x}-{w[2] >> 16:04x}-"
            f"{w[2] & 0xFFFF:04x}{w[3]:08x}")


_SINGLE_U32 = (("skb_priority(", PRIORITY), ("skb_mark(", SKB_MARK), ("dp_hash(", DP_HASH),
               ("ct_mark(", CT_MARK))
_STRUCTS = (("ct_tuple4(", CT_ORIG_TUPLE_IPV4), ("ct_tuple6(", CT_ORIG_TUPLE_IPV6), ("eth(", ETHERNET),
            ("ipv4(", IPV4), ("ipv6(", IPV6), ("tcp(", TCP), ("udp(", UDP), ("sctp(", SCTP),
            ("icmp(", ICMP), ("icmpv6(", ICMPV6), ("arp(", ARP), ("nd(", ND), ("nd_ext(", ND_EXTENSIONS))
# OVS prints ct_tuple6 ports as src_port/dst_port but reads only tp_src/tp_dst: we read both.
_PARSE_SPECS = {
    CT_ORIG_TUPLE_IPV6: AttrSpec(CT_ORIG_TUPLE_IPV6, "ct_tuple6", 40, _f(
        ("src", "in6", 0), ("dst", "in6", 16), ("proto", "u8u", 36), ("tp_src", "be16", 32),
        ("tp_dst", "be16", 34), ("src_port", "be16", 32), ("dst_port", "be16", 34))),
}
_PACKET_TYPE_SPEC = AttrSpec(PACKET_TYPE, "packet_type", 4, _f(("ns", "be16", 0), ("id", "be16", 2)))

KeyParser = Callable[[Scanner, KeyBuilder, "Mapping[str, int] | None", int], None]


def parse_key_attr(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    """parse_odp_key_mask_attr__: one attribute at the cursor.

    Every attribute reads as `name(`, so the text up to the first '(' picks its parser in one lookup
    (the prefixes are distinct, so this is what trying them in turn would pick)."""
    if depth >= 32:
        raise sc.fail("nested too deeply")
    s, i = sc.s, sc.i
    j = s.find("(", i)
    parser = _KEY_PARSERS.get(s[i : j + 1]) if j >= 0 else None
    if parser is not None:
        sc.i = j + 1
        parser(sc, kb, ports, depth)
        return
    m_ = _GENERIC_RE.match(s, i)
    if m_:  # keyN(hex[/hex]): how OVS prints attributes it does not know (the kernel's IPV6_EXTHDRS)
        sc.i = m_.end()
        k = bytes.fromhex(m_.group(2).replace(" ", ""))
        m = bytes.fromhex(m_.group(3).replace(" ", "")) if m_.group(3) is not None else b"\xff" * len(k)
        if len(m) != len(k):
            raise sc.fail("key and mask lengths differ")
        t = int(m_.group(1))
        if t > NLA_TYPE_MASK:
            raise sc.fail("attribute type out of range")
        kb.put(t, k, m)
        return
    raise sc.fail()


def _u32_parser(t: int) -> KeyParser:
    def parse(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
        k, m = _scan_masked(sc, "be32x", True)
        sc.expect(")")
        kb.put(t, _host(k), _host(m))
    return parse


def _struct_parser(t: int) -> KeyParser:
    spec = _PARSE_SPECS.get(t, KEY_ATTRS[t])

    def parse(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
        k, m = _scan_struct(sc, spec, True)
        kb.put(t, k, m)
    return parse


def _p_recirc_id(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    v = sc.num(32)
    sc.expect(")")
    kb.put(RECIRC_ID, struct.pack("=I", v), b"\xff" * 4)


def _p_ct_state(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    fv, fm = scan_flags(sc, CT_STATE_NAMES, 0xFF, ")", True)
    sc.expect(")")
    kb.put(CT_STATE, struct.pack("=I", fv), struct.pack("=I", fm))


def _p_ct_zone(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    k, m = _scan_masked(sc, "be16x", True)
    sc.expect(")")
    kb.put(CT_ZONE, _host(k), _host(m))


def _p_ct_label(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    lv = sc.int_string(16)
    lm = sc.int_string(16) if sc.take("/") else b"\xff" * 16
    sc.expect(")")
    kb.put(CT_LABELS, lv[::-1], lm[::-1])


def _p_tunnel(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    _parse_tunnel(sc, kb)


def _p_in_port(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    m_ = _INT_RE.match(sc.s, sc.i)
    if m_:
        k, m = _scan_masked(sc, "be32x", True)
        k, m = _host(k), _host(m)
    else:
        j = sc.s.find(")", sc.i)
        name = sc.s[sc.i : j] if j >= 0 else ""
        if not ports or name not in ports:
            raise sc.fail("unknown port")
        sc.i = j
        k, m = struct.pack("=I", ports[name]), b"\xff" * 4
    sc.expect(")")
    kb.put(IN_PORT, k, m)


def _bitfield(
    sc: Scanner, key: int, mask: int, bits: int, shift: int, width: int, what: str
) -> tuple[int, int]:
    """One `name=value[/mask]` sub-field of a packed header word (vlan TCI, MPLS LSE), range-checked."""
    v = sc.num(width)
    if v >> bits:
        raise sc.fail(f"{what} field out of range")
    fm = ((1 << bits) - 1) << shift
    key = (key & ~fm) | (v << shift)
    if not sc.take("/"):
        return key, mask | fm
    mv = sc.num(width)
    if mv >> bits:
        raise sc.fail(f"{what} mask out of range")
    return key, (mask & ~fm) | (mv << shift)


def _more_fields(sc: Scanner, matched: bool) -> bool:
    """After a sub-field: True on `,` (another follows), False on the closing `)`; anything else fails."""
    c = sc.peek()
    sc.i += 1
    if c == "," and matched:
        return True
    if c != ")":
        sc.i -= 1
        raise sc.fail()
    return False


def _p_vlan(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    tci, tmask = 0x1000, 0x1000
    while True:
        matched = False
        for prefix, bits, shift in (("vid=", 12, 0), ("pcp=", 3, 13), ("cfi=", 1, 12)):
            if sc.take(prefix):
                tci, tmask = _bitfield(sc, tci, tmask, bits, shift, 16, "vlan")
                matched = True
                break
        if not _more_fields(sc, matched):
            break
    kb.put(VLAN, struct.pack("!H", tci), struct.pack("!H", tmask))


def _p_eth_type(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    k, m = _scan_masked(sc, "be16x", True)
    sc.expect(")")
    kb.put(ETHERTYPE, k, m)


def _p_mpls(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    _parse_mpls(sc, kb)


def _p_tcp_flags(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    fv, fm = scan_flags(sc, TCP_FLAG_NAMES, 0xFFF, ")", True)
    sc.expect(")")
    kb.put(TCP_FLAGS, struct.pack("!H", fv & 0xFFFF), struct.pack("!H", fm & 0xFFFF))


def _p_packet_type(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    k, m = _scan_struct(sc, _PACKET_TYPE_SPEC, True)
    kb.put(PACKET_TYPE, k, m)


def _p_nsh(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    _parse_nsh_key(sc, kb)


def _p_encap(sc: Scanner, kb: KeyBuilder, ports: Mapping[str, int] | None, depth: int) -> None:
    kb_inner = KeyBuilder(kb.mask is not None)
    while True:
        sc.skip()
        if sc.i >= len(sc.s):
            raise sc.fail("unterminated encap(")
        if sc.take(")"):
            break
        parse_key_attr(sc, kb_inner, ports, depth + 1)
    kb.key.append(nla(ENCAP, b"".join(kb_inner.key)))
    if kb.mask is not None:
        assert kb_inner.mask is not None
        kb.mask.append(nla(ENCAP, b"".join(kb_inner.mask)))


_KEY_PARSERS: dict[str, KeyParser] = {
    **{prefix: _u32_parser(t) for prefix, t in _SINGLE_U32},
    "recirc_id(": _p_recirc_id, "ct_state(": _p_ct_state, "ct_zone(": _p_ct_zone, "ct_label(": _p_ct_label,
    **{prefix: _struct_parser(t) for prefix, t in _STRUCTS},
    "tunnel(": _p_tunnel, "in_port(": _p_in_port, "vlan(": _p_vlan, "eth_type(": _p_eth_type,
    "mpls(": _p_mpls, "tcp_flags(": _p_tcp_flags, "packet_type(": _p_packet_type, "nsh(": _p_nsh,
    "encap(": _p_encap,
}


_HEXES = r"((?:[0-9a-f]{2})?(?: [0-9a-f]{2})*)"
_GENERIC_RE = re.compile(r"key([0-9]{1,4})\(" + _HEXES + r"(?:/" + _HEXES + r")?\)")


def _host(be: bytes) -> bytes:
    """A big-endian scanned value re-packed in host order (u16/u32 payloads)."""
    return struct.pack("=H" if len(be) == 2 else "=I", int.from_bytes(be, "big"))


def scan_flags(sc: Scanner, names: Mapping[int, str], allowed: int, end: str,
                with_mask: bool) -> tuple[int, int]:
    """OVS parse_flags: 'a|b', '+a-b' (masked) or 'num/num'.  Plain lists are exact (all-ones u32 mask)."""
    m_ = re.compile(r"([-+]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*))/").match(sc.s, sc.i)
    if with_mask and m_:
        v = sc.num(32)
        sc.expect("/")
        m = sc.num(32)
        if v & ~allowed or m & ~allowed:
            raise sc.fail("unknown flags")
        return v, m
    by_name = sorted(((n, b) for b, n in names.items()), key=lambda x: -len(x[0]))
    if with_mask and sc.peek() in "+-" and sc.peek():
        flags = mask = 0
        while sc.peek() != end:
            c = sc.peek()
            if c not in "+-":
                raise sc.fail("flags must be preceded by '+' or '-'")
            sc.i += 1
            for n, b in by_name:
                if sc.startswith(n) and sc.s[sc.i + len(n) : sc.i + len(n) + 1] in ("+", "-", end):
                    if mask & b:
                        raise sc.fail("flag given twice")
                    if not b & allowed:
                        raise sc.fail("unknown flag")
                    if c == "+":
                        flags |= b
                    mask |= b
                    sc.i += len(n)
                    break
            else:
                raise sc.fail("unknown flag")
        return flags, mask
    result = 0
    while sc.peek() != end:
        if sc.i >= len(sc.s):
            raise sc.fail()
        m2 = _INT_RE.match(sc.s, sc.i)
        if m2:
            v = sc.num(64)
            if v & ~allowed:
                raise sc.fail("unknown flags")
            result |= v
            sc.take("|")
            continue
        for n, b in by_name:
            if sc.startswith(n) and sc.s[sc.i + len(n) : sc.i + len(n) + 1] in ("|", end):
                if not b & allowed:
                    raise sc.fail("unknown flag")
                result |= b
                sc.i += len(n)
                sc.take("|")
                break
        else:
            raise sc.fail("unknown flag")
    return result, 0xFFFFFFFF


def _parse_mpls(sc: Scanner, kb: KeyBuilder) -> None:
    """SCAN_BEGIN_ARRAY: up to 3 label stack entries; a repeated field starts the next entry."""
    keys = [0, 0, 0]
    masks = [0, 0, 0]
    idx, seen = 0, 0
    fields = (("label=", 20, 12), ("tc=", 3, 9), ("ttl=", 8, 0), ("bos=", 1, 8))
    while True:
        matched = False
        for fi, (prefix, bits, shift) in enumerate(fields):
            if sc.startswith(prefix):
                if seen & (1 << fi):
                    seen = 0
                    idx += 1
                    if idx == 3:
                        raise sc.fail("too many MPLS labels")
                sc.i += len(prefix)
                keys[idx], masks[idx] = _bitfield(sc, keys[idx], masks[idx], bits, shift, 32, "MPLS")
                seen |= 1 << fi
                matched = True
                break
        if not _more_fields(sc, matched):
            break
    n = idx + 1
    kb.put(MPLS, struct.pack(f"!{n}I", *keys[:n]), struct.pack(f"!{n}I", *masks[:n]))


def _parse_tunnel(sc: Scanner, kb: KeyBuilder) -> None:
    """SCAN_BEGIN_NESTED("tunnel("): sub-attributes in text order; their masks default to exact."""
    key: list[bytes] = []
    mask: list[bytes] = []

    def put(t: int, k: bytes, m: bytes) -> None:
        key.append(nla(t, k))
        mask.append(nla(t, m))

    simple = (("tun_id=", TUN_ID, "be64"), ("src=", TUN_IPV4_SRC, "ipv4"), ("dst=", TUN_IPV4_DST, "ipv4"),
              ("ipv6_src=", TUN_IPV6_SRC, "in6"), ("ipv6_dst=", TUN_IPV6_DST, "in6"),
              ("tos=", TUN_TOS, "u8x"), ("ttl=", TUN_TTL, "u8u"), ("tp_src=", TUN_TP_SRC, "be16"),
              ("tp_dst=", TUN_TP_DST, "be16"))
    while True:
        matched = False
        for prefix, t, kind in simple:
            if sc.take(prefix):
                if kind == "be64":
                    v64 = sc.num(64)
                    m64 = sc.num(64) if sc.take("/") else (1 << 64) - 1
                    put(t, v64.to_bytes(8, "big"), m64.to_bytes(8, "big"))
                else:
                    put(t, *_scan_masked(sc, kind, True))
                matched = True
                break
        if not matched:
            if sc.take("erspan("):
                k, m = _scan_erspan(sc)
                put(TUN_ERSPAN_OPTS, k, m)
                matched = True
            elif sc.take("vxlan(gbp("):
                k32, m32 = _scan_vxlan_gbp(sc)
                vx = TUN_VXLAN_OPTS
                if k32:
                    key.append(nla(vx, nla(VXLAN_EXT_GBP, struct.pack("=I", k32))))
                if m32:
                    mask.append(nla(vx, nla(VXLAN_EXT_GBP, struct.pack("=I", m32))))
                matched = True
            elif sc.take("geneve("):
                k, m = _scan_geneve(sc)
                put(TUN_GENEVE_OPTS, k, m)
                matched = True
            elif sc.take("gtpu("):
                k, m = _scan_struct(sc, AttrSpec(TUN_GTPU_OPTS, "gtpu", 2,
                                                 _f(("flags", "u8x", 0), ("msgtype", "u8u", 1))), True)
                put(TUN_GTPU_OPTS, k, m)
                matched = True
            elif sc.take("flags("):
                f, fm = scan_flags(sc, TUN_FLAG_NAMES, TNL_F_MASK, ")", True)
                sc.expect(")")
                for bit, t in ((TNL_F_DF, TUN_DF), (TNL_F_CSUM, TUN_CSUM), (TNL_F_OAM, TUN_OAM)):
                    if f & bit:
                        key.append(nla(t, b""))
                    if fm & bit:
                        mask.append(nla(t, b""))
                matched = True
        if not _more_fields(sc, matched):
            break
    kb.key.append(nla(TUNNEL, b"".join(key)))
    if kb.mask is not None:
        kb.mask.append(nla(TUNNEL, b"".join(mask)))


def _scan_vxlan_gbp(sc: Scanner) -> tuple[int, int]:
    """scan_vxlan_gbp: gbp(id=N,flags=N)) -> (u32 key, u32 mask)."""
    gid = gmask = flags = fmask = 0
    if sc.take("id="):
        k, m = _scan_masked(sc, "be16", True)
        gid, gmask = _be(k), _be(m)
        sc.take(",")
    if sc.take("flags="):
        k, m = _scan_masked(sc, "u8x", True)
        flags, fmask = k[0], m[0]
    sc.expect("))")
    return (flags << 16) | gid, (fmask << 16) | gmask


def _scan_erspan(sc: Scanner) -> tuple[bytes, bytes]:
    ver = vmask = 0
    if sc.take("ver="):
        k, m = _scan_masked(sc, "u8u", True)
        ver, vmask = k[0], m[0]
    sc.take(",")
    key = bytearray(12)
    mask = bytearray(12)
    if ver == 1:
        idx = imask = 0
        if sc.take("idx="):
            idx = sc.num(32)
            imask = sc.num(32) if sc.take("/") else 0xFFFFFFFF
        sc.expect(")")
        key[0:4] = struct.pack("=i", ver)
        key[4:8] = idx.to_bytes(4, "big")
        mask[0:4] = struct.pack("=I", vmask)
        mask[4:8] = imask.to_bytes(4, "big")
    elif ver == 2:
        d = dm = h = hm = 0
        if sc.take("dir="):
            k, m = _scan_masked(sc, "u8u", True)
            d, dm = k[0], m[0]
        sc.take(",")
        if sc.take("hwid="):
            k, m = _scan_masked(sc, "u8x", True)
            h, hm = k[0], m[0]
        sc.expect(")")
        key[0:4] = struct.pack("=i", ver)
        key[11] = ((d & 1) << 3) | ((h & 0xF) << 4)
        mask[0:4] = struct.pack("=I", vmask)
        mask[11] = ((dm & 1) << 3) | ((hm & 0xF) << 4)
    else:
        raise sc.fail("erspan version must be 1 or 2")
    return bytes(key), bytes(mask)


def _scan_geneve(sc: Scanner) -> tuple[bytes, bytes]:
    """scan_geneve: {class=,type=,len=,0xDATA[/0xMASK]}... )"""
    key = bytearray()
    mask = bytearray()
    while sc.take("{"):
        ocls, cmask, otype, tmask, olen, lmask = 0, 0, 0, 0, 0, 0x1F
        if sc.take("class="):
            k, m = _scan_masked(sc, "be16x", True)
            ocls, cmask = _be(k), _be(m)
        sc.take(",")
        if sc.take("type="):
            k, m = _scan_masked(sc, "u8x", True)
            otype, tmask = k[0], m[0]
        sc.take(",")
        if sc.take("len="):
            k, m = _scan_masked(sc, "u8u", True)
            olen, lmask = k[0], m[0]
            if olen > 124 or olen % 4:
                raise sc.fail("bad geneve option length")
        data = bytes(olen)
        dmask = b"\xff" * olen
        if sc.take(","):
            data = sc.int_string(olen) if olen else b""
        if sc.take("/"):
            dmask = sc.int_string(olen) if olen else b""
        sc.expect("}")
        key += struct.pack("!HBB", ocls, otype, olen // 4) + data
        mask += struct.pack("!HBB", cmask, tmask, lmask & 0x1F) + dmask
    sc.expect(")")
    return bytes(key), bytes(mask)


def _parse_nsh_key(sc: Scanner, kb: KeyBuilder) -> None:
    vals = {"flags": [0, 0], "ttl": [0, 0], "mdtype": [0, 0], "np": [0, 0], "spi": [0, 0], "si": [0, 0],
            "c1": [0, 0], "c2": [0, 0], "c3": [0, 0], "c4": [0, 0]}
    widths = {"flags": 8, "ttl": 8, "mdtype": 8, "np": 8, "spi": 32, "si": 8, "c1": 32, "c2": 32, "c3": 32,
              "c4": 32}
    while True:
        matched = False
        for nm, bits in widths.items():
            if sc.take(nm + "="):
                v = sc.num(bits)
                m = sc.num(bits) if sc.take("/") else (1 << bits) - 1
                vals[nm] = [v, m]
                matched = True
                break
        if not _more_fields(sc, matched):
            break

    def base(ix: int) -> bytes:
        path = ((vals["spi"][ix] & 0xFFFFFF) << 8) | (vals["si"][ix] & 0xFF)
        return struct.pack("!BBBBI", vals["flags"][ix], vals["ttl"][ix], vals["mdtype"][ix], vals["np"][ix],
                           path)

    def md1(ix: int) -> bytes:
        return struct.pack("!4I", *(vals[c][ix] for c in ("c1", "c2", "c3", "c4")))

    key = nla(NSH_BASE, base(0)) + (nla(NSH_MD1, md1(0)) if vals["mdtype"][0] == 1 else b"")
    kb.key.append(nla(NSH, key))
    if kb.mask is not None:
        kb.mask.append(nla(NSH, nla(NSH_BASE, base(1)) + nla(NSH_MD1, md1(1))))
