"""Flow key attributes as data: the kernel's numbers, each attribute's name, length and members
(the shape of the kernel's YNL specs), flags' names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

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
