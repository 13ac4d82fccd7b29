"""Flow keys and masks as ovs-dpctl prints them (OVS 3.1 `odp_flow_format`, quirks included), from
bytes, with per-mask plans and bounded memos so that a dump of 100k flows formats only what differs."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import NamedTuple

from dpif.netlink.flowkey.codec import nla
from dpif.netlink.flowkey.tables import (
    _KEY_NAME,
    ARP,
    CT_LABELS,
    CT_MARK,
    CT_ORIG_TUPLE_IPV4,
    CT_ORIG_TUPLE_IPV6,
    CT_STATE,
    CT_STATE_NAMES,
    CT_ZONE,
    DP_HASH,
    ENCAP,
    ETHERNET,
    ETHERTYPE,
    FRAG_NAMES,
    ICMP,
    ICMPV6,
    IN_PORT,
    IPV4,
    IPV6,
    KEY_ATTR_MAX,
    KEY_ATTRS,
    MPLS,
    ND,
    ND_EXTENSIONS,
    NESTED,
    NSH,
    NSH_ATTR_MAX,
    NSH_ATTRS,
    NSH_BASE,
    NSH_MD1,
    PACKET_TYPE,
    PRIORITY,
    RECIRC_ID,
    SCTP,
    SKB_MARK,
    TCP,
    TCP_FLAG_NAMES,
    TCP_FLAGS,
    TNL_F_CSUM,
    TNL_F_DF,
    TNL_F_KEY,
    TNL_F_MASK,
    TNL_F_OAM,
    TUN_CSUM,
    TUN_DF,
    TUN_ERSPAN_OPTS,
    TUN_FLAG_NAMES,
    TUN_GENEVE_OPTS,
    TUN_GTPU_OPTS,
    TUN_ID,
    TUN_OAM,
    TUN_PAD,
    TUN_VXLAN_OPTS,
    TUNNEL,
    TUNNEL_ATTR_MAX,
    TUNNEL_ATTRS,
    UDP,
    VARIABLE,
    VLAN,
    VXLAN_EXT_ATTRS,
    VXLAN_EXT_GBP,
    AttrSpec,
    Field,
    attr_len,
)
from dpif.netlink.wire import NLA_HDR, NLA_TYPE_MASK, align4

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
