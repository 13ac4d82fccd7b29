"""ovs-dpctl's flow key text to key and mask bytes (OVS 3.1 `odp_flow_from_string`), with bounded memos
of parsed attributes by text."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator, Mapping

from dpif.netlink.flowkey.codec import nla
from dpif.netlink.flowkey.formatter import _be
from dpif.netlink.flowkey.tables import (
    _KIND_SIZE,
    _T,
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
    KEY_ATTRS,
    MPLS,
    ND,
    ND_EXTENSIONS,
    NSH,
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
    TNL_F_MASK,
    TNL_F_OAM,
    TUN_CSUM,
    TUN_DF,
    TUN_ERSPAN_OPTS,
    TUN_FLAG_NAMES,
    TUN_GENEVE_OPTS,
    TUN_GTPU_OPTS,
    TUN_ID,
    TUN_IPV4_DST,
    TUN_IPV4_SRC,
    TUN_IPV6_DST,
    TUN_IPV6_SRC,
    TUN_OAM,
    TUN_TOS,
    TUN_TP_DST,
    TUN_TP_SRC,
    TUN_TTL,
    TUN_VXLAN_OPTS,
    TUNNEL,
    UDP,
    VLAN,
    VXLAN_EXT_GBP,
    AttrSpec,
    _f,
)
from dpif.netlink.wire import NLA_TYPE_MASK

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


PARSED_VALUES: dict[str, dict[str, tuple[bytes, bytes]]] = {kind: {} for kind in _KIND_SIZE}


def _scan_value(sc: Scanner, kind: str, with_mask: bool) -> tuple[bytes, bytes]:
    """_scan_masked memoized by the text up to the next ',' or ')' (most member values repeat, e.g.
    "frag=no", "proto=6"); kept only when the scan ended there, as nothing after it is looked at."""
    if not with_mask:
        return _scan_masked(sc, kind, with_mask)
    s, i = sc.s, sc.i
    comma, paren = s.find(",", i), s.find(")", i)
    end = comma if 0 <= comma < paren or paren < 0 else paren
    memo = PARSED_VALUES[kind]
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
            hit = PARSED_ATTRS.get(text[i:end]) if end > 0 else None
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
            remember(PARSED_ATTRS, text[i:end], (k, m, seen.answers()))
        i = sc.i
    return b"".join(keys), (b"".join(masks) if masks is not None else None)


PortAnswers = tuple[tuple[str, "int | None"], ...]
PARSED_ATTRS: dict[str, tuple[bytes, bytes, PortAnswers]] = {}
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
STRUCTS = (("ct_tuple4(", CT_ORIG_TUPLE_IPV4), ("ct_tuple6(", CT_ORIG_TUPLE_IPV6), ("eth(", ETHERNET),
            ("ipv4(", IPV4), ("ipv6(", IPV6), ("tcp(", TCP), ("udp(", UDP), ("sctp(", SCTP),
            ("icmp(", ICMP), ("icmpv6(", ICMPV6), ("arp(", ARP), ("nd(", ND), ("nd_ext(", ND_EXTENSIONS))
# OVS prints ct_tuple6 ports as src_port/dst_port but reads only tp_src/tp_dst: we read both.
PARSE_SPECS = {
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
    spec = PARSE_SPECS.get(t, KEY_ATTRS[t])

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
    **{prefix: _struct_parser(t) for prefix, t in STRUCTS},
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
